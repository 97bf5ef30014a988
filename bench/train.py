"""Training throughput and model FLOP utilisation (MFU) of the DeepSpeed trainer.

    python bench/train.py [--models generator tokenizer] [--generator-presets small base] [--steps 12]
                          [--generator-token-patches 1 2] [--out bench/results/train.json]
    python bench/train.py --generator-presets tiny --tokenizer-presets tiny --steps 2 --warmup 1   # smoke run

For reference generators (presets "small" and "base", 64x64 shapes-sized chunks) and a tokenizer
(preset "small", 17x64x64 clips), on synthetic data ("tiny" presets: smoke runs only):
  - one process x 2 threads, and 2 ranks x 1 thread under `deepspeed --num_gpus 2` (ZeRO-2, gloo);
  - tokens/s (generator) or frames/s (tokenizer): median over the steps after --warmup; generators with
    a token patch (2: a 2x2 patch of tokens per transformer position) are rows of their own;
  - MFU = model FLOP/s / fp32 GEMM FLOP/s, timed inside the same processes just before and after
    training (for 2 ranks: both ranks at once, summed). The GEMM has the shape of the generator's MLP
    (tokens x dim x 4dim); for the tokenizer, whose oneDNN convolutions beat thin GEMMs of their
    own shapes, it is a square 1024 GEMM (near the machine's peak). Model FLOPs come from
    torch's FlopCounterMode (per-op formulas, forward + backward) for the tokenizer; for the generator
    from a closed form (6 x block matmul params per position + attention + head on masked tokens),
    because FlopCounterMode leaves out CPU attention (its count is printed beside, as a check).
Every phase runs in a fresh process; the machine is shared, so compare ratios taken in the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NUM_FRAMES, SIZE = 17, 64
TEXT_LENGTH, TEXT_VOCAB, CODEBOOK = 16, 256, 1000


# ----------------------------------------------------------------------------------------------
# models and synthetic data (built inside child processes)


def _generator_config(params: dict):
    from tokvid.models.generator import generator_config_preset
    from tokvid.story import num_chunks_for_frames

    grid = SIZE // 8
    chunks = num_chunks_for_frames(NUM_FRAMES, 4)
    config = generator_config_preset(params["preset"], codebook_size=CODEBOOK, text_vocab_size=TEXT_VOCAB,
                                     text_length=TEXT_LENGTH, chunk_height=grid, chunk_width=grid,
                                     window_chunks=min(4, chunks), token_patch=params.get("token_patch", 1))
    return config, chunks


class RandomTokenChunks:
    """Uniform random codes and prompt ids: the cost of a step does not depend on the values."""

    def __init__(self, config, chunks: int, items: int = 256):
        self.config, self.chunks, self.items = config, chunks, items

    def __len__(self):
        return self.items

    def load(self, index, rng):
        import torch

        c = self.config
        codes = torch.from_numpy(rng.integers(0, c.codebook_size, (self.chunks, c.chunk_height, c.chunk_width)))
        text = torch.from_numpy(rng.integers(4, c.text_vocab_size, (self.chunks, c.text_length)))
        text[:, 0], text[:, -1] = c.text_bos_id, c.text_eos_id
        return {"codes": codes, "text": text, "chunk_valid": torch.ones(self.chunks, dtype=torch.bool)}

    def collate(self, samples):
        import torch

        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def describe(self, index):
        return f"synthetic item {index}"


class RandomClips:
    def __len__(self):
        return 256

    def load(self, index, rng):
        import torch

        return torch.from_numpy(rng.uniform(-1, 1, (3, NUM_FRAMES, SIZE, SIZE)).astype("float32"))

    def collate(self, samples):
        import torch

        return torch.stack(samples)

    def describe(self, index):
        return f"synthetic clip {index}"


def _setup(params: dict):
    """(build_model, dataset, loss_fn, count_units, unit) for params["model"]."""
    from tokvid.datasets import chunk_token_count, clip_frame_count

    if params["model"] == "generator":
        from tokvid.models.generator import Generator

        config, chunks = _generator_config(params)

        def loss(model, batch, generator):
            return model.training_loss(batch["codes"], batch["text"], batch["chunk_valid"], generator=generator)

        return lambda: Generator(config), RandomTokenChunks(config, chunks), loss, chunk_token_count, "tokens"
    from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

    config = video_tokenizer_preset(params["preset"])
    return (lambda: VideoTokenizer(config), RandomClips(), lambda model, batch, generator: model.training_loss(batch),
            clip_frame_count, "frames")


# ----------------------------------------------------------------------------------------------
# child phases


def matmul_gflops(shape: list[int], reps: int = 7) -> float:
    """fp32 GEMM speed of this process at its thread count, now."""
    import torch

    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / common.time_median(lambda: torch.mm(a, b), reps=reps, warmup=2)["median_s"] / 1e9


def phase_flops(params: dict) -> dict:
    """FLOPs of one forward + backward of a micro-batch, and units (tokens or frames) in it."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    build_model, dataset, loss_fn, count_units, unit = _setup(params)
    torch.manual_seed(0)
    model = build_model()
    batch = dataset.collate([dataset.load(i, np.random.default_rng(i)) for i in range(params["micro_batch"])])
    with FlopCounterMode(display=False) as counter:
        loss, logs = loss_fn(model, batch, torch.Generator().manual_seed(0))
        loss.backward()
    result = {"flops_per_micro_batch": counter.get_total_flops(), "units_per_micro_batch": count_units(batch),
              "unit": unit, "parameters": sum(p.numel() for p in model.parameters())}
    if params["model"] == "generator":
        _, chunks = _generator_config(params)
        result["closed_form_flops"] = generator_closed_form_flops(model, params["micro_batch"], chunks, logs["tokens"])
    return result


