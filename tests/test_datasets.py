"""Data order, resumable loader state, bad-item replacement, clip and token-chunk datasets."""
import numpy as np
import pytest
import torch

from tokvid.datasets import (ClipDataset, ResumableLoader, TokenChunkDataset, chunk_token_count, clip_frame_count,
                             epoch_permutation)
from tokvid.shards import ShardWriter, TokenShards
from tokvid.story import chunk_segments
from tokvid.video_io import frames_to_tensor, read_video, write_video


class NumberedItems:
    """Item i is a tensor holding i plus a random value drawn from the item's generator."""

    def __init__(self, size: int, bad: tuple[int, ...] = ()):
        self.size, self.bad, self.loads = size, set(bad), 0

    def __len__(self):
        return self.size

    def load(self, index, rng):
        self.loads += 1
        if index in self.bad:
            raise ValueError(f"item {index} is corrupt")
        return torch.tensor([float(index), rng.random()])

    def collate(self, samples):
        return torch.stack(samples)

    def describe(self, index):
        return f"item-{index}.mp4"


def drain(loader, batches):
    return [loader.next_batch() for _ in range(batches)]


def test_ranks_split_each_epoch_into_disjoint_equal_parts():
    items = NumberedItems(11)
    loaders = [ResumableLoader(items, batch_size=1, seed=3, rank=r, world_size=3) for r in range(3)]
    seen = [torch.cat(drain(loader, 3))[:, 0].long().tolist() for loader in loaders]
    flat = sorted(sum(seen, []))
    assert len(set(flat)) == 9 and all(len(s) == 3 for s in seen)  # 11 // 3 per rank, no overlap
    assert set(flat) <= set(epoch_permutation(11, 3, 0)[:9].tolist())
    assert loaders[0].epoch == 1 and loaders[0].position == 0
    assert not np.array_equal(epoch_permutation(11, 3, 0), epoch_permutation(11, 3, 1))


def test_one_rank_with_the_global_batch_reads_what_two_ranks_read():
    items = NumberedItems(10)
    single = torch.cat(drain(ResumableLoader(items, batch_size=4, seed=0), 6))
    pair = [drain(ResumableLoader(items, batch_size=2, seed=0, rank=r, world_size=2), 6) for r in range(2)]
    for step in range(6):
        together = torch.cat([pair[0][step], pair[1][step]])
        assert sorted(together[:, 0].tolist()) == sorted(single[4 * step: 4 * step + 4, 0].tolist())
        assert torch.equal(together[together[:, 0].argsort()], single[4 * step: 4 * step + 4][
            single[4 * step: 4 * step + 4, 0].argsort()])


@pytest.mark.parametrize("rank", [0, 1])
def test_state_round_trip_gives_identical_next_batches_across_an_epoch_boundary(rank):
    items = NumberedItems(9, bad=(4,))
    reference = ResumableLoader(items, batch_size=3, seed=5, rank=rank, world_size=2)
    drain(reference, 3)  # 9 samples: more than one epoch of 4 per rank
    state = reference.state_dict()
    expected = drain(reference, 4)
    resumed = ResumableLoader(NumberedItems(9, bad=(4,)), batch_size=3, seed=5, rank=rank, world_size=2)
    resumed.load_state_dict(state)
    for a, b in zip(expected, drain(resumed, 4)):
        assert torch.equal(a, b)
    assert resumed.bad_encounters == reference.bad_encounters


