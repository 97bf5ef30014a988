"""The process group and DeepSpeed's configuration, for the training engine.

Runs the same under `deepspeed --num_gpus N`, `torchrun` and as a plain single process (which gets the
environment of a 1-rank world, so DeepSpeed never tries MPI discovery).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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


def build_ds_config(base: dict, config) -> dict:
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
