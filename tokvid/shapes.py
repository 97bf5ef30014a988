"""The shapes-v1 world (DESIGN.md section 4): captioned stories of one coloured shape moving.

Frames are 64x64 RGB on black at 8 fps. One object per video: a circle, square or triangle
(isosceles, apex up) whose bounding box side is 10-14 px, in one of seven exact colours. It moves
left/right/up/down at 2 px per frame or stays still; at a wall it stops and stays there until
the motion changes. A story is a list of (caption, frames) segments, lengths multiples of 8,
rendered after one extra leading frame (2 segments of 8 frames -> 17 frames).
Everything is drawn without antialiasing, so every object pixel has the exact palette colour.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

FRAME_SIZE = 64
FPS = 8
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "still")
SPEED = 2  # pixels per frame
MIN_SIDE, MAX_SIDE = 10, 14  # bounding box side in pixels, inclusive
SEGMENT_UNIT = 8  # segment lengths are multiples of this many frames
# (dx, dy) per frame; y grows downwards as in image rows
VELOCITY = {"left": (-SPEED, 0), "right": (SPEED, 0), "up": (0, -SPEED), "down": (0, SPEED), "still": (0, 0)}

_CAPTION = re.compile(r"a (\w+) (\w+) (?:moves (left|right|up|down)|stays (still))")


def caption(colour: str, shape: str, motion: str) -> str:
    """'a red circle moves right' / 'a red circle stays still' (motion 'still')."""
    if colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS:
        raise ValueError(f"unknown colour/shape/motion {colour!r}/{shape!r}/{motion!r}; "
                         f"use one of {list(COLOURS)} / {list(SHAPES)} / {list(MOTIONS)}")
    return f"a {colour} {shape} stays still" if motion == "still" else f"a {colour} {shape} moves {motion}"


def parse_caption(text: str) -> tuple[str, str, str]:
    """Inverse of caption(): (colour, shape, motion). Case, extra spaces and a final '.' are ignored."""
    normalised = " ".join(str(text).lower().split()).rstrip(".")
    match = _CAPTION.fullmatch(normalised)
    if not match or match.group(1) not in COLOURS or match.group(2) not in SHAPES:
        raise ValueError(f"{text!r} is not a shapes-v1 caption; write 'a {{colour}} {{shape}} moves "
                         f"{{left|right|up|down}}' or 'a {{colour}} {{shape}} stays still' with colour in "
                         f"{list(COLOURS)} and shape in {list(SHAPES)}")
    return match.group(1), match.group(2), match.group(3) or "still"


def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean (side, side) mask whose filled pixels touch all four edges of the box."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")
    centres = np.arange(side) + 0.5
    if shape == "square":
        return np.ones((side, side), bool)
    if shape == "circle":
        radius = side / 2
        return (centres[:, None] - radius) ** 2 + (centres[None, :] - radius) ** 2 <= radius ** 2
    # triangle, apex up: row r is filled out to the half-width the sides reach at its lower edge,
    # so the top row has 1-2 pixels and the bottom row is the full base
    half_width = (np.arange(side) + 1) / 2
    return np.abs(centres[None, :] - side / 2) <= half_width[:, None]


def check_segments(segments: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """Validate a story: 1+ segments, same object throughout, frames positive multiples of 8."""
    if not segments:
        raise ValueError("a story needs at least one (caption, frames) segment")
    checked, objects = [], set()
    for index, segment in enumerate(segments):
        if len(segment) != 2:
            raise ValueError(f"segment {index} must be a (caption, frames) pair, got {segment!r}")
        text, frames = segment
        colour, shape, _ = parse_caption(text)
        objects.add((colour, shape))
        if int(frames) != frames or frames < SEGMENT_UNIT or frames % SEGMENT_UNIT:
            raise ValueError(f"segment {index} has {frames!r} frames; use a positive multiple of {SEGMENT_UNIT}")
        checked.append((text, int(frames)))
    if len(objects) > 1:
        raise ValueError(f"a story keeps one object; segments name {sorted(objects)}")
    return checked


def _as_rng(seed_or_rng: int | np.random.Generator | None) -> np.random.Generator:
    return seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)


def object_path(motions: Sequence[str], side: int, start: tuple[int, int]) -> np.ndarray:
    """Top-left (x, y) of the object per frame: start, then one step per motion, clamped at walls."""
    limit = FRAME_SIZE - side
    positions = [start]
    x, y = start
    for motion in motions:
        dx, dy = VELOCITY[motion]
        x, y = min(max(x + dx, 0), limit), min(max(y + dy, 0), limit)
        positions.append((x, y))
    return np.array(positions, dtype=np.int64)


def draw_object(video: np.ndarray, positions: np.ndarray, shape: str, side: int,
                rgb: tuple[int, int, int]) -> None:
    """Paint the shape into uint8 (T, H, W, 3) video in place, frame t at top-left positions[t],
    without antialiasing (every object pixel gets exactly rgb)."""
    mask = shape_mask(shape, side)
    for frame, (x, y) in zip(video, positions):
        frame[y:y + side, x:x + side][mask] = rgb


def render_story(segments: Sequence[tuple[str, int]], seed: int | np.random.Generator | None = 0,
                 side: int | None = None, start: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Render a story to uint8 (1 + sum(frames), 64, 64, 3) and an info dict.

    side (10-14) and start (top-left x, y) are drawn from the seed unless given.
    info: colour, shape, side, positions (per frame top-left [x, y]), motions (per frame; frame 0
    is the leading frame and takes the first segment's motion), segment_of_frame, segments.
    """
    segments = check_segments(segments)
    rng = _as_rng(seed)
    colour, shape, _ = parse_caption(segments[0][0])
    side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) if side is None else int(side)
    if not MIN_SIDE <= side <= MAX_SIDE:
        raise ValueError(f"side must be {MIN_SIDE}..{MAX_SIDE} px, got {side}")
    limit = FRAME_SIZE - side
    if start is None:
        start = (int(rng.integers(0, limit + 1)), int(rng.integers(0, limit + 1)))
    if not (0 <= start[0] <= limit and 0 <= start[1] <= limit):
        raise ValueError(f"start {start} puts the object outside the frame; use 0..{limit} for x and y")

    motions, segment_of_frame = [], [0]
    for index, (text, frames) in enumerate(segments):
        motions += [parse_caption(text)[2]] * frames
        segment_of_frame += [index] * frames
    positions = object_path(motions, side, start)

    video = np.zeros((len(positions), FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    draw_object(video, positions, shape, side, COLOURS[colour])
    info = {
        "colour": colour, "shape": shape, "side": side,
        "positions": positions.tolist(),
        "motions": [motions[0]] + motions,
        "segment_of_frame": segment_of_frame,
        "segments": [{"prompt": text, "frames": frames} for text, frames in segments],
    }
    return video, info


def random_story(rng: np.random.Generator, num_segments: int | None = None, max_segments: int = 4,
                 segment_frames: Sequence[int] = (8, 16), colour: str | None = None,
                 shape: str | None = None) -> list[tuple[str, int]]:
    """A random story: one object, num_segments (default 1..max_segments) random motions/lengths."""
    if num_segments is None:
        num_segments = int(rng.integers(1, max_segments + 1))
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if not segment_frames or any(f < SEGMENT_UNIT or f % SEGMENT_UNIT for f in segment_frames):
        raise ValueError(f"segment_frames must be multiples of {SEGMENT_UNIT}, got {segment_frames!r}")
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    return [(caption(colour, shape, MOTIONS[rng.integers(len(MOTIONS))]), int(rng.choice(segment_frames)))
            for _ in range(num_segments)]


def random_item(rng: np.random.Generator, image_fraction: float = 0.1, max_segments: int = 4,
                segment_frames: Sequence[int] = (8, 16)) -> tuple[np.ndarray, dict]:
    """One training item rendered in memory: (frames, record) where record has "caption"
    (one segment, or an image: 1 frame, captioned 'stays still') or "story" (2+ segments)."""
    if rng.random() < image_fraction:
        segments = random_story(rng, 1, segment_frames=(SEGMENT_UNIT,))
        text = caption(*parse_caption(segments[0][0])[:2], "still")
        frames, _ = render_story([(text, SEGMENT_UNIT)], rng)
        return frames[:1], {"caption": text}
    segments = random_story(rng, max_segments=max_segments, segment_frames=segment_frames)
    frames, info = render_story(segments, rng)
    if len(segments) == 1:
        return frames, {"caption": segments[0][0]}
    return frames, {"story": info["segments"]}


def iter_dataset(num_videos: int, seed: int, image_fraction: float = 0.1, max_segments: int = 4,
                 segment_frames: Sequence[int] = (8, 16)) -> Iterator[tuple[np.ndarray, dict]]:
    """Items 0..num_videos-1 in memory; item i depends only on (seed, i)."""
    for index in range(num_videos):
        yield random_item(np.random.default_rng([seed, index]), image_fraction, max_segments, segment_frames)


def write_dataset(out_dir: str | Path, num_videos: int, seed: int = 0, image_fraction: float = 0.1,
                  max_segments: int = 4, segment_frames: Sequence[int] = (8, 16)) -> Path:
    """Write lossless video_XXXXX.mp4 (image_XXXXX.png for 1-frame items) + manifest.jsonl.

    Returns the manifest path. Lines: {"path", "caption"} or {"path", "story": [{"prompt", "frames"}]}.
    """
    from PIL import Image

    from tokvid.video_io import write_video

    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if not 0 <= image_fraction <= 1:
        raise ValueError(f"image_fraction must be in [0, 1], got {image_fraction}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    items = iter_dataset(num_videos, seed, image_fraction, max_segments, segment_frames)
    for index, (frames, record) in enumerate(items):
        if len(frames) == 1:
            name = f"image_{index:05d}.png"
            Image.fromarray(frames[0]).save(out_dir / name)
        else:
            name = f"video_{index:05d}.mp4"
            write_video(out_dir / name, frames, fps=FPS, quality="lossless")
        lines.append(json.dumps({"path": name, **record}))
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
