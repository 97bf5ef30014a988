"""Videos (a manifest or a folder) -> token shards. Same flags as the `tokvid-encode` console script.

    python tokenizer/encode.py --tokenizer general --manifest clips.jsonl --out shards/
"""
from tokvid.cli import encode_entry

if __name__ == "__main__":
    encode_entry()
