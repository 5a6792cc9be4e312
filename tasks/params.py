"""Typed parameter blocks: plain dataclasses, built from YAML dicts with errors naming the key.

Every pluggable component (model, unlearning method, attack, defence) declares its settings as a
dataclass; :func:`build` turns a mapping into it, rejecting unknown keys and ill-typed values with
a :class:`ParamError` whose ``path`` names the offending key (``unlearning[1].lr``).
"""

from __future__ import annotations

import dataclasses
import math
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


class FieldError(ValueError):
    """A range check of one field, raised in ``__post_init__``; :func:`build` prefixes the
    dataclass's own key path, so the message names the full key (``unlearning[1].lr``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _join_relative(path: str, rel: str) -> str:
    """``attacks.a`` + ``config.lr`` or ``[0].lr``: a nested error's path below ``path``."""
    if not rel:
        return path
    if not path or rel.startswith("["):
        return f"{path}{rel}"
    return f"{path}.{rel}"


SEED_LIMIT = 2**32  # numpy and torch seed generators take seeds in [0, 2**32)


def check(name: str, value: Any, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, integer: bool = False,
          optional: bool = False) -> None:
    """Raise :class:`FieldError` unless ``value`` is a finite number in the range.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``; ``integer`` also asks
    for a whole number; ``optional`` lets ``None`` through. ``check("lr", lr, low=0,
    low_open=True)`` -> ``lr: must be > 0, got -1.0``.
    """
    if value is None and optional:
        return
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(name, f"must be an integer, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(name, f"must be a number, got {value!r}")
    elif not math.isfinite(value):
        raise FieldError(name, f"must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise FieldError(name, f"must be {_range_text(low, high, low_open, high_open)}, "
                               f"got {value!r}")


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    return f"{'<' if high_open else '<='} {high:g}"


def check_seed(name: str, value: Any, *, optional: bool = False) -> None:
    """A seed: an integer in [0, 2**32)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise FieldError(name, f"must be an integer in [0, 2**32), got {value!r}")


def check_each(name: str, values: Any, **limits: Any) -> None:
    """:func:`check` on every item of a list (``hidden[1]: must be >= 1, got 0``)."""
    for i, v in enumerate(values or ()):
        check(f"{name}[{i}]", v, **limits)


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
        if len(errors) == 1:  # ``X | None``: X's own error names the exact key and range
            raise errors[0]
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
    except FieldError as err:  # __post_init__ range checks of one field
        raise ParamError(_join_relative(path, err.field), err.message) from None
    except ParamError as err:  # a nested build inside __post_init__, relative to this one
        raise ParamError(_join_relative(path, err.path), err.message) from None
    except ValueError as err:  # other __post_init__ checks
        raise ParamError(path, one_line(str(err))) from None


def one_line(text: str) -> str:
    """Error text on one line (YAML and plugin errors span several)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def key_settings(config: Any) -> dict:
    """:func:`to_dict` of a config as result keys see it: a field added after results were
    keyed, listed with its default in the class's ``KEYED_IF_CHANGED``, enters the key only
    when set to another value, so adding it leaves the rows already written theirs."""
    out = to_dict(config)
    for name, default in getattr(type(config), "KEYED_IF_CHANGED", {}).items():
        if out.get(name) == default:
            out.pop(name)
    return out


def to_dict(obj: Any) -> Any:
    """A dataclass as plain JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
