"""Datasets of videos <-> token shards with a reusable video tokenizer (what tokvid-encode/-decode run)."""
from __future__ import annotations

from pathlib import Path

import torch

from .shards import ShardWriter, TokenShards, tokenizer_info
from .video_io import VIDEO_EXTENSIONS, frames_to_tensor, read_video, tensor_to_frames, video_fps, write_video
from .models.video_tokenizer import VideoTokenizer


def usable_frames(num_frames: int, temporal_compression: int) -> int:
    """Longest prefix the causal tokenizer can code: 1 + k*tc frames."""
    return 1 + (num_frames - 1) // temporal_compression * temporal_compression


def list_items(manifest: str | Path | None, videos_dir: str | Path | None) -> list[dict]:
    if manifest is not None:
        from .manifest import read_manifest
        return read_manifest(manifest)
    folder = Path(videos_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of videos")
    items = [{"path": str(p)} for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS]
    if not items:
        raise ValueError(f"no video files in {folder}")
    return items


def encode_videos(tokenizer: str | Path, out_dir: str | Path, manifest: str | Path | None = None,
                  videos_dir: str | Path | None = None, size: int | None = None, fps: float | None = None,
                  max_frames: int | None = None, chunk_latents: int = 16, skip_bad: bool = False,
                  progress: bool = False, allow_partial: bool = False) -> dict:
    """Encode every video of a manifest (or folder) into token shards; returns counts.

    allow_partial: encode the readable frames of truncated videos (read_video warns) instead of
    stopping (or, with skip_bad, skipping them)."""
    model = VideoTokenizer.from_pretrained(tokenizer)
    tc, sc = model.temporal_compression, model.spatial_compression
    items = list_items(manifest, videos_dir)
    skipped = 0
    iterator = items
    if progress:
        from tqdm import tqdm
        iterator = tqdm(items, desc="encode", unit="video")
    with ShardWriter(out_dir, tokenizer_info(model, tokenizer), fps=fps) as writer:
        for item in iterator:
            try:
                frames = read_video(item["path"], num_frames=max_frames, fps=fps, size=size,
                                    allow_partial=allow_partial)
                height, width = frames.shape[1:3]
                if height % sc or width % sc:
                    raise ValueError(f"{item['path']}: frames are {height}x{width}, not multiples of {sc}; pass --size")
            except ValueError:
                if not skip_bad:
                    raise
                skipped += 1
                continue
            frames = frames[: usable_frames(len(frames), tc)]
            with torch.no_grad():
                codes = model.encode(frames_to_tensor(frames)[None], chunk_latents=chunk_latents)[0]
            meta = {k: v for k, v in item.items() if k in ("caption", "story")}
            meta.update(source=str(item["path"]), num_frames=len(frames),
                        fps=fps or video_fps(item["path"]), height=height, width=width)
            writer.add(codes, meta)
    return {"items": len(items) - skipped, "skipped": skipped}


def decode_shards(tokenizer: str | Path, shards_dir: str | Path, out_dir: str | Path, video_format: str = "mp4",
                  limit: int | None = None, chunk_latents: int = 16, progress: bool = False) -> int:
    """Decode token shards back to video files named after their item index; returns the count."""
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
    for i in indices:
        codes, meta = shards[i]
        with torch.no_grad():
            video = model.decode(codes[None], chunk_latents=chunk_latents)[0]
        frames = tensor_to_frames(video)[: meta.get("num_frames")]
        write_video(out / f"{i:06d}.{video_format}", frames, fps=meta.get("fps") or 8)
    return count