def generator_closed_form_flops(model, batch: int, chunks: int, masked_tokens: float) -> float:
    """6 x (block matmul params) per position + attention scores/values over the allowed keys + output head on
    masked tokens, + a token patch's merge and split maps per video position. The training sequence holds a
    clean copy of chunks 0..t-2 besides the masked chunks (it is work the training method needs, so it
    counts)."""
    import torch

    config = model.config
    per_chunk = config.sequence_per_chunk
    window = config.window_chunks
    keys_per_query_chunk = ([min(c + 1, window) * per_chunk for c in range(chunks - 1)]  # clean copy
                            + [(min(c, window - 1) + 1) * per_chunk for c in range(chunks)])  # targets
    positions = batch * len(keys_per_query_chunk) * per_chunk
    keys = batch * per_chunk * sum(keys_per_query_chunk)  # query-key pairs
    block_params = sum(m.weight.numel() for m in model.blocks.modules() if isinstance(m, torch.nn.Linear))
    attention = 12 * config.depth * config.dim * keys  # QK^T and AV, forward + backward
    head = 6 * config.dim * model.head.out_features * masked_tokens
    patch_params = sum(m.weight.numel() for m in (getattr(model.embed, "merge_patch", None),
                                                  getattr(model, "split_patch", None)) if m is not None)
    video_positions = positions // per_chunk * config.chunk_positions
    return 6 * block_params * positions + attention + head + 6 * patch_params * video_positions


