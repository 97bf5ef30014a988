"""Measure the peer, phenaki-pytorch 0.5.0 (C-ViViT + MaskGIT), at the configuration the tokvid
benchmarks compare against. Runs with the peer venv's python (bench/setup_peer.sh), never tokvid's:

    bench/.peer-venv/bin/python bench/peer_harness.py --phases params,tok_infer,gen_video,gen_story
    bench/.peer-venv/bin/python bench/peer_harness.py --phases tok_quality --set clips='"clips.npy"'
    bench/.peer-venv/bin/python bench/peer_harness.py --dump-config      # the defaults as JSON
    bench/.peer-venv/bin/python bench/peer_harness.py --check            # tiny build + sample: is the venv sound?

Each phase runs in a fresh child process (its peak RSS is its own); timings are the median of
`reps` runs after one warm-up. bench/tokenizer.py and bench/generate.py call single phases of this
file the same way, so both sides of a comparison are measured in the same run.

Two things the peer needs here that it does not do itself, both done without touching its files:
- torchvision: PyPI only offers CUDA builds, whose C++ ops cannot load beside CPU torch, and its
  import then fails registering fake kernels for those ops. The ops are declared schema-only first;
  phenaki never calls them.
- text: no T5 weights can be downloaded. A T5 config is registered in the peer's cache so its
  constructor does not go to the network, and its text encoder is replaced by a stand-in that costs
  nothing. text_standin "prompt" (the speed phases): a fixed random embedding per prompt (text_len x
  text_dim, seeded by the prompt). "words" (bench/peer_train.py, the scenes comparison): a frozen
  encoder's fair stand-in, row j = (vector of word j, seeded by the word + vector of position j) / sqrt 2,
  zero rows after the last word (the peer masks those), so prompts that share words share rows and an
  unseen combination of seen words is not an unrelated embedding.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULTS = {
    "seed": 0,
    "reps": 3,
    "threads": common.DEFAULT_THREADS,
    # clips
    "frames": 17,
    "image_size": 64,
    "batch": 4,  # tokenizer inference batch
    # C-ViViT
    "patch_size": 8,
    "temporal_patch_size": 2,
    "tok_dim": 256,
    "tok_spatial_depth": 2,
    "tok_temporal_depth": 2,
    "tok_heads": 4,
    "tok_dim_head": 64,
    "codebook_size": 8192,  # LFQ: 13 bits per token
    # MaskGIT
    "tr_dim": 256,
    "tr_depth": 4,
    "tr_heads": 4,
    "tr_dim_head": 64,
    "max_seq_len": 1024,
    # text stand-in for T5
    "text_dim": 768,
    "text_len": 16,
    "text_standin": "prompt",  # or "words" (see the module doc)
    # sampling
    "steps": 18,
    "cond_scale": 3.0,
    "temperature": 0.9,
    "prompt": "a red circle moves right",
    "story_prompts": ["a red circle moves right", "a red circle moves down"],
    "story_frames": [17, 16],
    "prime_length": 5,
    # tok_quality
    "clips": None,  # .npy of uint8 (N,T,H,W,3) clips
    "weights": None,  # optional C-ViViT state dict (.pt); None = random init
    "recon_out": None,  # optional .npz to write reconstructions (uint8) and codes into
}
T5_STANDIN_NAME = "tokvid-bench/t5-standin"


# ----------------------------------------------------------------------------------------------
# importing the peer


def import_torchvision():
    """Import torchvision; if its CUDA-only ops are missing, declare them schema-only and retry."""
    import torch

    declared = set()
    for _ in range(8):
        try:
            return importlib.import_module("torchvision")
        except RuntimeError as error:
            match = re.search(r"operator (torchvision::\w+) does not exist", str(error))
            if not match or match.group(1) in declared:
                raise
            for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
                del sys.modules[name]
            # nms and qnms are the ops torchvision registers fake kernels for at import
            torch.library.define(match.group(1), "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            declared.add(match.group(1))
    raise RuntimeError("torchvision still fails to import after declaring its missing ops")


def import_peer():
    import_torchvision()
    import phenaki_pytorch
    from phenaki_pytorch import t5

    return phenaki_pytorch, t5


def build_cvivit(cfg: dict):
    phenaki_pytorch, _ = import_peer()
    import torch

    torch.manual_seed(cfg["seed"])
    model = phenaki_pytorch.CViViT(
        dim=cfg["tok_dim"], codebook_size=cfg["codebook_size"], image_size=cfg["image_size"],
        patch_size=cfg["patch_size"], temporal_patch_size=cfg["temporal_patch_size"],
        spatial_depth=cfg["tok_spatial_depth"], temporal_depth=cfg["tok_temporal_depth"],
        heads=cfg["tok_heads"], dim_head=cfg["tok_dim_head"],
        use_vgg_and_gan=False,  # the GAN path needs ImageNet VGG weights; inference never uses it
        lookup_free_quantization=True)
    if cfg.get("weights"):
        model.load_state_dict(torch.load(cfg["weights"], map_location="cpu"))
    return model.eval()


def build_phenaki(cfg: dict):
    phenaki_pytorch, t5 = import_peer()
    import torch
    from transformers import T5Config

    cvivit = build_cvivit(cfg)
    maskgit = phenaki_pytorch.MaskGit(
        dim=cfg["tr_dim"], num_tokens=cfg["codebook_size"], max_seq_len=cfg["max_seq_len"],
        depth=cfg["tr_depth"], heads=cfg["tr_heads"], dim_head=cfg["tr_dim_head"], dim_context=cfg["text_dim"])
    # Phenaki() asks for the T5 config even when text_embed_dim is given; answer from the cache
    t5.T5_CONFIGS[T5_STANDIN_NAME] = {"config": T5Config(d_model=cfg["text_dim"])}
    model = phenaki_pytorch.Phenaki(cvivit=cvivit, maskgit=maskgit, steps=cfg["steps"], t5_name=T5_STANDIN_NAME,
                                    text_embed_dim=cfg["text_dim"])
    model.encode_texts = text_standin(cfg)
    return model.eval()


def text_standin(cfg: dict):
    """encode_texts(texts, output_device=None) -> (batch, text_len, text_dim): the stand-in for T5
    named by cfg["text_standin"] (module doc)."""
    import torch

    text_len, text_dim, kind = cfg["text_len"], cfg["text_dim"], cfg["text_standin"]
    if kind not in ("prompt", "words"):
        raise SystemExit(f"text_standin must be 'prompt' or 'words', got {kind!r}")

    def vector(key: str, rows: int = 1):
        return torch.randn(rows, text_dim, generator=torch.Generator().manual_seed(zlib.crc32(key.encode())))

    def embed(text: str):
        if kind == "prompt":
            return vector(text, text_len)
        rows = torch.zeros(text_len, text_dim)
        for position, word in enumerate(text.split()[:text_len]):
            rows[position] = (vector(f"word:{word}")[0] + vector(f"position:{position}")[0]) / math.sqrt(2)
        return rows

    def encode_texts(texts, output_device=None):
        texts = [texts] if isinstance(texts, str) else list(texts)
        return torch.stack([embed(text) for text in texts]).to(output_device or "cpu")

    return encode_texts


def num_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def token_facts(cvivit, cfg: dict) -> dict:
    tokens = cvivit.num_tokens_per_frames(cfg["frames"])
    pixels = cfg["frames"] * cfg["image_size"] ** 2
    return {"parameters": num_parameters(cvivit), "vocab_size": cfg["codebook_size"], "tokens_per_clip": tokens,
            "latent_grid": list(cvivit.get_video_patch_shape(cfg["frames"])),
            "bits_per_pixel": tokens * math.log2(cfg["codebook_size"]) / pixels}


# ----------------------------------------------------------------------------------------------
# phases


def phase_params(cfg: dict) -> dict:
    model = build_phenaki(cfg)
    return {"tokenizer_parameters": num_parameters(model.cvivit), "maskgit_parameters": num_parameters(model.maskgit),
            "text_encoder": "fixed random embeddings (no T5 weights)", **token_facts(model.cvivit, cfg)}


def phase_tok_infer(cfg: dict) -> dict:
    import torch

    cvivit = build_cvivit(cfg)
    torch.manual_seed(cfg["seed"])
    size = cfg["image_size"]
    video = torch.rand(cfg["batch"], 3, cfg["frames"], size, size)  # the peer's loaders give [0,1]
    with torch.inference_mode():
        codes = cvivit(video, return_only_codebook_ids=True)
        flat = codes.flatten(1)  # its decode takes flattened ids only
        encode = common.time_median(lambda: cvivit(video, return_only_codebook_ids=True), reps=cfg["reps"])
        decode = common.time_median(lambda: cvivit.decode_from_codebook_indices(flat), reps=cfg["reps"])
    frames = cfg["batch"] * cfg["frames"]
    return {**token_facts(cvivit, cfg), "batch": cfg["batch"], "frames": frames, "encode": encode, "decode": decode,
            "encode_frames_per_s": frames / encode["median_s"], "decode_frames_per_s": frames / decode["median_s"]}


def phase_tok_quality(cfg: dict) -> dict:
    """Reconstruct the clips in cfg['clips']; PSNR here, SSIM if scikit-image is importable."""
    import numpy as np
    import torch

    if not cfg.get("clips"):
        raise SystemExit("tok_quality needs clips: a .npy of uint8 (N,T,H,W,3)")
    clips = np.load(cfg["clips"])
    if clips.dtype != np.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise SystemExit(f"clips must be uint8 (N,T,H,W,3), got {clips.dtype} {clips.shape}")
    cfg = {**cfg, "frames": clips.shape[1], "image_size": clips.shape[2]}
    cvivit = build_cvivit(cfg)
    video = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255.0
    with torch.inference_mode():
        codes = cvivit(video, return_only_codebook_ids=True)
        recon = cvivit.decode_from_codebook_indices(codes.flatten(1))
    recon = (recon.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    if cfg.get("recon_out"):
        np.savez(cfg["recon_out"], recon=recon, codes=codes.numpy())
    try:
        quality = common.mean_quality(list(clips), list(recon))
    except ImportError:
        quality = {**common.mean_quality(list(clips), list(recon), with_ssim=False), "ssim": None}
    unique = int(np.unique(codes.numpy()).size)
    return {**token_facts(cvivit, cfg), **quality, "num_clips": len(clips), "codes_used": unique,
            "weights": cfg.get("weights") or "untrained (random init)"}


def _sample_timing(cfg: dict, texts: list[str], num_frames, prime_lengths) -> dict:
    import torch

    model = build_phenaki(cfg)
    phenaki_pytorch, _ = import_peer()
    shapes = []

    def run():
        torch.manual_seed(cfg["seed"])
        video, _ = phenaki_pytorch.make_video(model, texts=texts, num_frames=num_frames, prime_lengths=prime_lengths)
        shapes.append(list(video.shape))

    # make_video has no cond_scale argument; sample() defaults to 3, so other values go through a wrapper
    if cfg["cond_scale"] != 3.0 or cfg["temperature"] != 0.9:
        plain_sample = model.sample
        model.sample = lambda **kw: plain_sample(**kw, cond_scale=cfg["cond_scale"],
                                                 starting_temperature=cfg["temperature"])
    timing = common.time_median(run, reps=cfg["reps"])
    frames = shapes[-1][2]
    return {"timing": timing, "seconds": timing["median_s"], "frames": frames, "steps": cfg["steps"],
            "cond_scale": cfg["cond_scale"], "video_shape": shapes[-1], "frames_per_s": frames / timing["median_s"],
            "maskgit_parameters": num_parameters(model.maskgit)}


def phase_gen_video(cfg: dict) -> dict:
    """One video of cfg['frames'] frames through make_video (one scene)."""
    return {"kind": "video", **_sample_timing(cfg, [cfg["prompt"]], cfg["frames"], ())}


def phase_gen_story(cfg: dict) -> dict:
    """A story: one scene per prompt, each later scene primed on the last prime_length frames."""
    prompts, frames = list(cfg["story_prompts"]), tuple(cfg["story_frames"])
    if len(prompts) != len(frames):
        raise SystemExit("story_prompts and story_frames need the same length")
    primes = (cfg["prime_length"],) * (len(prompts) - 1)
    return {"kind": "story", "scenes": list(zip(prompts, frames)), "prime_length": cfg["prime_length"],
            **_sample_timing(cfg, prompts, frames, primes)}


def phase_check(cfg: dict) -> dict:
    """Smallest useful build: encode, decode and a 2-step sample, to show the venv works."""
    import torch

    tiny = {**cfg, "tok_dim": 32, "tr_dim": 32, "tok_heads": 2, "tr_heads": 2, "tok_dim_head": 16, "tr_dim_head": 16,
            "tr_depth": 1, "tok_spatial_depth": 1, "tok_temporal_depth": 1, "codebook_size": 256, "image_size": 16,
            "patch_size": 8, "frames": 5, "steps": 2, "text_len": 4, "text_dim": 32, "max_seq_len": 64}
    model = build_phenaki(tiny)
    video = torch.rand(1, 3, 5, 16, 16)
    with torch.inference_mode():
        codes = model.cvivit(video, return_only_codebook_ids=True)
        recon = model.cvivit.decode_from_codebook_indices(codes.flatten(1))
    torch.manual_seed(0)
    sample = model.sample(texts=["a test"], num_frames=5)
    import phenaki_pytorch

    return {"ok": tuple(recon.shape) == (1, 3, 5, 16, 16) and tuple(sample.shape) == (1, 3, 5, 16, 16),
            "versions": peer_versions(), "phenaki_file": phenaki_pytorch.__file__}


def peer_versions() -> dict:
    """Versions of the peer and of what it runs on, in this venv."""
    import torch
    import torchvision
    import transformers

    return {"phenaki_pytorch": _version("phenaki-pytorch"), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "transformers": transformers.__version__,
            "vector_quantize_pytorch": _version("vector-quantize-pytorch")}


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


PHASES = {"params": phase_params, "tok_infer": phase_tok_infer, "tok_quality": phase_tok_quality,
          "gen_video": phase_gen_video, "gen_story": phase_gen_story, "check": phase_check,
          "matmul": common.matmul_phase}


def child_phase(params: dict) -> dict:
    """run_phase hands only overrides; fill in the defaults."""
    return {**DEFAULTS, **params}


# ----------------------------------------------------------------------------------------------
# command line


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="params,tok_infer,gen_video,gen_story",
                        help=f"comma-separated, from {', '.join(PHASES)}")
    parser.add_argument("--config", help="JSON file of overrides of the defaults (see --dump-config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override one setting, value as JSON (e.g. --set batch=1 --set prompt='\"a cat\"')")
    parser.add_argument("--reps", type=int, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default 2)")
    parser.add_argument("--out", help="write the JSON here (default: stdout only)")
    parser.add_argument("--dump-config", action="store_true", help="print the default settings as JSON and exit")
    parser.add_argument("--check", action="store_true", help="build tiny peer models in-process and sample once")
    return parser.parse_args()


def settings_from(args) -> dict:
    cfg = dict(DEFAULTS)
    if args.config:
        cfg.update(json.loads(Path(args.config).read_text()))
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"--set {item!r}: use KEY=JSON with KEY one of {sorted(DEFAULTS)}")
        cfg[key] = json.loads(value)
    if args.reps is not None:
        cfg["reps"] = args.reps
    if args.threads is not None:
        cfg["threads"] = args.threads
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; see --dump-config")
    return cfg


def main() -> None:
    args = parse_args()
    cfg = settings_from(args)
    if args.dump_config:
        print(json.dumps(cfg, indent=2))
        return
    if args.check:
        common.set_threads(cfg["threads"])
        result = phase_check(cfg)
        print(json.dumps(result, indent=2))
        sys.exit(0 if result["ok"] else 1)
    results = {"run": common.run_info(cfg["threads"]), "settings": cfg, "phases": {}}
    for phase in [p.strip() for p in args.phases.split(",") if p.strip()]:
        if phase not in PHASES:
            raise SystemExit(f"unknown phase {phase!r}; choose from {', '.join(PHASES)}")
        print(f"running {phase} ...", file=sys.stderr, flush=True)
        overrides = {k: v for k, v in cfg.items() if k != "threads"}
        results["phases"][phase] = common.run_phase(__file__, phase, overrides, threads=cfg["threads"])
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    if common.is_child_call():
        common.child_main({name: (lambda fn: lambda params: fn(child_phase(params)))(fn) for name, fn in PHASES.items()})
    else:
        main()
