"""Joint image-video training data for the generator: images (one-chunk items) mixed with videos
in a chosen ratio, Phenaki-style.

MixedItemDataset is an ItemDataset (tokvid/datasets.py), so ResumableLoader gives it the same
deterministic, rank-split, exactly resumable order as any other dataset. Its items are every video
once per epoch plus `image_slots` image slots, chosen so that images make `image_ratio` of the items:

    image_slots = round(videos * image_ratio / (1 - image_ratio))     (image_ratio < 1)

With more images than slots, slot k draws one image of its stratum {k, k + slots, k + 2 slots, ...}
from the loader's per-(seed, epoch, item) generator, so every image is reachable and an epoch still
holds distinct images; with fewer, slot k is image k mod images. Both datasets must yield samples of
one shape (TokenChunkDataset pads an image's one chunk to max_chunks and marks the rest invalid;
the generator's loss skips trailing padding chunks when a whole batch has them).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from tokvid.datasets import ItemDataset


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
    for index, (_, _, length) in enumerate(shards.index):
        (images if length == 1 else videos).append(index)
    return videos, images


def mixed_token_dataset(shards, text_tokenizer, max_chunks: int, image_ratio: float,
                        text_length: int | None = None) -> MixedItemDataset:
    """The generator's training items of `shards` with images (one-chunk items) at `image_ratio`."""
    from tokvid.datasets import TokenChunkDataset

    chunks = TokenChunkDataset(shards, text_tokenizer, max_chunks, text_length)
    videos, images = split_token_shards(shards)
    return MixedItemDataset(SubsetDataset(chunks, videos), SubsetDataset(chunks, images), image_ratio)
