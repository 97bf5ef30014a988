"""The `tokvid demo` page (Gradio): a story editor, sampling controls, the result, and the /generate API.

Gradio is an optional extra, so it is imported inside the functions that need it; the logic the
page runs lives in `tokvid.demo` and is tested without a browser.
"""
from __future__ import annotations

import logging
import os
import signal
import tempfile
from pathlib import Path

from .demo import (MAX_ROWS, MAX_SECONDS, ModelCache, ResultStore, blank_rows, example_stories, load_prime,
                   move_row, remove_row, rows_from_story, run_request, sampling_defaults, segments_from_rows,
                   story_from_text)

log = logging.getLogger("tokvid.demo")
MODES = ("Story", "Single prompt")
# 64x64 videos shown at page size: keep the pixels square instead of blurring them
CSS = "#result-video video, #contact-sheet img { image-rendering: pixelated; }"
INTRO = (f"# tokvid: stories to video\nWrite a story, a prompt held for some seconds per row (at most {MAX_ROWS} "
         f"rows and {MAX_SECONDS:g} s), or pick an example, then press **Generate**. Programs call the same page: "
         "`gradio_client.Client(url).predict(story, seed, api_name=\"/generate\")`.")


def page_errors(function):
    """Bad input becomes a message in the page (gr.Error); anything else is logged, and the page says so."""
    import functools

    import gradio as gr

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gr.Error:
            raise
        except ValueError as error:
            raise gr.Error(str(error), duration=30, title="Cannot generate", print_exception=False) from None
        except Exception as error:
            log.exception("request failed")
            raise gr.Error(f"internal error ({type(error).__name__}); the server log has the details",
                           duration=30, title="Error", print_exception=False) from None
    return wrapped


def chunk_progress(progress):
    """The pipeline's progress(done, total) per sampled chunk, shown on the page's progress bar."""
    return lambda done, total: progress((done, total), desc="sampling chunks", unit="chunks")


def build_app(models: ModelCache, default: str, store: ResultStore, concurrency: int = 1):
    """The page (a gr.Blocks) serving `models`, `default` first; results go to `store`."""
    import gradio as gr

    pipe = models.get(default)
    prompts0, seconds0, count0 = rows_from_story(example_stories(default)[0], pipe.fps)
    with gr.Blocks(title="tokvid demo", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=3):
                editor = _editor(gr, models, default, prompts0, seconds0, count0)
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                controls = _sampling_controls(gr, sampling_defaults(pipe))
                prime = gr.File(label="Prime image or video (optional): the video continues from it",
                                file_types=["image", "video"], height=110, elem_id="prime")
            with gr.Column(scale=2):
                status = gr.Markdown("The video, its contact sheet and the files appear here.", elem_id="status")
                video = gr.Video(label="Video", elem_id="result-video", autoplay=True, loop=True, height=320,
                                 interactive=False)
                sheet = gr.Image(label="Contact sheet", type="filepath", elem_id="contact-sheet", interactive=False)
                downloads = gr.File(label="Download (mp4, gif)", file_count="multiple", elem_id="downloads",
                                    interactive=False)
        _wire_editor(gr, models, editor, controls)
        limit = dict(concurrency_limit=concurrency, concurrency_id="generate")
        generate.click(_ui_generate(models, store), [editor["model"], editor["mode"], editor["count"],
                                                     editor["single_prompt"], editor["single_seconds"],
                                                     *controls.values(), prime, *editor["prompts"],
                                                     *editor["seconds"]],
                       [video, sheet, downloads, status, controls["seed"]], api_name="generate_page",
                       api_visibility="private", **limit)
        _api_endpoint(gr, models, default, store, limit)
    return app


