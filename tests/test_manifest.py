import json

import numpy as np
import pytest

from tokvid.manifest import check_manifest, format_report, item_segments, read_manifest
from tokvid.shapes import write_dataset
from tokvid.video_io import write_video


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_paths_resolve_against_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = write_lines(tmp_path / "sub" / "m.jsonl", [
        json.dumps({"path": "a.mp4", "caption": "a red circle moves right"}),
        "",
        json.dumps({"path": "b.mp4", "story": [{"prompt": "x", "frames": 8}, {"prompt": "y", "frames": 16}]}),
    ])
    items = read_manifest(manifest)
    assert [item["path"] for item in items] == [str(tmp_path / "sub" / "a.mp4"), str(tmp_path / "sub" / "b.mp4")]
    assert item_segments(items[1]) == [("x", 8), ("y", 16)]
    assert item_segments(items[0], num_frames=17) == [("a red circle moves right", 16)]
    with pytest.raises(ValueError, match="num_frames"):
        item_segments(items[0])


def test_csv_with_caption_and_story_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,caption,story\n'
                        'a.mp4,a blue square stays still,\n'
                        'b.mp4,,"[{""prompt"": ""p"", ""frames"": 8}]"\n')
    items = read_manifest(manifest)
    assert items[0]["caption"] == "a blue square stays still" and "story" not in items[0]
    assert items[1]["story"] == [{"prompt": "p", "frames": 8}] and "caption" not in items[1]


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", "line 2: not valid JSON"),
    ('{"caption": "x"}', "line 2: missing 'path'"),
    ('{"path": "a.mp4"}', "line 2: give exactly one"),
    ('{"path": "a.mp4", "caption": ""}', "line 2: 'caption' must be"),
    ('{"path": "a.mp4", "story": [{"prompt": "x", "frames": 0}]}', "line 2: story segment 0"),
    ('[1, 2]', "line 2: expected a JSON object"),
])
def test_malformed_lines_name_the_line(tmp_path, bad_line, message):
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps({"path": "ok.mp4", "caption": "c"}), bad_line])
    with pytest.raises(ValueError, match=message):
        read_manifest(manifest)


def test_missing_or_empty_manifest(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="no items"):
        read_manifest(write_lines(tmp_path / "m.jsonl", [""]))


def test_check_manifest_counts_each_problem(tmp_path):
    clip = np.zeros((9, 32, 32, 3), np.uint8)
    write_video(tmp_path / "good.mp4", clip, quality="lossless")
    write_video(tmp_path / "short.mp4", clip[:5], quality="lossless")
    write_video(tmp_path / "small.mp4", clip[:, :16, :16], quality="lossless")
    write_video(tmp_path / "story.mp4", clip, quality="lossless")
    (tmp_path / "corrupt.mp4").write_bytes(b"garbage")
    write_video(tmp_path / "cut.mkv", clip, quality="lossless")
    whole = (tmp_path / "cut.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(whole[: len(whole) * 9 // 10])  # decodes without an FFmpeg error
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps(line) for line in [
        {"path": "good.mp4", "caption": "c"},
        {"path": "short.mp4", "caption": "c"},
        {"path": "small.mp4", "caption": "c"},
        {"path": "gone.mp4", "caption": "c"},
        {"path": "corrupt.mp4", "caption": "c"},
        {"path": "story.mp4", "story": [{"prompt": "p", "frames": 16}]},
        {"path": "cut.mkv", "caption": "c"},
    ]])
    report = check_manifest(manifest, num_frames=9, size=32)
    assert report["counts"] == {"missing": 1, "truncated": 1, "corrupt": 1, "too_short": 1, "wrong_size": 1,
                                "story_mismatch": 1}
    assert report["ok"] == 1 and report["items"] == 7 and report["bad"] == 6
    text = format_report(report)
    assert "7 items: 1 ok, 6 with problems" in text and "gone.mp4" in text and "too short: 1" in text
    assert "truncated: 1" in text and "cut.mkv" in report["truncated"][0][0]
    # size is a minimum unless exact_size: 32x32 frames are fine for 16, wrong for exactly 16
    assert check_manifest(manifest, size=16)["counts"]["wrong_size"] == 0
    assert check_manifest(manifest, size=16, exact_size=True)["counts"]["wrong_size"] == 3
    assert report["too_short"] == [[str(tmp_path / "short.mp4"), 5]]
    assert "corrupt.mp4" in report["corrupt"][0][0]
    json.dumps(report)  # the report can be saved as JSON


def test_shapes_dataset_passes_the_check(tmp_path):
    manifest = write_dataset(tmp_path, 6, seed=2, image_fraction=0.3)
    report = check_manifest(manifest, num_frames=9, size=64)
    assert report["ok"] == 6 and sum(report["counts"].values()) == 0 and report["images"] >= 1


def test_manifest_index_reads_the_items_of_read_manifest_on_demand(tmp_path):
    import pickle

    from tokvid.manifest import ManifestIndex
    story = json.dumps([{"prompt": "p, q", "frames": 8}]).replace('"', '""')
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text('path,caption,story\n'
                            'a.mp4,"a caption, with a comma",\n'
                            '\n'
                            f'b.mp4,,"{story}"\n'
                            'c.mp4,"two\nlines",\n'
                            'd.mp4,last,\n')
    jsonl_manifest = write_lines(tmp_path / "m.jsonl", [
        json.dumps({"path": "a.mp4", "caption": "é ü"}), "", "  ",
        json.dumps({"path": "sub/b.mp4", "story": [{"prompt": "x", "frames": 8}]}),
        json.dumps({"path": "c.mp4", "caption": "c"})])
    for manifest in (csv_manifest, jsonl_manifest):
        items = read_manifest(manifest)
        index = ManifestIndex(manifest)
        assert len(index) == len(items) and len(items) in (3, 4)
        assert [index[i] for i in reversed(range(len(items)))] == items[::-1]
        assert list(index) == items and index[-1] == items[-1]
        assert [pickle.loads(pickle.dumps(index))[i] for i in range(len(items))] == items
    assert read_manifest(csv_manifest)[2]["caption"] == "two\nlines"
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"path": "a.mp4", "caption": "c"}), '{"path": "b.mp4"}'])
    with pytest.raises(ValueError, match="line 2: give exactly one"):
        ManifestIndex(bad)


def test_check_lists_a_bounded_number_of_problems_but_counts_all(tmp_path):
    manifest = write_lines(tmp_path / "m.jsonl", [json.dumps({"path": f"gone{i}.mp4", "caption": "c"})
                                                  for i in range(30)])
    report = check_manifest(manifest, max_listed=4)
    assert report["counts"]["missing"] == 30 and report["bad"] == 30 and len(report["missing"]) == 4
    assert "... and 26 more" in format_report(report, max_listed=4)
