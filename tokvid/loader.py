"""Samples of a ResumableLoader made in worker processes, ahead of the training step.

A sample is a pure function of its slot (epoch, position in the epoch's permutation) and the seed:
`find_sample` walks the permutation from the slot to the first usable item and loads it with a
generator seeded by (seed, epoch, item). Workers (torch DataLoader processes) run find_sample for the
slots this rank will read, in order, a few batches ahead; the loader consumes their results in slot
order and only then learns the bad items each result met, so its state (position, bad items and
their count) after n samples is exactly that of a loader without workers, and a resumed run reads
the same samples whatever the number of workers.
"""
from __future__ import annotations

import math
import os
import signal
from typing import Any, Iterator

import numpy as np
import torch

from tokvid.cpu import usable_cores

# (sample, offset of the item used from the slot's position, [(bad item, reason), ...] met on the way)
Found = tuple[Any, int, list[tuple[int, str]]]
# what a worker returns for a slot: (slot, found, error message if no item of the epoch is usable)
SlotResult = tuple[tuple[int, int], Found | None, str | None]


def epoch_permutation(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The order of all items in one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def find_sample(dataset, permutation: np.ndarray, start: int, seed: int, epoch: int,
                known_bad: dict[int, str]) -> Found:
    """The sample of the slot at `start`: the first item of the permutation from there that loads
    (items in known_bad are not tried again). ValueError if no item of the epoch is usable."""
    num_items = len(permutation)
    found: list[tuple[int, str]] = []
    for offset in range(num_items):
        index = int(permutation[(start + offset) % num_items])
        if index in known_bad:
            continue
        try:
            return dataset.load(index, np.random.default_rng([seed, epoch, index])), offset, found
        except ValueError as error:
            found.append((index, str(error)))
            known_bad = {**known_bad, index: str(error)}
    first = next(iter(known_bad.values()))
    raise ValueError(f"none of the {num_items} items can be used; first problem: {first}")


def next_slot(epoch: int, position: int, rank: int, world_size: int,
              items_per_rank: int) -> tuple[tuple[int, int], int, int]:
    """This rank's slot at (epoch, position), and the (epoch, position) after it: rank r of W reads
    perm[r::W], items_per_rank per epoch."""
    slot = (epoch, rank + position * world_size)
    position += 1
    if position == items_per_rank:
        epoch, position = epoch + 1, 0
    return slot, epoch, position


def slot_sequence(epoch: int, position: int, rank: int, world_size: int, items_per_rank: int) -> Iterator[tuple[int, int]]:
    """This rank's slots from (epoch, position) on."""
    while True:
        slot, epoch, position = next_slot(epoch, position, rank, world_size, items_per_rank)
        yield slot


def default_num_workers() -> int:
    """Loader processes per rank: the cores this rank's share of the machine has beyond the one its
    training step runs on, at most 4. One core per rank (2 ranks here): 0, loading stays in the step,
    as workers would only compete with it. Beyond 4, decoding rarely limits one accelerator and every
    worker holds its own copy of the dataset and clip cache."""
    cores = usable_cores()
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1))  # torchrun, deepspeed
    return max(0, min(4, cores // ranks_here - 1))


class _SlotDataset(torch.utils.data.Dataset):
    """What a worker runs: a slot -> its SlotResult. Keeps the bad items it met, to skip them later."""

    def __init__(self, dataset, seed: int, known_bad: dict[int, str]):
        self.dataset, self.seed, self.known_bad = dataset, seed, dict(known_bad)
        self.permutation: tuple[int, np.ndarray] | None = None

    def __getitem__(self, slot: tuple[int, int]) -> SlotResult:
        epoch, start = slot
        if self.permutation is None or self.permutation[0] != epoch:
            self.permutation = (epoch, epoch_permutation(len(self.dataset), self.seed, epoch))
        try:
            found = find_sample(self.dataset, self.permutation[1], start, self.seed, epoch, self.known_bad)
        except ValueError as error:  # sent as text: a worker's exception would arrive wrapped in a traceback
            return slot, None, str(error)
        self.known_bad.update(found[2])
        return slot, found, None


class _Slots(torch.utils.data.Sampler):
    def __init__(self, slots: Iterator[tuple[int, int]]):
        self.slots = slots

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self.slots


def _keep(result: SlotResult) -> SlotResult:
    return result


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    # Ctrl-C, scancel, docker stop and the launchers signal the whole process group, workers included, but
    # the signal is for the training process: it finishes its step with the samples already made, saves and
    # exits. So a worker ignores SIGINT, and on SIGTERM (also how DataLoader and multiprocessing stop
    # workers) it exits with status 0: a worker killed by the signal would make the training process fail
    # its save ("DataLoader worker is killed by signal"), one that ignored it would hang the exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)


def _exit_quietly(signum: int, frame) -> None:
    os._exit(0)


def prefetching_results(dataset, seed: int, known_bad: dict[int, str], slots: Iterator[tuple[int, int]],
                        num_workers: int, samples_ahead: int) -> Iterator[SlotResult]:
    """SlotResults of `slots`, in order, computed by num_workers processes about samples_ahead ahead."""
    context = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None
    loader = torch.utils.data.DataLoader(
        _SlotDataset(dataset, seed, known_bad), batch_size=None, sampler=_Slots(slots), num_workers=num_workers,
        collate_fn=_keep, prefetch_factor=max(2, math.ceil(samples_ahead / num_workers)),
        worker_init_fn=_worker_init, multiprocessing_context=context,
        generator=torch.Generator().manual_seed(0))  # its own generator: the global RNG stays the training's
    return iter(loader)
