"""Stopping a run as schedulers do: SIGINT or SIGTERM to the whole process group, under every launcher.

Each interrupted run must finish its step, commit a checkpoint, exit non-zero (128 + the signal for the
ranks), and continue with `--resume auto` to the losses of an uninterrupted run.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60  # runs far enough past the stop; interrupted and reference runs share the LR schedule

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="needs the deepspeed launcher")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tokvid.shapes import write_dataset

    root = tmp_path_factory.mktemp("signals")
    return write_dataset(root / "data", num_videos=8, seed=0, image_fraction=0.0, segment_frames=(8,))


def command(launcher: str, manifest: Path, out: Path, max_steps: int, *extra: str) -> list[str]:
    from tokvid.training.distributed import free_port

    script = str(ROOT / "train" / "train_tokenizer.py")
    prefix = {"single": [sys.executable, script],
              "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           script],
              "deepspeed": ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), script]}[launcher]
    return prefix + ["--manifest", str(manifest), "--out", str(out), "--preset", "tiny", "--num-frames", "5",
                     "--size", "32", "--max-steps", str(max_steps), "--seed", "0", "--lr", "3e-3",
                     "--warmup-steps", "2", "--save-every", "1000", "--micro-batch", "2", "--threads", "1", *extra]


def environment() -> dict:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def losses(run: Path) -> list:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_to_the_end(launcher: str, manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(command(launcher, manifest, out, STEPS, *extra), env=environment(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def interrupt(launcher: str, manifest: Path, out: Path, signals: tuple[int, ...]) -> tuple[int, str]:
    """Start a run in a process group of its own, wait for its second step, signal the whole group."""
    process = subprocess.Popen(command(launcher, manifest, out, STEPS), env=environment(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "the run never reached step 2"
        time.sleep(0.2)
    for signum in signals:
        os.killpg(process.pid, signum)
        time.sleep(0.3)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.fixture(scope="module")
def references(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("references")
    run_to_the_end("single", data, root / "one")
    run_to_the_end("torchrun", data, root / "two")
    return {1: losses(root / "one"), 2: losses(root / "two")}


@pytest.mark.parametrize("launcher, signals, resume", [
    ("single", (signal.SIGTERM,), True),
    ("single", (signal.SIGINT, signal.SIGINT), False),   # Ctrl-C pressed twice
    ("torchrun", (signal.SIGINT,), True),
    ("torchrun", (signal.SIGTERM,), False),
    ("deepspeed", (signal.SIGTERM, signal.SIGTERM), True),  # the launcher escalates on top of the scheduler
    ("deepspeed", (signal.SIGINT,), False),
])
def test_a_group_signal_saves_the_step_and_resume_continues_exactly(data, references, tmp_path, launcher, signals,
                                                                    resume):
    from tokvid.training.checkpoints import complete_checkpoints

    out = tmp_path / "run"
    code, output = interrupt(launcher, data, out, signals)
    assert code != 0, output[-3000:]
    if launcher == "single":
        assert code == 128 + signals[0], output[-3000:]
    assert f"interrupted by signal {int(signals[0])}" in output, output[-3000:]
    saved = complete_checkpoints(out)
    steps_run = len(losses(out))
    assert [step for step, _ in saved] == [steps_run] and steps_run < STEPS, output[-3000:]
    if resume:
        ranks = 1 if launcher == "single" else 2
        run_to_the_end(launcher, data, out, "--resume", "auto")
        assert losses(out) == references[ranks]  # bit for bit, the steps before and after the stop


def test_resume_auto_without_a_checkpoint_says_it_starts_fresh(data, tmp_path):
    result = subprocess.run(command("single", data, tmp_path / "fresh", 1, "--resume", "auto"), env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no complete checkpoint" in result.stderr and "starting from step 0" in result.stderr
