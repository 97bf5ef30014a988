"""Shared helpers of the benchmark scripts: phases in fresh child processes, timing, peak memory,
a same-run matmul reference, clip quality metrics, tables and JSON.

Only the standard library is imported at module level, because bench/peer_harness.py imports this
file from inside the peer's venv, which has torch and numpy but not tokvid (nor scikit-image).

A phase is one measurement run in a fresh child process, so its peak RSS is its own:
    result = run_phase(script, "encode", {"size": 64}, threads=2)
starts `python script --_phase '{"phase": "encode", "size": 64, "threads": 2, "result_dir": ...}'`;
the script hands that to `child_main(PHASES)`, which calls PHASES["encode"](params) and writes its
dict (plus the child's peak RSS and load average) to `<result_dir>/rank<RANK>.json`, atomically.
A phase run under a launcher (`run_launched_phase`) has one such file per rank. Results never travel
through stdout: a launcher merges its ranks' stdout into one stream, where lines can arrive joined.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

PHASE_FLAG = "--_phase"
RESULT_DIR_KEY = "result_dir"
BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PEER_VENV = BENCH_DIR / ".peer-venv"
PEER_HARNESS = BENCH_DIR / "peer_harness.py"
DEFAULT_THREADS = 2


# ----------------------------------------------------------------------------------------------
# phases in child processes


class PhaseError(RuntimeError):
    """A child phase failed; the message carries the tail of its stderr."""


def run_phase(script: str | Path, phase: str, params: dict | None = None, threads: int = DEFAULT_THREADS,
              python: str | Path | None = None, timeout: float | None = None) -> dict:
    """Run one phase of `script` in a fresh process of `python` (default: this interpreter); return its dict."""
    with tempfile.TemporaryDirectory(prefix="bench-phase-") as result_dir:
        payload = {"phase": phase, "threads": threads, **(params or {}), RESULT_DIR_KEY: result_dir}
        command = [str(python or sys.executable), str(script), PHASE_FLAG, json.dumps(payload)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        return _read_rank_results(Path(result_dir), 1, proc, f"phase {phase!r} of {Path(script).name}")[0]


def run_launched_phase(script: str | Path, phase: str, params: dict, ranks: int,
                       timeout: float | None = None) -> list[dict]:
    """Run one phase of `script` as `ranks` processes x 1 thread under the deepspeed launcher; return
    every rank's dict, in rank order."""
    from tokvid.training.distributed import free_port

    with tempfile.TemporaryDirectory(prefix="bench-launch-") as result_dir:
        payload = json.dumps({"phase": phase, "threads": 1, **params, RESULT_DIR_KEY: result_dir})
        env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"), "OMP_NUM_THREADS": "1"}
        command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(free_port()),
                   str(Path(script).resolve()), PHASE_FLAG, payload]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        return _read_rank_results(Path(result_dir), ranks, proc, f"launched phase {phase!r} of {Path(script).name}")


def _read_rank_results(result_dir: Path, ranks: int, proc: subprocess.CompletedProcess, what: str) -> list[dict]:
    """Each rank's result file; PhaseError (with the tail of the output) when a rank wrote none."""
    paths = [result_dir / f"rank{rank}.json" for rank in range(ranks)]
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise PhaseError(f"{what} exited with code {proc.returncode} without writing {', '.join(missing)}:\n{tail}")
    return [json.loads(path.read_text()) for path in paths]


def write_result_atomically(result_dir: str | Path, rank: int, result: dict) -> Path:
    """Write `result` to <result_dir>/rank<rank>.json so that a reader sees the whole file or none."""
    path = Path(result_dir) / f"rank{rank}.json"
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(result, default=_json_default))
    os.replace(partial, path)
    return path


def child_main(phases: dict[str, Callable[[dict], dict]]) -> None:
    """Entry point of a child started by run_phase or run_launched_phase: run the phase named in argv,
    write its result file, exit."""
    params = json.loads(sys.argv[sys.argv.index(PHASE_FLAG) + 1])
    name = params.pop("phase")
    result_dir = params.pop(RESULT_DIR_KEY)
    if name not in phases:
        raise SystemExit(f"unknown phase {name!r}; known: {sorted(phases)}")
    loadavg = os.getloadavg()[0]
    set_threads(params.get("threads", DEFAULT_THREADS))
    result = phases[name](params)
    result = {**result, "peak_rss_mb": peak_rss_mb(), "loadavg_at_start": round(loadavg, 2)}
    # the launcher sets RANK in every rank's environment; a lone child is rank 0
    write_result_atomically(result_dir, int(os.environ.get("RANK", 0)), result)
    sys.exit(0)


def is_child_call() -> bool:
    return PHASE_FLAG in sys.argv


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(int(threads))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ----------------------------------------------------------------------------------------------
# timing


