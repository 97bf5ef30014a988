"""The first token shard format, kept readable (TokenShards opens it) and writable (tests, the baseline of
bench/data.py). `tokvid-data convert-shards SRC DST` rewrites such a directory in the current format.

A v1 directory holds `info.json` and numbered pairs `shard-00000.npz` (codes of many items concatenated
along time plus per-item lengths, compressed as a whole: a random item loads its whole shard) and
`shard-00000.jsonl` (one metadata line per item, all parsed when the directory opens).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

V1_FORMAT = "tokvid-shards-v1"


class V1Store:
    """Item access over a v1 directory: opening it parses every metadata line (O(items) memory)."""

    def __init__(self, directory: Path, info: dict):
        self.directory, self.names = directory, info["shards"]
        self.index: list[tuple[int, int, int]] = []  # (shard, start, length) per item
        self.metas: list[dict] = []
        for shard_number, name in enumerate(self.names):
            with np.load(directory / f"{name}.npz") as data:
                lengths = data["lengths"]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            self.index += [(shard_number, int(s), int(n)) for s, n in zip(starts, lengths)]
            with open(directory / f"{name}.jsonl") as handle:
                self.metas += [json.loads(line) for line in handle if line.strip()]
        if len(self.metas) != len(self.index):
            raise ValueError(f"{directory}: the .jsonl files list {len(self.metas)} items, the .npz files "
                             f"{len(self.index)}; restore the directory or encode the videos again")
        self._cached_shard, self._cached_codes = -1, None

    def __len__(self) -> int:
        return len(self.index)

    def codes(self, i: int) -> np.ndarray:
        shard, start, length = self.index[i]
        if shard != self._cached_shard:
            with np.load(self.directory / f"{self.names[shard]}.npz") as data:
                self._cached_codes = data["codes"]
            self._cached_shard = shard
        return self._cached_codes[start: start + length]

    def meta(self, i: int) -> dict:
        return self.metas[i]

    def item(self, i: int) -> tuple[np.ndarray, dict]:
        return self.codes(i), self.metas[i]

    def iter_meta(self) -> Iterator[dict]:
        return iter(self.metas)

    def shard_codes(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.names:
            with np.load(self.directory / f"{name}.npz") as data:
                yield f"{name}.npz", data["codes"]


def write_v1_shards(out_dir: str | Path, tokenizer: dict, items: Iterator[tuple[np.ndarray, dict]],
                    items_per_shard: int = 1024, fps: float | None = None) -> int:
    """Write (codes (t,h,w), meta) items as a v1 directory, as tokvid did before v2; returns the item count."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer["vocab_size"] <= 65536 else np.int32
    names, codes, metas, grid, count = [], [], [], None, 0

    def flush() -> None:
        name = f"shard-{len(names):05d}"
        lengths = np.array([c.shape[0] for c in codes], dtype=np.int64)
        np.savez(out / f"{name}.npz", codes=np.concatenate(codes), lengths=lengths)
        (out / f"{name}.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
        names.append(name)
        codes.clear()
        metas.clear()

    for item_codes, meta in items:
        grid = list(item_codes.shape[1:])
        codes.append(np.asarray(item_codes).astype(dtype))
        metas.append(dict(meta))
        count += 1
        if len(codes) == items_per_shard:
            flush()
    if codes:
        flush()
    info = {"format": V1_FORMAT, "tokenizer": tokenizer, "grid": grid, "fps": fps, "num_items": count,
            "shards": names}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return count
