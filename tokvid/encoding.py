"""Datasets of videos <-> token shards with a reusable video tokenizer (what tokvid-encode/-decode run).

Encoding runs as one process or as the ranks of a launcher (torchrun, deepspeed: RANK, WORLD_SIZE and
LOCAL_RANK in the environment) and coordinates through the output directory alone, with no process
group, so ranks may start, die and restart independently:

- the items are cut into units of `items_per_shard` consecutive items; unit k is encoded by rank
  k mod WORLD_SIZE into shard k, in batches, on that rank's device;
- a unit is committed by `shard-0000k.done.json`, written after its shard files (both atomically);
  a unit without it is encoded again from scratch by the next run, so a run killed at any moment
  (SIGKILL included) and started again with the same command loses and repeats nothing;
- the rank that commits the last unit writes `info.json` (all shards, in item order) and
  `skipped.jsonl` (the unreadable items, with --skip-bad): only then does the directory open.

`encode.json` records the run's settings; a later run with other settings is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .shards import (SHARD_FORMAT, TokenShards, atomic_write, build_info, code_dtype, shard_name, tokenizer_info,
                     write_info, write_shard)
from .video_io import VIDEO_EXTENSIONS, frames_to_tensor, read_video, tensor_to_frames, video_fps, write_video
from .models.video_tokenizer import VideoTokenizer

RUN_SETTINGS = "encode.json"
SKIPPED_REPORT = "skipped.jsonl"


def usable_frames(num_frames: int, temporal_compression: int) -> int:
    """Longest prefix the causal tokenizer can code: 1 + k*tc frames."""
    return 1 + (num_frames - 1) // temporal_compression * temporal_compression


def list_items(manifest: str | Path | None, videos_dir: str | Path | None) -> Sequence[dict]:
    """The items to encode: a ManifestIndex (read on demand) or a list of {"path"} of a folder's videos."""
    if manifest is not None:
        from .manifest import ManifestIndex
        return ManifestIndex(manifest)
    folder = Path(videos_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of videos")
    items = [{"path": str(p)} for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS]
    if not items:
        raise ValueError(f"no video files in {folder}")
    return items


def launcher_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) set by torchrun / deepspeed / mpirun-style launchers; (0, 1, 0) alone."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; start the ranks with torchrun or deepspeed")
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def encode_videos(tokenizer: str | Path, out_dir: str | Path, manifest: str | Path | None = None,
                  videos_dir: str | Path | None = None, size: int | None = None, fps: float | None = None,
                  max_frames: int | None = None, chunk_latents: int = 16, skip_bad: bool = False,
                  progress: bool = False, batch_size: int = 8, items_per_shard: int = 1024,
                  device: str | None = None, bf16: bool = False, rank: int | None = None,
                  world_size: int | None = None, allow_partial: bool = False) -> dict:
    """Encode every video of a manifest (or folder) into token shards: this rank's share, resumably.

    allow_partial: encode the readable frames of truncated videos (read_video warns) instead of
    stopping (or, with skip_bad, skipping them).

    rank / world_size default to the launcher's environment. device defaults to this rank's GPU
    (cuda:LOCAL_RANK) when there is one, else the CPU. Returns {"items", "skipped", "finished"}: the
    directory's totals when this call finished it, else this rank's own counts."""
    if batch_size < 1 or items_per_shard < 1:
        raise ValueError(f"batch_size and items_per_shard must be >= 1, got {batch_size} and {items_per_shard}")
    env_rank, env_world, local_rank = launcher_rank()
    rank, world_size = (env_rank if rank is None else rank), (env_world if world_size is None else world_size)
    if device is None:
        device = f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    model = VideoTokenizer.from_pretrained(tokenizer).to(device).eval()
    items = list_items(manifest, videos_dir)
    out = Path(out_dir)
    made_by = tokenizer_info(model, tokenizer)
    settings = {"format": SHARD_FORMAT, "tokenizer": made_by["fingerprint"], "items": len(items),
                "source": _source_digest(manifest, items), "size": size, "fps": fps, "max_frames": max_frames,
                "items_per_shard": items_per_shard}
    _claim(out, settings)
    encoder = _UnitEncoder(model, items, out, dict(size=size, fps=fps, num_frames=max_frames,
                                                   allow_partial=allow_partial), chunk_latents, skip_bad, batch_size, bf16)
    num_units = -(-len(items) // items_per_shard)
    units = [(k, range(k * items_per_shard, min(len(items), (k + 1) * items_per_shard)))
             for k in range(rank, num_units, world_size)]
    pending = [(k, span) for k, span in units if not _marker(out, k).is_file()]
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm
        total = sum(len(span) for _, span in units)
        bar = tqdm(total=total, initial=total - sum(len(span) for _, span in pending), unit="video",
                   desc="encode" if world_size == 1 else f"encode (rank 0 of {world_size})", dynamic_ncols=True)
    encoded = skipped = 0
    for unit, span in pending:
        record, bad = encoder.encode_unit(unit, span, bar)
        encoded, skipped = encoded + (record["items"] if record else 0), skipped + len(bad)
    if bar is not None:
        bar.close()
    finished = _finish(out, num_units, made_by, fps)
    return finished or {"items": encoded, "skipped": skipped, "finished": False}


class _UnitEncoder:
    """Encodes units of items into committed shards on one device."""

    def __init__(self, model: VideoTokenizer, items, out: Path, read_options: dict, chunk_latents: int,
                 skip_bad: bool, batch_size: int, bf16: bool):
        self.model, self.items, self.out, self.read_options = model, items, out, read_options
        self.chunk_latents, self.skip_bad, self.batch_size, self.bf16 = chunk_latents, skip_bad, batch_size, bf16
        self.device = next(model.parameters()).device
        self.dtype = code_dtype(model.vocab_size)

    def encode_unit(self, unit: int, span: range, bar=None) -> tuple[dict | None, list[dict]]:
        """Encode items `span` into shard `unit` and commit it; returns its record (None: no item) and the
        items skipped."""
        codes, metas, skipped = [], [], []
        for start in range(span.start, span.stop, self.batch_size):
            batch = [(i, self.items[i]) for i in range(start, min(span.stop, start + self.batch_size))]
            read = []
            for i, item in batch:
                try:
                    read.append((item, self._read(item)))
                except ValueError as error:
                    if not self.skip_bad:
                        raise ValueError(f"{error}; pass --skip-bad to skip unreadable videos (they are then "
                                         f"listed in {self.out / SKIPPED_REPORT})") from None
                    skipped.append({"index": i, "path": str(item["path"]), "error": str(error)})
            for (item, frames), item_codes in zip(read, self._encode([frames for _, frames in read])):
                codes.append(item_codes)
                metas.append(self._meta(item, frames))
            if bar is not None:
                bar.update(len(batch))
        record = write_shard(self.out, shard_name(unit), codes, metas, self.dtype) if codes else None
        commit = {"unit": unit, "first_item": span.start, "items": len(span), "record": record, "skipped": skipped}
        atomic_write(_marker(self.out, unit), lambda f: f.write(json.dumps(commit).encode()))
        return record, skipped

    def _read(self, item: dict) -> np.ndarray:
        frames = read_video(item["path"], **self.read_options)
        height, width = frames.shape[1:3]
        sc = self.model.spatial_compression
        if height % sc or width % sc:
            raise ValueError(f"{item['path']}: frames are {height}x{width}, not multiples of {sc}; pass --size")
        return frames[: usable_frames(len(frames), self.model.temporal_compression)]

    def _encode(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        """Codes of each video; videos of one shape are encoded together, as one batch."""
        codes: list[np.ndarray | None] = [None] * len(videos)
        groups: dict[tuple, list[int]] = {}
        for position, frames in enumerate(videos):
            groups.setdefault(frames.shape, []).append(position)
        for positions in groups.values():
            x = torch.stack([frames_to_tensor(videos[p]) for p in positions]).to(self.device)
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                batch_codes = self.model.encode(x, chunk_latents=self.chunk_latents).cpu().numpy()
            for position, item_codes in zip(positions, batch_codes):
                codes[position] = item_codes.astype(self.dtype)
        return codes

    def _meta(self, item: dict, frames: np.ndarray) -> dict:
        meta = {k: v for k, v in item.items() if k in ("caption", "story")}
        meta.update(source=str(item["path"]), num_frames=len(frames),
                    fps=self.read_options["fps"] or video_fps(item["path"]), height=frames.shape[1],
                    width=frames.shape[2])
        return meta


def _marker(out: Path, unit: int) -> Path:
    return out / f"{shard_name(unit)}.done.json"


def _source_digest(manifest: str | Path | None, items) -> str:
    """Identifies what is encoded: the manifest's bytes, or the folder's file list."""
    digest = hashlib.sha256()
    if manifest is not None:
        with open(manifest, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update("\n".join(item["path"] for item in items).encode())
    return digest.hexdigest()[:16]


def _claim(out: Path, settings: dict) -> None:
    """Start or continue an encoding in `out`; refuse a directory holding anything else."""
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / RUN_SETTINGS
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        changed = sorted(key for key in settings if before.get(key) != settings[key])
        if changed:
            raise ValueError(f"{out} holds an encoding made with other settings ({', '.join(changed)} differ); "
                             "continue it with the same command, or choose another --out")
        return
    if (out / "info.json").exists() or any(out.glob("shard-*")):
        raise ValueError(f"{out} already holds shards; choose an empty output directory")
    atomic_write(recorded, lambda f: f.write((json.dumps(settings, indent=1) + "\n").encode()))


def _finish(out: Path, num_units: int, made_by: dict, fps: float | None) -> dict | None:
    """When every unit is committed: write info.json and skipped.jsonl and return the totals (else None).
    Every rank tries after its last unit; the last to commit sees them all (writing twice is harmless)."""
    commits = []
    for unit in range(num_units):
        marker = _marker(out, unit)
        if not marker.is_file():
            return None
        commits.append(json.loads(marker.read_text()))
    skipped = [entry for commit in commits for entry in commit["skipped"]]
    atomic_write(out / SKIPPED_REPORT, lambda f: f.writelines(json.dumps(e).encode() + b"\n" for e in skipped))
    records = [commit["record"] for commit in commits if commit["record"]]
    write_info(out, build_info(made_by, fps, records))
    for leftover in out.glob(".shard-*.tmp"):  # files of units killed while writing, since encoded again
        leftover.unlink(missing_ok=True)
    return {"items": sum(record["items"] for record in records), "skipped": len(skipped), "finished": True}


def decode_shards(tokenizer: str | Path, shards_dir: str | Path, out_dir: str | Path, video_format: str = "mp4",
                  limit: int | None = None, chunk_latents: int = 16, progress: bool = False) -> int:
    """Decode token shards back to videos, each named after its item index and source file
    (`000003-clip.mp4`), and a `manifest.jsonl` beside them with each video's caption or story, so that
    the directory is a data set again. Returns the count."""
    model = VideoTokenizer.from_pretrained(tokenizer)
    shards = TokenShards(shards_dir)
    shards.check_tokenizer(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = len(shards) if limit is None else min(limit, len(shards))
    indices = range(count)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="decode", unit="video")
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as manifest:
        for i in indices:
            codes, meta = shards[i]
            with torch.no_grad():
                video = model.decode(codes[None], chunk_latents=chunk_latents)[0]
            frames = tensor_to_frames(video)[: meta.get("num_frames")]
            name = f"{i:06d}-{Path(str(meta.get('source', 'video'))).stem}.{video_format}"
            write_video(out / name, frames, fps=meta.get("fps") or 8)
            text = {key: meta[key] for key in ("caption", "story") if key in meta}
            manifest.write(json.dumps({"path": name, **text}) + "\n")
    return count
