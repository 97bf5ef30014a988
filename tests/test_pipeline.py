import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tokvid.pipeline import TokVidPipeline
from tokvid.sampling import SamplingConfig
from tokvid.video_io import frames_to_tensor, tensor_to_frames
from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset


@pytest.fixture(scope="session")
def pipe(tiny_pipeline_dir):
    return TokVidPipeline.from_pretrained(tiny_pipeline_dir)


def test_prompt_gives_requested_frames(pipe):
    for frames in (1, 2, 9, 17, 20):
        out = pipe("a red circle moves right", num_frames=frames, seed=0)
        assert out.frames.shape == (frames, 64, 64, 3) and out.frames.dtype == np.uint8
    assert out.fps == 8


def test_story_has_sum_plus_leading_frame_and_is_deterministic(pipe):
    story = [("a red circle moves right", 8), ("a red circle moves down", 8)]
    a = pipe.story(story, seed=0)
    assert a.frames.shape[0] == 17 and a.codes.shape == (5, 8, 8)
    assert np.array_equal(a.frames, pipe.story(story, seed=0).frames)
    assert not np.array_equal(a.codes, pipe.story(story, seed=1).codes)


def spy_on_sample(monkeypatch) -> dict:
    """Swap the pipeline's sampler for one that records its last arguments (the SamplingConfig's fields
    spread out) and returns blank codes."""
    seen = {}

    def spy(model, text, num_chunks, *, config, **kwargs):
        seen.update(kwargs, **vars(config), text=text)
        return torch.zeros((1, num_chunks, 8, 8), dtype=torch.long)

    monkeypatch.setattr("tokvid.pipeline.sample", spy)
    return seen


def test_story_prompts_reach_their_chunks(pipe, monkeypatch):
    seen = spy_on_sample(monkeypatch)
    pipe.story([("a red circle moves right", 8), ("a red circle moves down", 8)], seed=0)
    first, second = pipe.text_tokenizer.batch(["a red circle moves right", "a red circle moves down"],
                                              pipe.generator.config.text_length)
    text = seen["text"][0]
    assert text.shape[0] == 5
    assert all(torch.equal(text[i], first) for i in (0, 1, 2))
    assert all(torch.equal(text[i], second) for i in (3, 4))


def test_sampling_options_reach_the_sampler(pipe, monkeypatch):
    seen = spy_on_sample(monkeypatch)
    pipe("a red circle moves right", num_frames=9, seed=0)
    assert {name: seen[name] for name in ("first_chunk_candidates", "min_code_count", "steps")} \
        == {name: getattr(pipe.sampling, name) for name in ("first_chunk_candidates", "min_code_count", "steps")}
    pipe("a red circle moves right", num_frames=9, seed=0, first_chunk_candidates=5, min_code_count=0, steps=3)
    assert (seen["first_chunk_candidates"], seen["min_code_count"], seen["steps"]) == (5, 0, 3)


