"""The DeepSpeed training loop shared by the tokenizer and generator trainers.

`run_training` takes a model factory, an ItemDataset and a loss function, and adds what long runs
on many ranks need:

- launch: works under `deepspeed --num_gpus N`, `torchrun` and as a plain single process; the
  process group exists before the model is built, and every rank builds it from the same seed
  (DeepSpeed broadcasts parameters, never buffers such as EMA codebooks).
- checkpoints: every rank writes into `RUN/checkpoints/step-XXXXXXX.tmp` (DeepSpeed state plus a
  per-rank file with all RNG states and the data position); rank 0 then writes a COMPLETE marker,
  fsyncs and renames the directory. A save killed halfway leaves the previous checkpoint intact;
  `resume="auto"` takes the newest complete one. SIGTERM/SIGINT save at the end of the step.
- exact resume: data order is a function of (seed, epoch, rank), and the randomness of step s,
  micro-step m on rank r comes from a generator seeded by (seed, s, r, m), so a resumed run
  repeats the losses of an uninterrupted one bit for bit.
- faults: a non-finite loss on any rank skips the step on all ranks (agreed by all-reduce); a
  non-finite gradient norm is skipped by DeepSpeed's ZeRO optimizers (checked with
  `was_step_applied`); both are counted, and too many in a row stop the run after a checkpoint.
  Unusable data items are replaced (see datasets.py) and the run stops when too many are bad.
- observability: `RUN/metrics.jsonl` (one object per optimizer step), TensorBoard in `RUN/tb`,
  a tqdm bar on rank 0.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from tokvid.datasets import ItemDataset, ResumableLoader

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
DEEPSPEED_TAG = "deepspeed"
METRICS_FILE = "metrics.jsonl"

LossFunction = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (too many skipped steps, too much bad data); the message says why."""


@dataclass
class TrainingConfig:
    out_dir: str  # run directory: checkpoints/, metrics.jsonl, tb/, export/
    max_steps: int  # optimizer steps to run in total (skipped steps included)
    seed: int = 0  # model initialisation (identical on every rank), data order and per-step randomness
    micro_batch: int = 4  # samples per rank per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # the cosine schedule ends at lr * min_lr_ratio at max_steps
    warmup_steps: int = 100  # linear warmup (in applied optimizer steps)
    weight_decay: float = 0.01  # AdamW weight decay, applied to matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    zero_stage: int | None = None  # ZeRO stage 1/2/3; None keeps the DeepSpeed config's
    bf16: bool | None = None  # bf16 autocast (GPU; weights stay fp32); None keeps the DeepSpeed config's
    activation_checkpointing: bool = False  # recompute activations of ModuleList blocks in backward
    save_every: int = 1000  # checkpoint period in steps (the last step is always saved)
    keep_last: int = 2  # complete checkpoints kept on disk
    resume: str | None = None  # None: fresh run; "auto": newest complete checkpoint if any; or a checkpoint dir
    max_consecutive_skips: int = 5  # stop (after a checkpoint) when this many steps in a row are skipped
    max_bad_data_fraction: float = 0.01  # stop when more than this fraction of the items is unusable
    throughput_unit: str = "tokens"  # metrics report <unit>_per_s ("tokens" or "frames")
    num_workers: int | None = None  # data loading processes per rank; None: loader.default_num_workers()
    inject_nan_loss_at_step: int | None = None  # tests: rank 0's loss becomes NaN at this step
    inject_nan_grad_at_step: int | None = None  # tests: gradients become NaN (finite loss) at this step
    kill_during_save_at_step: int | None = None  # tests: SIGKILL after writing the checkpoint, before COMPLETE

    def __post_init__(self):
        positive = ("max_steps", "micro_batch", "grad_accum", "save_every", "keep_last", "max_consecutive_skips")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
        if self.zero_stage is not None and self.zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage} "
                             "(stage 0 has no overflow check, so a NaN gradient would reach the weights)")
        if not 0 <= self.max_bad_data_fraction <= 1:
            raise ValueError(f"max_bad_data_fraction must be in [0, 1], got {self.max_bad_data_fraction}")
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class TrainingResult:
    step: int  # last completed step
    status: str  # "finished" or "interrupted" (signal)
    skipped_steps: int
    bad_items: int
    export_dir: str | None = None
    losses: list[float | None] = field(default_factory=list)  # per step run in this process (None = skipped)


# ----------------------------------------------------------------------------------------------
# process group and configuration


def setup_distributed() -> tuple[int, int]:
    """Initialise the process group (gloo on CPU) and return (rank, world_size).

    A process started without a launcher gets the environment of a 1-rank world, so DeepSpeed
    never tries MPI discovery. Idempotent.
    """
    import deepspeed

    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
        unlink_shm_allreduce_buffer()
    return dist.get_rank(), dist.get_world_size()


SHM_DIR = Path("/dev/shm")


def shm_allreduce_buffer(rank: int) -> Path:
    """The shared-memory file DeepSpeed's CPU backend creates for `rank` (named in its shm.cpp)."""
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}"
            f"_{os.environ.get('MASTER_PORT', '')}_{rank}")
    return SHM_DIR / name


