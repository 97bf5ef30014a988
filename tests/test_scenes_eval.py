from dataclasses import replace

import numpy as np
import pytest

from tokvid.scenes import HELD_OUT, IMAGE_COLOURS, SceneObject, SceneSpec, render_spec
from tokvid.scenes_eval import (MOVES, build_scene_sets, long_scene_set, pair_set, score_scene, single_set,
                                summarize_scenes)
from tokvid.shapes import MOTIONS, draw_object
from tokvid.video_io import read_video, write_video

# a red circle on the left moving up, a blue square on the right moving down: apart in every variant
RED_BLUE = SceneSpec((SceneObject("red", "circle", 12, (6, 40)), SceneObject("blue", "square", 12, (44, 8))),
                     motions=(("up", "down"),), frames=(16,))


def score(spec: SceneSpec, prompt_spec: SceneSpec = RED_BLUE) -> dict:
    return score_scene(render_spec(spec), prompt_spec.segments())


def test_ground_truth_of_every_set_scores_right():
    sizes = {"single": None, "pairs": 25, "held_out": 20, "held_out_pair": 20, "orange": 12, "orange_pair": 12,
             "stories": 12, "long": 2}
    scores = []
    for name, specs in build_scene_sets(sizes, seed=7).items():
        assert len(specs) == (85 if name == "single" else sizes[name])
        scores += [score(spec, spec) for spec in specs]
    summary = summarize_scenes(scores)
    assert summary["video_accuracy"]["rate"] >= 0.99 and summary["clean_frame_rate"]["rate"] >= 0.99
    assert summary["binding_error_rate"]["rate"] == 0 and summary["frozen_video_rate"]["rate"] == 0
    assert summary["identity_rate"]["rate"] == 1 and summary["story_identity_rate"]["n"] == 14
    low, high = summary["video_accuracy"]["interval"]
    assert high == 1.0 and 0.97 < low < 1.0


def test_ground_truth_survives_a_lossy_mp4(tmp_path):
    scores = []
    for spec in pair_set(25, seed=1) + build_scene_sets({"orange_pair": 6, "stories": 6}, 3)["stories"]:
        write_video(tmp_path / "v.mp4", render_spec(spec))  # default quality: yuv420p H.264
        scores.append(score_scene(read_video(tmp_path / "v.mp4"), spec.segments()))
    summary = summarize_scenes(scores)
    assert summary["object_accuracy"]["rate"] >= 0.95 and summary["clean_frame_rate"]["rate"] >= 0.95


def test_right_video_scores_right_per_object():
    result = score(RED_BLUE)
    assert result["all_ok"] and not result["binding_error"] and all(result["clean_frames"])
    red, blue = result["segments"][0]["objects"]
    assert (red["colour"], red["shape"], red["motion"]) == ("red", "circle", "up") and red["ok"]
    assert (blue["colour"], blue["shape"], blue["motion"]) == ("blue", "square", "down") and blue["ok"]


def test_swapped_colours_shapes_motions_and_bindings_are_rejected():
    red, blue = RED_BLUE.objects
    swapped_colours = replace(RED_BLUE, objects=(replace(red, colour="blue"), replace(blue, colour="red")))
    swapped_shapes = replace(RED_BLUE, objects=(replace(red, shape="square"), replace(blue, shape="circle")))
    swapped_motions = replace(RED_BLUE, motions=(("down", "up"),))
    for spec, shapes, motions in ((swapped_colours, True, True), (swapped_shapes, True, False),
                                  (swapped_motions, False, True)):
        result = score(spec)
        segment = result["segments"][0]
        assert not result["all_ok"] and result["binding_error"]
        assert (segment["shape_swapped"], segment["motion_swapped"]) == (shapes, motions)
        assert all(result["clean_frames"])  # the right objects are there, bound wrongly


