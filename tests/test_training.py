"""The training loop in one process (1 rank, gloo): checkpoints, resume, skips, signals, config.

Two-rank behaviour (ZeRO-2/3 parity, SIGKILL + resume, codebook sync, export) is in test_distributed.py.
"""
import json
import os
import signal

import pytest
import torch
from torch import nn

from tokvid.datasets import epoch_permutation
from tokvid.mixed_dataset import MixedBatchLoader

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from faults import inject_faults  # noqa: E402
from tokvid.training.checkpoints import (COMPLETE_MARKER, complete_checkpoints, prune_checkpoints,  # noqa: E402
                                         resolve_resume)
from tokvid.training.distributed import build_ds_config, load_ds_config  # noqa: E402
from tokvid.training.engine import (TrainingConfig, TrainingStopped, enable_activation_checkpointing,  # noqa: E402
                                    run_training, warmup_cosine)

DS_CONFIG = {"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0, "steps_per_print": 1000}


class Toy(nn.Module):
    """A linear regressor whose loss adds noise from the step's generator."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.gain = nn.Parameter(torch.ones(1))

    def training_loss(self, x, generator):
        noisy = x + 0.01 * torch.randn(x.shape, generator=generator)
        loss = ((self.linear(noisy) * self.gain).squeeze(-1) - x.sum(-1)).pow(2).mean()
        return loss, {"noise": float((noisy - x).abs().mean())}


class Items:
    """Item i is a small vector; items in `poisoned` are NaN, items in `corrupt` raise ValueError."""

    def __init__(self, size=16, poisoned=(), corrupt=()):
        self.size, self.poisoned, self.corrupt = size, set(poisoned), set(corrupt)

    def __len__(self):
        return self.size

    def load(self, index, rng):
        if index in self.corrupt:
            raise ValueError("cannot decode")
        value = float("nan") if index in self.poisoned else index / self.size
        return torch.full((4,), value) + torch.from_numpy(rng.normal(size=4)).float() * 0.1

    def collate(self, samples):
        return torch.stack(samples)

    def describe(self, index):
        return f"clip{index}.mp4"


def train(tmp_path, steps=6, items=None, on_loss=None, make_loader=None, **overrides):
    settings = dict(out_dir=str(tmp_path / "run"), max_steps=steps, micro_batch=2, save_every=3, warmup_steps=2,
                    lr=1e-2, resume="auto", max_bad_data_fraction=0.5)
    config = TrainingConfig(**{**settings, **overrides})
    exported = {}

    def loss_fn(model, batch, generator):
        if on_loss:
            on_loss()
        return model.training_loss(batch, generator)

    def export(model, directory):
        directory.mkdir(parents=True)
        exported.update({k: v.clone() for k, v in model.state_dict().items()})
        torch.save(model.state_dict(), directory / "weights.pt")

    result = run_training(config, DS_CONFIG, Toy, items or Items(), loss_fn, lambda batch: batch.shape[0], export,
                          make_loader=make_loader)
    return result, exported


def metrics(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_metrics_checkpoints_and_export(tmp_path):
    result, exported = train(tmp_path, steps=7, keep_last=2)
    records = metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, 8)) and result.status == "finished"
    first = records[0]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "skipped", "noise"} <= first.keys()
    assert first["lr"] == pytest.approx(5e-3) and records[1]["lr"] == pytest.approx(1e-2)  # warmup over 2 steps
    assert all(r["skipped"] == 0 and r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in records)
    assert [step for step, _ in complete_checkpoints(tmp_path / "run")] == [6, 7]  # keep_last=2, last step saved
    assert (tmp_path / "run" / "tb").is_dir()
    saved = torch.load(tmp_path / "run" / "export" / "weights.pt")
    assert set(saved) == {"linear.weight", "linear.bias", "gain"} and torch.equal(saved["gain"], exported["gain"])
    assert not torch.equal(saved["gain"], torch.ones(1))


@pytest.fixture
def own_signal_handlers():
    """An interrupted run leaves its stop handlers installed (its process is exiting); give pytest its own back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_interrupt_by_signal_saves_and_resume_repeats_the_uninterrupted_losses(tmp_path, own_signal_handlers):
    reference, _ = train(tmp_path / "reference", steps=6)
    calls = []

    def signal_in_step_two():
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    first, _ = train(tmp_path, steps=6, on_loss=signal_in_step_two)
    assert first.status == "interrupted" and first.step == 2 and first.signal == signal.SIGTERM
    assert [s for s, _ in complete_checkpoints(tmp_path / "run")] == [2]
    second, _ = train(tmp_path, steps=6)
    assert second.step == 6
    assert [r["loss"] for r in metrics(tmp_path)] == reference.losses  # bit-identical, steps 1-6


def test_resume_with_two_loader_workers_repeats_the_uninterrupted_run_without_workers(tmp_path):
    reference, _ = train(tmp_path / "reference", steps=6, items=Items(corrupt=(5, 9)), num_workers=0)
    calls = []

    def signal_in_step_three():
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first, _ = train(tmp_path, steps=6, items=Items(corrupt=(5, 9)), on_loss=signal_in_step_three, num_workers=2)
    assert first.status == "interrupted" and first.step == 3
    second, _ = train(tmp_path, steps=6, items=Items(corrupt=(5, 9)), num_workers=2)
    assert second.step == 6 and second.bad_items == reference.bad_items == 2
    got, expected = metrics(tmp_path), metrics(tmp_path / "reference")
    assert [r["loss"] for r in got] == reference.losses  # bit-identical, steps 1-6
    assert [r["bad_items"] for r in got] == [r["bad_items"] for r in expected]


def mixed_loader(videos=None, images=None):
    """The engine's loader factory for joint image-video training over two toy datasets."""
    def make(batch_size, seed, rank, world_size, num_workers):
        return MixedBatchLoader(videos or Items(corrupt=(5,)), images or Items(size=8), 0.5, batch_size, seed, rank,
                                world_size, num_workers)
    return make


def test_a_mixed_image_video_loader_trains_and_resumes_exactly_with_workers(tmp_path, own_signal_handlers):
    reference, _ = train(tmp_path / "reference", steps=6, make_loader=mixed_loader(), num_workers=0)
    plain, _ = train(tmp_path / "plain", steps=6, items=Items(corrupt=(5,)), num_workers=0)
    assert reference.losses != plain.losses  # the factory's batches were trained, not the dataset's
    calls = []

    def signal_in_step_three():
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first, _ = train(tmp_path, steps=6, make_loader=mixed_loader(), on_loss=signal_in_step_three, num_workers=2)
    assert first.status == "interrupted" and first.step == 3
    second, _ = train(tmp_path, steps=6, make_loader=mixed_loader(), num_workers=2)
    assert [r["loss"] for r in metrics(tmp_path)] == reference.losses  # bit-identical, steps 1-6
    assert second.bad_items == reference.bad_items  # counted over the loader's dataset (videos + images)


def test_a_crashed_run_truncates_metrics_and_resumes_from_the_last_checkpoint(tmp_path):
    reference, _ = train(tmp_path / "reference", steps=5)
    calls = []

    def crash_in_step_five():
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tmp_path, steps=5, on_loss=crash_in_step_five)  # got to step 4, last checkpoint at 3
    assert len(metrics(tmp_path)) == 4
    resumed, _ = train(tmp_path, steps=5)
    assert resumed.losses == reference.losses[3:]
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in metrics(tmp_path)] == reference.losses


