"""Video files <-> uint8 frame arrays (T, H, W, 3) RGB, and frames <-> model tensors.

Reading goes through PyAV (mp4/webm/mov/mkv/avi/gif, see video_decode.py) or Pillow (single
images and folders of images). Writing makes H.264 .mp4 files (or .gif). Every failure to read
a file becomes a ValueError that names the file and the reason, so callers never see an FFmpeg
traceback; a file that ends early is a TruncatedVideoError (docs/video-io.md).
"""
from __future__ import annotations

import functools
import math
import re
import warnings
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import av
import numpy as np
from PIL import Image

from .video_decode import (FOLDER_FPS, TimedFrame, TruncatedVideoError,  # noqa: F401 (the errors are public)
                           TruncatedVideoWarning, collect_window, container_info, read_container,
                           resample_by_time)
from .video_decode import reason as _reason

if TYPE_CHECKING:  # torch is only needed by the two tensor helpers; keep plain video IO light
    import torch

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
H264_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv")

# x264 constant-rate factors: lower is better quality. "high" keeps smooth content above ~40 dB.
QUALITY_CRF = {"low": 28, "medium": 23, "high": 17}
# "lossless" is exact RGB (libx264rgb, crf 0): datasets keep their exact palette colours.
QUALITIES = (*QUALITY_CRF, "lossless")


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------

def read_video(path: str | Path, num_frames: int | None = None, fps: float | None = None,
               size: int | tuple[int, int] | None = None, start_frame: int = 0,
               allow_partial: bool = False) -> np.ndarray:
    """Read a video file, a folder of images or a single image into uint8 (T, H, W, 3) RGB.

    fps: resample to this rate by timestamps (frames are dropped or repeated).
    size: int (square) or (H, W); frames are resized keeping aspect so that the target is
    covered, then centre cropped. start_frame / num_frames count frames *after* resampling,
    so read_video(p, fps=8, start_frame=s, num_frames=n) == read_video(p, fps=8)[s:s + n].
    A window (start_frame > 0) seeks to the keyframe before it and decodes only up to its end.
    A file that ends before what its container promises (cut bytes, fewer frames or a shorter
    duration than declared) raises TruncatedVideoError (a ValueError); allow_partial=True
    returns the frames that could be read with a TruncatedVideoWarning instead.
    """
    path = Path(path)
    if num_frames is not None and (int(num_frames) != num_frames or num_frames < 1):
        raise ValueError(f"num_frames must be a positive integer or None, got {num_frames!r}")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if int(start_frame) != start_frame or start_frame < 0:
        raise ValueError(f"start_frame must be an integer >= 0, got {start_frame!r}")
    start_frame = int(start_frame)
    target_hw = _as_height_width(size)

    def convert(frame: np.ndarray) -> np.ndarray:
        return frame if target_hw is None else resize_cover(frame, target_hw)

    if not path.exists():
        raise ValueError(f"cannot read {path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        if path.is_dir():
            timed = _folder_frames(path)
        else:
            image = _read_image(path)
            timed = iter([(0.0, lambda: image)])
        if fps is not None:
            timed = resample_by_time(timed, fps, last_frame_seconds=1.0 / FOLDER_FPS)
        frames, _ = collect_window(timed, start_frame, num_frames, convert)
    else:
        if path.stat().st_size == 0:
            raise ValueError(f"cannot read video {path}: the file is empty (0 bytes)")
        frames = read_container(path, start_frame, num_frames, fps, convert, allow_partial)
    if not frames:
        raise ValueError(f"cannot read {path}: no frames at or after start_frame={start_frame}"
                         if start_frame else f"cannot read {path}: it contains no frames")
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"frames in {path} have different sizes; pass size=... to resize them")
    return np.stack(frames)