def test_a_pipeline_states_every_sampling_option_and_overrides_the_defaults(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    written = json.loads((tmp_path / "saved" / "pipeline.json").read_text())["defaults"]
    assert written.keys() == {f for f in vars(SamplingConfig())} and written["steps"] == 2 != SamplingConfig().steps
    del written["steps"]  # an option a pipeline does not state takes SamplingConfig's default
    settings = json.loads((tmp_path / "saved" / "pipeline.json").read_text())
    settings["defaults"] = written
    (tmp_path / "saved" / "pipeline.json").write_text(json.dumps(settings))
    assert TokVidPipeline.from_pretrained(tmp_path / "saved").sampling.steps == SamplingConfig().steps


@pytest.mark.parametrize("retired, value, loads", [("order", "confidence", True), ("order", "random", False),
                                                    ("later_chunk_candidates", 1, True),
                                                    ("later_chunk_candidates", 4, False)])
def test_pipelines_saved_with_a_retired_option_load_only_at_its_kept_value(pipe, tmp_path, retired, value, loads):
    pipe.save_pretrained(tmp_path / "old")
    settings = json.loads((tmp_path / "old" / "pipeline.json").read_text())
    settings["defaults"][retired] = value
    (tmp_path / "old" / "pipeline.json").write_text(json.dumps(settings))
    if loads:
        assert TokVidPipeline.from_pretrained(tmp_path / "old").sampling == pipe.sampling
    else:
        with pytest.raises(ValueError, match=f"{retired}, an option retired"):
            TokVidPipeline.from_pretrained(tmp_path / "old")


def test_whole_numbers_saved_as_floats_load_as_ints(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path / "floats")
    settings = json.loads((tmp_path / "floats" / "pipeline.json").read_text())
    settings["defaults"].update(steps=2.0, top_k=50.0, first_chunk_candidates=2.0, min_code_count=0.0)
    (tmp_path / "floats" / "pipeline.json").write_text(json.dumps(settings))
    loaded = TokVidPipeline.from_pretrained(tmp_path / "floats")
    seen = spy_on_sample(monkeypatch)
    loaded("a red circle moves right", num_frames=9)
    assert [(seen[name], type(seen[name])) for name in ("steps", "top_k", "first_chunk_candidates", "min_code_count")] \
        == [(2, int), (50, int), (2, int), (0, int)]
    for name, value in (("steps", 2.5), ("top_k", 0.5), ("window_chunks", 1.5), ("min_code_count", -1.0)):
        with pytest.raises(ValueError, match=name):
            SamplingConfig(**{name: value})


def test_prime_frames_continue_a_video(pipe):
    prime = pipe("a blue square stays still", num_frames=5, seed=3).frames
    out = pipe("a blue square moves left", num_frames=9, seed=0, prime_frames=prime)
    assert out.frames.shape[0] == 5 + 8
    assert out.codes.shape[0] == 4
    expected = pipe.video_tokenizer.encode(frames_to_tensor(prime)[None])
    assert torch.equal(out.codes[:2], expected[0])


def test_redraw_first_frame_codes_the_second_frame_as_the_first(pipe):
    story = [("a red circle moves right", 8), ("a red circle moves down", 8)]
    drawn = pipe.story(story, seed=4, redraw_first_frame=False)
    redrawn = pipe.story(story, seed=4, redraw_first_frame=True)
    second = frames_to_tensor(drawn.frames[1:2])[None]
    assert torch.equal(redrawn.codes[:1], pipe.video_tokenizer.encode(second)[0])
    assert torch.equal(redrawn.codes[1:], drawn.codes[1:])  # the generated chunks stay as they were
    assert not torch.equal(redrawn.codes[:1], drawn.codes[:1])
    assert np.array_equal(redrawn.frames, tensor_to_frames(pipe.video_tokenizer.decode(redrawn.codes[None])[0]))


def test_redraw_first_frame_leaves_images_and_primed_videos_alone(pipe):
    image = pipe("a blue square stays still", num_frames=1, seed=2, redraw_first_frame=False)
    assert np.array_equal(image.frames, pipe("a blue square stays still", num_frames=1, seed=2,
                                             redraw_first_frame=True).frames)
    prime = pipe("a blue square stays still", num_frames=5, seed=3).frames  # the user's first frame stays theirs
    kept = pipe("a blue square moves left", num_frames=9, seed=0, prime_frames=prime, redraw_first_frame=False)
    assert np.array_equal(kept.frames, pipe("a blue square moves left", num_frames=9, seed=0, prime_frames=prime,
                                            redraw_first_frame=True).frames)
    with pytest.raises(ValueError, match="redraw_first_frame"):
        SamplingConfig(redraw_first_frame=1)


@pytest.mark.parametrize("call", [
    lambda p: p.story([("", 8)], seed=0),
    lambda p: p.story([("a red circle moves right", 0)], seed=0),
    lambda p: p.story([("a red circle moves right", -8)], seed=0),
    lambda p: p.story([], seed=0),
    lambda p: p("a red circle moves right", num_frames=0),
    lambda p: p("", num_frames=9),
    lambda p: p("a red circle moves right", num_frames=9, steps=0),
    lambda p: p("a red circle moves right", num_frames=9, cfg_scale=-1),
    lambda p: p("a red circle moves right", num_frames=9, order="confidence"),  # retired: an unknown option
    lambda p: p("a red circle moves right", num_frames=9, first_chunk_candidates=0),
    lambda p: p("a red circle moves right", num_frames=9, first_chunk_candidates=1.5),
    lambda p: p("a red circle moves right", num_frames=9, temperature=float("nan")),
    lambda p: p("a red circle moves right", num_frames=9, min_code_count=-1),
])
def test_bad_input_raises_value_error(pipe, call):
    with pytest.raises(ValueError):
        call(pipe)


def test_save_load_gives_identical_samples(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "again")
    again = TokVidPipeline.from_pretrained(tmp_path / "again")
    story = [("a green triangle moves up", 8)]
    assert np.array_equal(again.story(story, seed=5).frames, pipe.story(story, seed=5).frames)
    assert again.sampling == pipe.sampling


def test_unknown_model_name_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        TokVidPipeline.from_pretrained("no-such-model")
    (tmp_path / "pipeline.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a tokvid pipeline"):
        TokVidPipeline.from_pretrained(tmp_path)


def test_mismatched_parts_are_refused(pipe):
    other = VideoTokenizer(video_tokenizer_preset("tiny", fsq_levels=(5, 5)))
    with pytest.raises(ValueError, match="pair the generator"):
        TokVidPipeline(pipe.generator, pipe.text_tokenizer, other)


def run_tokvid(*args, cwd=None):
    code = "import sys; from tokvid.cli import tokvid_entry; sys.argv = ['tokvid'] + sys.argv[1:]; tokvid_entry()"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as for most users
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_cli_generate_writes_video_and_contact_sheet(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "v.mp4"
    result = run_tokvid("generate", "--prompt", "a red circle moves right", "--num-frames", "9", "--out", str(out),
                        "--model", str(tiny_pipeline_dir), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 2, result.stdout  # printed to a pipe, then the quick exit (exit_now)
    from tokvid.video_io import read_video
    assert read_video(out).shape == (9, 64, 64, 3)
    assert (tmp_path / "v.png").stat().st_size > 0
    story = tmp_path / "story.json"
    story.write_text(json.dumps([{"prompt": "a red circle moves right", "frames": 8},
                                 {"prompt": "a red circle moves up", "frames": 4}]))
    result = run_tokvid("generate", "--story-file", str(story), "--out", str(tmp_path / "s.gif"),
                        "--model", str(tiny_pipeline_dir), "--quiet", "--no-sheet")
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / "s.gif").shape[0] == 13
    result = run_tokvid("generate", "--story", "a red circle moves right : 1s ; a red circle moves up : 4f",
                        "--out", str(tmp_path / "i.mp4"), "--model", str(tiny_pipeline_dir), "--quiet")
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / "i.mp4").shape[0] == 13


def test_cli_redraw_first_frame_flag_overrides_the_model(tiny_pipeline_dir, tmp_path, monkeypatch):
    from tokvid.cli import generate_main

    import tokvid.pipeline

    redraws = []
    real = tokvid.pipeline.redraw_first_latent
    monkeypatch.setattr(tokvid.pipeline, "redraw_first_latent",
                        lambda codes, video_tokenizer: redraws.append(1) or real(codes, video_tokenizer))
    for flag, expected in (([], 0), (["--redraw-first-frame"], 1), (["--no-redraw-first-frame"], 0)):
        redraws.clear()
        generate_main(["generate", "--prompt", "a red circle moves right", "--num-frames", "9",
                       "--out", str(tmp_path / "r.mp4"), "--model", str(tiny_pipeline_dir), "--quiet", "--no-sheet",
                       "--threads", "1", *flag])
        assert len(redraws) == expected, flag


def test_cli_computes_with_the_idle_cores_unless_told(tiny_pipeline_dir, tmp_path, monkeypatch):
    from tokvid import cpu
    from tokvid.cli import generate_main

    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)  # recorded, not applied
    for flags, default, expected in (([], 3, [3]), (["--threads", "2"], 3, [2]), ([], None, [])):
        chosen.clear()
        monkeypatch.setattr(cpu, "default_threads", lambda default=default: default)
        generate_main(["generate", "--prompt", "a red circle moves right", "--num-frames", "1", "--quiet",
                       "--no-sheet", "--out", str(tmp_path / "t.mp4"), "--model", str(tiny_pipeline_dir), *flags])
        assert chosen == expected, flags