def test_state_refuses_a_different_world_or_batch():
    loader = ResumableLoader(NumberedItems(8), batch_size=2, seed=0, rank=0, world_size=2)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="world_size was 2, now 1"):
        ResumableLoader(NumberedItems(8), batch_size=2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        ResumableLoader(NumberedItems(8), batch_size=4, seed=0, rank=0, world_size=2).load_state_dict(state)


def test_bad_items_are_replaced_by_the_next_item_counted_and_not_decoded_again():
    items = NumberedItems(6, bad=(2,))
    loader = ResumableLoader(items, batch_size=6, seed=1)
    permutation = epoch_permutation(6, 1, 0).tolist()
    first = loader.next_batch()[:, 0].long().tolist()
    where = permutation.index(2)
    expected = list(permutation)
    expected[where] = permutation[(where + 1) % 6]  # the bad item's slot takes the next item of the epoch
    assert first == expected
    assert loader.bad_items.keys() == {2} and loader.bad_encounters == 1
    loads = items.loads
    loader.next_batch()
    assert items.loads == loads + 6 and loader.bad_encounters == 2  # the known bad item is not loaded again
    assert "item 2 is corrupt" in loader.bad_items[2]


def test_every_item_bad_raises():
    with pytest.raises(ValueError, match="none of the 3 items"):
        ResumableLoader(NumberedItems(3, bad=(0, 1, 2)), batch_size=1, seed=0).next_batch()


def test_workers_give_the_batches_state_and_bad_items_of_no_workers_and_resume_exactly():
    def run(workers, batches, state=None, skip_after=None):
        loader = ResumableLoader(NumberedItems(11, bad=(3, 7)), batch_size=3, seed=4, rank=1, world_size=2,
                                 num_workers=workers)
        if state is not None:
            loader.load_state_dict(state)
        out = []
        for number in range(batches):
            if number == skip_after:
                loader.skip(3)  # an abandoned step: its samples were made ahead and are dropped unseen
            out.append(loader.next_batch())
        return out, loader.state_dict()

    plain, plain_state = run(0, 6, skip_after=2)  # 18 samples + 3 skipped: four epochs of 5 per rank
    parallel, parallel_state = run(2, 6, skip_after=2)
    assert all(torch.equal(a, b) for a, b in zip(plain, parallel)) and parallel_state == plain_state
    assert plain_state["bad_items"] and plain_state["bad_encounters"] > 0  # bad items were met and replaced
    middle = run(2, 2)[1]  # stopped after two batches, resumed with workers
    resumed, resumed_state = run(2, 4, state=middle, skip_after=0)
    assert all(torch.equal(a, b) for a, b in zip(plain[2:], resumed)) and resumed_state == plain_state


def test_workers_report_an_unusable_dataset_in_one_line():
    loader = ResumableLoader(NumberedItems(3, bad=(0, 1, 2)), batch_size=1, seed=0, num_workers=1)
    with pytest.raises(ValueError, match="none of the 3 items can be used; first problem: item . is corrupt$"):
        loader.next_batch()


# ----------------------------------------------------------------------------------------------
# ClipDataset on real files


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    items = []
    for i in range(3):
        frames = rng.integers(0, 255, (13, 16, 16, 3), dtype=np.uint8)
        write_video(folder / f"video{i}.mp4", frames, fps=8, quality="lossless")
        items.append({"path": str(folder / f"video{i}.mp4"), "caption": f"video {i}"})
    from PIL import Image
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "image.png")
    items.append({"path": str(folder / "image.png"), "caption": "an image"})
    good = (folder / "video0.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video")
    write_video(folder / "short.mp4", rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8), fps=8, quality="lossless")
    bad = [{"path": str(folder / name), "caption": "bad"} for name in ("truncated.mp4", "empty.mp4", "text.mp4",
                                                                         "short.mp4")]
    return items, bad


def test_clips_have_the_requested_shape_and_images_become_still_clips(clip_files):
    items, _ = clip_files
    dataset = ClipDataset(items, num_frames=5, size=8, temporal_compression=4)
    rng = np.random.default_rng(0)
    clip = dataset.load(0, rng)
    assert clip.shape == (3, 5, 8, 8) and clip.min() >= -1 and clip.max() <= 1
    still = dataset.load(3, rng)
    assert still.shape == (3, 5, 8, 8) and torch.equal(still, still[:, :1].expand_as(still))
    batch = dataset.collate([clip, still])
    assert batch.shape == (2, 3, 5, 8, 8) and clip_frame_count(batch) == 10
    windows = {int(dataset.load(0, np.random.default_rng(s))[0, 0, 0, 0] * 1000) for s in range(8)}
    assert len(windows) > 1  # the temporal window moves with the item's generator
    with pytest.raises(ValueError, match="1 \\+ k\\*4"):
        ClipDataset(items, num_frames=6, size=8, temporal_compression=4)