@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_non_finite_loss_and_gradient_steps_are_skipped_and_counted(tmp_path, zero_stage):
    # fp32 ZeRO-1/2/3 all treat a non-finite gradient norm as an overflow: was_step_applied() is False
    with inject_faults(nan_loss_at=2, nan_grad_at=4):
        result, exported = train(tmp_path, steps=6, zero_stage=zero_stage)
    records = metrics(tmp_path)
    assert [r["skipped"] for r in records] == [0, 1, 0, 1, 0, 0]
    assert records[1]["skip_reason"] == "loss" and records[3]["skip_reason"] == "grad_norm"
    assert records[1]["loss"] is None and records[3]["grad_norm"] is None and records[-1]["skipped_total"] == 2
    assert records[2]["lr"] == records[1]["lr"] and records[4]["lr"] == records[3]["lr"]  # no schedule step
    assert result.skipped_steps == 2 and all(torch.isfinite(v).all() for v in exported.values())


def test_a_nan_in_a_later_micro_step_discards_the_accumulated_step(tmp_path):
    # Item 5 is NaN and 8th in epoch 0's order (seed 0): micro-step 2 of 2 in step 4. The gradients
    # already accumulated from micro-step 1 must be discarded with it, and the weights stay finite.
    assert epoch_permutation(16, 0, 0).tolist().index(5) == 7
    result, exported = train(tmp_path, steps=8, items=Items(poisoned=(5,)), grad_accum=2, micro_batch=1)
    records = metrics(tmp_path)
    assert [r["skipped"] for r in records] == [0, 0, 0, 1, 0, 0, 0, 0] and records[3]["skip_reason"] == "loss"
    assert result.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in exported.values())


