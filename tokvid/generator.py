"""Block-causal MaskGIT generator over video-token chunks.

A chunk is one latent frame of the video tokenizer (h*w tokens). The sequence is, per chunk, a text
block of L prompt ids (the prompt governing that chunk, so prompts can change mid-video) followed by
the chunk's h*w video tokens:

    [text_0 | video_0] [text_1 | video_1] ... [text_{t-1} | video_{t-1}]

Attention is bidirectional inside a chunk and causal across chunks, limited to a sliding window of
`window_chunks` chunks (the current one included). Time enters only through a rotary embedding of
the chunk index, so attention depends on chunk offsets, never on absolute time, and sampling can run
far past the training length. Sampling decodes one chunk at a time with MaskGIT while earlier chunks
are served from a per-layer key/value cache, so memory stays flat and time grows linearly.

With `token_patch` p > 1, a transformer position holds a p x p patch of video tokens: the tokens are
embedded one by one and merged, and the final state of a position is split back into its tokens'
states before the head, so masking, loss and sampling stay per token while attention and MLPs run
over p*p times fewer video positions.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_file, save_file

from tokvid.text_tokenizer import BOS_ID, EOS_ID, PAD_ID

MODEL_TYPE = "tokvid_generator"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SAMPLING_ORDERS = ("confidence", "random")
CHOICE_TEMPERATURE = 4.5  # scale of the annealed Gumbel noise on MaskGIT's keep-or-remask confidences
# later_chunk_candidates keeps the candidate with the highest log p(chunk | prompt, past) - this weight *
# log p(chunk | unconditional text, past). Weight 1 (the prompt's gain alone) picked chunks with a smeared or
# missing object, unlikely in both streams (the bundle's 36 stories: clean frames 0.97 -> 0.91, all right
# 0.94 -> 0.87); 0.5 keeps them clean (README design notes, "Best of K later chunks").
LATER_CANDIDATE_UNCOND_WEIGHT = 0.5
# Config fields added after generators were first saved, with the value that behaves as before: a config.json
# written without one loads with that value. A new field must be added here, or older generators stop loading.
LATER_FIELDS = {"digit_mixture": 1, "token_patch": 1}


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class GeneratorConfig:
    codebook_size: int           # video tokenizer vocabulary; id `codebook_size` is the mask token
    text_vocab_size: int         # TextTokenizer.vocab_size
    text_length: int = 16        # L: prompt ids in front of every chunk (bos, pieces, eos, pads)
    chunk_height: int = 8        # h: latent grid rows of one chunk (= one latent frame)
    chunk_width: int = 8         # w: latent grid columns of one chunk
    dim: int = 256               # transformer width
    depth: int = 6               # transformer blocks
    heads: int = 8               # attention heads; dim/heads must be even (rotary pairs)
    mlp_ratio: float = 4.0       # SwiGLU hidden width ~ mlp_ratio*dim*2/3 (same cost as a GELU MLP of mlp_ratio)
    window_chunks: int = 4       # chunks a chunk attends to, itself included; keep <= chunks per training clip
    rope_base: float = 10000.0   # rotary base for the chunk (time) index
    spatial_rotary: bool = True  # rotary over row and column inside a chunk too (half of each head's pairs; time
                                 # keeps the other half), so "the token one row up last chunk" is a relative offset
    text_dropout: float = 0.1    # probability a training sample gets the null text (classifier-free guidance)
    clean_context: bool = True   # training: masked chunks attend to an unmasked copy of the earlier chunks, as
                                 # when sampling (the sequence is doubled); False = one sequence, masked everywhere
    clean_chunk_prob: float = 0.25  # clean_context=False only: probability a chunk stays unmasked (context, no loss)
    code_levels: list[int] | None = None  # the codes' mixed-radix digits (FSQ levels, first = least significant):
                                 # a code's embedding is the sum of its digits' (shared across codes); None = one
                                 # embedding row per code
    digit_head: bool = False     # with code_levels: predict each digit independently (a smaller head, but the
                                 # product cannot say which digits go together); False = one softmax over codes
    digit_mixture: int = 1       # with digit_head: p(code) is a mixture of this many digit products, so the head
                                 # can say which digits go together (a square's cell, a circle's); 1 = one product
    token_patch: int = 1         # p: one transformer position holds a p x p patch of a chunk's tokens (embedded
                                 # together, split again before the head), so attention runs over p*p times fewer
                                 # positions; h and w must be multiples of p. 1 = a position per token
    text_pad_id: int = PAD_ID    # pad id of the text tokenizer; pad positions are never attended to
    text_bos_id: int = BOS_ID    # bos id; the null text is [bos, eos, pad, ...]
    text_eos_id: int = EOS_ID    # eos id

    def __post_init__(self):
        positive = ["codebook_size", "text_vocab_size", "chunk_height", "chunk_width", "dim", "depth", "heads",
                    "window_chunks", "token_patch"]
        for name in positive + ["text_length", "text_pad_id", "text_bos_id", "text_eos_id"]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"GeneratorConfig.{name} must be an int, got {value!r}")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2 (the video tokenizer's vocab_size), got {self.codebook_size}")
        if self.text_length < 2:
            raise ValueError(f"text_length must be >= 2 to hold bos and eos, got {self.text_length}")
        specials = (self.text_pad_id, self.text_bos_id, self.text_eos_id)
        if len(set(specials)) != 3 or min(specials) < 0 or max(specials) >= self.text_vocab_size:
            raise ValueError(f"text pad/bos/eos ids {specials} must be distinct and < text_vocab_size "
                             f"({self.text_vocab_size}); take them from the TextTokenizer")
        check_token_patch(self.token_patch, self.chunk_height, self.chunk_width)
        if self.dim % self.heads or (self.dim // self.heads) % 2:
            raise ValueError(f"dim ({self.dim}) must split into {self.heads} heads of even width; change dim or heads")
        if self.code_levels is not None:
            levels = list(self.code_levels)
            if not levels or any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in levels) \
                    or math.prod(levels) != self.codebook_size:
                raise ValueError(f"code_levels {self.code_levels!r} must be ints >= 2 whose product is codebook_size "
                                 f"({self.codebook_size}); take them from the video tokenizer's fsq_levels")
            self.code_levels = levels
        if not isinstance(self.digit_head, bool):
            raise ValueError(f"digit_head must be true or false, got {self.digit_head!r}")
        if self.digit_head and self.code_levels is None:
            raise ValueError("digit_head needs code_levels (the video tokenizer's fsq_levels)")
        if not isinstance(self.digit_mixture, int) or isinstance(self.digit_mixture, bool) or self.digit_mixture < 1:
            raise ValueError(f"digit_mixture must be an int >= 1, got {self.digit_mixture!r}")
        if self.digit_mixture > 1 and not self.digit_head:
            raise ValueError(f"digit_mixture={self.digit_mixture} mixes digit products, so it needs digit_head")
        if not isinstance(self.spatial_rotary, bool):
            raise ValueError(f"spatial_rotary must be true or false, got {self.spatial_rotary!r}")
        if self.spatial_rotary and (self.dim // self.heads) % 8:
            raise ValueError(f"spatial_rotary needs a head width (dim/heads = {self.dim // self.heads}) divisible by 8")
        if not isinstance(self.clean_context, bool):
            raise ValueError(f"clean_context must be true or false, got {self.clean_context!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        for name in ("text_dropout", "clean_chunk_prob"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def chunk_tokens(self) -> int:
        """Video tokens per chunk (h*w)."""
        return self.chunk_height * self.chunk_width

    @property
    def position_columns(self) -> int:
        """Transformer positions per chunk row (w / token_patch)."""
        return self.chunk_width // self.token_patch

    @property
    def chunk_positions(self) -> int:
        """Transformer positions of one chunk's video tokens (h*w / token_patch^2)."""
        return self.chunk_tokens // self.token_patch ** 2

    @property
    def sequence_per_chunk(self) -> int:
        """Sequence positions one chunk takes: its text block, then its video positions."""
        return self.text_length + self.chunk_positions

    @property
    def mask_id(self) -> int:
        return self.codebook_size


