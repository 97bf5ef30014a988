"""read_video(start_frame=s, num_frames=n) seeks and still equals the whole video sliced (issue 38)."""
from fractions import Fraction

import numpy as np
import pytest
from video_samples import encode, moving_frames, write_sample

import tokvid.video_decode as video_decode
from tokvid.video_io import count_frames, read_video

FRAMES = 23  # nearly six GOPs of 4


@pytest.fixture(scope="module")
def gop_files(tmp_path_factory):
    """Multi-GOP files (a keyframe every 4 frames; H.264 with B-frames), a GIF, and variable frame
    rate files whose first timestamp is not 0."""
    folder = tmp_path_factory.mktemp("window")
    frames = moving_frames(FRAMES)
    files = {name: write_sample(folder / name, frames, gop=4)
             for name in ("gop.mp4", "gop.mov", "gop.mkv", "gop.webm", "gop.avi", "gop.gif")}
    steps = np.random.default_rng(1).integers(40, 300, FRAMES)  # 40..300 ms between frames
    pts = [int(p) for p in np.cumsum(steps) + 500]
    for name in ("vfr.mkv", "vfr.mp4"):
        files[name] = encode(folder / name, frames, "libx264", {"bf": "2", "g": "4"}, pts=pts,
                             time_base=Fraction(1, 1000), gop=4)
    return files


@pytest.fixture
def from_start_reads(monkeypatch):
    """Counts reads that decode from the first frame instead of seeking."""
    calls = []
    original = video_decode._frames_from_start

    def counting(info, ending):
        calls.append(info.path.name)
        return original(info, ending)

    monkeypatch.setattr(video_decode, "_frames_from_start", counting)
    return calls


NAMES = ("gop.mp4", "gop.mov", "gop.mkv", "gop.webm", "gop.avi", "gop.gif", "vfr.mkv", "vfr.mp4")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("fps", (None, 5, 13))
def test_every_window_equals_the_whole_video_sliced(gop_files, name, fps, from_start_reads):
    path = gop_files[name]
    whole = read_video(path, fps=fps)
    assert count_frames(path, fps=fps) == len(whole)
    if fps is None and name.startswith("vfr"):
        assert len(set(np.diff(read_video_times(path)).round(3))) > 3  # the rate really varies
    ticks = video_decode.container_info(path).tick_sources(fps)
    from_start_reads.clear()
    for start in range(len(whole)):
        for count in (1, 9, None):
            window = read_video(path, fps=fps, start_frame=start, num_frames=count)
            expected = whole[start:] if count is None else whole[start:start + count]
            assert np.array_equal(window, expected), (start, count)
    # only windows that begin with the first source frame (and the GIF, which has no index) start over
    expected_from_start = 3 * len(whole) if name.endswith("gif") else 3 * int(np.sum(ticks == 0))
    assert len(from_start_reads) == expected_from_start
    with pytest.raises(ValueError, match="no frames at or after start_frame"):
        read_video(path, fps=fps, start_frame=len(whole), num_frames=1)


def read_video_times(path):
    import av
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


def test_a_window_decodes_from_the_keyframe_before_it_not_from_the_start(gop_files, monkeypatch):
    decoded = []
    original = video_decode._frame_end

    def counting(frame, stream):
        decoded.append(frame.pts)
        return original(frame, stream)

    monkeypatch.setattr(video_decode, "_frame_end", counting)
    path = gop_files["gop.mkv"]
    whole = read_video(path)
    decoded.clear()
    window = read_video(path, start_frame=17, num_frames=2)
    assert np.array_equal(window, whole[17:19])
    assert len(decoded) <= 4 + 2  # at most a GOP before the window, never the 17 frames before it


def test_when_packets_do_not_index_frames_the_read_starts_over_and_stays_exact(gop_files, from_start_reads):
    path = gop_files["gop.mp4"]
    whole = read_video(path)
    info = video_decode.container_info(path)
    info.presentation_times()
    info.times = np.delete(info.times, 10)  # as if frame 10 had no packet: decoding from keyframe 8 sees it
    info.ticks.clear()
    from_start_reads.clear()
    try:
        assert np.array_equal(read_video(path, start_frame=9, num_frames=3), whole[9:12])
        assert from_start_reads == [path.name] and not info.seekable  # never seeks in this file again
    finally:
        video_decode._INFO_CACHE.entries.clear()