def test_too_many_skips_in_a_row_stop_with_a_checkpoint(tmp_path):
    with pytest.raises(TrainingStopped, match="3 optimizer steps in a row were skipped"):
        train(tmp_path, steps=6, items=Items(poisoned=range(16)), max_consecutive_skips=3)
    assert [s for s, _ in complete_checkpoints(tmp_path / "run")] == [3]


def test_too_much_bad_data_stops_naming_the_files(tmp_path):
    with pytest.raises(TrainingStopped, match=r"(?s)unusable.*clip\d+\.mp4: cannot decode"):
        train(tmp_path, steps=4, items=Items(corrupt=range(0, 16, 2)), max_bad_data_fraction=0.2)


def test_a_fresh_run_refuses_to_overwrite_checkpoints(tmp_path):
    train(tmp_path, steps=3)
    with pytest.raises(ValueError, match="--resume auto"):
        train(tmp_path, steps=3, resume=None)


def test_resume_refuses_a_different_number_of_ranks(tmp_path):
    train(tmp_path, steps=3)
    marker = tmp_path / "run" / "checkpoints" / "step-0000003" / COMPLETE_MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "world_size": 2}))
    with pytest.raises(ValueError, match="written by 2 ranks, this run has 1"):
        train(tmp_path, steps=4)


def test_checkpoint_selection_ignores_unfinished_saves(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("step-0000002", True), ("step-0000005", True), ("step-0000007", False),
                           ("step-0000009.tmp", True)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / COMPLETE_MARKER).write_text("{}")
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [2, 5]
    assert resolve_resume(tmp_path, "auto") == root / "step-0000005"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(root / "step-0000007"))
    assert resolve_resume(tmp_path / "empty", "auto") is None
    prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-0000005", "step-0000007"]


def test_ds_config_flags_and_refusals(tmp_path):
    config = TrainingConfig(out_dir="x", max_steps=10, micro_batch=3, grad_accum=2, zero_stage=3, bf16=True)
    ds = build_ds_config({"train_batch_size": 64, "zero_optimization": {"stage": 2}}, config)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert "train_batch_size" not in ds and ds["zero_optimization"]["stage"] == 3
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    native = build_ds_config({"bf16": {"enabled": True, "check_grad_overflow": False}}, TrainingConfig("x", 1, zero_stage=1))
    assert native["bf16"]["check_grad_overflow"]  # DeepSpeed's bf16 would otherwise apply NaN gradients
    plain = TrainingConfig(out_dir="x", max_steps=1)
    for bad, message in [({"optimizer": {"type": "Adam"}}, "optimizer"), ({"fp16": {"enabled": True}}, "bf16"),
                         ({"zero_optimization": {"stage": 0}}, "stage must be 1, 2 or 3")]:
        with pytest.raises(ValueError, match=message):
            build_ds_config(bad, plain)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}))
    with pytest.raises(ValueError, match="zero_optimization.reduce_bucket_size"):
        load_ds_config(path)
    shipped = load_ds_config(os.path.join(os.path.dirname(__file__), "..", "ds_config.json"))
    assert shipped["steps_per_print"] and shipped["zero_optimization"]["stage"] == 2
    assert not shipped["bf16"]["enabled"]


