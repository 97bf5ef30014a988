"""Build the training clips of the bundled "general" video tokenizer from offline real footage.

    python tokenizer/prepare_general_data.py --out data/general --num-clips 1000 --frames 17 --size 64 --seed 0

Writes DIR/clip_XXXXX.mp4 (lossless) + DIR/manifest.jsonl. Logic: tokvid/footage.py.
"""
import argparse
import sys
import time

from tokvid.footage import write_general_dataset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-clips", type=int, default=1000, help="number of clips to write")
    parser.add_argument("--frames", type=int, default=17, help="frames per clip (1 + k*tc for the tokenizer)")
    parser.add_argument("--size", type=int, default=64, help="clip side in pixels (64 or 128)")
    parser.add_argument("--seed", type=int, default=0, help="clip i depends only on (seed, i)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        manifest = write_general_dataset(args.out, args.num_clips, args.frames, args.size, args.seed, progress=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_clips} clips and {manifest} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
