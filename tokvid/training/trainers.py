"""What each training adds to the engine: its model, its data set, its loss and its export.

`train_video_tokenizer` trains a VideoTokenizer on the clips of a manifest; `train_token_generator`
trains a Generator on token shards and exports a pipeline. The train/ scripts parse flags and call
one of them; the engine (engine.py) does the rest.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from tokvid.training.distributed import setup_distributed
from tokvid.training.engine import TrainingConfig, TrainingResult, run_training


def train_video_tokenizer(config: TrainingConfig, ds_config: dict, manifest: str | Path, preset: str = "small",
                          size: int = 64, num_frames: int = 17, fps: float | None = None,
                          quantizer: str | None = None, fsq_levels: str | None = None,
                          cache_bytes: int = 1 << 30, init_from: str | Path | None = None,
                          decoder_only: bool = False, code_noise: float = 0.0, spatial_compression: int | None = None,
                          clamped_loss: bool = False) -> TrainingResult:
    """Train a VideoTokenizer on the clips of a manifest; exports config.json + model.safetensors.

    init_from (a tokenizer directory or bundled name) starts from trained weights; the model this run
    builds must have the same configuration. decoder_only (needs init_from) trains the decoder alone:
    the codes stay exactly those of init_from, so its token shards and generators remain valid.
    code_noise trains the decoder on codes of which this share is one FSQ digit step off (see
    VideoTokenizer.training_loss): with decoder_only, a decoder for a generator's slightly wrong codes.
    spatial_compression overrides the preset's pixels per token side (see spatial_compression_overrides).
    clamped_loss scores the output as decode returns it (VideoTokenizerConfig.clamped_loss); it may differ
    from init_from's, since it changes no code.
    """
    from tokvid.datasets import ClipDataset, clip_frame_count
    from tokvid.models.video_tokenizer import VideoTokenizer, check_code_noise

    if decoder_only and init_from is None:
        raise ValueError("--decoder-only needs --init-from: it fine-tunes the decoder of a trained tokenizer")

    model_config = _tokenizer_config(preset, quantizer, fsq_levels, spatial_compression, clamped_loss)
    if code_noise:
        check_code_noise(model_config, code_noise, "--code-noise")
    dataset = ClipDataset(manifest, num_frames=num_frames, size=size,
                          temporal_compression=model_config.temporal_compression, fps=fps, cache_bytes=cache_bytes)

    def export(model: nn.Module, directory: Path) -> None:
        from dataclasses import replace

        standalone = VideoTokenizer(replace(model.config, vq_sync_codebook=False))
        standalone.load_state_dict(model.state_dict())
        standalone.save_pretrained(directory)

    start_weights = None if init_from is None else _tokenizer_start_weights(init_from, model_config)

    def build_model() -> VideoTokenizer:
        model = VideoTokenizer(model_config)
        if start_weights is not None:
            model.load_state_dict(start_weights)
        if decoder_only:
            model.freeze_encoder()
        return model

    return run_training(config, ds_config, build_model, dataset,
                        lambda model, batch, generator: model.training_loss(batch, code_noise, generator),
                        clip_frame_count, export,
                        run_info={"model_config": asdict(model_config), "manifest": str(manifest),
                                  "init_from": None if init_from is None else str(init_from),
                                  "decoder_only": decoder_only, "code_noise": code_noise})


def _tokenizer_config(preset: str, quantizer: str | None, fsq_levels: str | None, spatial_compression: int | None,
                      clamped_loss: bool):
    """The preset with the run's overrides; VQ codebooks are EMA buffers: without sync every rank would
    learn its own codebook."""
    from tokvid.models.video_tokenizer import video_tokenizer_preset

    overrides = {} if quantizer is None else {"quantizer": quantizer}
    if clamped_loss:
        overrides["clamped_loss"] = True
    if fsq_levels:
        try:
            overrides["fsq_levels"] = tuple(int(level) for level in str(fsq_levels).split(","))
        except ValueError:
            raise ValueError(f"--fsq-levels must be comma-separated integers like 8,5,5,5, got {fsq_levels!r}") from None
    if spatial_compression is not None:
        overrides.update(spatial_compression_overrides(video_tokenizer_preset(preset), spatial_compression))
    return video_tokenizer_preset(preset, **overrides, vq_sync_codebook=True)


def spatial_compression_overrides(preset_config, spatial_compression: int) -> dict:
    """Config overrides that give `preset_config` another spatial compression: one per-frame level per
    factor of two, each new level twice as wide as the last (as the preset's own levels grow), and fewer
    levels for less compression."""
    from tokvid.models.video_tokenizer import frame_levels

    levels = frame_levels(spatial_compression, preset_config.stem_patch, "--spatial-compression")
    widths = list(preset_config.frame_channels[:levels])
    while len(widths) < levels:
        widths.append(2 * widths[-1])
    return {"spatial_compression": spatial_compression, "frame_channels": tuple(widths)}


def _tokenizer_start_weights(source: str | Path, model_config) -> dict[str, torch.Tensor]:
    """The weights of the video tokenizer `source` (a directory or bundled name), checked against the
    configuration this run builds (trainers set vq_sync_codebook, exports clear it; how the decoder is
    trained may change)."""
    from tokvid.models.video_tokenizer import DECODER_TRAINING_FIELDS, VideoTokenizer

    return _checked_start_weights(VideoTokenizer.from_pretrained(source), source, model_config, "tokenizer",
                                  "the --preset, --quantizer, --fsq-levels and --spatial-compression",
                                  ignore=("vq_sync_codebook", *DECODER_TRAINING_FIELDS))


def train_token_generator(config: TrainingConfig, ds_config: dict, shards_dir: str | Path, preset: str = "small",
                          num_frames: int = 17, text_tokenizer: str | Path | None = None,
                          video_tokenizer: str | Path | None = None, text_vocab_size: int = 256,
                          text_length: int = 16, window_chunks: int = 4,
                          digit_head: bool | None = None, token_patch: int = 1,
                          init_from: str | Path | None = None, image_ratio: float | None = None) -> TrainingResult:
    """Train a Generator on token shards; exports a pipeline directory (generator, both tokenizers).

    digit_head predicts an FSQ code's digits independently instead of one softmax over codes
    (GeneratorConfig.digit_head); None = a digit head exactly when the video tokenizer is FSQ. token_patch
    > 1 puts a token_patch x token_patch patch of tokens in each transformer position: a cheaper step.

    init_from (a generator or pipeline directory) starts from trained weights instead of random ones
    (fine-tuning, e.g. with a lower --lr); the model this run builds must have the same configuration.

    Without `text_tokenizer`, one is trained on the shards' prompts into RUN/text_tokenizer.
    `video_tokenizer` (default: the name recorded in the shards) goes into the exported pipeline.

    image_ratio (joint image-video training, Phenaki-style): the share of steps that train on a batch of
    images (one-chunk items) instead of videos, each kind in its own order (MixedBatchLoader); None: every
    item once per epoch, images and videos in mixed batches.
    """
    from tokvid.datasets import TokenChunkDataset, chunk_token_count
    from tokvid.models.generator import Generator
    from tokvid.pipeline import save_pipeline
    from tokvid.shards import TokenShards
    from tokvid.story import num_chunks_for_frames

    shards = TokenShards(shards_dir)
    tokenizer_name, video_model = _shards_video_tokenizer(shards, shards_dir, video_tokenizer)
    text_dir = Path(text_tokenizer) if text_tokenizer else Path(config.out_dir) / "text_tokenizer"
    text_model = _prompt_tokenizer(shards, text_dir, train=not text_tokenizer, vocab_size=text_vocab_size,
                                   max_length=text_length, seed=config.seed)
    max_chunks = num_chunks_for_frames(num_frames, video_model.temporal_compression)
    start = None if init_from is None else _start_generator(init_from)
    window_chunks = _fine_tuning_window(window_chunks, max_chunks, start)
    model_config = _generator_config(preset, video_model, tokenizer_name, text_model, shards.info["grid"],
                                     window_chunks, digit_head, token_patch)
    dataset = TokenChunkDataset(shards, text_model, max_chunks)
    make_loader = None if image_ratio is None else _mixed_loader_factory(shards, text_model, max_chunks, image_ratio)
    start_weights = None if start is None else _checked_start_weights(
        start, init_from, model_config, "generator", "the preset, --window-chunks, --head, --token-patch and tokenizers")
    code_counts = torch.from_numpy(shards.code_counts(video_model.vocab_size))  # what sampling may draw

    def build_model() -> Generator:
        model = Generator(model_config)
        if start_weights is not None:
            model.load_state_dict(start_weights)
        model.code_counts.copy_(code_counts)
        return model

    def loss(model: nn.Module, batch: dict, generator: torch.Generator):
        return model.training_loss(batch["codes"], batch["text"], batch["chunk_valid"], generator=generator)

    def export(model: nn.Module, directory: Path) -> None:
        save_pipeline(directory, model, text_model, video_model, fps=shards.info.get("fps") or 8.0)

    return run_training(config, ds_config, build_model, dataset, loss, chunk_token_count,
                        export, run_info={"model_config": asdict(model_config), "shards": str(shards_dir),
                                          "init_from": None if init_from is None else str(init_from),
                                          "text_tokenizer": str(text_dir), "video_tokenizer": str(tokenizer_name),
                                          "image_ratio": image_ratio},
                        make_loader=make_loader)


def _mixed_loader_factory(shards, text_model, max_chunks: int, image_ratio: float):
    """A LoaderFactory of MixedBatchLoaders over the videos and images of `shards`, checked now."""
    from tokvid.mixed_dataset import MixedBatchLoader, image_slot_count, token_parts

    videos, images = token_parts(shards, text_model, max_chunks)
    image_slot_count(len(videos), len(images), image_ratio)

    def make_loader(batch_size: int, seed: int, rank: int, world_size: int, num_workers: int | None):
        return MixedBatchLoader(videos, images, image_ratio, batch_size, seed, rank, world_size, num_workers)
    return make_loader


def _generator_config(preset: str, video_model, video_name: str, text_model, grid, window_chunks: int,
                      digit_head: bool | None, token_patch: int):
    """The preset sized for the tokenizers and shards; FSQ codes are digit tuples, so they are embedded by
    digits (what is learnt is shared across neighbouring codes) and, unless told otherwise, predicted by a
    digit head: on shapes-v1 it learns colour and motion within the CPU budget where one softmax over all
    codes still draws only background (docs/design-notes.md)."""
    from tokvid.models.generator import generator_config_preset

    fsq = video_model.config.quantizer == "fsq"
    if digit_head and not fsq:
        raise ValueError(f"a digit head needs an FSQ video tokenizer; {video_name} uses "
                         f"{video_model.config.quantizer!r}: train with --head codes")
    height, width = grid
    return generator_config_preset(
        preset, codebook_size=video_model.vocab_size, text_vocab_size=text_model.vocab_size,
        text_length=text_model.max_length, chunk_height=height, chunk_width=width, window_chunks=window_chunks,
        text_pad_id=text_model.pad_id, text_bos_id=text_model.bos_id, text_eos_id=text_model.eos_id,
        code_levels=list(video_model.config.fsq_levels) if fsq else None,
        digit_head=fsq if digit_head is None else digit_head, token_patch=token_patch)


def _shards_video_tokenizer(shards, shards_dir: str | Path, name: str | Path | None) -> tuple[str, nn.Module]:
    """The video tokenizer that made `shards` (`name`, default the one they record), checked against them."""
    from tokvid.models.video_tokenizer import VideoTokenizer

    name = name or shards.info["tokenizer"]["name"]
    try:
        model = VideoTokenizer.from_pretrained(name)
    except ValueError as error:
        raise ValueError(f"{error}; pass --video-tokenizer with the tokenizer that made {shards_dir}") from None
    shards.check_tokenizer(model)
    return str(name), model


def _prompt_tokenizer(shards, directory: Path, train: bool, vocab_size: int, max_length: int, seed: int):
    """The text tokenizer in `directory`; with train=True rank 0 first trains it on the shards' prompts (once:
    a resumed run finds it there)."""
    from tokvid.models.text_tokenizer import TextTokenizer, manifest_captions, train_text_tokenizer

    rank, _ = setup_distributed()
    if train and rank == 0 and not (directory / "config.json").is_file():
        train_text_tokenizer(manifest_captions(shards.meta), directory, vocab_size=vocab_size,
                             max_length=max_length, seed=seed)
    dist.barrier()
    return TextTokenizer.from_pretrained(directory)


def _start_generator(source: str | Path) -> nn.Module:
    """The generator in `source` (a generator or pipeline directory) that fine-tuning starts from."""
    from tokvid.models.generator import Generator

    directory = Path(source)
    return Generator.from_pretrained(directory / "generator" if (directory / "generator").is_dir() else directory)


def _fine_tuning_window(window_chunks: int, max_chunks: int, start: nn.Module | None) -> int:
    """The attention window the run builds: the requested one, capped by the chunks in a training clip.
    A fine-tune on clips shorter than the start's window keeps the start's window, as long as the two
    agree on every window these clips can fill; anything else stays a configuration mismatch."""
    window = min(window_chunks, max_chunks)
    if start is not None and min(start.config.window_chunks, max_chunks) == window:
        return start.config.window_chunks
    return window


def _checked_start_weights(start: nn.Module, source: str | Path, model_config, what: str, settings: str,
                           ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """start's weights, or a ValueError naming every config field in which it differs from model_config."""
    ours, theirs = asdict(model_config), asdict(start.config)
    different = sorted(key for key in ours if ours[key] != theirs[key] and key not in ignore)
    if different:
        raise ValueError(f"--init-from {source}: its {what} differs from the one this run builds in {different}; "
                         f"use {settings} it was trained with")
    return start.state_dict()
