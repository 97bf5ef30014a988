"""Console scripts: `tokvid generate`, `tokvid-data`, `tokvid-encode`, `tokvid-decode`.

Each entry point parses flags, calls the library, and turns a ValueError into one line on stderr
and exit code 2. Nothing here runs at import time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from .config_flags import add_config_flags, add_retired_flags, config_flags_given
from .sampling_config import SamplingConfig  # torch-free: --help answers without torch

LONG_GENERATION_SECONDS = 30  # a generation expected to take longer says so once, after two chunks
RETIRED_SAMPLING_FLAGS = {
    "--order": "only confidence order is left (random order lost; see docs/design-notes.md)",
    "--later-chunk-candidates": "later chunks are sampled once (candidates need two guidance streams and lost "
                                "at the bundle's CFG 1; see docs/design-notes.md)",
}


def run_cli(main, argv=None, prog: str = "tokvid") -> int:
    """Run `main(argv)`, mapping bad input (ValueError) to a one-line error and exit code 2."""
    try:
        main(argv)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# tokvid generate


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokvid", description="tokvid: text and stories to video")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="serve a web page for stories (Gradio); see tokvid demo --help")
    gen = commands.add_parser("generate", help="generate a video from a prompt or a story",
                              description="Generate a video from --prompt, --story-file or --story.")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt held for the whole video")
    source.add_argument("--story-file", help='JSON list of {"prompt": "...", "frames": 16} segments')
    source.add_argument("--story", help="inline story: 'prompt one : 2s ; prompt two : 16f'")
    gen.add_argument("--num-frames", type=int, default=17, help="frames for --prompt (default 17)")
    gen.add_argument("--out", required=True, help="output video (.mp4 or .gif); a contact sheet .png is written beside it")
    gen.add_argument("--model", default=None, help="pipeline directory or bundled name (default: the bundled model)")
    gen.add_argument("--seed", type=int, default=0)
    add_config_flags(gen.add_argument_group("sampling"), SamplingConfig, use_defaults=False,
                     default_note="the model's, from its pipeline.json")
    add_retired_flags(gen, RETIRED_SAMPLING_FLAGS)
    gen.add_argument("--negative-prompt", default=None, help="the unconditional stream's prompt (with --cfg-scale > 1)")
    gen.add_argument("--prime", default=None, help="image or video to continue from (image-to-video)")
    gen.add_argument("--strict", action="store_true",
                     help="stop (exit 2) on words the model never saw or a prompt longer than it reads, "
                          "instead of warning")
    gen.add_argument("--threads", type=positive_int, default=None,
                     help="CPU threads (default: OMP_NUM_THREADS if set, else one per idle core; more "
                          "threads than idle cores are slow)")
    gen.add_argument("--no-sheet", action="store_true", help="do not write the contact-sheet PNG")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def generate_main(argv=None) -> None:
    args = generate_parser().parse_args(argv)
    from .story import load_story_file, parse_story_string, validate_segments
    from .video_io import read_video, save_contact_sheet, write_video

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"--out must end in .mp4 or .gif, got {out.name!r}")
    if args.prompt is not None:
        if args.num_frames < 1:
            raise ValueError(f"--num-frames must be at least 1, got {args.num_frames}")
        validate_segments([(args.prompt, max(args.num_frames - 1, 1))])  # also its upper limit
    story = load_story_file(args.story_file) if args.story_file else None
    options = config_flags_given(args, SamplingConfig)
    from .cpu import default_threads
    from .pipeline import TokVidPipeline

    threads = args.threads or default_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)

    pipe = TokVidPipeline.from_pretrained(args.model)
    if args.story is not None:
        story = parse_story_string(args.story, pipe.fps)
    prime = read_video(args.prime) if args.prime else None
    bars = []  # made at the first chunk, so that warnings about the prompts print before it

    def progress(done: int, total: int) -> None:
        if not bars:
            from tqdm import tqdm
            bars.append(tqdm(desc="chunks", unit="chunk", total=total, file=sys.stderr))
            bars[0].first = (done, time.monotonic())
        bar, (first_done, started) = bars[0], bars[0].first
        if done == first_done + 2:  # two chunks timed: say up front how long a long video will take
            remaining = (time.monotonic() - started) / 2 * (total - done)
            if remaining > LONG_GENERATION_SECONDS:
                bar.write(f"tokvid: about {remaining / 60:.1f} min more for {total - done} chunks at this speed",
                          file=sys.stderr)
        bar.n = done
        bar.refresh()

    common = dict(seed=args.seed, negative_prompt=args.negative_prompt, prime_frames=prime, strict=args.strict,
                  progress=None if args.quiet else progress, **options)
    if story is not None:
        result = pipe.story(story, **common)
    else:
        result = pipe(args.prompt, num_frames=args.num_frames, **common)
    for bar in bars:
        bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, result.frames, fps=result.fps)
    print(f"wrote {out} ({len(result.frames)} frames, {result.fps:g} fps)")
    if not args.no_sheet:
        sheet = out.with_suffix(".png")
        save_contact_sheet(sheet, result.frames)
        print(f"wrote {sheet}")


def tokvid_entry() -> None:
    warnings.showwarning = _one_line_warning
    if sys.argv[1:2] == ["demo"]:  # its own flags, parsed in tokvid.demo
        from .demo import demo_main
        sys.exit(run_cli(demo_main, sys.argv[2:], prog="tokvid demo"))
    exit_now(run_cli(generate_main, prog="tokvid"))


def exit_now(code: int) -> None:
    """End the process without Python's teardown, which takes 0.3 s once torch is loaded and frees nothing
    the OS would not. By now every file the command wrote is closed; the standard streams are flushed here."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tokvid: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# tokvid-data


