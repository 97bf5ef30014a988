import zlib

import numpy as np
import pytest
import torch

from tokvid.datasets import ResumableLoader
from tokvid.mixed_dataset import (MixedBatchLoader, MixedItemDataset, SubsetDataset, image_slot_count,
                                  mixed_token_dataset, split_token_shards, token_parts)
from tokvid.scenes import item_spec
from tokvid.shards import ShardWriter, TokenShards

MAX_CHUNKS = 3


class HashTokenizer:
    """Stands in for TextTokenizer: one id per word from its CRC, bos=2, eos=3, pad=0."""

    max_length = 16

    def batch(self, prompts, length):
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            encoded = [2] + [4 + zlib.crc32(word.encode()) % 200 for word in prompt.split()] + [3]
            ids[row, :len(encoded)] = torch.tensor(encoded[:length])
        return ids


@pytest.fixture
def shards(tmp_path):
    """7 scenes videos (2-3 chunks, codes marking the item) and 10 images (1 chunk) interleaved."""
    info = {"name": "test", "fingerprint": "0", "vocab_size": 1000, "temporal_compression": 4,
            "spatial_compression": 8}
    with ShardWriter(tmp_path, info, items_per_shard=5) as writer:
        for index in range(17):
            kind = "image" if index % 5 in (1, 3, 4) and index < 16 or index == 16 else "video"
            spec = item_spec(0, kind, index)
            chunks = 1 if kind == "image" else 2 + index % 2
            codes = torch.full((chunks, 2, 2), index) + torch.arange(chunks)[:, None, None] * 100
            writer.add(codes, {**spec.record(), "num_frames": 1 if kind == "image" else 1 + 4 * (chunks - 1)})
    return TokenShards(tmp_path)


def batches(loader, count):
    return [loader.next_batch() for _ in range(count)]


def test_images_take_the_asked_share_and_every_image_is_reachable(shards):
    videos, images = split_token_shards(shards)
    assert len(videos) == 7 and len(images) == 10
    assert all(len(shards[i][0]) == 1 for i in images) and all(len(shards[i][0]) > 1 for i in videos)
    assert image_slot_count(7, 10, 0.5) == 7 and image_slot_count(7, 10, 0.0) == 0
    assert image_slot_count(7, 10, 1.0) == 10 and image_slot_count(30, 10, 0.75) == 90
    dataset = mixed_token_dataset(shards, HashTokenizer(), MAX_CHUNKS, image_ratio=0.5)
    assert len(dataset) == 14 and sum(dataset.is_image(i) for i in range(14)) == 7
    seen = set()
    for epoch in range(40):
        for slot in range(7, 14):
            sample = dataset.load(slot, np.random.default_rng([1, epoch, slot]))
            assert sample["chunk_valid"].tolist() == [True, False, False]  # one chunk, padded
            seen.add(int(sample["codes"][0, 0, 0]))
    assert seen == set(images)  # codes hold the item index
    video = dataset.load(0, np.random.default_rng(0))
    assert int(video["codes"][0, 0, 0]) == videos[0] and video["chunk_valid"][:2].all()
    with pytest.raises(ValueError, match="holds none"):
        MixedItemDataset(SubsetDataset(dataset, range(3)), SubsetDataset(dataset, []), 0.3)
    with pytest.raises(ValueError, match="between 0 and 1"):
        image_slot_count(7, 10, 1.5)


def test_resuming_mid_epoch_gives_exactly_the_same_batches(shards):
    def loader(rank=0, world_size=1):
        dataset = mixed_token_dataset(TokenShards(shards.directory), HashTokenizer(), MAX_CHUNKS, image_ratio=0.6)
        return ResumableLoader(dataset, batch_size=3, seed=4, rank=rank, world_size=world_size)

    for world_size in (1, 2):
        for rank in range(world_size):
            straight = batches(loader(rank, world_size), 9)  # crosses several epochs
            first = loader(rank, world_size)
            head = batches(first, 4)
            state = first.state_dict()
            assert 0 < state["position"]  # cut mid-epoch
            resumed = loader(rank, world_size)
            resumed.load_state_dict(state)
            for expected, got in zip(straight, head + batches(resumed, 5)):
                assert expected.keys() == got.keys()
                assert all(torch.equal(expected[key], got[key]) for key in expected)
    images = sum(int((b["chunk_valid"].sum(1) == 1).sum()) for b in straight)
    assert 0 < images < 27  # both kinds are in the batches


def test_batch_level_mix_is_homogeneous_rank_aligned_and_resumes_exactly(shards):
    def loader(rank=0, world_size=1, ratio=0.4):
        videos, images = token_parts(TokenShards(shards.directory), HashTokenizer(), MAX_CHUNKS)
        return MixedBatchLoader(videos, images, ratio, batch_size=2, seed=9, rank=rank, world_size=world_size)

    kinds = []
    for world_size in (1, 2):
        for rank in range(world_size):
            straight = batches(loader(rank, world_size), 12)
            kinds.append([bool((b["chunk_valid"].sum(1) == 1).all()) for b in straight])
            assert all(k or not (b["chunk_valid"].sum(1) == 1).any() for k, b in zip(kinds[-1], straight))
            first = loader(rank, world_size)
            head = batches(first, 5)
            first.skip(2)  # an abandoned step
            resumed = loader(rank, world_size)
            resumed.load_state_dict(first.state_dict())
            assert first.epoch == resumed.epoch and first.position == resumed.position
            for expected, got in zip(straight, head + [None] + batches(resumed, 6)):
                if got is not None:
                    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert kinds[0] == kinds[1] == kinds[2] and 0 < sum(kinds[0]) < 12  # same kind on every rank, both kinds
    with pytest.raises(ValueError, match="image_ratio was 0.4"):
        loader(ratio=0.5).load_state_dict(loader().state_dict())
    with pytest.raises(ValueError, match="whole batches"):
        loader().skip(3)
    assert len(loader().dataset) == 17 and loader().bad_items == {}
