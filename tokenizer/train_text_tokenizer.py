"""Train the SentencePiece text tokenizer on a manifest's captions (or a file of captions, one a line).

    python tokenizer/train_text_tokenizer.py --manifest data/manifest.jsonl --out runs/text_tokenizer
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tokvid.models.text_tokenizer import manifest_captions, train_text_tokenizer


def read_manifest_items(path: str) -> list[dict]:
    """Manifest items; uses tokvid.manifest when present (JSONL and CSV), plain JSONL otherwise."""
    try:
        from tokvid.manifest import read_manifest
    except ImportError:
        read_manifest = None
    if read_manifest is not None:
        return read_manifest(path)
    items = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number} is not JSON ({error})") from error
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="manifest .jsonl/.csv whose captions and story prompts to learn")
    source.add_argument("--captions", help="text file with one caption per line")
    parser.add_argument("--out", required=True, help="directory for text_tokenizer.model + config.json")
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=16, help="ids per prompt incl. bos/eos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.manifest:
            captions = manifest_captions(read_manifest_items(args.manifest))
        else:
            captions = Path(args.captions).read_text(encoding="utf-8").splitlines()
        tokenizer = train_text_tokenizer(captions, args.out, vocab_size=args.vocab_size,
                                         max_length=args.max_length, seed=args.seed)
    except (ValueError, OSError) as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    print(f"text tokenizer with {tokenizer.vocab_size} pieces from {len(set(captions))} captions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
