"""Generation benchmark: speed vs MaskGIT steps, KV cache vs full recompute, time and memory vs
length, and the default settings side by side with the peer's make_video.

    python bench/generate.py --out bench/results/generate.json               # the bundled default model
    python bench/generate.py --model runs/pipeline_dir --out gen.json
    python bench/generate.py --untrained tiny --quick                        # smoke run on random weights

Every number is measured in this run; each measured phase runs in a fresh child process, so its
peak RSS is its own. Speed comparisons with the peer are ratios taken side by side in this run,
next to an fp32 matmul GFLOP/s reference of the same run. An `--untrained` model has random weights:
its speed is that of the architecture, its videos are noise.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from prefix_sampler import sample_without_cache  # noqa: E402
from tokvid.sampling import sample  # noqa: E402

PROMPT = "a red circle moves right"
STORY = [("a red circle moves right", 16), ("a red circle moves down", 16)]
PEER_STEPS, PEER_CFG = 18, 3.0  # the peer's sampling defaults; our pipeline is also timed at them


# ----------------------------------------------------------------------------------------------
# child phases


def _load(params: dict):
    import tokvid

    return tokvid.TokVidPipeline.from_pretrained(params["model"])


def _prompt_text(pipe, num_chunks: int, prompt: str = PROMPT):
    """(1, n, L) prompt ids, the same prompt for every chunk."""
    length = pipe.generator.config.text_length
    return pipe.text_tokenizer.batch([prompt], length=length)[:, None].expand(1, num_chunks, length).contiguous()


def _chunks_for(pipe, num_frames: int) -> int:
    from tokvid.story import num_chunks_for_frames

    return num_chunks_for_frames(num_frames, pipe.video_tokenizer.temporal_compression)


def _model_facts(pipe) -> dict:
    config = pipe.generator.config
    return {"generator_parameters": pipe.generator.num_parameters(), "dim": config.dim, "depth": config.depth,
            "chunk_tokens": config.chunk_tokens, "text_length": config.text_length,
            "window_chunks": config.window_chunks, "fps": pipe.fps,
            "temporal_compression": pipe.video_tokenizer.temporal_compression,
            "defaults": {k: v for k, v in vars(pipe.sampling).items()}}


def phase_steps(params: dict) -> dict:
    """One video of `frames` frames at `steps` MaskGIT steps: tokens only, and end to end (decode included)."""
    import torch

    pipe = _load(params)
    sampling, steps, frames = pipe.sampling, params["steps"], params["frames"]
    chunks = _chunks_for(pipe, frames)
    text = _prompt_text(pipe, chunks)

    def tokens_only():
        sample(pipe.generator, text, chunks, config=sampling, steps=steps, generator=torch.Generator().manual_seed(0))

    generate = common.time_median(tokens_only, reps=params["reps"])
    end_to_end = common.time_median(lambda: pipe(PROMPT, num_frames=frames, seed=0, steps=steps), reps=params["reps"])
    video_seconds = frames / pipe.fps
    return {"steps": steps, "frames": frames, "chunks": chunks, "cfg_scale": sampling.cfg_scale,
            "generate": generate, "end_to_end": end_to_end,
            "seconds_per_chunk": generate["median_s"] / chunks,
            "seconds_per_video_second": end_to_end["median_s"] / video_seconds, **_model_facts(pipe)}


def phase_kv(params: dict) -> dict:
    """Logits of `chunks` chunks: full block-causal recompute (`forward`) vs chunk by chunk through the KV cache."""
    import torch

    pipe = _load(params)
    generator, config, chunks = pipe.generator, pipe.generator.config, params["chunks"]
    rng = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.codebook_size, (1, chunks, config.chunk_height, config.chunk_width), generator=rng)
    # half the positions masked, as midway through sampling
    tokens = tokens.masked_fill(torch.rand(tokens.shape, generator=rng) < 0.5, config.mask_id)
    text = _prompt_text(pipe, chunks)
    with torch.inference_mode():
        full = generator(tokens, text)
        cached = generator.logits_with_cache(tokens, text)
        recompute = common.time_median(lambda: generator(tokens, text), reps=params["reps"])
        with_cache = common.time_median(lambda: generator.logits_with_cache(tokens, text), reps=params["reps"])
        # Sampling: the cache serves past chunks; without it every MaskGIT step re-runs the whole prefix.
        codes = {}

        def sample_codes(use_cache: bool):
            rng = torch.Generator().manual_seed(0)
            codes[use_cache] = sample(generator, text, config=pipe.sampling, generator=rng) if use_cache \
                else sample_without_cache(generator, text, pipe.sampling, generator=rng)

        sample_cached = common.time_median(lambda: sample_codes(True), reps=params["reps"])
        sample_recompute = common.time_median(lambda: sample_codes(False), reps=1, warmup=0)
    return {"chunks": chunks, "full_recompute": recompute, "kv_cache": with_cache,
            "speedup": recompute["median_s"] / with_cache["median_s"],
            "max_abs_logit_diff": float((full.float() - cached.float()).abs().max()),
            "max_abs_logit": float(full.float().abs().max()),
            "sampling_cached": sample_cached, "sampling_recompute": sample_recompute,
            "sampling_speedup": sample_recompute["median_s"] / sample_cached["median_s"],
            "same_samples": bool(torch.equal(codes[True], codes[False])), **_model_facts(pipe)}


def phase_length(params: dict) -> dict:
    """A video of `chunks` latent chunks end to end at the default settings."""
    pipe = _load(params)
    chunks = params["chunks"]
    frames = 1 + (chunks - 1) * pipe.video_tokenizer.temporal_compression
    shapes = []
    timing = common.time_median(lambda: shapes.append(pipe(PROMPT, num_frames=frames, seed=0).frames.shape),
                                reps=params["reps"])
    return {"chunks": chunks, "frames": frames, "video_shape": list(shapes[-1]), "timing": timing,
            "seconds": timing["median_s"], "seconds_per_chunk": timing["median_s"] / chunks, **_model_facts(pipe)}


def phase_default(params: dict) -> dict:
    """The 17-frame video or the 2-prompt 33-frame story, at the pipeline's defaults unless overridden."""
    pipe = _load(params)
    overrides = {k: params[k] for k in ("steps", "cfg_scale") if params.get(k) is not None}
    shapes = []
    if params["kind"] == "video":
        run = lambda: shapes.append(pipe(PROMPT, num_frames=17, seed=0, **overrides).frames.shape)  # noqa: E731
    else:
        run = lambda: shapes.append(pipe.story(STORY, seed=0, **overrides).frames.shape)  # noqa: E731
    timing = common.time_median(run, reps=params["reps"])
    settings = {**vars(pipe.sampling), **overrides}
    return {"kind": params["kind"], "video_shape": list(shapes[-1]), "frames": shapes[-1][0], "timing": timing,
            "seconds": timing["median_s"], "steps": settings["steps"], "cfg_scale": settings["cfg_scale"],
            **_model_facts(pipe)}


