"""Text (or a story of prompts) -> video: text tokenizer + block-causal generator + video tokenizer.

A pipeline directory holds `pipeline.json` (format tag, fps, the sampling options it sets, overriding
SamplingConfig's defaults, and optionally the caption grammar its prompts must follow) and the three parts in `generator/`, `text_tokenizer/` and
`video_tokenizer/`, each loadable on its own.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .models.generator import Generator
from .models.text_tokenizer import PromptWarning, TextTokenizer
from .models.video_tokenizer import BUNDLED_DIR, VideoTokenizer
from .persistence import ArtefactFormat, config_from_fields, read_config_json, write_config_json
from .sampling import SamplingConfig, redraw_first_latent, sample, with_options
from .story import chunk_segments, num_chunks_for_frames, validate_segments
from .video_io import frames_to_tensor, tensor_to_frames

PIPELINE_FILE = "pipeline.json"
FORMAT = ArtefactFormat(tag="tokvid-pipeline-v1", what="tokvid pipeline",
                        # sampling options measured and removed (docs/design-notes.md), at the one value kept
                        retired_fields={"order": "confidence", "later_chunk_candidates": 1})
BUNDLED_PIPELINES = {"shapes": BUNDLED_DIR / "shapes", "scenes": BUNDLED_DIR / "scenes"}
CAPTION_GRAMMARS = ("scenes",)  # a model trained on one world's captions can require them (docs/scenes.md)
DEFAULT_PIPELINE = "shapes"
DECODE_CHUNK_LATENTS = 16  # bounds decoder memory on long videos; outputs equal whole-clip decoding


@dataclass
class VideoOutput:
    frames: np.ndarray  # uint8 (T,H,W,3)
    fps: float
    codes: torch.Tensor  # (t,h,w) video tokens the frames were decoded from
    segments: list[tuple[str, int]]  # the story that was generated


class TokVidPipeline:
    """`pipe(prompt, num_frames=17, seed=0)` or `pipe.story([(prompt, frames), ...], seed=0)` -> VideoOutput."""

    def __init__(self, generator: Generator, text_tokenizer: TextTokenizer, video_tokenizer: VideoTokenizer,
                 fps: float = 8.0, sampling: SamplingConfig | None = None, caption_grammar: str | None = None):
        if generator.config.codebook_size != video_tokenizer.vocab_size:
            raise ValueError(f"generator predicts {generator.config.codebook_size} codes but the video tokenizer has "
                             f"{video_tokenizer.vocab_size}; pair the generator with the tokenizer it was trained on")
        if generator.config.text_vocab_size < text_tokenizer.vocab_size:
            raise ValueError("the text tokenizer's vocabulary is larger than the generator's text embedding")
        self.generator = generator.eval()
        self.text_tokenizer = text_tokenizer
        self.video_tokenizer = video_tokenizer.eval()
        self.fps = float(fps)
        self.sampling = sampling or SamplingConfig()  # what a call samples with unless told otherwise
        if caption_grammar not in (None, *CAPTION_GRAMMARS):
            raise ValueError(f"unknown caption grammar {caption_grammar!r}; use one of {CAPTION_GRAMMARS} or none")
        self.caption_grammar = caption_grammar  # prompts that break it are refused: the model cannot draw them

    # -- loading and saving
    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None, device: str | torch.device = "cpu") -> "TokVidPipeline":
        """No argument: the bundled default model (shapes-v1 stories). Otherwise a bundled name or a directory."""
        directory = resolve_pipeline_dir(name_or_dir)
        settings = read_config_json(directory, FORMAT, "export one with train/train_generator.py", PIPELINE_FILE)
        sampling = config_from_fields(SamplingConfig, settings.get("defaults", {}), FORMAT,
                                      directory / PIPELINE_FILE, partial=True)
        generator = Generator.from_pretrained(directory / "generator").to(device)
        text_tokenizer = TextTokenizer.from_pretrained(directory / "text_tokenizer")
        video_tokenizer = VideoTokenizer.from_pretrained(directory / "video_tokenizer", device=device)
        return cls(generator, text_tokenizer, video_tokenizer, fps=settings.get("fps", 8.0), sampling=sampling,
                   caption_grammar=settings.get("caption_grammar"))

    def save_pretrained(self, directory: str | Path) -> None:
        save_pipeline(directory, self.generator, self.text_tokenizer, self.video_tokenizer, self.fps, self.sampling,
                      self.caption_grammar)

    # -- generation
    def __call__(self, prompt: str, num_frames: int = 17, seed: int = 0, **options) -> VideoOutput:
        """One prompt held for the whole video of num_frames frames (the first frame included).

        Options: SamplingConfig fields, negative_prompt, prime_frames (an image or frames to continue),
        progress(done, total), strict (a ValueError instead of a PromptWarning for words the model never
        saw or a prompt longer than it reads)."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a whole number >= 1, got {num_frames!r}")
        segments = validate_segments([(prompt, max(num_frames - 1, 1))])
        return self._generate(segments, total_frames=num_frames, seed=seed, **options)

    def story(self, segments, seed: int = 0, **options) -> VideoOutput:
        """A list of (prompt, frames): each prompt governs its frames; the video has 1 + sum(frames) frames."""
        segments = validate_segments(segments)
        return self._generate(segments, total_frames=1 + sum(f for _, f in segments), seed=seed, **options)

    def check_story(self, segments: list[tuple[str, int]]) -> None:
        """A ValueError when the story breaks the pipeline's caption grammar (if it has one)."""
        if self.caption_grammar == "scenes":
            from .scenes import check_scene_story

            try:
                check_scene_story(segments, unit=1)
            except ValueError as error:
                raise ValueError(f"this model draws shapes-v2 scenes (docs/scenes.md): {error}") from None

    def check_prompts(self, prompts: list[str], strict: bool = False) -> None:
        """Warn (PromptWarning), or with strict raise ValueError, about what of the prompts the model cannot read."""
        problems = [problem for prompt in dict.fromkeys(prompts) for problem in self.text_tokenizer.prompt_problems(prompt)]
        if problems and strict:
            raise ValueError("; ".join(problems))
        for problem in problems:
            warnings.warn(problem, PromptWarning, stacklevel=4)

    def _generate(self, segments, total_frames: int, seed: int, negative_prompt: str | None = None,
                  prime_frames: np.ndarray | None = None, progress: Callable[[int, int], None] | None = None,
                  strict: bool = False, **overrides) -> VideoOutput:
        """segments: an already validated story (the public entry points validate it)."""
        settings = with_options(self.sampling, overrides)
        self.check_story(segments)
        self.check_prompts([p for p, _ in segments] + ([negative_prompt] if negative_prompt else []), strict)
        tc = self.video_tokenizer.temporal_compression
        device = next(self.generator.parameters()).device
        prime_codes = self._encode_prime(prime_frames, device) if prime_frames is not None else None
        prime_chunks = 0 if prime_codes is None else prime_codes.shape[1]
        story_chunks = num_chunks_for_frames(total_frames, tc)
        owners = chunk_segments([f for _, f in segments], tc)[:story_chunks]
        # primed videos continue after the prime's last frame, so the story's leading chunk is not generated
        owners = [0] * prime_chunks + (owners[1:] if prime_chunks else owners)
        with warnings.catch_warnings():  # a cut prompt was reported by check_prompts already
            warnings.simplefilter("ignore", PromptWarning)
            prompt_ids = self.text_tokenizer.batch([p for p, _ in segments], length=self.generator.config.text_length)
            negative = None if negative_prompt is None else self.text_tokenizer.batch(
                [negative_prompt], length=self.generator.config.text_length).expand(len(owners), -1)[None].to(device)
        text = prompt_ids[torch.tensor(owners)].unsqueeze(0).to(device)
        generator = torch.Generator(device=device).manual_seed(int(seed))
        codes = sample(self.generator, text, len(owners), config=settings, negative_text=negative,
                       prime_codes=prime_codes, generator=generator, progress=progress)
        if settings.redraw_first_frame and prime_codes is None and codes.shape[1] > 1:
            codes = redraw_first_latent(codes, self.video_tokenizer)
        video = self.video_tokenizer.decode(codes, chunk_latents=DECODE_CHUNK_LATENTS)
        frames = tensor_to_frames(video[0])
        wanted = total_frames + (prime_chunks - 1) * tc if prime_chunks else total_frames
        return VideoOutput(frames=frames[:wanted], fps=self.fps, codes=codes[0].cpu(), segments=segments)

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
        if not (directory / PIPELINE_FILE).exists():
            raise ValueError(f"bundled model {name!r} is not in this installation ({directory}); reinstall tokvid "
                             f"(or train it: train/recipe_{name}.py --install)")
        return directory
    directory = Path(name)
    if not (directory / PIPELINE_FILE).is_file():
        raise ValueError(f"unknown model {name!r}: give a bundled name ({', '.join(BUNDLED_PIPELINES)}) or a "
                         "pipeline directory (with pipeline.json) exported by train/train_generator.py")
    return directory


def save_pipeline(directory: str | Path, generator: Generator, text_tokenizer: TextTokenizer,
                  video_tokenizer: VideoTokenizer, fps: float = 8.0, sampling: SamplingConfig | None = None,
                  caption_grammar: str | None = None) -> None:
    """Write a pipeline directory that TokVidPipeline.from_pretrained loads; its pipeline.json states every
    sampling option, so a later change of a default leaves the pipeline's behaviour as it was."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator.save_pretrained(directory / "generator")
    text_tokenizer.save_pretrained(directory / "text_tokenizer")
    video_tokenizer.save_pretrained(directory / "video_tokenizer")
    settings = {"fps": float(fps), "defaults": asdict(sampling or SamplingConfig())}
    if caption_grammar is not None:
        settings["caption_grammar"] = caption_grammar
    write_config_json(directory, FORMAT, settings, PIPELINE_FILE)
