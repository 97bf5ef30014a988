"""Token shards: video codes on disk, decodable without the source videos.

A shard directory holds `info.json` (which tokenizer made the codes: name, fingerprints, config,
vocabulary, grid, compression; and one record per shard) and, per shard, three files:

- `shard-00000.codes.npy`: the codes of all its items concatenated along time, (rows, h, w),
  uint16 when the vocabulary fits; memory-mapped (a numpy array over an mmap of the file, as
  numpy.memmap does, without its per-file cost), so an item costs one slice.
- `shard-00000.index.npy`: int64 (items, 6), one row per item: code offset and length (rows),
  grid height and width, metadata byte offset and length.
- `shard-00000.meta.jsonl`: one metadata line per item (caption or story, frames, fps, source),
  read on demand at the byte range of the index.

Opening a directory reads info.json and stats every shard file: O(shards), not O(items). A shard's
index is read, and checked against its files, the first time one of its items is asked for. A
shard's files are renamed into place only once fully written and synced, and a directory lists a
shard in info.json only after that, so a crash never leaves a half shard that opens.
Directories of the first format (`.npz` + `.jsonl`, see shards_v1.py) still open; `tokvid-data
convert-shards SRC DST` rewrites them in this format.
"""
from __future__ import annotations

import bisect
import io
import json
import logging
import mmap
import os
import resource
from collections import OrderedDict
from dataclasses import asdict
from itertools import accumulate
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .fastjson import loads as _loads

SHARD_FORMAT = "tokvid-shards-v2"
SHARD_SUFFIXES = (".codes.npy", ".index.npy", ".meta.jsonl")
INDEX_COLUMNS = 6  # code offset, code length, grid height, grid width, meta offset, meta length

logger = logging.getLogger(__name__)


def tokenizer_info(tokenizer, name: str) -> dict:
    """What a shard directory records about the tokenizer that wrote it."""
    return {"name": str(name), "fingerprint": tokenizer.fingerprint(),
            "codes_fingerprint": tokenizer.codes_fingerprint(), "config": asdict(tokenizer.config),
            "vocab_size": tokenizer.vocab_size, "temporal_compression": tokenizer.temporal_compression,
            "spatial_compression": tokenizer.spatial_compression}


def code_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.int32)


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def atomic_write(path: Path, write: Callable) -> int:
    """Write a file through a synced temporary beside it, then rename: readers see all of it or nothing.
    Returns its size in bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: ranks may write the same file
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
        size = handle.tell()
    os.replace(tmp, path)
    return size


def write_shard(directory: str | Path, name: str, codes: list[np.ndarray], metas: list[dict],
                dtype: np.dtype) -> dict:
    """Write one shard's files atomically; returns its record for info.json (see build_info)."""
    directory = Path(directory)
    if not codes or len(codes) != len(metas):
        raise ValueError(f"a shard needs one metadata dict per item and at least one item, got {len(codes)} codes "
                         f"and {len(metas)} metadata")
    lines = [json.dumps(meta).encode() + b"\n" for meta in metas]
    index = np.zeros((len(codes), INDEX_COLUMNS), np.int64)
    index[:, 1] = [c.shape[0] for c in codes]
    index[:, 0] = np.cumsum(index[:, 1]) - index[:, 1]
    index[:, 2:4] = [c.shape[1:3] for c in codes]
    index[:, 5] = [len(line) - 1 for line in lines]
    index[:, 4] = np.cumsum(index[:, 5] + 1) - index[:, 5] - 1
    stacked = np.ascontiguousarray(np.concatenate(codes).astype(dtype, copy=False))
    sizes = [atomic_write(directory / f"{name}.codes.npy", lambda f: _write_npy(f, stacked)),
             atomic_write(directory / f"{name}.index.npy", lambda f: _write_npy(f, index)),
             atomic_write(directory / f"{name}.meta.jsonl", lambda f: f.writelines(lines))]
    return {"name": name, "items": len(codes), "rows": int(stacked.shape[0]), "grid": list(stacked.shape[1:]),
            "bytes": sizes}


def build_info(tokenizer: dict, fps: float | None, records: list[dict]) -> dict:
    """info.json of a directory made of these shard records, in item order."""
    grids = {tuple(record["grid"]) for record in records}
    if len(grids) > 1:
        raise ValueError(f"all items in a shard directory share one token grid, found {sorted(grids)}")
    return {"format": SHARD_FORMAT, "tokenizer": tokenizer, "grid": list(grids.pop()) if grids else None,
            "fps": fps, "dtype": code_dtype(tokenizer["vocab_size"]).name,
            "num_items": sum(record["items"] for record in records),
            "shards": [record["name"] for record in records],
            "shard_items": [record["items"] for record in records],
            "shard_rows": [record["rows"] for record in records],
            "shard_bytes": [record["bytes"] for record in records]}