PHASES = {"steps": phase_steps, "kv": phase_kv, "length": phase_length, "default": phase_default,
          "matmul": common.matmul_phase}


# ----------------------------------------------------------------------------------------------
# an untrained pipeline, for smoke runs and architecture-only speed


def build_untrained_pipeline(directory: Path, preset: str) -> Path:
    """Random-weight pipeline: video tokenizer and generator of size `preset`, text tokenizer on shapes captions."""
    import itertools

    import torch
    import tokvid
    from tokvid import shapes
    from tokvid.models.generator import Generator, generator_config_preset
    from tokvid.pipeline import save_pipeline
    from tokvid.models.text_tokenizer import train_text_tokenizer

    torch.manual_seed(0)
    video_tokenizer = tokvid.VideoTokenizer(tokvid.video_tokenizer_preset(preset))
    captions = [shapes.caption(c, s, m) for c, s, m in itertools.product(shapes.COLOURS, shapes.SHAPES, shapes.MOTIONS)]
    text_tokenizer = train_text_tokenizer(captions, vocab_size=64)
    grid = 64 // video_tokenizer.spatial_compression
    config = generator_config_preset(preset, codebook_size=video_tokenizer.vocab_size,
                                     text_vocab_size=text_tokenizer.vocab_size, chunk_height=grid, chunk_width=grid)
    save_pipeline(directory, Generator(config), text_tokenizer, video_tokenizer, fps=8.0)
    return directory