def test_corrupt_and_short_videos_are_counted_and_skipped(clip_files):
    items, bad = clip_files
    dataset = ClipDataset(items + bad, num_frames=5, size=8, temporal_compression=4)
    loader = ResumableLoader(dataset, batch_size=4, seed=0)
    batches = drain(loader, 4)  # two epochs of 8 items
    assert all(b.shape == (4, 3, 5, 8, 8) and torch.isfinite(b).all() for b in batches)
    reasons = {dataset.describe(i).rsplit("/", 1)[-1]: why for i, why in loader.bad_items.items()}
    assert sorted(reasons) == ["empty.mp4", "short.mp4", "text.mp4", "truncated.mp4"]
    assert "fewer than num_frames" in reasons["short.mp4"]
    assert loader.bad_encounters == 8  # every bad item met once per epoch
    again = ResumableLoader(ClipDataset(items + bad, num_frames=5, size=8, temporal_compression=4),
                            batch_size=4, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(batches, drain(again, 4)))


def test_decoded_clip_cache_is_bounded(clip_files):
    items, _ = clip_files
    dataset = ClipDataset(items, num_frames=5, size=8, temporal_compression=4, cache_bytes=13 * 8 * 8 * 3 * 2)
    for index in range(4):
        dataset.load(index, np.random.default_rng(0))
    assert len(dataset._cache) == 2 and dataset._cached_bytes <= dataset.cache_bytes


def test_long_videos_are_read_window_by_window_and_not_cached(tmp_path, monkeypatch):
    frames = np.random.default_rng(1).integers(0, 255, (41, 16, 16, 3), dtype=np.uint8)  # > 4 windows of 5
    write_video(tmp_path / "long.mp4", frames, fps=8, quality="lossless")
    dataset = ClipDataset([{"path": str(tmp_path / "long.mp4"), "caption": "c"}], num_frames=5, size=16,
                          temporal_compression=4, fps=4)
    whole = read_video(tmp_path / "long.mp4", fps=4)
    reads = []
    monkeypatch.setattr("tokvid.datasets.read_video", lambda *a, **k: reads.append(k) or read_video(*a, **k))
    for seed in range(6):
        clip = dataset.load(0, np.random.default_rng(seed))
        start = int(np.random.default_rng(seed).integers(0, len(whole) - 5 + 1))  # the draw load makes
        assert torch.equal(clip, frames_to_tensor(whole[start:start + 5]))
    assert not dataset._cache and all(k["num_frames"] == 5 for k in reads) and len(reads) == 6


# ----------------------------------------------------------------------------------------------
# TokenChunkDataset


