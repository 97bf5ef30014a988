"""Token shards: video codes on disk, decodable without the source videos.

A shard directory holds `info.json` (which tokenizer made the codes: name, fingerprints, config,
vocabulary, grid, compression) and numbered pairs `shard-00000.npz` (codes of many items
concatenated along time, uint16 when the vocabulary fits, plus per-item lengths) and
`shard-00000.jsonl` (one metadata line per item: caption or story, frames, fps, source).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

SHARD_FORMAT = "tokvid-shards-v1"


def tokenizer_info(tokenizer, name: str) -> dict:
    """What a shard directory records about the tokenizer that wrote it."""
    return {"name": str(name), "fingerprint": tokenizer.fingerprint(),
            "codes_fingerprint": tokenizer.codes_fingerprint(), "config": asdict(tokenizer.config),
            "vocab_size": tokenizer.vocab_size, "temporal_compression": tokenizer.temporal_compression,
            "spatial_compression": tokenizer.spatial_compression}


class ShardWriter:
    """Appends (codes, metadata) items; call close() (or use as a context manager) to finish."""

    def __init__(self, out_dir: str | Path, tokenizer: dict, items_per_shard: int = 1024, fps: float | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if any(self.out_dir.glob("shard-*.npz")):
            raise ValueError(f"{self.out_dir} already holds shards; choose an empty output directory")
        self.tokenizer, self.items_per_shard, self.fps = tokenizer, items_per_shard, fps
        self.dtype = np.uint16 if tokenizer["vocab_size"] <= 65536 else np.int32
        self.pending_codes: list[np.ndarray] = []
        self.pending_meta: list[dict] = []
        self.shard_names: list[str] = []
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
        if not self.pending_codes:
            return
        name = f"shard-{len(self.shard_names):05d}"
        lengths = np.array([c.shape[0] for c in self.pending_codes], dtype=np.int64)
        np.savez(self.out_dir / f"{name}.npz", codes=np.concatenate(self.pending_codes), lengths=lengths)
        with open(self.out_dir / f"{name}.jsonl", "w") as handle:
            for meta in self.pending_meta:
                handle.write(json.dumps(meta) + "\n")
        self.shard_names.append(name)
        self.pending_codes, self.pending_meta = [], []

    def close(self) -> None:
        self._flush()
        info = {"format": SHARD_FORMAT, "tokenizer": self.tokenizer, "grid": self.grid, "fps": self.fps,
                "num_items": self.num_items, "shards": self.shard_names}
        (self.out_dir / "info.json").write_text(json.dumps(info, indent=2) + "\n")

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


class TokenShards:
    """Random access to the items of a shard directory: shards[i] -> (codes LongTensor (t,h,w), meta)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        info_path = self.directory / "info.json"
        if not info_path.is_file():
            raise ValueError(f"{self.directory} is not a token shard directory (no info.json); make one with tokvid-encode")
        self.info = json.loads(info_path.read_text())
        if self.info.get("format") != SHARD_FORMAT:
            raise ValueError(f"{info_path} is not in the {SHARD_FORMAT} format")
        self.index: list[tuple[int, int, int]] = []  # (shard, start, length) per item
        self.meta: list[dict] = []
        for shard_number, name in enumerate(self.info["shards"]):
            with np.load(self.directory / f"{name}.npz") as data:
                lengths = data["lengths"]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            self.index += [(shard_number, int(s), int(n)) for s, n in zip(starts, lengths)]
            with open(self.directory / f"{name}.jsonl") as handle:
                self.meta += [json.loads(line) for line in handle if line.strip()]
        self._cached_shard, self._cached_codes = -1, None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        shard, start, length = self.index[i]
        if shard != self._cached_shard:
            with np.load(self.directory / f"{self.info['shards'][shard]}.npz") as data:
                self._cached_codes = data["codes"]
            self._cached_shard = shard
        codes = torch.from_numpy(self._cached_codes[start: start + length].astype(np.int64))
        return codes, self.meta[i]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict]]:
        return (self[i] for i in range(len(self)))

    def code_counts(self, vocab_size: int) -> np.ndarray:
        """How often each code occurs in these shards: int64 (vocab_size,)."""
        counts = np.zeros(vocab_size, np.int64)
        for name in self.info["shards"]:
            with np.load(self.directory / f"{name}.npz") as data:
                found = np.bincount(data["codes"].ravel().astype(np.int64), minlength=vocab_size)
            if len(found) > vocab_size:
                raise ValueError(f"{self.directory}/{name}.npz holds codes >= {vocab_size}: these shards were made "
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
