"""Fault injection for tests: the engine has no test-only settings, so faults are patched in here.

In-process:  with inject_faults(nan_loss_at=2, nan_grad_at=4): run_training(...)
A train/ script (also under a launcher; every rank runs this file first):
    python tests/faults.py --nan-loss-at 3 --nan-grad-at 6 --kill-in-save-at 8 train/train_tokenizer.py ARGS...
"""
from __future__ import annotations

import argparse
import contextlib
import os
import runpy
import signal
import sys

import torch

from tokvid.training.engine import _Trainer


class PoisonGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradients are not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def install(nan_loss_at: int | None = None, nan_grad_at: int | None = None,
            kill_in_save_at: int | None = None) -> dict:
    """Patch the engine: at step `nan_loss_at` rank 0's first micro-step loss is NaN, at `nan_grad_at` every
    rank's gradients are, and at `kill_in_save_at` every rank SIGKILLs itself after writing its checkpoint
    part, before the checkpoint is committed. Returns the original methods (see `uninstall`)."""
    originals = {"_micro_step_loss": _Trainer._micro_step_loss, "_write_rank_state": _Trainer._write_rank_state}

    def micro_step_loss(self, batch, generator, micro):
        loss, logs = originals["_micro_step_loss"](self, batch, generator, micro)
        if micro == 0 and self.step == nan_loss_at and self.rank == 0:
            loss = loss * float("nan")
        if micro == 0 and self.step == nan_grad_at:
            loss = PoisonGradient.apply(loss)
        return loss, logs

    def write_rank_state(self, directory):
        originals["_write_rank_state"](self, directory)
        if self.step == kill_in_save_at:
            os.kill(os.getpid(), signal.SIGKILL)

    _Trainer._micro_step_loss, _Trainer._write_rank_state = micro_step_loss, write_rank_state
    return originals


def uninstall(originals: dict) -> None:
    for name, method in originals.items():
        setattr(_Trainer, name, method)


@contextlib.contextmanager
def inject_faults(**faults):
    originals = install(**faults)
    try:
        yield
    finally:
        uninstall(originals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag in ("--nan-loss-at", "--nan-grad-at", "--kill-in-save-at"):
        parser.add_argument(flag, type=int, default=None)
    args, rest = parser.parse_known_args()  # the launcher may put its flags (--local_rank) anywhere
    script = next(arg for arg in rest if arg.endswith(".py"))
    rest.remove(script)
    install(args.nan_loss_at, args.nan_grad_at, args.kill_in_save_at)
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
