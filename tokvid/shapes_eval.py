"""Scorer for shapes-v1 videos: is the object the prompt's colour and shape, and does it move as asked?

The object is found by colour: each pixel is matched to the palette colour it is a (possibly
darkened) copy of, so edge pixels blended with the black background, codec noise and the blur of
a decoded video still classify. Per segment of a story we check colour, shape (fill ratio of the
object's box, and whether its mass sits low as a triangle's does) and motion (displacement over
the segment, with "stopped at the wall" counting as right for a motion into that wall). Per
frame we check cleanliness (one object of plausible size, nothing else on screen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tokvid.shapes import COLOURS, FRAME_SIZE, MAX_SIDE, MIN_SIDE, SPEED, VELOCITY, parse_caption

_PALETTE_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in _PALETTE_NAMES], np.float32)
_WHITE = _PALETTE_NAMES.index("white")


@dataclass(frozen=True)
class Tolerances:
    """Thresholds of the scorer, in pixels of a 64x64 frame (scaled for other sizes)."""

    colour_distance: float = 60.0  # max RGB distance from a (darkened) palette colour
    min_coverage: float = 0.5      # a pixel belongs to the object if >= half as bright as its colour
    background_level: int = 50     # max channel value below which a pixel is background
    side_slack: float = 2.0        # accepted bbox side: MIN_SIDE - slack .. MAX_SIDE + slack
    stray_pixels: int = 4          # non-object bright pixels tolerated in a clean frame ...
    stray_fraction: float = 0.1    # ... or this fraction of the object's pixels, if larger
    square_fill: float = 0.9       # fill ratio of its box at or above which an object is a square
    triangle_top_share: float = 0.42  # share of pixels in the box's upper half below which: triangle
    min_progress: float = 0.5      # fraction of the expected displacement a move must cover
    max_progress: float = 1.5      # ... and at most this fraction (+ across_slack), i.e. not too fast
    across_slack: float = 3.0      # px of drift perpendicular to the motion tolerated
    still_slack: float = 3.0       # px a "stays still" object may drift
    wall_slack: float = 1.0        # px from the frame edge that counts as "at the wall"
    frozen_travel: float = 1.0     # px: a moving segment whose object travels less is frozen
    frozen_pixel_change: float = 0.5  # mean abs pixel change under which frames count as identical


DEFAULT_TOLERANCES = Tolerances()


def classify_pixels(frames: np.ndarray, tolerances: Tolerances = DEFAULT_TOLERANCES,
                    palette: np.ndarray = _PALETTE) -> np.ndarray:
    """Label each pixel of uint8 (..., H, W, 3): index into palette (float (colours, 3) RGB; default the
    shapes-v1 colours), -1 background, -2 other colour."""
    bright = frames.max(-1) >= tolerances.background_level
    labels = np.full(frames.shape[:-1], -1, np.int64)
    pixels = frames[bright].astype(np.float32)  # only the few non-black pixels need matching
    # coverage a of palette colour c that best explains pixel p as a * c (object blended with black)
    dot = pixels @ palette.T
    palette_norm2 = (palette ** 2).sum(1)
    coverage = np.clip(dot / palette_norm2, 0.0, 1.2)
    # |p - a c|^2 expanded, so no (pixels, colours, 3) temporary is needed
    residual2 = (pixels ** 2).sum(-1, keepdims=True) - 2 * coverage * dot + coverage ** 2 * palette_norm2
    best = residual2.argmin(-1)
    rows = np.arange(len(best))
    matched = np.sqrt(np.maximum(residual2[rows, best], 0.0)) < tolerances.colour_distance
    is_object = matched & (coverage[rows, best] >= tolerances.min_coverage)
    # a faint (less than half covered) edge pixel of an object counts as background
    labels[bright] = np.where(is_object, best, np.where(matched, -1, -2))
    return labels


def locate_object(labels: np.ndarray, scale: float = 1.0,
                  tolerances: Tolerances = DEFAULT_TOLERANCES) -> dict | None:
    """Describe the object in one frame's pixel labels, or None if no palette colour is present."""
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(_PALETTE))
    if counts.sum() == 0:
        return None
    colour_index = int(counts.argmax())
    core = labels == colour_index
    # chroma subsampling washes out the colour of the object's outline pixels (towards grey, which
    # may match white): such pixels touching the object are its outline, not a second object
    washed_out = (labels == -2) | (labels == _WHITE)
    blob = describe_blob(core | (washed_out & _dilate(core)), scale, tolerances)
    stray = int((labels != -1).sum() - blob["pixels"])
    clean = blob["sized"] and stray <= stray_limit(blob["pixels"], scale, tolerances)
    return {"colour": _PALETTE_NAMES[colour_index], "shape": blob["shape"], "clean": bool(clean), **blob}


