"""Causal video tokenizer: a factorised (2+1)D convolutional VQ-VAE.

Video (B,3,T,H,W) in [-1,1] -> discrete codes (B,t,h,w) -> video. Causal in time: latent frame 0
sees video frame 0 alone and latent frame j >= 1 sees frames up to j*tc, so an image is a 1-frame
video and encoding the first 1+k*tc frames gives exactly the first 1+k latent frames.

Layout, chosen for CPU speed (most of the compute runs after time is compressed 4x):
  per frame : space-to-depth stem -> 2D residual blocks -> space-to-depth downsampling
  time      : one causal temporal conv at frame rate, then groups of tc frames folded into channels
              (frame 0 is replicate-padded into its own group, MAGVIT-v2 style)
  latent    : (2+1)D residual blocks (3x3 spatial conv, causal temporal conv)
  quantizer : FSQ (default, tokvid.models.fsq), LFQ or VectorQuantize from vector-quantize-pytorch, in fp32
The decoder mirrors the encoder.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tokvid.models.fsq import FSQ
from tokvid.persistence import ArtefactFormat, load_config, load_weights, save_model

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "weights"
BUNDLED_TOKENIZERS = {"general": "general", "shapes": "shapes/video_tokenizer", "scenes": "scenes/video_tokenizer"}
QUANTIZERS = ("fsq", "lfq", "vq")
FORMAT = ArtefactFormat(
    tag="tokvid-video-tokenizer-v1", what="video tokenizer",
    later_fields={"clamped_loss": False},
    # measured and removed (docs/design-notes.md), at the values every saved tokenizer has
    retired_fields={"encoder_spatial_kernel": 3, "l1_weight": 0.0, "gradient_weight": 0.0})
# Fingerprints hash the config as it was written when the first shards were made: later fields at their
# old-behaviour value are left out, and the retired loss weights, always written then, are put back, so
# token shards keep matching the tokenizer that wrote them.
FINGERPRINT_RETIRED = {"l1_weight": 0.0, "gradient_weight": 0.0}
# Settings that change how the decoder is trained, never the codes: codes_fingerprint leaves them out, so a
# decoder fine-tuned with another setting (freeze_encoder) still decodes the shards its start wrote.
DECODER_TRAINING_FIELDS = ("clamped_loss",)
# The modules that turn video into codes. Freezing them (decoder fine-tuning) keeps every code as it was.
ENCODER_MODULES = ("frame_encoder", "encoder_frame_time", "group_frames", "encoder_blocks", "encoder_out", "quantizer")


@dataclass
class VideoTokenizerConfig:
    temporal_compression: int = 4  # video frames per latent frame (after the first, which is coded alone)
    spatial_compression: int = 8  # pixels per token side; a power of two, a multiple of stem_patch
    stem_patch: int = 4  # space-to-depth factor of the first layer (cheap: no conv at full resolution)
    frame_channels: tuple[int, ...] = (64, 128)  # width per per-frame resolution level (1 + log2(sc/stem_patch) levels)
    frame_blocks: int = 1  # 2D residual blocks per per-frame level
    latent_channels: int = 192  # width after temporal compression, where most compute is spent
    latent_blocks: int = 3  # (2+1)D residual blocks at the latent grid
    temporal_kernel: int = 3  # taps of every causal temporal convolution
    quantizer: str = "fsq"  # "fsq" (no codebook loss, no collapse), "lfq" or "vq" (EMA codebook)
    fsq_levels: tuple[int, ...] = (8, 8, 6, 5, 5)  # FSQ levels per latent channel; vocabulary = their product
    codebook_size: int = 4096  # LFQ (power of two) / VQ vocabulary
    vq_codebook_dim: int = 16  # VQ: latent channels that are quantized
    vq_dead_code_threshold: float = 2.0  # VQ: replace codes whose EMA usage falls below this
    vq_sync_codebook: bool = False  # VQ: all-reduce codebook statistics across ranks (set by trainers)
    lfq_entropy_weight: float = 0.1  # LFQ: entropy aux loss weight
    l2_weight: float = 1.0  # MSE: learns small objects' colours fast (measured: 23.3 dB vs 20.3 dB with L1 terms)
    # losses see the output as decode returns it, clamped to [-1, 1]: overshooting a target at either end
    # costs nothing, so the decoder can push a black background below -1 and draw the edges next to it sharp
    # (shapes-v1: 32.5 -> 35.3 dB in 3000 decoder-only steps, docs/design-notes.md)
    clamped_loss: bool = False
    aux_weight: float = 1.0  # weight of the quantizer's own loss (LFQ entropy, VQ commitment)

    def __post_init__(self):
        self.frame_channels = tuple(int(c) for c in self.frame_channels)
        self.fsq_levels = tuple(int(v) for v in self.fsq_levels)
        tc, sc, p = self.temporal_compression, self.spatial_compression, self.stem_patch
        if tc < 1:
            raise ValueError(f"temporal_compression must be >= 1, got {tc}")
        if p < 1:
            raise ValueError(f"stem_patch must be >= 1, got {p}")
        levels = frame_levels(sc, p)
        if len(self.frame_channels) != levels:
            raise ValueError(f"frame_channels needs {levels} widths for spatial_compression={sc} and "
                             f"stem_patch={p}, got {self.frame_channels}")
        if min(self.frame_channels + (self.latent_channels,)) < 1 or self.latent_blocks < 0 or self.frame_blocks < 0:
            raise ValueError("channel widths must be positive and block counts non-negative")
        if self.temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be >= 1, got {self.temporal_kernel}")
        if not isinstance(self.clamped_loss, bool):
            raise ValueError(f"clamped_loss must be true or false, got {self.clamped_loss!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.quantizer == "fsq" and (len(self.fsq_levels) < 1 or min(self.fsq_levels) < 3):
            raise ValueError(f"fsq_levels must be integers >= 3, got {self.fsq_levels}")
        if self.quantizer == "lfq" and (self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1)):
            raise ValueError(f"LFQ needs a power-of-two codebook_size, got {self.codebook_size}")
        if self.quantizer == "vq" and (self.codebook_size < 2 or self.vq_codebook_dim < 1):
            raise ValueError("VQ needs codebook_size >= 2 and vq_codebook_dim >= 1")

    @property
    def vocab_size(self) -> int:
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" else self.codebook_size

    @property
    def code_dim(self) -> int:
        """Channels entering the quantizer."""
        if self.quantizer == "fsq":
            return len(self.fsq_levels)
        if self.quantizer == "lfq":
            return int(math.log2(self.codebook_size))
        return self.vq_codebook_dim

    @property
    def context_latents(self) -> int:
        """Latent frames of history that fully determine one latent frame (encoder or decoder), plus one
        for the window's own first latent frame, which is coded as an image. Used by chunked coding."""
        frame_level = math.ceil((self.temporal_kernel - 1) / self.temporal_compression)
        return self.latent_blocks * (self.temporal_kernel - 1) + frame_level + 2