def test_warmup_then_cosine():
    schedule = warmup_cosine(warmup_steps=4, max_steps=14, min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(9) == pytest.approx(0.55) and schedule(14) == pytest.approx(0.1) and schedule(99) == pytest.approx(0.1)


def test_activation_checkpointing_keeps_outputs_and_gradients():
    class Blocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.GELU()) for _ in range(3))
            self.norms = nn.ModuleList([nn.BatchNorm1d(8)])  # has buffers: must stay as it is

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return self.norms[0](x)

    torch.manual_seed(0)
    plain = Blocks()
    checkpointed = Blocks()
    checkpointed.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(checkpointed) == 3
    x = torch.randn(4, 8)
    outputs = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        out = model(x)
        out.square().sum().backward()
        outputs.append((out, [p.grad for p in model.parameters()]))
    assert torch.allclose(outputs[0][0], outputs[1][0])
    assert all(torch.allclose(a, b) for a, b in zip(outputs[0][1], outputs[1][1]))


def test_spatial_compression_adds_or_drops_per_frame_levels():
    from tokvid.training.trainers import spatial_compression_overrides
    from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

    tiny = video_tokenizer_preset("tiny")  # 8x: widths (8, 16) after a 4x stem
    assert spatial_compression_overrides(tiny, 16) == {"spatial_compression": 16, "frame_channels": (8, 16, 32)}
    assert spatial_compression_overrides(tiny, 4) == {"spatial_compression": 4, "frame_channels": (8,)}
    model = VideoTokenizer(video_tokenizer_preset("tiny", **spatial_compression_overrides(tiny, 16)))
    with torch.no_grad():
        assert model.encode(torch.zeros(1, 3, 5, 32, 64)).shape == (1, 2, 2, 4)
    for bad in (12, 2, 0):
        with pytest.raises(ValueError, match="4 times a power of two"):
            spatial_compression_overrides(tiny, bad)


