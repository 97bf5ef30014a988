"""The training engine: the DeepSpeed loop shared by the tokenizer and generator trainings.

`run_training` takes a model factory, an ItemDataset and a loss function, and adds what long runs
on many ranks need:

- launch (distributed.py): works under `deepspeed --num_gpus N`, `torchrun` and as a plain single
  process; the process group exists before the model is built, and every rank builds it from the
  same seed (DeepSpeed broadcasts parameters, never buffers such as EMA codebooks).
- checkpoints (checkpoints.py): atomic, committed by rank 0 after every rank wrote its part; a save
  killed halfway leaves the previous one intact. SIGTERM/SIGINT save at the end of the step.
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
import shutil
import signal
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
from tokvid.training.checkpoints import (CHECKPOINTS, COMPLETE_MARKER, checkpoint_name, commit_checkpoint,
                                         fsync_path, prune_checkpoints, rank_file, resolve_resume)
from tokvid.training.distributed import build_ds_config, buffer_digest, setup_distributed, unsynced_buffers

logger = logging.getLogger(__name__)

DEEPSPEED_TAG = "deepspeed"
METRICS_FILE = "metrics.jsonl"

LossFunction = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
# (micro_batch, seed, rank, world_size, num_workers) -> a loader with ResumableLoader's interface
LoaderFactory = Callable[[int, int, int, int, "int | None"], Any]


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (too many skipped steps, too much bad data); the message says why."""


def _flag(default, help: str, **argparse_options):
    """A TrainingConfig field that the train/ scripts expose as a flag (tokvid.config_flags)."""
    return field(default=default, metadata={"help": help, **argparse_options})


@dataclass
class TrainingConfig:
    out_dir: str = _flag(None, "run directory (checkpoints/, metrics.jsonl, tb/, export/)", flag="--out")
    max_steps: int = _flag(None, "optimizer steps to run in total (skipped steps included)")
    seed: int = _flag(0, "model initialisation (identical on every rank), data order and per-step randomness")
    micro_batch: int = _flag(4, "samples per rank per micro-step")
    grad_accum: int = _flag(1, "micro-steps per optimizer step")
    lr: float = _flag(3e-4, "peak learning rate")
    min_lr_ratio: float = _flag(0.1, "the cosine schedule ends at lr * min_lr_ratio at max_steps")
    warmup_steps: int = _flag(100, "linear warmup, in applied optimizer steps")
    weight_decay: float = _flag(0.01, "AdamW weight decay, applied to matrices only")
    betas: tuple[float, float] = _flag((0.9, 0.95), "AdamW betas")
    zero_stage: int | None = _flag(None, "ZeRO stage 1, 2 or 3 (default: the DeepSpeed config's)", choices=(1, 2, 3))
    bf16: bool | None = _flag(None, "bf16 autocast with fp32 weights (GPU; default: the DeepSpeed config's)")
    activation_checkpointing: bool = _flag(False, "recompute block activations in backward (less memory)")
    save_every: int = _flag(1000, "checkpoint period in steps (the last step is always saved)")
    keep_last: int = _flag(2, "complete checkpoints kept on disk")
    resume: str | None = _flag(None, "'auto' (the newest complete checkpoint, if any) or a checkpoint directory")
    max_consecutive_skips: int = _flag(5, "stop (after a checkpoint) when this many steps in a row are skipped "
                                          "(non-finite loss or gradient)")
    max_bad_data_fraction: float = _flag(0.01, "stop when more than this fraction of the data items is unusable")
    num_workers: int | None = _flag(None, "data loading processes per rank (default: the cores per rank beyond "
                                          "one, at most 4)")
    throughput_unit: str = _flag("tokens", "metrics report <unit>_per_s (set by the training, not a flag)",
                                 flag=None)

    def __post_init__(self):
        if self.out_dir is None or self.max_steps is None:
            raise ValueError("a training needs out_dir (--out) and max_steps (--max-steps)")
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
    signal: int = 0  # the signal that interrupted the run (SIGINT 2, SIGTERM 15), 0 if none


# ----------------------------------------------------------------------------------------------
# schedule and model wrapping


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


# ----------------------------------------------------------------------------------------------
# stop signals


class StopRequest:
    """SIGINT and SIGTERM ask the run to stop after the current step, with a checkpoint.

    Schedulers (scancel, docker stop, Kubernetes) and Ctrl-C signal the whole process group, and the
    launchers (deepspeed, torchrun) then forward a signal of their own to each rank, so a rank sees two
    in quick succession: repeats within GRACE_SECONDS are the same request. A signal after that, or a
    third one, stops at once without saving (the previous checkpoint stays).
    """

    GRACE_SECONDS = 10.0

    def __init__(self, rank: int):
        self.rank = rank
        self.signum = 0
        self.received: list[float] = []

    def install(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    @staticmethod
    def restore(previous: dict) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        self.received.append(time.monotonic())
        if not self.signum:
            self.signum = signum
            logger.warning("rank %d got signal %d: saving a checkpoint at the end of this step", self.rank, signum)
        elif len(self.received) >= 3 or self.received[-1] - self.received[0] > self.GRACE_SECONDS:
            logger.error("rank %d got signal %d again: stopping now, without saving this step", self.rank, signum)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


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
                 run_info: dict | None = None, make_loader: LoaderFactory | None = None) -> TrainingResult:
    """Train `build_model()` with DeepSpeed on `dataset` until config.max_steps; export at the end.

    build_model is called on every rank after the process group exists, under the same seed.
    loss_fn(model, batch, generator) -> (loss, logs) must draw all randomness from `generator`.
    count_units(batch) gives the throughput unit per batch (video tokens or frames).
    export_fn(model, directory) writes the consolidated fp32 model (rank 0 only).
    make_loader builds the batches' loader instead of ResumableLoader(dataset, ...) (e.g. MixedBatchLoader);
    its `dataset` then names and counts the items.
    """
    if make_loader is None:
        def make_loader(batch_size, seed, rank, world_size, num_workers):
            return ResumableLoader(dataset, batch_size, seed, rank, world_size, num_workers=num_workers)
    trainer = _Trainer(config, ds_config, build_model, make_loader, loss_fn, count_units, export_fn, run_info or {})
    return trainer.run()


