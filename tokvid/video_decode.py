"""Decoding video containers with PyAV: what a file promises, windows by seeking, honest ends.

read_video (video_io.py) calls read_container. Three things happen here:

* What the container declares is read once per file version and cached: frame rate, the frame
  count (MP4/MOV/AVI) or duration (Matroska/WebM) it promises, whether its bytes are cut
  (container_bytes.py) and, only when a window is asked for, the presentation timestamps of all
  frames, from one pass over the packets without decoding them.
* A window (start_frame > 0) seeks to the nearest keyframe at or before its first frame and
  decodes only up to its last frame. The timestamp table turns frame indices (after fps
  resampling) into timestamps; every frame decoded after a seek must be the next entry of the
  table, or the read starts over from the first frame, so a window is always exactly the slice
  of the whole video.
* When a read reaches the end of the stream, what was decoded is compared with what the
  container promised; a file that ends early raises TruncatedVideoError (or, with
  allow_partial, warns and keeps what was readable).
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import av
import numpy as np

from .container_bytes import truncation_in_bytes

# A folder of images has no timing of its own; this is the frame rate we assume for it.
FOLDER_FPS = 8.0
# Timestamps in containers are rounded to their time base; this slack (seconds) absorbs that.
TIME_SLACK = 1e-3
# A decoded frame whose pixels are only converted to RGB if it is actually kept.
TimedFrame = tuple[float, Callable[[], np.ndarray]]
# Formats without a seek index worth using: decoding from the start is as fast.
UNSEEKABLE_FORMATS = ("gif",)


def decode_threads() -> int:
    """Threads FFmpeg decodes a video with: the process's thread budget (torch's when it is loaded, which
    --threads, OMP_NUM_THREADS and loader workers set; else OMP_NUM_THREADS; else 0, FFmpeg's choice of
    one per core). N encoding ranks or loader workers of 1 thread each then do not start a decoder
    thread per core each; decoded frames are the same whatever the count."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return int(budget) if budget.isdigit() else 0


def _threaded(stream) -> None:
    stream.thread_type = "AUTO"
    stream.thread_count = decode_threads()
# Cached container facts: at most this many files and timestamps (8 bytes each) in all.
INFO_CACHE_FILES = 1024
INFO_CACHE_TIMESTAMPS = 4_000_000


class TruncatedVideoError(ValueError):
    """The file ends before what its container promises (its bytes, frame count or duration)."""


class TruncatedVideoWarning(UserWarning):
    """read_video(..., allow_partial=True) returned the frames of a truncated or damaged file."""


def resample_by_time(timed: Iterable[tuple[float, object]], fps: float,
                     last_frame_seconds: float) -> Iterator[tuple[float, object]]:
    """Output tick k (time t0 + k/fps) shows the latest source frame that started by then."""
    tick = 0
    first_time = previous = None
    for seconds, payload in timed:
        if previous is None:
            first_time = seconds
        else:
            while first_time + tick / fps < seconds - TIME_SLACK:
                yield previous
                tick += 1
        previous = (seconds, payload)
    if previous is not None:
        video_end = previous[0] + last_frame_seconds
        while first_time + tick / fps < video_end - TIME_SLACK:
            yield previous
            tick += 1


def collect_window(timed: Iterable[TimedFrame], start: int, count: int | None,
                   convert: Callable[[np.ndarray], np.ndarray]) -> tuple[list[np.ndarray], bool]:
    """Frames start..start+count-1 of a stream, and whether the stream was read to its end."""
    frames = []
    try:
        for index, (_, pixels) in enumerate(timed):
            if index < start:
                continue
            frames.append(convert(pixels()))
            if count is not None and len(frames) == count:
                return frames, False
    finally:
        getattr(timed, "close", lambda: None)()  # stopping early: close the container now, not at GC
    return frames, True


def reason(error: Exception) -> str:
    """FFmpeg's message without its errno prefix and file name."""
    text = getattr(error, "strerror", None) or str(error)
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).split(":")[0].strip() or type(error).__name__


def frame_seconds(pts: int, time_base: Fraction) -> float:
    """The same float PyAV's frame.time gives, so tables and decoded frames agree to the bit."""
    return float(pts) * time_base.numerator / time_base.denominator


# ----------------------------------------------------------------------------------------------
# what a container declares (cached per file version)


