import numpy as np
import pytest

from tokvid.shapes import COLOURS, caption, random_story, render_story
from tokvid.shapes_eval import score_video, summarize, wilson_interval
from tokvid.video_io import read_video, write_video


def lossy(frames, tmp_path):
    write_video(tmp_path / "v.mp4", frames)  # default quality: yuv420p H.264
    return read_video(tmp_path / "v.mp4")


def test_ground_truth_scores_all_right_also_after_lossy_mp4(tmp_path):
    scores = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        story = random_story(rng)
        frames, _ = render_story(story, rng)
        for video in (frames, lossy(frames, tmp_path)):
            score = score_video(video, story)
            assert score["all_ok"], (story, score["segments"])
            assert all(score["clean_frames"]) and score["identity_kept"] and not score["frozen"]
            scores.append(score)
    summary = summarize(scores)
    assert summary["segment_accuracy"] == summary["clean_frame_rate"] == summary["identity_rate"] == 1.0
    assert summary["frozen_video_rate"] == 0.0
    low, high = summary["segment_accuracy_interval"]
    assert high == 1.0 and 0.9 < low < 1.0  # a few dozen segments all right still bound the rate below 1


def test_wilson_interval_matches_known_values_and_narrows_with_more_videos():
    # reference values of the Wilson score interval (z = 1.96)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(6, 21) == pytest.approx((0.1381, 0.4996), abs=1e-4)
    small, large = wilson_interval(6, 21), wilson_interval(30, 105)
    assert large[1] - large[0] < small[1] - small[0]
    for bad in ((3, 2), (-1, 4), (0, 0)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)


def test_without_leading_frame_is_accepted():
    story = [("a red square moves down", 16)]
    frames, _ = render_story(story, 0, start=(20, 10))
    assert score_video(frames[1:], story)["all_ok"]
    with pytest.raises(ValueError, match="expected 17"):
        score_video(frames[2:], story)


@pytest.mark.parametrize("wrong_prompt,failing", [
    ("a blue circle moves right", "colour_ok"),
    ("a red square moves right", "shape_ok"),
    ("a red triangle moves right", "shape_ok"),
    ("a red circle moves left", "motion_ok"),
    ("a red circle moves up", "motion_ok"),
    ("a red circle stays still", "motion_ok"),
])
def test_mismatched_prompts_score_wrong(tmp_path, wrong_prompt, failing):
    frames, _ = render_story([("a red circle moves right", 16)], 0, side=12, start=(10, 26))
    segment = score_video(lossy(frames, tmp_path), [(wrong_prompt, 16)])["segments"][0]
    assert not segment[failing] and not segment["ok"]


def test_each_shape_is_recognised():
    for shape in ("circle", "square", "triangle"):
        for side in (10, 14):
            prompt = caption("green", shape, "still")
            frames, _ = render_story([(prompt, 8)], 0, side=side)
            assert score_video(frames, [(prompt, 8)])["segments"][0]["shape"] == shape


def test_stopping_at_a_wall_counts_as_right_but_leaving_early_does_not():
    story = [("a cyan square moves left", 16)]
    frames, _ = render_story(story, 0, side=12, start=(10, 30))  # reaches x=0 after 5 frames
    assert score_video(frames, story)["all_ok"]
    stopped_early = frames.copy()
    stopped_early[4:] = stopped_early[3]  # halts 4 px before the wall
    assert not score_video(stopped_early, story)["segments"][0]["motion_ok"]
    # already at the wall: standing still is right, and the segment is counted as blocked, not judged frozen
    parked, _ = render_story(story, 0, side=12, start=(0, 30))
    moving, blocked = score_video(frames, story), score_video(parked, story)
    assert blocked["all_ok"] and blocked["segments"][0]["blocked"] and blocked["segments"][0]["frozen"] is None
    assert not moving["segments"][0]["blocked"]
    assert summarize([moving, blocked])["blocked_segment_rate"] == 0.5
    still = [("a cyan square stays still", 8)]
    assert not score_video(render_story(still, 0, side=12, start=(0, 30))[0], still)["segments"][0]["blocked"]


