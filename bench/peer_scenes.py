"""The peer, phenaki-pytorch 0.5.0, on the scenes benchmark (issue 37): trained on the same shapes-v2 data as
tokvid's scenes model for a wall-clock budget, then the sets (a)-(f) of bench/eval_scenes.py sampled with
it and scored by tokvid's scorer. One command; run it again after an interruption and it continues:

    python bench/peer_scenes.py --data runs/scenes/data --run runs/peer_scenes --minutes 90 \\
        --out bench/results/eval_scenes_peer.json

Steps, each skipped when already done (docs/scenes.md, "The peer on scenes"):
1. prepare (here, tokvid's video reader): RUN/data: every frame of the data set in one raw uint8 file, and
   items.jsonl: one training item per video segment (with its leading frame: 9 or 17 frames), one per still;
2. train (peer venv, bench/peer_train.py train): C-ViViT, then MaskGIT, for --minutes of training time;
3. prompts (here): the evaluation sets' stories, RUN/videos/prompts.json;
4. generate (peer venv, bench/peer_train.py generate): RUN/videos/<set>.npz;
5. score (here): bench/eval_scenes.py --videos RUN/videos --out OUT: the JSON and PNG grids it writes for tokvid.
Flags this script does not know go to bench/eval_scenes.py (--small, set sizes, --seed, --set-seed, --long-frames).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import eval_scenes  # noqa: E402

PEER_TRAIN = common.BENCH_DIR / "peer_train.py"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a `tokvid-data scenes` directory (manifest.jsonl, mp4s, PNGs)")
    parser.add_argument("--run", default="runs/peer_scenes", help="working directory: data, checkpoints, videos")
    parser.add_argument("--minutes", type=float, required=True, help="the peer's training wall-clock budget")
    parser.add_argument("--max-videos", type=int, default=None, help="train on the first N videos only")
    parser.add_argument("--max-images", type=int, default=None, help="train on the first M stills only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a peer setting (bench/peer_train.py dump-config), e.g. --set tok_batch=8")
    parser.add_argument("--peer-venv", default=None, help=f"the peer's venv (default {common.DEFAULT_PEER_VENV})")
    parser.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    parser.add_argument("--out", default="runs/peer_scenes/eval_scenes_peer.json", help="JSON; PNG grids beside it")
    args, eval_argv = parser.parse_known_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    return args, eval_argv


# ----------------------------------------------------------------------------------------------
# 1. the training data, in a form the peer's venv (numpy, no video reader of tokvid's) can read


def prepare_data(source: str | Path, out: str | Path, max_videos: int | None = None,
                 max_images: int | None = None) -> dict:
    """Write out/frames.u8 (every frame, raw uint8 N x H x W x 3), out/items.jsonl ({"start", "frames",
    "caption"} per video segment, from its leading frame, and per still) and out/info.json (written last;
    a directory whose info.json matches the request is left as it is)."""
    from tokvid.manifest import item_segments, read_manifest
    from tokvid.video_io import IMAGE_EXTENSIONS, read_video

    source, out = Path(source), Path(out)
    wanted = {"source": str(source.resolve()), "max_videos": max_videos, "max_images": max_images}
    info_path = out / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        if {key: info.get(key) for key in wanted} == wanted:
            return info
        info_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    counts, items, total, shape = {"videos": 0, "images": 0}, [], 0, None
    with open(out / "frames.u8", "wb") as frames_file:
        for entry in read_manifest(source / "manifest.jsonl"):
            kind = "images" if Path(entry["path"]).suffix.lower() in IMAGE_EXTENSIONS else "videos"
            limit = max_images if kind == "images" else max_videos
            if limit is not None and counts[kind] >= limit:
                continue
            frames = read_video(entry["path"])
            if shape not in (None, frames.shape[1:]):
                raise ValueError(f"{entry['path']} has frames of {frames.shape[1:]}, the others {shape}")
            shape = frames.shape[1:]
            items.extend(_segment_items(entry, frames, total, item_segments))
            frames_file.write(frames.tobytes())
            counts[kind] += 1
            total += len(frames)
    (out / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    info = {**wanted, **counts, "items": len(items), "frames": total, "height": shape[0], "width": shape[1]}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _segment_items(entry: dict, frames, offset: int, item_segments) -> list[dict]:
    """A still is one item; each segment of a video is one, from the frame before it (its leading frame)."""
    if len(frames) == 1:
        return [{"start": offset, "frames": 1, "caption": entry["caption"]}]
    items, start = [], 1
    for prompt, length in item_segments(entry, num_frames=len(frames)):
        items.append({"start": offset + start - 1, "frames": length + 1, "caption": prompt})
        start += length
    if start != len(frames):
        raise ValueError(f"{entry['path']}: its story covers {start} frames but the video has {len(frames)}")
    return items


# ----------------------------------------------------------------------------------------------
# 3. the prompts; 2 and 4 run in the peer venv


def write_prompts(eval_args: argparse.Namespace, path: str | Path) -> dict:
    """The stories of the evaluation sets that eval_args select, as bench/peer_train.py generate reads them."""
    from tokvid.scenes_eval import build_scene_sets

    sets = build_scene_sets(eval_args.sizes, eval_args.set_seed, eval_args.long_frames)
    prompts = {"seed": eval_args.seed, "set_seed": eval_args.set_seed,
               "sets": {name: [[list(segment) for segment in spec.segments()] for spec in specs]
                        for name, specs in sets.items()}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(prompts) + "\n")
    return prompts


def run_peer(python: Path, *arguments: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [str(python), str(PEER_TRAIN), *arguments, "--threads", str(threads)]
    print("+", " ".join(command), flush=True)
    if subprocess.run(command, env=env).returncode != 0:
        raise ValueError(f"the peer's step failed (its message is above): {' '.join(command)}")


def main(argv=None) -> int:
    args, eval_argv = parse_args(argv)
    python = common.peer_python(args.peer_venv)
    if python is None:
        print(f"error: no peer venv at {args.peer_venv or common.DEFAULT_PEER_VENV}; run `bash bench/setup_peer.sh`",
              file=sys.stderr)
        return 2
    run, videos = Path(args.run), Path(args.run) / "videos"
    eval_argv = [*eval_argv, "--videos", str(videos), "--out", args.out, "--threads", str(args.threads)]
    eval_args = eval_scenes.parse_args(eval_argv)
    try:
        info = prepare_data(args.data, run / "data", args.max_videos, args.max_images)
        print(f"data: {info['videos']} videos, {info['images']} stills, {info['items']} training items", flush=True)
        settings = [arg for item in args.set for arg in ("--set", item)]
        run_peer(python, "train", "--data", str(run / "data"), "--run", str(run / "train"), "--minutes",
                 str(args.minutes), *settings, threads=args.threads)
        write_prompts(eval_args, videos / "prompts.json")
        run_peer(python, "generate", "--run", str(run / "train"), "--prompts", str(videos / "prompts.json"),
                 "--out", str(videos), threads=args.threads)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return eval_scenes.main(eval_argv)


if __name__ == "__main__":
    sys.exit(main())
