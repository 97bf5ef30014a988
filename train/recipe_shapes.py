"""Reproduce the bundled default model end to end: shapes-v1 data -> text tokenizer -> video
tokenizer -> its decoder fine-tuned alone, then on its clamped output -> token shards -> generator ->
fine-tuned generator (more stages) -> pipeline directory (-> tokvid/weights/shapes with --install).

    DS_ACCELERATOR=cpu nohup python train/recipe_shapes.py --out runs/shapes --install > recipe.log 2>&1 &

Every stage uses the project's own entry points (tokvid-data, train_text_tokenizer.py,
train_tokenizer.py and train_generator.py on the DeepSpeed engine, tokvid-encode). Re-running the
same command resumes: finished stages are skipped and training stages continue from their newest
complete checkpoint (--resume auto).
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_BATCH = 8  # clips per video tokenizer step, split across ranks
CLAMPED_DECODER_STEPS, CLAMPED_DECODER_LR = 3000, 1e-3
LATER_STAGES = "2000:5e-4,1000:3e-4,2000:3e-4,2000:3e-4"  # generator stages after the first, STEPS:LR each


def later_stages(text: str) -> list[tuple[int, float]]:
    """'2000:5e-4,1000:3e-4' -> [(2000, 0.0005), (1000, 0.0003)]; '' -> no later stage."""
    stages = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            steps, lr = item.split(":")
            stage = int(steps), float(lr)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not STEPS:LR (like 1000:3e-4)") from None
        if stage[0] < 1 or not stage[1] > 0:
            raise argparse.ArgumentTypeError(f"{item!r} needs steps >= 1 and lr > 0")
        stages.append(stage)
    return stages


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/shapes", help="run directory for all stages")
    parser.add_argument("--num-videos", type=int, default=4000, help="shapes-v1 training items")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tokenizer-steps", type=int, default=6000,
                        help="joint tokenizer steps (1200 draws wrong shapes; README design notes)")
    parser.add_argument("--tokenizer-preset", default="small")
    parser.add_argument("--fsq-levels", default="7,5,5,5,5", help="FSQ levels of the shapes tokenizer (vocabulary 4375)")
    parser.add_argument("--spatial-compression", type=int, default=None,
                        help="pixels per token side of the shapes tokenizer (default: the preset's 8)")
    parser.add_argument("--decoder-steps", type=int, default=3000,
                        help="then the tokenizer's decoder alone (same codes, sharper shapes; 0: none)")
    parser.add_argument("--decoder-code-noise", type=float, default=0.2,
                        help="share of tokens the decoder sees one FSQ digit step off, as a generator's near misses")
    parser.add_argument("--clamped-decoder-steps", type=int, default=CLAMPED_DECODER_STEPS,
                        help="then the decoder alone again, scored on its output as decode clamps it (sharper "
                             "edges; 0: none)")
    parser.add_argument("--clamped-decoder-lr", type=float, default=CLAMPED_DECODER_LR,
                        help="peak learning rate of that stage")
    parser.add_argument("--generator-steps", type=int, default=3000)
    parser.add_argument("--generator-lr", type=float, default=2e-3)
    parser.add_argument("--generator-preset", default="small")
    parser.add_argument("--generator-token-patch", type=int, default=2,
                        help="tokens per side of the patch one generator position holds (2: 2x2, a cheaper step)")
    parser.add_argument("--generator-batch", type=int, default=16, help="clips per generator step, split across ranks")
    parser.add_argument("--generator-frames", type=int, default=21, help="frames per generator training window")
    parser.add_argument("--later-stages", type=later_stages, default=LATER_STAGES,
                        help="generator stages after the first, each STEPS:LR from the previous one's weights on "
                             "--finetune-ranks with --finetune-batch ('' for none; default %(default)s)")
    parser.add_argument("--finetune-batch", type=int, default=16, help="clips per fine-tuning step, split across ranks")
    parser.add_argument("--finetune-ranks", type=int, default=2, help="fine-tuning processes (deepspeed launcher)")
    parser.add_argument("--tokenizer-ranks", type=int, default=1, help="video tokenizer processes (deepspeed launcher)")
    parser.add_argument("--generator-ranks", type=int, default=1, help="generator processes (deepspeed launcher)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores / ranks)")
    parser.add_argument("--install", action="store_true", help="copy the exported pipeline into tokvid/weights/shapes")
    args = parser.parse_args(argv)
    for stage, ranks, batch in (("tokenizer", args.tokenizer_ranks, TOKENIZER_BATCH),
                                ("generator", args.generator_ranks, args.generator_batch),
                                ("finetune", args.finetune_ranks, args.finetune_batch)):
        if ranks < 1 or batch % ranks:
            parser.error(f"--{stage}-ranks {ranks} must divide the {stage} batch ({batch})")
    from tokvid.models.generator import check_token_patch
    from tokvid.shapes import FRAME_SIZE
    from tokvid.training.trainers import spatial_compression_overrides
    from tokvid.models.video_tokenizer import video_tokenizer_preset

    try:  # checked here, before any stage starts, with the library's own checks
        preset = video_tokenizer_preset(args.tokenizer_preset)
        if args.spatial_compression is not None:
            spatial_compression_overrides(preset, args.spatial_compression)
        grid = FRAME_SIZE // (args.spatial_compression or preset.spatial_compression)
        check_token_patch(args.generator_token_patch, grid, grid, "--generator-token-patch")
    except ValueError as error:
        parser.error(str(error))
    if args.clamped_decoder_steps < 0 or not args.clamped_decoder_lr > 0:
        parser.error("--clamped-decoder-steps must be >= 0 and --clamped-decoder-lr > 0")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def launcher(args, script: str, ranks: int, seed: int) -> list[str]:
    threads = args.threads or max(1, (os.cpu_count() or 1) // ranks)
    options = ["--deepspeed_config", str(REPO / "ds_config.json"), "--seed", str(seed), "--resume", "auto",
               "--threads", str(threads)]
    if ranks == 1:
        return [sys.executable, str(REPO / "train" / script), *options]
    return ["deepspeed", "--num_gpus", str(ranks), str(REPO / "train" / script), *options]


def install(exported: Path, video_tokenizer: Path, target: Path, caption_grammar: str | None = None) -> None:
    """Save the exported pipeline (which states SamplingConfig's defaults, chosen on this bundle: see
    docs/design-notes.md) into `target` with the run's current video tokenizer and the caption grammar its
    prompts must follow (TokVidPipeline.caption_grammar): a decoder stage re-run after the generator (more --decoder-steps) makes the same
    codes, so the generator stays valid and only the pictures change."""
    from tokvid.pipeline import TokVidPipeline
    from tokvid.models.video_tokenizer import VideoTokenizer

    pipeline = TokVidPipeline.from_pretrained(exported)
    decoder = VideoTokenizer.from_pretrained(video_tokenizer)
    if decoder.codes_fingerprint() != pipeline.video_tokenizer.codes_fingerprint():
        raise SystemExit(f"{video_tokenizer} makes other codes than the generator's tokenizer in {exported}; "
                         "delete the generator stages of this run and re-run the recipe")
    pipeline.video_tokenizer = decoder.eval()
    pipeline.caption_grammar = caption_grammar
    shutil.rmtree(target, ignore_errors=True)  # only now: a refused install leaves the old bundle in place
    pipeline.save_pretrained(target)


def decoder_stage(args, tokenizer_command: list[str], start: Path, out: Path, steps: int, extra: list[str]) -> Path:
    """Train the decoder of the tokenizer in `start` alone into `out` (every code stays as it was, so the
    shards and generators of `start` stay valid); returns the export directory."""
    if not (out / "export" / "model.safetensors").exists():
        run(tokenizer_command + ["--out", str(out), "--max-steps", str(steps), "--warmup-steps", "50",
                                 "--init-from", str(start), "--decoder-only",
                                 "--code-noise", str(args.decoder_code_noise), *extra])
    return out / "export"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    data, text, tokenizer, decoder, clamped_decoder, shards, generator = (
        out / name for name in ("data", "text_tokenizer", "video_tokenizer", "video_decoder", "video_decoder_clamped",
                                "shards", "generator"))
    if not (data / "manifest.jsonl").exists():
        run(["tokvid-data", "shapes", "--out", str(data), "--num-videos", str(args.num_videos), "--seed", str(args.seed)])
    if not (text / "config.json").exists():
        run([sys.executable, str(REPO / "tokenizer" / "train_text_tokenizer.py"), "--manifest", str(data / "manifest.jsonl"),
             "--out", str(text), "--vocab-size", "128", "--max-length", "8", "--seed", str(args.seed)])
    tokenizer_command = launcher(args, "train_tokenizer.py", args.tokenizer_ranks, args.seed) + [
        "--manifest", str(data / "manifest.jsonl"), "--preset", args.tokenizer_preset, "--fsq-levels", args.fsq_levels,
        "--lr", "1e-3", "--micro-batch", str(TOKENIZER_BATCH // args.tokenizer_ranks), "--num-frames", "9",
        "--cache-gb", "3", "--save-every", "250"] + (
        ["--spatial-compression", str(args.spatial_compression)] if args.spatial_compression else [])
    if not (tokenizer / "export" / "model.safetensors").exists():
        run(tokenizer_command + ["--out", str(tokenizer), "--max-steps", str(args.tokenizer_steps),
                                 "--warmup-steps", "100"])
    video_tokenizer = tokenizer / "export"
    # each decoder stage makes the same codes as tokenizer/export and draws them more sharply
    if args.decoder_steps > 0:
        video_tokenizer = decoder_stage(args, tokenizer_command, video_tokenizer, decoder, args.decoder_steps, [])
    if args.clamped_decoder_steps > 0:
        clamped = ["--clamped-loss", "--lr", str(args.clamped_decoder_lr)]
        video_tokenizer = decoder_stage(args, tokenizer_command, video_tokenizer, clamped_decoder,
                                        args.clamped_decoder_steps, clamped)
    if not (shards / "info.json").exists():
        shutil.rmtree(shards, ignore_errors=True)
        run(["tokvid-encode", "--tokenizer", str(video_tokenizer), "--manifest", str(data / "manifest.jsonl"),
             "--out", str(shards), "--quiet"])
    generator_options = ["--data", str(shards), "--text-tokenizer", str(text), "--video-tokenizer",
                         str(video_tokenizer), "--preset", args.generator_preset, "--num-frames",
                         str(args.generator_frames), "--window-chunks", "6", "--save-every", "250",
                         "--token-patch", str(args.generator_token_patch)]
    if not (generator / "export" / "pipeline.json").exists():
        run(launcher(args, "train_generator.py", args.generator_ranks, args.seed) + generator_options + [
            "--out", str(generator), "--max-steps", str(args.generator_steps), "--lr", str(args.generator_lr),
            "--warmup-steps", "100", "--micro-batch", str(args.generator_batch // args.generator_ranks)])
    final = generator
    # later stages each start from the previous one's weights, with a new seed: other clips, masks, text dropout
    for stage, (steps, lr) in enumerate(args.later_stages, start=2):
        start, final = final, out / f"generator_stage{stage}"
        if not (final / "export" / "pipeline.json").exists():
            run(launcher(args, "train_generator.py", args.finetune_ranks, args.seed + stage - 1) + generator_options + [
                "--out", str(final), "--init-from", str(start / "export"), "--max-steps", str(steps), "--lr", str(lr),
                "--warmup-steps", "50", "--micro-batch", str(args.finetune_batch // args.finetune_ranks)])
    if args.install:
        target = REPO / "tokvid" / "weights" / "shapes"
        install(final / "export", video_tokenizer, target)
        print(f"installed the pipeline into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
