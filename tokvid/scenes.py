"""The shapes-v2 world ("scenes", DESIGN.md section 6): one or two objects, images and videos.

Everything of shapes-v1 (tokvid/shapes.py: frame size, palette, shapes, sizes, speed, walls,
segment unit, leading frame, drawing without antialiasing) holds, plus:

- one or two objects; two objects differ in colour; each has its own size, start and motions;
  their boxes stay at least GAP px apart in every frame (start positions and each segment's motions
  are drawn again until they do), so they never overlap;
- captions join one clause per object with " and ", in drawing order, article "an" before a vowel
  sound: "a red circle moves right and an orange square stays still"; an image caption has no
  motion: "a red circle and a blue square"; every segment of a story names the same objects;
- orange (250, 140, 20) appears only in still images; the pairs in HELD_OUT never appear at all.

An item is first drawn as a SceneSpec (objects, per-segment motions, sizes, starts: cheap), then
rendered. Item i of a dataset depends only on (seed, kind, i), so adding images keeps the videos.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tokvid.shapes import (COLOURS, FPS, FRAME_SIZE, MAX_SIDE, MIN_SIDE, MOTIONS, SEGMENT_UNIT, SHAPES,
                           _as_rng, draw_object, object_path)

IMAGE_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, "orange": (250, 140, 20)}
ALL_COLOURS = IMAGE_COLOURS  # every colour a scenes caption may name (orange only in images for training)
VIDEO_COLOURS = tuple(COLOURS)  # colours of training videos: the shapes-v1 palette
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("green", "square"), ("blue", "triangle"), ("yellow", "circle"), ("white", "square")})
MAX_OBJECTS = 2
GAP = 2  # px between the boxes of two objects in every frame of a training item
LAYOUT_TRIES = 200  # draws of sizes and starts before a layout is declared impossible
MOTION_TRIES = 50  # draws of one segment's motions before the item is drawn again

_VOWEL_SOUND = ("a", "e", "i", "o", "u")
_CLAUSE = re.compile(r"(a|an) (\w+) (\w+)(?: moves (\w+)| stays (still))?")

Clause = tuple[str, str, "str | None"]  # (colour, shape, motion or None for an image)


# ----------------------------------------------------------------------------------------------
# captions


def article(word: str) -> str:
    """'an' before a vowel sound (every colour name starting with a vowel letter is one), else 'a'."""
    return "an" if word[:1] in _VOWEL_SOUND else "a"


def clause(colour: str, shape: str, motion: str | None = None) -> str:
    """'a red circle moves right' / 'a red circle stays still' / 'an orange circle' (motion None)."""
    if colour not in ALL_COLOURS or shape not in SHAPES or (motion is not None and motion not in MOTIONS):
        raise ValueError(f"unknown colour/shape/motion {colour!r}/{shape!r}/{motion!r}; use one of "
                         f"{list(ALL_COLOURS)} / {list(SHAPES)} / {list(MOTIONS)} (or no motion for an image)")
    noun = f"{article(colour)} {colour} {shape}"
    if motion is None:
        return noun
    return f"{noun} stays still" if motion == "still" else f"{noun} moves {motion}"


def scene_caption(clauses: Sequence[Clause]) -> str:
    """One clause per object, joined by ' and ' (checked as parse_scene_caption would)."""
    text = " and ".join(clause(*c) for c in clauses)
    parse_scene_caption(text)
    return text


def parse_scene_caption(text: str) -> list[Clause]:
    """Inverse of scene_caption: [(colour, shape, motion or None), ...] for one or two objects.

    Case, extra spaces and a final '.' are ignored. ValueError (saying what to write) for a third
    object, an unknown colour, shape or motion, a wrong article, two objects of one colour, or a
    caption that gives a motion to one object but not the other."""
    normalised = " ".join(str(text).lower().split()).rstrip(".")
    if not normalised:
        raise ValueError("empty scenes caption; write e.g. 'a red circle moves right and a blue square stays still'")
    parts = normalised.split(" and ")
    if len(parts) > MAX_OBJECTS:
        raise ValueError(f"{text!r} names {len(parts)} objects; a scenes caption names one or two, "
                         "joined by ' and '")
    clauses = [_parse_clause(part, text) for part in parts]
    colours = [c[0] for c in clauses]
    if len(set(colours)) < len(colours):
        raise ValueError(f"{text!r} names two {colours[0]} objects; two objects must differ in colour")
    if len({c[2] is None for c in clauses}) > 1:
        raise ValueError(f"{text!r} gives a motion to one object only; give every object a motion "
                         "(a video) or none (an image)")
    return clauses


def _parse_clause(part: str, text: str) -> Clause:
    match = _CLAUSE.fullmatch(part)
    if not match:
        raise ValueError(f"{part!r} in {text!r} is not a scenes clause; write '{{a|an}} {{colour}} {{shape}}' "
                         "optionally followed by 'moves {left|right|up|down}' or 'stays still'")
    word, colour, shape, direction, still = match.groups()
    if colour not in ALL_COLOURS:
        raise ValueError(f"unknown colour {colour!r} in {text!r}; use one of {list(ALL_COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r} in {text!r}; use one of {list(SHAPES)}")
    if direction is not None and direction not in MOTIONS[:4]:
        raise ValueError(f"unknown direction {direction!r} in {text!r}; use one of {list(MOTIONS[:4])}")
    if word != article(colour):
        raise ValueError(f"write '{article(colour)} {colour}', not '{word} {colour}', in {text!r}")
    return colour, shape, still or direction


def check_scene_story(segments: Sequence[tuple[str, int]], unit: int = SEGMENT_UNIT) -> list[tuple[str, int]]:
    """Validate a scenes story: 1+ segments of video captions naming the same objects (colour and
    shape, same order) throughout, frames positive multiples of `unit` (1: any length, as a
    pipeline's strict check of a user's story needs)."""
    if not segments:
        raise ValueError("a story needs at least one (caption, frames) segment")
    checked, first = [], None
    for index, segment in enumerate(segments):
        if len(segment) != 2:
            raise ValueError(f"segment {index} must be a (caption, frames) pair, got {segment!r}")
        text, frames = segment
        clauses = parse_scene_caption(text)
        if clauses[0][2] is None:
            raise ValueError(f"segment {index} ({text!r}) has no motion; a video caption gives each object "
                             "'moves {direction}' or 'stays still'")
        objects = [c[:2] for c in clauses]
        first = objects if first is None else first
        if objects != first:
            raise ValueError(f"segment {index} names {objects}, segment 0 {first}; every segment of a story "
                             "names the same objects in the same order")
        if int(frames) != frames or frames < unit or frames % unit:
            raise ValueError(f"segment {index} has {frames!r} frames; use a positive multiple of {unit}")
        checked.append((text, int(frames)))
    return checked


# ----------------------------------------------------------------------------------------------
# item specs: what an item shows, without its pixels


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    side: int
    start: tuple[int, int]  # top-left (x, y) at frame 0


@dataclass(frozen=True)
class SceneSpec:
    """An item: objects in drawing order, and per segment one motion per object (no segments: an image)."""

    objects: tuple[SceneObject, ...]
    motions: tuple[tuple[str, ...], ...] = ()
    frames: tuple[int, ...] = ()

    @property
    def is_image(self) -> bool:
        return not self.frames

    @property
    def num_frames(self) -> int:
        return 1 + sum(self.frames) if self.frames else 1

    def captions(self) -> list[str]:
        """One caption per segment (an image: its one caption without motion)."""
        if self.is_image:
            return [scene_caption([(o.colour, o.shape, None) for o in self.objects])]
        return [scene_caption([(o.colour, o.shape, m) for o, m in zip(self.objects, motions)])
                for motions in self.motions]

    def segments(self) -> list[tuple[str, int]]:
        return list(zip(self.captions(), self.frames))

    def record(self) -> dict:
        """The manifest fields: {"caption"} for an image or a one-segment video, else {"story"}."""
        captions = self.captions()
        if len(captions) == 1:
            return {"caption": captions[0]}
        return {"story": [{"prompt": text, "frames": frames} for text, frames in zip(captions, self.frames)]}

    def positions(self) -> np.ndarray:
        """Top-left (x, y) of every object in every frame: int (objects, num_frames, 2)."""
        per_frame = [[m[i] for m, f in zip(self.motions, self.frames) for _ in range(f)]
                     for i in range(len(self.objects))]
        return np.stack([object_path(moves, o.side, o.start) for o, moves in zip(self.objects, per_frame)])


def boxes_apart(positions: np.ndarray, sides: Sequence[int], gap: int = GAP) -> bool:
    """True when the boxes of every pair of objects are >= gap px apart in every frame.
    positions: (objects, frames, 2) top-left (x, y)."""
    for a in range(len(sides)):
        for b in range(a + 1, len(sides)):
            low_a, low_b = positions[a], positions[b]
            overlap = ((low_a < low_b + sides[b] + gap) & (low_b < low_a + sides[a] + gap)).all(-1)
            if overlap.any():
                return False
    return True


def _draw_layout(rng: np.random.Generator, pairs: Sequence[tuple[str, str]],
                 sides: Sequence[int] | None = None) -> tuple[SceneObject, ...]:
    """Sizes and starts for the objects with their boxes apart at frame 0."""
    for _ in range(LAYOUT_TRIES):
        drawn = [int(rng.integers(MIN_SIDE, MAX_SIDE + 1)) for _ in pairs] if sides is None else list(sides)
        starts = [(int(rng.integers(0, FRAME_SIZE - s + 1)), int(rng.integers(0, FRAME_SIZE - s + 1)))
                  for s in drawn]
        if boxes_apart(np.array(starts)[:, None], drawn):
            return tuple(SceneObject(c, sh, s, st) for (c, sh), s, st in zip(pairs, drawn, starts))
    raise ValueError(f"could not place {list(pairs)} apart in {LAYOUT_TRIES} draws")


def _segment_path(objects: Sequence[SceneObject], ends: np.ndarray, motions: Sequence[str], frames: int) -> np.ndarray:
    """Positions of the objects over one segment's frames, continuing from `ends` (objects, 2)."""
    return np.stack([object_path([m] * frames, o.side, tuple(end))[1:]
                     for o, end, m in zip(objects, ends, motions)])