@dataclass
class ContainerInfo:
    path: Path
    fps: float
    time_base: Fraction
    declared_frames: int  # 0: the container does not say
    declared_seconds: float | None  # Matroska/WebM: the duration its header promises
    truncation: str | None  # how the bytes are cut (container_bytes), or None
    whole_frames: int | None  # of a cut file, the frames that arrived complete, where the bytes tell
    seekable: bool
    times: np.ndarray | None = None  # pts of all frames in presentation order; None: unknown
    times_known: bool = False  # the demux pass ran (times may still be None: unusable)
    ticks: dict = field(default_factory=dict)  # fps -> source frame index of each output frame
    decoded_counts: dict = field(default_factory=dict)  # fps -> frames, where only decoding could tell

    def promise(self) -> str:
        if self.declared_frames:
            return f"the container promises {self.declared_frames} frames"
        if self.declared_seconds:
            return f"the container promises {self.declared_seconds:.3f} s"
        return ""

    def presentation_times(self) -> np.ndarray | None:
        if not self.times_known:
            self.times, self.times_known = _presentation_times(self.path), True
            if self.times is not None and self.declared_frames and len(self.times) != self.declared_frames:
                self.times = None  # packets and frames disagree (or the file is cut): frame i is not packet i
            _INFO_CACHE.note_size()
        return self.times

    def tick_sources(self, fps: float | None) -> np.ndarray | None:
        """Source frame index of every frame read_video returns (after resampling to fps)."""
        times = self.presentation_times()
        if times is None:
            return None
        if fps not in self.ticks:
            if fps is None:
                self.ticks[fps] = np.arange(len(times))
            else:
                timed = ((frame_seconds(pts, self.time_base), index) for index, pts in enumerate(times))
                ticks = [index for _, index in resample_by_time(timed, fps, 1.0 / self.fps)]
                self.ticks[fps] = np.asarray(ticks, np.int64)
        return self.ticks[fps]


class _InfoCache:
    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, ContainerInfo] = OrderedDict()

    def get(self, path: Path) -> ContainerInfo:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        info = _open_info(path)
        self.entries[key] = info
        self.note_size()
        return info

    def note_size(self) -> None:
        def timestamps() -> int:
            return sum(len(i.times) + sum(len(t) for t in i.ticks.values())
                       for i in self.entries.values() if i.times is not None)
        while len(self.entries) > 1 and (len(self.entries) > INFO_CACHE_FILES
                                         or timestamps() > INFO_CACHE_TIMESTAMPS):
            self.entries.popitem(last=False)


_INFO_CACHE = _InfoCache()


def container_info(path: Path) -> ContainerInfo:
    """What the container at path declares; raises ValueError if it cannot be opened."""
    return _INFO_CACHE.get(path)


def _open_info(path: Path) -> ContainerInfo:
    cut = truncation_in_bytes(path)
    truncation, whole_frames = (cut.reason, cut.whole_frames) if cut else (None, None)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"cannot read video {path}: the file has no video stream")
            stream = container.streams.video[0]
            rate = stream.guessed_rate or stream.average_rate or stream.base_rate
            format_name = container.format.name
            promises = "gif" not in format_name  # FFmpeg counts a GIF's frames by reading it: no promise
            return ContainerInfo(
                path=path, fps=float(rate) if rate else FOLDER_FPS, time_base=stream.time_base or Fraction(1),
                declared_frames=int(stream.frames or 0) if promises else 0,
                declared_seconds=_matroska_duration(container, stream) if "matroska" in format_name else None,
                truncation=truncation, whole_frames=whole_frames,
                seekable=not any(name in format_name for name in UNSEEKABLE_FORMATS))
    except ValueError as error:
        if not isinstance(error, av.FFmpegError):
            raise
        failure = reason(error)
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        failure = reason(error)
    if truncation:
        raise TruncatedVideoError(f"cannot read video {path}: the file is truncated ({truncation}) "
                                  f"and cannot be opened ({failure})")
    raise ValueError(f"cannot read video {path}: {failure}")


def _matroska_duration(container, stream) -> float | None:
    """The track's DURATION tag, else the segment's duration when the video is the only track."""
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", tag.strip()) if tag else None
    if match:
        return int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
    if len(container.streams) == 1 and container.duration:
        return container.duration / av.time_base
    return None


