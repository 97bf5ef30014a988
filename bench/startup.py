"""Start-up and a short video end to end, as a user runs `tokvid generate`, side by side in one run.

    python bench/startup.py --out runs/startup.json [--reps 3] [--frames 17]

Each measure runs in a fresh process (median of --reps). The baseline is `import torch` alone, the
floor any PyTorch program pays (with Python's teardown of torch, ~0.3 s, which `tokvid generate` skips);
`tokvid generate --help` is the CLI's start-up (it imports no torch); the whole command is measured at
1 thread and at the CLI's default (one per idle core: all of them on a quiet machine).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a red circle moves right"


def timed(command: list[str], reps: int, env: dict) -> dict:
    seconds = []
    for _ in range(reps):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    return {"median_s": statistics.median(seconds), "runs_s": seconds}


def measure(reps: int, frames: int, work: Path) -> dict:
    env = {**os.environ}
    env.pop("OMP_NUM_THREADS", None)
    generate = [sys.executable, "-m", "tokvid.cli", "generate", "--prompt", PROMPT, "--num-frames", str(frames),
                "--out", str(work / "bench.mp4"), "--quiet", "--no-sheet"]
    rows = {
        "import_torch": timed([sys.executable, "-c", "import torch"], reps, env),
        "import_tokvid": timed([sys.executable, "-c", "import tokvid"], reps, env),
        "generate_help": timed([sys.executable, "-m", "tokvid.cli", "generate", "--help"], reps, env),
        "generate_threads_1": timed(generate + ["--threads", "1"], reps, env),
        "generate_threads_default": timed(generate, reps, env),
    }
    floor = rows["import_torch"]["median_s"]
    for row in rows.values():
        row["ratio_to_import_torch"] = row["median_s"] / floor
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"frames": frames, "reps": reps, "cores": os.cpu_count(), "load_average_1min": load, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/startup.json", help="result JSON (bench/results/ holds the committed one)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--frames", type=int, default=17)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        result = measure(args.reps, args.frames, Path(work))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measure':28s} {'median s':>9s} {'x import torch':>15s}   (load {result['load_average_1min']})")
    for name, row in result["rows"].items():
        print(f"{name:28s} {row['median_s']:9.2f} {row['ratio_to_import_torch']:15.2f}")


if __name__ == "__main__":
    main()
