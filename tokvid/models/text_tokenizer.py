"""Prompt text -> fixed-length id sequences, with a SentencePiece BPE model trained on the captions.

No downloaded text encoder exists here, so the vocabulary is learnt from the caption corpus and
the generator learns its own text embedding. Ids are fixed (pad=0, unk=1, bos=2, eos=3) so a
generator config can rely on them.
"""
from __future__ import annotations

import io
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm
import torch

from tokvid.persistence import ArtefactFormat, read_config_json, write_config_json

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FORMAT = ArtefactFormat(tag="tokvid-text-tokenizer-v1", what="text tokenizer",
                        legacy_tags={"model_type": "tokvid_text_tokenizer"})
MODEL_FILE = "text_tokenizer.model"


class PromptWarning(UserWarning):
    """A prompt the model can only partly read: words it never saw, or more text than it takes."""


def prompt_words(text: str) -> list[str]:
    """The words of a prompt as the tokenizer folds them (NFKC, case-folded), punctuation dropped."""
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


def train_text_tokenizer(captions: Iterable[str], out_dir: str | Path | None = None, vocab_size: int = 256,
                         max_length: int = 16, seed: int = 0) -> "TextTokenizer":
    """Train a BPE SentencePiece model on `captions` (order and duplicates don't matter).

    Same captions and arguments give a byte-identical model. Saved to `out_dir` when given.
    """
    if isinstance(captions, str):
        raise ValueError("captions must be an iterable of caption strings, not one string; wrap it in a list")
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8 (got {vocab_size}); 256-1024 suits a caption corpus")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 to hold bos, one piece and eos (got {max_length})")
    corpus = sorted({" ".join(str(c).split()) for c in captions} - {""})
    if not corpus:
        raise ValueError("no non-empty captions to train the text tokenizer on; check the manifest's captions")
    model = io.BytesIO()
    # The trainer's RNG is process-global; seeding right before training keeps the model reproducible.
    spm.set_random_generator_seed(int(seed))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=model, vocab_size=int(vocab_size),
            # Unigram collapses to single characters on small corpora; BPE keeps whole caption words.
            model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            # Case-folding: "A Red circle" and "a red circle" are the same prompt.
            normalization_rule_name="nmt_nfkc_cf", num_threads=1, minloglevel=2,
        )
    except RuntimeError as error:
        raise ValueError(f"SentencePiece training failed ({error}); try a larger vocab_size or more captions") from error
    words = {word for caption in corpus for word in prompt_words(caption)}
    tokenizer = TextTokenizer(model.getvalue(), max_length=max_length, words=words)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def manifest_captions(items: Iterable[dict]) -> list[str]:
    """All prompts in manifest items: their "caption", or every "prompt" of their "story"."""
    captions = []
    for number, item in enumerate(items, start=1):
        if isinstance(item.get("caption"), str):
            captions.append(item["caption"])
        elif isinstance(item.get("story"), list):
            for segment in item["story"]:
                if not isinstance(segment, dict) or not isinstance(segment.get("prompt"), str):
                    raise ValueError(f"manifest item {number}: each story segment needs a \"prompt\" string")
                captions.append(segment["prompt"])
        else:
            raise ValueError(f"manifest item {number} has neither a \"caption\" string nor a \"story\" list")
    return captions


