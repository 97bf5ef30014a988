"""Joint image-video training data for the generator: images (one-chunk items) mixed with videos
in a chosen ratio, Phenaki-style.

MixedItemDataset is an ItemDataset (tokvid/datasets.py), so ResumableLoader gives it the same
deterministic, rank-split, exactly resumable order as any other dataset. Its items are every video
once per epoch plus `image_slots` image slots, chosen so that images make `image_ratio` of the items:

    image_slots = round(videos * image_ratio / (1 - image_ratio))     (image_ratio < 1)

With more images than slots, slot k draws one image of its stratum {k, k + slots, k + 2 slots, ...}
from the loader's per-(seed, epoch, item) generator, so every image is reachable and an epoch still
holds distinct images; with fewer, slot k is image k mod images. Both datasets must yield samples of
one shape (TokenChunkDataset pads an image's one chunk to max_chunks and marks the rest invalid).

A mixed batch costs as much as a batch of videos: the generator's loss skips trailing padding chunks
only when every item of the batch has them (measured with the bundle's generator, 6 chunks: a batch of
8 videos + 8 images 0.94x, a batch of 16 images 0.08x the time of 16 videos). MixedBatchLoader makes
whole batches of one kind instead, the kind of batch k drawn from (seed, k) alone, so every rank takes
the same kind at the same step and image steps are that much cheaper. It is a drop-in for
ResumableLoader (same methods and state), with the same exact resume.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tokvid.datasets import ItemDataset, ResumableLoader


class SubsetDataset:
    """The items `indices` of an ItemDataset, renumbered 0..len-1."""

    def __init__(self, dataset: ItemDataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, index: int, rng: np.random.Generator) -> Any:
        return self.dataset.load(self.indices[index], rng)

    def collate(self, samples: list) -> Any:
        return self.dataset.collate(samples)

    def describe(self, index: int) -> str:
        return self.dataset.describe(self.indices[index])


def image_slot_count(num_videos: int, num_images: int, image_ratio: float) -> int:
    """Image slots per epoch so that images are `image_ratio` of the items (all images at ratio 1)."""
    if not 0 <= image_ratio <= 1:
        raise ValueError(f"image_ratio must be between 0 and 1, got {image_ratio}")
    if image_ratio > 0 and num_images == 0:
        raise ValueError(f"image_ratio {image_ratio} asks for images but the data holds none; add still images "
                         "(tokvid-data scenes --num-images) or use image_ratio 0")
    if image_ratio < 1 and num_videos == 0:
        raise ValueError(f"image_ratio {image_ratio} asks for videos but the data holds none; add videos or use 1")
    if image_ratio == 1:
        return num_images
    return max(1, round(num_videos * image_ratio / (1 - image_ratio))) if image_ratio > 0 else 0


class MixedItemDataset:
    """Videos and image slots in one ItemDataset; see the module docstring for the mix."""

    def __init__(self, videos: ItemDataset, images: ItemDataset, image_ratio: float):
        self.image_slots = image_slot_count(len(videos), len(images), image_ratio)
        self.videos, self.images, self.image_ratio = videos, images, float(image_ratio)
        self.num_videos = len(videos) if image_ratio < 1 else 0

    def __len__(self) -> int:
        return self.num_videos + self.image_slots

    def is_image(self, index: int) -> bool:
        return index >= self.num_videos

    def image_index(self, slot: int, rng: np.random.Generator) -> int:
        """The image slot `slot` shows, drawn from rng (a pure function of the loader's seed, epoch, item)."""
        num_images = len(self.images)
        if self.image_slots >= num_images:
            return slot % num_images
        return slot + self.image_slots * int(rng.integers(-(-(num_images - slot) // self.image_slots)))

    def load(self, index: int, rng: np.random.Generator) -> Any:
        if not self.is_image(index):
            return self.videos.load(index, rng)
        return self.images.load(self.image_index(index - self.num_videos, rng), rng)

    def collate(self, samples: list) -> Any:
        return (self.videos if self.num_videos else self.images).collate(samples)

    def describe(self, index: int) -> str:
        if not self.is_image(index):
            return self.videos.describe(index)
        return f"image slot {index - self.num_videos} of {self.image_slots} (images {len(self.images)})"


def split_token_shards(shards) -> tuple[list[int], list[int]]:
    """(video item indices, image item indices) of a TokenShards: an image is one latent chunk."""
    videos, images = [], []
    for index in range(len(shards)):
        (images if len(shards.codes_array(index)) == 1 else videos).append(index)
    return videos, images


def token_parts(shards, text_tokenizer, max_chunks: int,
                text_length: int | None = None) -> tuple[SubsetDataset, SubsetDataset]:
    """(videos, images) of `shards` as TokenChunkDataset views (images: one-chunk items)."""
    from tokvid.datasets import TokenChunkDataset

    chunks = TokenChunkDataset(shards, text_tokenizer, max_chunks, text_length)
    videos, images = split_token_shards(shards)
    return SubsetDataset(chunks, videos), SubsetDataset(chunks, images)


def mixed_token_dataset(shards, text_tokenizer, max_chunks: int, image_ratio: float,
                        text_length: int | None = None) -> MixedItemDataset:
    """The generator's training items of `shards` with images (one-chunk items) at `image_ratio`."""
    return MixedItemDataset(*token_parts(shards, text_tokenizer, max_chunks, text_length), image_ratio)


class ConcatDataset:
    """The items of `parts` one after the other (index i of the second part is len(first) + i)."""

    def __init__(self, *parts: ItemDataset):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(part) for part in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, index: int) -> tuple[ItemDataset, int]:
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.parts[part], index - int(self.offsets[part])

    def load(self, index: int, rng: np.random.Generator) -> Any:
        dataset, local = self._locate(index)
        return dataset.load(local, rng)

    def collate(self, samples: list) -> Any:
        return self.parts[0].collate(samples)

    def describe(self, index: int) -> str:
        dataset, local = self._locate(index)
        return dataset.describe(local)


class MixedBatchLoader:
    """ResumableLoader's interface over whole batches of videos or of images (module docstring).

    Batch k is an image batch when default_rng([seed, k]).random() < image_ratio, independent of the
    rank; videos and images each keep their own ResumableLoader order (images with seed + 1), each with
    num_workers processes (ResumableLoader's meaning). `dataset` is ConcatDataset(videos, images): bad_items
    are keyed by its indices."""

    def __init__(self, videos: ItemDataset, images: ItemDataset, image_ratio: float, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int | None = 0):
        image_slot_count(len(videos), len(images), image_ratio)  # checks the ratio against the data
        self.image_ratio, self.batch_size, self.seed, self.batches = float(image_ratio), batch_size, seed, 0
        self.dataset = ConcatDataset(videos, images)
        self.videos = self.images = None
        if image_ratio < 1:
            self.videos = ResumableLoader(videos, batch_size, seed, rank, world_size, num_workers)
        if image_ratio > 0:
            self.images = ResumableLoader(images, batch_size, seed + 1, rank, world_size, num_workers)

    def batch_is_images(self, number: int) -> bool:
        return bool(np.random.default_rng([self.seed, number]).random() < self.image_ratio)

    def _loader(self) -> ResumableLoader:
        loader = self.images if self.batch_is_images(self.batches) else self.videos
        self.batches += 1
        return loader

    def next_batch(self) -> Any:
        return self._loader().next_batch()

    def skip(self, num_items: int) -> None:
        """Advance past whole batches (the rest of a step that was abandoned)."""
        if num_items % self.batch_size:
            raise ValueError(f"skip whole batches of {self.batch_size} items, got {num_items}")
        for _ in range(num_items // self.batch_size):
            self._loader().skip(self.batch_size)

    @property
    def epoch(self) -> int:
        return (self.videos or self.images).epoch

    @property
    def position(self) -> int:
        return (self.videos or self.images).position

    @property
    def bad_items(self) -> dict[int, str]:
        bad = dict(self.videos.bad_items) if self.videos else {}
        if self.images:
            bad.update({int(self.dataset.offsets[1]) + i: why for i, why in self.images.bad_items.items()})
        return bad

    def state_dict(self) -> dict:
        return {"batches": self.batches, "image_ratio": self.image_ratio,
                "videos": self.videos.state_dict() if self.videos else None,
                "images": self.images.state_dict() if self.images else None}

    def load_state_dict(self, state: dict) -> None:
        if state.get("image_ratio") != self.image_ratio:
            raise ValueError(f"cannot continue the data order of the checkpoint: image_ratio was "
                             f"{state.get('image_ratio')}, now {self.image_ratio}; resume with the same ratio")
        for name in ("videos", "images"):
            if getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])
        self.batches = int(state["batches"])
