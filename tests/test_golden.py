"""Golden outputs: the bundled models' frames and codes, bit for bit.

The hashes were recorded before the code was reorganised into model / sampler / engine files; a
refactor changes structure, not behaviour, so every one must stay identical. A deliberate change of
behaviour (new weights, a new default) re-records them: `python tests/test_golden.py` prints the table.
"""
import hashlib
import sys

import numpy as np
import pytest
import torch

import tokvid
from tokvid.models.video_tokenizer import BUNDLED_DIR

HAS_BUNDLE = (BUNDLED_DIR / "shapes" / "pipeline.json").exists() and (BUNDLED_DIR / "general").is_dir()

STORY_3 = [("a red circle moves right", 16), ("a red circle moves down", 8), ("a red circle stays still", 8)]
STORY_12 = [(f"a cyan triangle moves {d}", 16) for d in ("left", "up", "right", "down") * 3]

GOLDEN = {
    "single_default": "a9ecc077fb6be1cc5fa556014ccce241975ba251d82a854ea4515ac4fbe2588d",
    "single_cfg3_negative": "b23213b12b1b90cc8838d74c5467be2f13df91d8990ebbeb755d91be0290b905",
    "single_greedy_topk": "ff0a21f7f48a471092797cabf5cdc127d65ee53ab10402764e0816f445c2a8db",
    "story_3": "eaa899ed9cfdb61d8a857b8c59240f9bf3313ebb05f0556904228a5a76576d6e",
    "story_12": "b585650b9d503b28bdf3f623bcb9037f7ce744b8989c7e37c3b239e916ffe14e",
    "primed": "c52aeac0383bb9a67ab61f45fe63e642626bd27fc30796a0171f9841bcb003f2",
    "image": "dc875ce1ff1c8606baeece0d536021fe3a940e3f4e3effad06364324e7379c0a",
    "codes_shapes": "7bc6b33926364f48bdbbce7cf2534c55858da8d3d9dbbd8c97e50e63772ae5b1",
    "codes_general": "a0cea59c58f54883d463ed5ac1c026d232b48710b8d490231bd69d44fedfa6af",
    "fingerprints_shapes": "fdefe89a7684eac2 12579b8839578e49",
    "fingerprints_general": "a21245660fce42b1 cf47939268d99af4",
}


def digest(array) -> str:
    array = np.ascontiguousarray(array.numpy() if torch.is_tensor(array) else array)
    return hashlib.sha256(array.tobytes() + str((array.dtype, array.shape)).encode()).hexdigest()


def tokenizer_input() -> torch.Tensor:
    """A fixed 9-frame 64x64 clip: smooth colour ramps plus a moving square, in [-1, 1]."""
    t, y, x = torch.meshgrid(torch.arange(9.0), torch.arange(64.0), torch.arange(64.0), indexing="ij")
    video = torch.stack([torch.sin(x / 7 + t / 3), torch.cos(y / 9 - t / 4), torch.sin((x + y) / 11)])
    square = ((x - 10 - 3 * t).abs() < 6) & ((y - 30).abs() < 6)
    return torch.where(square, torch.tensor([0.9, -0.8, 0.2])[:, None, None, None], video)[None].clamp(-1, 1)


def golden_outputs() -> dict[str, str]:
    pipe = tokvid.TokVidPipeline.from_pretrained()
    prime = pipe("a blue square stays still", num_frames=5, seed=3).frames
    outputs = {
        "single_default": pipe("a red circle moves right", num_frames=17, seed=0).frames,
        "single_cfg3_negative": pipe("a green square moves up", num_frames=17, seed=1, cfg_scale=3.0,
                                     negative_prompt="a green square stays still").frames,
        "single_greedy_topk": pipe("a white triangle moves left", num_frames=9, seed=2, temperature=0.0,
                                   top_k=50, first_chunk_candidates=1, min_code_count=0).frames,
        "story_3": pipe.story(STORY_3, seed=4).frames,
        "story_12": pipe.story(STORY_12, seed=5).frames,
        "primed": pipe("a blue square moves left", num_frames=9, seed=0, prime_frames=prime).frames,
        "image": pipe("a magenta circle stays still", num_frames=1, seed=6).frames,
    }
    for name in ("shapes", "general"):
        tokenizer = tokvid.VideoTokenizer.from_pretrained(name)
        outputs[f"codes_{name}"] = tokenizer.encode(tokenizer_input())
    hashes = {name: digest(value) for name, value in outputs.items()}
    for name in ("shapes", "general"):  # token shards record these: they must survive any reorganisation
        tokenizer = tokvid.VideoTokenizer.from_pretrained(name)
        hashes[f"fingerprints_{name}"] = f"{tokenizer.fingerprint()} {tokenizer.codes_fingerprint()}"
    return hashes


@pytest.fixture(scope="module")
def recorded():
    return golden_outputs()


@pytest.mark.skipif(not HAS_BUNDLE, reason="the bundled models are not in this checkout")
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_bundled_outputs_are_bit_identical(recorded, name):
    assert recorded[name] == GOLDEN[name], f"{name} changed: the bundled model no longer makes the same output"


if __name__ == "__main__":
    torch.set_num_threads(1)
    for key, value in golden_outputs().items():
        print(f'    "{key}": "{value}",', file=sys.stdout)
