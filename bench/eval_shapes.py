"""shapes-v1 benchmark of a story model: does the video show the prompt's colour, shape and motion?

    python bench/eval_shapes.py --out bench/results/eval_shapes.json            # bundled default model
    python bench/eval_shapes.py --model DIR --limit 5                            # quick smoke run
    python bench/eval_shapes.py --sweep --limit 14                               # CFG x steps x temperature
    python bench/eval_shapes.py --tokenizer shapes --sets none                   # tokenizer PSNR only
    python bench/eval_shapes.py --oracle --limit 5                               # ground truth: checks the harness

Sets: (a) "single": every colour x shape x motion as one prompt (17 frames); (b) "stories": 2-4
segments of 8 or 16 frames, every switch changing the motion; (c) "long": stories of --long-frames
frames (default 4x the longest training clip) in 16-frame segments, accuracy per segment index
(drift). Scoring: tokvid/shapes_eval.py. Writes JSON and one PNG grid per set (a row per video).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SETS = ("single", "stories", "long")
# Longest shapes-v1 training clip: 4 segments of 16 frames + the leading frame (tokvid.shapes defaults).
LONGEST_TRAINING_FRAMES = 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="pipeline directory or bundled name (default: bundled default)")
    parser.add_argument("--oracle", action="store_true", help="score ground-truth renders instead of a model")
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma list of {SETS}, or 'none'")
    parser.add_argument("--limit", type=int, default=None, help="at most N videos per set (quick runs)")
    parser.add_argument("--stories", type=int, default=36, help="videos in the 'stories' set")
    parser.add_argument("--long-count", type=int, default=6, help="videos in the 'long' set")
    parser.add_argument("--long-frames", type=int, default=4 * LONGEST_TRAINING_FRAMES,
                        help="frames (after the leading one) of each 'long' story; a multiple of 16")
    parser.add_argument("--seed", type=int, default=0, help="generation seed of video 0 (video i uses seed + i)")
    parser.add_argument("--story-seed", type=int, default=2024, help="seed that draws the test stories")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature")
    parser.add_argument("--redraw-first-frame", action=argparse.BooleanOptionalAction, default=None,
                        help="re-code the first frame from the second (default: the model's)")
    parser.add_argument("--sweep", action="store_true", help="accuracy vs seconds over CFG x steps x temperature")
    parser.add_argument("--sweep-cfg", default="1,3,5")
    parser.add_argument("--sweep-steps", default="4,8,12")
    parser.add_argument("--sweep-temperature", default="0.5,1.0")
    parser.add_argument("--tokenizer", default=None, help="also measure this video tokenizer on held-out shapes clips")
    parser.add_argument("--tokenizer-clips", type=int, default=32)
    parser.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    parser.add_argument("--out", default="runs/eval_shapes/eval_shapes.json",
                        help="JSON file; PNG grids go next to it (bench/results/ holds the committed run)")
    args = parser.parse_args(argv)
    args.sets = [] if args.sets == "none" else [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = set(args.sets) - set(SETS)
    if unknown:
        parser.error(f"unknown sets {sorted(unknown)}; choose from {SETS}")
    return args


def make_generator(args):
    """generate(story, seed) -> frames, for the model (or the ground truth with --oracle)."""
    if args.oracle:
        from tokvid.shapes import render_story

        return lambda story, seed: render_story(story, seed)[0]
    import tokvid

    pipe = tokvid.TokVidPipeline.from_pretrained(args.model)
    sampling = {k: v for k, v in (("steps", args.steps), ("cfg_scale", args.cfg_scale),
                                  ("temperature", args.temperature),
                                  ("redraw_first_frame", args.redraw_first_frame)) if v is not None}

    def generate(story, seed, **overrides):
        options = {**sampling, **overrides}
        if len(story) == 1:
            prompt, frames = story[0]
            return pipe(prompt, num_frames=1 + frames, seed=seed, **options).frames
        return pipe.story(story, seed=seed, **options).frames

    return generate


def build_sets(args) -> dict[str, list]:
    from tokvid.shapes_eval import long_story_suite, single_prompt_suite, story_suite

    suites = {"single": lambda: single_prompt_suite(16),
              "stories": lambda: story_suite(args.stories, args.story_seed),
              "long": lambda: long_story_suite(args.long_count, args.story_seed + 1, args.long_frames)}
    sets = {}
    for name in args.sets:
        stories = suites[name]()
        if args.limit is not None and name == "single":
            # spread a limited run over all colours, shapes and motions instead of the first prompts
            step = max(1, len(stories) // args.limit)
            stories = stories[::step]
        sets[name] = stories[:args.limit] if args.limit is not None else stories
    return sets


def interval(summary: dict) -> str:
    """The 95% interval of the segment accuracy, as the tables print it."""
    low, high = summary["segment_accuracy_interval"]
    return f"{low:.2f}-{high:.2f}"


def report_row(name: str, summary: dict) -> list:
    return [name, summary["videos"], summary["segment_accuracy"], interval(summary), summary["video_accuracy"],
            summary["colour_accuracy"], summary["shape_accuracy"], summary["motion_accuracy"], summary["identity_rate"],
            summary["clean_frame_rate"], summary["frozen_video_rate"], summary["blocked_segment_rate"],
            summary["seconds_per_video"]]


def run_sets(args, generate, out: Path) -> dict:
    from tokvid.shapes_eval import run_suite, suite_grid
    from tokvid.video_io import save_contact_sheet

    results, rows = {}, []
    for name, stories in build_sets(args).items():
        def progress(done, total, name=name):
            print(f"\r{name}: {done}/{total} videos", end="", flush=True)

        result = run_suite(generate, stories, seed=args.seed, progress=progress)
        print()
        grid, columns = suite_grid(result["videos"], frames_per_row=9 if name != "long" else 17)
        grid_path = out.with_name(f"{out.stem}_{name}.png")
        save_contact_sheet(grid_path, grid, columns=columns, max_frames=len(grid))
        results[name] = {"summary": result["summary"], "grid": str(grid_path),
                         "videos": [{"story": story, "seed": args.seed + i, "seconds": seconds, "score": score}
                                    for i, (story, seconds, score) in
                                    enumerate(zip(stories, result["seconds"], result["scores"]))]}
        rows.append(report_row(name, result["summary"]))
    if rows:
        common.print_table("shapes-v1 accuracy", ["set", "videos", "segment acc", "95% interval", "video acc", "colour",
                                                  "shape", "motion", "identity", "clean frames", "frozen", "blocked",
                                                  "s/video"],
                           rows)
    if "long" in results:
        drift = results["long"]["summary"]["accuracy_by_segment_index"]
        common.print_table("long stories: accuracy per 16-frame segment (drift)", ["segment", "accuracy"],
                           [[str(i), acc] for i, acc in drift.items()])
    return results


def run_sweep(args, generate) -> list[dict]:
    from tokvid.shapes_eval import run_suite, single_prompt_suite

    stories = single_prompt_suite(16)
    step = max(1, len(stories) // (args.limit or 21))
    stories = stories[::step][:args.limit or 21]
    rows, results = [], []
    for cfg in [float(v) for v in args.sweep_cfg.split(",")]:
        for steps in [int(v) for v in args.sweep_steps.split(",")]:
            for temperature in [float(v) for v in args.sweep_temperature.split(",")]:
                settings = {"cfg_scale": cfg, "steps": steps, "temperature": temperature}
                run = run_suite(lambda story, seed: generate(story, seed, **settings), stories, seed=args.seed)
                summary = run["summary"]
                results.append({**settings, **summary})
                rows.append([cfg, steps, temperature, summary["segment_accuracy"], interval(summary),
                             summary["frozen_video_rate"], summary["seconds_per_video"]])
                print(f"cfg {cfg} steps {steps} temperature {temperature}: accuracy "
                      f"{summary['segment_accuracy']:.3f} in {summary['seconds_per_video']:.2f} s/video", flush=True)
    common.print_table(f"sweep on {len(stories)} single prompts", ["cfg", "steps", "temperature", "accuracy",
                                                                   "95% interval", "frozen", "s/video"], rows)
    return results


def run_tokenizer(args) -> dict:
    import tokvid
    from tokvid.shapes_eval import held_out_shapes_clips, tokenizer_quality

    tokenizer = tokvid.VideoTokenizer.from_pretrained(args.tokenizer).eval()
    clips, stories = held_out_shapes_clips(args.tokenizer_clips)
    started = time.perf_counter()
    quality = tokenizer_quality(tokenizer, clips, stories)
    quality["seconds"] = time.perf_counter() - started
    scored = quality["reconstruction_scores"]
    common.print_table(f"video tokenizer {args.tokenizer} on {len(clips)} held-out shapes-v1 clips (17 frames)",
                       ["PSNR dB", "segment acc of reconstructions", "clean frames"],
                       [[quality["psnr_db"], scored["segment_accuracy"], scored["clean_frame_rate"]]])
    return quality


def main(argv=None) -> int:
    args = parse_args(argv)

    def fill(report: dict, out: Path) -> None:
        if args.sets or args.sweep:
            generate = make_generator(args)
            if args.sets:
                report["sets"] = run_sets(args, generate, out)
            if args.sweep:
                report["sweep"] = run_sweep(args, generate)
        if args.tokenizer:
            report["tokenizer"] = run_tokenizer(args)

    return common.run_report(args, fill)


if __name__ == "__main__":
    sys.exit(main())
