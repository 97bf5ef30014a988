"""Token shards v2: memory-mapped codes, on-demand metadata, index checks, v1 compatibility."""
import json

import numpy as np
import pytest
import torch

from tokvid.cli import data_main, run_cli
from tokvid.shards import ShardWriter, TokenShards, convert_shards
from tokvid.shards_v1 import write_v1_shards

INFO = {"name": "t", "fingerprint": "f", "codes_fingerprint": "c", "vocab_size": 1000, "temporal_compression": 4}


def make_items(count, seed=0, grid=(2, 3)):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 1000, (int(rng.integers(1, 5)), *grid)),
             {"caption": f"item {i} " + "x" * int(rng.integers(0, 9)), "num_frames": i}) for i in range(count)]


def write_v2(directory, items, items_per_shard=4):
    with ShardWriter(directory, INFO, items_per_shard=items_per_shard, fps=8.0) as writer:
        for codes, meta in items:
            writer.add(codes, meta)
    return TokenShards(directory)


def test_random_access_equals_sequential_and_the_written_items(tmp_path):
    items = make_items(23)
    shards = write_v2(tmp_path / "s", items)
    assert len(shards) == 23 and len(shards.info["shards"]) == 6 and shards.info["format"] == "tokvid-shards-v2"
    assert np.load(tmp_path / "s" / "shard-00000.codes.npy", mmap_mode="r").dtype == np.uint16
    sequential = list(shards)
    order = np.random.default_rng(1).permutation(23)
    for i in order:
        codes, meta = shards[int(i)]
        assert codes.dtype == torch.int64
        assert torch.equal(codes, sequential[i][0]) and meta == sequential[i][1]
        assert torch.equal(codes, torch.from_numpy(items[i][0])) and meta == items[i][1]
    assert list(shards.meta) == [meta for _, meta in items] and shards.meta[-1] == items[-1][1]
    assert torch.equal(shards[-1][0], torch.from_numpy(items[-1][0]))
    with pytest.raises(IndexError):
        shards[23]
    all_codes = np.concatenate([c.ravel() for c, _ in items])
    assert np.array_equal(shards.code_counts(1000), np.bincount(all_codes, minlength=1000))


def test_opening_reads_no_item_and_items_open_their_shard_only(tmp_path):
    shards = write_v2(tmp_path / "s", make_items(12))
    assert not shards.store.open_shards  # O(shards) at open: nothing per item yet
    shards[9]
    assert list(shards.store.open_shards) == [2]


@pytest.fixture
def restored_open_files_limit():
    import resource

    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_a_low_open_files_limit_is_raised_so_random_access_keeps_every_shard_open(tmp_path,
                                                                                  restored_open_files_limit):
    import resource

    _, hard = restored_open_files_limit
    if hard != resource.RLIM_INFINITY and hard < 8 * 40:
        pytest.skip(f"the hard limit on open files ({hard}) is below what 40 shards need")
    items = make_items(40)
    write_v2(tmp_path / "s", items, items_per_shard=1)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))  # room for 16 shards at a quarter of the limit
    shards = TokenShards(tmp_path / "s")
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 8 * 40 and shards.store.max_open >= 40
    for i in np.random.default_rng(0).permutation(40):
        assert torch.equal(shards[int(i)][0], torch.from_numpy(items[i][0]))
    assert len(shards.store.open_shards) == 40  # none closed and reopened


def test_when_the_limit_cannot_be_raised_shards_are_reopened_with_a_warning(tmp_path, monkeypatch, caplog):
    import tokvid.shards as shards_module

    items = make_items(20)
    write_v2(tmp_path / "s", items, items_per_shard=1)
    monkeypatch.setattr(shards_module.resource, "getrlimit", lambda kind: (64, 64))  # soft = hard: no raise
    with caplog.at_level("WARNING", logger="tokvid.shards"):
        shards = TokenShards(tmp_path / "s")
    assert shards.store.max_open == 8 and "only 8 of 20 token shards can be open" in caplog.text
    assert "ulimit -n 160" in caplog.text
    for i in np.random.default_rng(0).permutation(20):
        assert torch.equal(shards[int(i)][0], torch.from_numpy(items[i][0]))
    assert len(shards.store.open_shards) == 8


