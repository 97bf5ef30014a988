"""Training datasets with a deterministic, resumable order split across data-parallel ranks.

Order: every epoch is a permutation of all items drawn from (seed, epoch); rank r of W reads
perm[r::W], cut to len // W items so that every rank runs the same number of steps. The loader's
state is (epoch, position) plus what it learnt about bad items, so a resumed run reads exactly the
batches an uninterrupted run would have read (with the same seed, number of ranks and batch size).
Random crops come from a generator seeded by (seed, epoch, item), never from a global RNG, so they
do not depend on the rank, the world size or what ran before.

An item that cannot be used (corrupt or too short video, empty prompt: the dataset raises
ValueError) is replaced by the next item of the epoch's permutation, so batch shapes and the
order stay reproducible; the loader counts it and remembers it for later epochs.

With num_workers > 0, samples are made in worker processes ahead of the step (loader.py), with the
same batches, state and bad-item reports as without workers.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from tokvid.loader import (Found, SlotResult, default_num_workers, epoch_permutation, find_sample, next_slot,
                           prefetching_results, slot_sequence)
from tokvid.manifest import ManifestIndex, item_segments
from tokvid.story import chunk_segments
from tokvid.video_io import count_frames, frames_to_tensor, read_video

logger = logging.getLogger(__name__)


class ItemDataset(Protocol):
    """What ResumableLoader needs from a dataset."""

    def __len__(self) -> int: ...

    def load(self, index: int, rng: np.random.Generator) -> Any:
        """One training sample; ValueError if the item cannot be used."""

    def collate(self, samples: list) -> Any:
        """A batch from a list of samples."""

    def describe(self, index: int) -> str:
        """A name for the item in messages (its file)."""


class ResumableLoader:
    """Batches from an ItemDataset in a deterministic, rank-split, resumable order.

    num_workers > 0 makes the samples in that many processes, a batch or two ahead (see loader.py);
    the batches, the state and the bad items reported are those of num_workers=0. None: a default
    for this machine (loader.default_num_workers)."""

    def __init__(self, dataset: ItemDataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int | None = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} ranks")
        if len(dataset) < world_size:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than the {world_size} ranks; add data")
        num_workers = default_num_workers() if num_workers is None else num_workers
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.items_per_rank = len(dataset) // world_size
        self.epoch, self.position = 0, 0
        self.bad_items: dict[int, str] = {}  # item index -> reason, learnt while reading
        self.bad_encounters = 0  # sample slots that needed a replacement (an item met in two epochs counts twice)
        self._permutation_cache: tuple[int, np.ndarray] | None = None
        self._results: Iterator[SlotResult] | None = None  # the workers' results, from the next slot on

    def next_batch(self) -> Any:
        return self.dataset.collate([self._next_sample() for _ in range(self.batch_size)])

    def skip(self, num_items: int) -> None:
        """Advance past items without using them (the rest of a step that was abandoned)."""
        for _ in range(num_items):
            if self._results is not None:
                self._worker_result()  # made ahead, dropped unseen: as if never read
            self._take_slot()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "bad_items": dict(self.bad_items),
                "bad_encounters": self.bad_encounters, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "num_items": len(self.dataset), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        expected = {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                    "num_items": len(self.dataset), "batch_size": self.batch_size}
        changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
        if changed:
            raise ValueError("cannot continue the data order of the checkpoint: "
                             + ", ".join(f"{k} was {old}, now {new}" for k, (old, new) in changed.items())
                             + "; resume with the same data, seed, number of ranks and micro-batch size")
        self.close()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.bad_items = {int(k): str(v) for k, v in state["bad_items"].items()}
        self.bad_encounters = int(state["bad_encounters"])

    def close(self) -> None:
        """Stop the worker processes (they start again, from the current slot, at the next batch)."""
        self._results = None  # the DataLoader iterator shuts its workers down when dropped

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._permutation_cache is None or self._permutation_cache[0] != epoch:
            self._permutation_cache = (epoch, epoch_permutation(len(self.dataset), self.seed, epoch))
        return self._permutation_cache[1]

    def _take_slot(self) -> tuple[int, int]:
        """(epoch, position in the epoch's global permutation) of this rank's next sample."""
        slot, self.epoch, self.position = next_slot(self.epoch, self.position, self.rank, self.world_size,
                                                    self.items_per_rank)
        return slot

    def _next_sample(self) -> Any:
        if self.num_workers == 0:
            epoch, start = self._take_slot()
            return self._accept(find_sample(self.dataset, self._permutation(epoch), start, self.seed, epoch,
                                            self.bad_items))
        if self._results is None:
            slots = slot_sequence(self.epoch, self.position, self.rank, self.world_size, self.items_per_rank)
            self._results = prefetching_results(self.dataset, self.seed, self.bad_items, slots, self.num_workers,
                                                samples_ahead=2 * self.batch_size)
        result = self._worker_result()
        if result is None:
            return self._next_sample()
        slot, found, error = result
        if slot != self._take_slot():
            raise RuntimeError(f"rank {self.rank}: a worker answered for slot {slot} out of order")
        if error is not None:
            raise ValueError(error)
        return self._accept(found)

    def _worker_result(self) -> SlotResult | None:
        """The workers' next result; None when they are gone (a signal to the process group stops them
        while the step still needs samples): this loader then makes its samples itself, the same ones,
        since a sample is a function of (seed, epoch, item) alone."""
        try:
            return next(self._results)
        except (RuntimeError, OSError, EOFError) as error:
            # RuntimeError: DataLoader saw a worker exit; OSError/EOFError: it exited while handing over a
            # sample's shared memory (its fd is fetched from the worker: "Connection reset by peer")
            if isinstance(error, RuntimeError) and "DataLoader worker" not in str(error):
                raise
            logger.warning("rank %d: data workers stopped (%s); making the samples in this process", self.rank,
                           error)
            self._results, self.num_workers = None, 0
            return None

    def _accept(self, found: Found) -> Any:
        """Learn what finding a sample met, in slot order: the bad items and whether it needed a replacement."""
        sample, offset, bad = found
        for index, reason in bad:
            if index not in self.bad_items:
                self.bad_items[index] = reason
                logger.warning("rank %d: skipping unusable item %s (%s); replaced by the next item of the epoch "
                               "(%d unusable so far)", self.rank, self.dataset.describe(index), reason,
                               len(self.bad_items))
        self.bad_encounters += offset > 0
        return sample


# ----------------------------------------------------------------------------------------------
# video clips for the tokenizer


class ClipDataset:
    """Clips of `num_frames` frames at `size` from the videos and images of a manifest.

    A window of num_frames starts at a random frame. An image (a 1-frame item) becomes a still clip:
    the causal tokenizer codes and decodes frame 0 of any clip from that frame alone, so the image
    is trained exactly as a 1-frame clip would be, plus still-video frames, and every batch keeps
    one shape (a different number of forward passes per rank would deadlock ZeRO-3's parameter
    gathering). Videos with 2..num_frames-1 frames are unusable (ValueError).

    The window's start is drawn from the frame count, which comes from the file's timestamps
    without decoding (video_io.count_frames), and only the window is decoded (read_video seeks
    to the keyframe before it). Whole decoded videos are kept in a bounded LRU cache only when
    they are short (at most SMALL_VIDEO_WINDOWS windows long): decoding those whole costs about
    what one window costs, and a dataset of short clips then decodes each clip once.
    """

    SMALL_VIDEO_WINDOWS = 4

    def __init__(self, items: list[dict] | str | Path, num_frames: int, size: int | tuple[int, int],
                 temporal_compression: int, fps: float | None = None, cache_bytes: int = 1 << 30):
        # a manifest file is indexed, not loaded: millions of lines cost megabytes, in every worker
        items = ManifestIndex(items) if isinstance(items, (str, Path)) else list(items)
        if not len(items):
            raise ValueError("the manifest has no items; add video or image files to it")
        if num_frames < 1 or (num_frames - 1) % temporal_compression:
            raise ValueError(f"num_frames must be 1 + k*{temporal_compression} for this tokenizer, got {num_frames}")
        self.items, self.num_frames, self.size, self.fps = items, num_frames, size, fps
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        return str(self.items[index]["path"])

    def load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        # the start is a pure function of (seed, epoch, item) and the file: resumed runs read the same clips
        total = len(self._cache[index]) if index in self._cache else count_frames(self.describe(index), fps=self.fps)
        whole = self._whole(index) if total <= self.SMALL_VIDEO_WINDOWS * self.num_frames else None
        if whole is not None:
            total = len(whole)  # what decoded rules, as when every video was decoded whole
        if total == 1:
            return frames_to_tensor(np.repeat(whole, self.num_frames, axis=0))
        if total < self.num_frames:
            raise ValueError(f"{self.describe(index)} has {total} frames, fewer than num_frames="
                             f"{self.num_frames}; lower --num-frames or remove the video")
        start = int(rng.integers(0, total - self.num_frames + 1))
        if whole is not None:
            frames = whole[start:start + self.num_frames]
        else:
            frames = read_video(self.describe(index), fps=self.fps, size=self.size, start_frame=start,
                                num_frames=self.num_frames)
        if len(frames) != self.num_frames:  # the timestamps promised frames that do not decode
            raise ValueError(f"{self.describe(index)}: read {len(frames)} frames at frame {start}, "
                             f"not {self.num_frames}; check the file with tokvid-data check")
        return frames_to_tensor(frames)

    def collate(self, samples: list[torch.Tensor]) -> torch.Tensor:
        """(B, 3, num_frames, H, W) in [-1, 1]."""
        return torch.stack(samples)

    def _whole(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        frames = read_video(self.describe(index), fps=self.fps, size=self.size)
        self._cache[index] = frames
        self._cached_bytes += frames.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes
        return frames


def clip_frame_count(batch: torch.Tensor) -> int:
    """Video frames in a ClipDataset batch (the tokenizer's throughput unit)."""
    return batch.shape[0] * batch.shape[2]


# ----------------------------------------------------------------------------------------------
# token chunks for the generator


class TokenChunkDataset:
    """Windows of at most `max_chunks` latent chunks from token shards, with per-chunk prompt ids.

    Each chunk gets the ids of the prompt that governs it (story.chunk_segments). Longer items are
    cut at a random chunk; shorter ones are padded and marked invalid in `chunk_valid`.
    """

    def __init__(self, shards, text_tokenizer, max_chunks: int, text_length: int | None = None):
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
        if len(shards) == 0:
            raise ValueError(f"{shards.directory} holds no items; encode some videos with tokvid-encode")
        self.shards, self.text_tokenizer, self.max_chunks = shards, text_tokenizer, max_chunks
        self.text_length = text_length or text_tokenizer.max_length
        self.temporal_compression = int(shards.info["tokenizer"]["temporal_compression"])

    def __len__(self) -> int:
        return len(self.shards)

    def describe(self, index: int) -> str:
        return str(self.shards.meta[index].get("source", f"{self.shards.directory} item {index}"))

    def load(self, index: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        codes, meta = self.shards[index]
        prompts, frames = zip(*item_segments(meta))
        owners = chunk_segments([max(f, 1) for f in frames], self.temporal_compression)  # an image has 0 frames
        num_chunks = codes.shape[0]
        owners = (owners + owners[-1:] * num_chunks)[:num_chunks]  # encoders may keep fewer frames than the story
        start = int(rng.integers(0, num_chunks - self.max_chunks + 1)) if num_chunks > self.max_chunks else 0
        stop = min(num_chunks, start + self.max_chunks)
        text = self.text_tokenizer.batch([prompts[owner] for owner in owners[start:stop]], self.text_length)
        padding = self.max_chunks - (stop - start)
        valid = torch.arange(self.max_chunks) < stop - start
        codes = torch.cat([codes[start:stop], codes.new_zeros((padding, *codes.shape[1:]))])
        text = torch.cat([text, text[-1:].expand(padding, -1)])
        return {"codes": codes, "text": text, "chunk_valid": valid}

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def chunk_token_count(batch: dict[str, torch.Tensor]) -> int:
    """Video tokens in valid chunks of a TokenChunkDataset batch (the generator's throughput unit)."""
    codes = batch["codes"]
    return int(batch["chunk_valid"].sum()) * codes.shape[-2] * codes.shape[-1]
