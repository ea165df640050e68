"""Command-line flags generated from a `Config`'s fields: every field is a flag with its type, default and help.

A flag the user does not give is absent from the parsed arguments (not set to its default), so a config can be
layered: `--config-json` or a resumed run's config first, then the flags given on top, then the config's own
defaults for the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Literal, get_args, get_origin

from albert_core.config_base import Config, field_types, help_of, optional_inner
from albert_core.errors import UserError


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type[Config],
    *,
    skip: tuple[str, ...] = (),
    aliases: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """One flag per field of `cls` (`--max-seq-len` for `max_seq_len`), `aliases` adding other spellings."""
    group = parser.add_argument_group(f"{cls.kind()} (every field; defaults shown)")
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, _ = optional_inner(hints[f.name])
        flags = [f"--{f.name.replace('_', '-')}", *(aliases or {}).get(f.name, ())]
        default = _default(f)
        help = help_of(f).replace("%", "%%")
        if default is dataclasses.MISSING:
            help = f"{help} (required)"
        elif default is not None and "(default" not in help:  # None: the help says what happens
            help = f"{help} (default: {_shown(default)})" if help else f"default: {_shown(default)}"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help}
        if tp is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(tp) is Literal:
            choices = get_args(tp)
            group.add_argument(*flags, choices=choices, type=type(choices[0]), **kwargs)
        elif tp in (int, float, str):
            group.add_argument(*flags, type=tp, metavar=f.name.upper(), **kwargs)
        elif tp is dict or get_origin(tp) is dict:
            group.add_argument(*flags, type=_json_object, metavar="JSON", **kwargs)
        # other field types (the sweep's grids) have flags of their own


def config_from_args(cls: type[Config], args: argparse.Namespace, base: dict[str, Any] | None = None) -> Any:
    """`base` (e.g. --config-json) with the flags given on top; the config's defaults fill the rest."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls.from_dict({**(base or {}), **given})


def json_flag(text: str | None, flag: str = "--config-json") -> dict[str, Any]:
    """A JSON object given on the command line, {} when absent."""
    if text is None:
        return {}
    try:
        return _json_object(text)
    except ValueError as e:
        raise UserError(f"{flag}: {e}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _shown(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)
