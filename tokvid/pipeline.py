"""Text (or a story of prompts) -> video: text tokenizer + block-causal generator + video tokenizer.

A pipeline directory holds `pipeline.json` (fps, sampling defaults) and the three parts in
`generator/`, `text_tokenizer/` and `video_tokenizer/`, each loadable on its own.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .generator import Generator, check_sampler_args
from .story import chunk_segments, num_chunks_for_frames, validate_segments
from .text_tokenizer import TextTokenizer
from .video_io import frames_to_tensor, tensor_to_frames
from .video_tokenizer import BUNDLED_DIR, VideoTokenizer

PIPELINE_FORMAT = "tokvid-pipeline-v1"
BUNDLED_PIPELINES = {"shapes": BUNDLED_DIR / "shapes"}
DEFAULT_PIPELINE = "shapes"
DECODE_CHUNK_LATENTS = 16  # bounds decoder memory on long videos; outputs equal whole-clip decoding


@dataclass
class SamplingSettings:
    steps: int = 8  # MaskGIT refinement steps per chunk
    cfg_scale: float = 3.0  # classifier-free guidance: 0 unconditional, 1 conditional, >1 guided
    temperature: float = 1.0  # sampling temperature at the first step (annealed to 0)
    top_k: int | None = None  # keep only the k likeliest codes per position (None: all)
    order: str = "confidence"  # which tokens are kept at each step: "confidence" or "random"
    window_chunks: int | None = None  # chunks of attention context (None: the generator's trained window)
    first_chunk_candidates: int = 1  # sample the first chunk this many times, keep the most prompt-specific one
    later_chunk_candidates: int = 1  # sample every later chunk this many times, keep the one the prompt explains
                                     # best given the past (needs cfg_scale other than 0 and 1)
    min_code_count: int = 1  # draw only codes seen at least this often in the generator's training data (0: any)
    redraw_first_frame: bool = False  # re-code the first frame from the second (a one-frame hold at the start):
                                      # the first frame is drawn from the prompt alone, later ones with context

    def __post_init__(self):
        # pipeline.json may hold a whole number as a float (8.0); the sampler takes ints
        for name in ("steps", "top_k", "window_chunks", "first_chunk_candidates", "later_chunk_candidates",
                     "min_code_count"):
            setattr(self, name, _whole_float_as_int(getattr(self, name)))
        check_sampler_args(self.steps, self.cfg_scale, self.temperature, self.top_k, self.order,
                           self.first_chunk_candidates, self.later_chunk_candidates, self.min_code_count)
        if self.window_chunks is not None and (not isinstance(self.window_chunks, int) or self.window_chunks < 1):
            raise ValueError(f"window_chunks must be None or an int >= 1, got {self.window_chunks!r}")
        if not isinstance(self.redraw_first_frame, bool):
            raise ValueError(f"redraw_first_frame must be True or False, got {self.redraw_first_frame!r}")


def _whole_float_as_int(value):
    """8.0 -> 8; anything else unchanged, for the checks to accept or refuse."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass
class VideoOutput:
    frames: np.ndarray  # uint8 (T,H,W,3)
    fps: float
    codes: torch.Tensor  # (t,h,w) video tokens the frames were decoded from
    segments: list[tuple[str, int]]  # the story that was generated