def test_static_video_for_a_moving_prompt_is_frozen():
    story = [("a yellow circle moves up", 8), ("a yellow circle moves right", 8)]
    frames, _ = render_story(story, 0, side=12, start=(20, 40))
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    score = score_video(frozen, story)
    assert score["frozen"] and all(s["frozen"] for s in score["segments"]) and not score["all_ok"]
    assert summarize([score])["frozen_video_rate"] == 1.0
    assert not score_video(frames, story)["frozen"]


def test_identity_switch_and_dirty_frames_are_caught():
    red, _ = render_story([("a red circle moves right", 8)], 0, side=12, start=(10, 10))
    blue, _ = render_story([("a blue circle moves right", 8)], 0, side=12, start=(28, 10))
    switched = np.concatenate([red, blue[1:]])
    story = [("a red circle moves right", 8), ("a red circle moves right", 8)]
    score = score_video(switched, story)
    assert not score["identity_kept"] and not score["segments"][1]["colour_ok"]

    two_objects = red.copy()
    two_objects[:, 50:60, 50:60] = COLOURS["green"]
    assert not any(score_video(two_objects, [("a red circle moves right", 8)])["clean_frames"])
    empty = np.zeros_like(red)
    empty_score = score_video(empty, [("a red circle moves right", 8)])
    assert not empty_score["all_ok"] and empty_score["segments"][0]["colour"] is None


def test_accuracy_by_segment_index_for_drift_curves():
    story = [("a white square moves down", 8), ("a white square moves up", 8), ("a white square moves down", 8)]
    frames, _ = render_story(story, 0, side=10, start=(27, 20))
    broken = frames.copy()
    broken[17:] = 0  # object vanishes in the last segment
    summary = summarize([score_video(frames, story), score_video(broken, story)])
    assert summary["accuracy_by_segment_index"] == {0: 1.0, 1: 1.0, 2: 0.5}


def test_noise_gets_no_credit_and_static_noise_is_frozen():
    noise = np.random.default_rng(0).integers(0, 256, (17, 64, 64, 3), dtype=np.uint8)
    story = [("a white circle moves left", 16)]
    segment = score_video(noise, story)["segments"][0]
    assert not segment["motion_ok"] and not segment["ok"] and segment["colour"] is None
    assert not any(score_video(noise, story)["clean_frames"])
    static = np.repeat(noise[:1], 17, axis=0)
    assert score_video(static, story)["frozen"]


def test_suites_and_oracle_run_score_perfectly():
    from tokvid.shapes_eval import long_story_suite, run_suite, single_prompt_suite, story_suite, suite_grid

    singles = single_prompt_suite()
    assert len(singles) == 7 * 3 * 5 and len({s[0][0] for s in singles}) == 105
    stories = story_suite(5, seed=1)
    for story in stories:
        motions = [text.split()[-1] for text, _ in story]
        assert 2 <= len(story) <= 4 and all(a != b for a, b in zip(motions, motions[1:]))
    long = long_story_suite(2, seed=1, total_frames=64)
    assert [sum(f for _, f in s) for s in long] == [64, 64] and len(long[0]) == 4
    result = run_suite(lambda story, seed: render_story(story, seed)[0], singles[::20] + stories[:2])
    assert result["summary"]["segment_accuracy"] == 1.0 and len(result["videos"]) == 8
    grid, columns = suite_grid(result["videos"], frames_per_row=5)
    assert grid.shape == (8 * 5, 64, 64, 3) and columns == 5


def test_tokenizer_quality_with_a_perfect_tokenizer():
    from tokvid.shapes_eval import held_out_shapes_clips, tokenizer_quality

    class Identity:
        def encode(self, x):
            return x

        def decode(self, codes):
            return codes

    clips, stories = held_out_shapes_clips(3, seed=5)
    assert [c.shape for c in clips] == [(17, 64, 64, 3)] * 3
    quality = tokenizer_quality(Identity(), clips, stories)
    assert quality["psnr_db"] > 90 and quality["reconstruction_scores"]["segment_accuracy"] == 1.0
