"""The ``space:`` of a search block: one :class:`Dimension` per searched key path.

``{loguniform: [lo, hi]}``, ``{uniform: ...}``, ``{int: [lo, hi], step: 2, log: false}`` or
``{choice: [a, b]}``; ``when: {KEY: value}`` makes a dimension conditional on a choice dimension
(see :mod:`orchestrator.search.spec`). Conditional spaces are sampled define-by-run by
:func:`suggest_params`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tasks.params import ParamError, convert, to_dict

__all__ = ["KINDS", "Dimension", "dimension_dict", "order_conditions", "parse_dimension",
           "suggest_params"]

KINDS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Dimension:
    """One searched key path and its distribution."""

    key: str
    kind: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    # Conditions (choice key, allowed values): the dimension exists only when all hold.
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, params: Mapping[str, Any]) -> bool:
        """Whether a trial with these (already sampled) parameters samples this dimension."""
        return all(key in params and params[key] in values for key, values in self.when)

    def distribution(self):
        import optuna.distributions as od

        if self.kind == "choice":
            return od.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return od.IntDistribution(int(self.low), int(self.high), log=self.log,
                                      step=int(self.step or 1))
        return od.FloatDistribution(float(self.low), float(self.high),
                                    log=self.kind == "loguniform", step=self.step)

    def sample_values(self) -> list[Any]:
        """Values at the edges of the space (used to validate the key path up front)."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


def dimension_dict(dim: Dimension) -> dict[str, Any]:
    # Unconditional dimensions hash as before ``when:`` existed (older studies still resume).
    out = to_dict(dim)
    if not dim.when:
        out.pop("when")
    return out


