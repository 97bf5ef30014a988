"""What both training scripts share: the engine's flags, DeepSpeed's config, exit codes."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import deepspeed
import torch

from tokvid.config_flags import add_config_flags, add_retired_flags, config_flags_given
from tokvid.training.distributed import load_ds_config
from tokvid.training.engine import TrainingConfig, TrainingResult, TrainingStopped

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "ds_config.json"


def training_parser(description: str, num_frames: int, presets: list[str],
                    retired: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """A parser with the engine's flags (TrainingConfig), the launcher's and DeepSpeed's; num_frames is the
    script's default clip length, presets the model sizes it offers."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # appended by the launcher
    add_config_flags(parser.add_argument_group("training"), TrainingConfig)
    parser.add_argument("--preset", default="small", choices=presets, help="model size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank")
    parser.add_argument("--num-frames", type=int, default=num_frames, help="frames per training clip (1 + k*tc)")
    add_retired_flags(parser, retired or {})
    deepspeed.add_config_arguments(parser)
    return parser


def run_training_script(args: argparse.Namespace, train: Callable[[TrainingConfig, dict], TrainingResult],
                        throughput_unit: str) -> int:
    """Logging, threads, configs, then train(config, ds_config). Exit codes: 0 finished, 1 stopped by the
    engine (see the message), 2 bad input, 128 + the signal for a run interrupted by SIGINT (130) or SIGTERM
    (143) after saving, so that a scheduler or a script does not take it for finished."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = TrainingConfig(**config_flags_given(args, TrainingConfig), throughput_unit=throughput_unit)
        result = train(config, load_ds_config(args.deepspeed_config or DEFAULT_DS_CONFIG))
    except TrainingStopped as error:
        print(f"rank {rank}: training stopped: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"rank {rank}: error: {error}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"{result.status} at step {result.step}; skipped steps {result.skipped_steps}, "
              f"unusable items {result.bad_items}; export: {result.export_dir}")
    if result.signal:
        for sig in (signal.SIGINT, signal.SIGTERM):  # saved and on the way out: a late repeat must not kill
            signal.signal(sig, signal.SIG_IGN)     # the process during shutdown and hide this exit status
        print(f"rank {rank}: interrupted by signal {result.signal} after saving step {result.step}; continue with "
              "the same command and --resume auto", file=sys.stderr)
        return 128 + result.signal
    return 0
