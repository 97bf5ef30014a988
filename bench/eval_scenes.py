"""shapes-v2 ("scenes") benchmark: binding, composition and joint image-video transfer.

    python bench/eval_scenes.py --model scenes                                  # a scenes pipeline
    python bench/eval_scenes.py --model shapes --out bench/results/eval_scenes_shapes.json --small
    python bench/eval_scenes.py --oracle --small                                # ground truth: checks the harness
    python bench/eval_scenes.py --tokenizer shapes --small                      # ground truth through a tokenizer
    python bench/eval_scenes.py --videos runs/peer_scenes/videos                # videos made elsewhere (the peer)

Sets (docs/scenes.md): (a) single: every seen colour x shape x motion; (b) pairs: two seen objects,
every ordered motion pair; (c) held_out / held_out_pair: the four held-out pairs alone and next to a
seen object; (d) orange / orange_pair: orange (only ever a still image in training) moving, alone
and with a seen object; (e) stories: two objects, 2-4 segments; (f) long: two-object stories of
--long-frames frames. Scoring: tokvid/scenes_eval.py. Writes JSON and one PNG grid per set.
--videos scores what another system made for the same prompts and seeds (bench/peer_scenes.py: the peer).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT_SIZES = {"single": 85, "pairs": 50, "held_out": 20, "held_out_pair": 20, "orange": 12, "orange_pair": 12,
                 "stories": 24, "long": 4}
SMALL_SIZES = {"single": 17, "pairs": 25, "held_out": 20, "held_out_pair": 8, "orange": 12, "orange_pair": 6,
               "stories": 8, "long": 2}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline directory or bundled name (default: bundled default)")
    parser.add_argument("--oracle", action="store_true", help="score ground-truth renders instead of a model")
    parser.add_argument("--tokenizer", default=None,
                        help="score ground truth coded and decoded by this video tokenizer (name or directory)")
    parser.add_argument("--videos", default=None,
                        help="score videos made elsewhere for these sets: DIR/<set>.npz (bench/peer_train.py generate)")
    parser.add_argument("--small", action="store_true", help=f"the small set sizes {SMALL_SIZES}")
    for name, size in DEFAULT_SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, dest=f"size_{name}",
                            help=f"videos in set {name!r} (default {size}; 0 skips it)")
    parser.add_argument("--long-frames", type=int, default=256, help="frames of each 'long' story (multiple of 16)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed of video 0 (video i uses seed + i)")
    parser.add_argument("--set-seed", type=int, default=2024, help="seed that draws the test sets")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    parser.add_argument("--redraw-first-frame", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    parser.add_argument("--out", default="runs/eval_scenes/eval_scenes.json", help="JSON file; PNG grids go next to it")
    args = parser.parse_args(argv)
    if sum(bool(x) for x in (args.model, args.oracle, args.tokenizer, args.videos)) > 1:
        parser.error("choose one of --model, --oracle, --tokenizer and --videos")
    base = SMALL_SIZES if args.small else DEFAULT_SIZES
    args.sizes = {name: getattr(args, f"size_{name}") if getattr(args, f"size_{name}") is not None else size
                  for name, size in base.items()}
    if any(size < 0 for size in args.sizes.values()):
        parser.error("set sizes must be >= 0")
    args.sizes = {name: size for name, size in args.sizes.items() if size > 0}
    return args


def make_generator(args, sets: dict):
    """generate(story, seed) -> frames: the model's, or with --oracle the sets' ground truth (coded and
    decoded by --tokenizer if given: what a perfect generator on that tokenizer would show), or with --videos
    the videos found there."""
    if args.videos:
        return ProducedVideos(args.videos, sets)
    if not (args.oracle or args.tokenizer):
        import eval_shapes  # same pipeline calls and sampling overrides as the shapes-v1 benchmark

        return eval_shapes.make_generator(args)
    from tokvid.scenes import render_spec

    truth = {tuple(spec.segments()): spec for specs in sets.values() for spec in specs}
    if not args.tokenizer:
        return lambda story, seed: render_spec(truth[tuple(story)])
    import torch

    import tokvid
    from tokvid.video_io import frames_to_tensor, tensor_to_frames

    tokenizer = tokvid.VideoTokenizer.from_pretrained(args.tokenizer).eval()

    def reconstruct(story, seed):
        with torch.inference_mode():
            x = frames_to_tensor(render_spec(truth[tuple(story)]))[None]
            return tensor_to_frames(tokenizer.decode(tokenizer.encode(x))[0])

    return reconstruct


class ProducedVideos:
    """generate(story, seed) from videos made elsewhere: DIR/<set>.npz as bench/peer_train.py generate writes
    them (stories as JSON, seeds, seconds per video, video_<i> uint8 (T, H, W, 3))."""

    def __init__(self, directory: str | Path, sets: dict):
        import numpy as np

        self.directory = Path(directory)
        self.videos, self.seconds = {}, {}
        for name in sets:
            path = self.directory / f"{name}.npz"
            if not path.exists():
                raise ValueError(f"no videos of set {name!r}: {path} is missing; make them first (bench/peer_scenes.py)")
            with np.load(path) as data:
                for i, (story, seed) in enumerate(zip(json.loads(str(data["stories"])), data["seeds"])):
                    key = self.key(story, int(seed))
                    self.videos[key], self.seconds[key] = data[f"video_{i}"], float(data["seconds"][i])

    @staticmethod
    def key(story, seed: int) -> tuple[str, int]:
        return json.dumps([[str(prompt), int(frames)] for prompt, frames in story]), seed

    def __call__(self, story, seed: int):
        key = self.key(story, seed)
        if key not in self.videos:
            raise ValueError(f"{self.directory} has no video of {story} at seed {seed}: it was made for other "
                             "prompts or seeds; make it again with the same set options")
        return self.videos[key]

    def timing(self, stories: list, seed: int) -> dict:
        """What the maker took per video (the lookups here take nothing)."""
        keys = [self.key(story, seed + i) for i, story in enumerate(stories)]
        seconds = sum(self.seconds[key] for key in keys)
        return {"seconds_per_video": seconds / len(keys),
                "frames_per_second": sum(len(self.videos[key]) for key in keys) / max(seconds, 1e-9)}

    def producer(self) -> dict | None:
        path = self.directory / "producer.json"
        return json.loads(path.read_text()) if path.exists() else None


def table_row(name: str, summary: dict) -> list:
    from tokvid.scenes_eval import SET_LETTERS

    def rate(key):
        return None if summary[key] is None else summary[key]["rate"]

    low, high = summary["video_accuracy"]["interval"]
    return [f"({SET_LETTERS[name]}) {name}", summary["videos"], rate("video_accuracy"), f"{low:.2f}-{high:.2f}",
            rate("segment_accuracy"), rate("colour_accuracy"), rate("shape_accuracy"), rate("motion_accuracy"),
            rate("binding_error_rate"), rate("story_identity_rate"), rate("clean_frame_rate"),
            rate("frozen_video_rate"), summary["seconds_per_video"]]


def run_sets(args, out: Path) -> dict:
    from tokvid.scenes_eval import build_scene_sets, score_scene, summarize_scenes
    from tokvid.shapes_eval import run_suite, suite_grid
    from tokvid.video_io import save_contact_sheet

    sets = build_scene_sets(args.sizes, args.set_seed, args.long_frames)
    generate = make_generator(args, sets)
    results, rows = {}, []
    for name, specs in sets.items():
        stories = [spec.segments() for spec in specs]
        result = run_suite(generate, stories, seed=args.seed, score=score_scene, summarize_scores=summarize_scenes,
                           progress=lambda done, total, name=name: print(f"\r{name}: {done}/{total}", end="", flush=True))
        print()
        if args.videos:
            result["summary"].update(generate.timing(stories, args.seed))
        grid, columns = suite_grid(result["videos"], frames_per_row=9 if name != "long" else 17)
        grid_path = out.with_name(f"{out.stem}_{name}.png")
        save_contact_sheet(grid_path, grid, columns=columns, max_frames=len(grid))
        results[name] = {"summary": result["summary"], "grid": str(grid_path),
                         "videos": [{"story": story, "seed": args.seed + i, "score": score}
                                    for i, (story, score) in enumerate(zip(stories, result["scores"]))]}
        rows.append(table_row(name, result["summary"]))
    common.print_table("shapes-v2 (scenes) accuracy", ["set", "videos", "all right", "95% interval", "segments",
                                                       "colour", "shape", "motion", "binding err", "identity",
                                                       "clean frames", "frozen", "s/video"], rows)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    def fill(report: dict, out: Path) -> None:
        report["sets"] = run_sets(args, out)
        if args.videos:
            report["produced_by"] = ProducedVideos(args.videos, {}).producer()

    return common.run_report(args, fill)


if __name__ == "__main__":
    sys.exit(main())