def unlink_shm_allreduce_buffer() -> None:
    """Remove this rank's 64 MiB DeepSpeed all-reduce file from /dev/shm once every rank has mapped it.

    DeepSpeed's CPU backend never unlinks it, so each launch under `deepspeed` would leave
    64 MiB per rank in RAM-backed /dev/shm until the machine fills up. The barrier guarantees
    all ranks have finished mapping their peers' files during init; the mappings stay valid
    after the unlink and the kernel frees the memory when the last process exits, even a
    killed one.
    """
    if not hasattr(os, "getuid"):  # no POSIX shared memory (Windows)
        return
    if dist.get_world_size() > 1:
        dist.barrier()  # on every rank, whether or not it has a file, so none can wait alone
    shm_allreduce_buffer(dist.get_rank()).unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_ds_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON config; "auto" values (an HF Trainer feature) are refused."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read DeepSpeed config {path}: {error}") from None
    auto = [key for key, value in _flatten(config) if value == "auto"]
    if auto:
        raise ValueError(f"{path} has \"auto\" values ({', '.join(auto)}); raw DeepSpeed needs numbers there")
    return config


def build_ds_config(base: dict, config: TrainingConfig) -> dict:
    """The DeepSpeed config of a run: the JSON file with the command-line settings applied."""
    ds = json.loads(json.dumps(base))
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise ValueError(f"remove the \"{section}\" section from the DeepSpeed config: the trainer builds AdamW "
                             "and a warmup + cosine schedule from --lr, --warmup-steps and --max-steps")
    if ds.get("fp16", {}).get("enabled"):
        raise ValueError("fp16 is not supported (its loss-scale overflows would count as skipped steps); use bf16")
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two below and the world size
    ds["train_micro_batch_size_per_gpu"] = config.micro_batch
    ds["gradient_accumulation_steps"] = config.grad_accum
    ds.setdefault("steps_per_print", 1000)
    zero = ds.setdefault("zero_optimization", {})
    if config.zero_stage is not None:
        zero["stage"] = config.zero_stage
    if zero.get("stage", 0) not in (1, 2, 3):
        raise ValueError(f"ZeRO stage must be 1, 2 or 3, got {zero.get('stage', 0)}")
    if config.bf16 is not None:
        # torch autocast keeps fp32 weights (and the models' fp32 quantizers) and runs matmuls in bf16
        ds["torch_autocast"] = {"enabled": config.bf16, "dtype": "bfloat16"}
    if ds.get("bf16", {}).get("enabled"):
        ds["bf16"]["check_grad_overflow"] = True  # otherwise a NaN gradient is applied silently
    return ds


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in _flatten(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), tree)]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, rank, ...), statistically independent across tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def warmup_cosine(warmup_steps: int, max_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier after `applied` optimizer steps: linear warmup, then cosine down to min_ratio."""

    def multiplier(applied: int) -> float:
        if applied < warmup_steps:
            return (applied + 1) / warmup_steps
        progress = min(1.0, (applied - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute the forward of every ModuleList element in backward; returns how many were wrapped.

    Elements holding buffers are left alone: recomputing them would apply stateful updates (such as
    EMA codebooks) twice.
    """
    from torch.utils.checkpoint import checkpoint

    wrapped = 0
    for module_list in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in module_list:
            if next(block.buffers(), None) is not None or getattr(block, "_tokvid_checkpointed", False):
                continue
            plain_forward = block.forward
            block.forward = lambda *args, _f=plain_forward, **kwargs: checkpoint(_f, *args, use_reentrant=False,
                                                                                 **kwargs)
            block._tokvid_checkpointed = True
            wrapped += 1
    return wrapped


class LossModule(nn.Module):
    """What the DeepSpeed engine runs: forward(batch, generator) = loss_fn(model, batch, generator).

    Going through the engine's forward lets ZeRO-3 gather parameters even though the models expose
    `training_loss` rather than `forward` as their training entry point.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFunction):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch, generator)


class _PoisonGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not (fault injection)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def add_training_arguments(parser) -> None:
    """The flags both train/ scripts share (an argparse.ArgumentParser); see training_config_from_args."""
    import argparse

    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # appended by the launcher
    parser.add_argument("--out", required=True, help="run directory (checkpoints/, metrics.jsonl, tb/, export/)")
    parser.add_argument("--max-steps", type=int, required=True, help="optimizer steps in total")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None, help="'auto' (newest complete checkpoint, if any) or a checkpoint dir")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "base"), help="model size")
    parser.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=None,
                        help="override the DeepSpeed config's ZeRO stage")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast with fp32 weights (GPU); default: the DeepSpeed config's")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine end value as a fraction of --lr")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--micro-batch", type=int, default=4, help="samples per rank per micro-step")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute block activations")
    parser.add_argument("--save-every", type=int, default=1000, help="checkpoint period in steps")
    parser.add_argument("--keep-last", type=int, default=2, help="complete checkpoints to keep")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank")
    parser.add_argument("--num-frames", type=int, default=17, help="frames per training clip (1 + k*tc)")
    parser.add_argument("--max-consecutive-skips", type=int, default=5,
                        help="stop after this many skipped (non-finite) steps in a row")
    parser.add_argument("--max-bad-data-fraction", type=float, default=0.01,
                        help="stop when more than this fraction of the data items is unusable")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data loading processes per rank (default: the cores per rank beyond one, at most 4)")
    for flag in ("--inject-nan-at-step", "--inject-nan-grad-at-step", "--kill-during-save-at-step"):  # for tests
        parser.add_argument(flag, type=int, default=None, help=argparse.SUPPRESS)


def training_config_from_args(args, throughput_unit: str) -> TrainingConfig:
    return TrainingConfig(
        out_dir=args.out, max_steps=args.max_steps, seed=args.seed, micro_batch=args.micro_batch,
        grad_accum=args.grad_accum, lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay, zero_stage=args.zero_stage, bf16=args.bf16,
        activation_checkpointing=args.activation_checkpointing, save_every=args.save_every,
        keep_last=args.keep_last, resume=args.resume, max_consecutive_skips=args.max_consecutive_skips,
        max_bad_data_fraction=args.max_bad_data_fraction, throughput_unit=throughput_unit,
        inject_nan_loss_at_step=args.inject_nan_at_step, inject_nan_grad_at_step=args.inject_nan_grad_at_step,
        kill_during_save_at_step=args.kill_during_save_at_step, num_workers=args.num_workers)


def ds_config_path(args) -> Path:
    """--deepspeed_config, else the repository's ds_config.json next to train/."""
    given = getattr(args, "deepspeed_config", None)
    return Path(given) if given else Path(__file__).resolve().parents[1] / "ds_config.json"


def run_script(args, train: Callable[[TrainingConfig, dict], TrainingResult], throughput_unit: str) -> int:
    """What a train/ script does after parsing: logging, threads, configs, errors -> exit codes."""
    import sys

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = train(training_config_from_args(args, throughput_unit), load_ds_config(ds_config_path(args)))
    except TrainingStopped as error:
        print(f"rank {rank}: training stopped: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"rank {rank}: error: {error}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"{result.status} at step {result.step}; skipped steps {result.skipped_steps}, "
              f"unusable items {result.bad_items}; export: {result.export_dir}")
    return 0


# ----------------------------------------------------------------------------------------------
# checkpoints on disk


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every committed checkpoint of a run, oldest first; .tmp dirs are ignored."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        suffix = path.name[len("step-"):]
        if path.is_dir() and suffix.isdigit() and (path / COMPLETE_MARKER).is_file():
            found.append((int(suffix), path))
    return sorted(found)


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint directory to resume from, or None for a fresh start."""
    existing = complete_checkpoints(run_dir)
    if resume is None:
        if existing:
            raise ValueError(f"{run_dir} already has checkpoints (newest: {existing[-1][1].name}); pass "
                             "--resume auto to continue that run or choose another --out")
        return None
    if resume == "auto":
        return existing[-1][1] if existing else None
    path = Path(resume)
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker); "
                         "pass --resume auto to take the newest complete one")
    return path


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _rank_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank:05d}.pt"


def commit_checkpoint(tmp_dir: Path, final_dir: Path, summary: dict) -> None:
    """Make a fully written checkpoint directory visible atomically (rank 0, after a barrier)."""
    for path in sorted(tmp_dir.rglob("*")):
        if path.is_file():
            _fsync_path(path)
    marker_tmp = tmp_dir / (COMPLETE_MARKER + ".tmp")
    marker_tmp.write_text(json.dumps(summary, indent=2) + "\n")
    _fsync_path(marker_tmp)
    os.replace(marker_tmp, tmp_dir / COMPLETE_MARKER)
    _fsync_path(tmp_dir)
    if final_dir.exists():  # the same step saved again (e.g. a resumed run's final save)
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_path(final_dir.parent)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and leftovers of killed saves."""
    for _, path in complete_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)
    for path in (Path(run_dir) / CHECKPOINTS).glob("step-*.tmp"):
        shutil.rmtree(path, ignore_errors=True)


