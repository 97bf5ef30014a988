"""read_video knows when a file ends early, in every container it reads (issue 41)."""
import warnings

import numpy as np
import pytest
from video_samples import CONTAINERS, noise_frames, write_sample

import tokvid.video_decode as video_decode
from tokvid.container_bytes import truncation_in_bytes
from tokvid.video_io import TruncatedVideoError, TruncatedVideoWarning, count_frames, read_video

CUTS = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99)  # percent of the file's bytes kept


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Whole 1-, 2- and 9-frame files per container, and the 9-frame one cut at every CUTS point."""
    folder = tmp_path_factory.mktemp("truncation")
    files = {}
    for container in CONTAINERS:
        for count in (1, 2, 9):
            path = folder / f"whole{count}.{container}"
            files[container, count] = write_sample(path, noise_frames(count, seed=count))
        data = files[container, 9].read_bytes()
        for percent in CUTS:
            cut = folder / f"cut{percent}.{container}"
            cut.write_bytes(data[: len(data) * percent // 100])
            files[container, f"cut{percent}"] = cut
    return files


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("count", (1, 2, 9))
def test_short_but_whole_files_read_exactly_without_warnings(samples, container, count):
    path = samples[container, count]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a whole file must not look truncated
        frames = read_video(path)
        assert frames.shape == (count, 32, 32, 3)
        assert np.array_equal(read_video(path, allow_partial=True), frames)
    assert count_frames(path) == count


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("percent", CUTS)
def test_cut_files_raise_naming_the_file_the_promise_and_what_decoded(samples, container, percent):
    path = samples[container, f"cut{percent}"]
    with pytest.raises(TruncatedVideoError, match=f"{path.name}.*truncated") as caught:
        read_video(path)
    assert isinstance(caught.value, ValueError)
    message = str(caught.value)
    if "cannot be opened" not in message:  # a file cut in its header: FFmpeg cannot even open it
        promise = "GIF end marker" if container == "gif" else "promises 9 frames" if container in (
            "mp4", "mov", "avi") else "promises 1.125 s"
        assert promise in message and "decoded" in message
    with pytest.raises(ValueError, match="truncated"):  # a window of a cut file is no more whole
        read_video(path, start_frame=1, num_frames=1)


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("percent", CUTS)
def test_allow_partial_warns_and_returns_the_frames_that_arrived_whole(samples, container, percent):
    path = samples[container, f"cut{percent}"]
    whole = read_video(samples[container, 9])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frames = read_video(path, allow_partial=True)
        except TruncatedVideoError as error:  # nothing at all was readable
            assert percent < 90 and ("cannot be opened" in str(error) or " 0 " in str(error))
            return
    assert [w.category for w in caught] == [TruncatedVideoWarning]
    assert path.name in str(caught[0].message) and "truncated" in str(caught[0].message)
    assert 1 <= len(frames) <= 9
    assert np.array_equal(frames, whole[: len(frames)])  # the readable frames, none half-decoded


@pytest.mark.parametrize("container", ("mp4", "mov", "avi", "mkv", "webm"))
@pytest.mark.parametrize("percent", (50, 70, 90))
def test_promised_frames_or_duration_catch_cuts_the_bytes_would_miss(samples, container, percent, monkeypatch):
    """Writers that leave sizes unknown (live-written Matroska) still declare frames or a duration."""
    monkeypatch.setattr(video_decode, "truncation_in_bytes", lambda path: None)
    video_decode._INFO_CACHE.entries.clear()
    try:
        with pytest.raises(ValueError, match="truncated|cannot read video"):
            read_video(samples[container, f"cut{percent}"])
    finally:
        video_decode._INFO_CACHE.entries.clear()


def test_byte_framing_tells_cut_from_unknown(tmp_path):
    ebml_header = bytes.fromhex("1a45dfa3") + bytes([0x80 | 4]) + b"webm"
    segment = bytes.fromhex("18538067")
    known = tmp_path / "known.webm"
    known.write_bytes(ebml_header + segment + bytes([0x80 | 100]) + b"x" * 40)  # declares 100, holds 40
    assert "has 54 bytes, but its Matroska/WebM elements declare at least 114" in truncation_in_bytes(known).reason
    live = tmp_path / "live.webm"
    live.write_bytes(ebml_header + segment + bytes.fromhex("01ffffffffffffff") + b"x" * 40)  # "unknown size"
    assert truncation_in_bytes(live) is None
    gif = tmp_path / "a.gif"
    write_sample(gif, noise_frames(3))
    data = gif.read_bytes()
    assert truncation_in_bytes(gif) is None and data[-1] == 0x3B
    gif.write_bytes(data[:-1])  # only the trailer is missing: every image is whole
    assert truncation_in_bytes(gif).whole_frames == 3


def _partial_read(path, **window) -> tuple:
    """What read_video makes of a file: its frames and warnings, or its error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            frames = read_video(path, allow_partial=True, **window)
        except ValueError as error:
            return None, str(error)
    return frames, [str(w.message) for w in caught]


@pytest.mark.parametrize("container", CONTAINERS)
def test_frames_do_not_depend_on_the_decoder_threads(samples, container, monkeypatch):
    """Encoding ranks and loader workers decode with their own thread budget (1 each): whole, cut and
    windowed reads must give what decoding with a thread per core gives."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert video_decode.decode_threads() == 3  # the budget is torch's, as --threads and workers set it
    finally:
        torch.set_num_threads(before)
    reads = {}
    for threads in (1, 4):
        monkeypatch.setattr(video_decode, "decode_threads", lambda: threads)
        reads[threads] = [_partial_read(samples[container, key], **window)
                          for key in (9, "cut50", "cut70", "cut90", "cut99")
                          for window in ({}, {"start_frame": 2, "num_frames": 3})]
    for one, many in zip(reads[1], reads[4]):
        assert one[1] == many[1]
        assert (one[0] is None and many[0] is None) or np.array_equal(one[0], many[0])
