import json

import pytest

from tokvid.story import (chunk_segments, load_story_file, num_chunks_for_frames, parse_story_string,
                          validate_segments)


def test_chunk_segments_follow_the_leading_frame_and_segment_ends():
    # 1 leading frame + 8 + 8 frames = 17 frames = 5 latent chunks of a tc=4 tokenizer
    assert chunk_segments([8, 8], 4) == [0, 0, 0, 1, 1]
    assert chunk_segments([16, 8, 8], 4) == [0, 0, 0, 0, 0, 1, 1, 2, 2]
    # a chunk straddling a boundary belongs to the segment owning its last frame
    assert chunk_segments([6, 6], 4) == [0, 0, 1, 1]
    assert chunk_segments([1], 4) == [0, 0]


def test_num_chunks_for_frames():
    assert num_chunks_for_frames(17, 4) == 5
    assert num_chunks_for_frames(18, 4) == 6
    assert num_chunks_for_frames(1, 4) == 1


def test_validate_segments_accepts_pairs_and_dicts():
    assert validate_segments([("a red circle moves right", 8), {"prompt": " x ", "frames": 3}]) == [
        ("a red circle moves right", 8), ("x", 3)]


@pytest.mark.parametrize("story, message", [
    ([], "empty"),
    ([("", 8)], "empty prompt"),
    ([("   ", 8)], "empty prompt"),
    ([("a red circle moves right", 0)], "at least 1"),
    ([("a red circle moves right", -8)], "at least 1"),
    ([("a red circle moves right", 2.5)], "whole number"),
    ([("a red circle moves right", 10 ** 9)], "limit"),
    ("a red circle", "list of"),
    ([("only a prompt",)], "pair"),
])
def test_bad_stories_raise_value_error(story, message):
    with pytest.raises(ValueError, match=message):
        validate_segments(story)


def test_parse_story_string_seconds_and_frames():
    story = parse_story_string("a red circle moves right : 2s ; a red circle moves down : 16f", fps=8)
    assert story == [("a red circle moves right", 16), ("a red circle moves down", 16)]
    assert parse_story_string("a b : 5", fps=8) == [("a b", 5)]
    with pytest.raises(ValueError, match="prompt : 2s"):
        parse_story_string("no length here", fps=8)
    with pytest.raises(ValueError, match="empty prompt"):
        parse_story_string(" : 2s", fps=8)


def test_load_story_file(tmp_path):
    path = tmp_path / "story.json"
    path.write_text(json.dumps([{"prompt": "a red circle moves right", "frames": 16}]))
    assert load_story_file(path) == [("a red circle moves right", 16)]
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_story_file(path)
    path.write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(ValueError, match="JSON list"):
        load_story_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        load_story_file(tmp_path / "missing.json")


def test_a_story_file_with_a_mistyped_key_names_it(tmp_path):
    from tokvid.story import load_story_file

    path = tmp_path / "story.json"
    path.write_text('[{"prompt": "a red circle moves right", "frame": 16}]')
    with pytest.raises(ValueError, match=r"unknown: \['frame'\], missing: \['frames'\]"):
        load_story_file(path)
