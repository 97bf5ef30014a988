"""One save/load convention for every artefact (video tokenizer, text tokenizer, generator, pipeline).

An artefact is a directory holding `config.json` — a `"format"` tag plus the fields of the artefact's
config dataclass — and its weights in `model.safetensors` (the text tokenizer keeps a SentencePiece
model instead, the pipeline three sub-directories). Configs outlive code, so a format says once:

- `later_fields`: fields added after the format's first release, each with the value that behaves as
  before; a config written without one loads with that value.
- `retired_fields`: fields whose option was measured, lost and removed (docs/design-notes.md), each with
  the one value the code still implements; a config that holds another value is refused with the reason.
- `legacy_tags`: how older releases tagged the format (the generator and text tokenizer once wrote
  `"model_type"`), still accepted when loading.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

Config = TypeVar("Config")


@dataclass(frozen=True)
class ArtefactFormat:
    tag: str                                   # the "format" value written into config.json
    what: str                                  # how errors name the artefact ("video tokenizer", ...)
    later_fields: dict[str, Any] = field(default_factory=dict)
    retired_fields: dict[str, Any] = field(default_factory=dict)
    legacy_tags: dict[str, str] = field(default_factory=dict)  # {key: value} older releases wrote instead


def read_config_json(directory: str | Path, fmt: ArtefactFormat, hint: str, filename: str = CONFIG_FILE) -> dict:
    """The fields of `directory/filename` without the format tag; ValueError (ending in `hint`, what the
    user should do) unless it is a JSON object tagged with `fmt`."""
    path = Path(directory) / filename
    if not path.is_file():
        raise ValueError(f"{directory} is not a {fmt.what} directory: no {filename}; {hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); {hint}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a JSON object of {fmt.what} settings; {hint}")
    tag = raw.pop("format", None)
    legacy = [raw.pop(key) == value for key, value in fmt.legacy_tags.items() if key in raw]
    if tag != fmt.tag and not any(legacy):
        raise ValueError(f"{path} is not a {fmt.what} config (no format {fmt.tag!r}); {hint}")
    return raw


def config_from_fields(config_class: type[Config], raw: dict, fmt: ArtefactFormat, source: str | Path,
                       partial: bool = False) -> Config:
    """Build `config_class` from saved fields: later fields filled in, retired ones checked and dropped.
    partial=True lets fields the source does not set take the class defaults (pipeline sampling options)."""
    raw = {**fmt.later_fields, **raw}
    for name, kept in fmt.retired_fields.items():
        if name in raw and raw.pop(name) != kept:
            raise ValueError(f"{source} sets {name}, an option retired from tokvid (docs/design-notes.md says "
                             f"what it measured); only {name}={kept!r} is still implemented: re-export with it, "
                             "or use the tokvid release that trained this model")
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown, missing = sorted(set(raw) - known), [] if partial else sorted(known - set(raw))
    required = [f.name for f in dataclasses.fields(config_class)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = sorted(set(missing) | {name for name in required if name not in raw})
    if unknown:
        raise ValueError(f"{source} has {fmt.what} settings this tokvid does not know: {unknown}; it comes from a "
                         "newer tokvid: upgrade tokvid or re-export it")
    if missing:
        raise ValueError(f"{source} lacks the {fmt.what} settings {missing}; re-export it with this tokvid")
    return config_class(**raw)


def write_config_json(directory: str | Path, fmt: ArtefactFormat, fields: dict, filename: str = CONFIG_FILE) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": fmt.tag, **fields}, indent=2) + "\n"
    (directory / filename).write_text(text, encoding="utf-8")


def save_model(directory: str | Path, fmt: ArtefactFormat, config: Any, module: torch.nn.Module) -> None:
    """config.json (format tag + the config dataclass) and model.safetensors (the state dict, on CPU)."""
    write_config_json(directory, fmt, dataclasses.asdict(config))
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(Path(directory) / WEIGHTS_FILE), metadata={"format": "pt"})


def load_config(directory: str | Path, config_class: type[Config], fmt: ArtefactFormat, hint: str) -> Config:
    return config_from_fields(config_class, read_config_json(directory, fmt, hint), fmt,
                              Path(directory) / CONFIG_FILE)


def load_weights(directory: str | Path, module: torch.nn.Module, fmt: ArtefactFormat,
                 missing_ok: tuple[str, ...] = ()) -> None:
    """Load model.safetensors into `module`; buffers named in missing_ok (recorded by later releases)
    keep their initial values when the file predates them."""
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{directory} is not a {fmt.what} directory: no {WEIGHTS_FILE}")
    state = load_file(str(path), device="cpu")
    own = module.state_dict()
    for name in missing_ok:
        state.setdefault(name, own[name])
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first_problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise ValueError(f"weights in {path} do not fit its config.json ({first_problem}); re-export them with "
                         "the tokvid version that trained them") from None
