"""Train a causal video tokenizer with DeepSpeed.

    deepspeed --num_gpus 2 train/train_tokenizer.py --deepspeed_config ds_config.json \
        --manifest M.jsonl --out RUN --max-steps N --seed S [--resume auto] [--preset tiny]
        [--init-from TOKENIZER [--decoder-only]]

Also runs as a plain process (`python train/train_tokenizer.py ...`); on CPU set DS_ACCELERATOR=cpu.
Writes RUN/metrics.jsonl, RUN/tb, RUN/checkpoints and, at the end, RUN/export (config.json + model.safetensors).
"""
import argparse
import sys

from common import run_training_script, training_parser

from tokvid.models.video_tokenizer import VIDEO_TOKENIZER_PRESETS
from tokvid.training.trainers import train_video_tokenizer

# 9 frames: every video of `tokvid-data shapes` (segments of 8 frames + the leading one) holds a clip
RETIRED = {"--local-codes": "local codes (a 1x1 encoder) lost on shapes-v1; see docs/design-notes.md"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = training_parser(__doc__.split("\n\n")[0], num_frames=9, presets=list(VIDEO_TOKENIZER_PRESETS),
                             retired=RETIRED)
    parser.add_argument("--manifest", required=True, help="JSONL/CSV manifest of videos and images")
    parser.add_argument("--size", type=int, default=64, help="square frame size of training clips")
    parser.add_argument("--fps", type=float, default=None, help="resample videos to this frame rate")
    parser.add_argument("--quantizer", choices=("fsq", "lfq", "vq"), default=None, help="override the preset's")
    parser.add_argument("--fsq-levels", default=None, help="override the preset's FSQ levels, e.g. 8,5,5,5")
    parser.add_argument("--spatial-compression", type=int, default=None,
                        help="pixels per token side instead of the preset's 8 (16: a quarter of the tokens)")
    parser.add_argument("--code-noise", type=float, default=0.0,
                        help="share of tokens the decoder sees one FSQ digit step off in training, so it draws "
                             "clean pictures from a generator's near-miss codes (with --decoder-only)")
    parser.add_argument("--clamped-loss", action="store_true",
                        help="score the output as decode returns it, clamped to [-1, 1]: sharper edges next to "
                             "black or saturated pixels (changes no code: fine with --decoder-only)")
    parser.add_argument("--cache-gb", type=float, default=1.0, help="decoded-clip cache per rank")
    parser.add_argument("--init-from", default=None,
                        help="tokenizer directory or bundled name to start from (fine-tuning; same configuration)")
    parser.add_argument("--decoder-only", action="store_true",
                        help="with --init-from: train the decoder alone, so every code stays as it was")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_training_script(args, lambda config, ds_config: train_video_tokenizer(
        config, ds_config, args.manifest, preset=args.preset, size=args.size, num_frames=args.num_frames,
        fps=args.fps, quantizer=args.quantizer, fsq_levels=args.fsq_levels, cache_bytes=int(args.cache_gb * 2**30),
        init_from=args.init_from, decoder_only=args.decoder_only,
        code_noise=args.code_noise,
        spatial_compression=args.spatial_compression, clamped_loss=args.clamped_loss), throughput_unit="frames")


if __name__ == "__main__":
    sys.exit(main())