def _editor(gr, models: ModelCache, default: str, prompts0, seconds0, count0) -> dict:
    """Model chooser, mode, the rows of (prompt, seconds) with their buttons, the single prompt, examples."""
    parts = {"prompts": [], "seconds": [], "rows": [], "up": [], "down": [], "remove": []}
    parts["model"] = gr.Dropdown(models.names, value=default, label="Model", elem_id="model")
    parts["mode"] = gr.Radio(list(MODES), value=MODES[0], label="Mode", elem_id="mode")
    parts["count"] = gr.State(count0)
    with gr.Group(visible=True, elem_id="story-editor") as parts["story_group"]:
        for i in range(MAX_ROWS):
            with gr.Row(visible=i < count0, equal_height=True) as row:
                parts["prompts"].append(gr.Textbox(prompts0[i], placeholder=f"prompt {i + 1}", show_label=False,
                                                   container=False, scale=6, elem_id=f"prompt-{i}"))
                parts["seconds"].append(gr.Number(seconds0[i], show_label=False, container=False, scale=1,
                                                  min_width=70, step=0.5, elem_id=f"seconds-{i}"))
                for key, label in (("up", "↑"), ("down", "↓"), ("remove", "✕")):
                    parts[key].append(gr.Button(label, size="sm", scale=0, min_width=36, elem_id=f"{key}-{i}"))
            parts["rows"].append(row)
        parts["add"] = gr.Button("+ add a row", size="sm", elem_id="add-row")
    with gr.Group(visible=False, elem_id="single-editor") as parts["single_group"]:
        parts["single_prompt"] = gr.Textbox(label="Prompt", placeholder="a blue square moves up",
                                            elem_id="single-prompt")
        parts["single_seconds"] = gr.Number(2, label="Seconds", step=0.5, elem_id="single-seconds")
    parts["examples"] = gr.Dataset(components=["textbox"], samples=[[s] for s in example_stories(default)],
                                   label="Example stories (click one to fill the editor)", elem_id="examples")
    return parts


def _sampling_controls(gr, defaults: dict) -> dict:
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="seed")
            random_seed = gr.Checkbox(False, label="Random seed", elem_id="random-seed")
        with gr.Row():
            steps, cfg, temperature = _default_fields(gr, defaults)
    return {"seed": seed, "random_seed": random_seed, "steps": steps, "cfg_scale": cfg, "temperature": temperature}


def _default_fields(gr, defaults: dict, render: bool = True):
    """Steps, CFG and temperature set to (and labelled with) the model's defaults; also their updates."""
    info = "model default: {:g}".format
    return (gr.Slider(1, 32, value=defaults["steps"], step=1, label="Steps per chunk", info=info(defaults["steps"]),
                      elem_id="steps", render=render),
            gr.Number(defaults["cfg_scale"], label="CFG scale", info=info(defaults["cfg_scale"]), step=0.5,
                      elem_id="cfg-scale", render=render),
            gr.Number(defaults["temperature"], label="Temperature", info=info(defaults["temperature"]), step=0.05,
                      elem_id="temperature", render=render))


def _wire_editor(gr, models: ModelCache, parts: dict, controls: dict) -> None:
    prompts, seconds, rows, count = parts["prompts"], parts["seconds"], parts["rows"], parts["count"]
    values = [count, *prompts, *seconds]
    private = dict(api_visibility="private", queue=False)

    def shown(n: int) -> list:
        return [gr.update(visible=i < n) for i in range(MAX_ROWS)]

    def mover(index: int, step: int):
        def move(n, *rest):
            if not 0 <= index + step < n:
                return [*rest]
            new_prompts, new_seconds = move_row(rest[:MAX_ROWS], rest[MAX_ROWS:], index, step)
            return [*new_prompts, *new_seconds]
        return move

    def remover(index: int):
        def remove(n, *rest):
            new_prompts, new_seconds, n = remove_row(rest[:MAX_ROWS], rest[MAX_ROWS:], n, index)
            return [n, *shown(n), *new_prompts, *new_seconds]
        return remove

    for i in range(MAX_ROWS):
        parts["up"][i].click(mover(i, -1), values, [*prompts, *seconds], **private)
        parts["down"][i].click(mover(i, 1), values, [*prompts, *seconds], **private)
        parts["remove"][i].click(remover(i), values, [count, *rows, *prompts, *seconds], **private)

    def add(n):
        n = min(n + 1, MAX_ROWS)
        return [n, *shown(n)]

    parts["add"].click(add, [count], [count, *rows], **private)
    parts["mode"].change(lambda mode: [gr.update(visible=mode == MODES[0]), gr.update(visible=mode == MODES[1])],
                         [parts["mode"]], [parts["story_group"], parts["single_group"]], **private)

    @page_errors
    def fill(sample, model):
        new_prompts, new_seconds, n = rows_from_story(sample[0], models.get(model).fps)
        return [MODES[0], n, *shown(n), *new_prompts, *new_seconds]

    parts["examples"].click(fill, [parts["examples"], parts["model"]],
                            [parts["mode"], count, *rows, *prompts, *seconds], **private)

    @page_errors
    def choose_model(model):
        fields = _default_fields(gr, sampling_defaults(models.get(model)), render=False)
        return [*fields, gr.Dataset(samples=[[s] for s in example_stories(model)])]

    parts["model"].change(choose_model, [parts["model"]], [controls["steps"], controls["cfg_scale"],
                                                          controls["temperature"], parts["examples"]],
                          api_visibility="private")


