"""Command-line flags made from a config dataclass, so a setting is named, typed and explained once.

A field becomes `--field-name` (or its metadata's `flag`; `flag=None` keeps it off the command line),
with its metadata's `help`, its type (bools get --x/--no-x, optional ints and floats take a number,
tuples take one value per element) and its metadata's `choices`. `config_flags_given` reads back the
fields whose flags were given, ready for `dataclasses.replace` or the config's constructor.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any


def flag_name(field: dataclasses.Field) -> str | None:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _argument_type(annotation) -> tuple[type, int | None]:
    """(element type, nargs) for a field's annotation: int | None -> (int, None); tuple[float, float] -> (float, 2)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _argument_type(inner)
    if origin is tuple:
        args = typing.get_args(annotation)
        return args[0], len(args)
    return annotation, None


def add_config_flags(parser: argparse.ArgumentParser | Any, config_class: type, *, use_defaults: bool = True,
                     default_note: str = "") -> None:
    """Add a flag per field of config_class. use_defaults=False leaves every flag at None when not given
    (its value then comes from elsewhere, e.g. a pipeline's own settings; default_note says where)."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        name = flag_name(field)
        if name is None:
            continue
        kind, nargs = _argument_type(hints[field.name])
        required = use_defaults and field.default is None and "default" not in field.metadata and \
            not _optional(hints[field.name])
        default = field.default if use_defaults and not required else None
        note = f" (default: {default_note or _shown(default)})" if not required else ""
        options = dict(dest=field.name, default=default, help=field.metadata.get("help", "") + note)
        if kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **options)
        else:
            parser.add_argument(name, type=kind, nargs=nargs, required=required,
                                choices=field.metadata.get("choices"), **options)


def config_flags_given(args: argparse.Namespace, config_class: type) -> dict:
    """{field: value} of the flags of config_class that hold a value (not None)."""
    values = {}
    for field in dataclasses.fields(config_class):
        value = getattr(args, field.name, None)
        if flag_name(field) is not None and value is not None:
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def _optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def _shown(value) -> str:
    if value is None:
        return "none"
    return " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


class _RetiredFlag(argparse.Action):
    """A removed flag: using it stops with one line that says why it went and what to use instead."""

    def __init__(self, option_strings, dest, reason: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.reason = reason

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: error: {option_string} was removed: {self.reason}", file=sys.stderr)
        sys.exit(2)


def add_retired_flags(parser: argparse.ArgumentParser | Any, reasons: dict[str, str]) -> None:
    """Flags that no longer exist, each with the reason (and the replacement) a user is told."""
    for flag, reason in reasons.items():
        parser.add_argument(flag, action=_RetiredFlag, reason=reason, dest=argparse.SUPPRESS)