def data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokvid-data", description="make and check training data")
    commands = parser.add_subparsers(dest="command", required=True)
    shapes = commands.add_parser("shapes", help="write shapes-v1 clips and stories + manifest.jsonl")
    shapes.add_argument("--out", required=True)
    shapes.add_argument("--num-videos", type=positive_int, required=True)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-fraction", type=float, default=0.1, help="share of 1-frame images")
    scenes = commands.add_parser("scenes", help="write shapes-v2 videos, PNG stills + manifest.jsonl (docs/scenes.md)")
    scenes.add_argument("--out", required=True)
    scenes.add_argument("--num-videos", type=int, required=True)
    scenes.add_argument("--num-images", type=int, required=True)
    scenes.add_argument("--seed", type=int, default=0)
    footage = commands.add_parser("footage", help="real-footage clips for the general tokenizer (+ manifest.jsonl)")
    footage.add_argument("--out", required=True)
    footage.add_argument("--num-clips", type=positive_int, default=1000)
    footage.add_argument("--frames", type=positive_int, default=17)
    footage.add_argument("--size", type=positive_int, default=64)
    footage.add_argument("--seed", type=int, default=0)
    check = commands.add_parser("check", help="report missing, truncated, corrupt, too-short and wrongly sized items")
    check.add_argument("manifest")
    check.add_argument("--num-frames", type=positive_int, default=None, help="minimum frames per video item")
    check.add_argument("--size", type=positive_int, default=None, help="minimum frame side")
    convert = commands.add_parser("convert-shards", help="rewrite a token shard directory in the current format")
    convert.add_argument("source")
    convert.add_argument("target")
    return parser


