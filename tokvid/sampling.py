"""The sampler: block-causal MaskGIT over a generator, one chunk at a time.

`SamplingConfig` (tokvid.sampling_config, re-exported here) holds every sampling option, its default
and its meaning. `sample` runs the chunk loop: each chunk starts fully masked and is decided in `steps`
MaskGIT steps (sample every masked token, keep the most confident, re-mask the rest on a cosine
schedule), with classifier-free guidance, while the decided chunks before it are served from the
generator's KV cache, so time grows linearly with length and memory stays flat.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from tokvid.models.generator import Generator, KVCache, uniform
from tokvid.sampling_config import SamplingConfig, with_options  # noqa: F401 (re-exported)

CHOICE_TEMPERATURE = 4.5  # scale of the annealed Gumbel noise on MaskGIT's keep-or-remask confidences


@torch.no_grad()
def sample(model: Generator, text: torch.Tensor, num_chunks: int | None = None, *,
           config: SamplingConfig | None = None, negative_text: torch.Tensor | None = None,
           prime_codes: torch.Tensor | None = None, generator: torch.Generator | None = None,
           progress: Callable[[int, int], None] | None = None, **options) -> torch.LongTensor:
    """Sample codes (B, num_chunks, h, w) from `model`, chunk by chunk.

    text: (B, n, L) per-chunk prompt ids, or (B, L) held for num_chunks chunks. `config` (or SamplingConfig
    fields as keyword options; redraw_first_frame is the pipeline's, which holds the video tokenizer).
    negative_text replaces the null text of the unconditional stream. prime_codes (B, p, h, w) are returned
    unchanged at the front and serve as context. progress(done, total) is called after each sampled chunk.
    """
    config = with_options(config or SamplingConfig(), options)
    text, num_chunks = _checked_text(model, text, num_chunks, "text")
    batch, device = text.shape[0], model.head.weight.device
    if negative_text is not None:
        negative_text, _ = _checked_text(model, negative_text, num_chunks, "negative_text", batch)
    num_prime = 0 if prime_codes is None else _check_prime(model, prime_codes, batch, num_chunks)
    window_chunks = model.check_window(config.window_chunks)
    excluded = excluded_codes(model, config.min_code_count)

    # Streams run batched: conditional first, then unconditional. Scale 0 or 1 needs only one.
    text = text.to(device).long()
    uncond = model.null_text(batch, num_chunks, device) if negative_text is None else negative_text.to(device).long()
    streams = [text] if config.cfg_scale == 1 else [uncond] if config.cfg_scale == 0 else [text, uncond]
    stream_text = torch.cat(streams, dim=0)
    cache = KVCache(model.config.depth, window_chunks - 1)
    chunks = []
    for chunk in range(num_chunks):
        if chunk < num_prime:
            decided = prime_codes[:, chunk].flatten(1).to(device).long()
        elif chunk == 0 and config.first_chunk_candidates > 1:
            decided = _best_first_chunk(model, config, text, stream_text, len(streams), batch, excluded, generator)
        else:
            def states_of(tokens, chunk=chunk):
                return model.chunk_states(tokens, stream_text[:, chunk], chunk, cache)[0]

            decided = sample_chunk(model, config, states_of, len(streams), batch, excluded, generator)
        chunks.append(decided)
        if chunk + 1 < num_chunks and window_chunks > 1:
            # One pass over the decided tokens gives the keys/values later chunks will attend to.
            _, own_kvs, key_valid = model.chunk_states(decided.repeat(len(streams), 1), stream_text[:, chunk],
                                                       chunk, cache)
            cache.append(own_kvs, key_valid)
        if progress is not None and chunk >= num_prime:
            progress(chunk + 1, num_chunks)
    return torch.stack(chunks, dim=1).view(batch, num_chunks, model.config.chunk_height, model.config.chunk_width)


def sample_chunk(model: Generator, config: SamplingConfig, states_of: Callable[[torch.Tensor], torch.Tensor],
                 num_streams: int, batch: int, excluded: torch.Tensor | None,
                 generator: torch.Generator | None) -> torch.Tensor:
    """MaskGIT over one chunk (B, h*w): start fully masked, commit a cosine-scheduled share of tokens each
    step. states_of maps the chunk's tokens in every stream (S*B, h*w) to their states after the past;
    `excluded` codes are never drawn."""
    mask_id = model.config.mask_id
    tokens = torch.full((batch, model.config.chunk_tokens), mask_id, dtype=torch.long,
                        device=model.head.weight.device)
    for step in range(config.steps):
        logits = model.logits(states_of(tokens.repeat(num_streams, 1)))
        if num_streams == 2:
            cond, uncond = logits.chunk(2, dim=0)
            logits = uncond + config.cfg_scale * (cond - uncond)
        tokens = maskgit_step(tokens, logits, mask_id, step, config.steps, config.temperature, config.top_k, generator,
                              excluded)
    return tokens


def maskgit_step(tokens: torch.Tensor, logits: torch.Tensor, mask_id: int, step: int, steps: int,
                 temperature: float, top_k: int | None, generator: torch.Generator | None,
                 excluded: torch.Tensor | None = None) -> torch.Tensor:
    """One MaskGIT step on (B,N) tokens with (B,N,V) logits: sample every masked position, then re-mask
    the cosine-scheduled number of the least confident (all rows hold the same number of masked tokens).
    `excluded` (V,) bool: codes never drawn (applied here, after guidance: -inf in both streams is NaN)."""
    unknown = tokens == mask_id
    num_unknown = int(unknown[0].sum())
    if num_unknown == 0:
        return tokens
    # Only masked positions are drawn and ranked (committed ones keep their tokens), so only their logits and
    # noise are worked on; the noise is drawn for every position all the same, so each seed keeps its video.
    rows = None if num_unknown == tokens.shape[1] else unknown
    noise_shape = logits.shape
    if rows is not None:
        logits = logits[rows].view(tokens.shape[0], num_unknown, -1)
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    step_temperature = temperature * (steps - step) / steps
    if step_temperature > 0:
        noise = _gumbel(noise_shape, generator, logits.device, rows).view(logits.shape)
        drawn = (logits / step_temperature).add_(noise).argmax(dim=-1)
    else:
        drawn = logits.argmax(dim=-1)
    sampled = tokens.masked_scatter(unknown, drawn)

    progress = (step + 1) / steps
    num_remask = int(math.floor(tokens.shape[1] * math.cos(math.pi / 2 * progress)))
    num_remask = 0 if step == steps - 1 else max(1, min(num_unknown - 1, num_remask))
    if num_remask == 0:
        return sampled
    confidence = logits.log_softmax(dim=-1).gather(-1, drawn[..., None])[..., 0]
    noise = _gumbel(tokens.shape, generator, logits.device, unknown).view(confidence.shape)
    # committed tokens score +inf: they are never re-masked
    score = torch.full(tokens.shape, float("inf"), device=tokens.device)
    score = score.masked_scatter(unknown, confidence + CHOICE_TEMPERATURE * (1 - progress) * noise)
    remask = score.topk(num_remask, dim=-1, largest=False).indices
    return sampled.scatter(1, remask, mask_id)


def excluded_codes(model: Generator, min_code_count: int) -> torch.Tensor | None:
    """The codes (bool (codebook_size,)) sampling must not draw, or None for none."""
    if min_code_count == 0 or not bool(model.code_counts.any()):
        return None
    excluded = model.code_counts < min_code_count
    if bool(excluded.all()):
        raise ValueError(f"min_code_count={min_code_count} excludes every code (the commonest occurs "
                         f"{int(model.code_counts.max())} times in the training data); lower it")
    return excluded


# ---------------------------------------------------------------------------------------------
# First-chunk candidates
# ---------------------------------------------------------------------------------------------

def _best_first_chunk(model: Generator, config: SamplingConfig, text: torch.Tensor, stream_text: torch.Tensor,
                      num_streams: int, batch: int, excluded, generator) -> torch.Tensor:
    """Sample the first chunk K times as one batch (every stream's rows repeated K times) and keep, per
    batch row (B, h*w), the candidate whose likelihood gains most from the prompt over the empty prompt
    (pointwise mutual information: the likelihood alone prefers the data's commonest starts, such as an
    object already at the wall it is asked to move toward)."""
    count = config.first_chunk_candidates
    wide_text = torch.cat([part.repeat(count, 1, 1) for part in stream_text.chunk(num_streams)])
    empty = KVCache(model.config.depth, 0)
    candidates = sample_chunk(model, config, lambda tokens: model.chunk_states(tokens, wide_text[:, 0], 0, empty)[0],
                              num_streams, count * batch, excluded, generator)
    prompt = text[:, 0].repeat(count, 1)
    prompts = torch.cat([prompt, model.null_text(prompt.shape[0], 1, prompt.device)[:, 0]])
    with_prompt, without = first_chunk_log_likelihood(model, candidates.repeat(2, 1), prompts).chunk(2)
    best = (with_prompt - without).view(count, batch).argmax(dim=0)
    return candidates.view(count, batch, -1)[best, torch.arange(batch, device=best.device)]


def first_chunk_log_likelihood(model: Generator, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Mean log-probability (B,) of a video's first chunk, tokens (B, h*w), under text (B, L): every token
    predicted with the other half of the chunk visible (a checkerboard and its complement), the way
    MaskGIT training asks for masked tokens. No randomness, so reranking by it keeps seeds reproducible."""
    config = model.config
    empty = KVCache(config.depth, 0)
    rows = torch.arange(config.chunk_height, device=tokens.device)[:, None]
    cols = torch.arange(config.chunk_width, device=tokens.device)[None, :]
    black = ((rows + cols) % 2 == 0).flatten()
    total = torch.zeros(tokens.shape[0], device=tokens.device)
    for hidden_half in (black, ~black):
        states = model.chunk_states(tokens.masked_fill(hidden_half, config.mask_id), text, 0, empty)[0]
        log_probs = model.logits(states).log_softmax(dim=-1).gather(-1, tokens[..., None])[..., 0]
        total = total + (log_probs * hidden_half).sum(dim=-1)
    return total / tokens.shape[1]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _gumbel(shape, generator: torch.Generator | None, device, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Gumbel noise of `shape`, or of its entries where the bool `rows` (a leading part of shape) holds
    (flattened): all are drawn, so the random stream moves on the same, but only those are transformed."""
    noise = uniform(shape, generator, device)
    noise = noise.clamp_(1e-20, 1.0) if rows is None else noise[rows].clamp_(1e-20, 1.0)
    return noise.log_().neg_().clamp_(min=1e-20).log_().neg_()  # -log(-log(u)), in place: no copies


def _checked_text(model: Generator, text, num_chunks, name: str, batch: int | None = None):
    """(B, n, L) per-chunk prompt ids and the chunk count, from (B, n, L) or (B, L) + num_chunks."""
    if isinstance(text, torch.Tensor) and text.dim() == 2:
        if num_chunks is None:
            raise ValueError(f"{name} of shape (B, L) needs num_chunks; or pass (B, n, L) per-chunk prompts")
        text = text[:, None].expand(-1, num_chunks, -1)
    if not isinstance(text, torch.Tensor) or text.dim() != 3:
        raise ValueError(f"{name} must be a tensor (B, n, L) of per-chunk prompt ids (or (B, L))")
    num_chunks = text.shape[1] if num_chunks is None else num_chunks
    if not isinstance(num_chunks, int) or isinstance(num_chunks, bool) or num_chunks < 1:
        raise ValueError(f"num_chunks must be a positive int, got {num_chunks!r}")
    model.check_text(text, name, (text.shape[0] if batch is None else batch, num_chunks))
    if text.shape[0] == 0:
        raise ValueError(f"{name} has batch size 0")
    return text, num_chunks


def _check_prime(model: Generator, prime_codes: torch.Tensor, batch: int, num_chunks: int) -> int:
    model.check_tokens(prime_codes, "prime_codes", allow_mask=False)
    if prime_codes.shape[0] != batch or prime_codes.shape[1] > num_chunks:
        raise ValueError(f"prime_codes {tuple(prime_codes.shape)} must have batch {batch} and at most "
                         f"num_chunks={num_chunks} chunks")
    return prime_codes.shape[1]


def redraw_first_latent(codes: torch.Tensor, video_tokenizer) -> torch.Tensor:
    """Replace the first latent frame of codes (B, t, h, w) by the code of the decoded second frame.

    The causal tokenizer codes frame 0 alone, so the generator draws it from the prompt with no past;
    most malformed objects of the bundled model are there (too small, misshapen, off-colour), while the
    next chunk, drawn with that context, is right. Frame 1 is decoded from the first two latents only (the
    decoder is causal) and coded as an image."""
    from tokvid.video_io import frames_to_tensor, tensor_to_frames

    second = tensor_to_frames(video_tokenizer.decode(codes[:, :2])[0])[1:2]
    first = video_tokenizer.encode(frames_to_tensor(second)[None].to(codes.device))
    return torch.cat([first, codes[:, 1:]], dim=1)
