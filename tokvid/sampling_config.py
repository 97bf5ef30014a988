"""Every sampling option, its default and its meaning: `SamplingConfig`, the single home of them.

A pipeline's `pipeline.json` overrides defaults explicitly and the CLI's flags are made from its fields.
This module imports no torch, so `tokvid generate --help` and argument errors answer without loading it;
tokvid.sampling (the sampler) re-exports both names.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace


def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class SamplingConfig:
    steps: int = _option(8, "MaskGIT refinement steps per chunk")
    cfg_scale: float = _option(1.0, "classifier-free guidance: logits = uncond + scale * (cond - uncond); "
                                    "0 unconditional, 1 the prompt alone (one stream, half the work)")
    temperature: float = _option(1.25, "sampling temperature at a chunk's first step, annealed linearly to "
                                       "temperature/steps at its last (0 = greedy)")
    top_k: int | None = _option(None, "draw only from the k likeliest codes at each position; unset: every code")
    window_chunks: int | None = _option(None, "chunks of attention context, the current one included; "
                                              "unset: the generator's trained window")
    first_chunk_candidates: int = _option(8, "sample the video's first chunk this many times (as one batch) and "
                                             "keep the one the prompt explains best against the empty prompt")
    min_code_count: int = _option(1, "draw only codes seen at least this often in the generator's training "
                                     "data (0: any code)")
    redraw_first_frame: bool = _option(True, "re-code the first frame from the decoded second one: the first "
                                             "frame is drawn from the prompt alone, later ones with context")

    def __post_init__(self):
        for name in ("steps", "top_k", "window_chunks", "first_chunk_candidates", "min_code_count"):
            value = getattr(self, name)  # pipeline.json may hold a whole number as a float (8.0)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, int(value))
        for name, lowest, optional in (("steps", 1, False), ("first_chunk_candidates", 1, False),
                                       ("min_code_count", 0, False), ("top_k", 1, True), ("window_chunks", 1, True)):
            value = getattr(self, name)
            if not (optional and value is None) and (not isinstance(value, int) or isinstance(value, bool)
                                                     or value < lowest):
                raise ValueError(f"{name} must be {'None or ' if optional else ''}an int >= {lowest}, got {value!r}")
        for name in ("cfg_scale", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.redraw_first_frame, bool):
            raise ValueError(f"redraw_first_frame must be True or False, got {self.redraw_first_frame!r}")


def with_options(config: SamplingConfig, options: dict) -> SamplingConfig:
    """`config` with some options replaced (and checked again); a ValueError names unknown ones."""
    unknown = sorted(set(options) - {f.name for f in fields(SamplingConfig)})
    if unknown:
        raise ValueError(f"unknown sampling options {unknown}; the options are "
                         f"{', '.join(f.name for f in fields(SamplingConfig))}")
    return replace(config, **options) if options else config
