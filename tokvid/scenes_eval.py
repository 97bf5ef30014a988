"""Scorer and benchmark sets for shapes-v2 ("scenes") videos of one or two objects.

Each asked object is found by its colour (tokvid/shapes_eval.py's pixel classifier, with orange in
the palette: a blended edge pixel counts for the colour it is a darkened copy of), then its shape,
size and motion are checked per segment with the shapes-v1 rules. On top of that:

- binding errors: in a two-object segment, the two objects' shapes or motions are swapped (each
  object shows what the other was asked for); a colour swap shows as both;
- identity: an object keeps its identity when every segment of a story shows its shape;
- a clean frame holds every asked object, object-sized, and at most a few other bright pixels
  (another colour's blob is such pixels);
- a video is frozen when every object asked to move (and not already at that wall) stays put.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tokvid.scenes import (ALL_COLOURS, SceneSpec, VIDEO_COLOURS, allowed_pairs, check_scene_story, draw_pairs,
                           layout_story, parse_scene_caption)
from tokvid.shapes import FRAME_SIZE, MOTIONS, SHAPES
from tokvid.shapes_eval import (DEFAULT_TOLERANCES, Tolerances, _dilate, _judge_motion, _majority, classify_pixels,
                                describe_blob, stray_limit, wilson_interval)

_NAMES = list(ALL_COLOURS)
_PALETTE = np.array([ALL_COLOURS[name] for name in _NAMES], np.float32)
_WHITE = _NAMES.index("white")


# ----------------------------------------------------------------------------------------------
# per frame


def locate_objects(labels: np.ndarray, colours: Sequence[str], scale: float = 1.0,
                   tolerances: Tolerances = DEFAULT_TOLERANCES) -> tuple[list[dict | None], bool]:
    """The blob of each asked colour in one frame's labels (None if absent) and whether the frame is clean."""
    # outline pixels washed out to grey may match white (shapes_eval): the grey touching a coloured
    # object is its outline, so coloured objects claim theirs first and white keeps the rest
    washed_out = (labels == -2) | (labels == _WHITE)
    masks, claimed = {}, np.zeros(labels.shape, bool)
    for colour in sorted(colours, key=lambda c: c == "white"):
        core = (labels == _NAMES.index(colour)) & ~claimed
        masks[colour] = core | (washed_out & ~claimed & _dilate(core))
        claimed |= masks[colour]
    found = [{"colour": c, **describe_blob(masks[c], scale, tolerances)} if masks[c].any() else None
             for c in colours]
    stray = int(((labels != -1) & ~claimed).sum())
    area = sum(o["pixels"] for o in found if o)
    clean = all(o is not None and o["sized"] for o in found) and stray <= stray_limit(area, scale, tolerances)
    return found, bool(clean)


# ----------------------------------------------------------------------------------------------
# per video


