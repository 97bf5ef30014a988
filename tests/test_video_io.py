import numpy as np
import pytest
import torch
from PIL import Image

from tokvid.video_io import (frames_to_tensor, read_video, resize_cover, save_contact_sheet,
                             tensor_to_frames, video_fps, write_video)


def smooth_pattern(num_frames=9, height=64, width=64):
    """Moving colour gradients: smooth content a video codec should keep near-perfectly."""
    t = np.arange(num_frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    red = 128 + 100 * np.sin((x + 2 * t) / 9.0)
    green = 128 + 100 * np.cos((y - t) / 11.0)
    blue = 128 + 60 * np.sin((x + y + 3 * t) / 15.0)
    channels = np.broadcast_arrays(red, green, blue)
    return np.stack(channels, -1).round().astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_mp4_round_trip_keeps_shape_fps_and_quality(tmp_path):
    frames = smooth_pattern()
    write_video(tmp_path / "a.mp4", frames, fps=12)
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert video_fps(tmp_path / "a.mp4") == pytest.approx(12)
    assert psnr(back, frames) > 35


def test_lossless_mp4_is_exact_even_for_noise_and_odd_sizes(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (5, 31, 45, 3), dtype=np.uint8)
    write_video(tmp_path / "noise.mp4", noise, quality="lossless")
    assert np.array_equal(read_video(tmp_path / "noise.mp4"), noise)


def test_odd_sizes_keep_their_shape_at_default_quality(tmp_path):
    frames = smooth_pattern(3, 33, 47)
    write_video(tmp_path / "odd.mp4", frames)
    back = read_video(tmp_path / "odd.mp4")
    assert back.shape == frames.shape and psnr(back, frames) > 35


def test_contract_random_frames_round_trip_mp4_and_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    for ext in ("mp4", "gif"):
        write_video(tmp_path / f"x.{ext}", frames, fps=8)
        assert read_video(tmp_path / f"x.{ext}").shape == (9, 64, 64, 3)


def test_gif_round_trip_keeps_repeated_frames_and_few_colours_exactly(tmp_path):
    frames = np.zeros((6, 20, 24, 3), np.uint8)
    for i in range(6):
        frames[i, 5:12, 2 + 2 * (i // 2):8 + 2 * (i // 2)] = (230, 40, 40)  # pairs of equal frames
    write_video(tmp_path / "a.gif", frames, fps=8)
    assert np.array_equal(read_video(tmp_path / "a.gif"), frames)
    assert video_fps(tmp_path / "a.gif") == pytest.approx(8)


def test_folder_of_frames_sorted_naturally(tmp_path):
    frames = smooth_pattern(11, 16, 16)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"frame_{i}.png")
    assert np.array_equal(read_video(tmp_path), frames)  # frame_10 after frame_9


def test_single_image_is_a_one_frame_video(tmp_path):
    image = smooth_pattern(1, 30, 40)[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    assert np.array_equal(read_video(tmp_path / "a.png"), image[None])
    assert read_video(tmp_path / "a.png", size=16).shape == (1, 16, 16, 3)


def test_fps_resampling_follows_timestamps(tmp_path):
    frames = np.zeros((24, 8, 8, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(24) * 10  # frame index written into a pixel
    write_video(tmp_path / "a.mp4", frames, fps=24, quality="lossless")
    half = read_video(tmp_path / "a.mp4", fps=12)
    assert list(half[:, 0, 0, 0]) == list(range(0, 240, 20))
    double = read_video(tmp_path / "a.mp4", fps=48)
    assert len(double) == 48 and list(double[:4, 0, 0, 0]) == [0, 0, 10, 10]
    window = read_video(tmp_path / "a.mp4", fps=12, start_frame=3, num_frames=4)
    assert np.array_equal(window, half[3:7])


def test_size_covers_then_centre_crops(tmp_path):
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # white centre square, black side bands
    write_video(tmp_path / "wide.mp4", frames, quality="lossless")
    square = read_video(tmp_path / "wide.mp4", size=20)
    assert square.shape == (2, 20, 20, 3)
    assert square.min() > 240  # the side bands were cropped away, not squeezed in
    assert read_video(tmp_path / "wide.mp4", size=(10, 30)).shape == (2, 10, 30, 3)
    first = frames[0]
    assert resize_cover(first, (40, 80)) is first  # right size already: no resampling blur


@pytest.mark.parametrize("content", [b"", b"not a video at all", "truncated"])
def test_bad_files_raise_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.mp4"
    if content == "truncated":
        write_video(path, smooth_pattern(), fps=8)
        data = path.read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.mp4"):
        read_video(path)


def test_missing_file_and_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="no image files"):
        read_video(tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="quality"):
        write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.uint8), quality="best")
    with pytest.raises(ValueError, match=".gif"):
        write_video(tmp_path / "a.avi", np.zeros((2, 8, 8, 3), np.uint8))


def test_contact_sheet_has_expected_pixel_size(tmp_path):
    frames = smooth_pattern(10, 16, 24)
    save_contact_sheet(tmp_path / "sheet.png", frames, columns=4, scale=2, gap=2)
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (3 * 32 + 2 * 2, 4 * 48 + 3 * 2, 3)
    assert np.array_equal(sheet[:32:2, :48:2], frames[0])  # first tile is frame 0, upscaled


def test_tensor_conversions_round_trip_and_clamp():
    frames = smooth_pattern(3, 8, 8)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_frames(x), frames)
    assert tensor_to_frames(torch.full((3, 1, 2, 2), 5.0)).max() == 255
    with pytest.raises(ValueError, match="3, T, H, W"):
        tensor_to_frames(x[None])


WRITE_SAME_FRAMES_30_TIMES = """
import hashlib, sys, tempfile
from pathlib import Path
import numpy as np
from tokvid.video_io import write_video
rng = np.random.default_rng(0)
t = np.arange(17)[:, None, None]; y, x = np.mgrid[:64, :64]
blob = np.exp(-(((x - 10 - 2 * t) ** 2 + (y - 30) ** 2) / 30.0))  # a soft red disc moving right, slight noise
frames = (blob[..., None] * [230, 40, 40] + rng.normal(0, 2, (17, 64, 64, 3))).clip(0, 255).astype(np.uint8)
out = Path(tempfile.mkdtemp())
digests = set()
for i in range(30):
    write_video(out / f"{i}.mp4", frames, fps=8)
    digests.add(hashlib.sha256((out / f"{i}.mp4").read_bytes()).hexdigest())
print(len(digests))
"""


def test_mp4_bytes_repeat_for_the_same_frames():
    # in a fresh process: whether x264's AVX-512 code varied depended on what the process did before
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", WRITE_SAME_FRAMES_30_TIMES], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # one file, written 30 times
