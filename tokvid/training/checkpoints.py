"""Checkpoints on disk: atomic commits and resume resolution.

Every rank writes into `RUN/checkpoints/step-XXXXXXX.tmp` (DeepSpeed state plus a per-rank file with
its data position); rank 0 then writes a COMPLETE marker, fsyncs and renames the
directory. A save killed halfway leaves the previous checkpoint intact; `resume="auto"` takes the
newest complete one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "COMPLETE"


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every committed checkpoint of a run, oldest first; .tmp dirs are ignored."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        suffix = path.name[len("step-"):]
        if path.is_dir() and suffix.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(suffix), path))
    return sorted(found)


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint directory to resume from, or None for a fresh start."""
    existing = complete_checkpoints(run_dir)
    if resume is None:
        if existing:
            raise ValueError(f"{run_dir} already has checkpoints (newest: {existing[-1][1].name}); pass "
                             "--resume auto to continue that run or choose another --out")
        return None
    if resume == "auto":
        return existing[-1][1] if existing else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker); "
                         "pass --resume auto to take the newest complete one")
    return path


def fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.pt"


def commit_checkpoint(tmp_dir: Path, final_dir: Path, summary: dict) -> None:
    """Make a fully written checkpoint directory visible atomically (rank 0, after a barrier)."""
    for path in sorted(tmp_dir.rglob("*")):
        if path.is_file():
            fsync_path(path)
    marker_tmp = tmp_dir / (COMPLETE_MARKER + ".tmp")
    marker_tmp.write_text(json.dumps(summary, indent=2) + "\n")
    fsync_path(marker_tmp)
    os.replace(marker_tmp, tmp_dir / COMPLETE_MARKER)
    fsync_path(tmp_dir)
    if final_dir.exists():  # the same step saved again (e.g. a resumed run's final save)
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    fsync_path(final_dir.parent)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and leftovers of killed saves."""
    for _, path in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for path in (Path(run_dir) / CHECKPOINTS).glob("step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
