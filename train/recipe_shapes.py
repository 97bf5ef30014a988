"""Reproduce the bundled default model end to end: shapes-v1 data -> text tokenizer -> video
tokenizer -> token shards -> generator -> pipeline directory (-> tokvid/weights/shapes with --install).

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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/shapes", help="run directory for all stages")
    parser.add_argument("--num-videos", type=int, default=4000, help="shapes-v1 training items")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tokenizer-steps", type=int, default=1200)
    parser.add_argument("--tokenizer-preset", default="small")
    parser.add_argument("--fsq-levels", default="7,5,5,5,5", help="FSQ levels of the shapes tokenizer (vocabulary 4375)")
    parser.add_argument("--generator-steps", type=int, default=1250)
    parser.add_argument("--generator-preset", default="small")
    parser.add_argument("--generator-batch", type=int, default=12, help="clips per generator step, split across ranks")
    parser.add_argument("--generator-frames", type=int, default=21, help="frames per generator training window")
    parser.add_argument("--ranks", type=int, default=1, help="processes under the deepspeed launcher")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per rank")
    parser.add_argument("--install", action="store_true", help="copy the exported pipeline into tokvid/weights/shapes")
    args = parser.parse_args(argv)
    if args.ranks < 1 or TOKENIZER_BATCH % args.ranks or args.generator_batch % args.ranks:
        parser.error(f"--ranks {args.ranks} must divide the tokenizer batch ({TOKENIZER_BATCH}) and "
                     f"--generator-batch ({args.generator_batch})")
    return args


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def launcher(args, script: str) -> list[str]:
    if args.ranks == 1:
        return [sys.executable, str(REPO / "train" / script)]
    return ["deepspeed", "--num_gpus", str(args.ranks), str(REPO / "train" / script)]


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    data, text, tokenizer, shards, generator = (out / name for name in
                                                ("data", "text_tokenizer", "video_tokenizer", "shards", "generator"))
    common = ["--deepspeed_config", str(REPO / "ds_config.json"), "--seed", str(args.seed), "--resume", "auto",
              "--threads", str(args.threads)]
    if not (data / "manifest.jsonl").exists():
        run(["tokvid-data", "shapes", "--out", str(data), "--num-videos", str(args.num_videos), "--seed", str(args.seed)])
    if not (text / "config.json").exists():
        run([sys.executable, str(REPO / "tokenizer" / "train_text_tokenizer.py"), "--manifest", str(data / "manifest.jsonl"),
             "--out", str(text), "--vocab-size", "128", "--max-length", "8", "--seed", str(args.seed)])
    if not (tokenizer / "export" / "model.safetensors").exists():
        run(launcher(args, "train_tokenizer.py") + common + [
            "--manifest", str(data / "manifest.jsonl"), "--out", str(tokenizer), "--max-steps", str(args.tokenizer_steps),
            "--preset", args.tokenizer_preset, "--fsq-levels", args.fsq_levels, "--lr", "1e-3", "--warmup-steps", "100",
            "--micro-batch", str(TOKENIZER_BATCH // args.ranks), "--num-frames", "9", "--cache-gb", "3",
            "--save-every", "250"])
    if not (shards / "info.json").exists():
        shutil.rmtree(shards, ignore_errors=True)
        run(["tokvid-encode", "--tokenizer", str(tokenizer / "export"), "--manifest", str(data / "manifest.jsonl"),
             "--out", str(shards), "--quiet"])
    if not (generator / "export" / "pipeline.json").exists():
        run(launcher(args, "train_generator.py") + common + [
            "--data", str(shards), "--text-tokenizer", str(text), "--video-tokenizer", str(tokenizer / "export"),
            "--out", str(generator), "--max-steps", str(args.generator_steps), "--preset", args.generator_preset,
            "--lr", "1e-3", "--warmup-steps", "100", "--micro-batch", str(args.generator_batch // args.ranks),
            "--num-frames", str(args.generator_frames), "--window-chunks", "6", "--save-every", "250"])
    if args.install:
        target = REPO / "tokvid" / "weights" / "shapes"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(generator / "export", target)
        print(f"installed the pipeline into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
