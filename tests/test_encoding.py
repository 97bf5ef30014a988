import json

import numpy as np
import pytest
import torch

from tokvid.cli import decode_main, encode_main, run_cli
from tokvid.shards import ShardWriter, TokenShards, tokenizer_info
from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset
from tokvid.video_io import TruncatedVideoWarning, frames_to_tensor, read_video, write_video


@pytest.fixture(scope="module")
def saved_tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    for seed in (0, 1):
        torch.manual_seed(seed)
        VideoTokenizer(video_tokenizer_preset("tiny")).save_pretrained(root / f"tok{seed}")
    return root / "tok0", root / "tok1"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    lines = []
    for i, frames in enumerate((11, 9, 1)):
        video = (rng.random((frames, 32, 40, 3)) * 255).astype(np.uint8)
        name = f"v{i}.mp4" if frames > 1 else f"v{i}.png"
        if frames > 1:
            write_video(root / name, video, fps=8, quality="lossless")
        else:
            from PIL import Image
            Image.fromarray(video[0]).save(root / name)
        lines.append(json.dumps({"path": name, "caption": f"clip {i}"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def test_encode_then_decode_round_trip_without_sources(saved_tokenizers, manifest, tmp_path):
    tok_dir = saved_tokenizers[0]
    shards = tmp_path / "shards"
    encode_main(["--tokenizer", str(tok_dir), "--manifest", str(manifest), "--out", str(shards), "--quiet"])
    data = TokenShards(shards)
    assert len(data) == 3
    assert data.info["tokenizer"]["fingerprint"] == VideoTokenizer.from_pretrained(tok_dir).fingerprint()
    codes, meta = data[0]
    assert codes.shape == (3, 4, 5)  # 11 frames -> the 9 a tc=4 tokenizer can code -> 3 latent frames
    assert meta["caption"] == "clip 0" and meta["num_frames"] == 9
    assert data[2][0].shape[0] == 1  # an image is a 1-frame video
    # the shard codes equal a direct encode of the same frames
    tok = VideoTokenizer.from_pretrained(tok_dir)
    frames = read_video(manifest.parent / "v0.mp4")[:9]
    assert torch.equal(tok.encode(frames_to_tensor(frames)[None])[0], codes)

    out = tmp_path / "decoded"
    decode_main(["--tokenizer", str(tok_dir), "--shards", str(shards), "--out", str(out), "--quiet"])
    decoded = read_video(out / "000000-v0.mp4")  # named after the item and its source
    assert decoded.shape == (9, 32, 40, 3)
    listed = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert listed == [{"path": "000000-v0.mp4", "caption": "clip 0"}, {"path": "000001-v1.mp4", "caption": "clip 1"},
                      {"path": "000002-v2.mp4", "caption": "clip 2"}]  # captions kept: a data set again


def test_decoding_with_another_tokenizer_fails_clearly(saved_tokenizers, manifest, tmp_path, capsys):
    shards = tmp_path / "shards"
    encode_main(["--tokenizer", str(saved_tokenizers[0]), "--manifest", str(manifest), "--out", str(shards), "--quiet"])
    assert TokenShards(shards).info["format"] == "tokvid-shards-v2"
    code = run_cli(decode_main, ["--tokenizer", str(saved_tokenizers[1]), "--shards", str(shards),
                                 "--out", str(tmp_path / "x"), "--quiet"], prog="tokvid-decode")
    err = capsys.readouterr().err
    assert code == 2 and "made by tokenizer" in err and "(fingerprint " in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_a_decoder_fine_tuned_for_the_same_codes_decodes_them(saved_tokenizers, manifest, tmp_path, capsys):
    shards = tmp_path / "shards"
    encode_main(["--tokenizer", str(saved_tokenizers[0]), "--manifest", str(manifest), "--out", str(shards), "--quiet"])
    sharper = VideoTokenizer.from_pretrained(saved_tokenizers[0])
    with torch.no_grad():  # stands in for decoder fine-tuning: other decoder weights, the same encoder
        for parameter in sharper.frame_decoder.parameters():
            parameter.add_(0.01)
    sharper.save_pretrained(tmp_path / "sharper")
    decode = ["--tokenizer", str(tmp_path / "sharper"), "--shards", str(shards), "--quiet", "--out"]
    assert run_cli(decode_main, decode + [str(tmp_path / "x")], prog="tokvid-decode") == 0
    # shards written before codes fingerprints existed still require the exact tokenizer
    info = json.loads((shards / "info.json").read_text())
    del info["tokenizer"]["codes_fingerprint"]
    (shards / "info.json").write_text(json.dumps(info))
    assert run_cli(decode_main, decode + [str(tmp_path / "y")], prog="tokvid-decode") == 2
    assert "made by tokenizer" in capsys.readouterr().err


def test_corrupt_video_stops_or_is_skipped(saved_tokenizers, manifest, tmp_path, capsys):
    bad = manifest.parent / "bad.mp4"
    bad.write_bytes(b"not a video")
    lines = manifest.read_text() + json.dumps({"path": "bad.mp4", "caption": "broken"}) + "\n"
    bad_manifest = manifest.parent / "with_bad.jsonl"
    bad_manifest.write_text(lines)
    args = ["--tokenizer", str(saved_tokenizers[0]), "--manifest", str(bad_manifest), "--quiet"]
    assert run_cli(encode_main, args + ["--out", str(tmp_path / "a")], prog="tokvid-encode") == 2
    assert "bad.mp4" in capsys.readouterr().err
    assert run_cli(encode_main, args + ["--out", str(tmp_path / "b"), "--skip-bad"], prog="tokvid-encode") == 0
    assert len(TokenShards(tmp_path / "b")) == 3


def test_truncated_video_stops_or_is_encoded_in_part_with_allow_partial(saved_tokenizers, manifest, tmp_path,
                                                                        capsys):
    whole = (manifest.parent / "v0.mp4").read_bytes()  # 11 frames
    (manifest.parent / "cut.mp4").write_bytes(whole[: len(whole) * 8 // 10])
    cut_manifest = manifest.parent / "with_cut.jsonl"
    cut_manifest.write_text(json.dumps({"path": "cut.mp4", "caption": "cut"}) + "\n")
    args = ["--tokenizer", str(saved_tokenizers[0]), "--manifest", str(cut_manifest), "--quiet"]
    assert run_cli(encode_main, args + ["--out", str(tmp_path / "a")], prog="tokvid-encode") == 2
    assert "truncated" in capsys.readouterr().err
    with pytest.warns(TruncatedVideoWarning, match="cut.mp4"):
        assert run_cli(encode_main, args + ["--out", str(tmp_path / "b"), "--allow-partial"], prog="tokvid-encode") == 0
    codes, meta = TokenShards(tmp_path / "b")[0]
    assert meta["num_frames"] < 9 and codes.shape[0] == 1 + (meta["num_frames"] - 1) // 4  # the whole file gives 9


def test_shard_writer_splits_and_reads_back(tmp_path):
    info = {"name": "t", "fingerprint": "f", "vocab_size": 70000}
    rng = np.random.default_rng(0)
    items = [rng.integers(0, 70000, (int(n), 2, 3)) for n in rng.integers(1, 5, 7)]
    with ShardWriter(tmp_path / "s", info, items_per_shard=3) as writer:
        for i, codes in enumerate(items):
            writer.add(codes, {"caption": str(i)})
    shards = TokenShards(tmp_path / "s")
    assert len(shards) == 7 and len(shards.info["shards"]) == 3
    for i, codes in enumerate(items):
        got, meta = shards[i]
        assert torch.equal(got, torch.from_numpy(codes)) and meta["caption"] == str(i)
    counts = shards.code_counts(70000)
    assert np.array_equal(counts, np.bincount(np.concatenate([c.ravel() for c in items]), minlength=70000))
    with pytest.raises(ValueError, match="another tokenizer"):
        shards.code_counts(100)
    with pytest.raises(ValueError, match="already holds shards"):
        ShardWriter(tmp_path / "s", info)
    with pytest.raises(ValueError, match="no info.json"):
        TokenShards(tmp_path)
