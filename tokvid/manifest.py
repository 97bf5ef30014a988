"""Dataset manifests: one item per video, with a caption or a story.

JSONL lines: {"path": "clip.mp4", "caption": "..."} or
{"path": "clip.mp4", "story": [{"prompt": "...", "frames": 16}, ...]}.
CSV: a header with path and caption (or story, holding the JSON list as text).
Relative paths are resolved against the manifest's folder. Images are 1-frame videos.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from tokvid.video_io import TruncatedVideoError, read_video


def read_manifest(path: str | Path) -> list[dict]:
    """Items of a .jsonl (or .json lines) or .csv manifest, with absolute "path" strings."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist")
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    else:
        rows = _jsonl_rows(path)
    items = [_check_item(row, path, line) for line, row in rows]
    if not items:
        raise ValueError(f"manifest {path} has no items")
    return items


def _jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {line_number}: not valid JSON ({error.msg})") from None
        rows.append((line_number, row))
    return rows


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ValueError(f"{path}: the CSV header must name a 'path' column and 'caption' or 'story'")
        rows = []
        for row in reader:
            line_number = reader.line_num
            row = {key: value for key, value in row.items() if key is not None and value not in (None, "")}
            if "story" in row:
                try:
                    row["story"] = json.loads(row["story"])
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {line_number}: story is not valid JSON ({error.msg})") from None
            rows.append((line_number, row))
    return rows


def _check_item(row: object, manifest: Path, line: int) -> dict:
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


def check_manifest(path: str | Path, num_frames: int | None = None,
                   size: int | tuple[int, int] | None = None, exact_size: bool = False) -> dict:
    """Open every item and report problems: missing, truncated (the file ends before what its
    container promises: cut bytes, fewer frames or a shorter duration), corrupt, too short (fewer
    than num_frames; 1-frame images are counted as images, not as too short), wrong size and
    stories whose frame count is neither sum(frames) + 1 nor sum(frames).

    size (int: square, or (H, W)) is the smallest usable frame size: read_video can crop and shrink
    larger frames, but would have to blow up smaller ones. exact_size=True demands exactly size.
    The report has the lists, their "counts", "ok" items and "bad" (items with any problem)."""
    items = read_manifest(path)
    want_hw = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
    report = {"items": len(items), "ok": 0, "images": 0, "missing": [], "truncated": [], "corrupt": [],
              "too_short": [], "wrong_size": [], "story_mismatch": []}
    for item in items:
        video_path = Path(item["path"])
        if not video_path.exists():
            report["missing"].append(item["path"])
            continue
        try:
            frames = read_video(video_path)
        except TruncatedVideoError as error:
            report["truncated"].append([item["path"], str(error)])
            continue
        except ValueError as error:
            report["corrupt"].append([item["path"], str(error)])
            continue
        count, height_width = len(frames), tuple(frames.shape[1:3])
        problems = 0
        if count == 1:
            report["images"] += 1
        elif num_frames is not None and count < num_frames:
            report["too_short"].append([item["path"], count])
            problems += 1
        if want_hw is not None and (height_width != want_hw if exact_size else
                                    (height_width[0] < want_hw[0] or height_width[1] < want_hw[1])):
            report["wrong_size"].append([item["path"], list(height_width)])
            problems += 1
        if "story" in item:
            total = sum(segment["frames"] for segment in item["story"])
            if count not in (total, total + 1):
                report["story_mismatch"].append([item["path"], count, total + 1])
                problems += 1
        report["ok"] += problems == 0
    report["counts"] = {key: len(report[key]) for key in
                        ("missing", "truncated", "corrupt", "too_short", "wrong_size", "story_mismatch")}
    report["bad"] = report["items"] - report["ok"]
    return report


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