def stray_limit(object_pixels: int, scale: float = 1.0, tolerances: Tolerances = DEFAULT_TOLERANCES) -> float:
    """Bright pixels outside the objects that a clean frame tolerates."""
    return max(tolerances.stray_pixels * scale ** 2, tolerances.stray_fraction * object_pixels)


def describe_blob(mask: np.ndarray, scale: float = 1.0, tolerances: Tolerances = DEFAULT_TOLERANCES) -> dict:
    """Shape (fill ratio of the box; mass low in the box: triangle), whether it is object-sized, centre
    (x, y), box (left, top, right, bottom), fill and pixel count of a non-empty boolean (H, W) mask."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height, width = bottom - top + 1, right - left + 1
    area = len(rows)
    fill = area / (height * width)
    top_share = float((rows < top + height / 2).mean())
    if top_share < tolerances.triangle_top_share:
        shape = "triangle"
    elif fill >= tolerances.square_fill:
        shape = "square"
    else:
        shape = "circle"
    low = (MIN_SIDE - tolerances.side_slack) * scale
    high = (MAX_SIDE + tolerances.side_slack) * scale
    sized = (low <= height <= high and low <= width <= high
             and abs(height - width) <= tolerances.side_slack * scale and fill >= 0.4)
    return {"shape": shape, "sized": bool(sized),
            "centre": (float(cols.mean()), float(rows.mean())),  # (x, y)
            "box": (int(left), int(top), int(right), int(bottom)), "fill": float(fill), "pixels": int(area)}


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.any([padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3)], axis=0)


def _majority(values: list) -> object:
    values = [v for v in values if v is not None]
    if not values:
        return None
    names, counts = np.unique(values, return_counts=True)
    return str(names[counts.argmax()])


def _at_wall(box: tuple[int, int, int, int], motion: str, frame_size: int, slack: float) -> bool:
    left, top, right, bottom = box
    return {"left": left <= slack, "right": right >= frame_size - 1 - slack,
            "up": top <= slack, "down": bottom >= frame_size - 1 - slack}.get(motion, False)


def score_video(frames: np.ndarray, segments: Sequence[tuple[str, int]],
                tolerances: Tolerances = DEFAULT_TOLERANCES) -> dict:
    """Score uint8 (T, H, W, 3) frames against a story [(prompt, frames), ...].

    T may be sum(frames) + 1 (with the leading frame) or sum(frames). Returns per-segment results
    (index, frame range, detected colour/shape, colour_ok, shape_ok, motion_ok, frozen, ok),
    per-frame clean flags, identity_kept across prompt switches, all_ok and frozen (whole video).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    segments = [(str(text), int(length)) for text, length in segments]
    if not segments or any(length < 1 for _, length in segments):
        raise ValueError("segments must be a non-empty list of (prompt, frames >= 1)")
    total = sum(length for _, length in segments)
    if len(frames) not in (total, total + 1):
        raise ValueError(f"got {len(frames)} frames for segments summing to {total}; "
                         f"expected {total + 1} (with the leading frame) or {total}")
    leading = len(frames) == total + 1
    frame_size = frames.shape[2]
    scale = frame_size / FRAME_SIZE

    labels = classify_pixels(frames, tolerances)
    objects = [locate_object(frame_labels, scale, tolerances) for frame_labels in labels]
    clean = [bool(o and o["clean"]) for o in objects]

    results, start = [], int(leading)
    for index, (text, length) in enumerate(segments):
        colour, shape, motion = parse_caption(text)
        end = start + length  # frames [start, end) belong to this segment
        before = start - 1 if start > 0 else start  # the frame the segment's motion starts from
        # only object-sized blobs count: a smear or noise of the right colour is not "the object"
        seen = [o for o in objects[before:end] if o is not None and o["sized"]]
        found_colour = _majority([o["colour"] for o in seen])
        found_shape = _majority([o["shape"] for o in seen if o["colour"] == found_colour and o["clean"]]
                                or [o["shape"] for o in seen if o["colour"] == found_colour])
        motion_ok, frozen, travel = _judge_motion(objects[before:end], frames[before:end], motion,
                                                  end - 1 - before, frame_size, scale, tolerances)
        result = {
            "index": index, "prompt": text, "start_frame": start, "end_frame": end,
            "colour": found_colour, "shape": found_shape,
            "colour_ok": found_colour == colour, "shape_ok": found_shape == shape,
            "motion_ok": motion_ok, "frozen": frozen, "travel": travel,
            # a moving segment whose object already stands at the wall it should move toward: standing
            # still is right (and is not judged frozen), but a model that always parks there learns no motion
            "blocked": motion != "still" and frozen is None,
        }
        result["ok"] = result["colour_ok"] and result["shape_ok"] and result["motion_ok"]
        results.append(result)
        start = end

    identities = [(r["colour"], r["shape"]) for r in results]
    moving = [r for r, (text, _) in zip(results, segments) if parse_caption(text)[2] != "still"
              and r["frozen"] is not None]
    return {
        "segments": results,
        "clean_frames": clean,
        "identity_kept": all(i == identities[0] and None not in i for i in identities),
        "all_ok": all(r["ok"] for r in results),
        "frozen": bool(moving) and all(r["frozen"] for r in moving),
    }