def video_fps(path: str | Path) -> float:
    """Frame rate of a video file (folders and single images count as FOLDER_FPS)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"cannot read {path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return FOLDER_FPS
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read video {path}: the file is empty (0 bytes)")
    return container_info(path).fps


def count_frames(path: str | Path, fps: float | None = None) -> int:
    """len(read_video(path, fps=fps)), from timestamps alone where the container has them.

    A video's packets are read once (not decoded) and the count is cached per file version, so
    a dataset can draw a window's start without decoding the video. A truncated file's count is
    what could be read; read_video still raises for it.
    """
    path = Path(path)
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if not path.exists():
        raise ValueError(f"cannot read {path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        count = len(_image_files(path)) if path.is_dir() else 1
        if fps is None:
            return count
        return sum(1 for _ in resample_by_time(((i / FOLDER_FPS, i) for i in range(count)), fps, 1.0 / FOLDER_FPS))
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read video {path}: the file is empty (0 bytes)")
    info = container_info(path)
    ticks = info.tick_sources(fps)
    if ticks is not None:
        return len(ticks)
    if fps not in info.decoded_counts:  # timestamps cannot index the frames: count them by decoding, once
        with warnings.catch_warnings():  # a truncated file is reported when it is read, not when counted
            warnings.simplefilter("ignore", TruncatedVideoWarning)
            info.decoded_counts[fps] = len(read_video(path, fps=fps, allow_partial=True))
    return info.decoded_counts[fps]


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def _natural_key(name: str) -> list:
    # "frame_2.png" sorts before "frame_10.png"
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: _natural_key(p.name))
    if not files:
        raise ValueError(f"cannot read {folder}: the folder has no image files "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _folder_frames(folder: Path) -> Iterator[TimedFrame]:
    for index, file in enumerate(_image_files(folder)):
        yield index / FOLDER_FPS, (lambda f=file: _read_image(f))


def _as_height_width(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if (len(size) != 2 or any(int(s) != s or s < 1 for s in size)):
        raise ValueError(f"size must be a positive int or a (height, width) pair, got {size!r}")
    return int(size[0]), int(size[1])


def resize_cover(frame: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize (antialiased) keeping aspect so (H, W) is covered, then centre crop to it."""
    height, width = _as_height_width(size)
    source_h, source_w = frame.shape[:2]
    if (source_h, source_w) == (height, width):
        return frame
    scale = max(height / source_h, width / source_w)
    scaled_h = max(height, round(source_h * scale))
    scaled_w = max(width, round(source_w * scale))
    image = Image.fromarray(frame).resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.asarray(image)[top:top + height, left:left + width]


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------

