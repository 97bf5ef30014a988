"""`tokvid demo`: the logic behind the Gradio page, kept free of Gradio so it imports without it.

The page itself is built in `tokvid.demo_app` (which imports Gradio inside its build function).
Here: which models the page offers, the story editor's row operations, turning a request into
checked (prompt, frames) segments, running the pipeline and writing the mp4, gif and contact sheet.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .pipeline import BUNDLED_PIPELINES, DEFAULT_PIPELINE, TokVidPipeline, resolve_pipeline_dir
from .story import parse_story_string, validate_segments
from .video_io import read_video, save_contact_sheet, write_video

MAX_ROWS = 8  # story rows the editor offers
MAX_SECONDS = 32.0  # one request's video length: bounds a visitor's share of a shared CPU server
KEEP_RESULTS = 64  # result folders kept on disk; older ones are deleted
INSTALL_HINT = "the demo needs Gradio: pip install -e '.[demo]' (or pip install gradio gradio_client)"

# Example stories per bundled model, in the CLI's --story syntax; a model directory gets the default's.
EXAMPLE_STORIES = {
    "shapes": [
        "a red circle moves right : 2s ; a red circle moves down : 2s",
        "a green triangle stays still : 1s ; a green triangle moves left : 2s",
        "a blue square moves up : 1s ; a blue square moves right : 1s ; a blue square moves down : 1s",
        "a yellow circle moves left : 2s ; a yellow circle stays still : 1s ; a yellow circle moves up : 2s",
        "a magenta triangle moves down : 3s",
    ],
    "scenes": [
        "a red circle moves right and a blue square stays still : 2s ; "
        "a red circle moves down and a blue square moves left : 2s",
        "an orange triangle moves up : 2s",
        "a cyan circle stays still and a white triangle moves right : 3s",
    ],
}


def sampling_defaults(pipe: TokVidPipeline) -> dict:
    """The model's own defaults for the controls the page shows (the one place that reads them)."""
    defaults = pipe.sampling
    return {"steps": int(defaults.steps), "cfg_scale": float(defaults.cfg_scale),
            "temperature": float(defaults.temperature)}


def available_models(extra: str | None = None) -> list[str]:
    """Bundled pipeline names present on disk, then `extra` (a --model name or directory) if it is new."""
    names = [name for name, directory in BUNDLED_PIPELINES.items() if (directory / "pipeline.json").is_file()]
    if extra is not None and str(extra) not in names:
        resolve_pipeline_dir(extra)  # a ValueError here says how to name a model
        names.append(str(extra))
    if not names:
        raise ValueError("no model to serve: the bundled weights are missing; reinstall tokvid or pass --model DIR")
    return names


def example_stories(model: str) -> list[str]:
    return EXAMPLE_STORIES.get(model, EXAMPLE_STORIES.get(DEFAULT_PIPELINE, []))


class ModelCache:
    """Loads each model once, on first use; the page's worker threads share the loaded pipelines."""

    def __init__(self, names: list[str]):
        self.names = list(names)
        self._loaded: dict[str, TokVidPipeline] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> TokVidPipeline:
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(self.names)}")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = TokVidPipeline.from_pretrained(name)
            return self._loaded[name]


# ----------------------------------------------------------------------------------------------
# the story editor: fixed rows of (prompt, seconds), the first `count` of them shown


def blank_rows() -> tuple[list[str], list[float | None]]:
    return [""] * MAX_ROWS, [None] * MAX_ROWS


def move_row(prompts: list, seconds: list, index: int, step: int) -> tuple[list, list]:
    """Swap row `index` with its neighbour `index + step` (no change at either end of the shown rows)."""
    prompts, seconds = list(prompts), list(seconds)
    other = index + step
    if 0 <= other < len(prompts):
        prompts[index], prompts[other] = prompts[other], prompts[index]
        seconds[index], seconds[other] = seconds[other], seconds[index]
    return prompts, seconds


def remove_row(prompts: list, seconds: list, count: int, index: int) -> tuple[list, list, int]:
    """Delete row `index`, moving the rows below it up; the last row always stays."""
    if count <= 1 or index >= count:
        return list(prompts), list(seconds), count
    prompts = list(prompts[:index]) + list(prompts[index + 1:]) + [""]
    seconds = list(seconds[:index]) + list(seconds[index + 1:]) + [None]
    return prompts, seconds, count - 1


def rows_from_story(text: str, fps: float) -> tuple[list[str], list[float | None], int]:
    """Fill the editor from a story in --story syntax (an example); seconds are frames / fps."""
    segments = parse_story_string(text, fps)
    if len(segments) > MAX_ROWS:
        raise ValueError(f"the story has {len(segments)} parts; the editor holds {MAX_ROWS}")
    prompts, seconds = blank_rows()
    for index, (prompt, frames) in enumerate(segments):
        prompts[index], seconds[index] = prompt, round(frames / fps, 3)
    return prompts, seconds, len(segments)