@pytest.mark.parametrize("args", [
    ["--prompt", "", "--num-frames", "9"],
    ["--prompt", "a red circle moves right", "--num-frames", "0"],
    ["--prompt", "a red circle moves right", "--num-frames", "-8"],
    ["--prompt", "a red circle moves right", "--num-frames", "999999999"],
    ["--story", "a red circle moves right"],
    ["--story-file", "MALFORMED"],
    ["--story-file", "MISSING"],
    ["--prompt", "a red circle moves right", "--model", "no-such-model"],
    ["--prompt", "a red circle moves right", "--min-code-count", "-1"],
    ["--prompt", "a red circle moves right", "--later-chunk-candidates", "3", "--cfg-scale", "1"],
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny_pipeline_dir, tmp_path, args):
    (tmp_path / "bad.json").write_text("[{\"prompt\": 1")
    args = [str(tmp_path / "bad.json") if a == "MALFORMED" else str(tmp_path / "missing.json") if a == "MISSING" else a
            for a in args]
    if "--model" not in args:
        args += ["--model", str(tiny_pipeline_dir)]
    result = run_tokvid("generate", *args, "--out", str(tmp_path / "x.mp4"), "--quiet")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def modules_loaded_by(argv: list[str], packages: tuple[str, ...]) -> tuple[str, list[str]]:
    """Run `tokvid <argv>` in a fresh interpreter: (its output, the modules of `packages` it imported; a
    package 'tokvid.training' counts its submodules)."""
    code = ("import json, sys\nfrom tokvid.cli import generate_main\ntry:\n    generate_main(sys.argv[1:])\n"
            "except SystemExit as stop:\n    print('EXIT', stop.code)\n"
            f"loaded = sorted(m for m in sys.modules if any(m == p or m.startswith(p + '.') for p in {packages!r}))\n"
            "print('LOADED', json.dumps(loaded))")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    output = result.stdout[-2000:] + result.stderr[-2000:]
    assert "LOADED " in result.stdout, output
    return output, json.loads(result.stdout.split("LOADED ")[-1])


def test_generation_imports_no_training_code(tmp_path):
    """`tokvid generate` starts fast: neither --help nor a generation imports DeepSpeed, TensorBoard or
    the training engine."""
    for argv in (["generate", "--help"], ["generate", "--prompt", "a red circle moves right", "--num-frames", "1",
                                          "--out", str(tmp_path / "one.mp4"), "--quiet", "--threads", "1"]):
        output, loaded = modules_loaded_by(argv, ("deepspeed", "tensorboard", "tokvid.training"))
        assert loaded == [], output
    assert (tmp_path / "one.mp4").exists() and (tmp_path / "one.png").exists()


@pytest.mark.parametrize("argv", [["generate", "--help"], ["generate", "--prompt", "a red circle", "--cfg-scale", "x"]])
def test_help_and_bad_flags_answer_without_importing_torch(argv):
    """torch's import is a second of start-up: `tokvid generate --help` and a mistyped flag need none of it."""
    output, loaded = modules_loaded_by(argv, ("torch", "tokvid.models", "tokvid.sampling", "tokvid.pipeline"))
    assert loaded == [] and ("EXIT 0" if "--help" in argv else "EXIT 2") in output, output


@pytest.mark.parametrize("prompt, unknown", [("a purple elephant dances", ["purple", "elephant", "dances"]),
                                             ("红色圆圈向右移动", ["红色圆圈向右移动"]),
                                             ("A RED circle, moves right!", [])])
def test_words_the_model_never_saw_are_named_with_the_words_it_knows(pipe, prompt, unknown):
    import warnings

    from tokvid.models.text_tokenizer import PromptWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(prompt, num_frames=1, seed=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, PromptWarning)]
    if not unknown:  # case and punctuation fold away: every word is known
        assert messages == []
        return
    assert len(messages) >= 1 and all(repr(word) in messages[0] for word in unknown)
    assert "the words it knows: a blue circle" in messages[0]
    with pytest.raises(ValueError, match="never saw"):
        pipe(prompt, num_frames=1, seed=0, strict=True)