class WordTokenizer:
    """Stands in for TextTokenizer: one id per known word, bos=2, eos=3, pad=0."""

    max_length = 6
    words = ["a", "red", "circle", "moves", "right", "down", "blue"]

    def batch(self, prompts, length):
        ids = torch.zeros(len(prompts), length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError("empty prompt")
            encoded = [2] + [4 + self.words.index(w) for w in prompt.split()] + [3]
            ids[row, : len(encoded)] = torch.tensor(encoded[:length])
        return ids


@pytest.fixture
def shard_dir(tmp_path):
    info = {"name": "test", "fingerprint": "0", "vocab_size": 50, "temporal_compression": 4, "spatial_compression": 8}
    with ShardWriter(tmp_path, info) as writer:
        story = [{"prompt": "a red circle moves right", "frames": 8}, {"prompt": "a red circle moves down", "frames": 8}]
        writer.add(torch.arange(5 * 2 * 2).view(5, 2, 2) % 50, {"story": story, "num_frames": 17})
        writer.add(torch.full((3, 2, 2), 7), {"caption": "a blue circle moves down", "num_frames": 9})
        writer.add(torch.full((1, 2, 2), 9), {"caption": "", "num_frames": 1, "source": "empty-caption.mp4"})
        writer.add(torch.full((1, 2, 2), 5), {"caption": "a red circle", "num_frames": 1})  # an image
    return tmp_path


def test_chunks_get_the_prompt_that_governs_them_and_padding_is_invalid(shard_dir):
    tokenizer = WordTokenizer()
    dataset = TokenChunkDataset(TokenShards(shard_dir), tokenizer, max_chunks=5)
    story = dataset.load(0, np.random.default_rng(0))
    owners = chunk_segments([8, 8], 4)
    prompts = ["a red circle moves right", "a red circle moves down"]
    assert torch.equal(story["text"], tokenizer.batch([prompts[o] for o in owners], 6))
    assert story["chunk_valid"].all() and story["codes"].shape == (5, 2, 2)
    short = dataset.load(1, np.random.default_rng(0))
    assert short["chunk_valid"].tolist() == [True, True, True, False, False]
    assert torch.equal(short["codes"][:3], torch.full((3, 2, 2), 7)) and not short["codes"][3:].any()
    batch = dataset.collate([story, short])
    assert batch["text"].shape == (2, 5, 6) and chunk_token_count(batch) == 8 * 4
    with pytest.raises(ValueError, match="empty prompt"):
        dataset.load(2, np.random.default_rng(0))
    image = dataset.load(3, np.random.default_rng(0))
    assert image["chunk_valid"].tolist() == [True, False, False, False, False]
    assert torch.equal(image["text"][0], tokenizer.batch(["a red circle"], 6)[0])


def test_long_items_are_cut_at_a_random_chunk_with_matching_prompts(shard_dir):
    tokenizer = WordTokenizer()
    dataset = TokenChunkDataset(TokenShards(shard_dir), tokenizer, max_chunks=2)
    full = TokenChunkDataset(TokenShards(shard_dir), tokenizer, max_chunks=5).load(0, np.random.default_rng(0))
    starts = set()
    for seed in range(12):
        window = dataset.load(0, np.random.default_rng(seed))
        start = int(window["codes"][0, 0, 0]) // 4
        starts.add(start)
        assert torch.equal(window["codes"], full["codes"][start:start + 2])
        assert torch.equal(window["text"], full["text"][start:start + 2])
    assert len(starts) > 1


def numbered_loader(workers):
    """11 numbered items (3 and 7 unusable) in batches of 3: what the worker-failure tests compare."""
    return ResumableLoader(NumberedItems(11, bad=(3, 7)), batch_size=3, seed=4, num_workers=workers)


def test_workers_stopped_by_a_signal_leave_the_same_batches():
    """A scheduler's SIGTERM reaches the workers too: they exit quietly, and the loader makes the rest of the
    samples itself, the same ones (a sample is a function of seed, epoch and item)."""
    import os
    import signal
    import time

    plain = numbered_loader(0)
    expected = [plain.next_batch() for _ in range(5)]
    parallel = numbered_loader(2)
    got = [parallel.next_batch()]
    workers = [w.pid for w in parallel._results._workers]
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
              for pid in workers):
        assert time.monotonic() < deadline, "workers did not exit on SIGTERM"
        time.sleep(0.05)
    got += [parallel.next_batch() for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got)) and parallel.num_workers == 0
    assert parallel.state_dict() == plain.state_dict()


@pytest.mark.parametrize("failure", [ConnectionResetError(104, "Connection reset by peer"), EOFError()])
def test_a_worker_gone_while_handing_over_a_sample_leaves_the_same_batches(failure):
    """A worker that exits on the group's SIGTERM while the loader fetches a sample's shared memory from it
    breaks the hand-over itself (seen on a fresh clone): the loader makes that sample and the rest itself."""
    plain = numbered_loader(0)
    expected = [plain.next_batch() for _ in range(4)]
    parallel = numbered_loader(2)
    got = [parallel.next_batch()]

    def broken_hand_over():
        raise failure
        yield

    parallel._results = broken_hand_over()
    got += [parallel.next_batch() for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got)) and parallel.num_workers == 0
    assert parallel.state_dict() == plain.state_dict()
