import json

import numpy as np
import pytest

from tokvid.cli import data_main, run_cli
from tokvid.scenes import (HELD_OUT, IMAGE_COLOURS, MAX_SIDE, MIN_SIDE, SEGMENT_UNIT, SceneObject, SceneSpec,
                           boxes_apart, check_scene_story, clause, item_spec, layout_story, parse_scene_caption,
                           render_scene_story, render_spec, scene_caption, write_scenes)
from tokvid.shapes import COLOURS, MOTIONS, SHAPES, caption, shape_mask
from tokvid.video_io import read_video


def test_orange_is_the_design_contract_colour_and_the_pairs_held_out_are_the_four():
    assert IMAGE_COLOURS == {**COLOURS, "orange": (250, 140, 20)}
    assert HELD_OUT == {("green", "square"), ("blue", "triangle"), ("yellow", "circle"), ("white", "square")}


def test_grammar_one_and_two_clauses_with_an_before_a_vowel_sound():
    assert clause("orange", "triangle") == "an orange triangle"
    assert clause("red", "circle") == "a red circle"
    assert clause("orange", "circle", "right") == "an orange circle moves right"
    assert scene_caption([("red", "circle", "right"), ("blue", "square", "still")]) == \
        "a red circle moves right and a blue square stays still"
    assert scene_caption([("orange", "square", None), ("cyan", "circle", None)]) == \
        "an orange square and a cyan circle"
    for colour in COLOURS:  # a one-object caption is a shapes-v1 caption
        for motion in MOTIONS:
            assert clause(colour, "square", motion) == caption(colour, "square", motion)
    for first in [(c, s, m) for c in IMAGE_COLOURS for s in SHAPES for m in (None, "up", "still")]:
        second = ("red" if first[0] != "red" else "blue", "triangle", first[2])
        for clauses in ([first], [first, second]):
            assert parse_scene_caption(scene_caption(clauses)) == clauses
    assert parse_scene_caption("  An ORANGE circle  and a red square. ") == [("orange", "circle", None),
                                                                           ("red", "square", None)]


