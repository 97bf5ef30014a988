"""`tokvid demo`'s logic without a browser or Gradio: the editor's rows, request checks, results, the CLI."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokvid import demo
from tokvid.pipeline import TokVidPipeline
from tokvid.video_io import read_video, write_video

REPO = Path(__file__).resolve().parents[1]
RUN_TOKVID = "import sys; from tokvid.cli import tokvid_entry; sys.argv = ['tokvid'] + sys.argv[1:]; tokvid_entry()"


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return TokVidPipeline.from_pretrained(tiny_pipeline_dir)


def test_rows_move_and_remove_keep_prompts_with_their_seconds():
    prompts, seconds = ["a", "b", "c", ""], [1, 2, 3, None]
    assert demo.move_row(prompts, seconds, 1, -1) == (["b", "a", "c", ""], [2, 1, 3, None])
    assert demo.move_row(prompts, seconds, 0, -1) == (prompts, seconds)  # the first row cannot go up
    assert demo.remove_row(prompts, seconds, 3, 0) == (["b", "c", "", ""], [2, 3, None, None], 2)
    assert demo.remove_row(["a", ""], [1, None], 1, 0) == (["a", ""], [1, None], 1)  # the last row stays


def test_rows_from_an_example_story_round_trip_to_its_segments():
    prompts, seconds, count = demo.rows_from_story("a red circle moves right : 2s ; a red circle moves down : 4f", 8)
    assert count == 2 and len(prompts) == demo.MAX_ROWS
    assert (prompts[:2], seconds[:2]) == (["a red circle moves right", "a red circle moves down"], [2.0, 0.5])
    assert demo.segments_from_rows(prompts[:2], seconds[:2], 8) == [("a red circle moves right", 16),
                                                                     ("a red circle moves down", 4)]


@pytest.mark.parametrize("prompts, seconds, message", [
    (["a red circle moves right", "  "], [1, 1], "row 2 has an empty prompt"),
    (["a red circle moves right"], [0], "row 1 asks for 0 seconds; give at least 0.125 s"),
    (["a red circle moves right"], [None], "row 1 has no length"),
    (["a red circle moves right"], [33], "the story is 33 s long; this page makes at most 32 s"),
])
def test_bad_rows_say_which_row_and_what_to_do(prompts, seconds, message):
    with pytest.raises(ValueError, match=message):
        demo.segments_from_rows(prompts, seconds, 8)


def test_api_story_uses_the_cli_parser_and_the_length_limit(pipe):
    assert demo.story_from_text("a red circle moves right : 1s ; a red circle moves down : 3f", pipe) == \
        [("a red circle moves right", 8), ("a red circle moves down", 3)]
    for text, message in (("", "the story is empty"), ("a red circle : 0s", "asks for 0 frames"),
                          ("a red circle moves up : 40s", "at most 32 s"), ("no length", "must look like")):
        with pytest.raises(ValueError, match=message):
            demo.story_from_text(text, pipe)


def test_sampling_defaults_are_the_models_own(tiny_pipeline_dir):
    pipe = TokVidPipeline.from_pretrained(tiny_pipeline_dir)  # its own copy: the defaults are changed here
    pipe.sampling.steps, pipe.sampling.temperature = 5, 0.75
    assert demo.sampling_defaults(pipe) == {"steps": 5, "cfg_scale": pipe.sampling.cfg_scale, "temperature": 0.75}


def test_models_offered_are_the_bundled_ones_on_disk_plus_a_directory(tiny_pipeline_dir):
    bundled = [name for name, d in demo.BUNDLED_PIPELINES.items() if (d / "pipeline.json").is_file()]
    assert demo.available_models() == bundled
    assert demo.available_models(str(tiny_pipeline_dir)) == bundled + [str(tiny_pipeline_dir)]
    with pytest.raises(ValueError, match="unknown model 'nowhere'"):
        demo.available_models("nowhere")
    assert demo.example_stories(str(tiny_pipeline_dir)) == demo.EXAMPLE_STORIES["shapes"]
    cache = demo.ModelCache([str(tiny_pipeline_dir)])
    assert cache.get(str(tiny_pipeline_dir)) is cache.get(str(tiny_pipeline_dir))  # loaded once
    with pytest.raises(ValueError, match="choose one of"):
        cache.get("shapes")


def test_request_writes_the_pipelines_frames_as_tokvid_generate_does(pipe, tmp_path):
    story = [("a red circle moves right", 4), ("a red circle moves down", 4)]
    calls = []
    result = demo.run_request(pipe, story, 7, demo.ResultStore(tmp_path / "results"),
                              progress=lambda done, total: calls.append((done, total)))
    frames = pipe.story(story, seed=7).frames
    write_video(tmp_path / "reference.mp4", frames, fps=pipe.fps)
    assert result.mp4.read_bytes() == (tmp_path / "reference.mp4").read_bytes()
    gif = read_video(result.gif)  # a palette per frame: near the frames, not equal (the untrained model's are noise)
    assert gif.shape == frames.shape and np.abs(gif.astype(int) - frames).mean() < 8
    assert result.sheet.stat().st_size > 0 and (result.frames, result.seed) == (9, 7)
    assert calls[-1] == (3, 3)
    with pytest.raises(ValueError, match="seed must be a whole number"):
        demo.run_request(pipe, story, -1, demo.ResultStore(tmp_path / "results"))


def test_result_store_keeps_only_the_newest_folders(tmp_path):
    store = demo.ResultStore(tmp_path, keep=2)
    folders = [store.new_folder() for _ in range(4)]
    assert sorted(tmp_path.iterdir()) == sorted(folders[-2:])


def test_prime_is_fitted_to_the_model_and_unreadable_ones_are_named(pipe, tmp_path):
    Image.fromarray(np.full((80, 100, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    assert demo.load_prime(tmp_path / "wide.png", pipe).shape == (1, 64, 64, 3)
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="cannot use the prime file broken.mp4"):
        demo.load_prime(tmp_path / "broken.mp4", pipe)
    assert demo.load_prime(None, pipe) is None


def run_demo_cli(args, tmp_path, extra_path=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [extra_path, str(REPO),
                                                                    os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", RUN_TOKVID, "demo", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path)


def test_demo_without_gradio_says_how_to_install_it(tmp_path):
    blocker = tmp_path / "no_gradio"
    blocker.mkdir()
    (blocker / "gradio.py").write_text("raise ImportError('No module named gradio')\n")
    result = run_demo_cli([], tmp_path, extra_path=str(blocker))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["tokvid demo: error: " + demo.INSTALL_HINT]


@pytest.mark.parametrize("args, message", [(["--model", "nowhere"], "unknown model 'nowhere'"),
                                           (["--share-queue", "0"], "--share-queue must be >= 1")])
def test_demo_bad_flags_exit_2_with_one_line(args, message, tmp_path):
    result = run_demo_cli(args, tmp_path)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
