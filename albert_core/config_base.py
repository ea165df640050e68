"""One mechanism for every typed config of the project: frozen dataclasses that check their own field types,
round-trip through dicts and JSON, reject unknown keys in one line, and carry a help text per field.

Why dataclasses and not pydantic models: the configs travel inside Ray tasks, Ray Train workers, checkpoints and
MLflow params, where plain frozen dataclasses pickle cheaply and compare by value; `albert_core` stays free of
anything but torch and numpy; and pydantic still builds the JSON schema of a Prefect flow's parameters from them
(it understands stdlib dataclasses), so a deployment's run form lists the fields. The CLI reads the same fields
(`flows.cli_options`), so a new field is a new flag without another edit.

    @dataclass(frozen=True)
    class JobConfig(Config):
        size: int = setting(3, "how many")

        def validate(self) -> None:  # cross-field rules; the types are checked before
            ...
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import numpy as np

from albert_core.errors import UserError

C = TypeVar("C", bound="Config")
HELP = "help"


def setting(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its help text (shown by `--help` and in the Prefect run form)."""
    if isinstance(default, list | dict | set):
        raise TypeError("use default_factory for mutable defaults")
    return dataclasses.field(default=default, metadata={HELP: help}, **kwargs)


class Config:
    """Base of the project's frozen config dataclasses (see the module docstring)."""

    # how `from_dict` names the config in its one-line error ("unknown <kind> keys: ...")
    config_kind: typing.ClassVar[str] = ""
    # pydantic (Prefect's parameter validation) refuses unknown keys too (a plain dict: no pydantic import here)
    __pydantic_config__: typing.ClassVar[dict[str, Any]] = {"extra": "forbid"}

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        self.validate()

    def validate(self) -> None:
        """Rules between fields, run after every field's type is checked."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise UserError(f"{cls.kind()} must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"unknown {cls.kind()} keys: {', '.join(unknown)} (known: {', '.join(known)})")
        missing = [name for name, f in known.items() if name not in data and _required(f)]
        if missing:
            raise UserError(
                f"{cls.kind()}: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
            )
        hints = field_types(cls)
        return cls(**{k: _from_plain(v, hints[k]) for k, v in data.items()})

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{cls.kind()} is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def kind(cls) -> str:
        return cls.config_kind or cls.__name__

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})


@cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (the modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get(HELP, "")


def optional_inner(tp: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, else (tp, False)."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _check_type(name: str, value: Any, tp: Any) -> None:
    inner, optional = optional_inner(tp)
    if value is None:
        if optional or tp is Any:
            return
        raise UserError(f"{name} must be given, got None")
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        if value not in choices:
            raise UserError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    elif inner is bool:
        if not isinstance(value, bool | np.bool_):
            raise UserError(f"{name} must be true or false, got {value!r}")
    elif inner is int:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise UserError(f"{name} must be a number, got {value!r}")
        if not _is_int(value):
            raise UserError(f"{name} must be an integer, got {value!r}")
    elif inner is float:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise UserError(f"{name} must be a number, got {value!r}")
    elif inner is str:
        if not isinstance(value, str):
            raise UserError(f"{name} must be a string, got {value!r}")
    elif origin in (dict,) or inner is dict:
        if not isinstance(value, dict):
            raise UserError(f"{name} must be a mapping, got {value!r}")
    elif origin in (tuple, list) or inner in (tuple, list):
        if not isinstance(value, tuple | list):
            raise UserError(f"{name} must be a list, got {value!r}")
    elif isinstance(inner, type) and dataclasses.is_dataclass(inner) and not isinstance(value, inner):
        raise UserError(f"{name} must be a {inner.__name__}, got {value!r}")


def _from_plain(value: Any, tp: Any) -> Any:
    """JSON values to field values: objects to nested configs, lists to tuples where the field is a tuple."""
    inner, _ = optional_inner(tp)
    if isinstance(value, dict) and isinstance(inner, type) and issubclass(inner, Config):
        return inner.from_dict(value)
    if isinstance(value, list) and (get_origin(inner) is tuple or inner is tuple):
        return tuple(value)
    return value