def layout_story(rng: np.random.Generator, pairs: Sequence[tuple[str, str]], frames: Sequence[int],
                 motions: Sequence[Sequence[str]] | None = None, motion_choices: Sequence[str] = MOTIONS,
                 change_motion: bool = False, tries: int = LAYOUT_TRIES) -> SceneSpec:
    """A SceneSpec whose objects stay GAP px apart in every frame.

    With `motions` given (one tuple per segment), only sizes and starts are drawn again until the
    story keeps them apart. Without, each segment's motions are drawn from motion_choices (again
    while they bring the objects too close; change_motion: some object's motion must change at
    every switch); a dead end draws the whole story again. ValueError if `tries` draws fail."""
    frames = tuple(int(f) for f in frames)
    for _ in range(tries):
        objects = _draw_layout(rng, pairs)
        ends = np.array([o.start for o in objects])
        chosen: list[tuple[str, ...]] = []
        for index, length in enumerate(frames):
            picked = _pick_motions(rng, objects, ends, length, None if motions is None else motions[index],
                                   motion_choices, chosen[-1] if change_motion and chosen else None)
            if picked is None:
                break
            segment_motions, path = picked
            chosen.append(segment_motions)
            ends = path[:, -1]
        if len(chosen) == len(frames):
            return SceneSpec(objects, tuple(chosen), frames)
    raise ValueError(f"could not keep {list(pairs)} apart over {len(frames)} segments in {tries} draws; "
                     "give them motions that do not drive them into each other")