class _Trainer:
    def __init__(self, config, ds_config, build_model, make_loader, loss_fn, count_units, export_fn, run_info):
        import deepspeed

        self.config, self.count_units = config, count_units
        self.build_model, self.export_fn, self.run_info = build_model, export_fn, run_info
        self.rank, self.world_size = setup_distributed()
        self.run_dir = Path(config.out_dir)
        self.resume_from = resolve_resume(self.run_dir, config.resume)
        if config.resume == "auto" and self.resume_from is None and self.rank == 0:
            logger.warning("--resume auto: no complete checkpoint in %s, starting from step 0", self.run_dir)
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
        self.loader = make_loader(config.micro_batch, config.seed, self.rank, self.world_size, config.num_workers)
        self.dataset = self.loader.dataset
        self.step, self.skipped_total, self.consecutive_skips = 0, 0, 0
        self.stop = StopRequest(self.rank)
        self.bad_reports, self.bad_names = 0, {}  # bad items reported by all ranks, and their merged names

    # -- lifecycle
    def run(self) -> TrainingResult:
        if self.resume_from is not None:
            self._load(self.resume_from)
        elif self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        self.metrics = MetricsLog(self.run_dir, self.rank == 0, self.step)
        losses, status, stop_signal = [], "finished", 0
        previous_handlers = self.stop.install()
        from tqdm import tqdm

        bar = tqdm(total=self.config.max_steps, initial=self.step, disable=self.rank != 0, unit="step",
                   dynamic_ncols=True)
        try:
            while self.step < self.config.max_steps:
                self.step += 1
                record, stop_signal = self._train_step()
                losses.append(record["loss"])
                bar.update(1)
                bar.set_postfix(loss=record["loss"], skipped=self.skipped_total)
                if stop_signal:
                    self._save()
                    logger.warning("interrupted by signal %d: saved step %d; continue with --resume auto",
                                   stop_signal, self.step)
                    status = "interrupted"
                    break
                if self.step % self.config.save_every == 0 or self.step == self.config.max_steps:
                    self._save()
            export_dir = self._export() if status == "finished" and self.export_fn else None
        finally:
            bar.close()
            self.metrics.close()
            if status != "interrupted":  # an interrupted process is on its way out: the launcher's and the
                StopRequest.restore(previous_handlers)  # user's repeated signals keep being absorbed
        return TrainingResult(self.step, status, self.skipped_total, len(self.bad_names),
                              str(export_dir) if export_dir else None, losses,
                              signal=stop_signal)

    # -- one optimizer step
    def _train_step(self) -> tuple[dict, int]:
        """One optimizer step; returns its metrics record and the signal a rank got asking to stop (0: none)."""
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
            loss, logs = self._micro_step_loss(batch, generator, micro)
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

    def _micro_step_loss(self, batch: Any, generator: torch.Generator, micro: int) -> tuple[torch.Tensor, dict]:
        """The loss of one micro-step (a seam: tests wrap it to inject faults)."""
        return self.engine(batch, generator)

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

    def _agree_on_step_end(self) -> tuple[int, int]:
        """The stop signal any rank got (0: none) and the unusable-data count over all ranks; stops when too
        much data is bad."""
        packed = torch.tensor([float(self.stop.signum == signal.SIGTERM), float(self.stop.signum == signal.SIGINT),
                               float(len(self.loader.bad_items))], dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        stop_signal = signal.SIGTERM if packed[0] else signal.SIGINT if packed[1] else 0
        if int(packed[2]) != self.bad_reports:  # some rank met a new bad item: merge names (ranks may share items)
            self.bad_reports = int(packed[2])
            per_rank = [None] * self.world_size
            dist.all_gather_object(per_rank, {self.dataset.describe(i): why for i, why in self.loader.bad_items.items()})
            self.bad_names = {name: why for found in per_rank for name, why in found.items()}
        if len(self.bad_names) > self.config.max_bad_data_fraction * len(self.dataset):
            listing = "\n".join(f"  {name}: {why}" for name, why in sorted(self.bad_names.items()))
            raise TrainingStopped(
                f"{len(self.bad_names)} of {len(self.dataset)} data items are unusable, more than "
                f"--max-bad-data-fraction {self.config.max_bad_data_fraction}; fix or remove them:\n{listing}")
        return int(stop_signal), len(self.bad_names)

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
        self._write_rank_state(tmp_dir)
        dist.barrier()
        if self.rank == 0:
            commit_checkpoint(tmp_dir, final_dir, {"step": self.step, "world_size": self.world_size,
                                                   "time": time.time()})
            prune_checkpoints(self.run_dir, self.config.keep_last)
        dist.barrier()

    def _write_rank_state(self, directory: Path) -> None:
        """This rank's part of a checkpoint: data position and buffer digest. No RNG state: nothing draws
        from the global RNGs across steps (each micro-step reseeds them, tests/test_invariants.py)."""
        path = rank_file(directory, self.rank)
        torch.save({"loader": self.loader.state_dict(), "step": self.step,
                    "buffer_digest": buffer_digest(self.module.model)}, path)
        fsync_path(path)

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
        rank_state = torch.load(rank_file(directory, self.rank), weights_only=False)
        self.loader.load_state_dict(rank_state["loader"])
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


