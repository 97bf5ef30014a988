"""How many CPU threads a command computes with: the cores that are idle when it starts.

torch's default, one thread per physical core, is fastest on an idle machine but slow on a busy one: its
threads meet at every operation, and each meeting waits for a thread the busy core has descheduled. On
2 cores, sampling a 17-frame video took 0.55 s with 2 threads and 0.8 s with 1 when idle, but 1.5 s with
2 threads and 0.8 s with 1 next to one busy process (docs/benchmarks.md, "Start-up"). Imports no torch.
"""
from __future__ import annotations

import os

LOADAVG = "/proc/loadavg"  # Linux: its fourth field is "runnable threads/all threads", right now


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def idle_cores(loadavg: str = LOADAVG) -> int:
    """Usable cores minus the threads of other programs runnable right now, at least 1 (without a
    readable /proc/loadavg: every usable core). Call it before torch has run: its own threads count too."""
    try:
        with open(loadavg) as file:
            runnable = int(file.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return usable_cores()
    return max(1, usable_cores() - max(0, runnable - 1))  # one runnable thread is the caller's


def default_threads() -> int | None:
    """Threads for a command nobody told how many: None when OMP_NUM_THREADS is set (torch follows it),
    else the idle cores, at most torch's default."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    return min(torch.get_num_threads(), idle_cores())