def score_scene(frames: np.ndarray, segments: Sequence[tuple[str, int]],
                tolerances: Tolerances = DEFAULT_TOLERANCES) -> dict:
    """Score uint8 (T, H, W, 3) frames against a scenes story [(prompt, frames), ...].

    T is sum(frames) + 1 (with the leading frame) or sum(frames). Returns per segment and object
    colour_ok (object-sized blob of its colour in at least half the frames), shape, shape_ok,
    motion_ok, frozen; per segment ok and binding errors; per frame clean flags; per object
    identity_kept; all_ok, identity_kept, frozen and binding_error for the whole video."""
    frames = _check_frames(frames)
    segments = check_scene_story(segments, unit=1)
    parsed = [parse_scene_caption(text) for text, _ in segments]
    objects = [c[:2] for c in parsed[0]]
    total = sum(length for _, length in segments)
    if len(frames) not in (total, total + 1):
        raise ValueError(f"got {len(frames)} frames for segments summing to {total}; "
                         f"expected {total + 1} (with the leading frame) or {total}")
    scale = frames.shape[2] / FRAME_SIZE
    labels = classify_pixels(frames, tolerances, _PALETTE)
    colours = [colour for colour, _ in objects]
    per_frame = [locate_objects(frame_labels, colours, scale, tolerances) for frame_labels in labels]
    tracks = [[found[i] for found, _ in per_frame] for i in range(len(objects))]
    clean = [flag for _, flag in per_frame]

    results, start = [], int(len(frames) == total + 1)
    for index, ((text, length), clauses) in enumerate(zip(segments, parsed)):
        end = start + length
        before = start - 1 if start > 0 else start  # the frame the segment's motion starts from
        window = (before, end)
        judged = [_judge_object(track, clean, frames, window, clause, scale, tolerances)
                  for track, clause in zip(tracks, clauses)]
        results.append({"index": index, "prompt": text, "start_frame": start, "end_frame": end, "objects": judged,
                        "ok": all(o["ok"] for o in judged),
                        **_binding(judged, clauses, tracks, frames, window, scale, tolerances)})
        start = end
    return _video_verdict(results, clean, objects)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def _judge_object(track: list, clean: list, frames: np.ndarray, window: tuple[int, int], clause,
                  scale: float, tolerances: Tolerances) -> dict:
    """One object over one segment: is its colour there, its shape and its motion right?"""
    colour, shape, motion = clause
    before, end = window
    seen = [(o, c) for o, c in zip(track[before:end], clean[before:end]) if o is not None and o["sized"]]
    found_shape = _majority([o["shape"] for o, c in seen if c] or [o["shape"] for o, _ in seen])
    motion_ok, frozen, travel = _judge_motion(track[before:end], frames[before:end], motion, end - 1 - before,
                                              frames.shape[2], scale, tolerances)
    result = {"colour": colour, "colour_ok": 2 * len(seen) >= end - before, "shape": found_shape,
              "shape_ok": found_shape == shape, "motion": motion, "motion_ok": motion_ok, "frozen": frozen,
              "travel": travel, "blocked": motion != "still" and frozen is None}
    result["ok"] = result["colour_ok"] and result["shape_ok"] and result["motion_ok"]
    return result


def _binding(judged: list[dict], clauses, tracks, frames, window, scale, tolerances) -> dict:
    """Shapes or motions swapped between the two objects of a segment (each shows the other's)."""
    if len(judged) != 2:
        return {"shape_swapped": False, "motion_swapped": False, "binding_error": False}
    (_, shape_a, motion_a), (_, shape_b, motion_b) = clauses
    shape_swapped = (shape_a != shape_b and judged[0]["shape"] == shape_b and judged[1]["shape"] == shape_a)
    motion_swapped = False
    if motion_a != motion_b and not (judged[0]["motion_ok"] and judged[1]["motion_ok"]):
        before, end = window
        motion_swapped = all(_judge_motion(track[before:end], frames[before:end], other, end - 1 - before,
                                           frames.shape[2], scale, tolerances)[0]
                             for track, other in zip(tracks, (motion_b, motion_a)))
    return {"shape_swapped": bool(shape_swapped), "motion_swapped": bool(motion_swapped),
            "binding_error": bool(shape_swapped or motion_swapped)}


def _video_verdict(results: list[dict], clean: list[bool], objects: list[tuple[str, str]]) -> dict:
    identity = [all(r["objects"][i]["colour_ok"] and r["objects"][i]["shape_ok"] for r in results)
                for i in range(len(objects))]
    moving = [o for r in results for o in r["objects"] if o["motion"] != "still" and o["frozen"] is not None]
    return {"objects": [list(o) for o in objects], "segments": results, "clean_frames": clean,
            "identity_per_object": identity, "identity_kept": all(identity),
            "all_ok": all(r["ok"] for r in results),
            "binding_error": any(r["binding_error"] for r in results),
            "frozen": bool(moving) and all(o["frozen"] for o in moving)}


# ----------------------------------------------------------------------------------------------
# over many videos