def phase_train(params: dict) -> dict:
    """Train on synthetic data. Every rank times the reference GEMM just before and after training,
    under the same load as the training itself; rank 0 returns the median throughput after the
    warmup steps and the GEMM GFLOP/s summed over ranks."""
    import torch
    import torch.distributed as dist

    from tokvid.training.distributed import setup_distributed
    from tokvid.training.engine import TrainingConfig, run_training

    build_model, dataset, loss_fn, count_units, unit = _setup(params)
    setup_distributed()
    before = matmul_gflops(params["shape"])
    with tempfile.TemporaryDirectory() as run_dir:
        config = TrainingConfig(out_dir=run_dir, max_steps=params["steps"], micro_batch=params["micro_batch"],
                                zero_stage=2, save_every=10**9, throughput_unit=unit, warmup_steps=1)
        ds_config = {"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0, "steps_per_print": 10**9}
        run_training(config, ds_config, build_model, dataset, loss_fn, count_units)
        if dist.get_rank() == 0:
            records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    reference = torch.tensor([(before + matmul_gflops(params["shape"])) / 2])
    dist.all_reduce(reference)
    if dist.get_rank() != 0:
        return {"rank": dist.get_rank()}
    rates = [r[f"{unit}_per_s"] for r in records[params["warmup"]:]]
    return {"rank": 0, "unit": unit, "per_s": statistics.median(rates), "steps_timed": len(rates),
            "world_size": dist.get_world_size(), "matmul_gflops": float(reference)}


PHASES = {"flops": phase_flops, "train": phase_train}


def run_under_launcher(params: dict, ranks: int) -> dict:
    """phase_train with `ranks` processes x 1 thread under the deepspeed launcher; rank 0's result."""
    return common.run_launched_phase(Path(__file__), "train", params, ranks)[0]


# ----------------------------------------------------------------------------------------------
# driver


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["generator", "tokenizer"], choices=("generator", "tokenizer"))
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per training run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the median")
    parser.add_argument("--generator-presets", nargs="+", default=["small", "base"], choices=("tiny", "small", "base"),
                        help="generator sizes to measure")
    parser.add_argument("--tokenizer-presets", nargs="+", default=["small"], choices=("tiny", "small"),
                        help="video tokenizer sizes to measure")
    parser.add_argument("--generator-token-patches", nargs="+", type=int, default=[1],
                        help="token patches to measure each generator preset with (2: 2x2 tokens per position)")
    parser.add_argument("--generator-batch", type=int, default=4, help="generator micro-batch (global, split by ranks)")
    parser.add_argument("--tokenizer-batch", type=int, default=2, help="tokenizer micro-batch (global, split by ranks)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args()


def run_name(model: str, preset: str, token_patch: int) -> str:
    """The row name of a measured model: 'generator small', 'generator small patch 2'."""
    return f"{model} {preset}" + (f" patch {token_patch}" if token_patch > 1 else "")


def bench_model(script: Path, model: str, preset: str, token_patch: int, global_batch: int, args) -> dict:
    params = {"model": model, "preset": preset, "token_patch": token_patch, "steps": args.steps, "warmup": args.warmup}
    flops = common.run_phase(script, "flops", {**params, "micro_batch": global_batch}, threads=1)
    if model == "generator":  # the GEMM of the MLP's first layer over every position of a step
        config, chunks = _generator_config(params)
        sequence_chunks = 2 * chunks - 1  # the clean copy of the context, then the masked chunks
        shape = [global_batch * sequence_chunks * config.sequence_per_chunk, config.dim, 4 * config.dim]
    else:  # oneDNN convolutions run near the machine's peak, so compare with a well-shaped square GEMM
        shape = [1024, 1024, 1024]
    single = common.run_phase(script, "train", {**params, "shape": shape, "micro_batch": global_batch}, threads=2)
    pair = run_under_launcher({**params, "shape": shape, "micro_batch": global_batch // 2}, ranks=2)
    counted_per_unit = flops["flops_per_micro_batch"] / flops["units_per_micro_batch"]
    # FlopCounterMode does not count CPU scaled_dot_product_attention, so the generator uses its closed form.
    flops_per_unit = flops.get("closed_form_flops", flops["flops_per_micro_batch"]) / flops["units_per_micro_batch"]
    result = {"model": run_name(model, preset, token_patch), "unit": flops["unit"], "parameters": flops["parameters"], "global_batch": global_batch,
              "flops_per_unit": flops_per_unit, "flop_counter_per_unit": counted_per_unit,
              "matmul_shape": shape, "single_matmul_gflops": single["matmul_gflops"],
              "two_ranks_matmul_gflops": pair["matmul_gflops"],
              "single_2_threads_per_s": single["per_s"], "two_ranks_per_s": pair["per_s"],
              "two_ranks_world_size": pair["world_size"]}
    result["single_mfu"] = single["per_s"] * flops_per_unit / (single["matmul_gflops"] * 1e9)
    result["two_ranks_mfu"] = pair["per_s"] * flops_per_unit / (pair["matmul_gflops"] * 1e9)
    result["two_ranks_over_single"] = common.ratio(pair["per_s"], single["per_s"])
    return result


def main() -> None:
    args = parse_args()
    script = Path(__file__).resolve()
    results = {"run": common.run_info(2), "results": []}
    batches = {"generator": args.generator_batch, "tokenizer": args.tokenizer_batch}
    runs = [("generator", preset, patch) for preset in args.generator_presets
            for patch in args.generator_token_patches] * ("generator" in args.models)
    runs += [("tokenizer", preset, 1) for preset in args.tokenizer_presets] * ("tokenizer" in args.models)
    for model, preset, patch in runs:
        print(f"benchmarking {run_name(model, preset, patch)} ...", flush=True)
        results["results"].append(bench_model(script, model, preset, patch, batches[model], args))
    rows = [[r["model"], r["parameters"], r["global_batch"], r["flops_per_unit"] / 1e6, r["flop_counter_per_unit"] / 1e6,
             "x".join(map(str, r["matmul_shape"])), r["single_matmul_gflops"], r["single_2_threads_per_s"], r["single_mfu"],
             r["two_ranks_matmul_gflops"], r["two_ranks_per_s"], r["two_ranks_mfu"], r["two_ranks_over_single"]]
            for r in results["results"]]
    common.print_table(
        f"training throughput, ZeRO-2 fp32 (load average at start {results['run']['loadavg_at_start'][0]}); "
        "units: generator tokens, tokenizer frames",
        ["model", "params", "batch", "MFLOP/unit", "FlopCounter", "GEMM", "GF/s 2t", "1 proc x 2t /s", "MFU",
         "GF/s 2 ranks", "2 ranks x 1t /s", "MFU", "2 ranks / 1 proc"], rows)
    common.write_json(args.out, results)


if __name__ == "__main__":
    if common.is_child_call():
        common.child_main(PHASES)
    else:
        main()
