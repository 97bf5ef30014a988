"""The peer (phenaki-pytorch 0.5.0) on the scenes benchmark: bench/peer_scenes.py prepares the data and scores,
bench/peer_train.py trains and samples in the peer's venv. Everything but the peer itself is tested here with
tokvid's python (the text stand-in, the data, the batches, scoring videos made elsewhere); the end-to-end run
needs the venv (bench/setup_peer.sh) and is skipped without it, saying so."""
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from test_bench import BENCH, PEER_VENV, needs_peer, run
from tokvid.scenes import iter_scenes, render_spec, write_scenes
from tokvid.scenes_eval import build_scene_sets

sys.path.insert(0, str(BENCH))
import eval_scenes  # noqa: E402
import peer_harness  # noqa: E402
import peer_scenes  # noqa: E402
import peer_train  # noqa: E402

WORLD = {"num_videos": 4, "num_images": 3, "seed": 5}
ONE_PER_SET = ["--small", "--single", "1", "--pairs", "1", "--held-out", "1", "--held-out-pair", "1", "--orange", "1",
               "--orange-pair", "1", "--stories", "1", "--long", "1", "--long-frames", "32"]


@pytest.fixture(scope="module")
def scenes_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root, **WORLD)
    return root


@pytest.fixture(scope="module")
def prepared(scenes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return out, peer_scenes.prepare_data(scenes_data, out)


# ---- the text stand-in -------------------------------------------------------------------------


def test_word_standin_shares_rows_between_prompts_that_share_words():
    cfg = {**peer_harness.DEFAULTS, "text_standin": "words", "text_len": 8, "text_dim": 16}
    a, b = peer_harness.text_standin(cfg)(["a red circle moves right", "a red square moves right"])
    assert a.shape == (8, 16)
    assert torch.equal(a[:2], b[:2]) and torch.equal(a[3:5], b[3:5]) and not torch.allclose(a[2], b[2])
    assert (a[5:] == 0).all() and (a[:5] != 0).any(dim=-1).all()  # the peer masks the all-zero rows
    c = peer_harness.text_standin(cfg)("red a")[0]
    assert not torch.allclose(c[0], a[1])  # a word's row depends on its position...
    assert torch.allclose(a[1] - c[0], c[1] - a[0], atol=1e-6)  # ...by a vector of the position alone
    assert torch.equal(peer_harness.text_standin(cfg)("a red circle moves right")[0], a)  # fixed, not drawn anew


def test_prompt_standin_of_the_speed_phases_is_unchanged():
    cfg = {**peer_harness.DEFAULTS, "text_len": 8, "text_dim": 16}
    assert cfg["text_standin"] == "prompt"
    expected = torch.randn(8, 16, generator=torch.Generator().manual_seed(zlib.crc32(b"a red circle")))
    assert torch.equal(peer_harness.text_standin(cfg)("a red circle")[0], expected)
    with pytest.raises(SystemExit, match="text_standin"):
        peer_harness.text_standin({**cfg, "text_standin": "t5"})


# ---- the training data ---------------------------------------------------------------------------


def expected_items() -> list[tuple[np.ndarray, str]]:
    """(frames, caption) per training item, from the world's renders: each segment from its leading frame."""
    expected = []
    for _, spec in iter_scenes(**WORLD):
        frames, start = render_spec(spec), 1
        if spec.is_image:
            expected.append((frames, spec.captions()[0]))
        for prompt, length in spec.segments():
            expected.append((frames[start - 1:start + length], prompt))
            start += length
    return expected


def read_prepared(out: Path, info: dict) -> tuple[np.ndarray, list[dict]]:
    frames = np.fromfile(out / "frames.u8", np.uint8).reshape(info["frames"], info["height"], info["width"], 3)
    return frames, [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]


def test_prepare_data_holds_every_segment_from_its_leading_frame_and_every_still(prepared):
    out, info = prepared
    frames, items = read_prepared(out, info)
    expected = expected_items()
    assert (info["videos"], info["images"], info["items"]) == (4, 3, len(expected)) == (4, 3, len(items))
    for item, (clip, caption) in zip(items, expected):
        assert item["caption"] == caption and item["frames"] == len(clip)
        np.testing.assert_array_equal(frames[item["start"]:item["start"] + item["frames"]], clip)
    assert sorted({item["frames"] for item in items}) == [1, 9, 17]


def test_prepare_data_keeps_a_matching_directory_and_redoes_another(scenes_data, tmp_path):
    first = peer_scenes.prepare_data(scenes_data, tmp_path, max_videos=1, max_images=2)
    stamp = (tmp_path / "frames.u8").stat().st_mtime_ns
    assert peer_scenes.prepare_data(scenes_data, tmp_path, max_videos=1, max_images=2) == first
    assert (tmp_path / "frames.u8").stat().st_mtime_ns == stamp
    video_items = len(next(spec for _, spec in iter_scenes(**WORLD)).frames)
    assert (first["videos"], first["images"], first["items"]) == (1, 2, video_items + 2)
    again = peer_scenes.prepare_data(scenes_data, tmp_path)
    assert (again["videos"], again["images"]) == (4, 3)


def test_training_batches_are_of_one_kind_and_come_from_the_seed(prepared):
    out, info = prepared
    frames, _ = read_prepared(out, info)
    items = peer_train.TrainingItems(out)
    stills, captions = items.batch(np.random.default_rng(0), 5, image_ratio=1.0)
    assert stills.shape == (5, 3, 64, 64) and all(" moves" not in c and " still" not in c for c in captions)
    clips, captions = items.batch(np.random.default_rng(1), 3, image_ratio=0.0)
    assert clips.ndim == 5 and clips.shape[:2] == (3, 3) and clips.shape[2] in (9, 17)
    for clip, caption in zip(clips, captions):  # each clip is the frames of an item with its caption
        pixels = (clip.permute(1, 2, 3, 0).numpy() * 255).round()
        assert any(np.array_equal(pixels, frames[item["start"]:item["start"] + item["frames"]])
                   for item in items.groups[len(pixels)] if item["caption"] == caption)
    again, _ = items.batch(np.random.default_rng(1), 3, image_ratio=0.0)
    assert torch.equal(clips, again)


def test_a_run_keeps_the_settings_it_started_with(tmp_path):
    cfg = peer_train.run_config(tmp_path, 90.0, {"tok_batch": 8})
    assert cfg["tok_batch"] == 8 and cfg["text_standin"] == "words" and cfg["minutes"] == 90.0
    assert peer_train.run_config(tmp_path, 90.0, {"tok_batch": 8}) == cfg
    with pytest.raises(SystemExit, match="minutes"):
        peer_train.run_config(tmp_path, 120.0, {"tok_batch": 8})
    with pytest.raises(SystemExit, match="tok_batch"):
        peer_train.run_config(tmp_path, 90.0, {})
    with pytest.raises(SystemExit, match="KEY=JSON"):
        peer_train.overrides_from(["no_such_setting=1"])


# ---- scoring videos made elsewhere ---------------------------------------------------------------


def fake_peer_videos(directory: Path, argv: list[str], blank: str | None = None) -> dict:
    """What bench/peer_train.py generate writes, with the sets' ground truth as the videos (set `blank`: black)."""
    eval_args = eval_scenes.parse_args([*argv, "--videos", str(directory)])
    prompts = peer_scenes.write_prompts(eval_args, directory / "prompts.json")
    sets = build_scene_sets(eval_args.sizes, eval_args.set_seed, eval_args.long_frames)
    for name, stories in prompts["sets"].items():
        videos = [render_spec(spec) * (name != blank) for spec in sets[name]]
        peer_train.write_set_videos(directory / f"{name}.npz", stories, prompts["seed"], [2.0] * len(stories), videos)
    (directory / "producer.json").write_text(json.dumps({"model": "fake peer"}))
    return prompts


def test_eval_scenes_scores_videos_made_elsewhere(tmp_path):
    prompts = fake_peer_videos(tmp_path, ONE_PER_SET, blank="pairs")
    out = tmp_path / "eval.json"
    assert eval_scenes.main([*ONE_PER_SET, "--videos", str(tmp_path), "--out", str(out), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert set(report["sets"]) == set(prompts["sets"]) and report["produced_by"] == {"model": "fake peer"}
    for name, result in report["sets"].items():
        assert result["summary"]["video_accuracy"]["rate"] == (0.0 if name == "pairs" else 1.0), name
        assert result["summary"]["seconds_per_video"] == 2.0  # the maker's time, not the lookup's
        assert [video["story"] for video in result["videos"]] == prompts["sets"][name]
        assert Path(result["grid"]).exists()


def test_eval_scenes_refuses_videos_made_for_other_prompts(tmp_path, capsys):
    fake_peer_videos(tmp_path, ONE_PER_SET)
    argv = [*ONE_PER_SET, "--videos", str(tmp_path), "--out", str(tmp_path / "eval.json"), "--threads", "1"]
    assert eval_scenes.main([*argv, "--set-seed", "7"]) == 2
    assert "made for other prompts or seeds" in capsys.readouterr().err
    (tmp_path / "long.npz").unlink()
    assert eval_scenes.main(argv) == 2
    assert "long.npz is missing" in capsys.readouterr().err


# ---- the peer itself (its venv) ------------------------------------------------------------------

# the peer at about the sizes of its own --check (bench/peer_harness.py phase_check), on 64 px frames
PEER_TINY = {"tok_dim": 32, "tr_dim": 32, "tok_heads": 2, "tr_heads": 2, "tok_dim_head": 16, "tr_dim_head": 16,
             "tr_depth": 1, "tok_spatial_depth": 1, "tok_temporal_depth": 1, "codebook_size": 256, "text_dim": 32,
             "steps": 2, "checkpoint_minutes": 0.02}


@pytest.mark.bench
@needs_peer
def test_peer_trains_samples_and_is_scored_then_a_rerun_continues(scenes_data, tmp_path):
    settings = [arg for key, value in PEER_TINY.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    argv = ["--data", str(scenes_data), "--run", str(tmp_path / "run"), "--minutes", "0.1", "--peer-venv",
            str(PEER_VENV), "--threads", "1", *settings, *ONE_PER_SET, "--out", str(tmp_path / "peer.json")]
    run("peer_scenes.py", *argv, cwd=tmp_path)
    report = json.loads((tmp_path / "peer.json").read_text())
    training = report["produced_by"]["training"]
    assert report["produced_by"]["settings"]["text_standin"] == "words"
    for stage, share in (("cvivit", 0.35), ("maskgit", 0.65)):
        assert training[stage]["steps"] > 0 and training[stage]["trained_minutes"] >= 0.1 * share - 1e-6
    for result in report["sets"].values():
        assert 0.0 <= result["summary"]["video_accuracy"]["rate"] <= 1.0 and Path(result["grid"]).exists()
    made = {path: path.stat().st_mtime_ns for pattern in ("train/*.pt", "train/*.ckpt", "videos/*.npz")
            for path in (tmp_path / "run").glob(pattern)}
    assert len(made) == 4 + 8
    stdout = run("peer_scenes.py", *argv, cwd=tmp_path)  # all done: nothing is trained or sampled again
    assert "resuming" not in stdout and {path: path.stat().st_mtime_ns for path in made} == made
    assert json.loads((tmp_path / "peer.json").read_text())["produced_by"] == report["produced_by"]