def _rate(flags: Sequence[bool]) -> dict | None:
    """Share of True with its 95% Wilson interval, or None without any trial."""
    flags = [bool(f) for f in flags]
    if not flags:
        return None
    return {"rate": float(np.mean(flags)), "interval": wilson_interval(sum(flags), len(flags)), "n": len(flags)}


def summarize_scenes(scores: Sequence[dict]) -> dict:
    """Rates (each {"rate", "interval" (95% Wilson), "n"}, None without trials) over score_scene results."""
    if not scores:
        raise ValueError("summarize_scenes needs at least one score_scene result")
    segments = [s for score in scores for s in score["segments"]]
    per_object = [o for s in segments for o in s["objects"]]
    pairs = [score for score in scores if len(score["objects"]) == 2]
    stories = [score for score in scores if len(score["segments"]) > 1]
    asked_motion = [score for score in scores
                    if any(o["motion"] != "still" and o["frozen"] is not None for s in score["segments"]
                           for o in s["objects"])]
    by_index: dict[int, list[bool]] = {}
    for s in segments:
        by_index.setdefault(s["index"], []).append(s["ok"])
    return {
        "videos": len(scores), "segments": len(segments),
        "video_accuracy": _rate([score["all_ok"] for score in scores]),
        "segment_accuracy": _rate([s["ok"] for s in segments]),
        "object_accuracy": _rate([o["ok"] for o in per_object]),
        "colour_accuracy": _rate([o["colour_ok"] for o in per_object]),
        "shape_accuracy": _rate([o["shape_ok"] for o in per_object]),
        "motion_accuracy": _rate([o["motion_ok"] for o in per_object]),
        "binding_error_rate": _rate([score["binding_error"] for score in pairs]),
        "shape_swap_rate": _rate([s["shape_swapped"] for score in pairs for s in score["segments"]]),
        "motion_swap_rate": _rate([s["motion_swapped"] for score in pairs for s in score["segments"]]),
        "identity_rate": _rate([kept for score in stories for kept in score["identity_per_object"]]),
        "story_identity_rate": _rate([score["identity_kept"] for score in stories]),
        "clean_frame_rate": _rate([flag for score in scores for flag in score["clean_frames"]]),
        "frozen_video_rate": _rate([score["frozen"] for score in asked_motion]),
        "blocked_rate": _rate([o["blocked"] for o in per_object if o["motion"] != "still"]),
        "accuracy_by_segment_index": {i: float(np.mean(v)) for i, v in sorted(by_index.items())},
    }


# ----------------------------------------------------------------------------------------------
# benchmark sets: lists of SceneSpec (ground truth layouts); a model is given spec.segments()

SEEN_PAIRS = allowed_pairs(VIDEO_COLOURS)  # the (colour, shape) pairs training videos show
HELD_OUT_PAIRS = sorted(set((c, s) for c in VIDEO_COLOURS for s in SHAPES) - set(SEEN_PAIRS))
ORANGE_PAIRS = [("orange", shape) for shape in SHAPES]
MOVES = MOTIONS[:4]


def _spread(items: list, count: int | None) -> list:
    """At most `count` items spread evenly over the list (all of them without a count)."""
    if count is None or count >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _single(rng, pair, motion, frames) -> SceneSpec:
    return layout_story(rng, [pair], [frames], motions=[(motion,)])


def single_set(count: int | None, seed: int, frames: int = 16) -> list[SceneSpec]:
    """(a) Every seen pair x motion as one prompt (85), or `count` of them spread over all."""
    rng = np.random.default_rng(seed)
    return [_single(rng, p, m, frames) for p, m in _spread([(p, m) for p in SEEN_PAIRS for m in MOTIONS], count)]


def pair_set(count: int, seed: int, frames: int = 16) -> list[SceneSpec]:
    """(b) Two seen objects; the ordered motion pairs (25) cycle, so `count` >= 25 covers every one."""
    rng = np.random.default_rng(seed)
    motion_pairs = [(a, b) for a in MOTIONS for b in MOTIONS]
    return [layout_story(rng, draw_pairs(rng, SEEN_PAIRS, 2), [frames], motions=[motion_pairs[i % 25]])
            for i in range(count)]