def _presentation_times(path: Path) -> np.ndarray | None:
    """pts of every frame, sorted, from the packets alone; None if they cannot index frames
    (missing or repeated timestamps, or a stream that does not start at a keyframe)."""
    times = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # flush packets; edit-list cuts decode to nothing
                    continue
                if packet.pts is None or (not times and not packet.is_keyframe):
                    return None
                times.append(packet.pts)
    except (av.FFmpegError, OSError):
        pass  # a damaged tail: the frames before it still index; reading them reports the damage
    table = np.sort(np.asarray(times, np.int64))
    if not len(table) or np.any(np.diff(table) == 0):
        return None
    return table


# ----------------------------------------------------------------------------------------------
# reading


@dataclass
class _Ending:
    """How a pass over the stream ended, for the completeness verdict."""
    reached_end: bool = False
    decoded: int = 0  # frames decoded up to the end (the index of the last one + 1)
    end_seconds: float | None = None  # when the last decoded frame stops showing
    error: str | None = None


class _SeekMismatch(Exception):
    """After a seek, decoding did not follow the timestamp table: read from the start instead."""


def read_container(path: Path, start: int, count: int | None, fps: float | None,
                   convert: Callable[[np.ndarray], np.ndarray], allow_partial: bool) -> list[np.ndarray]:
    """Frames start..start+count-1 (after resampling to fps) of a video container, converted."""
    info = container_info(path)
    frames, ending = None, _Ending()
    if start > 0 and info.seekable:
        try:
            frames, ending = _read_by_seeking(info, start, count, fps, convert)
        except _SeekMismatch:
            info.seekable = False  # this file's packets do not index its frames: never seek in it again
    if frames is None:
        ending = _Ending()
        timed = _frames_from_start(info, ending)
        if fps is not None:
            timed = resample_by_time(timed, fps, last_frame_seconds=1.0 / info.fps)
        frames, _ = collect_window(timed, start, count, convert)
    _verdict(info, ending, len(frames), allow_partial)
    return frames


def _frames_from_start(info: ContainerInfo, ending: _Ending) -> Iterator[TimedFrame]:
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        _threaded(stream)
        for _, frame in _decode(container, stream, ending):
            if ending.decoded == info.whole_frames:
                break  # FFmpeg decodes a GIF's cut last image too; it is not a frame of the file
            seconds = frame.time if frame.time is not None else ending.decoded / info.fps
            ending.decoded += 1
            yield seconds, (lambda f=frame: f.to_ndarray(format="rgb24"))
        ending.reached_end = True


def _decode(container, stream, ending: _Ending) -> Iterator[tuple[int, av.VideoFrame]]:
    """(pts, frame) in presentation order. At undecodable data, or a packet the demuxer marks as
    damaged (a cut one), it notes why and stops, keeping the frames the decoder already holds
    (with B-frames the last good ones are still buffered; frame threading would drop them).
    The damage and the end count only once those are all taken: a window found among them reads as
    one found before the damage, as it does with fewer decoder threads (which hold fewer frames)."""
    error = None
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                error = "a damaged packet"
                break
            for frame in packet.decode():
                ending.end_seconds = _frame_end(frame, stream)
                yield frame.pts, frame
        else:
            return
    except (av.FFmpegError, OSError) as failure:
        error = reason(failure)
    try:
        held = stream.codec_context.decode(None)
    except (av.FFmpegError, OSError):
        held = []
    for frame in held:
        ending.end_seconds = _frame_end(frame, stream)
        yield frame.pts, frame
    ending.error, ending.reached_end = error, True


def _frame_end(frame: av.VideoFrame, stream) -> float | None:
    if frame.time is None:
        return None
    duration = frame.duration or 0
    if duration > 0 and frame.time_base:
        return frame.time + float(duration * frame.time_base)
    rate = stream.guessed_rate or stream.average_rate
    return frame.time + (1.0 / float(rate) if rate else 0.0)


