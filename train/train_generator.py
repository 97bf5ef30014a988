"""Train the block-causal MaskGIT generator on token shards with DeepSpeed.

    deepspeed --num_gpus 2 train/train_generator.py --deepspeed_config ds_config.json \
        --data SHARDS --out RUN --max-steps N --seed S [--resume auto] [--preset tiny]

Also runs as a plain process (`python train/train_generator.py ...`); on CPU set DS_ACCELERATOR=cpu.
Without --text-tokenizer a SentencePiece model is trained on the shards' prompts into RUN/text_tokenizer.
Writes RUN/metrics.jsonl, RUN/tb, RUN/checkpoints and, at the end, a pipeline directory RUN/export.
"""
import argparse
import sys

from common import run_training_script, training_parser

from tokvid.models.generator import GENERATOR_PRESETS
from tokvid.training.trainers import train_token_generator

RETIRED = {"--digit-mixture": "the digit-mixture head lost to the one-product digit head; see docs/design-notes.md"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = training_parser(__doc__.split("\n\n")[0], num_frames=17, presets=list(GENERATOR_PRESETS),
                             retired=RETIRED)
    parser.add_argument("--data", required=True, help="token shard directory (tokvid-encode output)")
    parser.add_argument("--text-tokenizer", default=None, help="text tokenizer directory to use instead of training one")
    parser.add_argument("--video-tokenizer", default=None,
                        help="tokenizer that made the shards, for the exported pipeline (default: as recorded)")
    parser.add_argument("--text-vocab-size", type=int, default=256, help="vocabulary of a newly trained text tokenizer")
    parser.add_argument("--text-length", type=int, default=16, help="prompt ids per chunk of a new text tokenizer")
    parser.add_argument("--window-chunks", type=int, default=4, help="chunks each chunk attends to (itself included)")
    parser.add_argument("--head", choices=["digits", "codes"], default=None,
                        help="output head: one softmax per FSQ digit (default for FSQ tokenizers) or one softmax "
                             "over all codes (default otherwise)")
    parser.add_argument("--token-patch", type=int, default=1,
                        help="tokens per side of the patch one transformer position holds (2: 2x2 tokens, about "
                             "4x fewer positions and a cheaper step; must divide the token grid)")
    parser.add_argument("--image-ratio", type=float, default=None,
                        help="share of steps that train on a batch of still images (one-chunk items) instead of "
                             "videos, 0..1 (default: every item once per epoch, in mixed batches)")
    parser.add_argument("--init-from", default=None,
                        help="generator or pipeline directory to start from (fine-tuning; same configuration)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_training_script(args, lambda config, ds_config: train_token_generator(
        config, ds_config, args.data, preset=args.preset, num_frames=args.num_frames,
        text_tokenizer=args.text_tokenizer, video_tokenizer=args.video_tokenizer,
        text_vocab_size=args.text_vocab_size, text_length=args.text_length, window_chunks=args.window_chunks,
        digit_head=None if args.head is None else args.head == "digits",
        token_patch=args.token_patch, init_from=args.init_from, image_ratio=args.image_ratio),
        throughput_unit="tokens")


if __name__ == "__main__":
    sys.exit(main())
