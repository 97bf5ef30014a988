"""train/recipe_scenes.py: its stages, their order and flags, the image ablation's reuse, without training."""
import json
import sys
from pathlib import Path

import pytest

from test_training import fake_stage_runner, flag_value

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import recipe_scenes  # noqa: E402
import recipe_shapes  # noqa: E402  (the stage runner the scenes recipe shares)


@pytest.fixture
def commands(monkeypatch):
    """The stage commands the recipe runs, recorded instead of run."""
    recorded = []
    for module in (recipe_scenes, recipe_shapes):
        monkeypatch.setattr(module, "run", fake_stage_runner(recorded))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # the recipe sets it if unset; keep it from leaking
    return recorded


def commands_of(commands, script):
    return [c for c in commands if any(part.endswith(script) for part in c)]


def test_recipe_trains_tokenizer_from_shapes_then_generator_with_images(tmp_path, commands):
    run = tmp_path / "run"
    assert recipe_scenes.main(["--out", str(run)]) == 0
    data = next(c for c in commands if c[:2] == ["tokvid-data", "scenes"])
    assert flag_value(data, "--num-videos") == "6000" and flag_value(data, "--num-images") == "8000"
    tokenizers = commands_of(commands, "train_tokenizer.py")
    assert [flag_value(c, "--init-from") for c in tokenizers] == [
        "shapes", str(run / "video_tokenizer" / "export"), str(run / "video_decoder" / "export")]
    assert all(flag_value(c, "--manifest") == str(run / "data" / "tokenizer_manifest.jsonl") for c in tokenizers)
    text = next(c for c in commands if any(part.endswith("train_text_tokenizer.py") for part in c))
    assert flag_value(text, "--max-length") == "16"  # two-object captions take up to 13 pieces
    generators = commands_of(commands, "train_generator.py")
    assert [flag_value(c, "--max-steps") for c in generators] == ["6000", "4000", "3000", "3000"]
    assert all(flag_value(c, "--image-ratio") == "0.5" and flag_value(c, "--preset") == "medium" for c in generators)
    assert generators[0][0] == sys.executable and all(c[0] == "deepspeed" for c in generators[1:])
    assert [flag_value(c, "--micro-batch") for c in generators] == ["16", "8", "8", "8"]
    commands.clear()
    assert recipe_scenes.main(["--out", str(run)]) == 0 and commands == []  # a re-run starts nothing finished


def test_the_image_ablation_reuses_data_tokenizers_and_shards(tmp_path, commands):
    assert recipe_scenes.main(["--out", str(tmp_path / "with")]) == 0
    commands.clear()
    without = tmp_path / "without"
    assert recipe_scenes.main(["--out", str(without), "--reuse", str(tmp_path / "with"), "--image-ratio", "0"]) == 0
    assert commands == commands_of(commands, "train_generator.py") and len(commands) == 4  # generator stages only
    assert all(flag_value(c, "--image-ratio") == "0.0" for c in commands)
    assert flag_value(commands[0], "--data") == str(without / "shards")
    assert (without / "shards").resolve() == (tmp_path / "with" / "shards").resolve()


def test_tokenizer_manifest_keeps_every_video_and_the_first_stills(tmp_path):
    lines = [{"path": f"video_{i}.mp4", "caption": "a red circle moves right"} for i in range(3)]
    lines += [{"path": f"image_{i}.png", "caption": "an orange circle"} for i in range(4)]
    lines.insert(2, {"path": "image_x.png", "caption": "a red circle"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    kept = recipe_scenes.tokenizer_manifest(manifest, tmp_path / "kept.jsonl", num_images=2)
    paths = [json.loads(line)["path"] for line in kept.read_text().splitlines()]
    assert paths == ["video_0.mp4", "video_1.mp4", "image_x.png", "video_2.mp4", "image_0.png"]


@pytest.mark.parametrize("flags, message", [
    (["--image-ratio", "1.5"], "--image-ratio must be between 0 and 1"),
    (["--finetune-ranks", "3"], "must divide"),
    (["--reuse", "nowhere"], "no finished shards there")])
def test_recipe_rejects_bad_flags_before_starting_anything(tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe_scenes.main(["--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
