"""Token shards -> videos. Same flags as the `tokvid-decode` console script.

    python tokenizer/decode.py --tokenizer general --shards shards/ --out decoded/
"""
from tokvid.cli import decode_entry

if __name__ == "__main__":
    decode_entry()