def test_a_prompt_with_no_words_left_after_cleaning_is_refused(pipe):
    with pytest.raises(ValueError, match="has no words"):
        pipe("?! ...", num_frames=1, seed=0)


def test_a_prompt_longer_than_the_text_encoder_says_how_many_words_fit(pipe):
    import warnings

    long_prompt = " ".join(["a red circle moves right"] * 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(long_prompt, num_frames=1, seed=0)
    (message,) = [str(w.message) for w in caught]
    assert "too long for this model: it reads" in message and "of its 20 words" in message


def test_cli_warns_in_one_line_and_strict_exits_2(tiny_pipeline_dir, tmp_path):
    common = ["generate", "--prompt", "a purple circle moves right", "--num-frames", "5", "--model",
              str(tiny_pipeline_dir), "--out", str(tmp_path / "w.mp4")]
    warned = run_tokvid(*common)
    assert warned.returncode == 0, warned.stderr
    lines = [line for line in warned.stderr.splitlines() if "purple" in line]
    assert lines and all(line.startswith("tokvid: warning: ") for line in lines), warned.stderr  # one line each
    assert sum(line.startswith("tokvid: warning: this model never saw 'purple'") for line in lines) == 1
    assert "Traceback" not in warned.stderr
    strict = run_tokvid(*common, "--strict")
    assert strict.returncode == 2 and strict.stderr.startswith("tokvid: error: this model never saw 'purple'")
    assert strict.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def scenes_pipeline_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline, saved as a model that requires shapes-v2 captions."""
    pipe = TokVidPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.caption_grammar = "scenes"
    directory = tmp_path_factory.mktemp("scenes") / "pipe"
    pipe.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("story, message", [
    ([("a red circle moves right and a blue square stays still and a green triangle moves up", 4)], "names 3 objects"),
    ([("a purple circle moves right", 4)], "unknown colour 'purple'"),
    ([("a red circle moves right and a red square moves left", 4)], "two red objects"),
    ([("a red circle moves right and a blue square moves up", 4), ("a red circle moves left", 4)], "segment 1 names"),
])
def test_a_scenes_model_refuses_captions_outside_its_grammar(scenes_pipeline_dir, story, message):
    pipe = TokVidPipeline.from_pretrained(scenes_pipeline_dir)
    assert pipe.caption_grammar == "scenes"  # saved and loaded with the pipeline
    with pytest.raises(ValueError, match=f"this model draws shapes-v2 scenes.*{message}"):
        pipe.story(story, seed=0)
    video = pipe.story([("a red circle moves right and a blue square stays still", 4)], seed=0)
    assert video.frames.shape[0] == 5
    with pytest.raises(ValueError, match="unknown caption grammar"):
        TokVidPipeline(pipe.generator, pipe.text_tokenizer, pipe.video_tokenizer, caption_grammar="shapes-v3")


def test_cli_refuses_a_third_object_for_a_scenes_model_in_one_line(scenes_pipeline_dir, tmp_path):
    result = run_tokvid("generate", "--prompt", "a red circle moves right and a blue square stays still and a "
                        "cyan triangle moves up", "--num-frames", "5", "--model", str(scenes_pipeline_dir),
                        "--out", str(tmp_path / "three.mp4"))
    assert result.returncode == 2 and result.stderr.startswith("tokvid: error: this model draws shapes-v2 scenes")
    assert "names 3 objects" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "three.mp4").exists()