def frame_levels(spatial_compression: int, stem_patch: int, name: str = "spatial_compression") -> int:
    """Per-frame resolution levels (widths in frame_channels) for a spatial compression: the stem, then
    one per factor of two. `name` is what the error calls the compression (a config field or a flag)."""
    ratio = spatial_compression // stem_patch
    if spatial_compression < stem_patch or spatial_compression % stem_patch or ratio & (ratio - 1):
        raise ValueError(f"{name} must be {stem_patch} times a power of two (stem_patch {stem_patch}), "
                         f"got {spatial_compression}")
    return 1 + int(math.log2(ratio))


VIDEO_TOKENIZER_PRESETS = {
    "tiny": dict(frame_channels=(8, 16), latent_channels=16, latent_blocks=1, fsq_levels=(5, 5, 5)),
    "small": dict(frame_channels=(32, 64), latent_channels=128, latent_blocks=2),
    "base": dict(),
}


def video_tokenizer_preset(name: str, **overrides) -> VideoTokenizerConfig:
    """Named sizes: 'tiny' for tests, 'small' and 'base' for real training."""
    if name not in VIDEO_TOKENIZER_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(VIDEO_TOKENIZER_PRESETS)}")
    return VideoTokenizerConfig(**{**VIDEO_TOKENIZER_PRESETS[name], **overrides})


