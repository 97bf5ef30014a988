"""MaskGIT without a KV cache, as Phenaki samples: every step of every chunk re-runs all decided chunks.

tokvid samples with a KV cache (tokvid/sampling.py); this sampler exists to measure what the cache
saves (bench/generate.py) and to check that both draw the same codes (tests/test_sampling.py). It
follows the same random draws, so with the same seed it returns the same codes, in quadratic time.
"""
from __future__ import annotations

import torch

from tokvid.models.generator import Generator
from tokvid.sampling import SamplingConfig, excluded_codes, sample, sample_chunk


@torch.no_grad()
def sample_without_cache(model: Generator, text: torch.Tensor, config: SamplingConfig,
                         generator: torch.Generator | None = None) -> torch.LongTensor:
    """Codes (B, n, h, w) for per-chunk prompt ids text (B, n, L)."""
    batch, num_chunks = text.shape[:2]
    window = model.check_window(config.window_chunks)
    uncond = model.null_text(batch, num_chunks, text.device)
    streams = [text] if config.cfg_scale == 1 else [uncond] if config.cfg_scale == 0 else [text, uncond]
    stream_text, num_streams = torch.cat(streams), len(streams)
    excluded = excluded_codes(model, config.min_code_count)
    # the first chunk has no past: the cached sampler's own first chunk (candidates included) is the same
    decided = [sample(model, text[:, :1], 1, config=config, generator=generator).flatten(1)]
    for chunk in range(1, num_chunks):
        history = torch.stack(decided, dim=1).repeat(num_streams, 1, 1)

        def states_of(tokens, chunk=chunk, history=history):
            sequence = torch.cat([history, tokens[:, None]], dim=1)
            return model.video_states(sequence, stream_text[:, :chunk + 1], window)[:, -1]

        decided.append(sample_chunk(model, config, states_of, num_streams, batch, excluded, generator))
    return torch.stack(decided, dim=1).view(batch, num_chunks, model.config.chunk_height, model.config.chunk_width)
