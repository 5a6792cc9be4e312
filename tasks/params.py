"""Typed parameter blocks: plain dataclasses, built from YAML dicts with errors naming the key.

Every pluggable component (model, unlearning method, attack, defence) declares its settings as a
dataclass; :func:`build` turns a mapping into it, rejecting unknown keys and ill-typed values with
a :class:`ParamError` whose ``path`` names the offending key (``unlearning[1].lr``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class ParamError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path
        self.message = message


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_describe(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ParamError(path, f"expected null, got {value!r}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(arg, value, path)
            except ParamError as err:
                errors.append(err)
        raise ParamError(path, f"expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ParamError(path, f"expected {_describe(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ParamError(path, f"expected {_describe(tp)}, got {value!r}")
        (item_tp, *_rest) = get_args(tp) or (Any,)
        items = [convert(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamError(path, f"expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (str, Any)
        return {str(k): convert(val_tp, v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ParamError(path, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-3 without a dot as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamError(path, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamError(path, f"expected a string, got {value!r}")
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def build(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ParamError."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ParamError(path, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            allowed = ", ".join(sorted(fields)) or "(no settings)"
            raise ParamError(_join(path, str(key)), f"unknown key; allowed: {allowed}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamError(_join(path, name), "required key is missing")
    try:
        return cls(**kwargs)
    except ValueError as err:  # __post_init__ range checks
        if isinstance(err, ParamError):
            raise
        raise ParamError(path, str(err)) from None


def to_dict(obj: Any) -> Any:
    """A dataclass as plain JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