def test_wrong_missing_and_extra_objects_are_caught():
    red, blue = RED_BLUE.objects
    recoloured = score(replace(RED_BLUE, objects=(red, replace(blue, colour="cyan"))))
    assert not recoloured["segments"][0]["objects"][1]["colour_ok"] and not any(recoloured["clean_frames"])
    assert not recoloured["binding_error"]  # one object wrong is not a swap
    missing = score(replace(RED_BLUE, objects=(red,), motions=(("up",),)))
    assert not missing["all_ok"] and not any(missing["clean_frames"])
    extra = render_spec(RED_BLUE)
    draw_object(extra, np.tile([[26, 26]], (17, 1)), "triangle", 10, IMAGE_COLOURS["orange"])
    extra_score = score_scene(extra, RED_BLUE.segments())
    assert extra_score["all_ok"] and not any(extra_score["clean_frames"])  # right objects, stray blob
    wrong_shape = score(replace(RED_BLUE, objects=(replace(red, shape="triangle"), blue)))
    assert not wrong_shape["all_ok"] and not wrong_shape["binding_error"]


def test_frozen_video_and_lost_identity():
    still = np.repeat(render_spec(RED_BLUE)[:1], 17, axis=0)
    result = score_scene(still, RED_BLUE.segments())
    assert result["frozen"] and not result["all_ok"]
    story = replace(RED_BLUE, motions=(("up", "down"), ("right", "still")), frames=(16, 8))
    frames = render_spec(story)
    red = story.objects[0]
    changed = render_spec(replace(story, objects=(replace(red, shape="square"), story.objects[1])))
    frames[17:] = changed[17:]  # the red circle turns into a square in the second segment
    result = score_scene(frames, story.segments())
    assert result["identity_per_object"] == [False, True] and not result["identity_kept"]
    assert result["segments"][0]["ok"] and not result["segments"][1]["ok"]


def test_summary_rates_and_intervals():
    scores = [score(RED_BLUE), score(replace(RED_BLUE, motions=(("down", "up"),))),
              score_scene(render_spec(single_set(1, 0)[0]), single_set(1, 0)[0].segments())]
    summary = summarize_scenes(scores)
    assert summary["video_accuracy"]["rate"] == pytest.approx(2 / 3) and summary["videos"] == 3
    assert summary["binding_error_rate"]["rate"] == 0.5 and summary["binding_error_rate"]["n"] == 2
    assert summary["identity_rate"] is None  # no story
    low, high = summary["video_accuracy"]["interval"]
    assert 0.1 < low < 2 / 3 < high < 1
    with pytest.raises(ValueError, match="at least one"):
        summarize_scenes([])


def test_sets_cover_what_they_promise():
    sets = build_scene_sets({"pairs": 25, "held_out": 20, "held_out_pair": 8, "orange": 12, "orange_pair": 6,
                             "stories": 10}, seed=0)
    assert {s.motions[0] for s in sets["pairs"]} == {(a, b) for a in MOTIONS for b in MOTIONS}
    assert {(o.colour, o.shape) for s in sets["held_out"] for o in s.objects} == HELD_OUT
    assert all(sum((o.colour, o.shape) in HELD_OUT for o in s.objects) == 1 and len(s.objects) == 2
               for s in sets["held_out_pair"])
    assert all(s.objects[0].colour == "orange" and s.motions[0][0] in MOVES for s in sets["orange"])
    assert all(any(o.colour == "orange" for o in s.objects) and len(s.objects) == 2 for s in sets["orange_pair"])
    for spec in sets["stories"]:
        assert 2 <= len(spec.frames) <= 4 and len(spec.objects) == 2
        assert all(a != b for a, b in zip(spec.motions, spec.motions[1:]))  # every switch shows
    assert long_scene_set(1, 0)[0].num_frames == 257
    with pytest.raises(ValueError, match="unknown sets"):
        build_scene_sets({"everything": 3}, 0)


def test_bad_input_is_a_value_error():
    frames = render_spec(RED_BLUE)
    with pytest.raises(ValueError, match="third|names 3"):
        score_scene(frames, [("a red circle moves up and a blue square moves up and a cyan circle moves up", 16)])
    with pytest.raises(ValueError, match="same objects"):
        score_scene(frames, [("a red circle moves up", 8), ("a red circle moves up and a blue square moves up", 8)])
    with pytest.raises(ValueError, match="expected 17"):
        score_scene(frames[:5], RED_BLUE.segments())
    with pytest.raises(ValueError, match="uint8"):
        score_scene(frames.astype(np.float32), RED_BLUE.segments())