# ----------------------------------------------------------------------------------------------
# orchestration


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="pipeline directory or bundled name (default: the bundled model)")
    source.add_argument("--untrained", metavar="PRESET", help="benchmark a random-weight pipeline of this preset "
                        "(tiny/small/base): architecture speed only")
    parser.add_argument("--steps-list", default="1,2,4,8,12", help="MaskGIT steps for the steps sweep")
    parser.add_argument("--steps-frames", type=int, default=33, help="video length (frames) of the steps sweep")
    parser.add_argument("--kv-chunks", default="2,8,16,32", help="chunk counts for KV cache vs full recompute")
    parser.add_argument("--lengths", default="8,16,32,64", help="chunk counts for time and memory vs length")
    parser.add_argument("--peer-steps", type=int, default=PEER_STEPS,
                        help="MaskGIT steps of the side-by-side rows (the peer's default is 18)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (median) after one warm-up")
    parser.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    parser.add_argument("--peer-venv", default=None, help="peer venv (default bench/.peer-venv)")
    parser.add_argument("--no-peer", action="store_true", help="skip the phenaki-pytorch rows")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: steps 1,2; kv 2,4; lengths 2,4; 9-frame sweep; 1 rep; 2 steps side by side")
    parser.add_argument("--out", default=None, help="JSON file for all results")
    args = parser.parse_args()
    if args.quick:
        args.steps_list, args.kv_chunks, args.lengths, args.steps_frames, args.reps = "1,2", "2,4", "2,4", 9, 1
        args.peer_steps = 2
    to_ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    args.steps_list, args.kv_chunks, args.lengths = map(to_ints, (args.steps_list, args.kv_chunks, args.lengths))
    return args


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="tokvid-bench-") as tmp:
        model = args.model
        if args.untrained:
            model = str(build_untrained_pipeline(Path(tmp) / "pipeline", args.untrained))
        else:
            from tokvid.pipeline import resolve_pipeline_dir

            try:
                resolve_pipeline_dir(model)
            except ValueError as error:
                raise SystemExit(f"error: {error}\n(for architecture speed alone: --untrained tiny|small|base)")
        run(args, model)


def run(args, model: str | None) -> None:
    script = Path(__file__).resolve()
    label = f"untrained {args.untrained} (random weights)" if args.untrained else (model or "bundled default")
    results = {"run": common.run_info(args.threads), "model": label, "prompt": PROMPT, "story": STORY}
    results["matmul"] = common.matmul_reference(script, args.threads)
    print(f"model: {label}")
    print(f"fp32 matmul reference: {results['matmul']['gflops']:.1f} GFLOP/s on {args.threads} threads "
          f"(load average {results['run']['loadavg_at_start'][0]})")
    base = {"model": model, "reps": args.reps}
    phase = lambda name, **params: common.run_phase(script, name, {**base, **params}, threads=args.threads)  # noqa: E731

    results["steps"] = [phase("steps", steps=s, frames=args.steps_frames) for s in args.steps_list]
    results["kv"] = [phase("kv", chunks=n) for n in args.kv_chunks]
    results["length"] = [phase("length", chunks=n) for n in args.lengths]
    if len(results["length"]) > 1:
        first, last = results["length"][0], results["length"][-1]
        results["length_ratios"] = {"chunks": [first["chunks"], last["chunks"]],
                                    "time": last["seconds"] / first["seconds"],
                                    "peak_rss": last["peak_rss_mb"] / first["peak_rss_mb"]}
    results["default"] = {
        "ours_defaults": {kind: phase("default", kind=kind) for kind in ("video", "story")},
        "ours_peer_settings": {kind: phase("default", kind=kind, steps=args.peer_steps, cfg_scale=PEER_CFG)
                               for kind in ("video", "story")},
        "peer": None,
    }
    if not args.no_peer and common.peer_python(args.peer_venv) is not None:
        peer = {"reps": args.reps, "steps": args.peer_steps, "cond_scale": PEER_CFG, "prompt": PROMPT,
                "story_prompts": [p for p, _ in STORY], "story_frames": [17, 16], "prime_length": 5}
        results["default"]["peer"] = {
            "video": common.run_peer_phase("gen_video", {**peer, "frames": 17}, args.threads, args.peer_venv),
            "story": common.run_peer_phase("gen_story", peer, args.threads, args.peer_venv)}
    elif not args.no_peer:
        common.run_peer_phase("gen_video", {}, args.threads, args.peer_venv)  # prints why the peer rows are missing
    report(results)
    common.write_json(args.out, results)