def check_frames(frames: np.ndarray | list) -> np.ndarray:
    """Validate uint8 (T, H, W, 3) frames (a list of (H, W, 3) arrays is stacked)."""
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("frames is empty; pass at least one (H, W, 3) uint8 frame")
        frames = np.stack([np.asarray(f) for f in frames])
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy uint8 array (T, H, W, 3), got {type(frames).__name__}"
                         " (use tensor_to_frames for model tensors)")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 in 0..255, got dtype {frames.dtype}"
                         " (use tensor_to_frames for float tensors in [-1, 1])")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"frames must have shape (T, H, W, 3) with T, H, W >= 1, got {frames.shape}")
    return frames


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8, quality: str = "high") -> None:
    """Write uint8 (T, H, W, 3) frames to .mp4/.mov/.mkv (H.264) or .gif, chosen by extension.

    quality: "low" | "medium" | "high" (yuv420p so every player works; odd frame sizes switch
    to yuv444p, which keeps the exact shape) or "lossless" (exact RGB; players may not
    support it; use it for datasets). GIFs always use a 256-colour palette per frame.
    """
    path = Path(path)
    frames = check_frames(frames)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if quality not in QUALITIES:
        raise ValueError(f"quality must be one of {QUALITIES}, got {quality!r}")
    suffix = path.suffix.lower()
    if suffix not in H264_EXTENSIONS + (".gif",):
        raise ValueError(f"cannot write {path}: use a .mp4, .mov, .mkv or .gif file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    try:
        if suffix == ".gif":
            _write_gif(path, frames, rate)
        else:
            _write_h264(path, frames, rate, quality)
    except av.FFmpegError as error:
        path.unlink(missing_ok=True)
        raise ValueError(f"cannot write video {path}: {_reason(error)}") from None


def _write_h264(path: Path, frames: np.ndarray, rate: Fraction, quality: str) -> None:
    height, width = frames.shape[1:3]
    if quality == "lossless":
        # lossless output is identical for every preset; "superfast" is 2x faster than "fast"
        # at about the same file size, which matters when writing thousands of dataset clips
        codec, pixel_format, options = "libx264rgb", "rgb24", {"crf": "0", "preset": "superfast"}
    else:
        even = height % 2 == 0 and width % 2 == 0
        codec, pixel_format = "libx264", "yuv420p" if even else "yuv444p"
        options = {"crf": str(QUALITY_CRF[quality]), "preset": "medium"}
    options.update(_x264_repeatable_options())
    # faststart puts the index first: files stream in browsers, and a cut-off download still
    # decodes its first frames (read_video then reports it as truncated).
    with av.open(str(path), "w", options={"movflags": "+faststart"} if path.suffix != ".mkv" else {}) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@functools.cache
def _x264_repeatable_options() -> dict:
    """x264 options that make the same frames give the same file every time.

    x264's AVX-512 code did not: 30 writes of one clip gave 3-7 different files (different sizes and
    decoded pixels) on an AVX-512 machine, while its AVX2 code, as fast here, gave one. Every CPU with
    AVX-512 has the AVX2 set, so capping x264 there is safe; other CPUs keep x264's own choice.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: x264 chooses
        return {}
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return {"x264-params": "asm=AVX2,Cache64"} if "avx512f" in flags and "avx2" in flags else {}


def _write_gif(path: Path, frames: np.ndarray, rate: Fraction) -> None:
    # FFmpeg's own rgb24 -> pal8 conversion uses a fixed 3-3-2 palette; Pillow's median cut
    # picks a good palette per frame (exact for frames with <= 256 colours).
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "pal8"
        for frame in frames:
            indexed = Image.fromarray(frame).quantize(256)
            rgb = np.zeros((256, 3), np.uint8)
            palette = np.asarray(indexed.getpalette(), np.uint8).reshape(-1, 3)[:256]
            rgb[:len(palette)] = palette
            # PyAV wants the palette as 256 x (A, R, G, B) bytes
            argb = np.ascontiguousarray(np.concatenate([np.full((256, 1), 255, np.uint8), rgb], 1))
            picture = av.VideoFrame.from_ndarray((np.asarray(indexed), argb), format="pal8")
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def save_contact_sheet(path: str | Path, frames: np.ndarray, columns: int | None = None,
                       max_frames: int = 32, scale: int = 1, gap: int = 2) -> None:
    """Save frames as a PNG grid (row-major, grey gaps of `gap` px between tiles).

    At most max_frames frames, evenly spaced over the video, are shown; each tile is scaled up
    by an integer `scale` (nearest neighbour, so pixels stay crisp). Image size:
    (rows*H*scale + (rows-1)*gap, columns*W*scale + (columns-1)*gap).
    """
    frames = check_frames(frames)
    if max_frames < 1 or scale < 1 or gap < 0 or (columns is not None and columns < 1):
        raise ValueError("max_frames, scale and columns must be >= 1 and gap >= 0")
    picked = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    tiles = frames[picked]
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    columns = columns or math.ceil(math.sqrt(len(tiles)))
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    tile_h, tile_w = tiles.shape[1:3]
    sheet = np.full((rows * tile_h + (rows - 1) * gap, columns * tile_w + (columns - 1) * gap, 3),
                    96, np.uint8)
    for index, tile in enumerate(tiles):
        top = (index // columns) * (tile_h + gap)
        left = (index % columns) * (tile_w + gap)
        sheet[top:top + tile_h, left:left + tile_w] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path, format="PNG")


# ----------------------------------------------------------------------------------------------
# model tensors
# ----------------------------------------------------------------------------------------------

def frames_to_tensor(frames: np.ndarray) -> "torch.Tensor":
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W) in [-1, 1]."""
    import torch

    frames = check_frames(frames)
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_frames(x: "torch.Tensor") -> np.ndarray:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3); values outside are clamped."""
    import torch

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 3:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"expected a float tensor (3, T, H, W) in [-1, 1], got {shape}"
                         " (index a batch first: tensor_to_frames(x[0]))")
    x = x.detach().float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round()
    return x.to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
