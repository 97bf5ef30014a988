"""tokvid-encode across ranks (RANK/WORLD_SIZE as torchrun and deepspeed set them), resumable after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tokvid.cli import encode_main, run_cli
from tokvid.encoding import encode_videos
from tokvid.shards import TokenShards
from tokvid.video_io import write_video
from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    torch.manual_seed(0)
    VideoTokenizer(video_tokenizer_preset("tiny")).save_pretrained(root / "tok")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        frames = int(rng.choice([5, 9]))  # two shapes: batches hold videos of one shape each
        write_video(root / f"v{i:02d}.mp4", (rng.random((frames, 16, 16, 3)) * 255).astype(np.uint8),
                    quality="lossless")
        lines.append(json.dumps({"path": f"v{i:02d}.mp4", "caption": f"clip {i}"}))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    (root / "bad.mp4").write_bytes(b"not a video")
    lines.insert(5, json.dumps({"path": "bad.mp4", "caption": "broken"}))
    (root / "with_bad.jsonl").write_text("\n".join(lines) + "\n")
    return root


def items(directory):
    return [(codes, meta) for codes, meta in TokenShards(directory)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))


def encode(data, out, rank=None, world_size=None, manifest="m.jsonl", **options):
    return encode_videos(data / "tok", out, manifest=data / manifest, items_per_shard=2, batch_size=3,
                         rank=rank, world_size=world_size, **options)


def test_two_ranks_equal_one_process_item_for_item(data, tmp_path):
    single = encode(data, tmp_path / "one")
    assert single == {"items": 12, "skipped": 0, "finished": True}
    first = encode(data, tmp_path / "two", rank=0, world_size=2)
    assert first == {"items": 6, "skipped": 0, "finished": False}  # units 0, 2, 4: rank 1 has not run yet
    assert not (tmp_path / "two" / "info.json").exists()
    assert encode(data, tmp_path / "two", rank=1, world_size=2) == single  # the last rank completes the directory
    reference = items(tmp_path / "one")
    assert same(reference, items(tmp_path / "two"))
    assert [meta["caption"] for _, meta in reference] == [f"clip {i}" for i in range(12)]
    tok = VideoTokenizer.from_pretrained(data / "tok")
    from tokvid.video_io import frames_to_tensor, read_video
    alone = tok.encode(frames_to_tensor(read_video(data / "v07.mp4"))[None])[0]
    assert torch.equal(alone, reference[7][0])  # batched codes are the codes of the video encoded alone
    with pytest.raises(ValueError, match="other settings .*items_per_shard"):
        encode_videos(data / "tok", tmp_path / "two", manifest=data / "m.jsonl", items_per_shard=3)


def launch(data, out, world_size):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": str(world_size), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "tokenizer" / "encode.py"), "--tokenizer", str(data / "tok"),
               "--manifest", str(data / "m.jsonl"), "--out", str(out), "--items-per-shard", "1", "--batch-size", "1",
               "--quiet"]
    return [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for r in range(world_size)]


def test_a_run_killed_mid_way_and_run_again_equals_an_uninterrupted_one(data, tmp_path):
    out = tmp_path / "killed"
    ranks = launch(data, out, 2)
    deadline = time.time() + 120
    while not list(out.glob("*.done.json")) and time.time() < deadline:
        time.sleep(0.005)
    for process in ranks:
        process.send_signal(signal.SIGKILL)
        process.wait()
    committed = {p.name for p in out.glob("*.done.json")}
    assert committed and len(committed) < 12 and not (out / "info.json").exists()
    # a unit killed while writing: its files are there, its commit marker is not
    unit = next(n for n in range(12) if f"shard-{n:05d}.done.json" not in committed)
    (out / f"shard-{unit:05d}.codes.npy").write_bytes(b"half a shard")
    (out / f".shard-{unit:05d}.index.npy.999.tmp").write_bytes(b"half")
    # the same command again (here in this process, rank after rank, to keep the test fast)
    again = [encode_videos(data / "tok", out, manifest=data / "m.jsonl", items_per_shard=1, batch_size=1, rank=rank,
                           world_size=2) for rank in (0, 1)]
    assert again[1] == {"items": 12, "skipped": 0, "finished": True}
    encode(data, tmp_path / "one")
    assert same(items(out), items(tmp_path / "one"))
    assert not list(out.glob(".*.tmp"))


def test_a_corrupt_video_among_many_is_skipped_listed_and_the_rest_encoded(data, tmp_path, capsys):
    args = ["--tokenizer", str(data / "tok"), "--manifest", str(data / "with_bad.jsonl"), "--quiet",
            "--items-per-shard", "4"]
    assert run_cli(encode_main, args + ["--out", str(tmp_path / "a")], prog="tokvid-encode") == 2
    err = capsys.readouterr().err
    assert "bad.mp4" in err and "pass --skip-bad" in err and err.count("\n") == 1
    assert run_cli(encode_main, args + ["--out", str(tmp_path / "b"), "--skip-bad"], prog="tokvid-encode") == 0
    assert "wrote 12 items" in capsys.readouterr().out
    report = [json.loads(line) for line in (tmp_path / "b" / "skipped.jsonl").read_text().splitlines()]
    assert len(report) == 1 and report[0]["index"] == 5 and report[0]["path"].endswith("bad.mp4")
    assert report[0]["error"]
    encode(data, tmp_path / "good")
    assert same(items(tmp_path / "b"), items(tmp_path / "good"))  # the other 12, in manifest order