def _with_partner(rng, targets: list[tuple[str, str]], motions: Sequence[str], count: int, frames: int,
                  partner: bool) -> list[SceneSpec]:
    """Each target pair with each motion in turn, alone or next to a seen object of another colour
    (target first in even items, second in odd ones; the partner's motion is random)."""
    specs = []
    for i in range(count):
        target, motion = targets[i % len(targets)], motions[i // len(targets) % len(motions)]
        if not partner:
            specs.append(_single(rng, target, motion, frames))
            continue
        other = draw_pairs(rng, [p for p in SEEN_PAIRS if p[0] != target[0]], 1)[0]
        other_motion = MOTIONS[rng.integers(len(MOTIONS))]
        order = [(target, motion), (other, other_motion)][::1 if i % 2 == 0 else -1]
        specs.append(layout_story(rng, [p for p, _ in order], [frames], motions=[tuple(m for _, m in order)]))
    return specs


def held_out_set(count: int, seed: int, partner: bool = False, frames: int = 16) -> list[SceneSpec]:
    """(c) The held-out pairs with every motion (20 alone), alone or next to a seen object."""
    return _with_partner(np.random.default_rng(seed), HELD_OUT_PAIRS, MOTIONS, count, frames, partner)


def orange_set(count: int, seed: int, partner: bool = False, frames: int = 16) -> list[SceneSpec]:
    """(d) Orange shapes moving (orange is only ever still in training), alone or with a seen object."""
    return _with_partner(np.random.default_rng(seed), ORANGE_PAIRS, MOVES, count, frames, partner)


def scene_story_set(count: int, seed: int, min_segments: int = 2, max_segments: int = 4,
                    segment_frames: Sequence[int] = (8, 16)) -> list[SceneSpec]:
    """(e) Two seen objects through 2-4 segments; some object's motion changes at every switch."""
    rng = np.random.default_rng(seed)
    specs = []
    for _ in range(count):
        frames = [int(rng.choice(segment_frames)) for _ in range(int(rng.integers(min_segments, max_segments + 1)))]
        specs.append(layout_story(rng, draw_pairs(rng, SEEN_PAIRS, 2), frames, change_motion=True))
    return specs


def long_scene_set(count: int, seed: int, total_frames: int = 256, segment_frames: int = 16) -> list[SceneSpec]:
    """(f) Two-object stories of total_frames (+1 leading) in equal segments: drift over time."""
    if total_frames < segment_frames or total_frames % segment_frames:
        raise ValueError(f"total_frames must be a multiple of segment_frames={segment_frames}, got {total_frames}")
    segments = total_frames // segment_frames
    return scene_story_set(count, seed, segments, segments, (segment_frames,))


SET_LETTERS = {"single": "a", "pairs": "b", "held_out": "c", "held_out_pair": "c", "orange": "d",
               "orange_pair": "d", "stories": "e", "long": "f"}


def build_scene_sets(sizes: dict[str, int | None], seed: int, long_frames: int = 256) -> dict[str, list[SceneSpec]]:
    """The named sets (keys of SET_LETTERS) with sizes[name] items each; set k draws from seed + k."""
    makers = {"single": lambda n, s: single_set(n, s),
              "pairs": lambda n, s: pair_set(n, s),
              "held_out": lambda n, s: held_out_set(n, s),
              "held_out_pair": lambda n, s: held_out_set(n, s, partner=True),
              "orange": lambda n, s: orange_set(n, s),
              "orange_pair": lambda n, s: orange_set(n, s, partner=True),
              "stories": lambda n, s: scene_story_set(n, s),
              "long": lambda n, s: long_scene_set(n, s, long_frames)}
    unknown = set(sizes) - set(makers)
    if unknown:
        raise ValueError(f"unknown sets {sorted(unknown)}; choose from {list(makers)}")
    return {name: makers[name](sizes[name], seed + offset)
            for offset, name in enumerate(makers) if name in sizes}
