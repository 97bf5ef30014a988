"""Two CPU ranks (gloo) under the real launcher, through the real train/ scripts.

Few launches, many checks each (every launch costs seconds of start-up):
  tokenizer, 1 rank, plain `python` (the reference)          -> single
  tokenizer, 2 ranks, ZeRO-2                                   -> parity with single
  tokenizer, 2 ranks, ZeRO-3, SIGKILLed inside its step-8 save -> previous checkpoint intact (torchrun)
  the same, --resume auto                                      -> exact resume, parity, export (torchrun)
  tokenizer decoder fine-tuned from the single run's export   -> the same codes, a new decoder
  tokenizer with a VQ codebook, 2 ranks fed different data     -> codebooks equal on both ranks (torchrun)
  generator on shards encoded by that export, 2 ranks, ZeRO-3  -> pipeline export reproduces the engine
All tokenizer runs meet a corrupt video and inject a NaN loss (step 3) and a NaN gradient (step 6).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10

pytestmark = pytest.mark.skipif(shutil.which("deepspeed") is None, reason="needs the deepspeed launcher")


def launch(script: str, args: list[str], ranks: int, cwd: Path, launcher: str = "deepspeed",
           faults: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run a train/ script: 1 rank as a plain process, else under `deepspeed` or (faster to start) `torchrun`.
    `faults` are tests/faults.py flags (--nan-loss-at N ...): every rank then runs the script through it."""
    from tokvid.training.distributed import free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # the pytest process may have set them up as a 1-rank world
    script_path = str(ROOT / "train" / script)
    if faults:
        script_path, args = str(ROOT / "tests" / "faults.py"), [*faults, script_path, *args]
    if ranks == 1:
        command = [sys.executable, script_path]
    elif launcher == "deepspeed":
        master_port = free_port()
        command = ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(master_port), script_path]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   script_path]
    command += ["--deepspeed_config", str(ROOT / "ds_config.json"), "--threads", "1", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    result.shm_files_left = sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{master_port}_*")) \
        if launcher == "deepspeed" and ranks > 1 else []
    (cwd / f"log-{len(list(cwd.glob('log-*')))}.txt").write_text(result.stdout + result.stderr)
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def assert_close(losses: list, reference: list, tolerance: float = 1e-5) -> None:
    assert [loss is None for loss in losses] == [loss is None for loss in reference]
    for loss, expected in zip(losses, reference):
        if expected is not None:
            assert abs(loss - expected) <= tolerance * abs(expected), (losses, reference)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from tokvid.shapes import write_dataset

    work = tmp_path_factory.mktemp("distributed")
    manifest = write_dataset(work / "data", num_videos=9, seed=0, image_fraction=0.2, segment_frames=(8,))
    good = next((work / "data").glob("*.mp4")).read_bytes()
    (work / "data" / "corrupt.mp4").write_bytes(good[: len(good) // 3])
    with open(manifest, "a") as handle:
        handle.write(json.dumps({"path": "corrupt.mp4", "caption": "a red circle stays still"}) + "\n")
    return work


FAULTS = ("--nan-loss-at", "3", "--nan-grad-at", "6")


def tokenizer_args(work: Path, out: str, micro_batch: int, *extra: str) -> list[str]:
    return ["--manifest", str(work / "data" / "manifest.jsonl"), "--out", str(work / out), "--preset", "tiny",
            "--num-frames", "5", "--size", "32", "--max-steps", str(STEPS), "--seed", "0", "--lr", "3e-3",
            "--warmup-steps", "2", "--save-every", "4", "--micro-batch", str(micro_batch),
            "--max-bad-data-fraction", "0.5", *extra]


@pytest.fixture(scope="module")
def single(work) -> list[dict]:
    assert_ok(launch("train_tokenizer.py", tokenizer_args(work, "single", 4, "--zero-stage", "2"), 1, work,
                     faults=FAULTS))
    return metrics(work / "single")


@pytest.fixture(scope="module")
def zero3_resumed(work) -> dict:
    args = tokenizer_args(work, "zero3", 2, "--zero-stage", "3")
    killed = launch("train_tokenizer.py", args, 2, work, "torchrun", faults=(*FAULTS, "--kill-in-save-at", "8"))
    assert killed.returncode != 0
    checkpoints = work / "zero3" / "checkpoints"
    state = {"dirs": sorted(p.name for p in checkpoints.iterdir()),
             "tmp_complete": (checkpoints / "step-0000008.tmp" / "COMPLETE").exists(),
             "before": metrics(work / "zero3")}
    assert_ok(launch("train_tokenizer.py", args + ["--resume", "auto"], 2, work, "torchrun", faults=FAULTS))
    state["after"] = metrics(work / "zero3")
    return state


def test_zero2_two_ranks_match_one_rank_with_the_same_global_batch(work, single):
    result = launch("train_tokenizer.py", tokenizer_args(work, "zero2", 2, "--zero-stage", "2"), 2, work,
                    faults=FAULTS)
    assert_ok(result)
    assert result.shm_files_left == []  # DeepSpeed's 64 MiB CPU all-reduce buffers do not outlive the run
    pair = metrics(work / "zero2")
    assert [r["step"] for r in pair] == list(range(1, STEPS + 1))
    assert_close([r["loss"] for r in pair], [r["loss"] for r in single])
    # the injected faults: a NaN loss on rank 0 only (agreed by all-reduce) and NaN gradients
    assert [r["step"] for r in pair if r["skipped"]] == [3, 6] == [r["step"] for r in single if r["skipped"]]
    assert pair[2]["skip_reason"] == "loss" and pair[5]["skip_reason"] == "grad_norm"
    assert pair[-1]["skipped_total"] == 2 and pair[-1]["bad_items"] == 1 == single[-1]["bad_items"]
    assert all(r["frames_per_s"] > 0 for r in pair) and "psnr" in pair[0] and "codebook_usage" in pair[0]


def test_a_save_killed_halfway_leaves_the_previous_checkpoint(zero3_resumed):
    assert zero3_resumed["dirs"] == ["step-0000004", "step-0000008.tmp"]
    assert not zero3_resumed["tmp_complete"]
    assert [r["step"] for r in zero3_resumed["before"]] == list(range(1, 9))


def test_sigkilled_zero3_run_resumes_exactly_and_matches_one_rank(zero3_resumed, single):
    before, after = zero3_resumed["before"], zero3_resumed["after"]
    assert [r["step"] for r in after] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in after[4:8]] == [r["loss"] for r in before[4:8]]  # steps 5-8 run twice: bit-identical
    assert after[:4] == before[:4]
    assert_close([r["loss"] for r in after], [r["loss"] for r in single])


def test_tokenizer_export_reproduces_the_engine(work, zero3_resumed):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from tokvid.models.video_tokenizer import VideoTokenizer

    run = work / "zero3"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000008", "step-0000010"]
    exported = VideoTokenizer.from_pretrained(run / "export")
    engine_state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints" / "step-0000010"),
                                                            tag="deepspeed")
    engine_model = VideoTokenizer(exported.config)
    engine_model.load_state_dict({k.removeprefix("model."): v for k, v in engine_state.items()})
    x = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(exported.encode(x), engine_model.eval().encode(x))
        assert torch.equal(exported(x)[0], engine_model(x)[0])


def test_decoder_fine_tuning_through_the_script_keeps_the_codes(work, single):
    from tokvid.models.video_tokenizer import VideoTokenizer

    start = work / "single" / "export"
    common = ["--manifest", str(work / "data" / "manifest.jsonl"), "--preset", "tiny", "--num-frames", "5",
              "--size", "32", "--max-steps", "3", "--micro-batch", "2", "--lr", "1e-2", "--init-from", str(start)]
    assert_ok(launch("train_tokenizer.py", common + ["--out", str(work / "decoder"), "--decoder-only",
                                                     "--code-noise", "0.3", "--clamped-loss"], 1, work))
    before, after = VideoTokenizer.from_pretrained(start), VideoTokenizer.from_pretrained(work / "decoder" / "export")
    assert after.config.clamped_loss and not before.config.clamped_loss  # a decoder setting may change
    x = torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(x), after.encode(x)) and before.codes_fingerprint() == after.codes_fingerprint()
        assert not torch.equal(before(x)[0], after(x)[0])  # the decoder did train
    refusals = [(common + ["--out", str(work / "other_preset"), "--quantizer", "lfq"], "quantizer"),
                (common + ["--out", str(work / "local"), "--local-codes"], "--local-codes was removed"),
                (common + ["--out", str(work / "coarser"), "--spatial-compression", "16"], "spatial_compression"),
                (common + ["--out", str(work / "odd_factor"), "--spatial-compression", "12"],
                 "--spatial-compression must be 4 times a power of two"),
                (common + ["--out", str(work / "noise"), "--code-noise", "1.5"], "--code-noise must be a probability"),
                (common + ["--out", str(work / "lfq_noise"), "--quantizer", "lfq", "--code-noise", "0.1"], "FSQ digits"),
                ([arg for arg in common if arg != str(start) and arg != "--init-from"]
                 + ["--out", str(work / "no_start"), "--decoder-only"], "--decoder-only needs --init-from")]
    for args, message in refusals:
        result = launch("train_tokenizer.py", args, 1, work)
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_vq_codebooks_stay_equal_across_ranks(work):
    from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

    args = tokenizer_args(work, "vq", 2, "--quantizer", "vq", "--grad-accum", "2")
    args[args.index("--max-steps") + 1] = "3"
    args[args.index("--save-every") + 1] = "3"
    assert_ok(launch("train_tokenizer.py", args, 2, work, "torchrun", faults=FAULTS))
    step = work / "vq" / "checkpoints" / "step-0000003"
    digests = [torch.load(step / f"rank-{r:05d}.pt", weights_only=False)["buffer_digest"] for r in range(2)]
    assert digests[0] == digests[1]
    exported = VideoTokenizer.from_pretrained(work / "vq" / "export")
    assert exported.config.quantizer == "vq" and not exported.config.vq_sync_codebook
    torch.manual_seed(0)
    initial = VideoTokenizer(video_tokenizer_preset("tiny", quantizer="vq"))
    codebook = [name for name, _ in exported.named_buffers() if name.endswith("embed")][0]
    assert not torch.equal(exported.get_buffer(codebook), initial.get_buffer(codebook))  # k-means init ran


