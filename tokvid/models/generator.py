"""The generator: a text-conditioned, block-causal masked-token transformer over video-token chunks.

A chunk is one latent frame of the video tokenizer (h*w tokens). The sequence is, per chunk, a text
block of L prompt ids (the prompt governing that chunk, so prompts can change mid-video) followed by
the chunk's h*w video tokens:

    [text_0 | video_0] [text_1 | video_1] ... [text_{t-1} | video_{t-1}]

Attention is bidirectional inside a chunk and causal across chunks, limited to a sliding window of
`window_chunks` chunks (the current one included). Time enters only through a rotary embedding of
the chunk index (row and column inside a chunk rotate too), so attention depends on offsets, never on
absolute time, and sampling can run far past the training length. `KVCache` serves decided chunks'
keys and values so that a chunk costs the same at any time; the sampling loop that uses it is
tokvid/sampling.py.

With `token_patch` p > 1, a transformer position holds a p x p patch of video tokens: the tokens are
embedded one by one and merged, and the final state of a position is split back into its tokens'
states before the head, so masking, loss and sampling stay per token while attention and MLPs run
over p*p times fewer video positions. With `digit_head`, an FSQ code's digits are predicted
independently (log p(code) = the sum of its digits' log-probabilities): a far smaller head.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from tokvid.models.text_tokenizer import BOS_ID, EOS_ID, PAD_ID
from tokvid.persistence import ArtefactFormat, load_config, load_weights, save_model

FORMAT = ArtefactFormat(
    tag="tokvid-generator-v1", what="generator", legacy_tags={"model_type": "tokvid_generator"},
    later_fields={"token_patch": 1},
    # measured and removed (docs/design-notes.md); the values every bundled generator was trained with
    retired_fields={"spatial_rotary": True, "clean_context": True, "clean_chunk_prob": 0.25, "digit_mixture": 1})


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
    text_dropout: float = 0.1    # probability a training sample gets the null text (classifier-free guidance)
    code_levels: list[int] | None = None  # the codes' mixed-radix digits (FSQ levels, first = least significant):
                                 # a code's embedding is the sum of its digits' (shared across codes); None = one
                                 # embedding row per code
    digit_head: bool = False     # with code_levels: predict each digit independently (a smaller head, but the
                                 # product cannot say which digits go together); False = one softmax over codes
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
        if (self.dim // self.heads) % 8:
            raise ValueError(f"rotary over time, row and column needs a head width (dim/heads = {self.dim // self.heads}) divisible by 8")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        if not 0 <= self.text_dropout < 1:
            raise ValueError(f"text_dropout must be in [0, 1), got {self.text_dropout}")

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


GENERATOR_PRESETS = {
    "tiny": dict(dim=128, depth=4, heads=4),
    "small": dict(dim=192, depth=6, heads=6),
    "medium": dict(dim=256, depth=6, heads=8),  # the scenes bundle: two objects need more width
    "base": dict(dim=512, depth=12, heads=8),
}


def generator_config_preset(name: str, **overrides) -> GeneratorConfig:
    """A GeneratorConfig of size `name` (a key of GENERATOR_PRESETS); `overrides` must include
    codebook_size and text_vocab_size."""
    if name not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset {name!r}; choose one of {sorted(GENERATOR_PRESETS)}")
    missing = [key for key in ("codebook_size", "text_vocab_size") if key not in overrides]
    if missing:
        raise ValueError(f"generator_config_preset needs {missing}: the video tokenizer's vocab_size and "
                         "the text tokenizer's vocab_size")
    unknown = set(overrides) - {field.name for field in dataclasses.fields(GeneratorConfig)}
    if unknown:
        raise ValueError(f"unknown GeneratorConfig fields {sorted(unknown)}")
    return GeneratorConfig(**{**GENERATOR_PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def _rotary_angles(positions: torch.Tensor, pairs: int, base: float) -> torch.Tensor:
    inv_freq = base ** (-torch.arange(pairs, device=positions.device, dtype=torch.float32) / pairs)
    return positions.to(torch.float32)[:, None] * inv_freq[None, :]


def rotary_cos_sin(chunk_index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, head_dim: int,
                   base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (n, head_dim) for per-token chunk index, row and column (n,), in fp32 so large
    indices stay exact: half of the rotation pairs go to time, a quarter each to row and column."""
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

    def past(self, layer: int):
        return self.layers[layer]

    def append(self, own_kvs: list[tuple[torch.Tensor, torch.Tensor]], key_valid: torch.Tensor) -> None:
        """Add one chunk's keys/values and drop chunks that fell out of the sliding window."""
        if self.keep_chunks == 0:
            return
        keep = self.keep_chunks * key_valid.shape[1]
        for layer, (k, v) in enumerate(own_kvs):
            if self.layers[layer] is not None:
                k = torch.cat([self.layers[layer][0], k], dim=2)
                v = torch.cat([self.layers[layer][1], v], dim=2)
            self.layers[layer] = (k[:, :, -keep:], v[:, :, -keep:])
        if self.key_valid is not None:
            key_valid = torch.cat([self.key_valid, key_valid], dim=1)
        self.key_valid = key_valid[:, -keep:]


def uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U(0,1) drawn on the generator's own device (so a CPU generator drives a GPU model identically)."""
    source_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source_device).to(device)


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
        self.head = nn.Linear(config.dim, sum(config.code_levels) if config.digit_head else config.codebook_size,
                              bias=False)
        # How often each code occurs in the training data (training records it; all zero: not recorded).
        # Sampling draws only codes the data has (SamplingConfig.min_code_count): a digit head gives some mass
        # to digit combinations no video contains, and the decoder has never learnt to draw those.
        self.register_buffer("code_counts", torch.zeros(config.codebook_size, dtype=torch.long))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def null_text(self, batch_size: int, num_chunks: int, device: torch.device | str | None = None) -> torch.LongTensor:
        """The unconditional text (an empty prompt: bos, eos, pads) for every chunk: (B, n, L)."""
        config = self.config
        device = self.head.weight.device if device is None else device
        null = torch.full((config.text_length,), config.text_pad_id, dtype=torch.long, device=device)
        null[0], null[1] = config.text_bos_id, config.text_eos_id
        return null.expand(batch_size, num_chunks, -1).clone()

    # ---- public passes -----------------------------------------------------------------------

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logits (B,t,h,w,codebook_size) for tokens (B,t,h,w) (mask id allowed) and text (B,t,L)."""
        self.check_tokens(tokens, "tokens", allow_mask=True)
        self.check_text(text, "text", tokens.shape[:2])
        batch, chunks, height, width = tokens.shape
        states = self.video_states(tokens.flatten(2), text, self.config.window_chunks)
        return self.logits(states).view(batch, chunks, height, width, -1)

    @torch.no_grad()
    def logits_with_cache(self, tokens: torch.Tensor, text: torch.Tensor,
                          window_chunks: int | None = None) -> torch.Tensor:
        """Same logits as `forward`, computed chunk by chunk through the KV cache (the sampling path)."""
        self.check_tokens(tokens, "tokens", allow_mask=True)
        self.check_text(text, "text", tokens.shape[:2])
        window_chunks = self.check_window(window_chunks)
        batch, chunks, height, width = tokens.shape
        cache = KVCache(self.config.depth, window_chunks - 1)
        logits = []
        for chunk in range(chunks):
            states, own_kvs, key_valid = self.chunk_states(tokens[:, chunk].flatten(1), text[:, chunk], chunk, cache)
            cache.append(own_kvs, key_valid)
            logits.append(self.logits(states).view(batch, height, width, -1))
        return torch.stack(logits, dim=1)

    def training_loss(self, codes: torch.Tensor, text: torch.Tensor, chunk_valid: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-token cross-entropy with an independent MaskGIT cosine mask ratio per chunk.

        codes (B,t,h,w), text (B,t,L), chunk_valid (B,t) bool (False = trailing padding, no loss). Each
        chunk's masked tokens see the clean earlier chunks, as sampling does. All randomness comes from
        `generator` so a resumed run draws the same masks.
        """
        config = self.config
        self.check_tokens(codes, "codes", allow_mask=False)
        self.check_text(text, "text", codes.shape[:2])
        batch, chunks = codes.shape[:2]
        device = codes.device
        if chunk_valid is None:
            chunk_valid = torch.ones(batch, chunks, dtype=torch.bool, device=device)
        chunk_valid = self._check_chunk_valid(chunk_valid, (batch, chunks)).to(device)
        tokens = codes.flatten(2).long()
        num_tokens = tokens.shape[2]

        mask_ratio = torch.cos(math.pi / 2 * uniform((batch, chunks), generator, device))
        num_masked = (mask_ratio * num_tokens).ceil().clamp(1, num_tokens)
        order = uniform((batch, chunks, num_tokens), generator, device).argsort(dim=-1).argsort(dim=-1)
        drop_text = uniform((batch,), generator, device) < config.text_dropout
        masked = (order < num_masked[..., None]) & chunk_valid[..., None]

        text = torch.where(drop_text[:, None, None], self.null_text(batch, chunks, device), text)
        # Trailing padding chunks cannot influence earlier chunks (causal), so skip computing them.
        used_chunks = int(chunk_valid.any(dim=0).nonzero().max()) + 1
        inputs = tokens.masked_fill(masked, config.mask_id)[:, :used_chunks]
        states = self._clean_context_states(tokens[:, :used_chunks], inputs, text[:, :used_chunks])
        selected = masked[:, :used_chunks]
        targets = tokens[:, :used_chunks][selected]
        token_losses, predicted = self._cross_entropy(states[selected], targets)
        loss = token_losses.mean()
        num_selected = int(selected.sum())
        logs = {"loss": float(loss.detach()), "masked_accuracy": float((predicted == targets).float().mean()),
                "mask_ratio": num_selected / (int(chunk_valid.sum()) * num_tokens), "tokens": float(num_selected)}
        return loss, logs

    # ---- the passes the sampler builds on ----------------------------------------------------

    def chunk_states(self, tokens: torch.Tensor, text: torch.Tensor, chunk_index: int, cache: KVCache):
        """One chunk after the cached past: (B,N) tokens + (B,L) text -> normed per-token states (B,N,D), the
        chunk's own keys/values per layer and its key validity (for KVCache.append)."""
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

    def video_states(self, tokens: torch.Tensor, text: torch.Tensor, window_chunks: int) -> torch.Tensor:
        """Every chunk at once with the block-causal windowed mask: (B,t,N) + (B,t,L) -> normed (B,t,N,D)."""
        chunks = tokens.shape[1]
        x, key_valid = self.embed(tokens, text)
        chunk_index = torch.arange(chunks, device=x.device).repeat_interleave(self.config.sequence_per_chunk)
        offset = chunk_index[:, None] - chunk_index[None, :]
        allowed = (offset >= 0) & (offset < window_chunks)
        return self._attend(x, key_valid, chunk_index, allowed, chunks)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Logits over the codebook (..., codebook_size) in fp32 (for a digit head, normalised log-probs)."""
        if not self.config.digit_head:
            return self.head(states).float()
        # an outer sum over levels (code = digit 0 + levels[0] * (digit 1 + ...)): a gather's additions, 30x faster
        log_probs, *higher_levels = self._digit_log_probs(states)
        for higher in higher_levels:
            log_probs = (log_probs.unsqueeze(-2) + higher.unsqueeze(-1)).flatten(-2)
        return log_probs

    # ---- internals ---------------------------------------------------------------------------

    def _rotary(self, chunk_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables for a sequence laid out chunk by chunk as [text block | video positions], given
        each position's chunk index. Text sits at row 0, column 0 (only its time rotates)."""
        config = self.config
        slot = torch.arange(chunk_index.shape[0], device=chunk_index.device) % config.sequence_per_chunk \
            - config.text_length
        video_slot = slot.clamp(min=0)
        is_video = slot >= 0
        rows = torch.where(is_video, video_slot // config.position_columns, 0)
        cols = torch.where(is_video, video_slot % config.position_columns, 0)
        return rotary_cos_sin(chunk_index, rows, cols, config.dim // config.heads, config.rope_base)

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

    def _clean_context_states(self, clean: torch.Tensor, masked: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Training pass where chunk c's masked tokens see the *clean* chunks c-W+1..c-1 plus their own chunk,
        exactly what sampling sees through the KV cache: (B,t,N) clean + (B,t,N) masked -> (B,t,N,D).

        The sequence is [clean chunks 0..t-2 | masked chunks 0..t-1] (the last clean chunk is nobody's context).
        """
        chunks, window = masked.shape[1], self.config.window_chunks
        per_chunk = self.config.sequence_per_chunk
        clean_x, clean_valid = self.embed(clean[:, :-1], text[:, :-1])
        masked_x, masked_valid = self.embed(masked, text)
        x = torch.cat([clean_x, masked_x], dim=1)
        key_valid = torch.cat([clean_valid, masked_valid], dim=1)
        chunk_index = torch.cat([torch.arange(chunks - 1, device=x.device),
                                 torch.arange(chunks, device=x.device)]).repeat_interleave(per_chunk)
        is_target = torch.arange(2 * chunks - 1, device=x.device).repeat_interleave(per_chunk) >= chunks - 1
        offset = chunk_index[:, None] - chunk_index[None, :]
        clean_to_clean = ~is_target[:, None] & ~is_target[None, :] & (offset >= 0) & (offset < window)
        target_to_clean = is_target[:, None] & ~is_target[None, :] & (offset >= 1) & (offset < window)
        target_to_itself = is_target[:, None] & is_target[None, :] & (offset == 0)
        allowed = clean_to_clean | target_to_clean | target_to_itself
        return self._attend(x, key_valid, chunk_index, allowed, chunks)

    def _digit_log_probs(self, states: torch.Tensor) -> list[torch.Tensor]:
        """Per-digit log-probabilities [(..., levels[i])] of states (..., D)."""
        return [part.log_softmax(dim=-1) for part in self.head(states).float().split(self.config.code_levels, dim=-1)]

    def _cross_entropy(self, states: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy (n,) of (n, D) states against (n,) codes, and the predicted codes."""
        if not self.config.digit_head:
            logits = self.logits(states)
            return F.cross_entropy(logits, targets, reduction="none"), logits.argmax(dim=-1)
        target_log_probs, predicted, basis = 0, 0, 1
        for size, log_probs in zip(self.config.code_levels, self._digit_log_probs(states)):
            target_log_probs = target_log_probs + log_probs.gather(-1, ((targets // basis) % size)[:, None])[:, 0]
            predicted = predicted + log_probs.detach().argmax(dim=-1) * basis
            basis *= size
        return -target_log_probs, predicted

    # ---- persistence -------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors into `directory`."""
        save_model(directory, FORMAT, self.config, self)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: torch.device | str = "cpu") -> "Generator":
        """Load a directory written by `save_pretrained` (or a training run's export/generator)."""
        hint = "pass a directory written by Generator.save_pretrained (a pipeline's generator/)"
        model = cls(load_config(directory, GeneratorConfig, FORMAT, hint))
        load_weights(directory, model, FORMAT, missing_ok=("code_counts",))  # counts came later: none known
        return model.to(device)

    # ---- input checks ------------------------------------------------------------------------

    def check_tokens(self, tokens, name: str, allow_mask: bool) -> None:
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

    def check_text(self, text, name: str, batch_chunks) -> None:
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

    def check_window(self, window_chunks: int | None) -> int:
        """The attention window to sample with: the trained one for None."""
        window_chunks = self.config.window_chunks if window_chunks is None else window_chunks
        if not isinstance(window_chunks, int) or isinstance(window_chunks, bool) or window_chunks < 1:
            raise ValueError(f"window_chunks must be an int >= 1, got {window_chunks!r}")
        return window_chunks