def data_main(argv=None) -> None:
    args = data_parser().parse_args(argv)
    if args.command == "shapes":
        from .shapes import write_dataset
        if not 0 <= args.image_fraction <= 1:
            raise ValueError("--image-fraction must be between 0 and 1")
        manifest = write_dataset(args.out, args.num_videos, seed=args.seed, image_fraction=args.image_fraction)
        print(f"wrote {args.num_videos} items and {manifest}")
    elif args.command == "scenes":
        from .scenes import write_scenes
        manifest = write_scenes(args.out, args.num_videos, args.num_images, seed=args.seed)
        print(f"wrote {args.num_videos} videos, {args.num_images} images and {manifest}")
    elif args.command == "footage":
        from .footage import write_general_dataset
        manifest = write_general_dataset(args.out, args.num_clips, num_frames=args.frames, size=args.size,
                                         seed=args.seed, progress=True)
        print(f"wrote {args.num_clips} clips and {manifest}")
    elif args.command == "convert-shards":
        from .shards import convert_shards
        print(f"wrote {convert_shards(args.source, args.target, progress=True)} items to {args.target}")
    else:
        from .manifest import check_manifest, format_report
        report = check_manifest(args.manifest, num_frames=args.num_frames, size=args.size, progress=True)
        print(format_report(report))
        if report["bad"]:
            sys.exit(1)


def data_entry() -> None:
    sys.exit(run_cli(data_main, prog="tokvid-data"))


# ----------------------------------------------------------------------------------------------
# tokvid-encode / tokvid-decode


def encode_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokvid-encode", description="videos -> token shards (+ metadata)")
    parser.add_argument("--tokenizer", required=True, help="bundled tokenizer name or directory")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="JSONL/CSV manifest of videos with captions or stories")
    source.add_argument("--videos", help="a folder of video files")
    parser.add_argument("--out", required=True, help="output shard directory")
    parser.add_argument("--size", type=positive_int, default=None, help="resize + centre-crop frames to this side")
    parser.add_argument("--fps", type=float, default=None, help="resample videos to this frame rate")
    parser.add_argument("--max-frames", type=positive_int, default=None)
    parser.add_argument("--chunk-latents", type=positive_int, default=16, help="latent frames coded at once (memory)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable videos instead of stopping")
    parser.add_argument("--allow-partial", action="store_true", help="encode what is readable of truncated videos")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="videos encoded at once (same shape)")
    parser.add_argument("--items-per-shard", type=positive_int, default=1024,
                        help="videos per shard: the unit a killed run encodes again")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when there is a GPU, else cpu")
    parser.add_argument("--bf16", action="store_true", help="encode under bf16 autocast (GPU)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # appended by deepspeed
    parser.add_argument("--quiet", action="store_true")
    return parser


def encode_main(argv=None) -> None:
    args = encode_parser().parse_args(argv)
    from .encoding import encode_videos

    summary = encode_videos(args.tokenizer, args.out, manifest=args.manifest, videos_dir=args.videos, size=args.size,
                            fps=args.fps, max_frames=args.max_frames, chunk_latents=args.chunk_latents,
                            skip_bad=args.skip_bad, progress=not args.quiet, batch_size=args.batch_size,
                            items_per_shard=args.items_per_shard, device=args.device, bf16=args.bf16,
                            allow_partial=args.allow_partial)
    print(f"wrote {summary['items']} items to {args.out} ({summary['skipped']} skipped)"
          + ("" if summary["finished"] else "; the directory is complete when every rank has finished"))


def encode_entry() -> None:
    sys.exit(run_cli(encode_main, prog="tokvid-encode"))


def decode_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokvid-decode", description="token shards -> videos")
    parser.add_argument("--tokenizer", required=True, help="the tokenizer that made the shards (name or directory)")
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True, help="output folder for the videos")
    parser.add_argument("--format", choices=("mp4", "gif"), default="mp4")
    parser.add_argument("--limit", type=positive_int, default=None, help="decode only the first N items")
    parser.add_argument("--quiet", action="store_true")
    return parser


def decode_main(argv=None) -> None:
    args = decode_parser().parse_args(argv)
    from .encoding import decode_shards

    count = decode_shards(args.tokenizer, args.shards, args.out, video_format=args.format, limit=args.limit,
                          progress=not args.quiet)
    print(f"wrote {count} videos to {args.out}")


def decode_entry() -> None:
    sys.exit(run_cli(decode_main, prog="tokvid-decode"))


if __name__ == "__main__":  # python -m tokvid.cli generate ... (as the console script `tokvid`)
    tokvid_entry()