class TextTokenizer:
    """Encodes prompts to `[bos, pieces..., eos]`, at most `max_length` ids, padded with `pad_id` in batches.

    `words`: the words of the captions it was trained on (recorded by train_text_tokenizer; None for a
    tokenizer saved before they were), so that a prompt's unknown words can be named."""

    def __init__(self, model_bytes: bytes, max_length: int = 16, words: Iterable[str] | None = None):
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 to hold bos, one piece and eos (got {max_length})")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(bytes(model_bytes))
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"not a SentencePiece model ({error}); train one with train_text_tokenizer") from error
        if min(processor.pad_id(), processor.bos_id(), processor.eos_id()) < 0:
            raise ValueError("the SentencePiece model needs pad, bos and eos ids; train it with train_text_tokenizer")
        self._model_bytes = bytes(model_bytes)
        self._processor = processor
        self._max_length = int(max_length)
        self.words = None if words is None else frozenset(words)

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def pad_id(self) -> int:
        return self._processor.pad_id()

    @property
    def bos_id(self) -> int:
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def max_length(self) -> int:
        return self._max_length

    def encode(self, prompt: str) -> list[int]:
        """`[bos, pieces..., eos]`; prompts longer than `max_length` are cut (with a warning), keeping eos."""
        return self._encode(prompt, self._max_length)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, ignoring pad/bos/eos."""
        specials = {self.pad_id, self.bos_id, self.eos_id}
        return self._processor.decode([int(i) for i in ids if int(i) not in specials])

    def batch(self, prompts: Sequence[str], length: int | None = None) -> torch.LongTensor:
        """LongTensor (n, length) of encoded prompts padded with `pad_id`; `length` defaults to `max_length`."""
        if isinstance(prompts, str):
            raise ValueError("batch() takes a list of prompts; for one prompt pass [prompt]")
        length = self._max_length if length is None else int(length)
        if length < 3:
            raise ValueError(f"length must be >= 3 to hold bos, one piece and eos (got {length})")
        if len(prompts) == 0:
            raise ValueError("batch() needs at least one prompt")
        ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            encoded = self._encode(prompt, min(length, self._max_length))
            ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.long)
        return ids

    def null_ids(self, length: int | None = None) -> list[int]:
        """The unconditional text (what an empty prompt would be): bos, eos, then pads.

        Used for classifier-free guidance.
        """
        length = self._max_length if length is None else int(length)
        if length < 2:
            raise ValueError(f"length must be >= 2 to hold bos and eos (got {length})")
        return [self.bos_id, self.eos_id] + [self.pad_id] * (length - 2)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `text_tokenizer.model` and `config.json` into `directory`."""
        known = {} if self.words is None else {"words": sorted(self.words)}
        write_config_json(directory, FORMAT, {"max_length": self._max_length, "vocab_size": self.vocab_size,
                                              "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
                                              **known})
        (Path(directory) / MODEL_FILE).write_bytes(self._model_bytes)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "TextTokenizer":
        """Load a directory written by `save_pretrained`."""
        model_path = Path(directory) / MODEL_FILE
        hint = ("expected text_tokenizer.model + config.json written by TextTokenizer.save_pretrained; "
                "train one with tokenizer/train_text_tokenizer.py")
        config = read_config_json(directory, FORMAT, hint)
        if not model_path.is_file():
            raise ValueError(f"{directory} is not a text tokenizer directory: no {MODEL_FILE} ({hint})")
        if not isinstance(config.get("max_length"), int):
            raise ValueError(f"{Path(directory) / 'config.json'} lacks an integer max_length ({hint})")
        return cls(model_path.read_bytes(), max_length=config["max_length"], words=config.get("words"))

    def prompt_problems(self, prompt: str) -> list[str]:
        """What of `prompt` this tokenizer cannot pass on, one line each: words its training captions never
        had (naming the words it knows), and text beyond max_length (saying how many words fit)."""
        words = prompt_words(prompt) if isinstance(prompt, str) else []
        if not words:
            raise ValueError(f"prompt {prompt!r} has no words; describe the video, e.g. \"a red circle moves right\"")
        problems = []
        unknown = [] if self.words is None else sorted(set(words) - self.words, key=words.index)
        if unknown:
            problems.append(f"this model never saw {', '.join(repr(w) for w in unknown)} in {prompt!r}; the words "
                            f"it knows: {' '.join(sorted(self.words))}")
        limit = self._max_length - 2
        if len(self._processor.encode(prompt)) > limit:
            fit = next(n for n in range(len(words), -1, -1) if len(self._processor.encode(" ".join(words[:n]))) <= limit)
            problems.append(f"prompt {prompt!r} is too long for this model: it reads {fit} of its {len(words)} words "
                            f"({limit} text pieces); the rest is cut")
        return problems

    def _encode(self, prompt: str, limit: int) -> list[int]:
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError("empty prompt; describe the video, e.g. \"a red circle moves right\"")
        pieces = self._processor.encode(prompt)
        if len(pieces) + 2 > limit:
            warnings.warn(f"prompt {prompt!r} has {len(pieces)} text pieces; cut to the {limit - 2} that fit",
                          PromptWarning, stacklevel=3)
            pieces = pieces[: limit - 2]
        return [self.bos_id, *pieces, self.eos_id]