def capture_rng_state() -> dict:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if accelerator.device_name() != "cpu":
        state["accelerator"] = accelerator.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    from deepspeed.accelerator import get_accelerator

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "accelerator" in state:
        get_accelerator().set_rng_state(state["accelerator"])


def unsynced_buffers(module: nn.Module) -> list[str]:
    """Names of buffers whose values differ between ranks (collective: every rank must call it)."""
    named = [(name, b) for name, b in module.named_buffers() if b.numel()]
    if dist.get_world_size() == 1 or not named:
        return []
    flat = torch.cat([torch.nan_to_num(b.detach().double().flatten()) for _, b in named])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    differs = (high != low).cpu()
    names, start = [], 0
    for name, buffer in named:
        if differs[start:start + buffer.numel()].any():
            names.append(name)
        start += buffer.numel()
    return names


def buffer_digest(module: nn.Module) -> str:
    """SHA-256 of all buffers of a module: equal on every rank when buffers are in sync."""
    import hashlib

    digest = hashlib.sha256()
    for name, buffer in module.named_buffers():
        digest.update(name.encode())
        digest.update(buffer.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# metrics


class MetricsLog:
    """metrics.jsonl + TensorBoard on rank 0; a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():  # drop lines of steps after the checkpoint: they will be run again
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1)
        except ImportError:
            logger.warning("tensorboard is not installed; metrics go to %s only", self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------------------------
# the loop


def run_training(config: TrainingConfig, ds_config: dict, build_model: Callable[[], nn.Module],
                 dataset: ItemDataset, loss_fn: LossFunction, count_units: Callable[[Any], int],
                 export_fn: Callable[[nn.Module, Path], None] | None = None,
                 run_info: dict | None = None) -> TrainingResult:
    """Train `build_model()` with DeepSpeed on `dataset` until config.max_steps; export at the end.

    build_model is called on every rank after the process group exists, under the same seed.
    loss_fn(model, batch, generator) -> (loss, logs) must draw all randomness from `generator`.
    count_units(batch) gives the throughput unit per batch (video tokens or frames).
    export_fn(model, directory) writes the consolidated fp32 model (rank 0 only).
    """
    trainer = _Trainer(config, ds_config, build_model, dataset, loss_fn, count_units, export_fn, run_info or {})
    return trainer.run()


class _Trainer:
    def __init__(self, config, ds_config, build_model, dataset, loss_fn, count_units, export_fn, run_info):
        import deepspeed

        self.config, self.dataset, self.count_units = config, dataset, count_units
        self.build_model, self.export_fn, self.run_info = build_model, export_fn, run_info
        self.rank, self.world_size = setup_distributed()
        self.run_dir = Path(config.out_dir)
        self.resume_from = resolve_resume(self.run_dir, config.resume)
        self.ds_config = build_ds_config(ds_config, config)
        self.zero_stage = self.ds_config["zero_optimization"]["stage"]

        torch.manual_seed(config.seed)  # same initial weights and buffers on every rank
        model = build_model()
        if config.activation_checkpointing:
            logger.info("activation checkpointing on %d blocks", enable_activation_checkpointing(model))
        self.module = LossModule(model, loss_fn)
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        offload = self.ds_config["zero_optimization"].get("offload_optimizer", {}).get("device", "none") != "none"
        optimizer = None
        if offload:  # ZeRO-Offload needs DeepSpeed's own CPU Adam (a compiled op)
            self.ds_config["optimizer"] = {"type": "AdamW", "params": {"lr": config.lr, "betas": list(config.betas),
                                                                      "weight_decay": config.weight_decay}}
        else:  # torch's AdamW: supported by ZeRO, needs no compiled op (CPU CI)
            optimizer = lambda params: torch.optim.AdamW(params, lr=config.lr, betas=config.betas)  # noqa: E731
        self.schedule = warmup_cosine(config.warmup_steps, config.max_steps, config.min_lr_ratio)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, model_parameters=groups, optimizer=optimizer, config=self.ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, self.schedule))
        if self.zero_stage == 3:  # the models' own parameters are read in training_loss, not in a forward
            for parameter in model.parameters(recurse=False):
                deepspeed.zero.register_external_parameter(self.module, parameter)
        self.device = self.engine.device
        self.float_dtype = torch.bfloat16 if self.engine.bfloat16_enabled() else torch.float32
        self.loader = ResumableLoader(dataset, config.micro_batch, config.seed, self.rank, self.world_size,
                                      num_workers=config.num_workers)
        self.step, self.skipped_total, self.consecutive_skips = 0, 0, 0
        self.stop_requested = False
        self.bad_reports, self.bad_names = 0, {}  # bad items reported by all ranks, and their merged names

    # -- lifecycle
    def run(self) -> TrainingResult:
        if self.resume_from is not None:
            self._load(self.resume_from)
        elif self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self.metrics = MetricsLog(self.run_dir, self.rank == 0, self.step)
        losses, status = [], "finished"
        previous_handlers = self._install_signal_handlers()
        from tqdm import tqdm

        bar = tqdm(total=self.config.max_steps, initial=self.step, disable=self.rank != 0, unit="step",
                   dynamic_ncols=True)
        try:
            while self.step < self.config.max_steps:
                self.step += 1
                record, stop = self._train_step()
                losses.append(record["loss"])
                bar.update(1)
                bar.set_postfix(loss=record["loss"], skipped=self.skipped_total)
                if stop:
                    self._save()
                    logger.info("stop requested by a signal: saved step %d, exiting", self.step)
                    status = "interrupted"
                    break
                if self.step % self.config.save_every == 0 or self.step == self.config.max_steps:
                    self._save()
            export_dir = self._export() if status == "finished" and self.export_fn else None
        finally:
            bar.close()
            self.metrics.close()
            self._restore_signal_handlers(previous_handlers)
        return TrainingResult(self.step, status, self.skipped_total, len(self.bad_names),
                              str(export_dir) if export_dir else None, losses)

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum, frame):
            if self.stop_requested:  # a second signal (or the launcher escalating): stop now, without saving
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            self.stop_requested = True
            logger.warning("rank %d got signal %d: saving a checkpoint at the end of this step", self.rank, signum)

        return {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # -- one optimizer step
    def _train_step(self) -> tuple[dict, bool]:
        """One optimizer step; returns its metrics record and whether a rank asked to stop."""
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        losses_finite, means, units = self._forward_backward()
        applied = losses_finite and self.engine.was_step_applied()
        grad_norm = _as_float(self.engine.get_global_grad_norm()) if applied else None
        self.skipped_total += not applied
        self.consecutive_skips = 0 if applied else self.consecutive_skips + 1
        stop_signal, bad_items = self._agree_on_step_end()
        record = {"step": self.step, "loss": means.pop("loss") if applied else None, "lr": lr, "grad_norm": grad_norm,
                  f"{self.config.throughput_unit}_per_s": units * self.world_size / (time.perf_counter() - started),
                  "skipped": int(not applied),
                  "skip_reason": None if applied else "grad_norm" if losses_finite else "loss",
                  "skipped_total": self.skipped_total, "bad_items": bad_items}
        if applied:
            record.update({k: v for k, v in means.items() if k not in record})
        self.metrics.write(record)
        if self.consecutive_skips >= self.config.max_consecutive_skips:
            self._save()
            raise TrainingStopped(
                f"{self.consecutive_skips} optimizer steps in a row were skipped (non-finite loss or gradient) up to "
                f"step {self.step}; saved {checkpoint_name(self.step)}. Lower --lr, check the data, or raise "
                "--max-consecutive-skips, then continue with --resume auto")
        return record, stop_signal

    def _forward_backward(self) -> tuple[bool, dict, int]:
        """The micro-steps of one optimizer step: (all losses finite, mean loss and logs, units read)."""
        config, engine = self.config, self.engine
        abandoned = poisoned = False
        sums, counted, units = {}, 0, 0
        for micro in range(config.grad_accum):
            if abandoned:
                self.loader.skip(config.micro_batch)
                continue
            batch = self.loader.next_batch()
            units += self.count_units(batch)
            batch = _to_device(batch, self.device, self.float_dtype)
            generator = torch.Generator(device=self.device).manual_seed(
                derive_seed(config.seed, self.step, self.rank, micro))
            torch.manual_seed(derive_seed(config.seed, self.step, self.rank, micro, 1))  # for models using global RNG
            loss, logs = engine(batch, generator)
            loss = self._inject_faults(loss, micro)
            finite, means = self._reduce_loss(loss, logs)
            if not finite:
                if micro == 0:  # nothing accumulated yet: skip backward and step on every rank
                    abandoned = True
                    continue
                # Gradients of earlier micro-steps are already accumulated inside ZeRO: make them all
                # non-finite so that its overflow check discards the whole step.
                poisoned = True
                loss = loss * float("nan")
            engine.backward(loss)
            engine.step()
            if finite:
                counted += 1
                for key, value in means.items():
                    sums[key] = sums.get(key, 0.0) + value
        if poisoned and engine.was_step_applied():
            raise RuntimeError(f"step {self.step}: DeepSpeed applied an update although a loss was not finite")
        return not (abandoned or poisoned), {k: v / max(counted, 1) for k, v in sums.items()}, units

    def _inject_faults(self, loss: torch.Tensor, micro: int) -> torch.Tensor:
        if micro == 0 and self.config.inject_nan_loss_at_step == self.step and self.rank == 0:
            loss = loss * float("nan")
        if micro == 0 and self.config.inject_nan_grad_at_step == self.step:
            loss = _PoisonGradient.apply(loss)
        return loss

    def _reduce_loss(self, loss: torch.Tensor, logs: dict) -> tuple[bool, dict]:
        """Agree on finiteness across ranks and average loss and logs over them (one all-reduce)."""
        keys = sorted(set(logs) - {"loss"})
        value = float(loss.detach())
        finite = math.isfinite(value)
        packed = torch.tensor([0.0 if finite else 1.0, value if finite else 0.0, *(float(logs[k]) for k in keys)],
                              dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        packed = packed.cpu()
        means = (packed[1:] / self.world_size).tolist()
        return bool(packed[0] == 0), dict(zip(["loss", *keys], means))

    def _agree_on_step_end(self) -> tuple[bool, int]:
        """Signal flag and unusable-data count over all ranks; stops when too much data is bad."""
        packed = torch.tensor([float(self.stop_requested), float(len(self.loader.bad_items))],
                              dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        if int(packed[1]) != self.bad_reports:  # some rank met a new bad item: merge names (ranks may share items)
            self.bad_reports = int(packed[1])
            per_rank = [None] * self.world_size
            dist.all_gather_object(per_rank, {self.dataset.describe(i): why for i, why in self.loader.bad_items.items()})
            self.bad_names = {name: why for found in per_rank for name, why in found.items()}
        if len(self.bad_names) > self.config.max_bad_data_fraction * len(self.dataset):
            listing = "\n".join(f"  {name}: {why}" for name, why in sorted(self.bad_names.items()))
            raise TrainingStopped(
                f"{len(self.bad_names)} of {len(self.dataset)} data items are unusable, more than "
                f"--max-bad-data-fraction {self.config.max_bad_data_fraction}; fix or remove them:\n{listing}")
        return bool(packed[0] > 0), len(self.bad_names)

    # -- checkpoints
    def _save(self) -> None:
        root = self.run_dir / CHECKPOINTS
        final_dir = root / checkpoint_name(self.step)
        tmp_dir = root / (final_dir.name + ".tmp")
        diverged = unsynced_buffers(self.module)
        if diverged:
            raise RuntimeError(f"buffers differ between ranks: {', '.join(diverged[:8])}; DeepSpeed does not "
                               "broadcast buffers, so they must be synchronised by the model (e.g. VQ sync_codebook)")
        if self.rank == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a save that was killed
            tmp_dir.mkdir(parents=True)
        dist.barrier()
        client_state = {"step": self.step, "skipped_total": self.skipped_total,
                        "consecutive_skips": self.consecutive_skips, "world_size": self.world_size,
                        "data_position": {"epoch": self.loader.epoch, "position": self.loader.position},
                        "training_config": asdict(self.config), "run_info": self.run_info}
        self.engine.save_checkpoint(str(tmp_dir), tag=DEEPSPEED_TAG, client_state=client_state)
        rank_file = _rank_file(tmp_dir, self.rank)
        torch.save({"rng": capture_rng_state(), "loader": self.loader.state_dict(), "step": self.step,
                    "buffer_digest": buffer_digest(self.module.model)}, rank_file)
        _fsync_path(rank_file)
        if self.config.kill_during_save_at_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
        dist.barrier()
        if self.rank == 0:
            commit_checkpoint(tmp_dir, final_dir, {"step": self.step, "world_size": self.world_size,
                                                   "time": time.time()})
            prune_checkpoints(self.run_dir, self.config.keep_last)
        dist.barrier()

    def _load(self, directory: Path) -> None:
        written_by = json.loads((directory / COMPLETE_MARKER).read_text())["world_size"]
        if written_by != self.world_size:
            raise ValueError(f"{directory} was written by {written_by} ranks, this run has {self.world_size}; "
                             "resume with the same number of ranks (the data order and ZeRO shards depend on it)")
        _, client_state = self.engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG)
        if client_state is None:
            raise ValueError(f"{directory} has no readable DeepSpeed state; resume from an older checkpoint")
        # The LR is a function of the applied steps under the current flags (--lr, --max-steps may change).
        self.scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * self.schedule(self.scheduler.last_epoch)
        rank_state = torch.load(_rank_file(directory, self.rank), weights_only=False)
        self.loader.load_state_dict(rank_state["loader"])
        restore_rng_state(rank_state["rng"])
        self.step = client_state["step"]
        self.skipped_total = client_state["skipped_total"]
        self.consecutive_skips = client_state["consecutive_skips"]
        logger.info("resumed from %s at step %d", directory, self.step)

    # -- export
    def _export(self) -> Path | None:
        """Consolidate the fp32 master weights (all ranks) and let rank 0 write them via export_fn."""
        from deepspeed.utils import safe_get_full_fp32_param

        model = self.module.model
        params = {}
        for name, parameter in model.named_parameters():
            full = safe_get_full_fp32_param(parameter)  # collective: every rank takes part
            params[name] = (full if full is not None else parameter).detach().float().cpu()
        export_dir = self.run_dir / "export"
        if self.rank == 0:
            state = {name: value.detach().cpu() for name, value in model.state_dict().items()}
            torch.manual_seed(self.config.seed)
            fresh = self.build_model()
            fresh.load_state_dict({**state, **params})  # ZeRO-3 holds only a shard of each parameter in state
            fresh.eval()
            tmp_dir = export_dir.with_name("export.tmp")
            shutil.rmtree(tmp_dir, ignore_errors=True)
            self.export_fn(fresh, tmp_dir)
            shutil.rmtree(export_dir, ignore_errors=True)
            os.replace(tmp_dir, export_dir)
            logger.info("exported %s", export_dir)
        dist.barrier()
        return export_dir


def _to_device(batch: Any, device: torch.device, float_dtype: torch.dtype) -> Any:
    if torch.is_tensor(batch):
        batch = batch.to(device, non_blocking=True)
        return batch.to(float_dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {key: _to_device(value, device, float_dtype) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, device, float_dtype) for value in batch)
    return batch


def _as_float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------
# the two recipes the train/ scripts run


def train_video_tokenizer(config: TrainingConfig, ds_config: dict, manifest: str | Path, preset: str = "small",
                          size: int = 64, num_frames: int = 17, fps: float | None = None,
                          quantizer: str | None = None, fsq_levels: str | None = None,
                          cache_bytes: int = 1 << 30, init_from: str | Path | None = None,
                          decoder_only: bool = False, local_codes: bool = False,
                          code_noise: float = 0.0, spatial_compression: int | None = None,
                          clamped_loss: bool = False) -> TrainingResult:
    """Train a VideoTokenizer on the clips of a manifest; exports config.json + model.safetensors.

    init_from (a tokenizer directory or bundled name) starts from trained weights; the model this run
    builds must have the same configuration. decoder_only (needs init_from) trains the decoder alone:
    the codes stay exactly those of init_from, so its token shards and generators remain valid.
    local_codes builds an encoder whose codes each see only their own patch (encoder_spatial_kernel=1).
    code_noise trains the decoder on codes of which this share is one FSQ digit step off (see
    VideoTokenizer.training_loss): with decoder_only, a decoder for a generator's slightly wrong codes.
    spatial_compression overrides the preset's pixels per token side (see spatial_compression_overrides).
    clamped_loss scores the output as decode returns it (VideoTokenizerConfig.clamped_loss); it may differ
    from init_from's, since it changes no code.
    """
    from tokvid.datasets import ClipDataset, clip_frame_count
    from tokvid.video_tokenizer import VideoTokenizer, check_code_noise, video_tokenizer_preset

    if decoder_only and init_from is None:
        raise ValueError("--decoder-only needs --init-from: it fine-tunes the decoder of a trained tokenizer")

    overrides = {} if quantizer is None else {"quantizer": quantizer}
    if local_codes:
        overrides["encoder_spatial_kernel"] = 1
    if clamped_loss:
        overrides["clamped_loss"] = True
    if fsq_levels:
        try:
            overrides["fsq_levels"] = tuple(int(level) for level in str(fsq_levels).split(","))
        except ValueError:
            raise ValueError(f"--fsq-levels must be comma-separated integers like 8,5,5,5, got {fsq_levels!r}") from None
    if spatial_compression is not None:
        overrides.update(spatial_compression_overrides(video_tokenizer_preset(preset), spatial_compression))
    # VQ codebooks are EMA buffers: without sync every rank would learn its own codebook.
    model_config = video_tokenizer_preset(preset, **overrides, vq_sync_codebook=True)
    if code_noise:
        check_code_noise(model_config, code_noise, "--code-noise")
    dataset = ClipDataset(manifest, num_frames=num_frames, size=size,
                          temporal_compression=model_config.temporal_compression, fps=fps, cache_bytes=cache_bytes)

    def export(model: nn.Module, directory: Path) -> None:
        from dataclasses import replace

        standalone = VideoTokenizer(replace(model.config, vq_sync_codebook=False))
        standalone.load_state_dict(model.state_dict())
        standalone.save_pretrained(directory)

    start_weights = None if init_from is None else _tokenizer_start_weights(init_from, model_config)

    def build_model() -> VideoTokenizer:
        model = VideoTokenizer(model_config)
        if start_weights is not None:
            model.load_state_dict(start_weights)
        if decoder_only:
            model.freeze_encoder()
        return model

    return run_training(config, ds_config, build_model, dataset,
                        lambda model, batch, generator: model.training_loss(batch, code_noise, generator),
                        clip_frame_count, export,
                        run_info={"model_config": asdict(model_config), "manifest": str(manifest),
                                  "init_from": None if init_from is None else str(init_from),
                                  "decoder_only": decoder_only, "code_noise": code_noise})


def spatial_compression_overrides(preset_config, spatial_compression: int) -> dict:
    """Config overrides that give `preset_config` another spatial compression: one per-frame level per
    factor of two, each new level twice as wide as the last (as the preset's own levels grow), and fewer
    levels for less compression."""
    from tokvid.video_tokenizer import frame_levels

    levels = frame_levels(spatial_compression, preset_config.stem_patch, "--spatial-compression")
    widths = list(preset_config.frame_channels[:levels])
    while len(widths) < levels:
        widths.append(2 * widths[-1])
    return {"spatial_compression": spatial_compression, "frame_channels": tuple(widths)}


def _tokenizer_start_weights(source: str | Path, model_config) -> dict[str, torch.Tensor]:
    """The weights of the video tokenizer `source` (a directory or bundled name), checked against the
    configuration this run builds (trainers set vq_sync_codebook, exports clear it; how the decoder is
    trained may change)."""
    from tokvid.video_tokenizer import DECODER_TRAINING_FIELDS, VideoTokenizer

    return _checked_start_weights(VideoTokenizer.from_pretrained(source), source, model_config, "tokenizer",
                                  "the --preset, --quantizer, --fsq-levels, --local-codes and --spatial-compression",
                                  ignore=("vq_sync_codebook", *DECODER_TRAINING_FIELDS))


def train_token_generator(config: TrainingConfig, ds_config: dict, shards_dir: str | Path, preset: str = "small",
                          num_frames: int = 17, text_tokenizer: str | Path | None = None,
                          video_tokenizer: str | Path | None = None, text_vocab_size: int = 256,
                          text_length: int = 16, window_chunks: int = 4,
                          digit_head: bool | None = None, digit_mixture: int = 1, token_patch: int = 1,
                          init_from: str | Path | None = None) -> TrainingResult:
    """Train a Generator on token shards; exports a pipeline directory (generator, both tokenizers).

    digit_head predicts an FSQ code's digits independently instead of one softmax over codes
    (GeneratorConfig.digit_head); None = a digit head exactly when the video tokenizer is FSQ.
    digit_mixture > 1 makes that head a mixture of digit products (GeneratorConfig.digit_mixture); a
    fine-tune may widen a one-product start into one. token_patch > 1 puts a token_patch x token_patch patch
    of tokens in each transformer position (GeneratorConfig.token_patch): a cheaper step.

    init_from (a generator or pipeline directory) starts from trained weights instead of random ones
    (fine-tuning, e.g. with a lower --lr); the model this run builds must have the same configuration.

    Without `text_tokenizer`, one is trained on the shards' prompts into RUN/text_tokenizer.
    `video_tokenizer` (default: the name recorded in the shards) goes into the exported pipeline.
    """
    from tokvid.datasets import TokenChunkDataset, chunk_token_count
    from tokvid.generator import Generator, generator_config_preset
    from tokvid.pipeline import save_pipeline
    from tokvid.shards import TokenShards
    from tokvid.story import num_chunks_for_frames
    from tokvid.text_tokenizer import TextTokenizer, manifest_captions, train_text_tokenizer
    from tokvid.video_tokenizer import VideoTokenizer

    rank, _ = setup_distributed()
    shards = TokenShards(shards_dir)
    tokenizer_name = video_tokenizer or shards.info["tokenizer"]["name"]
    try:
        video_model = VideoTokenizer.from_pretrained(tokenizer_name)
    except ValueError as error:
        raise ValueError(f"{error}; pass --video-tokenizer with the tokenizer that made {shards_dir}") from None
    shards.check_tokenizer(video_model)
    fsq = video_model.config.quantizer == "fsq"
    if digit_head and not fsq:
        raise ValueError(f"a digit head needs an FSQ video tokenizer; {tokenizer_name} uses "
                         f"{video_model.config.quantizer!r}: train with --head codes")
    # Measured on shapes-v1 (README design notes): the digit head learns colour and motion within the CPU
    # budget where one softmax over all codes still draws only background.
    digit_head = fsq if digit_head is None else digit_head
    text_dir = Path(text_tokenizer) if text_tokenizer else Path(config.out_dir) / "text_tokenizer"
    if not text_tokenizer and rank == 0 and not (text_dir / "config.json").is_file():
        train_text_tokenizer(manifest_captions(shards.meta), text_dir, vocab_size=text_vocab_size,
                             max_length=text_length, seed=config.seed)
    dist.barrier()
    text_model = TextTokenizer.from_pretrained(text_dir)
    max_chunks = num_chunks_for_frames(num_frames, video_model.temporal_compression)
    start = None if init_from is None else _start_generator(init_from)
    window_chunks = _fine_tuning_window(window_chunks, max_chunks, start)
    height, width = shards.info["grid"]
    model_config = generator_config_preset(
        preset, codebook_size=video_model.vocab_size, text_vocab_size=text_model.vocab_size,
        text_length=text_model.max_length, chunk_height=height, chunk_width=width,
        window_chunks=window_chunks, text_pad_id=text_model.pad_id,
        text_bos_id=text_model.bos_id, text_eos_id=text_model.eos_id,
        # FSQ codes are digit tuples: embedding them by digits shares what is learnt across neighbouring codes
        code_levels=list(video_model.config.fsq_levels) if fsq else None, digit_head=digit_head,
        digit_mixture=digit_mixture, token_patch=token_patch)
    dataset = TokenChunkDataset(shards, text_model, max_chunks)
    start_weights = None if start is None else _generator_start_weights(start, init_from, model_config, config.seed)
    code_counts = torch.from_numpy(shards.code_counts(video_model.vocab_size))  # what sampling may draw

    def build_model() -> Generator:
        model = Generator(model_config)
        if start_weights is not None:
            model.load_state_dict(start_weights)
        model.code_counts.copy_(code_counts)
        return model

    def loss(model: nn.Module, batch: dict, generator: torch.Generator):
        return model.training_loss(batch["codes"], batch["text"], batch["chunk_valid"], generator=generator)

    def export(model: nn.Module, directory: Path) -> None:
        save_pipeline(directory, model, text_model, video_model, fps=shards.info.get("fps") or 8.0)

    return run_training(config, ds_config, build_model, dataset, loss, chunk_token_count,
                        export, run_info={"model_config": asdict(model_config), "shards": str(shards_dir),
                                          "init_from": None if init_from is None else str(init_from),
                                          "text_tokenizer": str(text_dir), "video_tokenizer": str(tokenizer_name)})


def _start_generator(source: str | Path) -> nn.Module:
    """The generator in `source` (a generator or pipeline directory) that fine-tuning starts from."""
    from tokvid.generator import Generator

    directory = Path(source)
    return Generator.from_pretrained(directory / "generator" if (directory / "generator").is_dir() else directory)


def _generator_start_weights(start: nn.Module, source: str | Path, model_config, seed: int) -> dict:
    """The start generator's weights for the model this run builds; a one-product digit head is widened
    into a digit mixture when the run asks for one."""
    from tokvid.generator import widen_digit_head

    widen = start.config.digit_mixture == 1 and model_config.digit_mixture > 1
    weights = _checked_start_weights(start, source, model_config, "generator",
                                     "the preset, --window-chunks, --head, --digit-mixture, --token-patch and tokenizers",
                                     ignore=("digit_mixture",) if widen else ())
    if widen:
        weights["head.weight"] = widen_digit_head(weights["head.weight"], model_config.digit_mixture, seed)
    return weights


def _fine_tuning_window(window_chunks: int, max_chunks: int, start: nn.Module | None) -> int:
    """The attention window the run builds: the requested one, capped by the chunks in a training clip.
    A fine-tune on clips shorter than the start's window keeps the start's window, as long as the two
    agree on every window these clips can fill; anything else stays a configuration mismatch."""
    window = min(window_chunks, max_chunks)
    if start is not None and min(start.config.window_chunks, max_chunks) == window:
        return start.config.window_chunks
    return window


def _checked_start_weights(start: nn.Module, source: str | Path, model_config, what: str, settings: str,
                           ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """start's weights, or a ValueError naming every config field in which it differs from model_config."""
    ours, theirs = asdict(model_config), asdict(start.config)
    different = sorted(key for key in ours if ours[key] != theirs[key] and key not in ignore)
    if different:
        raise ValueError(f"--init-from {source}: its {what} differs from the one this run builds in {different}; "
                         f"use {settings} it was trained with")
    return start.state_dict()