def _read_by_seeking(info: ContainerInfo, start: int, count: int | None, fps: float | None,
                     convert: Callable[[np.ndarray], np.ndarray]) -> tuple[list | None, _Ending]:
    ticks = info.tick_sources(fps)
    ending = _Ending()
    if ticks is None:
        return None, ending
    if start >= len(ticks):
        return [], ending  # past the end: nothing to decode (the verdict still sees cut bytes)
    window = ticks[start:] if count is None else ticks[start:start + count]
    first, last = int(window[0]), int(window[-1])
    to_the_end = last == len(info.times) - 1  # decode on to the stream's end to judge how it ends
    needed = set(window.tolist())
    pixels: dict[int, np.ndarray] = {}
    with av.open(str(info.path)) as container:
        stream = container.streams.video[0]
        _threaded(stream)
        frames = _seek_before(container, stream, info, first, ending)
        if frames is None:
            return None, ending
        for index, frame in frames:
            if index in needed:
                pixels[index] = convert(frame.to_ndarray(format="rgb24"))
            ending.decoded = index + 1
            if index >= last and not to_the_end:
                break
        else:
            ending.reached_end = True
    return [pixels[int(index)] for index in window if int(index) in pixels], ending


def _seek_before(container, stream, info: ContainerInfo, first: int,
                 ending: _Ending) -> Iterator[tuple[int, av.VideoFrame]] | None:
    """Frames (index, frame) decoded from a keyframe at or before frame `first`.

    The seek goes to the keyframe before first's timestamp; formats that seek by decoding
    timestamps (MP4 with B-frames) can land on the next keyframe, so the target steps back
    1, 2, 4, ... frames until the first frame decoded is a keyframe at or before `first`.
    None: only decoding from the very start would do.
    """
    times = info.times
    back = 0
    while first - back > 0:
        container.seek(int(times[first - back]), stream=stream, backward=True, any_frame=False)
        decoded = _decode(container, stream, ending)
        pts, frame = next(decoded, (None, None))
        landed = _table_index(times, pts)
        if frame is not None and frame.key_frame and landed is not None and landed <= first:
            return _follow_table(times, landed, frame, decoded)
        back = max(1, 2 * back)
        ending.error = ending.end_seconds = None
        ending.reached_end = False
    return None


def _follow_table(times: np.ndarray, landed: int, frame: av.VideoFrame,
                  decoded: Iterator[tuple[int, av.VideoFrame]]) -> Iterator[tuple[int, av.VideoFrame]]:
    yield landed, frame
    expected = landed + 1
    for pts, frame in decoded:
        if _table_index(times, pts) != expected:
            raise _SeekMismatch
        yield expected, frame
        expected += 1


def _table_index(times: np.ndarray, pts: int | None) -> int | None:
    if pts is None:
        return None
    index = int(np.searchsorted(times, pts))
    return index if index < len(times) and times[index] == pts else None


# ----------------------------------------------------------------------------------------------
# the verdict: did the file end where it promised?


def _verdict(info: ContainerInfo, ending: _Ending, returned: int, allow_partial: bool) -> None:
    cut = [info.truncation] if info.truncation else []
    shortfall = _shortfall(info, ending) if ending.reached_end else None
    if shortfall:
        cut.append(shortfall)
    elif cut:
        cut += [info.promise()] if info.promise() else []
        cut += [f"{ending.decoded} frames could be decoded"] if ending.reached_end else []
    if cut:
        problem = f"the file is truncated ({'; '.join(cut)})"
    elif ending.error:
        problem = f"undecodable data after {ending.decoded} frames ({ending.error})"
    elif ending.reached_end and ending.decoded == 0:
        raise ValueError(f"cannot read video {info.path}: no frame could be decoded")
    else:
        return
    if allow_partial and returned:
        warnings.warn(f"{info.path}: {problem}; using the {returned} frames read", TruncatedVideoWarning,
                      stacklevel=4)
        return
    error = TruncatedVideoError if cut else ValueError
    hint = "; pass allow_partial=True to use the frames that could be read" if returned else ""
    raise error(f"cannot read video {info.path}: {problem}{hint}")


def _shortfall(info: ContainerInfo, ending: _Ending) -> str | None:
    """How the decoded frames fall short of the promised frame count or duration, if they do."""
    if info.declared_frames:
        if ending.decoded < info.declared_frames:
            return f"{info.promise()}, {ending.decoded} could be decoded"
    elif info.declared_seconds and _ends_early(info, ending):
        shown = f"end at {ending.end_seconds:.3f} s" if ending.end_seconds is not None else "show nothing"
        return f"{info.promise()}, the {ending.decoded} decoded frames {shown}"
    return None


def _ends_early(info: ContainerInfo, ending: _Ending) -> bool:
    """The frames end more than half a frame before the promised duration (Matroska/WebM)."""
    if ending.end_seconds is None:
        return True
    return ending.end_seconds < info.declared_seconds - 0.5 / info.fps - TIME_SLACK
