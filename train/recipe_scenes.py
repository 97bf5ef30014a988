"""Reproduce the bundled "scenes" model end to end: shapes-v2 videos and stills -> text tokenizer ->
video tokenizer (fine-tuned from the shapes one on scenes clips and stills) -> its decoder alone, then on
its clamped output -> token shards -> generator trained jointly on videos and images -> fine-tuned
generator stages -> pipeline directory (-> tokvid/weights/scenes with --install).

    DS_ACCELERATOR=cpu nohup python train/recipe_scenes.py --out runs/scenes --install > scenes.log 2>&1 &

Re-running the same command resumes: finished stages are skipped and training stages continue from
their newest complete checkpoint (--resume auto). The image ablation trains only the generator stages
again, on the same data, tokenizers and shards:

    python train/recipe_scenes.py --out runs/scenes_no_images --reuse runs/scenes --image-ratio 0
"""
import argparse
import json
import os
import sys
from pathlib import Path

from recipe_shapes import REPO, TOKENIZER_BATCH, decoder_stage, install, later_stages, launcher, run

LATER_STAGES = "4000:5e-4,3000:3e-4,3000:3e-4"
SHARED_STAGES = ("data", "text_tokenizer", "video_tokenizer", "video_decoder", "video_decoder_clamped", "shards")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/scenes", help="run directory for all stages")
    parser.add_argument("--reuse", default=None,
                        help="run directory whose data, tokenizers and shards to use (only the generator is trained)")
    parser.add_argument("--num-videos", type=int, default=6000, help="shapes-v2 training videos")
    parser.add_argument("--num-images", type=int, default=8000, help="shapes-v2 still images (orange only here)")
    parser.add_argument("--tokenizer-images", type=int, default=2000,
                        help="of those stills, how many the video tokenizer trains on (with every video)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tokenizer-init", default="shapes",
                        help="video tokenizer to start from (same size; 'none' trains one from scratch)")
    parser.add_argument("--tokenizer-steps", type=int, default=4000)
    parser.add_argument("--decoder-steps", type=int, default=2000, help="then the decoder alone (0: none)")
    parser.add_argument("--decoder-code-noise", type=float, default=0.2,
                        help="share of tokens the decoder sees one FSQ digit step off, as a generator's near misses")
    parser.add_argument("--clamped-decoder-steps", type=int, default=2000,
                        help="then the decoder alone again, scored on its clamped output (0: none)")
    parser.add_argument("--clamped-decoder-lr", type=float, default=1e-3)
    parser.add_argument("--generator-steps", type=int, default=6000)
    parser.add_argument("--generator-lr", type=float, default=2e-3)
    parser.add_argument("--generator-preset", default="medium")
    parser.add_argument("--image-ratio", type=float, default=0.5,
                        help="share of generator steps on a batch of still images (joint image-video training)")
    parser.add_argument("--generator-batch", type=int, default=16, help="clips per generator step, split across ranks")
    parser.add_argument("--later-stages", type=later_stages, default=LATER_STAGES,
                        help="generator stages after the first, each STEPS:LR from the previous one's weights on "
                             "--finetune-ranks ('' for none; default %(default)s)")
    parser.add_argument("--finetune-ranks", type=int, default=2, help="fine-tuning processes (deepspeed launcher)")
    parser.add_argument("--generator-ranks", type=int, default=1, help="first generator stage's processes")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores / ranks)")
    parser.add_argument("--install", action="store_true", help="copy the exported pipeline into tokvid/weights/scenes")
    args = parser.parse_args(argv)
    for stage, ranks in (("generator", args.generator_ranks), ("finetune", args.finetune_ranks)):
        if ranks < 1 or args.generator_batch % ranks:
            parser.error(f"--{stage}-ranks {ranks} must divide --generator-batch {args.generator_batch}")
    if not 0 <= args.image_ratio <= 1:
        parser.error(f"--image-ratio must be between 0 and 1, got {args.image_ratio}")
    if args.reuse and not (Path(args.reuse) / "shards" / "info.json").is_file():
        parser.error(f"--reuse {args.reuse}: no finished shards there; run the recipe there first")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def tokenizer_manifest(manifest: Path, out: Path, num_images: int) -> Path:
    """The manifest's videos and its first `num_images` stills: the tokenizer needs motion more than stills,
    and orange reaches it only through them."""
    kept, images = [], 0
    for line in manifest.read_text().splitlines():
        is_image = json.loads(line)["path"].endswith(".png")
        if not is_image or images < num_images:
            kept.append(line)
            images += is_image
    out.write_text("\n".join(kept) + "\n")
    return out