def check_token_patch(token_patch: int, chunk_height: int, chunk_width: int, name: str = "token_patch") -> None:
    """A ValueError unless token_patch is an int >= 1 that divides both sides of a chunk's token grid.
    `name` is what the error calls it (a config field or a flag)."""
    if not isinstance(token_patch, int) or isinstance(token_patch, bool) or token_patch < 1 \
            or chunk_height % token_patch or chunk_width % token_patch:
        raise ValueError(f"{name} {token_patch!r} must divide the {chunk_height}x{chunk_width} token grid of a "
                         "chunk; choose a divisor of both, or 1")


_PRESETS = {
    "tiny": dict(dim=128, depth=4, heads=4),
    "small": dict(dim=192, depth=6, heads=6),
    "base": dict(dim=512, depth=12, heads=8),
}


def generator_config_preset(name: str, **overrides) -> GeneratorConfig:
    """A GeneratorConfig of size `name` ("tiny", "small", "base"); `overrides` must include
    codebook_size and text_vocab_size."""
    if name not in _PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; choose one of {sorted(_PRESETS)}")
    missing = [key for key in ("codebook_size", "text_vocab_size") if key not in overrides]
    if missing:
        raise ValueError(f"generator_config_preset needs {missing}: the video tokenizer's vocab_size and "
                         "the text tokenizer's vocab_size")
    unknown = set(overrides) - {field.name for field in dataclasses.fields(GeneratorConfig)}
    if unknown:
        raise ValueError(f"unknown GeneratorConfig fields {sorted(unknown)}")
    return GeneratorConfig(**{**_PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def _rotary_angles(positions: torch.Tensor, pairs: int, base: float) -> torch.Tensor:
    inv_freq = base ** (-torch.arange(pairs, device=positions.device, dtype=torch.float32) / pairs)
    return positions.to(torch.float32)[:, None] * inv_freq[None, :]


def rotary_cos_sin(chunk_index: torch.Tensor, head_dim: int, base: float,
                   rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (n, head_dim) for per-token chunk indices (n,), in fp32 so large indices stay exact.

    With rows/cols (n,), a quarter of the rotation pairs each go to row and column, half to time."""
    if rows is None:
        angles = _rotary_angles(chunk_index, head_dim // 2, base)
    else:
        angles = torch.cat([_rotary_angles(chunk_index, head_dim // 4, base),
                            _rotary_angles(rows, head_dim // 8, base),
                            _rotary_angles(cols, head_dim // 8, base)], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, n, head_dim) by the tables of `rotary_cos_sin`."""
    x32 = x.float()
    first, second = x32.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, mask, past_kv=None):
        """Attention of x's tokens over (past_kv + x's own) keys; returns output and x's own (k, v)."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        own_kv = (k, v)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).reshape(batch, length, dim)), own_kv


class SwiGLU(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = max(8, int(round(mlp_ratio * dim * 2 / 3 / 8)) * 8)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.dim)
        self.attn = Attention(config.dim, config.heads)
        self.mlp_norm = nn.RMSNorm(config.dim)
        self.mlp = SwiGLU(config.dim, config.mlp_ratio)

    def forward(self, x, cos, sin, mask, past_kv=None):
        attended, own_kv = self.attn(self.attn_norm(x), cos, sin, mask, past_kv)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), own_kv


def group_patches(x: torch.Tensor, config: GeneratorConfig) -> torch.Tensor:
    """(..., h*w, D) per-token states in row-major order -> (..., positions, p*p*D), one row per p x p patch."""
    p = config.token_patch
    return rearrange(x, "... (r p1 c p2) d -> ... (r c) (p1 p2 d)", p1=p, p2=p, c=config.position_columns)


def split_patches(x: torch.Tensor, config: GeneratorConfig) -> torch.Tensor:
    """The inverse of group_patches: (..., positions, p*p*D) -> (..., h*w, D)."""
    p = config.token_patch
    return rearrange(x, "... (r c) (p1 p2 d) -> ... (r p1 c p2) d", p1=p, p2=p, c=config.position_columns)


class ChunkEmbedding(nn.Module):
    """Lays out [text block | video positions] per chunk and embeds them.

    Positions are learned inside a chunk only; time is rotary, so there is no length cap. (A module
    of its own so ZeRO-3 gathers the position tables through the usual forward hooks.) With a token
    patch, each token is embedded as usual and a linear map merges a patch's tokens into one position.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.by_digits = config.code_levels is not None
        if not self.by_digits:
            self.video = nn.Embedding(config.codebook_size + 1, config.dim)  # + mask token
        else:  # a code is the sum of its digits' embeddings; the mask token has a row of its own
            self.video = nn.Embedding(sum(config.code_levels) + 1, config.dim)
            rows = digit_rows(config.code_levels)
            mask_rows = torch.full((1, rows.shape[1]), int(rows.max()) + 1)
            self.register_buffer("video_rows", torch.cat([rows, mask_rows]), persistent=False)
        self.text = nn.Embedding(config.text_vocab_size, config.dim)
        self.video_position = nn.Parameter(torch.randn(config.chunk_tokens, config.dim) * 0.02)
        self.text_position = nn.Parameter(torch.randn(config.text_length, config.dim) * 0.02)
        if config.token_patch > 1:
            self.merge_patch = nn.Linear(config.token_patch ** 2 * config.dim, config.dim, bias=False)

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,t,N) tokens + (B,t,L) text -> embeddings (B, t*S, D) and key validity (B, t*S), S = L + positions."""
        text_part = self.text(text) + self.text_position
        if self.by_digits:
            video_part = self.video(self.video_rows[tokens]).sum(dim=-2) + self.video_position
        else:
            video_part = self.video(tokens) + self.video_position
        if self.config.token_patch > 1:
            video_part = self.merge_patch(group_patches(video_part, self.config))
        x = torch.cat([text_part, video_part], dim=2).flatten(1, 2)
        video_valid = text.new_ones(*video_part.shape[:3], dtype=torch.bool)
        key_valid = torch.cat([text != self.config.text_pad_id, video_valid], dim=2)
        return x, key_valid.flatten(1, 2)


def widen_digit_head(head_weight: torch.Tensor, components: int, seed: int = 0,
                     noise: float = 0.2) -> torch.Tensor:
    """The weight of a `components`-way digit mixture head that starts from a one-product digit head's
    weight (sum(levels), D): every component a copy of it, nudged by Gaussian noise of `noise` times its
    standard deviation (identical components would get identical gradients and never part), and equal
    component weights. The same seed gives the same weight on every rank."""
    if components < 2:
        raise ValueError(f"widening a digit head needs components >= 2, got {components}")
    generator = torch.Generator().manual_seed(seed)
    copies = head_weight.detach().float().cpu().repeat(components, 1)
    copies += torch.randn(copies.shape, generator=generator) * noise * float(head_weight.float().std())
    weights = torch.zeros(components, head_weight.shape[1])  # zero logits: the components start equally likely
    return torch.cat([copies, weights]).to(head_weight.dtype)


def digit_rows(levels: list[int]) -> torch.Tensor:
    """(prod(levels), len(levels)) long: for every code, the row of each of its digits in a table that
    stacks the digits of level 0, then level 1, ... (sum(levels) rows)."""
    codes = torch.arange(math.prod(levels))
    rows, basis, offset = [], 1, 0
    for size in levels:
        rows.append(offset + (codes // basis) % size)
        basis, offset = basis * size, offset + size
    return torch.stack(rows, dim=1)


class KVCache:
    """Per-layer keys/values of the last few decided chunks (absolute-position rotary already applied)."""

    def __init__(self, depth: int, keep_chunks: int):
        self.keep_chunks = keep_chunks
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * depth
        self.key_valid: torch.Tensor | None = None  # (batch, cached tokens) bool; False at text pads
        self.tokens_per_chunk = 0

    def past(self, layer: int):
        return self.layers[layer]

    def repeat_streams(self, num_streams: int, count: int) -> "KVCache":
        """A copy whose every stream's rows are repeated `count` times (see `repeat_streams`), so that
        `count` candidates of the next chunk can be sampled as one batch against the same past."""
        wide = KVCache(len(self.layers), self.keep_chunks)
        wide.tokens_per_chunk = self.tokens_per_chunk
        wide.layers = [None if kv is None else tuple(repeat_streams(t, num_streams, count) for t in kv)
                       for kv in self.layers]
        wide.key_valid = None if self.key_valid is None else repeat_streams(self.key_valid, num_streams, count)
        return wide

    def append(self, own_kvs: list[tuple[torch.Tensor, torch.Tensor]], key_valid: torch.Tensor) -> None:
        """Add one chunk's keys/values and drop chunks that fell out of the sliding window."""
        if self.keep_chunks == 0:
            return
        self.tokens_per_chunk = key_valid.shape[1]
        keep = self.keep_chunks * self.tokens_per_chunk
        for layer, (k, v) in enumerate(own_kvs):
            if self.layers[layer] is not None:
                k = torch.cat([self.layers[layer][0], k], dim=2)
                v = torch.cat([self.layers[layer][1], v], dim=2)
            self.layers[layer] = (k[:, :, -keep:], v[:, :, -keep:])
        if self.key_valid is not None:
            key_valid = torch.cat([self.key_valid, key_valid], dim=1)
        self.key_valid = key_valid[:, -keep:]


def repeat_streams(rows: torch.Tensor, num_streams: int, count: int) -> torch.Tensor:
    """(S*B, ...) rows laid out stream by stream -> (S*count*B, ...): each stream's B rows repeated count
    times, so stream s, candidate c, batch row b sits at row (s*count + c)*B + b."""
    return torch.cat([part.repeat(count, *[1] * (rows.dim() - 1)) for part in rows.chunk(num_streams)])


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------

class Generator(nn.Module):
    """Text-conditioned, block-causal masked-token transformer over video-token chunks."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.embed = ChunkEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        if config.token_patch > 1:  # a position's state -> its patch's token states, then the per-token head
            self.split_patch = nn.Linear(config.dim, config.token_patch ** 2 * config.dim, bias=False)
        self.out_norm = nn.RMSNorm(config.dim)
        # A digit head gives per-digit logits: log p(code) = sum of the digits' log-probs. A mixture has one such
        # set per component, then the components' weight logits: [component 0 digits | ... | weights].
        head_width = config.codebook_size if not config.digit_head else (
            config.digit_mixture * sum(config.code_levels) + (config.digit_mixture if config.digit_mixture > 1 else 0))
        self.head = nn.Linear(config.dim, head_width, bias=False)
        if config.digit_head:
            self.register_buffer("code_rows", digit_rows(config.code_levels), persistent=False)
        # How often each code occurs in the training data (training records it; all zero: not recorded).
        # Sampling draws only codes the data has (generate's min_code_count): a digit head gives some mass to
        # digit combinations no video contains, and the decoder has never learnt to draw those.
        self.register_buffer("code_counts", torch.zeros(config.codebook_size, dtype=torch.long))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- sequence assembly -------------------------------------------------------------------

    def null_text(self, batch_size: int, num_chunks: int, device: torch.device | str | None = None) -> torch.LongTensor:
        """The unconditional text (an empty prompt: bos, eos, pads) for every chunk: (B, n, L)."""
        config = self.config
        device = self.head.weight.device if device is None else device
        null = torch.full((config.text_length,), config.text_pad_id, dtype=torch.long, device=device)
        null[0], null[1] = config.text_bos_id, config.text_eos_id
        return null.expand(batch_size, num_chunks, -1).clone()

    def _rotary(self, chunk_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for a sequence laid out chunk by chunk as [text block | video tokens], given
        each token's chunk index. Text sits at row 0, column 0 (only its time rotates)."""
        config = self.config
        head_dim = config.dim // config.heads
        if not config.spatial_rotary:
            return rotary_cos_sin(chunk_index, head_dim, config.rope_base)
        per_chunk = config.sequence_per_chunk
        slot = torch.arange(chunk_index.shape[0], device=chunk_index.device) % per_chunk - config.text_length
        video_slot = slot.clamp(min=0)
        is_video = slot >= 0
        rows = torch.where(is_video, video_slot // config.position_columns, 0)
        cols = torch.where(is_video, video_slot % config.position_columns, 0)
        return rotary_cos_sin(chunk_index, head_dim, config.rope_base, rows, cols)

    def _video_hidden(self, tokens: torch.Tensor, text: torch.Tensor, window_chunks: int) -> torch.Tensor:
        """Full recompute with the block-causal windowed mask: (B,t,N) + (B,t,L) -> normed (B,t,N,D)."""
        chunks = tokens.shape[1]
        per_chunk = self.config.sequence_per_chunk
        x, key_valid = self.embed(tokens, text)
        chunk_index = torch.arange(chunks, device=x.device).repeat_interleave(per_chunk)
        offset = chunk_index[:, None] - chunk_index[None, :]
        allowed = (offset >= 0) & (offset < window_chunks)
        return self._attend(x, key_valid, chunk_index, allowed, chunks)

    def _attend(self, x: torch.Tensor, key_valid: torch.Tensor, chunk_index: torch.Tensor, allowed: torch.Tensor,
                output_chunks: int) -> torch.Tensor:
        """The blocks over a whole sequence (B, positions, D) with an (positions, positions) attention pattern;
        returns the normed video token states of its last output_chunks chunks, (B, output_chunks, N, D)."""
        mask = (allowed[None] & key_valid[:, None, :])[:, None]  # (B, 1, queries, keys)
        cos, sin = self._rotary(chunk_index)
        for block in self.blocks:
            x, _ = block(x, cos, sin, mask)
        per_chunk = self.config.sequence_per_chunk
        x = x[:, x.shape[1] - output_chunks * per_chunk:].unflatten(1, (output_chunks, per_chunk))
        return self._token_states(x[:, :, self.config.text_length:])

    def _token_states(self, video_positions: torch.Tensor) -> torch.Tensor:
        """Final video position states (..., positions, D) -> normed per-token states (..., N, D)."""
        if self.config.token_patch > 1:
            video_positions = split_patches(self.split_patch(video_positions), self.config)
        return self.out_norm(video_positions)

    def _clean_context_hidden(self, clean: torch.Tensor, masked: torch.Tensor, text: torch.Tensor,
                              window_chunks: int) -> torch.Tensor:
        """Training pass where chunk c's masked tokens see the *clean* chunks c-W+1..c-1 plus their own chunk,
        exactly what sampling sees through the KV cache: (B,t,N) clean + (B,t,N) masked -> (B,t,N,D).

        The sequence is [clean chunks 0..t-2 | masked chunks 0..t-1] (the last clean chunk is nobody's context).
        """
        chunks = masked.shape[1]
        per_chunk = self.config.sequence_per_chunk
        clean_x, clean_valid = self.embed(clean[:, :-1], text[:, :-1])
        masked_x, masked_valid = self.embed(masked, text)
        x = torch.cat([clean_x, masked_x], dim=1)
        key_valid = torch.cat([clean_valid, masked_valid], dim=1)
        chunk_index = torch.cat([torch.arange(chunks - 1, device=x.device),
                                 torch.arange(chunks, device=x.device)]).repeat_interleave(per_chunk)
        is_target = torch.arange(2 * chunks - 1, device=x.device).repeat_interleave(per_chunk) >= chunks - 1
        offset = chunk_index[:, None] - chunk_index[None, :]
        clean_to_clean = ~is_target[:, None] & ~is_target[None, :] & (offset >= 0) & (offset < window_chunks)
        target_to_clean = is_target[:, None] & ~is_target[None, :] & (offset >= 1) & (offset < window_chunks)
        target_to_itself = is_target[:, None] & is_target[None, :] & (offset == 0)
        allowed = clean_to_clean | target_to_clean | target_to_itself
        return self._attend(x, key_valid, chunk_index, allowed, chunks)

    def _chunk_hidden(self, tokens: torch.Tensor, text: torch.Tensor, chunk_index: int, cache: KVCache):
        """One chunk through the cache path: (B,N) + (B,L) -> normed video hidden (B,N,D), own k/v, key validity."""
        x, key_valid = self.embed(tokens[:, None], text[:, None])
        keys_valid = key_valid if cache.key_valid is None else torch.cat([cache.key_valid, key_valid], dim=1)
        mask = keys_valid[:, None, None, :]  # every query of the chunk sees the same keys
        positions = torch.full((x.shape[1],), chunk_index, device=x.device)
        cos, sin = self._rotary(positions)
        own_kvs = []
        for layer, block in enumerate(self.blocks):
            x, own_kv = block(x, cos, sin, mask, cache.past(layer))
            own_kvs.append(own_kv)
        return self._token_states(x[:, self.config.text_length:]), own_kvs, key_valid

    def _digit_log_probs(self, hidden: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-digit log-probabilities [(..., K, levels[i])] of each of the K mixture components of hidden
        states (..., D), and the components' log-weights (..., K)."""
        components, levels = self.config.digit_mixture, self.config.code_levels
        out = self.head(hidden).float()
        digits = out[..., :components * sum(levels)].unflatten(-1, (components, sum(levels)))
        log_weights = out[..., components * sum(levels):].log_softmax(dim=-1) if components > 1 \
            else out.new_zeros(*out.shape[:-1], 1)
        return [part.log_softmax(dim=-1) for part in digits.split(levels, dim=-1)], log_weights

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the codebook (..., codebook_size) in fp32 (for a digit head, normalised log-probs)."""
        if not self.config.digit_head:
            return self.head(hidden).float()
        digit_log_probs, log_weights = self._digit_log_probs(hidden)
        if self.config.digit_mixture == 1:
            digit_log_probs = torch.cat(digit_log_probs, dim=-1)[..., 0, :]
            return sum(digit_log_probs[..., self.code_rows[:, i]] for i in range(len(self.config.code_levels)))
        # A mixture sums probabilities, so build each component's code table as an outer product of its digits'
        # probabilities (most significant digit first: the flattened index is then the code), ~15x faster than
        # one log-space table per component. Codes below 1e-30 are floored there so that CFG stays finite.
        digit_probs = [log_probs.exp() for log_probs in digit_log_probs]
        table = log_weights.exp()[..., None]  # (..., K, 1)
        for probs in reversed(digit_probs[1:]):
            table = (table[..., :, None] * probs[..., None, :]).flatten(-2)
        codes = torch.einsum("...ka,...kb->...ab", table, digit_probs[0]).flatten(-2)
        return codes.clamp_min(1e-30).log()

    def _cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy (n,) of (n, D) hidden states against (n,) codes, and the predicted codes (for a
        digit mixture, the mode of the component whose mode is likeliest)."""
        if not self.config.digit_head:
            logits = self._logits(hidden)
            return F.cross_entropy(logits, targets, reduction="none"), logits.argmax(dim=-1)
        digit_log_probs, log_weights = self._digit_log_probs(hidden)
        target_log_probs, mode_log_probs = log_weights, log_weights.detach()
        modes, basis = [], 1
        for size, log_probs in zip(self.config.code_levels, digit_log_probs):
            digit = ((targets // basis) % size)[:, None, None].expand(-1, log_probs.shape[1], 1)
            target_log_probs = target_log_probs + log_probs.gather(-1, digit)[..., 0]
            best = log_probs.detach().max(dim=-1)
            mode_log_probs = mode_log_probs + best.values
            modes.append(best.indices * basis)
            basis *= size
        loss = -torch.logsumexp(target_log_probs, dim=-1)
        predicted = sum(modes).gather(-1, mode_log_probs.argmax(dim=-1, keepdim=True))[:, 0]
        return loss, predicted

    # ---- public passes -----------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits (B,t,h,w,codebook_size) for tokens (B,t,h,w) (mask id allowed) and text (B,t,L)."""
        self._check_tokens(tokens, "tokens", allow_mask=True)
        self._check_text(text, "text", tokens.shape[:2])
        batch, chunks, height, width = tokens.shape
        hidden = self._video_hidden(tokens.flatten(2), text, self.config.window_chunks)
        return self._logits(hidden).view(batch, chunks, height, width, -1)

    @torch.no_grad()
    def logits_with_cache(self, tokens: torch.Tensor, text: torch.Tensor,
                          window_chunks: int | None = None) -> torch.Tensor:
        """Same logits as `forward`, computed chunk by chunk through the KV cache (the sampling path)."""
        self._check_tokens(tokens, "tokens", allow_mask=True)
        self._check_text(text, "text", tokens.shape[:2])
        window_chunks = self._check_window(window_chunks)
        batch, chunks, height, width = tokens.shape
        cache = KVCache(self.config.depth, window_chunks - 1)
        logits = []
        for chunk in range(chunks):
            hidden, own_kvs, key_valid = self._chunk_hidden(tokens[:, chunk].flatten(1), text[:, chunk], chunk, cache)
            cache.append(own_kvs, key_valid)
            logits.append(self._logits(hidden).view(batch, height, width, -1))
        return torch.stack(logits, dim=1)

    def training_loss(self, codes: torch.Tensor, text: torch.Tensor, chunk_valid: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-token cross-entropy with an independent MaskGIT cosine mask ratio per chunk.

        codes (B,t,h,w), text (B,t,L), chunk_valid (B,t) bool (False = trailing padding, no loss).
        All randomness comes from `generator` so a resumed run draws the same masks.
        """
        config = self.config
        self._check_tokens(codes, "codes", allow_mask=False)
        self._check_text(text, "text", codes.shape[:2])
        batch, chunks = codes.shape[:2]
        device = codes.device
        if chunk_valid is None:
            chunk_valid = torch.ones(batch, chunks, dtype=torch.bool, device=device)
        chunk_valid = self._check_chunk_valid(chunk_valid, (batch, chunks)).to(device)
        tokens = codes.flatten(2).long()
        num_tokens = tokens.shape[2]

        mask_ratio = torch.cos(math.pi / 2 * _uniform((batch, chunks), generator, device))
        num_masked = (mask_ratio * num_tokens).ceil().clamp(1, num_tokens)
        if config.clean_context:  # every chunk is a target; its context is the clean copy
            clean = torch.zeros(batch, chunks, dtype=torch.bool, device=device)
        else:
            clean = _uniform((batch, chunks), generator, device) < config.clean_chunk_prob
        order = _uniform((batch, chunks, num_tokens), generator, device).argsort(dim=-1).argsort(dim=-1)
        drop_text = _uniform((batch,), generator, device) < config.text_dropout
        masked = (order < num_masked[..., None]) & (chunk_valid & ~clean)[..., None]

        text = torch.where(drop_text[:, None, None], self.null_text(batch, chunks, device), text)
        # Trailing padding chunks cannot influence earlier chunks (causal), so skip computing them.
        used_chunks = int(chunk_valid.any(dim=0).nonzero().max()) + 1
        inputs = tokens.masked_fill(masked, config.mask_id)[:, :used_chunks]
        if config.clean_context:
            hidden = self._clean_context_hidden(tokens[:, :used_chunks], inputs, text[:, :used_chunks],
                                                config.window_chunks)
        else:
            hidden = self._video_hidden(inputs, text[:, :used_chunks], config.window_chunks)
        selected = masked[:, :used_chunks]
        num_selected = int(selected.sum())
        if num_selected == 0:  # every chunk drawn clean: contribute nothing, but still run the head so that
            # every rank makes the same calls (ZeRO-3 gathers the head's shards collectively)
            loss = self.head(hidden[:, :1]).sum() * 0.0
            accuracy = 0.0
        else:
            targets = tokens[:, :used_chunks][selected]
            token_losses, predicted = self._cross_entropy(hidden[selected], targets)
            loss = token_losses.mean()
            accuracy = float((predicted == targets).float().mean())
        valid_tokens = int(chunk_valid.sum()) * num_tokens
        logs = {"loss": float(loss.detach()), "masked_accuracy": accuracy,
                "mask_ratio": num_selected / valid_tokens, "tokens": float(num_selected)}
        return loss, logs

    # ---- sampling ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, text: torch.Tensor, num_chunks: int | None = None, steps: int = 8, cfg_scale: float = 3.0,
                 temperature: float = 1.0, top_k: int | None = None, negative_text: torch.Tensor | None = None,
                 prime_codes: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 order: str = "confidence", window_chunks: int | None = None, choice_temperature: float = CHOICE_TEMPERATURE,
                 progress: Callable[[int, int], None] | None = None, use_cache: bool = True,
                 first_chunk_candidates: int = 1, later_chunk_candidates: int = 1,
                 min_code_count: int = 1) -> torch.LongTensor:
        """Sample codes (B, num_chunks, h, w), one chunk at a time with MaskGIT, past chunks from a KV cache.

        text: (B, n, L) per-chunk prompt ids (or (B, L) for one prompt throughout). prime_codes (B,p,h,w)
        are returned unchanged at the front. cfg_scale: logits = uncond + cfg_scale*(cond - uncond); the
        uncond stream uses `negative_text` (same shapes as text) or the null text. temperature is the
        sampling temperature at the first step, annealed linearly to temperature/steps at the last
        (0 = greedy). order: which sampled tokens to keep each step, "confidence" (MaskGIT, with
        choice_temperature-scaled annealed Gumbel noise) or "random". progress(done, total) is called
        after each chunk. use_cache=False re-runs every past chunk at every step (as Phenaki does): same
        samples, quadratic time; it exists to measure what the cache saves.

        Candidates (sampled as one batch, so K of them cost less than K times one): first_chunk_candidates=K
        samples the video's first chunk (drawn from the prompt alone, so the likeliest to come out malformed;
        a primed video has none) K times and keeps the candidate whose `first_chunk_log_likelihood` gains
        most from the prompt over the empty prompt (pointwise mutual information: the likelihood alone
        prefers the data's commonest starts, such as an object already at the wall it is asked to move
        toward). later_chunk_candidates=K samples every later chunk K times and keeps the one with the
        highest log-likelihood given the prompt and the past, minus LATER_CANDIDATE_UNCOND_WEIGHT times
        that given the uncond stream's text and the same past (both scored like the first chunk's), which
        holds a story's object to its prompt as the video grows; it needs both guidance streams (cfg_scale
        not 0 or 1). K=1 samples exactly as without them.
        min_code_count: draw only codes that occur at least this often in the training data (`code_counts`,
        recorded by training); 0, or a generator without counts, draws from every code.
        """
        config = self.config
        text, num_chunks = self._check_generate_text(text, num_chunks, "text")
        batch = text.shape[0]
        device = self.head.weight.device
        text = text.to(device).long()
        if negative_text is not None:
            negative_text, _ = self._check_generate_text(negative_text, num_chunks, "negative_text", batch)
            negative_text = negative_text.to(device).long()
        check_sampler_args(steps, cfg_scale, temperature, top_k, order, first_chunk_candidates, later_chunk_candidates,
                           min_code_count, choice_temperature)
        excluded = self._excluded_codes(min_code_count)
        window_chunks = self._check_window(window_chunks)
        num_prime = 0
        if prime_codes is not None:
            self._check_tokens(prime_codes, "prime_codes", allow_mask=False)
            num_prime = prime_codes.shape[1]
            if prime_codes.shape[0] != batch or num_prime > num_chunks:
                raise ValueError(f"prime_codes {tuple(prime_codes.shape)} must have batch {batch} and at most "
                                 f"num_chunks={num_chunks} chunks")
            prime_codes = prime_codes.to(device).long()

        # Streams run batched: conditional first, then unconditional. Scale 0 or 1 needs only one.
        uncond_text = negative_text if negative_text is not None else self.null_text(batch, num_chunks, device)
        streams = [text] if cfg_scale == 1 else [uncond_text] if cfg_scale == 0 else [text, uncond_text]
        stream_text = torch.cat(streams, dim=0)
        num_streams = len(streams)
        cache = KVCache(config.depth, window_chunks - 1) if use_cache else None
        sample = functools.partial(self._sample_chunk, steps=steps, cfg_scale=cfg_scale, temperature=temperature,
                                   top_k=top_k, order=order, choice_temperature=choice_temperature,
                                   generator=generator, window_chunks=window_chunks, excluded=excluded)

        chunks = []
        for chunk in range(num_chunks):
            if chunk < num_prime:
                decided = prime_codes[:, chunk].flatten(1)
            else:
                history = None if use_cache or not chunks else torch.stack(chunks, dim=1)
                count = first_chunk_candidates if chunk == 0 else later_chunk_candidates
                if count == 1:
                    decided = sample(chunk, stream_text, cache, num_streams, batch, history)
                else:
                    decided = self._best_candidate(sample, count, chunk, text, stream_text, cache, num_streams,
                                                   batch, history, window_chunks)
            chunks.append(decided)
            if use_cache and chunk + 1 < num_chunks and window_chunks > 1:
                # One pass over the decided tokens gives the keys/values later chunks will attend to.
                _, own_kvs, key_valid = self._chunk_hidden(decided.repeat(num_streams, 1), stream_text[:, chunk],
                                                           chunk, cache)
                cache.append(own_kvs, key_valid)
            if progress is not None and chunk >= num_prime:
                progress(chunk + 1, num_chunks)
        return torch.stack(chunks, dim=1).view(batch, num_chunks, config.chunk_height, config.chunk_width)

    def first_chunk_log_likelihood(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Mean log-probability (B,) of a video's first chunk, tokens (B, h*w), under text (B, L): every token
        predicted with the other half of the chunk visible (a checkerboard and its complement), the way
        MaskGIT training asks for masked tokens. No randomness, so reranking by it keeps seeds reproducible."""
        empty = KVCache(self.config.depth, 0)
        total = self._chunk_log_likelihood(tokens, 1, lambda inputs: self._chunk_hidden(inputs, text, 0, empty)[0])
        return total / tokens.shape[1]

    def _chunk_log_likelihood(self, tokens: torch.Tensor, num_streams: int,
                              hidden_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Summed log-probability (S*B,) of chunk tokens (B, N) in each of S streams, every token predicted with
        the other half of a checkerboard visible; hidden_of maps masked tokens (S*B, N) to hidden states."""
        config = self.config
        rows = torch.arange(config.chunk_height, device=tokens.device)[:, None]
        cols = torch.arange(config.chunk_width, device=tokens.device)[None, :]
        black = ((rows + cols) % 2 == 0).flatten()
        targets = tokens.repeat(num_streams, 1)
        total = torch.zeros(targets.shape[0], device=tokens.device)
        for hidden_half in (black, ~black):
            log_probs = self._logits(hidden_of(targets.masked_fill(hidden_half, config.mask_id)))
            log_probs = log_probs.log_softmax(dim=-1).gather(-1, targets[..., None])[..., 0]
            total = total + (log_probs * hidden_half).sum(dim=-1)
        return total

    def _best_candidate(self, sample, count: int, chunk_index: int, text, stream_text, cache, num_streams: int,
                        batch: int, history, window_chunks: int) -> torch.Tensor:
        """Sample `count` candidates of one chunk as one batch (every stream's rows repeated, see
        `repeat_streams`) and keep, per batch row (B, h*w), the one generate's docstring says."""
        wide_text = repeat_streams(stream_text, num_streams, count)
        wide_cache = None if cache is None else cache.repeat_streams(num_streams, count)
        wide_history = None if history is None else history.repeat(count, 1, 1)
        candidates = sample(chunk_index, wide_text, wide_cache, num_streams, count * batch, wide_history)
        if chunk_index == 0:
            prompt = text[:, 0].repeat(count, 1)
            prompts = torch.cat([prompt, self.null_text(prompt.shape[0], 1, prompt.device)[:, 0]])
            with_prompt, without = self.first_chunk_log_likelihood(candidates.repeat(2, 1), prompts).chunk(2)
            scores = with_prompt - without
        else:
            def hidden_of(inputs):
                return self._current_chunk_hidden(inputs, chunk_index, wide_text, wide_cache, wide_history,
                                                  window_chunks)
            cond, uncond = self._chunk_log_likelihood(candidates, num_streams, hidden_of).chunk(2)
            scores = cond - LATER_CANDIDATE_UNCOND_WEIGHT * uncond
        best = scores.view(count, batch).argmax(dim=0)
        return candidates.view(count, batch, -1)[best, torch.arange(batch, device=best.device)]

    def _excluded_codes(self, min_code_count: int) -> torch.Tensor | None:
        """The codes (bool (codebook_size,)) sampling must not draw, or None for none."""
        if min_code_count == 0 or not bool(self.code_counts.any()):
            return None
        excluded = self.code_counts < min_code_count
        if bool(excluded.all()):
            raise ValueError(f"min_code_count={min_code_count} excludes every code (the commonest occurs "
                             f"{int(self.code_counts.max())} times in the training data); lower it")
        return excluded

    def _current_chunk_hidden(self, current: torch.Tensor, chunk_index: int, stream_text: torch.Tensor,
                              cache: KVCache | None, history: torch.Tensor | None, window_chunks: int) -> torch.Tensor:
        """Hidden states (S*B, N, D) of the chunk being sampled, current (S*B, N) with mask ids, after its past:
        from the cache, or (cache None) by recomputing the decided `history` (B, chunk_index, N)."""
        if cache is not None:
            return self._chunk_hidden(current, stream_text[:, chunk_index], chunk_index, cache)[0]
        sequence = current[:, None] if history is None else torch.cat(
            [history.repeat(current.shape[0] // history.shape[0], 1, 1), current[:, None]], dim=1)
        return self._video_hidden(sequence, stream_text[:, :chunk_index + 1], window_chunks)[:, -1]

    def _sample_chunk(self, chunk_index, stream_text, cache, num_streams, batch, history=None, *, steps, cfg_scale,
                      temperature, top_k, order, choice_temperature, generator, window_chunks,
                      excluded=None) -> torch.Tensor:
        """MaskGIT over one chunk: start fully masked, commit a cosine-scheduled share of tokens each step.

        With a cache, past chunks come from it; without one (`cache=None`) the whole prefix (`history`,
        (B, chunk_index, N) decided tokens) is recomputed at every step. `excluded` codes are never drawn."""
        num_tokens = self.config.chunk_tokens
        tokens = torch.full((batch, num_tokens), self.config.mask_id, dtype=torch.long, device=stream_text.device)
        for step in range(steps):
            hidden = self._current_chunk_hidden(tokens.repeat(num_streams, 1), chunk_index, stream_text, cache,
                                                history, window_chunks)
            logits = self._logits(hidden)
            if num_streams == 2:
                cond, uncond = logits.chunk(2, dim=0)
                logits = uncond + cfg_scale * (cond - uncond)
            if excluded is not None:  # after guidance: -inf in both streams would make it NaN
                logits = logits.masked_fill(excluded, float("-inf"))
            tokens = maskgit_step(tokens, logits, self.config.mask_id, step, steps, temperature, top_k, order,
                                  choice_temperature, generator)
        return tokens

    # ---- persistence -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu") -> "Generator":
        """Load a directory written by `save_pretrained`."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not config_path.is_file() or not weights_path.is_file():
            raise ValueError(f"{directory} is not a generator directory: expected config.json + model.safetensors "
                             "written by Generator.save_pretrained (or a training run's export/)")
        try:
            raw = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{config_path} is not valid JSON ({error})") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{config_path} must hold a JSON object of GeneratorConfig fields")
        model_type = raw.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"{config_path} describes a {model_type!r}, not a generator; pass a generator directory")
        known = {field.name for field in dataclasses.fields(GeneratorConfig)}
        raw = {**LATER_FIELDS, **raw}  # a field the file lacks takes its old-behaviour value
        unknown, missing = sorted(set(raw) - known), sorted(known - set(raw))
        if unknown or missing:
            raise ValueError(f"{config_path} does not match this code's GeneratorConfig (unknown keys {unknown}, "
                             f"missing keys {missing}); it comes from another tokvid version, re-export it")
        model = cls(GeneratorConfig(**raw))
        state = load_file(str(weights_path))
        state.setdefault("code_counts", model.code_counts)  # saved before counts were recorded: none known
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{weights_path} does not fit config.json ({error})") from error
        return model.to(device)

    # ---- input checks ------------------------------------------------------------------------

    def _check_tokens(self, tokens, name: str, allow_mask: bool) -> None:
        config = self.config
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.long, torch.int32, torch.int16):
            raise ValueError(f"{name} must be an integer tensor (B, t, h, w); convert with .long()")
        expected = (config.chunk_height, config.chunk_width)
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != expected or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"{name} must have shape (B, t, {expected[0]}, {expected[1]}) with B, t >= 1, "
                             f"got {tuple(tokens.shape)}")
        upper = config.codebook_size + (1 if allow_mask else 0)
        if int(tokens.min()) < 0 or int(tokens.max()) >= upper:
            raise ValueError(f"{name} values must be in [0, {upper}) (codebook_size={config.codebook_size}"
                             f"{', plus the mask id' if allow_mask else ''}); got [{int(tokens.min())}, "
                             f"{int(tokens.max())}]: was the video tokenizer the one this generator was trained on?")

    def _check_text(self, text, name: str, batch_chunks) -> None:
        config = self.config
        if not isinstance(text, torch.Tensor) or text.dtype not in (torch.long, torch.int32, torch.int16):
            raise ValueError(f"{name} must be an integer tensor of text ids (B, t, L); build it with TextTokenizer.batch")
        expected = (*tuple(batch_chunks), config.text_length)
        if tuple(text.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} (one prompt of text_length={config.text_length} "
                             f"ids per chunk), got {tuple(text.shape)}")
        if text.numel() and (int(text.min()) < 0 or int(text.max()) >= config.text_vocab_size):
            raise ValueError(f"{name} ids must be in [0, {config.text_vocab_size}); was the text tokenizer the "
                             "one this generator was trained with?")

    def _check_generate_text(self, text, num_chunks, name: str, batch: int | None = None):
        if isinstance(text, torch.Tensor) and text.dim() == 2:
            if num_chunks is None:
                raise ValueError(f"{name} of shape (B, L) needs num_chunks; or pass (B, n, L) per-chunk prompts")
            text = text[:, None].expand(-1, num_chunks, -1)
        if not isinstance(text, torch.Tensor) or text.dim() != 3:
            raise ValueError(f"{name} must be a tensor (B, n, L) of per-chunk prompt ids (or (B, L))")
        num_chunks = text.shape[1] if num_chunks is None else num_chunks
        if not isinstance(num_chunks, int) or isinstance(num_chunks, bool) or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive int, got {num_chunks!r}")
        self._check_text(text, name, (text.shape[0] if batch is None else batch, num_chunks))
        if text.shape[0] == 0:
            raise ValueError(f"{name} has batch size 0")
        return text, num_chunks

    def _check_window(self, window_chunks) -> int:
        window_chunks = self.config.window_chunks if window_chunks is None else window_chunks
        if not isinstance(window_chunks, int) or isinstance(window_chunks, bool) or window_chunks < 1:
            raise ValueError(f"window_chunks must be an int >= 1, got {window_chunks!r}")
        return window_chunks

    @staticmethod
    def _check_chunk_valid(chunk_valid, shape) -> torch.Tensor:
        if not isinstance(chunk_valid, torch.Tensor) or tuple(chunk_valid.shape) != tuple(shape):
            raise ValueError(f"chunk_valid must be a bool tensor of shape {tuple(shape)} (B, t)")
        chunk_valid = chunk_valid.bool()
        if bool((chunk_valid[:, 1:] & ~chunk_valid[:, :-1]).any()):
            raise ValueError("chunk_valid must mark padding only at the end of each sample (True... then False...)")
        if not bool(chunk_valid.any()):
            raise ValueError("chunk_valid marks every chunk as padding; the batch has nothing to learn from")
        return chunk_valid


# ---------------------------------------------------------------------------------------------
# Sampling helpers
# ---------------------------------------------------------------------------------------------

def _uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U(0,1) drawn on the generator's own device (so a CPU generator drives a GPU model identically)."""
    source_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source_device).to(device)


def _gumbel(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    uniform = _uniform(shape, generator, device).clamp_(1e-20, 1.0)
    return -torch.log((-torch.log(uniform)).clamp_(min=1e-20))


def check_sampler_args(steps: int, cfg_scale: float, temperature: float, top_k: int | None, order: str,
                       first_chunk_candidates: int, later_chunk_candidates: int, min_code_count: int,
                       choice_temperature: float = CHOICE_TEMPERATURE) -> None:
    """The sampling options' rules, one place for `generate` and the pipeline's saved defaults."""
    for name, value, lowest in (("steps", steps, 1), ("first_chunk_candidates", first_chunk_candidates, 1),
                                ("later_chunk_candidates", later_chunk_candidates, 1),
                                ("min_code_count", min_code_count, 0)):  # min_code_count 0: every code
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ValueError(f"{name} must be an int >= {lowest}, got {value!r}")
    if not isinstance(cfg_scale, (int, float)) or not cfg_scale >= 0:
        raise ValueError(f"cfg_scale must be >= 0 (0 = unconditional, 1 = conditional only), got {cfg_scale!r}")
    if later_chunk_candidates > 1 and cfg_scale in (0, 1):  # candidates are scored with both guidance streams
        raise ValueError(f"later_chunk_candidates={later_chunk_candidates} scores candidates with both guidance "
                         f"streams, but cfg_scale={cfg_scale!r} runs one; use a cfg_scale other than 0 and 1 or "
                         "later_chunk_candidates=1")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if order not in SAMPLING_ORDERS:
        raise ValueError(f"order must be one of {SAMPLING_ORDERS}, got {order!r}")
    if not isinstance(choice_temperature, (int, float)) or not choice_temperature >= 0:
        raise ValueError(f"choice_temperature must be >= 0, got {choice_temperature!r}")


def maskgit_step(tokens: torch.Tensor, logits: torch.Tensor, mask_id: int, step: int, steps: int,
                 temperature: float, top_k: int | None, order: str, choice_temperature: float,
                 generator: torch.Generator | None) -> torch.Tensor:
    """One MaskGIT step on (B,N) tokens with (B,N,V) logits: sample every masked position, then re-mask
    the cosine-scheduled number of them (all rows hold the same number of masked tokens)."""
    unknown = tokens == mask_id
    num_unknown = int(unknown[0].sum())
    if num_unknown == 0:
        return tokens
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    step_temperature = temperature * (steps - step) / steps
    if step_temperature > 0:
        sampled = (logits / step_temperature + _gumbel(logits.shape, generator, logits.device)).argmax(dim=-1)
    else:
        sampled = logits.argmax(dim=-1)
    sampled = torch.where(unknown, sampled, tokens)

    progress = (step + 1) / steps
    num_remask = int(math.floor(tokens.shape[1] * math.cos(math.pi / 2 * progress)))
    num_remask = 0 if step == steps - 1 else max(1, min(num_unknown - 1, num_remask))
    if num_remask == 0:
        return sampled
    if order == "confidence":
        confidence = logits.log_softmax(dim=-1).gather(-1, sampled[..., None])[..., 0]
        score = confidence + choice_temperature * (1 - progress) * _gumbel(confidence.shape, generator, logits.device)
    else:
        score = _uniform(sampled.shape, generator, logits.device)
    score = score.masked_fill(~unknown, float("inf"))  # committed tokens are never re-masked
    remask = score.topk(num_remask, dim=-1, largest=False).indices
    return sampled.scatter(1, remask, mask_id)
