"""Stories: a list of (prompt, frames) segments, and which prompt governs each latent chunk.

A story video has one leading frame (frame 0, coded alone by the causal tokenizer) followed by the
segments' frames. Latent chunk 0 is frame 0; chunk j >= 1 holds frames (j-1)*tc+1 .. j*tc, and is
governed by the segment that owns its last frame.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

MAX_STORY_FRAMES = 100_000  # ~3.5 hours at 8 fps: anything larger is a typo, not a request

Segment = tuple[str, int]


def validate_segments(segments) -> list[Segment]:
    """Check a story and return it as a list of (prompt, frames) tuples; ValueError says what is wrong."""
    if isinstance(segments, (str, bytes)) or not hasattr(segments, "__iter__"):
        raise ValueError("a story is a list of (prompt, frames) pairs, e.g. [('a red circle moves right', 16)]")
    checked = []
    for index, segment in enumerate(segments):
        if isinstance(segment, dict):
            if set(segment) != {"prompt", "frames"}:
                raise ValueError(f"story segment {index} has the keys {sorted(segment)}; a segment is "
                                 '{"prompt": "...", "frames": 16} (unknown: '
                                 f"{sorted(set(segment) - {'prompt', 'frames'})}, missing: "
                                 f"{sorted({'prompt', 'frames'} - set(segment))})")
            segment = (segment["prompt"], segment["frames"])
        try:
            prompt, frames = segment
        except (TypeError, ValueError):
            raise ValueError(f"story segment {index} must be a (prompt, frames) pair, got {segment!r}") from None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"story segment {index} has an empty prompt; describe what happens in it")
        if isinstance(frames, bool) or not isinstance(frames, int):
            raise ValueError(f"story segment {index} needs a whole number of frames, got {frames!r}")
        if frames < 1:
            raise ValueError(f"story segment {index} asks for {frames} frames; give at least 1")
        checked.append((prompt.strip(), frames))
    if not checked:
        raise ValueError("the story is empty; give at least one (prompt, frames) segment")
    total = sum(frames for _, frames in checked)
    if total > MAX_STORY_FRAMES:
        raise ValueError(f"the story asks for {total} frames; the limit is {MAX_STORY_FRAMES} a video (about "
                         "3.5 hours at 8 fps): make several videos, continuing each from the last "
                         "(prime_frames / --prime)")
    return checked


def chunk_segments(frames_per_segment: list[int], temporal_compression: int) -> list[int]:
    """Index of the governing segment for every latent chunk of a story (leading frame included)."""
    if temporal_compression < 1 or not frames_per_segment or min(frames_per_segment) < 1:
        raise ValueError("need temporal_compression >= 1 and positive segment lengths")
    ends, total = [], 0
    for frames in frames_per_segment:
        total += frames
        ends.append(total)
    num_chunks = 1 + -(-total // temporal_compression)
    owners = [0]
    for chunk in range(1, num_chunks):
        last_frame = min(chunk * temporal_compression, total)
        owners.append(next(i for i, end in enumerate(ends) if last_frame <= end))
    return owners


def num_chunks_for_frames(num_frames: int, temporal_compression: int) -> int:
    """Latent chunks needed so that the decoded video has at least num_frames frames."""
    return 1 + -(-(max(num_frames, 1) - 1) // temporal_compression)


def parse_story_string(text: str, fps: float) -> list[Segment]:
    """'a red circle moves right : 2s ; a red circle moves down : 16f' -> [(prompt, frames), ...]."""
    segments = []
    for index, part in enumerate(p for p in text.split(";") if p.strip()):
        prompt, sep, length = part.rpartition(":")
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([sf]?)\s*", length)
        if not sep or not match:
            raise ValueError(f"story part {index + 1} ({part.strip()!r}) must look like 'prompt : 2s' or 'prompt : 16f'")
        value, unit = float(match.group(1)), match.group(2) or "f"
        frames = round(value * fps) if unit == "s" else value
        if unit == "f" and value != int(value):
            raise ValueError(f"story part {index + 1}: frame counts must be whole numbers, got {value}")
        segments.append((prompt.strip(), int(frames)))
    return validate_segments(segments)


def load_story_file(path: str | Path) -> list[Segment]:
    """A JSON list of {"prompt": ..., "frames": ...} objects."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"story file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"story file {path} is not valid JSON: {error}") from None
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ValueError(f'story file {path} must hold a JSON list like [{{"prompt": "...", "frames": 16}}]')
    return validate_segments(raw)