def write_info(directory: str | Path, info: dict) -> None:
    atomic_write(Path(directory) / "info.json", lambda f: f.write((json.dumps(info, indent=1) + "\n").encode()))


class ShardWriter:
    """Appends (codes, metadata) items; call close() (or use as a context manager) to finish."""

    def __init__(self, out_dir: str | Path, tokenizer: dict, items_per_shard: int = 1024, fps: float | None = None):
        if items_per_shard < 1:
            raise ValueError(f"items_per_shard must be >= 1, got {items_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if any(self.out_dir.glob("shard-*")) or (self.out_dir / "info.json").exists():
            raise ValueError(f"{self.out_dir} already holds shards; choose an empty output directory")
        self.tokenizer, self.items_per_shard, self.fps = tokenizer, items_per_shard, fps
        self.dtype = code_dtype(tokenizer["vocab_size"])
        self.pending_codes: list[np.ndarray] = []
        self.pending_meta: list[dict] = []
        self.records: list[dict] = []
        self.num_items, self.grid = 0, None

    def add(self, codes, meta: dict) -> None:
        codes = np.asarray(codes.cpu() if torch.is_tensor(codes) else codes)
        if codes.ndim != 3:
            raise ValueError(f"codes must be (t,h,w) for one video, got shape {codes.shape}")
        if self.grid is None:
            self.grid = list(codes.shape[1:])
        elif list(codes.shape[1:]) != self.grid:
            raise ValueError(f"all items in a shard directory share one token grid {self.grid}, got {list(codes.shape[1:])}")
        self.pending_codes.append(codes.astype(self.dtype))
        self.pending_meta.append(dict(meta))
        self.num_items += 1
        if len(self.pending_codes) >= self.items_per_shard:
            self._flush()

    def _flush(self) -> None:
        if self.pending_codes:
            self.records.append(write_shard(self.out_dir, shard_name(len(self.records)), self.pending_codes,
                                            self.pending_meta, self.dtype))
        self.pending_codes, self.pending_meta = [], []

    def close(self) -> None:
        self._flush()
        write_info(self.out_dir, build_info(self.tokenizer, self.fps, self.records))

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def npy_header(dtype, shape: tuple) -> bytes:
    """The .npy header of a C-ordered array: written before a shard's arrays, and compared byte for byte
    when reading them, which checks dtype and shape without parsing (np.load costs ~0.3 ms per file)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": tuple(int(n) for n in shape)})
    return buffer.getvalue()


def _write_npy(handle, array: np.ndarray) -> None:
    handle.write(npy_header(array.dtype, array.shape))
    handle.write(np.ascontiguousarray(array).data)


def _map(handle) -> mmap.mmap:
    """A read-only map of a whole file, its pages mapped at once (MAP_POPULATE, Linux) rather than one
    page fault per item: a shard is small, and random access touches all of it sooner or later."""
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
    return mmap.mmap(handle.fileno(), 0, flags=flags, prot=mmap.PROT_READ)


class _OpenShard:
    """One shard's index (in memory), codes (memory-mapped) and metadata (memory-mapped bytes),
    checked against each other and against info.json when opened."""

    def __init__(self, directory: Path, name: str, items: int, rows: int, grid: list, dtype: str):
        where = os.path.join(directory, name)
        index_header, codes_header = npy_header(np.int64, (items, INDEX_COLUMNS)), npy_header(dtype, (rows, *grid))
        with open(where + ".index.npy", "rb") as handle:
            data = handle.read()
        with open(where + ".codes.npy", "rb") as handle:
            found_header = handle.read(len(codes_header))
            codes_map = _map(handle)
        problems = []
        if not data.startswith(index_header) or len(data) != len(index_header) + items * INDEX_COLUMNS * 8:
            problems.append(f"its index is not int64 ({items}, {INDEX_COLUMNS}) as info.json says")
        if found_header != codes_header:
            problems.append(f"its codes are not {dtype}{[rows, *grid]} as info.json says")
        if not problems:
            index = np.frombuffer(data, np.int64, offset=len(index_header)).reshape(items, INDEX_COLUMNS)
            problems = _index_problems(index, rows, grid)
        if problems:
            raise ValueError(f"{where} disagrees with its index ({'; '.join(problems)}); the directory was changed "
                             "after it was written: restore it or encode the videos again")
        self.index = index
        self.codes = np.frombuffer(codes_map, dtype, count=rows * grid[0] * grid[1],
                                   offset=len(codes_header)).reshape(rows, *grid)
        with open(where + ".meta.jsonl", "rb") as handle:
            self.meta = _map(handle)
        if index[-1, 4] + index[-1, 5] + 1 != len(self.meta):
            raise ValueError(f"{where}.meta.jsonl disagrees with its index; restore it or encode the videos again")

    def item(self, j: int) -> tuple[np.ndarray, dict]:
        offset, length, _, _, meta_offset, meta_length = self.index[j].tolist()
        return self.codes[offset: offset + length], _loads(self.meta[meta_offset: meta_offset + meta_length])

    def item_codes(self, j: int) -> np.ndarray:
        offset, length = self.index[j, :2].tolist()
        return self.codes[offset: offset + length]

    def item_meta(self, j: int) -> dict:
        offset, length = self.index[j, 4:].tolist()
        return _loads(self.meta[offset: offset + length])


def _index_problems(index: np.ndarray, rows: int, grid: list) -> list[str]:
    """What is wrong with a shard's index: its items must tile the codes and the metadata in order."""
    code_ends, meta_ends = index[:, 0] + index[:, 1], index[:, 4] + index[:, 5] + 1
    if index[0, 0] != 0 or (index[1:, 0] != code_ends[:-1]).any() or code_ends[-1] != rows or (index[:, 1] < 1).any():
        return ["its index's code offsets do not tile the codes file"]
    if (index[:, 2:4] != grid).any() or index[0, 4] != 0 or (index[1:, 4] != meta_ends[:-1]).any() or (
            index[:, 5] < 0).any():
        return ["its index's grids or metadata offsets are inconsistent"]
    return []


def open_shard_budget(shards: int) -> int:
    """How many shards may be open at once. Each holds two memory maps, and each map a file descriptor;
    shards take at most a quarter of the process's limit on open files. A soft limit too low for every
    shard (1024, a common default, allows 128) is raised as far as they need, up to the hard limit:
    random access over more shards than are open reopens one per item, ~40x slower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8 * shards
    if soft != resource.RLIM_INFINITY and soft < wanted and hard != soft:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    budget = max(8, soft // 8) if soft != resource.RLIM_INFINITY else shards
    if budget < shards:
        logger.warning("only %d of %d token shards can be open at once (open files limit %d): random access will "
                       "reopen shards; raise the limit (ulimit -n %d) or write fewer, larger shards", budget, shards,
                       soft, wanted)
    return budget


class _V2Store:
    """Item access over the shards of a v2 directory; keeps a bounded number of shards open."""

    def __init__(self, directory: Path, info: dict):
        self.directory, self.info = directory, info
        names = info.get("shards")
        lists = [info.get(key) for key in ("shard_items", "shard_rows", "shard_bytes")]
        if not isinstance(names, list) or any(not isinstance(x, list) or len(x) != len(names) for x in lists):
            raise ValueError(f"{directory}/info.json has no consistent shard list; encode the videos again")
        self.names, self.items, self.rows, sizes = names, *lists
        if sum(self.items) != info.get("num_items"):
            raise ValueError(f"{directory}/info.json counts {info.get('num_items')} items but its shards hold "
                             f"{sum(self.items)}; restore the directory or encode the videos again")
        for name, expected in zip(names, sizes):
            for suffix, size in zip(SHARD_SUFFIXES, expected):
                path = directory / f"{name}{suffix}"
                found = path.stat().st_size if path.is_file() else None
                if found != size:
                    raise ValueError(f"{path} disagrees with the index in info.json ({size} bytes expected, "
                                     f"{'missing' if found is None else f'{found} found'}); restore the directory "
                                     "or encode the videos again")
        self.starts = list(accumulate(self.items, initial=0))
        # ShardWriter fills every shard but the last: then an item's shard is a division, not a search
        self.uniform = self.items[0] if self.items and len(set(self.items[:-1])) <= 1 and \
            self.items[-1] <= self.items[0] else 0
        self.open_shards: OrderedDict[int, _OpenShard] = OrderedDict()
        self.max_open = open_shard_budget(len(names))

    def __len__(self) -> int:
        return self.starts[-1]

    def shard(self, number: int) -> _OpenShard:
        """The open shard `number`; the oldest opened is closed when too many are (first in, first out:
        cheaper per item than least recently used, and as good for random access)."""
        opened = self.open_shards.get(number)
        if opened is None:
            opened = _OpenShard(self.directory, self.names[number], self.items[number], self.rows[number],
                                self.info["grid"], self.info["dtype"])
            self.open_shards[number] = opened
            if len(self.open_shards) > self.max_open:
                self.open_shards.popitem(last=False)
        return opened

    def locate(self, i: int) -> tuple[_OpenShard, int]:
        number = i // self.uniform if self.uniform else bisect.bisect_right(self.starts, i) - 1
        return self.open_shards.get(number) or self.shard(number), i - self.starts[number]

    def item(self, i: int) -> tuple[np.ndarray, dict]:
        shard, j = self.locate(i)
        return shard.item(j)

    def codes(self, i: int) -> np.ndarray:
        shard, j = self.locate(i)
        return shard.item_codes(j)

    def meta(self, i: int) -> dict:
        shard, j = self.locate(i)
        return shard.item_meta(j)

    def iter_meta(self) -> Iterator[dict]:
        for name in self.names:
            with open(self.directory / f"{name}.meta.jsonl", "rb") as handle:
                yield from (_loads(line) for line in handle)

    def shard_codes(self) -> Iterator[tuple[str, np.ndarray]]:
        for number, name in enumerate(self.names):
            yield name, self.shard(number).codes

    def __getstate__(self) -> dict:  # worker processes re-open shards themselves
        return {**self.__dict__, "open_shards": OrderedDict()}


class _MetaSequence:
    """shards.meta: item metadata read on demand (indexing) or streamed shard by shard (iterating)."""

    def __init__(self, store):
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict:
        return self.store.meta(_checked_index(i, len(self.store)))

    def __iter__(self) -> Iterator[dict]:
        return self.store.iter_meta()


def _checked_index(i: int, size: int) -> int:
    i = int(i)
    if i < 0:
        i += size
    if not 0 <= i < size:
        raise IndexError(f"item {i} is outside the {size} items of these shards")
    return i


class TokenShards:
    """Random access to the items of a shard directory: shards[i] -> (codes LongTensor (t,h,w), meta)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        info_path = self.directory / "info.json"
        if not info_path.is_file():
            raise ValueError(f"{self.directory} is not a token shard directory (no info.json); make one with tokvid-encode")
        self.info = json.loads(info_path.read_text())
        from .shards_v1 import V1_FORMAT, V1Store
        if self.info.get("format") == SHARD_FORMAT:
            self.store = _V2Store(self.directory, self.info)
        elif self.info.get("format") == V1_FORMAT:
            self.store = V1Store(self.directory, self.info)
        else:
            raise ValueError(f"{info_path} is in neither the {SHARD_FORMAT} nor the {V1_FORMAT} format")
        self.meta = _MetaSequence(self.store)
        self.size = len(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        if not (type(i) is int and 0 <= i < self.size):  # the common case checked inline: it is per item
            i = _checked_index(i, self.size)
        codes, meta = self.store.item(i)
        return torch.from_numpy(codes.astype(np.int64)), meta

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        return (self[i] for i in range(len(self)))

    def codes_array(self, i: int) -> np.ndarray:
        """Item i's codes as stored (uint16 or int32), without the metadata."""
        return self.store.codes(_checked_index(i, len(self.store)))

    def code_counts(self, vocab_size: int) -> np.ndarray:
        """How often each code occurs in these shards: int64 (vocab_size,)."""
        counts = np.zeros(vocab_size, np.int64)
        for name, codes in self.store.shard_codes():
            found = np.bincount(np.asarray(codes).ravel(), minlength=vocab_size)
            if len(found) > vocab_size:
                raise ValueError(f"{self.directory}/{name} holds codes >= {vocab_size}: these shards were made "
                                 "by another tokenizer than the one given")
            counts += found
        return counts

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse to decode these codes with a tokenizer that does not make them (the one that made them,
        or one whose decoder alone was fine-tuned from it, may)."""
        made_by = self.info["tokenizer"]
        if "codes_fingerprint" in made_by:
            same_codes = made_by["codes_fingerprint"] == tokenizer.codes_fingerprint()
        else:  # shards written before codes fingerprints: only the exact tokenizer
            same_codes = made_by["fingerprint"] == tokenizer.fingerprint()
        if not same_codes:
            raise ValueError(f"shards in {self.directory} were made by tokenizer {made_by['name']!r} "
                             f"(fingerprint {made_by['fingerprint']}); decode them with that tokenizer or a decoder "
                             "fine-tuned from it")


def convert_shards(source: str | Path, target: str | Path, items_per_shard: int = 1024,
                   progress: bool = False) -> int:
    """Rewrite the shard directory `source` (any format) as a v2 directory `target`; returns the item count."""
    shards = TokenShards(source)
    indices: Iterable[int] = range(len(shards))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="convert", unit="item")
    metas = iter(shards.meta)  # streamed: one pass over the metadata files
    with ShardWriter(target, shards.info["tokenizer"], items_per_shard, fps=shards.info.get("fps")) as writer:
        for i in indices:
            writer.add(shards.codes_array(i), next(metas))
    return len(shards)
