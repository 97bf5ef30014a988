"""Dataset manifests: one item per video, with a caption or a story.

JSONL lines: {"path": "clip.mp4", "caption": "..."} or
{"path": "clip.mp4", "story": [{"prompt": "...", "frames": 16}, ...]}.
CSV: a header with path and caption (or story, holding the JSON list as text).
Relative paths are resolved against the manifest's folder. Images are 1-frame videos.
"""
from __future__ import annotations

import csv
import json
from array import array
from collections import OrderedDict
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from tokvid.fastjson import JSONDecodeError, loads
from tokvid.video_io import TruncatedVideoError, read_video

# A row: (line number, byte offset of its first line, its fields before checks)
Row = tuple[int, int, object]


def read_manifest(path: str | Path) -> list[dict]:
    """Items of a .jsonl (or .json lines) or .csv manifest, with absolute "path" strings."""
    path = _existing(path)
    items = [_check_item(row, path, line) for line, _, row in _rows(path)]
    if not items:
        raise ValueError(f"manifest {path} has no items")
    return items


def iter_manifest(path: str | Path) -> Iterator[dict]:
    """The items of a manifest one at a time, checked like read_manifest's, in bounded memory."""
    path = _existing(path)
    return (_check_item(row, path, line) for line, _, row in _rows(path))


class ManifestIndex:
    """A manifest's items by position, read on demand: holds two integers per item (byte offset and
    line number), so a manifest of millions of lines costs megabytes, not gigabytes. Every line is
    checked once when the index is built."""

    def __init__(self, path: str | Path):
        self.path = _existing(path)
        self.offsets, self.lines = array("q"), array("q")
        for line, offset, row in _rows(self.path):
            _check_fields(row, self.path, line)
            self.offsets.append(offset)
            self.lines.append(line)
        if not self.offsets:
            raise ValueError(f"manifest {self.path} has no items")
        self.fieldnames = _csv_header(self.path) if _is_csv(self.path) else None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} is outside the {len(self)} items of {self.path}")
        with self.path.open("rb") as handle:
            handle.seek(self.offsets[i])
            if self.fieldnames is None:
                row = _parse_json_line(handle.readline(), self.path, self.lines[i])
            else:
                row = _csv_row(self.fieldnames, next(csv.reader(_decoded(handle))), self.path, self.lines[i])
        return _check_item(row, self.path, self.lines[i])

    def __iter__(self) -> Iterator[dict]:
        return iter_manifest(self.path)

    def __getstate__(self) -> dict:  # ship the offsets to worker processes as compact arrays
        return {**self.__dict__, "offsets": np.asarray(self.offsets), "lines": np.asarray(self.lines)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.offsets, self.lines = array("q", state["offsets"].tobytes()), array("q", state["lines"].tobytes())


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist")
    return path


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _rows(path: Path) -> Iterator[Row]:
    with path.open("rb") as handle:
        yield from (_csv_rows(path, handle) if _is_csv(path) else _jsonl_rows(path, handle))


def _jsonl_rows(path: Path, handle: IO[bytes]) -> Iterator[Row]:
    offset = 0
    for line_number, line in enumerate(handle, start=1):
        if line.strip():
            yield line_number, offset, _parse_json_line(line, path, line_number)
        offset += len(line)


def _parse_json_line(line: bytes, path: Path, line_number: int) -> object:
    try:
        return loads(line)
    except (JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} line {line_number}: not valid JSON ({getattr(error, 'msg', error)})") from None


def _decoded(handle: IO[bytes], position: list[int] | None = None) -> Iterator[str]:
    """Text lines of a binary file for csv.reader, counting (byte offset, line number) in `position`."""
    for raw in handle:
        if position is not None:
            position[0] += len(raw)
            position[1] += 1
        yield raw.decode("utf-8")


def _csv_header(path: Path) -> list[str]:
    with path.open("rb") as handle:
        header = next(csv.reader(_decoded(handle)), None)
    if not header or "path" not in header:
        raise ValueError(f"{path}: the CSV header must name a 'path' column and 'caption' or 'story'")
    return header


def _csv_rows(path: Path, handle: IO[bytes]) -> Iterator[Row]:
    fieldnames = _csv_header(path)
    position = [0, 0]  # csv.reader pulls lines only as a record needs them: the offset before a record is its start
    reader = csv.reader(_decoded(handle, position))
    next(reader)
    while True:
        start = position[0]
        values = next(reader, None)
        if values is None:
            return
        if values:
            yield position[1], start, _csv_row(fieldnames, values, path, position[1])


def _csv_row(fieldnames: list[str], values: list[str], path: Path, line_number: int) -> dict:
    row = {key: value for key, value in zip(fieldnames, values) if value != ""}
    if "story" in row:
        try:
            row["story"] = json.loads(row["story"])
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {line_number}: story is not valid JSON ({error.msg})") from None
    return row


def _check_fields(row: object, manifest: Path, line: int) -> None:
    where = f"{manifest} line {line}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("path"), str) or not row["path"]:
        raise ValueError(f"{where}: missing 'path' (the video file, relative to the manifest)")
    has_caption, has_story = "caption" in row, "story" in row
    if has_caption == has_story:
        raise ValueError(f"{where}: give exactly one of 'caption' or 'story'")
    if has_caption and (not isinstance(row["caption"], str) or not row["caption"].strip()):
        raise ValueError(f"{where}: 'caption' must be a non-empty string")
    if has_story:
        story = row["story"]
        if not isinstance(story, list) or not story:
            raise ValueError(f"{where}: 'story' must be a non-empty list of {{\"prompt\", \"frames\"}}")
        for index, segment in enumerate(story):
            if (not isinstance(segment, dict) or not isinstance(segment.get("prompt"), str)
                    or not segment["prompt"].strip() or not isinstance(segment.get("frames"), int)
                    or isinstance(segment["frames"], bool) or segment["frames"] < 1):
                raise ValueError(f"{where}: story segment {index} needs a non-empty 'prompt' "
                                 f"and an integer 'frames' >= 1, got {segment!r}")


def _check_item(row: object, manifest: Path, line: int) -> dict:
    _check_fields(row, manifest, line)
    item = dict(row)
    item["path"] = str((manifest.parent / row["path"]).resolve())
    return item


def item_segments(item: dict, num_frames: int | None = None) -> list[tuple[str, int]]:
    """[(prompt, frames), ...] of an item. Frames count after the leading frame, so a captioned
    clip of T frames is [(caption, T - 1)] (an image: [(caption, 0)]). T comes from num_frames or
    the item's "num_frames"."""
    if "story" in item:
        return [(segment["prompt"], int(segment["frames"])) for segment in item["story"]]
    if "caption" not in item:
        raise ValueError(f"item {item.get('path', item)!r} has neither 'caption' nor 'story'")
    total = num_frames if num_frames is not None else item.get("num_frames")
    if total is None or int(total) < 1:
        raise ValueError(f"item {item.get('path')!r}: pass num_frames (the clip's frame count) "
                         "to split a captioned clip into segments")
    return [(item["caption"], int(total) - 1)]


PROBLEMS = ("missing", "truncated", "corrupt", "too_short", "wrong_size", "story_mismatch")


def check_manifest(path: str | Path, num_frames: int | None = None,
                   size: int | tuple[int, int] | None = None, exact_size: bool = False,
                   max_listed: int = 1000, progress: bool = False) -> dict:
    """Open every item and report problems: missing, truncated (the file ends before what its
    container promises: cut bytes, fewer frames or a shorter duration), corrupt, too short (fewer
    than num_frames; 1-frame images are counted as images, not as too short), wrong size and stories
    whose frame count is neither sum(frames) + 1 nor sum(frames).

    size (int: square, or (H, W)) is the smallest usable frame size: read_video can crop and shrink
    larger frames, but would have to blow up smaller ones. exact_size=True demands exactly size.
    The report has the first max_listed items of each problem, the full "counts", "ok" items and
    "bad" (items with any problem). Items are streamed, so memory stays bounded for any manifest
    length; a file listed on consecutive lines (several captions) is opened once."""
    want_hw = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
    report = {"items": 0, "ok": 0, "images": 0, **{key: [] for key in PROBLEMS}}
    counts = dict.fromkeys(PROBLEMS, 0)
    probes: OrderedDict[str, tuple] = OrderedDict()
    items = iter_manifest(path)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, desc="check", unit="item")
    for item in items:
        report["items"] += 1
        if item["path"] not in probes:
            probes[item["path"]] = _probe(Path(item["path"]))
            if len(probes) > 256:
                probes.popitem(last=False)
        found = _item_problems(item, probes[item["path"]], num_frames, want_hw, exact_size)
        report["images"] += found.pop("image", False)
        for key, entry in found.items():
            counts[key] += 1
            if len(report[key]) < max_listed:
                report[key].append(entry)
        report["ok"] += not found
    if not report["items"]:
        raise ValueError(f"manifest {path} has no items")
    report["counts"] = counts
    report["bad"] = report["items"] - report["ok"]
    return report