def time_median(fn: Callable[[], object], reps: int = 3, warmup: int = 1) -> dict:
    """Median wall time (perf_counter) of `reps` calls after `warmup` untimed ones; min/max/all kept too."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, reps)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "all_s": [round(t, 6) for t in times], "reps": len(times), "warmup": warmup}


def matmul_phase(params: dict) -> dict:
    """fp32 square matmul GFLOP/s at the phase's thread count: the machine's speed in this run."""
    import torch

    size = int(params.get("matmul_size", 1024))
    a, b = torch.randn(size, size), torch.randn(size, size)
    timing = time_median(lambda: torch.mm(a, b), reps=int(params.get("reps", 5)), warmup=2)
    return {"size": size, "gflops": 2 * size ** 3 / timing["median_s"] / 1e9, "timing": timing}


def matmul_reference(script: str | Path, threads: int, reps: int = 5) -> dict:
    """Run matmul_phase in a child of `script` (every bench script registers it as "matmul")."""
    return run_phase(script, "matmul", {"reps": reps}, threads=threads)


# ----------------------------------------------------------------------------------------------
# peer venv


def peer_python(venv: str | Path | None = None) -> Path | None:
    """The peer venv's python, or None when bench/setup_peer.sh has not been run."""
    path = Path(venv or DEFAULT_PEER_VENV) / "bin" / "python"
    return path if path.exists() else None


def run_peer_phase(phase: str, params: dict, threads: int, venv: str | Path | None = None) -> dict | None:
    """One phase of bench/peer_harness.py in the peer venv; None (with a note printed) if the venv is absent."""
    python = peer_python(venv)
    if python is None:
        print(f"note: no peer venv at {Path(venv or DEFAULT_PEER_VENV)}; run `bash bench/setup_peer.sh` "
              "to add the phenaki-pytorch columns. Continuing without them.")
        return None
    return run_phase(PEER_HARNESS, phase, params, threads=threads, python=python)


# ----------------------------------------------------------------------------------------------
# quality metrics on uint8 clips (T,H,W,3); numpy imported lazily, scikit-image only for SSIM


def clip_psnr(reference, reconstruction) -> float:
    """PSNR in dB over the whole clip, pixels on [0,1]."""
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64) / 255.0
    rec = np.asarray(reconstruction, dtype=np.float64) / 255.0
    mse = float(np.mean((ref - rec) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def clip_ssim(reference, reconstruction) -> float:
    """Mean over frames of skimage's SSIM (channel_axis=-1, data_range=1) on [0,1] pixels."""
    import numpy as np
    from skimage.metrics import structural_similarity

    ref = np.asarray(reference, dtype=np.float64) / 255.0
    rec = np.asarray(reconstruction, dtype=np.float64) / 255.0
    return float(np.mean([structural_similarity(a, b, channel_axis=-1, data_range=1.0) for a, b in zip(ref, rec)]))


def mean_quality(references, reconstructions, with_ssim: bool = True) -> dict:
    """Mean PSNR (and SSIM) over clips."""
    psnrs = [clip_psnr(a, b) for a, b in zip(references, reconstructions)]
    result = {"psnr_db": statistics.fmean(psnrs), "psnr_per_clip": psnrs}
    if with_ssim:
        ssims = [clip_ssim(a, b) for a, b in zip(references, reconstructions)]
        result.update(ssim=statistics.fmean(ssims), ssim_per_clip=ssims)
    return result


# ----------------------------------------------------------------------------------------------
# output


def run_info(threads: int) -> dict:
    """What the numbers of a run depend on."""
    info = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
            "loadavg_at_start": [round(v, 2) for v in os.getloadavg()]}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def write_json(path: str | Path | None, data: dict) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {path}")


def run_report(args, fill) -> int:
    """What an evaluation script's main does: threads, the run facts, fill(report, out) adding its results
    (PNGs go beside out), then the JSON; a ValueError is one line and exit code 2."""
    set_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"run": run_info(args.threads), "args": vars(args)}
    try:
        fill(report, out)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json(out, report)
    return 0


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def warn_if_busy(phase_results: list[dict | None], threads: int) -> None:
    """Print a warning when the load average at the start of any phase exceeded the threads in use."""
    loads = [r["loadavg_at_start"] for r in phase_results if r and "loadavg_at_start" in r]
    if loads and max(loads) > threads + 0.5:
        print(f"\nwarning: the load average reached {max(loads)} on {os.cpu_count()} cores during these phases; "
              "other processes shared the CPU, so timings are noisy. Rerun on a quiet machine for numbers to quote.")


def fmt(value, digits: int = 3) -> str:
    """Compact number formatting for tables; '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if value == 0 or not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}g}" if magnitude < 1 else f"{value:.2f}"


def ratio(ours, theirs) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
