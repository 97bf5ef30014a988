import json

import numpy as np
import pytest

from tokvid.shapes import (COLOURS, FRAME_SIZE, MOTIONS, SHAPES, caption, iter_dataset,
                           parse_caption, random_story, render_story, shape_mask, write_dataset)
from tokvid.video_io import read_video


def object_pixels(frame):
    return np.argwhere(frame.any(-1))


def test_palette_is_exact_design_contract():
    assert COLOURS == {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
                       "yellow": (240, 220, 40), "magenta": (220, 50, 220), "cyan": (40, 210, 220),
                       "white": (235, 235, 235)}
    assert SHAPES == ("circle", "square", "triangle")


def test_caption_grammar_and_parse_round_trip():
    assert caption("red", "circle", "right") == "a red circle moves right"
    assert caption("blue", "square", "still") == "a blue square stays still"
    for colour in COLOURS:
        for shape in SHAPES:
            for motion in MOTIONS:
                assert parse_caption(caption(colour, shape, motion)) == (colour, shape, motion)
    assert parse_caption("  A Red  circle moves LEFT. ") == ("red", "circle", "left")
    for bad in ("a red circle", "a pink circle moves left", "a red star moves left",
                "a red circle moves still", "a red circle stays left", ""):
        with pytest.raises(ValueError, match="shapes-v1 caption"):
            parse_caption(bad)


def test_render_is_deterministic_by_seed():
    story = random_story(np.random.default_rng(5), 3)
    a, info_a = render_story(story, 7)
    b, info_b = render_story(story, np.random.default_rng(7))
    c, _ = render_story(story, 8)
    assert np.array_equal(a, b) and info_a == info_b
    assert not np.array_equal(a, c)


def test_colours_are_exact_and_sides_within_range():
    sides = set()
    for seed in range(40):
        frames, info = render_story(random_story(np.random.default_rng(seed), 1), seed)
        colours = {tuple(p) for p in frames.reshape(-1, 3)} - {(0, 0, 0)}
        assert colours == {COLOURS[info["colour"]]}
        rows, cols = object_pixels(frames[0]).T
        assert rows.max() - rows.min() + 1 == info["side"] == cols.max() - cols.min() + 1
        sides.add(info["side"])
    assert sides == set(range(10, 15))


def test_shapes_are_distinguishable_by_fill_and_triangle_points_up():
    for side in range(10, 15):
        square, circle, triangle = (shape_mask(s, side) for s in ("square", "circle", "triangle"))
        assert square.mean() == 1 and 0.75 < circle.mean() < 0.85 and 0.55 < triangle.mean() < 0.62
        assert triangle[0].sum() <= 2 and triangle[-1].all()


@pytest.mark.parametrize("motion,step", [("right", (2, 0)), ("left", (-2, 0)), ("down", (0, 2)),
                                         ("up", (0, -2)), ("still", (0, 0))])
def test_speed_is_two_pixels_per_frame(motion, step):
    frames, info = render_story([(caption("red", "square", motion), 8)], 0, side=10, start=(27, 27))
    assert len(frames) == 9
    moves = np.diff(np.array(info["positions"]), axis=0)
    assert (moves == step).all()
    top_left = [tuple(object_pixels(f).min(0)[::-1]) for f in frames]  # drawn pixels agree
    assert top_left == [tuple(p) for p in info["positions"]]


def test_wall_rule_stops_and_stays_until_motion_changes():
    story = [("a red circle moves left", 16), ("a red circle moves up", 8), ("a red circle moves right", 8)]
    frames, info = render_story(story, 0, side=12, start=(6, 4))
    xs, ys = np.array(info["positions"]).T
    assert list(xs[:6]) == [6, 4, 2, 0, 0, 0] and (xs[3:17] == 0).all()
    assert list(ys[16:20]) == [4, 2, 0, 0] and (ys[18:25] == 0).all()
    assert list(xs[24:27]) == [0, 2, 4]
    for frame in frames:  # never leaves the frame: whole object always visible
        assert frame.any(-1).sum() == shape_mask("circle", 12).sum()
    far, info = render_story([("a red circle moves right", 64)], 0, side=14, start=(40, 0))
    assert max(p[0] for p in info["positions"]) == FRAME_SIZE - 14


def test_story_frame_count_is_one_plus_sum_and_bad_stories_rejected():
    frames, info = render_story([("a red circle moves right", 8), ("a red circle moves down", 16)], 0)
    assert frames.shape == (25, 64, 64, 3) and frames.dtype == np.uint8
    assert info["segment_of_frame"] == [0] * 9 + [1] * 16
    for bad in ([], [("a red circle moves right", 12)], [("a red circle moves right", 0)],
                [("a red circle moves right", 8), ("a blue circle moves right", 8)]):
        with pytest.raises(ValueError):
            render_story(bad, 0)
    with pytest.raises(ValueError, match="side"):
        render_story([("a red circle moves right", 8)], 0, side=20)


def test_random_story_respects_choices():
    rng = np.random.default_rng(0)
    for _ in range(30):
        story = random_story(rng, max_segments=3, segment_frames=(8, 24))
        assert 1 <= len(story) <= 3 and {f for _, f in story} <= {8, 24}
        assert len({parse_caption(text)[:2] for text, _ in story}) == 1


def test_dataset_items_and_manifest(tmp_path):
    items = list(iter_dataset(12, seed=1, image_fraction=0.3))
    assert any(len(f) == 1 for f, _ in items) and any("story" in r for _, r in items)
    manifest = write_dataset(tmp_path, 12, seed=1, image_fraction=0.3)
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(lines) == 12
    for line, (frames, record) in zip(lines, items):
        assert {k: v for k, v in line.items() if k != "path"} == record
        if "story" in line:
            assert len(frames) == 1 + sum(s["frames"] for s in line["story"])
        else:
            parse_caption(line["caption"])
        back = read_video(tmp_path / line["path"])
        assert np.array_equal(back, frames)  # lossless: exact palette survives the file
        assert line["path"].endswith(".png" if len(frames) == 1 else ".mp4")