def _probe(video_path: Path) -> tuple:
    """("missing",) / ("truncated", reason) / ("corrupt", reason) / ("ok", frame count, (height, width))."""
    if not video_path.exists():
        return ("missing",)
    try:
        frames = read_video(video_path)
    except TruncatedVideoError as error:
        return ("truncated", str(error))
    except ValueError as error:
        return ("corrupt", str(error))
    return ("ok", len(frames), tuple(frames.shape[1:3]))


def _item_problems(item: dict, probe: tuple, num_frames: int | None, want_hw: tuple | None,
                   exact_size: bool) -> dict:
    """{problem: report entry} of one item (plus "image": True for a 1-frame item)."""
    if probe[0] == "missing":
        return {"missing": item["path"]}
    if probe[0] in ("truncated", "corrupt"):
        return {probe[0]: [item["path"], probe[1]]}
    _, count, height_width = probe
    found = {}
    if count == 1:
        found["image"] = True
    elif num_frames is not None and count < num_frames:
        found["too_short"] = [item["path"], count]
    if want_hw is not None and (height_width != want_hw if exact_size else
                                (height_width[0] < want_hw[0] or height_width[1] < want_hw[1])):
        found["wrong_size"] = [item["path"], list(height_width)]
    if "story" in item:
        total = sum(segment["frames"] for segment in item["story"])
        if count not in (total, total + 1):
            found["story_mismatch"] = [item["path"], count, total + 1]
    return found


def format_report(report: dict, max_listed: int = 10) -> str:
    """Human-readable summary of a check_manifest report (first max_listed items per problem)."""
    lines = [f"{report['items']} items: {report['ok']} ok, {report['bad']} with problems, "
             f"{report['images']} images"]
    for key, count in report["counts"].items():
        if not count:
            continue
        lines.append(f"{key.replace('_', ' ')}: {count}")
        for entry in report[key][:max_listed]:
            lines.append("  " + (entry if isinstance(entry, str) else " ".join(str(v) for v in entry)))
        if count > max_listed:
            lines.append(f"  ... and {count - max_listed} more")
    return "\n".join(lines)