# ----------------------------------------------------------------------------------------------
# building blocks


class ChannelNorm(nn.Module):
    """RMS norm over channels at each (t, y, x): unlike GroupNorm it never mixes frames, so it stays causal."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-6)
        return x * scale * self.weight.view(1, -1, *([1] * (x.ndim - 2)))


class CausalTemporalConv(nn.Module):
    """Convolution over time only; the first frame is replicated into the past, so frame t sees frames <= t."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv3d(in_channels, out_channels, (kernel, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, T, H, W)
        if self.kernel > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.kernel - 1, -1, -1), x], dim=2)
        return self.conv(x)


class FrameResBlock(nn.Module):
    """2D residual block applied to every frame independently."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelNorm(channels), nn.Conv2d(channels, channels, 3, padding="same")
        self.norm2, self.conv2 = ChannelNorm(channels), nn.Conv2d(channels, channels, 3, padding="same")

    def forward(self, x: Tensor) -> Tensor:  # (N, C, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class LatentResBlock(nn.Module):
    """(2+1)D residual block: a 3x3 spatial conv, then a causal conv over time."""

    def __init__(self, channels: int, temporal_kernel: int):
        super().__init__()
        self.norm1 = ChannelNorm(channels)
        self.spatial = nn.Conv3d(channels, channels, (1, 3, 3), padding="same")
        self.norm2, self.temporal = ChannelNorm(channels), CausalTemporalConv(channels, channels, temporal_kernel)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, t, h, w)
        h = self.spatial(F.silu(self.norm1(x)))
        return x + self.temporal(F.silu(self.norm2(h)))


def per_frame(module: nn.Module, x: Tensor) -> Tensor:
    """Run a 2D module on every frame of (B, C, T, H, W)."""
    b = x.shape[0]
    y = module(rearrange(x, "b c t h w -> (b t) c h w"))
    return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class FrameEncoder(nn.Module):
    """Per-frame spatial downsampling: (N, 3, H, W) -> (N, C_last, H/sc, W/sc)."""

    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        widths = cfg.frame_channels
        self.stem = nn.Sequential(nn.PixelUnshuffle(cfg.stem_patch),
                                  nn.Conv2d(3 * cfg.stem_patch ** 2, widths[0], 3, padding="same"))
        layers: list[nn.Module] = [FrameResBlock(widths[0]) for _ in range(cfg.frame_blocks)]
        for narrow, wide in zip(widths[:-1], widths[1:]):
            layers += [nn.PixelUnshuffle(2), nn.Conv2d(4 * narrow, wide, 1)]
            layers += [FrameResBlock(wide) for _ in range(cfg.frame_blocks)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.stem(x))


class FrameDecoder(nn.Module):
    """Mirror of FrameEncoder: (N, C_last, h, w) -> (N, 3, H, W)."""

    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        widths = cfg.frame_channels
        layers: list[nn.Module] = []
        for wide, narrow in zip(widths[::-1][:-1], widths[::-1][1:]):
            layers += [FrameResBlock(wide) for _ in range(cfg.frame_blocks)]
            layers += [nn.Conv2d(wide, 4 * narrow, 1), nn.PixelShuffle(2)]
        layers += [FrameResBlock(widths[0]) for _ in range(cfg.frame_blocks)]
        self.body = nn.Sequential(*layers)
        self.norm = ChannelNorm(widths[0])
        self.head = nn.Sequential(nn.Conv2d(widths[0], 3 * cfg.stem_patch ** 2, 3, padding=1), nn.PixelShuffle(cfg.stem_patch))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.silu(self.norm(self.body(x))))


# ----------------------------------------------------------------------------------------------
# quantizers: one small adapter so the model code is the same for FSQ, LFQ and VQ


class Quantizer(nn.Module):
    """FSQ (our own, tokvid.models.fsq) or a vector-quantize-pytorch quantizer (LFQ, VQ).
    Input/output (B, t, h, w, d); indices (B, t, h, w)."""

    def __init__(self, cfg: VideoTokenizerConfig):
        super().__init__()
        self.kind = cfg.quantizer
        if self.kind == "fsq":  # without vector-quantize-pytorch, whose import costs a second of start-up
            self.impl = FSQ(cfg.fsq_levels)
            return
        import vector_quantize_pytorch as vqp  # imported here: only LFQ and VQ construction needs it

        if self.kind == "lfq":
            self.impl = vqp.LFQ(dim=cfg.code_dim, codebook_size=cfg.codebook_size,
                                entropy_loss_weight=cfg.lfq_entropy_weight, commitment_loss_weight=0.25)
        else:
            self.impl = vqp.VectorQuantize(dim=cfg.code_dim, codebook_size=cfg.codebook_size, kmeans_init=True,
                                           kmeans_iters=10, threshold_ema_dead_code=cfg.vq_dead_code_threshold,
                                           sync_codebook=cfg.vq_sync_codebook, sync_kmeans=cfg.vq_sync_codebook,
                                           use_cosine_sim=True, decay=0.9)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = z.float().reshape(shape[0], -1, shape[-1])
            if self.kind == "fsq":
                quantized, indices = self.impl(flat)
                aux = flat.new_zeros(())
            else:
                quantized, indices, aux = self.impl(flat)
        return quantized.reshape(shape).to(z.dtype), indices.reshape(shape[:-1]).long(), aux

    def codes_to_latents(self, indices: Tensor) -> Tensor:
        shape = indices.shape
        flat = indices.reshape(shape[0], -1)
        if self.kind == "vq":
            latents = self.impl.get_output_from_indices(flat)
        else:
            latents = self.impl.indices_to_codes(flat)
        return latents.float().reshape(*shape, -1)


# ----------------------------------------------------------------------------------------------
# the tokenizer


class VideoTokenizer(nn.Module):
    """Causal video VQ-VAE. `encode` -> LongTensor (B,t,h,w); `decode` -> float (B,3,T,H,W) in [-1,1]."""

    def __init__(self, config: VideoTokenizerConfig | None = None):
        super().__init__()
        cfg = config or VideoTokenizerConfig()
        self.config = cfg
        tc, kernel, wide, lat = cfg.temporal_compression, cfg.temporal_kernel, cfg.frame_channels[-1], cfg.latent_channels
        self.frame_encoder = FrameEncoder(cfg)
        self.encoder_frame_time = CausalTemporalConv(wide, wide, kernel)
        self.group_frames = nn.Conv3d(wide * tc, lat, 1)
        self.encoder_blocks = nn.Sequential(*[LatentResBlock(lat, kernel) for _ in range(cfg.latent_blocks)])
        self.encoder_out = nn.Sequential(ChannelNorm(lat), nn.SiLU(), nn.Conv3d(lat, cfg.code_dim, 1))
        self.quantizer = Quantizer(cfg)
        self.decoder_in = nn.Conv3d(cfg.code_dim, lat, 1)
        self.decoder_blocks = nn.Sequential(*[LatentResBlock(lat, kernel) for _ in range(cfg.latent_blocks)])
        self.ungroup_frames = nn.Sequential(ChannelNorm(lat), nn.SiLU(), nn.Conv3d(lat, wide * tc, 1))
        self.decoder_frame_time = CausalTemporalConv(wide, wide, kernel)
        self.frame_decoder = FrameDecoder(cfg)
        self.encoder_frozen = False

    # -- contract properties
    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def temporal_compression(self) -> int:
        return self.config.temporal_compression

    @property
    def spatial_compression(self) -> int:
        return self.config.spatial_compression

    # -- continuous paths
    def encode_latents(self, x: Tensor) -> Tensor:
        """(B,3,T,H,W) -> continuous pre-quantization latents (B,t,h,w,d)."""
        tc = self.temporal_compression
        h = per_frame(self.frame_encoder, x)
        h = h + self.encoder_frame_time(h)
        # frame 0 is padded into a full group of its own, so it is coded alone
        h = torch.cat([h[:, :, :1].expand(-1, -1, tc - 1, -1, -1), h], dim=2)
        h = self.group_frames(rearrange(h, "b c (t k) y x -> b (c k) t y x", k=tc))
        h = self.encoder_out(self.encoder_blocks(h))
        return rearrange(h, "b d t y x -> b t y x d")

    def decode_latents(self, z: Tensor) -> Tensor:
        """Quantized latents (B,t,h,w,d) -> video (B,3,T,H,W), unclamped."""
        tc = self.temporal_compression
        h = self.decoder_blocks(self.decoder_in(rearrange(z, "b t y x d -> b d t y x")))
        h = rearrange(self.ungroup_frames(h), "b (c k) t y x -> b c (t k) y x", k=tc)[:, :, tc - 1:]
        h = h + self.decoder_frame_time(h)
        return per_frame(self.frame_decoder, h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruction (unclamped), codes, quantizer aux loss."""
        quantized, codes, aux = self.quantizer(self.encode_latents(x))
        return self.decode_latents(quantized), codes, aux

    # -- decoder fine-tuning
    def freeze_encoder(self) -> None:
        """Train only the decoder from now on: the encoder and quantizer keep their weights and buffers
        (no gradients, always in eval mode, so a VQ codebook stops updating too) and every video keeps
        exactly its codes. Fine-tuning the decoder of a trained tokenizer sharpens its reconstructions
        without invalidating token shards or generators trained on its codes (codes_fingerprint stays)."""
        self.encoder_frozen = True
        for name in ENCODER_MODULES:
            getattr(self, name).requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "VideoTokenizer":
        super().train(mode)
        if self.encoder_frozen:
            for name in ENCODER_MODULES:
                getattr(self, name).eval()
        return self

    # -- public token API
    @torch.no_grad()
    def encode(self, x: Tensor, chunk_latents: int | None = None) -> Tensor:
        """Video (B,3,T,H,W) in [-1,1], T = 1 + k*tc -> codes LongTensor (B,t,h,w).

        chunk_latents bounds memory on long videos: the clip is coded in overlapping temporal windows
        whose outputs are exactly those of coding the whole clip at once."""
        self.check_video(x)
        t = 1 + (x.shape[2] - 1) // self.temporal_compression
        pieces = [self._encode_window(x, start, stop) for start, stop in self._windows(t, chunk_latents)]
        return torch.cat(pieces, dim=1)

    @torch.no_grad()
    def decode(self, codes: Tensor, chunk_latents: int | None = None) -> Tensor:
        """Codes (B,t,h,w) -> video (B,3,T,H,W) in [-1,1], T = 1 + (t-1)*tc."""
        self.check_codes(codes)
        pieces = [self._decode_window(codes, start, stop) for start, stop in self._windows(codes.shape[1], chunk_latents)]
        return torch.cat(pieces, dim=2).clamp(-1, 1)

    def _windows(self, num_latents: int, chunk_latents: int | None) -> list[tuple[int, int]]:
        if chunk_latents is None or chunk_latents >= num_latents:
            return [(0, num_latents)]
        if chunk_latents < 1:
            raise ValueError(f"chunk_latents must be >= 1, got {chunk_latents}")
        return [(s, min(s + chunk_latents, num_latents)) for s in range(0, num_latents, chunk_latents)]

    def _encode_window(self, x: Tensor, start: int, stop: int) -> Tensor:
        # The window begins `context` latents early at a frame that ends a group; its first latent is
        # coded as an image and everything before `start` is discarded, so kept codes match the whole clip.
        tc = self.temporal_compression
        first = max(0, start - self.config.context_latents)
        frames = x[:, :, first * tc: (stop - 1) * tc + 1]
        _, codes, _ = self.quantizer(self.encode_latents(frames))
        return codes[:, start - first:]

    def _decode_window(self, codes: Tensor, start: int, stop: int) -> Tensor:
        tc = self.temporal_compression
        first = max(0, start - self.config.context_latents)
        video = self.decode_latents(self.quantizer.codes_to_latents(codes[:, first:stop]))
        keep_from = 0 if start == 0 else (start - first - 1) * tc + 1
        return video[:, :, keep_from:]

    # -- input checks
    def check_video(self, x: Tensor) -> None:
        tc, sc = self.temporal_compression, self.spatial_compression
        if not torch.is_tensor(x) or x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"expected a float video tensor (B,3,T,H,W), got shape {tuple(getattr(x, 'shape', ()))}; "
                             "use tokvid.frames_to_tensor(frames)[None] for uint8 (T,H,W,3) frames")
        if not x.is_floating_point():
            raise ValueError(f"expected a float tensor in [-1,1], got dtype {x.dtype}")
        t, h, w = x.shape[2:]
        if (t - 1) % tc:
            raise ValueError(f"video has {t} frames; the tokenizer needs 1 + k*{tc} frames (e.g. {1 + tc * max(1, (t - 1) // tc)})")
        if h % sc or w % sc or h == 0 or w == 0:
            raise ValueError(f"frame size {h}x{w} must be a positive multiple of {sc}; resize or crop first")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001 or not math.isfinite(lo + hi):
            raise ValueError(f"video values must lie in [-1, 1], got [{lo:.3g}, {hi:.3g}]; map uint8 with x/127.5-1")

    def check_codes(self, codes: Tensor) -> None:
        if not torch.is_tensor(codes) or codes.ndim != 4 or codes.is_floating_point():
            raise ValueError(f"expected integer codes (B,t,h,w), got {getattr(codes, 'dtype', type(codes))} "
                             f"shape {tuple(getattr(codes, 'shape', ()))}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab_size):
            raise ValueError(f"codes must lie in [0, {self.vocab_size}); were they made by another tokenizer?")

    # -- training
    def training_loss(self, x: Tensor, code_noise: float = 0.0,
                      generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction loss of a batch (B,3,T,H,W) in [-1,1], and scalar logs.

        code_noise: the decoder sees, for this share of tokens, a neighbouring code (one FSQ digit one step
        off), the kind of slip a generator makes, and must still draw the true video."""
        cfg = self.config
        quantized, codes, aux = self.quantizer(self.encode_latents(x))
        if code_noise:
            slipped = self.quantizer.codes_to_latents(neighbour_codes(codes, cfg, code_noise, generator))
            quantized = quantized + (slipped.to(quantized.dtype) - quantized).detach()  # gradients pass straight through
        recon = self.decode_latents(quantized).float()
        error = clamped_error(recon, x) if cfg.clamped_loss else recon - x
        l1 = error.abs().mean()
        l2 = error.pow(2).mean()
        loss = cfg.l2_weight * l2 + cfg.aux_weight * aux
        usage, perplexity = codebook_stats(codes, self.vocab_size)
        l1, l2, aux_value = float(l1.detach()), float(l2.detach()), float(aux.detach())
        logs = {"recon_l1": l1, "recon_mse": l2, "aux": aux_value, "psnr": psnr_from_mse(l2),
                "codebook_usage": usage, "perplexity": perplexity}
        return loss, logs

    # -- persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json + model.safetensors into `directory`."""
        save_model(directory, FORMAT, self.config, self)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, device: str | torch.device = "cpu") -> "VideoTokenizer":
        """Load a bundled tokenizer by name ('general', 'shapes') or a directory written by save_pretrained."""
        directory = resolve_pretrained_dir(name_or_dir)
        model = cls(load_config(directory, VideoTokenizerConfig, FORMAT, "train one with train/train_tokenizer.py"))
        load_weights(directory, model, FORMAT)
        return model.to(device).eval()

    def fingerprint(self) -> str:
        """Hash of config and all weights: exactly this tokenizer."""
        return self._digest(self.state_dict().items())

    def codes_fingerprint(self) -> str:
        """Hash of config and the encoder's and quantizer's weights: the same for tokenizers that make the
        same codes (this one and its decoder fine-tunes, see freeze_encoder). Token shards record it, so
        they are decoded only by a tokenizer that made them or a sharper decoder for the same codes."""
        return self._digest(((k, v) for k, v in self.state_dict().items() if k.split(".")[0] in ENCODER_MODULES),
                            leave_out=DECODER_TRAINING_FIELDS)

    def _digest(self, named_tensors, leave_out: tuple[str, ...] = ()) -> str:
        config = {key: value for key, value in {**FINGERPRINT_RETIRED, **asdict(self.config)}.items()
                  if FORMAT.later_fields.get(key, object()) != value and key not in leave_out}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for key, value in sorted(named_tensors, key=lambda item: item[0]):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def resolve_pretrained_dir(name_or_dir: str | Path) -> Path:
    name = str(name_or_dir)
    if name in BUNDLED_TOKENIZERS:
        directory = BUNDLED_DIR / BUNDLED_TOKENIZERS[name]
        if not (directory / "model.safetensors").exists():
            raise ValueError(f"bundled tokenizer {name!r} is not in this installation ({directory} is missing); "
                             "reinstall tokvid or train one with train/train_tokenizer.py")
        return directory
    directory = Path(name_or_dir)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise ValueError(f"unknown tokenizer {name!r}: give a bundled name ({', '.join(BUNDLED_TOKENIZERS)}) "
                         "or a directory with config.json and model.safetensors")
    return directory


# ----------------------------------------------------------------------------------------------
# losses and metrics


def clamped_error(recon: Tensor, target: Tensor) -> Tensor:
    """recon - target, except where the target sits at an end of [-1, 1] and recon overshoots it: there
    decode's clamp makes the picture exact, so the error is 0. Unlike the error of recon.clamp(-1, 1) it
    keeps a gradient everywhere (an output stuck beyond the wrong end is still pulled back)."""
    error = recon - target
    error = torch.where(target <= -1, error.clamp(min=0), error)
    return torch.where(target >= 1, error.clamp(max=0), error)


def check_code_noise(cfg: VideoTokenizerConfig, probability: float, name: str = "code noise") -> None:
    """ValueError unless `probability` of neighbouring codes (see neighbour_codes) makes sense for cfg."""
    if not 0 <= probability <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {probability}")
    if cfg.quantizer != "fsq":
        raise ValueError(f"{name} moves FSQ digits; this tokenizer uses {cfg.quantizer!r}")


def neighbour_codes(codes: Tensor, cfg: VideoTokenizerConfig, probability: float,
                    generator: torch.Generator | None = None) -> Tensor:
    """FSQ codes where each token, with `probability`, has one random digit moved one step (reflected at
    the ends of its range): the nearest wrong codes."""
    check_code_noise(cfg, probability)
    levels = torch.tensor(cfg.fsq_levels, device=codes.device)
    basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)
    digits = codes[..., None] // basis % levels

    def draw(high: int | None = None) -> Tensor:
        source = generator.device if generator is not None else codes.device
        if high is None:
            return torch.rand(codes.shape, generator=generator, device=source).to(codes.device)
        return torch.randint(high, codes.shape, generator=generator, device=source).to(codes.device)

    slip, which, step = draw() < probability, draw(len(cfg.fsq_levels)), draw(2) * 2 - 1
    digit = digits.gather(-1, which[..., None])[..., 0]
    moved = digit + step
    moved = torch.where((moved < 0) | (moved >= levels[which]), digit - step, moved)
    new_codes = codes + (moved - digit) * basis[which]
    return torch.where(slip, new_codes, codes)


def psnr_from_mse(mse_on_minus1_1: float) -> float:
    """PSNR in dB on [0,1] pixels from an MSE measured on [-1,1] values."""
    return 10 * math.log10(4.0 / max(mse_on_minus1_1, 1e-12))


def codebook_stats(codes: Tensor, vocab_size: int) -> tuple[float, float]:
    """Fraction of the vocabulary used by these codes, and the perplexity of their distribution."""
    counts = torch.bincount(codes.flatten().cpu(), minlength=vocab_size).double()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return float((counts > 0).double().mean()), float(entropy.exp())
