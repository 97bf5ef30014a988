"""Small test videos in every container read_video supports, written with PyAV."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tokvid.video_io import write_video

CONTAINERS = ("mp4", "mov", "mkv", "webm", "avi", "gif")


def noise_frames(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random pixels: every frame carries many bytes, so cuts land in frame data, not headers."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def moving_frames(count: int, size: int = 32) -> np.ndarray:
    """Smooth moving gradients with a frame counter in the blue channel: every frame differs."""
    t = np.arange(count)[:, None, None]
    y = np.arange(size)[None, :, None]
    x = np.arange(size)[None, None, :]
    red = 128 + 100 * np.sin((x + 2 * t) / 5.0)
    green = 128 + 100 * np.cos((y - 3 * t) / 7.0)
    blue = (t * 37 % 256) + 0 * x
    return np.stack(np.broadcast_arrays(red, green, blue), -1).round().clip(0, 255).astype(np.uint8)


def encode(path: Path, frames: np.ndarray, codec: str, options: dict | None = None, fps: int = 8,
           pts: list[int] | None = None, time_base: Fraction | None = None, gop: int | None = None) -> Path:
    """Encode frames with PyAV; pts/time_base give each frame its own timestamp (variable rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        if gop is not None:
            stream.codec_context.gop_size = gop
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                picture.pts, picture.time_base = pts[index], time_base
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    return path


def write_sample(path: Path, frames: np.ndarray, gop: int | None = None) -> Path:
    """frames in the container named by path's extension: H.264 (mp4/mov/mkv, B-frames), VP9
    (webm), MPEG-4 part 2 (avi) or GIF. gop: frames between keyframes (None: the codec's default)."""
    suffix = path.suffix.lower()
    if suffix == ".gif":
        write_video(path, frames, fps=8)
    elif suffix in (".mp4", ".mov", ".mkv"):
        if gop is None:
            write_video(path, frames, fps=8)
        else:
            encode(path, frames, "libx264", {"bf": "2", "g": str(gop), "crf": "20"}, gop=gop)
    elif suffix == ".webm":
        encode(path, frames, "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}, gop=gop)
    elif suffix == ".avi":
        encode(path, frames, "mpeg4", gop=gop)
    else:
        raise ValueError(f"no test writer for {suffix}")
    return path
