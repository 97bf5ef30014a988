import json

import numpy as np
import pytest

from tokvid.footage import (HELD_OUT_VIDEO, FootageSources, held_out_clips, make_clip,
                            write_general_dataset)
from tokvid.video_io import read_video


@pytest.fixture(scope="module")
def sources():
    return FootageSources.load(max_frames=40)  # enough for 9-frame clips at any frame step


def test_sources_never_include_the_held_out_clip(sources):
    names = set(sources.videos) | set(sources.photos)
    assert "carphone_pristine" not in names and not any("carphone" in n for n in names)
    assert set(sources.videos) == {"bikes", "bigbuckbunny"}


def test_dataset_is_deterministic_and_manifest_valid(tmp_path, sources):
    first = write_general_dataset(tmp_path / "a", 6, num_frames=9, size=32, seed=3, sources=sources)
    second = write_general_dataset(tmp_path / "b", 6, num_frames=9, size=32, seed=3, sources=sources)
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(lines) == 6 and first.read_text() == second.read_text()
    for line in lines:
        assert set(line) == {"path", "caption"} and line["caption"] and "carphone" not in line["caption"]
        clip = read_video(first.parent / line["path"])
        assert clip.shape == (9, 32, 32, 3)
        assert np.array_equal(clip, read_video(second.parent / line["path"]))  # lossless + same seed


def test_seeds_differ_and_clips_have_texture(sources):
    a, _ = make_clip(sources, np.random.default_rng([0, 0]), 5, 32)
    b, _ = make_clip(sources, np.random.default_rng([1, 0]), 5, 32)
    assert not np.array_equal(a, b)
    assert a.std() > 5  # real footage, not a flat colour


def test_all_clip_kinds_appear(sources):
    captions = [make_clip(sources, np.random.default_rng([0, i]), 3, 16)[1] for i in range(40)]
    kinds = {caption.split()[1] for caption in captions}
    assert kinds == {"crop", "pan", "zoom"}


def test_held_out_clips_come_from_carphone():
    clips = held_out_clips(32, num_frames=5, starts=(0, 40))
    assert [c.shape for c in clips] == [(5, 32, 32, 3)] * 2
    assert not np.array_equal(clips[0], clips[1])
    with pytest.raises(ValueError, match=HELD_OUT_VIDEO):
        held_out_clips(32, num_frames=17, starts=(110,))