def test_v1_directories_still_read_and_convert(tmp_path):
    items = make_items(10, seed=3)
    write_v1_shards(tmp_path / "v1", INFO, iter(items), items_per_shard=3, fps=8.0)
    old = TokenShards(tmp_path / "v1")
    assert old.info["format"] == "tokvid-shards-v1" and len(old) == 10
    for i in (7, 0, 9, 4):
        assert torch.equal(old[i][0], torch.from_numpy(items[i][0])) and old[i][1] == items[i][1]
    assert run_cli(data_main, ["convert-shards", str(tmp_path / "v1"), str(tmp_path / "v2")]) == 0
    new = TokenShards(tmp_path / "v2")
    assert new.info["format"] == "tokvid-shards-v2" and new.info["tokenizer"] == INFO and new.info["fps"] == 8.0
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(old, new))
    assert np.array_equal(old.code_counts(1000), new.code_counts(1000))


def test_files_that_disagree_with_the_index_fail_clearly(tmp_path):
    write_v2(tmp_path / "s", make_items(12))
    directory = tmp_path / "s"
    # a metadata file one line short: caught at open by its size
    meta = directory / "shard-00001.meta.jsonl"
    saved = meta.read_bytes()
    meta.write_bytes(b"".join(saved.splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="shard-00001.meta.jsonl disagrees with the index"):
        TokenShards(directory)
    meta.write_bytes(saved)
    # two shards' indexes swapped (same sizes, other item lengths): caught when the shard is first read
    first, second = (directory / f"shard-0000{n}.index.npy" for n in (0, 2))
    a, b = first.read_bytes(), second.read_bytes()
    first.write_bytes(b)
    second.write_bytes(a)
    shards = TokenShards(directory)
    assert shards[5][1]["num_frames"] == 5  # an untouched shard still reads
    with pytest.raises(ValueError, match="shard-00000 disagrees with its index"):
        shards[0]
    first.write_bytes(a)
    second.write_bytes(b)
    info = json.loads((directory / "info.json").read_text())
    (directory / "info.json").write_text(json.dumps({**info, "num_items": 13}))
    with pytest.raises(ValueError, match="counts 13 items but its shards hold 12"):
        TokenShards(directory)


def test_a_writer_that_crashed_leaves_nothing_that_opens(tmp_path):
    writer = ShardWriter(tmp_path / "s", INFO, items_per_shard=2)
    for codes, meta in make_items(5):
        writer.add(codes, meta)  # two shards written, never closed: as if the process died here
    assert (tmp_path / "s" / "shard-00001.codes.npy").is_file()
    with pytest.raises(ValueError, match="no info.json"):
        TokenShards(tmp_path / "s")
    with pytest.raises(ValueError, match="already holds shards"):
        ShardWriter(tmp_path / "s", INFO)


def test_shards_pickle_without_their_open_maps(tmp_path):
    import pickle
    shards = write_v2(tmp_path / "s", make_items(6))
    shards[0]
    copy = pickle.loads(pickle.dumps(shards))
    assert not copy.store.open_shards and torch.equal(copy[5][0], shards[5][0])


def test_convert_keeps_item_order_across_new_shard_sizes(tmp_path):
    items = make_items(9, seed=5)
    write_v2(tmp_path / "a", items, items_per_shard=2)
    assert convert_shards(tmp_path / "a", tmp_path / "b", items_per_shard=4) == 9
    converted = TokenShards(tmp_path / "b")
    assert len(converted.info["shards"]) == 3
    assert all(torch.equal(c, torch.from_numpy(items[i][0])) and m == items[i][1] for i, (c, m) in enumerate(converted))