def test_generator_trains_on_two_ranks_and_exports_a_pipeline(work, zero3_resumed):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from tokvid.encoding import encode_videos
    from tokvid.models.generator import Generator
    from tokvid.pipeline import TokVidPipeline

    shards = work / "shards"
    encode_videos(work / "zero3" / "export", shards, manifest=work / "data" / "manifest.jsonl", size=32,
                  skip_bad=True)
    args = ["--data", str(shards), "--out", str(work / "generator"), "--preset", "tiny", "--num-frames", "9",
            "--max-steps", "3", "--seed", "0", "--micro-batch", "2", "--save-every", "3", "--zero-stage", "3",
            "--text-vocab-size", "40"]
    assert_ok(launch("train_generator.py", args, 2, work))
    run = work / "generator"
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3] and all(r["tokens_per_s"] > 0 for r in records)
    assert "masked_accuracy" in records[0] and (run / "text_tokenizer" / "config.json").is_file()
    pipe = TokVidPipeline.from_pretrained(run / "export")
    engine_state = get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints" / "step-0000003"),
                                                            tag="deepspeed")
    engine_model = Generator(pipe.generator.config)
    engine_model.load_state_dict({k.removeprefix("model."): v for k, v in engine_state.items()})
    config = pipe.generator.config
    assert config.digit_head and config.code_levels == list(pipe.video_tokenizer.config.fsq_levels)  # FSQ default
    tokens = torch.randint(0, config.codebook_size, (1, 3, config.chunk_height, config.chunk_width))
    text = pipe.text_tokenizer.batch(["a red circle"] * 3, config.text_length)[None]
    with torch.no_grad():
        assert torch.equal(pipe.generator(tokens, text), engine_model.eval()(tokens, text))
    # what sampling may draw: the codes of the training shards, counted
    from tokvid.shards import TokenShards

    recorded = pipe.generator.code_counts
    assert torch.equal(recorded, torch.from_numpy(TokenShards(shards).code_counts(config.codebook_size)))
    assert 0 < int((recorded > 0).sum()) < config.codebook_size