def _pick_motions(rng, objects, ends, length, fixed, choices, previous):
    """(motions, path) of one segment whose objects stay apart, or None."""
    for _ in range(1 if fixed is not None else MOTION_TRIES):
        motions = tuple(fixed) if fixed is not None else tuple(str(choices[rng.integers(len(choices))])
                                                               for _ in objects)
        if previous is not None and motions == previous:
            continue
        path = _segment_path(objects, ends, motions, length)
        if boxes_apart(np.concatenate([ends[:, None], path], axis=1), [o.side for o in objects]):
            return motions, path
    return None


def render_spec(spec: SceneSpec) -> np.ndarray:
    """uint8 (num_frames, 64, 64, 3): objects drawn in order on black, without antialiasing."""
    video = np.zeros((spec.num_frames, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    for obj, positions in zip(spec.objects, spec.positions()):
        draw_object(video, positions, obj.shape, obj.side, IMAGE_COLOURS[obj.colour])
    return video


def render_scene_story(segments: Sequence[tuple[str, int]],
                       seed: int | np.random.Generator | None = 0) -> tuple[np.ndarray, SceneSpec]:
    """Ground truth of any scenes story (held-out pairs and moving orange included): sizes and starts
    from the seed, drawn again until the objects stay apart. Returns (frames, spec)."""
    segments = check_scene_story(segments)
    parsed = [parse_scene_caption(text) for text, _ in segments]
    pairs = [c[:2] for c in parsed[0]]
    spec = layout_story(_as_rng(seed), pairs, [f for _, f in segments],
                        motions=[tuple(c[2] for c in clauses) for clauses in parsed])
    return render_spec(spec), spec


# ----------------------------------------------------------------------------------------------
# the training world


@dataclass(frozen=True)
class SceneWorld:
    """The shares of the training world (docs/scenes.md says why these)."""

    two_object_video_share: float = 0.65  # videos with two objects (the rest: one)
    two_object_image_share: float = 0.5  # images with two objects
    max_segments: int = 4  # a video has 1..max_segments segments, uniformly
    segment_frames: tuple[int, ...] = (8, 16)

    def __post_init__(self):
        for name in ("two_object_video_share", "two_object_image_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {self.max_segments}")
        if not self.segment_frames or any(f < SEGMENT_UNIT or f % SEGMENT_UNIT for f in self.segment_frames):
            raise ValueError(f"segment_frames must be multiples of {SEGMENT_UNIT}, got {self.segment_frames!r}")


def allowed_pairs(colours: Sequence[str]) -> list[tuple[str, str]]:
    """Every (colour, shape) of these colours except the held-out pairs."""
    return [(c, s) for c in colours for s in SHAPES if (c, s) not in HELD_OUT]


def draw_pairs(rng: np.random.Generator, pairs: Sequence[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """`count` (colour, shape) pairs drawn uniformly from `pairs`, all of different colours."""
    chosen: list[tuple[str, str]] = []
    while len(chosen) < count:
        options = [p for p in pairs if p[0] not in {c for c, _ in chosen}]
        chosen.append(options[rng.integers(len(options))])
    return chosen


def video_spec(rng: np.random.Generator, world: SceneWorld = SceneWorld()) -> SceneSpec:
    """A training video: 1 or 2 objects of the video colours (no held-out pair), random motions."""
    count = 2 if rng.random() < world.two_object_video_share else 1
    pairs = draw_pairs(rng, allowed_pairs(VIDEO_COLOURS), count)
    num_segments = int(rng.integers(1, world.max_segments + 1))
    frames = [int(rng.choice(world.segment_frames)) for _ in range(num_segments)]
    return layout_story(rng, pairs, frames)


def image_spec(rng: np.random.Generator, world: SceneWorld = SceneWorld()) -> SceneSpec:
    """A training image: 1 or 2 objects of every colour, orange included (no held-out pair)."""
    count = 2 if rng.random() < world.two_object_image_share else 1
    return SceneSpec(_draw_layout(rng, draw_pairs(rng, allowed_pairs(list(IMAGE_COLOURS)), count)))


def item_spec(seed: int, kind: str, index: int, world: SceneWorld = SceneWorld()) -> SceneSpec:
    """Item `index` of `kind` ("video" or "image"): a pure function of (seed, kind, index)."""
    if kind not in ("video", "image"):
        raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    rng = np.random.default_rng([seed, 0 if kind == "video" else 1, index])
    return video_spec(rng, world) if kind == "video" else image_spec(rng, world)


def iter_scenes(num_videos: int, num_images: int, seed: int,
                world: SceneWorld = SceneWorld()) -> Iterator[tuple[str, SceneSpec]]:
    """(file name, spec) of the videos, then the images."""
    for index in range(num_videos):
        yield f"video_{index:05d}.mp4", item_spec(seed, "video", index, world)
    for index in range(num_images):
        yield f"image_{index:05d}.png", item_spec(seed, "image", index, world)


def write_scenes(out_dir: str | Path, num_videos: int, num_images: int, seed: int = 0,
                 world: SceneWorld = SceneWorld()) -> Path:
    """Write lossless video_XXXXX.mp4, image_XXXXX.png and manifest.jsonl; returns the manifest.

    Lines: {"path", "caption"} (images and one-segment videos) or {"path", "story": [...]}."""
    from PIL import Image

    from tokvid.video_io import write_video

    if num_videos < 0 or num_images < 0 or num_videos + num_images < 1:
        raise ValueError(f"need num_videos, num_images >= 0 and at least one item, got {num_videos}, {num_images}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, spec in iter_scenes(num_videos, num_images, seed, world):
        frames = render_spec(spec)
        if spec.is_image:
            Image.fromarray(frames[0]).save(out_dir / name)
        else:
            write_video(out_dir / name, frames, fps=FPS, quality="lossless")
        lines.append(json.dumps({"path": name, **spec.record()}))
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest
