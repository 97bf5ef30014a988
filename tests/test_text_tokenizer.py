import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tokvid.models.text_tokenizer import TextTokenizer, manifest_captions, train_text_tokenizer

CAPTIONS = [f"a {colour} {shape} moves {direction}" for colour in ("red", "green", "blue")
            for shape in ("circle", "square") for direction in ("left", "right", "up")]
SCRIPT = Path(__file__).resolve().parents[1] / "tokenizer" / "train_text_tokenizer.py"


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return train_text_tokenizer(CAPTIONS, max_length=8)


def test_training_is_deterministic_and_ignores_order_and_duplicates(tmp_path):
    first = train_text_tokenizer(CAPTIONS, tmp_path / "a", seed=3)
    second = train_text_tokenizer(list(reversed(CAPTIONS)) + CAPTIONS[:4], tmp_path / "b", seed=3)
    assert (tmp_path / "a" / "text_tokenizer.model").read_bytes() == (tmp_path / "b" / "text_tokenizer.model").read_bytes()
    assert first.encode("a blue circle moves up") == second.encode("a blue circle moves up")


def test_ids_layout_and_round_trip(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 2, 3)
    ids = tokenizer.encode("a red square moves left")
    assert ids[0] == 2 and ids[-1] == 3 and 0 not in ids and len(ids) <= 8
    assert tokenizer.decode(ids) == "a red square moves left"
    assert tokenizer.encode("A  RED square moves left") == ids  # case and spacing folded
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.encode("a red circle moves up") != tokenizer.encode("a red circle moves left")


def test_batch_pads_and_null_ids(tokenizer):
    batch = tokenizer.batch(["a red circle moves up", "a green square moves right"])
    assert batch.dtype == torch.long and batch.shape == (2, tokenizer.max_length)
    first = tokenizer.encode("a red circle moves up")
    assert batch[0, : len(first)].tolist() == first and (batch[0, len(first):] == 0).all()
    assert tokenizer.batch(["a red circle"], length=12).shape == (1, 12)
    assert tokenizer.null_ids() == [2, 3] + [0] * (tokenizer.max_length - 2)
    assert tokenizer.null_ids(4) == [2, 3, 0, 0]


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_raises(tokenizer, prompt):
    with pytest.raises(ValueError, match="empty prompt"):
        tokenizer.encode(prompt)
    with pytest.raises(ValueError):
        tokenizer.batch(["a red circle", prompt])


def test_other_bad_inputs_raise(tokenizer):
    for call in (lambda: tokenizer.encode(None), lambda: tokenizer.batch("a red circle"), lambda: tokenizer.batch([]),
                 lambda: tokenizer.batch(["a red circle"], length=2), lambda: train_text_tokenizer(["  ", ""]),
                 lambda: train_text_tokenizer("a red circle"), lambda: TextTokenizer(b"not a model")):
        with pytest.raises(ValueError):
            call()


def test_truncation_warns_and_keeps_bos_eos(tokenizer):
    long_prompt = " ".join(CAPTIONS[:3])
    with pytest.warns(UserWarning, match="cut"):
        ids = tokenizer.encode(long_prompt)
    assert len(ids) == tokenizer.max_length and ids[0] == 2 and ids[-1] == 3
    with pytest.warns(UserWarning):
        batch = tokenizer.batch([long_prompt], length=5)
    assert batch[0].tolist()[-1] == 3 and batch.shape == (1, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode("a red circle moves up")  # fits: no warning


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = TextTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.max_length == tokenizer.max_length and loaded.vocab_size == tokenizer.vocab_size
    prompts = ["a blue circle moves right", "a red box"]  # unseen words fall back to characters, "x" to unk
    assert torch.equal(loaded.batch(prompts), tokenizer.batch(prompts))
    assert 1 in loaded.encode("a red box")


def test_load_rejects_missing_and_foreign_dirs(tmp_path):
    with pytest.raises(ValueError, match="train one"):
        TextTokenizer.from_pretrained(tmp_path / "missing")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "text_tokenizer.model").write_bytes(b"x")
    (foreign / "config.json").write_text(json.dumps({"model_type": "tokvid_generator"}))
    with pytest.raises(ValueError, match="is not a text tokenizer"):
        TextTokenizer.from_pretrained(foreign)


def test_manifest_captions_reads_captions_and_story_prompts():
    items = [{"path": "a.mp4", "caption": "a red circle moves up"},
             {"path": "b.mp4", "story": [{"prompt": "a red circle stays still", "frames": 8},
                                         {"prompt": "a red circle moves left", "frames": 8}]}]
    assert manifest_captions(items) == ["a red circle moves up", "a red circle stays still", "a red circle moves left"]
    with pytest.raises(ValueError, match="item 1"):
        manifest_captions([{"path": "c.mp4"}])


def test_script_trains_from_manifest_and_fails_cleanly(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": f"{i}.mp4", "caption": c}) for i, c in enumerate(CAPTIONS)))
    done = subprocess.run([sys.executable, str(SCRIPT), "--manifest", str(manifest), "--out", str(tmp_path / "tok"),
                           "--vocab-size", "128", "--max-length", "10"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert TextTokenizer.from_pretrained(tmp_path / "tok").max_length == 10
    failed = subprocess.run([sys.executable, str(SCRIPT), "--captions", str(tmp_path / "none.txt"),
                             "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert failed.returncode == 2
    assert len(failed.stderr.strip().splitlines()) == 1 and "error" in failed.stderr