def report(results: dict) -> None:
    default = results["default"]
    peer = default["peer"] or {}
    common.warn_if_busy(results["steps"] + results["kv"] + results["length"] + list(default["ours_defaults"].values())
                        + list(peer.values()), results["run"]["threads"])

    common.print_table("Speed vs MaskGIT steps (one prompt; per chunk = tokens only; per video second = end to end)",
                       ["steps", "frames", "chunks", "s/chunk", "s/video s", "end-to-end s", "RSS MB"],
                       [[r["steps"], r["frames"], r["chunks"], r["seconds_per_chunk"], r["seconds_per_video_second"],
                         r["end_to_end"]["median_s"], r["peak_rss_mb"]] for r in results["steps"]])

    common.print_table("Logits of n chunks: full block-causal recompute (forward) vs KV-cached path (logits_with_cache)",
                       ["chunks", "recompute s", "cached s", "speedup", "max |diff|", "max |logit|"],
                       [[r["chunks"], r["full_recompute"]["median_s"], r["kv_cache"]["median_s"], r["speedup"],
                         r["max_abs_logit_diff"], r["max_abs_logit"]] for r in results["kv"]])
    common.print_table("Sampling n chunks at the default settings: KV cache vs re-running the prefix every step",
                       ["chunks", "recompute s", "cached s", "speedup", "same samples"],
                       [[r["chunks"], r["sampling_recompute"]["median_s"], r["sampling_cached"]["median_s"],
                         r["sampling_speedup"], r["same_samples"]] for r in results["kv"]])

    common.print_table("Time and peak RSS vs length (end to end, default settings)",
                       ["chunks", "frames", "seconds", "s/chunk", "peak RSS MB"],
                       [[r["chunks"], r["frames"], r["seconds"], r["seconds_per_chunk"], r["peak_rss_mb"]]
                        for r in results["length"]])
    if "length_ratios" in results:
        lr = results["length_ratios"]
        print(f"time({lr['chunks'][1]})/time({lr['chunks'][0]}) = {lr['time']:.2f} "
              f"(linear would be {lr['chunks'][1] / lr['chunks'][0]:.1f}); "
              f"RSS({lr['chunks'][1]})/RSS({lr['chunks'][0]}) = {lr['peak_rss']:.2f}")

    rows = []
    for kind, label in (("video", "17-frame video"), ("story", "2-prompt 33-frame story")):
        theirs = peer.get(kind)
        for name, ours in (("defaults", default["ours_defaults"][kind]), ("at peer settings", default["ours_peer_settings"][kind])):
            rows.append([f"{label}, tokvid {name}", ours["steps"], ours["cfg_scale"], ours["frames"], ours["seconds"],
                         ours["peak_rss_mb"], common.ratio(theirs["seconds"], ours["seconds"]) if theirs else None])
        if theirs:
            rows.append([f"{label}, peer make_video", theirs["steps"], theirs["cond_scale"], theirs["frames"],
                         theirs["seconds"], theirs["peak_rss_mb"], 1.0])
    common.print_table("Whole videos (speedup = peer seconds / these seconds, same run)",
                       ["what", "steps", "CFG", "frames", "seconds", "peak RSS MB", "speedup"], rows)
    if not peer:
        print("(no peer rows: peer venv absent or --no-peer)")


if __name__ == "__main__":
    if common.is_child_call():
        common.child_main(PHASES)
    else:
        main()