def load_recipe():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "train" / "recipe_shapes.py"
    spec = importlib.util.spec_from_file_location("recipe_shapes", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    return recipe


def fake_stage_runner(commands: list):
    """A stand-in for the recipe's `run`: records each command and writes the files the recipe checks
    for as that stage's output."""
    from pathlib import Path

    def fake_run(command):
        commands.append(command)
        out = Path(command[command.index("--out") + 1])
        for marker in ("manifest.jsonl", "config.json", "info.json", "export/model.safetensors", "export/pipeline.json"):
            (out / marker).parent.mkdir(parents=True, exist_ok=True)
            (out / marker).touch()

    return fake_run


def flag_value(command: list[str], flag: str) -> str | None:
    """The value a command line gives `flag`: its last occurrence, as argparse reads it (None if absent)."""
    places = [i for i, part in enumerate(command) if part == flag]
    return command[places[-1] + 1] if places else None


def test_recipe_chains_its_generator_stages_and_skips_finished_ones(tmp_path, monkeypatch):
    """Each generator stage starts from the previous stage's export with a seed of its own; a re-run
    starts nothing that has finished."""
    recipe = load_recipe()
    commands = []
    monkeypatch.setattr(recipe, "run", fake_stage_runner(commands))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # the recipe sets it if unset; keep it from leaking
    assert recipe.main(["--out", str(tmp_path / "run")]) == 0
    generator_stages = lambda: [c for c in commands if any(part.endswith("train_generator.py") for part in c)]  # noqa: E731
    stages = generator_stages()
    run = tmp_path / "run"
    names = ["generator", "generator_stage2", "generator_stage3", "generator_stage4", "generator_stage5"]
    assert [flag_value(c, "--out") for c in stages] == [str(run / name) for name in names]
    assert [flag_value(c, "--init-from") for c in stages] == [None] + [str(run / name / "export") for name in names[:-1]]
    assert [flag_value(c, "--seed") for c in stages] == ["1", "2", "3", "4", "5"]
    assert [flag_value(c, "--lr") for c in stages] == ["0.002", "0.0005", "0.0003", "0.0003", "0.0003"]
    assert [flag_value(c, "--max-steps") for c in stages] == ["3000", "2000", "1000", "2000", "2000"]
    assert all(flag_value(c, "--token-patch") == "2" for c in stages)
    commands.clear()
    assert recipe.main(["--out", str(run)]) == 0 and commands == []
    assert recipe.main(["--out", str(tmp_path / "short"), "--later-stages", ""]) == 0
    assert [flag_value(c, "--out") for c in generator_stages()] == [str(tmp_path / "short" / "generator")]


def test_recipe_chains_its_decoder_stages_and_encodes_with_the_last(tmp_path, monkeypatch):
    """The decoder stages each start from the previous tokenizer stage's export, only the last scores the
    clamped output, and the shards and generators get the last decoder (all make the same codes)."""
    recipe = load_recipe()
    commands = []
    monkeypatch.setattr(recipe, "run", fake_stage_runner(commands))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    for steps, last in (("3000", "video_decoder_clamped"), ("0", "video_decoder")):
        commands.clear()
        run = tmp_path / steps
        assert recipe.main(["--out", str(run), "--clamped-decoder-steps", steps, "--later-stages", ""]) == 0
        stages = [c for c in commands if any(part.endswith("train_tokenizer.py") for part in c)]
        assert len(stages) == (2 if steps == "0" else 3)
        names = ["video_tokenizer", "video_decoder", "video_decoder_clamped"][:len(stages)]
        assert [flag_value(c, "--out") for c in stages] == [str(run / name) for name in names]
        assert [flag_value(c, "--init-from") for c in stages] == [None] + [str(run / name / "export") for name in names[:-1]]
        assert [("--decoder-only" in c, "--clamped-loss" in c) for c in stages] == [
            (False, False), (True, False), (True, True)][:len(stages)]
        encode = next(c for c in commands if c[0] == "tokvid-encode")
        generator = next(c for c in commands if any(part.endswith("train_generator.py") for part in c))
        assert flag_value(encode, "--tokenizer") == flag_value(generator, "--video-tokenizer") == str(run / last / "export")
        assert [flag_value(c, "--lr") for c in stages] == ["1e-3", "1e-3", "0.001"][:len(stages)]


@pytest.mark.parametrize("flags,message", [
    (["--clamped-decoder-steps", "-1"], "--clamped-decoder-steps must be >= 0"),
    (["--clamped-decoder-lr", "0"], "--clamped-decoder-lr > 0"),
    (["--tokenizer-ranks", "3"], "must divide"), (["--generator-ranks", "2", "--generator-batch", "5"], "must divide"),
    (["--finetune-ranks", "3"], "must divide"), (["--generator-ranks", "0"], "must divide"),
    (["--threads", "0"], "must be >= 1"), (["--spatial-compression", "12"], "4 times a power of two"),
    (["--generator-token-patch", "3"], "must divide the 8x8"),
    (["--later-stages", "1000"], "is not STEPS:LR"), (["--later-stages", "0:1e-4"], "needs steps >= 1"),
    (["--spatial-compression", "32", "--generator-token-patch", "4"], "must divide the 2x2")])
def test_recipe_rejects_bad_flags_before_starting_anything(tmp_path, flags, message, capsys):
    recipe = load_recipe()
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--out", str(tmp_path / "run"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


def test_recipe_install_ships_the_runs_decoder_and_refuses_one_with_other_codes(tmp_path, tiny_pipeline_dir):
    """A decoder stage re-run after the generator stages still reaches the bundle; an encoder that makes
    other codes than the generator was trained on does not."""
    from tokvid.pipeline import TokVidPipeline
    from tokvid.models.video_tokenizer import ENCODER_MODULES, VideoTokenizer

    recipe = load_recipe()
    exported = TokVidPipeline.from_pretrained(tiny_pipeline_dir).video_tokenizer
    sharper = VideoTokenizer(exported.config)
    sharper.load_state_dict(exported.state_dict())
    with torch.no_grad():
        for name, parameter in sharper.named_parameters():
            if name.split(".")[0] not in ENCODER_MODULES:
                parameter.add_(0.01)
    sharper.save_pretrained(tmp_path / "decoder")
    recipe.install(tiny_pipeline_dir, tmp_path / "decoder", tmp_path / "bundle")
    installed = TokVidPipeline.from_pretrained(tmp_path / "bundle")
    assert installed.video_tokenizer.fingerprint() == sharper.fingerprint() != exported.fingerprint()
    assert installed.sampling == TokVidPipeline.from_pretrained(tiny_pipeline_dir).sampling  # as exported
    torch.manual_seed(1)
    VideoTokenizer(exported.config).save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit, match="makes other codes"):
        recipe.install(tiny_pipeline_dir, tmp_path / "other", tmp_path / "bundle")
    assert TokVidPipeline.from_pretrained(tmp_path / "bundle").video_tokenizer.fingerprint() == sharper.fingerprint()
