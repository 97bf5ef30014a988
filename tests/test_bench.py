"""Smoke runs of every script in bench/: each runs end to end as a subprocess at the smallest sizes its
flags allow, writes its JSON into a temporary directory (never bench/results/), and the JSON must hold
every field the README quotes from that file, of a sane type and range. No timing is asserted.

The phenaki-pytorch peer lives in its own venv (bench/setup_peer.sh; TOKVID_PEER_VENV points elsewhere):
without it the peer columns are left out, and the runs with the peer are skipped, saying so.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PEER_VENV = Path(os.environ.get("TOKVID_PEER_VENV", BENCH / ".peer-venv"))
PEER_PYTHON = PEER_VENV / "bin" / "python"
NO_PEER = f"no peer venv at {PEER_VENV}: run `bash bench/setup_peer.sh` (or set TOKVID_PEER_VENV) to run this"
needs_peer = pytest.mark.skipif(not PEER_PYTHON.exists(), reason=NO_PEER)

sys.path.insert(0, str(BENCH))
import common  # noqa: E402


@pytest.fixture(autouse=True)
def results_untouched():
    """No smoke run may write into bench/results/."""
    def listing():
        return {p.name: p.stat().st_mtime_ns for p in (BENCH / "results").iterdir()}

    before = listing()
    yield
    assert listing() == before, "a bench smoke run wrote into bench/results/"


def run(script: str, *args: str, cwd: Path, python: Path | str = sys.executable, timeout: float = 600) -> str:
    """Run bench/<script> with the worktree first on the path; its stdout, or a failure with its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    command = ["bash" if script.endswith(".sh") else str(python), str(BENCH / script), *args]
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def number(value, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite int or float (not bool) in [low, high]."""
    assert isinstance(value, (int, float)) and not isinstance(value, bool), value
    assert math.isfinite(value) and low <= value <= high, value
    return value


def positive(value) -> float:
    return number(value, low=1e-12)


def share(value) -> float:
    return number(value, 0.0, 1.0)


def run_json(tmp_path: Path, script: str, *args: str, python: Path | str = sys.executable) -> tuple[dict, str]:
    """Run bench/<script> with `--out tmp_path/<name>.json`; (that JSON, checked for its run facts; stdout)."""
    out = tmp_path / f"{Path(script).stem}.json"
    stdout = run(script, *args, "--out", str(out), cwd=tmp_path, python=python)
    data = json.loads(out.read_text())
    assert {"time", "threads", "loadavg_at_start", "torch"} <= data["run"].keys()
    return data, stdout


# ---- the result channel of child phases (issue 42: no shared stdout) ------------------------------------


PHASE_SCRIPT = """
import sys
sys.path.insert(0, {bench!r})
import common

def talkative(params):
    # old-style marker lines on stdout, even a half one: none of it may be taken for the result
    print("@@BENCH_RESULT@@ {{\\"rank\\": 1}}@@BENCH_RESULT@@ {{", flush=True)
    return {{"value": params["value"] * 2}}

def broken(params):
    raise RuntimeError("broken phase")

common.child_main({{"talkative": talkative, "broken": broken}})
"""


def test_phase_results_come_from_the_rank_file_not_stdout(tmp_path):
    script = tmp_path / "phases.py"
    script.write_text(PHASE_SCRIPT.format(bench=str(BENCH)))
    result = common.run_phase(script, "talkative", {"value": 21}, threads=1)
    assert result["value"] == 42 and positive(result["peak_rss_mb"])
    with pytest.raises(common.PhaseError, match=r"without writing rank0\.json[\s\S]*broken phase"):
        common.run_phase(script, "broken", {}, threads=1)


def test_result_files_are_whole_or_absent(tmp_path):
    path = common.write_result_atomically(tmp_path, 3, {"value": [1, 2]})
    assert path.name == "rank3.json" and json.loads(path.read_text()) == {"value": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["rank3.json"]  # no partial file left behind


# ---- bench/train.py ---------------------------------------------------------------------------------


@pytest.mark.bench
def test_train_smoke(tmp_path):
    """Both models at their tiny presets, 1 process and 2 ranks under the deepspeed launcher."""
    data, _ = run_json(tmp_path, "train.py", "--models", "generator", "tokenizer", "--generator-presets", "tiny",
                       "--tokenizer-presets", "tiny", "--steps", "2", "--warmup", "1")
    rows = data["results"]
    assert [r["model"] for r in rows] == ["generator tiny", "tokenizer tiny"]
    for row, unit in zip(rows, ("tokens", "frames")):
        assert row["unit"] == unit and row["two_ranks_world_size"] == 2
        assert isinstance(row["parameters"], int) and row["parameters"] > 0 and row["global_batch"] >= 2
        for key in ("flops_per_unit", "flop_counter_per_unit", "single_matmul_gflops", "two_ranks_matmul_gflops",
                    "single_2_threads_per_s", "two_ranks_per_s", "two_ranks_over_single"):
            positive(row[key])
        for key in ("single_mfu", "two_ranks_mfu"):  # model FLOP/s over a GEMM's: a share, within noise
            number(row[key], 1e-4, 1.5)
        assert len(row["matmul_shape"]) == 3 and all(isinstance(n, int) and n > 0 for n in row["matmul_shape"])


# ---- bench/generate.py ------------------------------------------------------------------------------


GENERATE_SMALL = ["--untrained", "tiny", "--steps-list", "1", "--steps-frames", "5", "--kv-chunks", "3",
                  "--lengths", "1,2", "--peer-steps", "1", "--reps", "1", "--threads", "1"]


def check_generate(data: dict) -> None:
    assert data["model"].startswith("untrained tiny")
    positive(data["matmul"]["gflops"])
    (steps,) = data["steps"]
    assert steps["steps"] == 1 and steps["frames"] == 5
    positive(steps["seconds_per_chunk"]), positive(steps["seconds_per_video_second"])
    (kv,) = data["kv"]
    assert kv["chunks"] == 3 and kv["same_samples"] is True  # "same samples: yes"
    for key in ("speedup", "sampling_speedup", "max_abs_logit"):
        positive(kv[key])
    number(kv["max_abs_logit_diff"], 0.0, 1e-3 * max(1.0, kv["max_abs_logit"]))  # "agree to 1.3e-5"
    positive(kv["full_recompute"]["median_s"]), positive(kv["kv_cache"]["median_s"])
    assert [r["chunks"] for r in data["length"]] == [1, 2]
    for row in data["length"]:
        positive(row["seconds"]), positive(row["peak_rss_mb"])
    assert data["length_ratios"]["chunks"] == [1, 2]
    positive(data["length_ratios"]["time"]), positive(data["length_ratios"]["peak_rss"])
    for group in ("ours_defaults", "ours_peer_settings"):
        video, story = data["default"][group]["video"], data["default"][group]["story"]
        assert video["frames"] == 17 and story["frames"] == 33
        positive(video["seconds"]), positive(story["seconds"]), positive(video["peak_rss_mb"])
    assert data["default"]["ours_peer_settings"]["video"]["steps"] == 1


@pytest.mark.bench
def test_generate_smoke(tmp_path):
    data, stdout = run_json(tmp_path, "generate.py", *GENERATE_SMALL, "--no-peer")
    check_generate(data)
    assert data["default"]["peer"] is None and "no peer rows" in stdout


@pytest.mark.bench
@needs_peer
def test_generate_with_the_peer(tmp_path):
    data, _ = run_json(tmp_path, "generate.py", *GENERATE_SMALL, "--peer-venv", str(PEER_VENV))
    check_generate(data)
    peer = data["default"]["peer"]
    assert peer["video"]["frames"] == 17 and peer["video"]["steps"] == 1
    positive(peer["video"]["seconds"]), positive(peer["story"]["seconds"]), positive(peer["story"]["peak_rss_mb"])


# ---- bench/tokenizer.py -----------------------------------------------------------------------------


TOKENIZER_SMALL = ["--tokenizer", "general", "--sizes", "64", "--batches", "1", "--crf", "51", "--reps", "1",
                   "--threads", "1"]


def check_quality(row: dict) -> None:
    number(row["psnr_db"], 5.0, 80.0), number(row["ssim"], -1.0, 1.0), number(row["bits_per_pixel"], 1e-4, 24.0)


def check_tokenizer(data: dict) -> None:
    (speed,) = data["speed"]
    assert speed["size"] == 64 and speed["batch"] == 1
    ours = speed["ours"]
    assert ours["frames"] == 17
    for key in ("encode_frames_per_s", "decode_frames_per_s", "peak_rss_mb"):
        positive(ours[key])
    (quality,) = data["quality"]
    check_quality(quality["ours"])
    share(quality["ours"]["codebook_usage"]), positive(quality["ours"]["perplexity"])
    assert quality["ours"]["num_clips"] >= 1 and len(quality["ours"]["psnr_per_clip"]) == quality["ours"]["num_clips"]
    (h264,) = data["h264"]["64"]
    assert h264["crf"] == 51
    check_quality(h264)
    positive(data["matmul"]["gflops"])


@pytest.mark.bench
def test_tokenizer_smoke(tmp_path):
    data, _ = run_json(tmp_path, "tokenizer.py", *TOKENIZER_SMALL, "--no-peer")
    check_tokenizer(data)
    assert data["speed"][0]["peer"] is None and data["quality"][0]["peer_untrained"] is None


@pytest.mark.bench
@needs_peer
def test_tokenizer_with_the_peer(tmp_path):
    data, _ = run_json(tmp_path, "tokenizer.py", *TOKENIZER_SMALL, "--peer-venv", str(PEER_VENV))
    check_tokenizer(data)
    peer_speed, peer_quality = data["speed"][0]["peer"], data["quality"][0]["peer_untrained"]
    positive(peer_speed["encode_frames_per_s"]), positive(peer_speed["decode_frames_per_s"])
    check_quality(peer_quality)


# ---- bench/eval_shapes.py ---------------------------------------------------------------------------


@pytest.mark.bench
def test_eval_shapes_smoke(tmp_path):
    """One video per set (the long story of two 16-frame segments), a 1-point sweep and 2 tokenizer clips,
    with the bundled model."""
    data, _ = run_json(tmp_path, "eval_shapes.py", "--limit", "1", "--stories", "1", "--long-count", "1",
                       "--long-frames", "32", "--sweep", "--sweep-cfg", "1", "--sweep-steps", "2",
                       "--sweep-temperature", "1.0", "--tokenizer", "shapes", "--tokenizer-clips", "2",
                       "--threads", "1")
    assert set(data["sets"]) == {"single", "stories", "long"}
    for name, result in data["sets"].items():
        summary = result["summary"]
        assert summary["videos"] == 1 and (tmp_path / f"eval_shapes_{name}.png").stat().st_size > 0
        for key in ("segment_accuracy", "video_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy",
                    "clean_frame_rate", "frozen_video_rate", "blocked_segment_rate"):
            share(summary[key])
        if name == "single":  # identity is a story's: one segment has none
            assert summary["identity_rate"] is None
        else:
            share(summary["identity_rate"])
        low, high = summary["segment_accuracy_interval"]
        assert 0.0 <= share(low) <= summary["segment_accuracy"] <= share(high) <= 1.0
        positive(summary["seconds_per_video"])
        assert len(result["videos"]) == 1 and positive(result["videos"][0]["seconds"])
    drift = data["sets"]["long"]["summary"]["accuracy_by_segment_index"]
    assert list(drift) == ["0", "1"] and all(share(v) is not None for v in drift.values())
    (sweep,) = data["sweep"]
    assert (sweep["cfg_scale"], sweep["steps"], sweep["temperature"]) == (1.0, 2, 1.0)
    share(sweep["segment_accuracy"]), share(sweep["frozen_video_rate"]), positive(sweep["seconds_per_video"])
    tokenizer = data["tokenizer"]
    number(tokenizer["psnr_db"], 5.0, 80.0)
    assert len(tokenizer["psnr_per_clip"]) == 2
    share(tokenizer["reconstruction_scores"]["segment_accuracy"])
    share(tokenizer["reconstruction_scores"]["clean_frame_rate"])


# ---- bench/peer_harness.py and bench/setup_peer.sh ------------------------------------------------


def test_peer_harness_smoke(tmp_path):
    """Without the peer: its settings, and the one phase that needs no peer (the matmul reference) run
    through its own child-process machinery."""
    defaults = json.loads(run("peer_harness.py", "--dump-config", "--set", "steps=2", cwd=tmp_path))
    assert defaults["steps"] == 2 and defaults["image_size"] == 64
    data, _ = run_json(tmp_path, "peer_harness.py", "--phases", "matmul", "--reps", "1", "--threads", "1")
    assert data["settings"]["reps"] == 1
    positive(data["phases"]["matmul"]["gflops"]), positive(data["phases"]["matmul"]["peak_rss_mb"])


# the peer at the sizes of its own --check (bench/peer_harness.py phase_check); an odd prime length, as its
# C-ViViT encodes 1 + 2k frames
PEER_TINY = {"tok_dim": 32, "tr_dim": 32, "tok_heads": 2, "tr_heads": 2, "tok_dim_head": 16, "tr_dim_head": 16,
             "tr_depth": 1, "tok_spatial_depth": 1, "tok_temporal_depth": 1, "codebook_size": 256, "image_size": 16,
             "patch_size": 8, "frames": 5, "steps": 2, "text_len": 4, "text_dim": 32, "max_seq_len": 64, "batch": 1,
             "reps": 1, "story_frames": [5, 4], "prime_length": 3}


@pytest.mark.bench
@needs_peer
def test_peer_harness_with_the_peer(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(PEER_TINY))
    data, _ = run_json(tmp_path, "peer_harness.py", "--phases", "params,tok_infer,gen_video,gen_story", "--config",
                       str(config), "--threads", "1", python=PEER_PYTHON)
    phases = data["phases"]
    assert phases["params"]["tokenizer_parameters"] > 0 and phases["params"]["maskgit_parameters"] > 0
    positive(phases["tok_infer"]["encode_frames_per_s"]), positive(phases["tok_infer"]["decode_frames_per_s"])
    assert phases["gen_video"]["frames"] == 5 and positive(phases["gen_video"]["seconds"])
    assert phases["gen_story"]["frames"] == 9 and positive(phases["gen_story"]["peak_rss_mb"])


@needs_peer
def test_setup_peer_leaves_a_ready_venv_as_it_is(tmp_path):
    stdout = run("setup_peer.sh", str(PEER_VENV), cwd=tmp_path)
    assert "already has the pinned versions" in stdout and "peer venv ready" in stdout


# ---- bench/startup.py and bench/eval_scenes.py ---------------------------------------------------


@pytest.mark.bench
def test_startup_smoke(tmp_path):
    """Start-up and a 1-frame `tokvid generate`, once each, against `import torch` measured in the same run."""
    out = tmp_path / "startup.json"
    stdout = run("startup.py", "--reps", "1", "--frames", "1", "--out", str(out), cwd=tmp_path)
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert set(rows) == {"import_torch", "import_tokvid", "generate_help", "generate_threads_1",
                         "generate_threads_default"}
    for row in rows.values():
        positive(row["median_s"]), positive(row["ratio_to_import_torch"])
    assert rows["import_torch"]["ratio_to_import_torch"] == 1.0 and "generate_help" in stdout


@pytest.mark.bench
def test_eval_scenes_smoke(tmp_path):
    """Ground truth on a couple of videos per set: the harness scores what it renders as right."""
    data, _ = run_json(tmp_path, "eval_scenes.py", "--oracle", "--small", "--single", "1", "--pairs", "1",
                       "--held-out", "1", "--held-out-pair", "1", "--orange", "1", "--orange-pair", "1",
                       "--stories", "1", "--long", "1", "--long-frames", "32", "--threads", "1")
    assert {"single", "pairs", "held_out", "orange", "stories", "long"} <= set(data["sets"])
    for result in data["sets"].values():
        summary = result["summary"]
        assert share(summary["video_accuracy"]["rate"]) == 1.0  # the renders themselves are right
        assert share(summary["clean_frame_rate"]["rate"]) == 1.0 and share(summary["frozen_video_rate"]["rate"]) == 0
        low, high = summary["video_accuracy"]["interval"]
        assert 0.0 <= share(low) <= 1.0 == share(high)


def test_benches_write_outside_the_committed_results_unless_told():
    """Re-running a bench as documented must not overwrite bench/results/ by accident."""
    import eval_scenes
    import eval_shapes

    for module in (eval_shapes, eval_scenes):
        out = Path(module.parse_args([]).out).resolve()
        assert BENCH / "results" not in out.parents, (module.__name__, out)