class TokVidPipeline:
    """`pipe(prompt, num_frames=17, seed=0)` or `pipe.story([(prompt, frames), ...], seed=0)` -> VideoOutput."""

    def __init__(self, generator: Generator, text_tokenizer: TextTokenizer, video_tokenizer: VideoTokenizer,
                 fps: float = 8.0, defaults: SamplingSettings | None = None):
        if generator.config.codebook_size != video_tokenizer.vocab_size:
            raise ValueError(f"generator predicts {generator.config.codebook_size} codes but the video tokenizer has "
                             f"{video_tokenizer.vocab_size}; pair the generator with the tokenizer it was trained on")
        if generator.config.text_vocab_size < text_tokenizer.vocab_size:
            raise ValueError("the text tokenizer's vocabulary is larger than the generator's text embedding")
        self.generator = generator.eval()
        self.text_tokenizer = text_tokenizer
        self.video_tokenizer = video_tokenizer.eval()
        self.fps = float(fps)
        self.defaults = defaults or SamplingSettings()

    # -- loading and saving
    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None, device: str | torch.device = "cpu") -> "TokVidPipeline":
        """No argument: the bundled default model (shapes-v1 stories). Otherwise a bundled name or a directory."""
        directory = resolve_pipeline_dir(name_or_dir)
        try:
            settings = json.loads((directory / "pipeline.json").read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{directory / 'pipeline.json'} is not valid JSON: {error}") from None
        if settings.get("format") != PIPELINE_FORMAT:
            raise ValueError(f"{directory} is not a tokvid pipeline directory ({PIPELINE_FORMAT})")
        generator = Generator.from_pretrained(directory / "generator").to(device)
        text_tokenizer = TextTokenizer.from_pretrained(directory / "text_tokenizer")
        video_tokenizer = VideoTokenizer.from_pretrained(directory / "video_tokenizer", device=device)
        known = {f.name for f in fields(SamplingSettings)}
        defaults = SamplingSettings(**{k: v for k, v in settings.get("defaults", {}).items() if k in known})
        return cls(generator, text_tokenizer, video_tokenizer, fps=settings.get("fps", 8.0), defaults=defaults)

    def save_pretrained(self, directory: str | Path) -> None:
        save_pipeline(directory, self.generator, self.text_tokenizer, self.video_tokenizer, self.fps, self.defaults)

    # -- generation
    def __call__(self, prompt: str, num_frames: int = 17, seed: int = 0, **options) -> VideoOutput:
        """One prompt held for the whole video of num_frames frames (the first frame included)."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a whole number >= 1, got {num_frames!r}")
        segments = validate_segments([(prompt, max(num_frames - 1, 1))])
        return self._generate(segments, total_frames=num_frames, seed=seed, **options)

    def story(self, segments, seed: int = 0, **options) -> VideoOutput:
        """A list of (prompt, frames): each prompt governs its frames; the video has 1 + sum(frames) frames."""
        segments = validate_segments(segments)
        return self._generate(segments, total_frames=1 + sum(f for _, f in segments), seed=seed, **options)

    def _generate(self, segments, total_frames: int, seed: int, negative_prompt: str | None = None,
                  prime_frames: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None,
                  **overrides) -> VideoOutput:
        """segments: an already validated story (the public entry points validate it)."""
        merged = {**asdict(self.defaults), **overrides}
        if merged["cfg_scale"] in (0, 1) and "later_chunk_candidates" not in overrides:
            merged["later_chunk_candidates"] = 1  # the default's later candidates need both guidance streams
        settings = SamplingSettings(**merged)
        tc = self.video_tokenizer.temporal_compression
        device = next(self.generator.parameters()).device
        prime_codes = self._encode_prime(prime_frames, device) if prime_frames is not None else None
        prime_chunks = 0 if prime_codes is None else prime_codes.shape[1]
        story_chunks = num_chunks_for_frames(total_frames, tc)
        owners = chunk_segments([f for _, f in segments], tc)[:story_chunks]
        # primed videos continue after the prime's last frame, so the story's leading chunk is not generated
        owners = [0] * prime_chunks + (owners[1:] if prime_chunks else owners)
        prompt_ids = self.text_tokenizer.batch([p for p, _ in segments], length=self.generator.config.text_length)
        text = prompt_ids[torch.tensor(owners)].unsqueeze(0).to(device)
        negative = None
        if negative_prompt is not None:
            negative_ids = self.text_tokenizer.batch([negative_prompt], length=self.generator.config.text_length)
            negative = negative_ids.expand(len(owners), -1).unsqueeze(0).to(device)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        codes = self.generator.generate(text, num_chunks=len(owners), steps=settings.steps, cfg_scale=settings.cfg_scale,
                                        temperature=settings.temperature, top_k=settings.top_k, negative_text=negative,
                                        prime_codes=prime_codes, generator=generator, order=settings.order,
                                        window_chunks=settings.window_chunks, progress=progress,
                                        first_chunk_candidates=settings.first_chunk_candidates,
                                        later_chunk_candidates=settings.later_chunk_candidates,
                                        min_code_count=settings.min_code_count)
        if settings.redraw_first_frame and prime_codes is None and codes.shape[1] > 1:
            codes = self._redraw_first_latent(codes)
        video = self.video_tokenizer.decode(codes, chunk_latents=DECODE_CHUNK_LATENTS)
        frames = tensor_to_frames(video[0])
        wanted = total_frames + (prime_chunks - 1) * tc if prime_chunks else total_frames
        return VideoOutput(frames=frames[:wanted], fps=self.fps, codes=codes[0].cpu(), segments=segments)

    def _redraw_first_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Replace the first latent frame by the code of the decoded second frame.

        The causal tokenizer codes frame 0 alone, so the generator draws it from the prompt with no
        past; most malformed objects of the bundled model are there (too small, misshapen, off-colour),
        while the next chunk, drawn with that context, is right. Frame 1 is decoded from the first two
        latents only (the decoder is causal) and coded as an image."""
        second = tensor_to_frames(self.video_tokenizer.decode(codes[:, :2])[0])[1:2]
        first = self.video_tokenizer.encode(frames_to_tensor(second)[None].to(codes.device))
        return torch.cat([first, codes[:, 1:]], dim=1)

    def _encode_prime(self, prime_frames: np.ndarray, device) -> torch.Tensor:
        tc, sc = self.video_tokenizer.temporal_compression, self.video_tokenizer.spatial_compression
        prime = np.asarray(prime_frames)
        if prime.ndim == 3:
            prime = prime[None]
        if prime.ndim != 4 or prime.shape[-1] != 3 or prime.dtype != np.uint8 or len(prime) == 0:
            raise ValueError("prime_frames must be uint8 (T,H,W,3) frames or one (H,W,3) image")
        usable = 1 + (len(prime) - 1) // tc * tc  # the tokenizer codes 1 + k*tc frames
        x = frames_to_tensor(prime[len(prime) - usable:])[None].to(device)
        if x.shape[-2] % sc or x.shape[-1] % sc:
            raise ValueError(f"prime frames of size {x.shape[-2]}x{x.shape[-1]} must be multiples of {sc}")
        return self.video_tokenizer.encode(x, chunk_latents=DECODE_CHUNK_LATENTS)


def resolve_pipeline_dir(name_or_dir: str | Path | None) -> Path:
    name = DEFAULT_PIPELINE if name_or_dir is None else str(name_or_dir)
    if name in BUNDLED_PIPELINES:
        directory = BUNDLED_PIPELINES[name]
        if not (directory / "pipeline.json").exists():
            raise ValueError(f"bundled model {name!r} is not in this installation ({directory}); reinstall tokvid")
        return directory
    directory = Path(name)
    if not (directory / "pipeline.json").is_file():
        raise ValueError(f"unknown model {name!r}: give a bundled name ({', '.join(BUNDLED_PIPELINES)}) or a "
                         "pipeline directory (with pipeline.json) exported by train/train_generator.py")
    return directory


def save_pipeline(directory: str | Path, generator: Generator, text_tokenizer: TextTokenizer,
                  video_tokenizer: VideoTokenizer, fps: float = 8.0, defaults: SamplingSettings | None = None) -> None:
    """Write a pipeline directory that TokVidPipeline.from_pretrained loads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator.save_pretrained(directory / "generator")
    text_tokenizer.save_pretrained(directory / "text_tokenizer")
    video_tokenizer.save_pretrained(directory / "video_tokenizer")
    settings = {"format": PIPELINE_FORMAT, "fps": float(fps), "defaults": asdict(defaults or SamplingSettings())}
    (directory / "pipeline.json").write_text(json.dumps(settings, indent=2) + "\n")