def _judge_motion(objects: list, frames: np.ndarray, motion: str, steps: int, frame_size: int,
                  scale: float, tolerances: Tolerances) -> tuple[bool, bool | None, float]:
    """(motion right, frozen or None when not applicable, distance travelled along the motion)."""
    change = np.abs(frames.astype(np.int16) - frames[:1]).mean(axis=(1, 2, 3)).max()
    unchanged = float(change) < tolerances.frozen_pixel_change  # no frame differs from the first
    first, last = objects[0], objects[-1]
    if first is None or last is None or not (first["sized"] and last["sized"]) or steps < 1:
        # no object-sized blob to follow (empty frames, smears, noise): the motion cannot be right
        return False, (unchanged if motion != "still" else None), 0.0
    centres = np.array([o["centre"] if o else (np.nan, np.nan) for o in objects])
    displacement = centres[-1] - centres[0]
    if motion == "still":
        drift = np.nanmax(np.linalg.norm(centres - centres[0], axis=1))
        return bool(drift <= tolerances.still_slack * scale), None, float(drift)
    direction = np.array(VELOCITY[motion], np.float64) / SPEED
    along = float(displacement @ direction)
    across = float(abs(displacement @ direction[::-1]))
    expected = SPEED * scale * steps
    wall = tolerances.wall_slack * scale
    reached_wall = _at_wall(last["box"], motion, frame_size, wall)
    far_enough = along >= tolerances.min_progress * expected or (reached_wall and along >= -wall)
    not_too_far = along <= tolerances.max_progress * expected + tolerances.across_slack * scale
    motion_ok = far_enough and not_too_far and across <= tolerances.across_slack * scale
    if _at_wall(first["box"], motion, frame_size, wall):
        return bool(motion_ok), None, along  # blocked from the start: standing still is right
    travel = float(np.nanmax(np.abs((centres - centres[0]) @ direction)))
    return bool(motion_ok), bool(travel < tolerances.frozen_travel * scale or unchanged), along


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval of a success rate. On 21 videos a measured 0.29 is anything
    from 0.14 to 0.50, so gaps between settings smaller than that are not evidence."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    rate, z2 = successes / trials, z * z
    centre = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(scores: Sequence[dict]) -> dict:
    """Rates over many score_video results; accuracy per segment index gives drift curves."""
    if not scores:
        raise ValueError("summarize needs at least one score_video result")
    segments = [s for score in scores for s in score["segments"]]
    frames = [flag for score in scores for flag in score["clean_frames"]]
    segment_ok = [bool(s["ok"]) for s in segments]
    stories = [score for score in scores if len(score["segments"]) > 1]
    judged = [s["frozen"] for s in segments if s["frozen"] is not None]
    moving = [s for s in segments if parse_caption(s["prompt"])[2] != "still"]
    by_index: dict[int, list[bool]] = {}
    for s in segments:
        by_index.setdefault(s["index"], []).append(s["ok"])
    return {
        "videos": len(scores),
        "segments": len(segments),
        "video_accuracy": float(np.mean([score["all_ok"] for score in scores])),
        "segment_accuracy": float(np.mean(segment_ok)),
        "segment_accuracy_interval": wilson_interval(sum(segment_ok), len(segment_ok)),
        "colour_accuracy": float(np.mean([s["colour_ok"] for s in segments])),
        "shape_accuracy": float(np.mean([s["shape_ok"] for s in segments])),
        "motion_accuracy": float(np.mean([s["motion_ok"] for s in segments])),
        "identity_rate": float(np.mean([s["identity_kept"] for s in stories])) if stories else None,
        "clean_frame_rate": float(np.mean(frames)),
        "frozen_segment_rate": float(np.mean(judged)) if judged else 0.0,
        "frozen_video_rate": float(np.mean([score["frozen"] for score in scores])),
        "blocked_segment_rate": float(np.mean([s["blocked"] for s in moving])) if moving else 0.0,
        "accuracy_by_segment_index": {i: float(np.mean(v)) for i, v in sorted(by_index.items())},
    }