def segments_from_rows(prompts: list, seconds: list, fps: float) -> list[tuple[str, int]]:
    """The editor's shown rows -> checked (prompt, frames) segments; ValueError names the bad row."""
    segments = []
    for row, (prompt, length) in enumerate(zip(prompts, seconds), start=1):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"row {row} has an empty prompt; describe what happens in it")
        if length is None or not math.isfinite(float(length)):
            raise ValueError(f"row {row} has no length; give its seconds (e.g. 2)")
        frames = round(float(length) * fps)
        if frames < 1:
            raise ValueError(f"row {row} asks for {float(length):g} seconds; give at least {1 / fps:g} s")
        segments.append((prompt, frames))
    return check_length(validate_segments(segments), fps)


def check_length(segments: list[tuple[str, int]], fps: float, max_seconds: float = MAX_SECONDS) -> list:
    seconds = sum(frames for _, frames in segments) / fps
    if seconds > max_seconds + 1e-9:
        raise ValueError(f"the story is {seconds:g} s long; this page makes at most {max_seconds:g} s per video "
                         "(use `tokvid generate` for longer ones)")
    return segments


def load_prime(path: str | Path | None, pipe: TokVidPipeline) -> np.ndarray | None:
    """An uploaded image or video, resized and cropped to the model's frame size (ValueError if unreadable)."""
    if not path:
        return None
    config, tokenizer = pipe.generator.config, pipe.video_tokenizer
    size = (config.chunk_height * tokenizer.spatial_compression, config.chunk_width * tokenizer.spatial_compression)
    try:
        return read_video(path, fps=pipe.fps, size=size)
    except ValueError as error:
        raise ValueError(f"cannot use the prime file {Path(path).name}: {error}") from None


# ----------------------------------------------------------------------------------------------
# running a request


@dataclass
class DemoResult:
    mp4: Path
    gif: Path
    sheet: Path
    frames: int
    fps: float
    seed: int
    seconds: float  # wall time of the request


class ResultStore:
    """One folder per request under `root`, keeping the newest `keep` of them."""

    def __init__(self, root: str | Path, keep: int = KEEP_RESULTS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def new_folder(self) -> Path:
        with self._lock:
            folder = self.root / f"{time.time_ns()}-{next(self._counter)}"
            folder.mkdir()
            for old in sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return folder


def run_request(pipe: TokVidPipeline, segments: list[tuple[str, int]], seed: int, store: ResultStore,
                overrides: dict | None = None, prime: np.ndarray | None = None,
                progress: Callable[[int, int], None] | None = None) -> DemoResult:
    """Generate a checked story and write story.mp4 (as `tokvid generate` does), story.gif and story.png."""
    import torch

    if isinstance(seed, bool) or seed is None or float(seed) != int(seed) or not 0 <= int(seed) < 2 ** 63:
        raise ValueError(f"the seed must be a whole number >= 0, got {seed!r}")
    start = time.perf_counter()
    with torch.no_grad():
        out = pipe.story(segments, seed=int(seed), prime_frames=prime, progress=progress, **(overrides or {}))
    folder = store.new_folder()
    result = DemoResult(mp4=folder / "story.mp4", gif=folder / "story.gif", sheet=folder / "story.png",
                        frames=len(out.frames), fps=out.fps, seed=int(seed), seconds=0.0)
    write_video(result.mp4, out.frames, fps=out.fps)  # the same call and quality as `tokvid generate`
    write_video(result.gif, out.frames, fps=out.fps)
    save_contact_sheet(result.sheet, out.frames, scale=2)
    result.seconds = time.perf_counter() - start
    return result


def story_from_text(text: str, pipe: TokVidPipeline) -> list[tuple[str, int]]:
    """The API's story: --story syntax, parsed by the CLI's own parser, within the page's length limit."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the story is empty; write it as 'a red circle moves right : 2s ; a red circle moves down : 2s'")
    return check_length(parse_story_string(text, pipe.fps), pipe.fps)


# ----------------------------------------------------------------------------------------------
# command line: tokvid demo


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokvid demo", description="Serve a web page (Gradio) that turns stories "
                                     "into videos; programs call it with gradio_client (api_name='/generate').")
    parser.add_argument("--model", default=None, help="bundled name or pipeline directory to open with "
                        "(default: the bundled model); every bundled model is offered too")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share-queue", type=int, default=1, metavar="N",
                        help="requests generated at the same time; the rest wait in the queue (default 1)")
    return parser


def demo_main(argv=None) -> None:
    args = demo_parser().parse_args(argv)
    if args.share_queue < 1:
        raise ValueError(f"--share-queue must be >= 1, got {args.share_queue}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    names = available_models(args.model)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    default = str(args.model) if args.model is not None else names[0]
    if "OMP_NUM_THREADS" not in os.environ:  # N requests at once on a few cores: don't oversubscribe them
        import torch
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.share_queue))
    from .demo_app import serve

    serve(ModelCache(names), default, host=args.host, port=args.port, concurrency=args.share_queue)