def _ui_generate(models: ModelCache, store: ResultStore):
    import random

    import gradio as gr

    @page_errors
    def generate(model, mode, count, single_prompt, single_seconds, seed, random_seed, steps, cfg_scale,
                 temperature, prime_path, *rows, progress=gr.Progress()):
        progress(0, desc="loading the model")
        pipe = models.get(model)
        if mode == MODES[1]:
            segments = segments_from_rows([single_prompt], [single_seconds], pipe.fps)
        else:
            segments = segments_from_rows(rows[:count], rows[MAX_ROWS:MAX_ROWS + count], pipe.fps)
        if random_seed:
            seed = random.randrange(2 ** 31)
        overrides = {"steps": int(steps), "cfg_scale": float(cfg_scale), "temperature": float(temperature)}
        result = run_request(pipe, segments, seed, store, overrides=overrides, prime=load_prime(prime_path, pipe),
                             progress=chunk_progress(progress))
        note = (f"{result.frames} frames at {result.fps:g} fps ({result.frames / result.fps:g} s), seed {result.seed}, "
                f"made in {result.seconds:.1f} s")
        return str(result.mp4), str(result.sheet), [str(result.mp4), str(result.gif)], note, result.seed
    return generate


def _api_endpoint(gr, models: ModelCache, default: str, store: ResultStore, limit: dict) -> None:
    """/generate(story, seed) -> mp4, for programs: the default model with its own sampling defaults."""
    with gr.Group(visible=False):
        story_box = gr.Textbox(label="story", info="--story syntax: 'a red circle moves right : 2s ; ... : 16f'")
        seed_box = gr.Number(0, label="seed", precision=0)
        mp4 = gr.File(label="mp4")
        trigger = gr.Button("generate")

    @page_errors
    def generate(story: str, seed: int, progress=gr.Progress()) -> str:
        pipe = models.get(default)
        result = run_request(pipe, story_from_text(story, pipe), seed, store, progress=chunk_progress(progress))
        return str(result.mp4)

    trigger.click(generate, [story_box, seed_box], [mp4], api_name="generate", **limit)


def serve(models: ModelCache, default: str, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1) -> None:
    """Start the page and block until interrupted (Ctrl-C or SIGTERM); results live in a temporary folder."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    root = Path(tempfile.mkdtemp(prefix="tokvid-demo-"))
    app = build_app(models, default, ResultStore(root), concurrency)
    app.queue(default_concurrency_limit=concurrency, max_size=64)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            app.launch(server_name=host, server_port=port, allowed_paths=[str(root)], prevent_thread_lock=True,
                       ssr_mode=False, mcp_server=False, pwa=False, quiet=True, css=CSS)
        except OSError as error:
            raise ValueError(f"cannot serve on {host}:{port} ({error}); choose another --port") from None
        print(f"tokvid demo: serving {', '.join(models.names)} on http://{host}:{port} "
              f"({concurrency} at a time; Ctrl-C stops)", flush=True)
        app.block_thread()
    finally:
        signal.signal(signal.SIGTERM, previous)
        app.close()
        import shutil
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(*_):
    raise KeyboardInterrupt