# ----------------------------------------------------------------------------------------------
# benchmark suites (bench/eval_shapes.py is the command line around these)


def single_prompt_suite(frames: int = 16) -> list[list[tuple[str, int]]]:
    """Every colour x shape x motion as a one-segment story (1 + frames video frames)."""
    from tokvid.shapes import MOTIONS, SHAPES, caption

    return [[(caption(c, s, m), frames)] for c in COLOURS for s in SHAPES for m in MOTIONS]


def story_suite(count: int, seed: int, min_segments: int = 2, max_segments: int = 4,
                segment_frames: Sequence[int] = (8, 16)) -> list[list[tuple[str, int]]]:
    """Random multi-segment stories; objects cycle through every colour x shape so each is tested
    equally, and every prompt switch changes the motion, so each switch shows in the video."""
    from tokvid.shapes import SHAPES, random_story

    rng = np.random.default_rng(seed)
    stories = []
    while len(stories) < count:
        colour = list(COLOURS)[len(stories) % len(COLOURS)]
        shape = SHAPES[len(stories) // len(COLOURS) % len(SHAPES)]
        story = random_story(rng, int(rng.integers(min_segments, max_segments + 1)), segment_frames=segment_frames,
                             colour=colour, shape=shape)
        motions = [parse_caption(text)[2] for text, _ in story]
        if all(a != b for a, b in zip(motions, motions[1:])):
            stories.append(story)
    return stories


def long_story_suite(count: int, seed: int, total_frames: int, segment_frames: int = 16) -> list[list[tuple[str, int]]]:
    """Stories of total_frames (+1 leading) frames cut into equal segments, each switching motion:
    accuracy per segment index shows drift over time."""
    if total_frames < segment_frames or total_frames % segment_frames:
        raise ValueError(f"total_frames must be a multiple of segment_frames={segment_frames}, got {total_frames}")
    return story_suite(count, seed, total_frames // segment_frames, total_frames // segment_frames, (segment_frames,))


def run_suite(generate, stories: Sequence[Sequence[tuple[str, int]]], seed: int = 0,
              progress=None, score=None, summarize_scores=None) -> dict:
    """Generate and score each story. generate(story, seed) -> uint8 (T, H, W, 3) frames; story i
    uses seed + i. Returns summary, per-story scores, seconds per video and the videos.
    score(frames, story) and summarize_scores(scores) default to this module's shapes-v1 scorer."""
    import time

    scores, videos, seconds = [], [], []
    for index, story in enumerate(stories):
        started = time.perf_counter()
        frames = generate(list(story), seed + index)
        seconds.append(time.perf_counter() - started)
        scores.append((score or score_video)(frames, story))
        videos.append(frames)
        if progress is not None:
            progress(index + 1, len(stories))
    summary = (summarize_scores or summarize)(scores)
    summary["seconds_per_video"] = float(np.mean(seconds))
    summary["frames_per_second"] = float(sum(len(v) for v in videos) / max(sum(seconds), 1e-9))
    return {"summary": summary, "scores": scores, "seconds": seconds, "videos": videos}


def suite_grid(videos: Sequence[np.ndarray], frames_per_row: int = 9) -> tuple[np.ndarray, int]:
    """Frames for a contact sheet with one row per video (evenly spaced frames); returns
    (frames, columns) to pass to save_contact_sheet(..., columns=columns, max_frames=len(frames))."""
    rows = []
    for video in videos:
        picked = np.linspace(0, len(video) - 1, frames_per_row).round().astype(int)
        rows.append(video[picked])
    return np.concatenate(rows), frames_per_row


def held_out_shapes_clips(count: int, seed: int = 12345, num_frames: int = 17) -> tuple[list[np.ndarray], list]:
    """(clips, stories): ground-truth shapes-v1 clips of num_frames (1 + a multiple of 8) for
    tokenizer quality; use a seed that no training set used."""
    from tokvid.shapes import SEGMENT_UNIT, random_story, render_story

    if num_frames < 1 + SEGMENT_UNIT or (num_frames - 1) % SEGMENT_UNIT:
        raise ValueError(f"num_frames must be 1 + a multiple of {SEGMENT_UNIT}, got {num_frames}")
    rng = np.random.default_rng(seed)
    clips, stories = [], []
    for _ in range(count):
        story = random_story(rng, (num_frames - 1) // SEGMENT_UNIT, segment_frames=(SEGMENT_UNIT,))
        clips.append(render_story(story, rng)[0])
        stories.append(story)
    return clips, stories


def tokenizer_quality(tokenizer, clips: Sequence[np.ndarray], stories: Sequence) -> dict:
    """PSNR of encode -> decode on uint8 clips, and the scorer's verdict on the reconstructions
    (a tokenizer that moves, recolours or reshapes the object fails here even at high PSNR)."""
    import torch

    from tokvid.video_io import frames_to_tensor, tensor_to_frames

    psnrs, scores = [], []
    with torch.inference_mode():
        for clip, story in zip(clips, stories):
            x = frames_to_tensor(clip)[None]
            reconstruction = tensor_to_frames(tokenizer.decode(tokenizer.encode(x))[0])
            mse = np.mean((reconstruction.astype(np.float64) - clip.astype(np.float64)) ** 2)
            psnrs.append(float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10))))
            scores.append(score_video(reconstruction, story))
    return {"clips": len(clips), "psnr_db": float(np.mean(psnrs)), "psnr_per_clip": psnrs,
            "reconstruction_scores": summarize(scores)}