def video_tokenizer_stages(args, out: Path) -> Path:
    """Train the video tokenizer and its decoder stages; returns the tokenizer that codes the shards."""
    manifest = tokenizer_manifest(out / "data" / "manifest.jsonl", out / "data" / "tokenizer_manifest.jsonl",
                                  args.tokenizer_images)
    command = launcher(args, "train_tokenizer.py", 1, args.seed) + [
        "--manifest", str(manifest), "--preset", "small", "--fsq-levels", "7,5,5,5,5", "--lr", "1e-3",
        "--micro-batch", str(TOKENIZER_BATCH), "--num-frames", "9", "--cache-gb", "3", "--save-every", "250"]
    tokenizer = out / "video_tokenizer"
    if not (tokenizer / "export" / "model.safetensors").exists():
        init = [] if args.tokenizer_init == "none" else ["--init-from", args.tokenizer_init]
        run(command + ["--out", str(tokenizer), "--max-steps", str(args.tokenizer_steps), "--warmup-steps", "100",
                       *init])
    video_tokenizer = tokenizer / "export"
    if args.decoder_steps > 0:
        video_tokenizer = decoder_stage(args, command, video_tokenizer, out / "video_decoder", args.decoder_steps, [])
    if args.clamped_decoder_steps > 0:
        video_tokenizer = decoder_stage(args, command, video_tokenizer, out / "video_decoder_clamped",
                                        args.clamped_decoder_steps,
                                        ["--clamped-loss", "--lr", str(args.clamped_decoder_lr)])
    return video_tokenizer


def shared_stages(args, out: Path) -> tuple[Path, Path, Path]:
    """Data, text tokenizer, video tokenizer and shards: (text tokenizer, video tokenizer, shards)."""
    data, text, shards = out / "data", out / "text_tokenizer", out / "shards"
    if not (data / "manifest.jsonl").exists():
        run(["tokvid-data", "scenes", "--out", str(data), "--num-videos", str(args.num_videos),
             "--num-images", str(args.num_images), "--seed", str(args.seed)])
    if not (text / "config.json").exists():
        run([sys.executable, str(REPO / "tokenizer" / "train_text_tokenizer.py"), "--manifest",
             str(data / "manifest.jsonl"), "--out", str(text), "--vocab-size", "128", "--max-length", "16",
             "--seed", str(args.seed)])
    video_tokenizer = video_tokenizer_stages(args, out)
    if not (shards / "info.json").exists():
        run(["tokvid-encode", "--tokenizer", str(video_tokenizer), "--manifest", str(data / "manifest.jsonl"),
             "--out", str(shards), "--quiet"])
    return text, video_tokenizer, shards


def generator_stages(args, out: Path, text: Path, video_tokenizer: Path, shards: Path) -> Path:
    """The first generator stage, then each later stage from the previous one's weights with a new seed
    (other clips, masks and text dropout); returns the last stage's run directory."""
    options = ["--data", str(shards), "--text-tokenizer", str(text), "--video-tokenizer", str(video_tokenizer),
               "--preset", args.generator_preset, "--num-frames", "21", "--window-chunks", "6", "--save-every", "250",
               "--token-patch", "2", "--image-ratio", str(args.image_ratio)]
    final = out / "generator"
    if not (final / "export" / "pipeline.json").exists():
        run(launcher(args, "train_generator.py", args.generator_ranks, args.seed) + options + [
            "--out", str(final), "--max-steps", str(args.generator_steps), "--lr", str(args.generator_lr),
            "--warmup-steps", "100", "--micro-batch", str(args.generator_batch // args.generator_ranks)])
    for stage, (steps, lr) in enumerate(args.later_stages, start=2):
        start, final = final, out / f"generator_stage{stage}"
        if not (final / "export" / "pipeline.json").exists():
            run(launcher(args, "train_generator.py", args.finetune_ranks, args.seed + stage - 1) + options + [
                "--out", str(final), "--init-from", str(start / "export"), "--max-steps", str(steps), "--lr",
                str(lr), "--warmup-steps", "50", "--micro-batch", str(args.generator_batch // args.finetune_ranks)])
    return final


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if args.reuse:
        out.mkdir(parents=True, exist_ok=True)
        for name in SHARED_STAGES:  # the finished stages of the other run, seen as this run's
            source, link = Path(args.reuse).resolve() / name, out / name
            if source.exists() and not link.exists():
                link.symlink_to(source)
    text, video_tokenizer, shards = shared_stages(args, out)
    final = generator_stages(args, out, text, video_tokenizer, shards)
    if args.install:
        target = REPO / "tokvid" / "weights" / "scenes"
        install(final / "export", video_tokenizer, target, caption_grammar="scenes")
        print(f"installed the pipeline into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