def _parse_when(data: Any, path: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not isinstance(data, Mapping) or not data:
        raise ParamError(path, f"expected a mapping {{choice key: value or [values]}}, "
                               f"got {data!r}")
    out = []
    for key, values in data.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ParamError(f"{path}.{key}", "expected a value or a non-empty list of values")
        out.append((str(key), tuple(values)))
    return tuple(out)


def order_conditions(dims: list[Dimension], path: str) -> list[Dimension]:
    """Check every ``when:`` and order the dimensions so that each comes after the choices it
    depends on (declaration order otherwise; YAML writers may sort the keys)."""
    by_key = {d.key: d for d in dims}
    for dim in dims:
        for cond, values in dim.when:
            parent = by_key.get(cond)
            where = f"{path}.{dim.key}.when.{cond}"
            if parent is None or parent.kind != "choice" or parent is dim:
                raise ParamError(where, "must name another choice dimension of the space")
            bad = [v for v in values if v not in parent.choices]
            if bad:
                raise ParamError(where, f"{bad[0]!r} is not one of its choices "
                                        f"{list(parent.choices)}")
    ordered: list[Dimension] = []
    placed: set[str] = set()
    while len(ordered) < len(dims):
        ready = [d for d in dims if d.key not in placed
                 and all(c in placed for c, _ in d.when)]
        if not ready:
            cycle = ", ".join(d.key for d in dims if d.key not in placed)
            raise ParamError(path, f"when: conditions form a cycle among {cycle}")
        for d in ready:
            ordered.append(d)
            placed.add(d.key)
    return ordered


def _number(value: Any, path: str) -> float:
    return convert(float, value, path)


def parse_dimension(key: str, data: Any, path: str) -> Dimension:
    """``{loguniform: [lo, hi]}``, ``{type: loguniform, low: lo, high: hi}``,
    ``{int: [lo, hi], step: 2, log: false}`` or ``{choice: [a, b]}`` (or a bare list)."""
    if isinstance(data, list):
        data = {"choice": data}
    if not isinstance(data, Mapping):
        raise ParamError(path, f"expected a distribution such as {{loguniform: [1e-3, 0.3]}} "
                               f"or {{choice: [a, b]}}, got {data!r}")
    data = dict(data)
    when = _parse_when(data.pop("when"), f"{path}.when") if "when" in data else ()
    kinds = [k for k in KINDS if k in data]
    if "type" in data:
        kind = data.pop("type")
        if kind not in KINDS:
            raise ParamError(f"{path}.type", f"expected one of {', '.join(KINDS)}, "
                                             f"got {kind!r}")
        if kinds:
            raise ParamError(path, f"give either type or {kinds[0]}, not both")
        bounds = None
    else:
        if len(kinds) != 1:
            nested = not kinds and any(isinstance(v, Mapping) for v in data.values())
            raise ParamError(path, f"expected exactly one of {', '.join(KINDS)} (or type:)"
                             + ("; a space key is one whole dotted path, such as attack.lr"
                                if nested else ""))
        kind = kinds[0]
        bounds = data.pop(kind)
    allowed = {"choice": {"choices"}, "int": {"low", "high", "step", "log"}}.get(
        kind, {"low", "high", "step"})
    for extra in data:
        if extra not in allowed:
            raise ParamError(f"{path}.{extra}", f"unknown key for a {kind} dimension; "
                                                f"allowed: {', '.join(sorted(allowed))}")
    if kind == "choice":
        choices = bounds if bounds is not None else data.get("choices")
        where = f"{path}.{'choice' if bounds is not None else 'choices'}"
        if not isinstance(choices, list) or not choices:
            raise ParamError(where, f"expected a non-empty list of values, got {choices!r}")
        for i, c in enumerate(choices):
            if not (c is None or isinstance(c, (bool, int, float, str))):
                raise ParamError(f"{where}[{i}]", "choices must be scalars (number, string, "
                                                  f"true/false, null), got {c!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ParamError(where, "choices must be distinct")
        return Dimension(key, "choice", choices=tuple(choices), when=when)
    if bounds is not None:
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ParamError(f"{path}.{kind}", f"expected [low, high], got {bounds!r}")
        low, high = bounds
        lpath = hpath = f"{path}.{kind}"
    else:
        for req in ("low", "high"):
            if req not in data:
                raise ParamError(f"{path}.{req}", "required key is missing")
        low, high = data["low"], data["high"]
        lpath, hpath = f"{path}.low", f"{path}.high"
    step = data.get("step")
    if kind == "int":
        low, high = convert(int, low, lpath), convert(int, high, hpath)
        step = convert(int, step, f"{path}.step") if step is not None else None
    else:
        low, high = _number(low, lpath), _number(high, hpath)
        step = _number(step, f"{path}.step") if step is not None else None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ParamError(lpath, f"need a finite low < high, got [{low}, {high}]")
    if step is not None and step <= 0:
        raise ParamError(f"{path}.step", "must be positive")
    log = convert(bool, data.get("log", False), f"{path}.log") if kind == "int" else False
    if (kind == "loguniform" or log) and low <= 0:
        raise ParamError(lpath, f"a log scale needs low > 0, got {low}")
    if kind == "loguniform" and step is not None:
        raise ParamError(f"{path}.step", "a log-uniform dimension takes no step")
    if log and step not in (None, 1):
        raise ParamError(f"{path}.step", "an integer log dimension takes no step")
    return Dimension(key, kind, low=low, high=high, step=step, log=log, when=when)




def suggest_params(trial, dimensions) -> dict[str, Any]:
    """Define-by-run sampling of a space with ``when:`` conditions: every dimension whose
    conditions hold on the values sampled before it, in declaration order."""
    params: dict[str, Any] = {}
    for dim in dimensions:
        if not dim.active(params):
            continue
        if dim.kind == "choice":
            params[dim.key] = trial.suggest_categorical(dim.key, list(dim.choices))
        elif dim.kind == "int":
            params[dim.key] = trial.suggest_int(dim.key, int(dim.low), int(dim.high),
                                                step=int(dim.step or 1), log=dim.log)
        else:
            params[dim.key] = trial.suggest_float(dim.key, float(dim.low), float(dim.high),
                                                  step=dim.step, log=dim.kind == "loguniform")
    return params