@pytest.mark.parametrize("text, reason", [
    ("a red circle moves up and a blue square moves up and a cyan circle stays still", "names 3 objects"),
    ("a pink circle moves up", "unknown colour 'pink'"),
    ("a red star moves up", "unknown shape 'star'"),
    ("a red circle moves up and a red square stays still", "two red objects"),
    ("a orange circle", "write 'an orange'"),
    ("an red circle", "write 'a red'"),
    ("a red circle moves up and a blue square", "motion to one object only"),
    ("a red circle moves sideways", "unknown direction"),
    ("a red circle flies", "not a scenes clause"),
    ("", "empty scenes caption"),
])
def test_bad_captions_give_a_clear_value_error(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_scene_caption(text)


def test_stories_must_name_the_same_objects_with_motions_in_whole_units():
    ok = [("a red circle moves up and a blue square stays still", 8),
          ("a red circle stays still and a blue square moves left", 16)]
    assert check_scene_story(ok) == ok
    for bad, reason in (([ok[0], ("a blue square moves up and a red circle stays still", 8)], "same objects"),
                        ([ok[0], ("a red circle moves up", 8)], "same objects"),
                        ([("a red circle and a blue square", 8)], "no motion"),
                        ([(ok[0][0], 12)], "multiple of 8"), ([], "at least one")):
        with pytest.raises(ValueError, match=reason):
            check_scene_story(bad)
    assert check_scene_story([(ok[0][0], 13)], unit=1) == [(ok[0][0], 13)]  # a user's story: any length
    with pytest.raises(ValueError, match="multiple of 1"):
        check_scene_story([(ok[0][0], 0)], unit=1)


def _spec_checks(spec: SceneSpec, kind: str) -> None:
    pairs = [(o.colour, o.shape) for o in spec.objects]
    assert 1 <= len(pairs) <= 2 and len({c for c, _ in pairs}) == len(pairs)
    assert not set(pairs) & HELD_OUT
    assert all(MIN_SIDE <= o.side <= MAX_SIDE for o in spec.objects)
    if kind == "video":
        assert not spec.is_image and all(c != "orange" for c, _ in pairs)
        assert all(f >= SEGMENT_UNIT and f % SEGMENT_UNIT == 0 for f in spec.frames)
        assert len(spec.motions) == len(spec.frames) and all(len(m) == len(pairs) for m in spec.motions)
    else:
        assert spec.is_image and spec.num_frames == 1
    assert boxes_apart(spec.positions(), [o.side for o in spec.objects])
    for text in spec.captions():
        assert [c[:2] for c in parse_scene_caption(text)] == pairs


def test_thousands_of_items_never_show_held_out_pairs_nor_orange_in_motion_nor_overlaps():
    specs = {kind: [item_spec(3, kind, i) for i in range(3000)] for kind in ("video", "image")}
    for kind, items in specs.items():
        for spec in items:
            _spec_checks(spec, kind)
    videos, images = specs["video"], specs["image"]
    image_pairs = {(o.colour, o.shape) for spec in images for o in spec.objects}
    video_pairs = {(o.colour, o.shape) for spec in videos for o in spec.objects}
    # every allowed pair is shown, so colours and shapes each still appear (composition is testable)
    assert image_pairs == {(c, s) for c in IMAGE_COLOURS for s in SHAPES} - HELD_OUT
    assert video_pairs == {(c, s) for c in COLOURS for s in SHAPES} - HELD_OUT
    assert {len(s.objects) for s in videos} == {1, 2} == {len(s.objects) for s in images}
    assert {len(s.frames) for s in videos} == {1, 2, 3, 4}
    two = [s for s in videos if len(s.objects) == 2]
    assert any(s.objects[0].shape == s.objects[1].shape for s in two)  # shapes may be equal


def test_rendered_items_have_exact_colours_and_objects_never_cover_each_other():
    orange = IMAGE_COLOURS["orange"]
    for kind, count in (("video", 200), ("image", 200)):
        for index in range(count):
            spec = item_spec(11, kind, index)
            frames = render_spec(spec)
            assert frames.shape == (spec.num_frames, 64, 64, 3)
            sizes = [int(shape_mask(o.shape, o.side).sum()) for o in spec.objects]
            for obj, size in zip(spec.objects, sizes):  # every pixel of every object visible in every frame
                visible = (frames == IMAGE_COLOURS[obj.colour]).all(-1).sum(axis=(1, 2))
                assert (visible == size).all()
            # and nothing else is drawn: no other colour, no blended pixel
            assert (frames.any(-1).sum(axis=(1, 2)) == sum(sizes)).all()
            if kind == "video":
                assert not (frames == orange).all(-1).any()


def test_items_are_deterministic_by_seed_and_index():
    assert item_spec(5, "video", 7) == item_spec(5, "video", 7)
    assert np.array_equal(render_spec(item_spec(5, "video", 7)), render_spec(item_spec(5, "video", 7)))
    assert item_spec(5, "video", 7) != item_spec(6, "video", 7) != item_spec(5, "video", 8)
    story = [("a red circle moves up and a white triangle moves right", 16)]
    a, spec_a = render_scene_story(story, 3)
    b, spec_b = render_scene_story(story, np.random.default_rng(3))
    assert np.array_equal(a, b) and spec_a == spec_b and spec_a.segments() == story


def test_layout_keeps_objects_apart_when_their_motions_drive_them_together():
    rng = np.random.default_rng(0)
    for _ in range(20):
        spec = layout_story(rng, [("red", "circle"), ("blue", "square")], [16] * 8, motions=[("right", "left")] * 8)
        assert boxes_apart(spec.positions(), [o.side for o in spec.objects])
    together = SceneSpec((SceneObject("red", "circle", 10, (0, 0)), SceneObject("blue", "square", 10, (11, 0))))
    assert not boxes_apart(together.positions(), [10, 10])  # 1 px apart is closer than the gap


def test_tokvid_data_scenes_writes_what_its_manifest_says(tmp_path):
    assert run_cli(data_main, ["scenes", "--out", str(tmp_path), "--num-videos", "6", "--num-images", "4",
                               "--seed", "2"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [line["path"] for line in lines] == [f"video_{i:05d}.mp4" for i in range(6)] + \
        [f"image_{i:05d}.png" for i in range(4)]
    for line in lines:
        kind, index = line["path"][:5], int(line["path"][6:11])
        spec = item_spec(2, kind, index)
        assert {k: v for k, v in line.items() if k != "path"} == spec.record()
        frames = read_video(tmp_path / line["path"])
        assert np.array_equal(frames, render_spec(spec))  # lossless: the manifest's story, pixel for pixel
        prompts = [line["caption"]] if "caption" in line else [s["prompt"] for s in line["story"]]
        assert all(parse_scene_caption(p)[0][2] is None for p in prompts) == (kind == "image")
    assert write_scenes(tmp_path / "again", 6, 4, seed=2).read_text() == (tmp_path / "manifest.jsonl").read_text()


def test_tokvid_data_scenes_bad_counts_exit_2(tmp_path, capsys):
    assert run_cli(data_main, ["scenes", "--out", str(tmp_path), "--num-videos", "-1", "--num-images", "3"],
                   prog="tokvid-data") == 2
    assert "num_videos" in capsys.readouterr().err