def test_fine_tuning_starts_from_the_given_weights_and_refuses_another_configuration(work):
    from tokvid.pipeline import TokVidPipeline

    start = work / "generator" / "export"
    if not (start / "pipeline.json").is_file():
        pytest.skip("needs the pipeline of test_generator_trains_on_two_ranks_and_exports_a_pipeline")
    common = ["--data", str(work / "shards"), "--text-tokenizer", str(start / "text_tokenizer"), "--preset", "tiny",
              "--num-frames", "9", "--max-steps", "1", "--seed", "1", "--micro-batch", "2", "--init-from", str(start)]
    # shorter clips (2 chunks) than the start was trained on (3): its 3-chunk window is kept, not refused
    shorter = list(common)
    shorter[shorter.index("--num-frames") + 1] = "5"
    assert_ok(launch("train_generator.py", shorter + ["--out", str(work / "finetune"), "--lr", "1e-9"], 1, work))
    before = TokVidPipeline.from_pretrained(start).generator
    after = TokVidPipeline.from_pretrained(work / "finetune" / "export").generator
    assert after.config == before.config and after.config.window_chunks == 3
    before, after = before.state_dict(), after.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[name], after[name], atol=1e-6) for name in before)  # lr ~0: unchanged
    result = launch("train_generator.py", common + ["--out", str(work / "finetune_other"), "--window-chunks", "2"],
                    1, work)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and len(errors) == 1 and "window_chunks" in errors[0], result.stderr[-2000:]
    result = launch("train_generator.py", common + ["--out", str(work / "finetune_patch"), "--token-patch", "2"],
                    1, work)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and len(errors) == 1 and "token_patch" in errors[0], result.stderr[-2000:]
    result = launch("train_generator.py", common + ["--out", str(work / "widened"), "--digit-mixture", "3"], 1, work)
    assert result.returncode == 2 and "--digit-mixture was removed" in result.stderr.splitlines()[-1]


def test_digit_head_on_a_vq_tokenizer_is_a_one_line_error(work):
    from tokvid.encoding import encode_videos
    from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

    torch.manual_seed(0)
    VideoTokenizer(video_tokenizer_preset("tiny", quantizer="vq")).save_pretrained(work / "vq_untrained")
    shards = work / "vq_shards"
    encode_videos(work / "vq_untrained", shards, manifest=work / "data" / "manifest.jsonl", size=32, skip_bad=True)
    args = ["--data", str(shards), "--out", str(work / "vq_generator"), "--preset", "tiny", "--num-frames", "9",
            "--max-steps", "1", "--head", "digits", "--text-vocab-size", "40"]
    result = launch("train_generator.py", args, 1, work)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--head codes" in errors[0] and "Traceback" not in result.stderr
