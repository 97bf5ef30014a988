"""Finite scalar quantization (FSQ, Mentzer et al. 2023) without vector-quantize-pytorch.

The bundled tokenizers use FSQ, and importing vector-quantize-pytorch costs about a second of start-up
(it imports einx, which imports torch._dynamo). This module does the same float32 arithmetic, op for op,
as that library's `FSQ` (version 1.x, defaults: one codebook, no projections, no rotation, no noise
dropout), so codes, latents and gradients are bit-identical (tests/test_video_tokenizer.py compares
them). It holds no parameters and no persistent buffers, like the library's, so saved tokenizers load
either way. Index layout: the first level is the least significant digit.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

BOUND_EPS = 1e-3  # the library's margin inside tanh's range, so the outermost levels are reached


class FSQ(nn.Module):
    """`forward(z)` with z (B, N, d) float32 -> (quantized z in [-1, 1], indices (B, N) int32);
    `indices_to_codes(indices)` -> the quantized z of those indices."""

    def __init__(self, levels: list[int] | tuple[int, ...]):
        super().__init__()
        levels = list(levels)
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.int32), persistent=False)
        basis = torch.cumprod(torch.tensor([1] + levels[:-1]), dim=0, dtype=torch.int32)
        self.register_buffer("_basis", basis, persistent=False)

    def bound_and_round(self, z: Tensor) -> Tensor:
        """Squash each channel into its level range, round (gradients pass straight through), scale to [-1, 1]."""
        half_l = (self._levels - 1) * (1 + BOUND_EPS) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        bounded = torch.tanh(z + shift) * half_l - offset
        rounded = bounded + (bounded.round() - bounded).detach()
        return rounded / (self._levels // 2)

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        half_width = self._levels // 2
        digits = codes * half_width + half_width
        return (digits * self._basis).sum(dim=-1).round().to(torch.int32)

    def indices_to_level_indices(self, indices: Tensor) -> Tensor:
        """Indices (...) -> their digits (..., d), one per level."""
        return (indices[..., None] // self._basis) % self._levels

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        half_width = self._levels // 2
        return (self.indices_to_level_indices(indices) - half_width) / half_width

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if z.shape[-1] != len(self._levels):
            raise ValueError(f"FSQ with {len(self._levels)} levels got latents with {z.shape[-1]} channels")
        codes = self.bound_and_round(z)
        return codes, self.codes_to_indices(codes)
