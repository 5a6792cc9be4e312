"""The ``search:`` block of a spec: what ``unlearn-audit tune`` searches and how.

A search spec is an ordinary experiment spec (dataset, model, training, forget, unlearning...)
plus a ``search:`` section::

    search:
      objective: inversion          # an entry of orchestrator.search_objectives.OBJECTIVES
      attack: {iterations: 1000}    # the objective's base configuration (its Config class)
      targets: 8                    # forget requests the search scores every trial on
      heldout: 8                    # further requests only the best configuration sees
      space:                        # key path -> distribution
        attack.lr: {loguniform: [1.0e-3, 0.3]}
        attack.restarts: {choice: [1, 2, 5, 8]}
        unlearning.0.lr: {uniform: [1.0e-4, 1.0e-2]}   # any key path of the experiment spec
        attack.iterations: {int: [100, 1000], step: 100}
      metrics: [{name: psnr, direction: maximize}]      # two or more: a Pareto search
      sampler: {name: tpe, seed: 0, startup_trials: 10} # or {name: random, seed: 0}
      scheduler: {name: asha, metric: matching_loss, mode: min, grace_period: 100,
                  max_t: 1000, reduction_factor: 3}     # optional; time_attr is "step"
      budget: {trials: 40, time_s: null}
      concurrency: 2                # trials at once; resources.trial gives each its share

Space keys starting with ``attack.`` set a field of the objective's configuration; every other
key path sets a value of the experiment spec itself (models are then trained per trial, through
the artifact store, so equal settings are trained once). Every error names its key path.

Conditional dimensions: ``when: {KEY: value}`` (or ``{KEY: [v1, v2]}``) makes a dimension exist
only in trials whose choice dimension KEY (another key of ``space``) took one of those values;
otherwise the trial does not sample it and the objective uses its base setting::

    attack.model: {choice: [dt, rf]}
    attack.dt_max_leaf_nodes: {int: [5, 100], when: {attack.model: dt}}
    attack.rf_n_estimators: {int: [50, 500], when: {attack.model: rf}}

Such a space is sampled define-by-run (``study.ask()`` then ``suggest_*``, every condition's
choice before the dimensions it gates); TPE models each parameter on the trials that sampled it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.spec import (
    Spec,
    SpecError,
    _set_path,
    expand,
    parse_override,
    read_spec_file,
    stable_hash,
)
from tasks.params import ParamError, build, convert, to_dict

ATTACK_PREFIX = "attack."
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


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Literal["maximize", "minimize"] = "maximize"


@dataclass(frozen=True)
class SamplerSpec:
    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    startup_trials: int = 10  # TPE: random trials before the model-based ones
    multivariate: bool = False  # TPE only


@dataclass(frozen=True)
class SchedulerSpec:
    name: Literal["asha"] = "asha"
    metric: str = ""  # an intermediate metric the objective reports
    mode: Literal["min", "max"] = "min"
    grace_period: int = 1  # in the objective's steps (inversion: iterations)
    max_t: int = 100
    reduction_factor: float = 3.0

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("metric: required (an intermediate metric of the objective)")
        if self.grace_period < 1 or self.max_t < self.grace_period:
            raise ValueError("need 1 <= grace_period <= max_t")
        if self.reduction_factor <= 1:
            raise ValueError("reduction_factor must be > 1")


@dataclass(frozen=True)
class BudgetSpec:
    trials: int = 20
    time_s: float | None = None  # wall-clock budget of one tune invocation

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError("trials must be at least 1")
        if self.time_s is not None and self.time_s <= 0:
            raise ValueError("time_s must be positive")


@dataclass(frozen=True)
class _RawSearch:
    """The block as written; ``space`` and ``attack`` are checked separately."""

    objective: str
    space: dict[str, Any]
    attack: dict[str, Any] = field(default_factory=dict)
    targets: int = 8
    heldout: int = 8
    metrics: list[Metric] = field(default_factory=list)
    sampler: SamplerSpec = SamplerSpec()
    scheduler: SchedulerSpec | None = None
    budget: BudgetSpec = BudgetSpec()
    concurrency: int = 1
    # Split the targets of one trial into this many Ray tasks (objectives without
    # intermediate reports; a scheduled trial stays one vectorised program).
    fanout: int = 1
    baseline: bool = True  # also score the unsearched configuration on the held-out targets


@dataclass(frozen=True)
class SearchSpec:
    objective: str
    dimensions: tuple[Dimension, ...]
    attack: dict[str, Any]
    targets: int
    heldout: int
    metrics: tuple[Metric, ...]
    sampler: SamplerSpec
    scheduler: SchedulerSpec | None
    budget: BudgetSpec
    concurrency: int
    fanout: int
    baseline: bool

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1

    @property
    def directions(self) -> list[str]:
        return [m.direction for m in self.metrics]

    @property
    def conditional(self) -> bool:
        """Some dimension exists only for some values of another (``when:``)."""
        return any(d.when for d in self.dimensions)

    def fingerprint(self) -> str:
        """What must not change between a search and its --resume (space and objective)."""
        return stable_hash({"objective": self.objective, "metrics": to_dict(self.metrics),
                            "space": [_dimension_dict(d) for d in self.dimensions],
                            "attack": self.attack, "targets": self.targets})


@dataclass(frozen=True)
class SearchPlan:
    """A parsed search spec: the base experiment, its raw mapping, and the search block."""

    base: Spec
    raw: dict[str, Any]  # the experiment part, after --set overrides, without ``search``
    search: SearchSpec

    def trial_spec(self, params: Mapping[str, Any]) -> Spec:
        """The experiment a trial with these (key path -> value) settings runs on."""
        spec_params = {k: v for k, v in params.items() if not k.startswith(ATTACK_PREFIX)}
        if not spec_params:
            return self.base
        data = copy.deepcopy(self.raw)
        for key, value in spec_params.items():
            _set_path(data, key, value)
        (spec,) = expand(data)
        return spec

    def attack_settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return attack_settings(self.search.attack, params)


def attack_settings(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The objective's settings with every ``attack.a.b`` parameter set (nested paths allowed:
    ``attack.strengths.pruning``)."""
    out = copy.deepcopy(dict(base))
    for key, value in params.items():
        if key.startswith(ATTACK_PREFIX):
            _set_path(out, key[len(ATTACK_PREFIX):], value)
    return out


def _dimension_dict(dim: Dimension) -> dict[str, Any]:
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


def _order_conditions(dims: list[Dimension], path: str) -> list[Dimension]:
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
            raise ParamError(path, f"expected exactly one of {', '.join(KINDS)} (or type:)")
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


def parse_search(data: Any, path: str = "search") -> SearchSpec:
    """Validate a ``search:`` block (without checking key paths against the experiment)."""
    from orchestrator.search_objectives import OBJECTIVES
    from tasks.registry import UnknownComponentError

    raw = build(_RawSearch, data, path)
    try:
        objective = OBJECTIVES.get(raw.objective)
    except UnknownComponentError as err:
        raise ParamError(f"{path}.objective", str(err)) from None
    build(objective.Config, raw.attack, f"{path}.attack")
    if not raw.space:
        raise ParamError(f"{path}.space", "declare at least one key path to search")
    dims = []
    config_fields = {f.name for f in dataclasses.fields(objective.Config) if f.init}
    for key, value in raw.space.items():
        dpath = f"{path}.space.{key}"
        dim = parse_dimension(key, value, dpath)
        if key.startswith(ATTACK_PREFIX):
            name = key[len(ATTACK_PREFIX):].split(".")[0]
            if name not in config_fields:
                raise ParamError(dpath, f"the {raw.objective} configuration has no field "
                                        f"{name!r}; fields: {', '.join(sorted(config_fields))}")
            for v in dim.sample_values():
                try:
                    build(objective.Config, attack_settings(raw.attack, {key: v}), "")
                except ParamError as err:
                    raise ParamError(dpath, f"{v!r} is not a valid value: "
                                            f"{err.message}") from None
        dims.append(dim)
    dims = _order_conditions(dims, f"{path}.space")
    metrics = tuple(raw.metrics) or (Metric(objective.default_metric,
                                            objective.metrics[objective.default_metric]),)
    for i, m in enumerate(metrics):
        if m.name not in objective.metrics:
            raise ParamError(f"{path}.metrics[{i}].name",
                             f"{raw.objective} reports {', '.join(sorted(objective.metrics))}; "
                             f"got {m.name!r}")
    if len({m.name for m in metrics}) != len(metrics):
        raise ParamError(f"{path}.metrics", "each metric may appear once")
    if raw.scheduler is not None and raw.scheduler.metric not in objective.intermediate:
        known = ", ".join(objective.intermediate) or "(none: it cannot be scheduled)"
        raise ParamError(f"{path}.scheduler.metric", f"{raw.objective} reports intermediate "
                                                     f"{known}; got {raw.scheduler.metric!r}")
    if raw.targets < 1:
        raise ParamError(f"{path}.targets", "must be at least 1")
    if raw.heldout < 0:
        raise ParamError(f"{path}.heldout", "must be 0 or more")
    if raw.concurrency < 1:
        raise ParamError(f"{path}.concurrency", "must be at least 1")
    if raw.fanout < 1:
        raise ParamError(f"{path}.fanout", "must be at least 1")
    return SearchSpec(raw.objective, tuple(dims), dict(raw.attack), raw.targets, raw.heldout,
                      metrics, raw.sampler, raw.scheduler, raw.budget, raw.concurrency,
                      raw.fanout, raw.baseline)


def load_search(data: Mapping[str, Any], overrides: list[str] = ()) -> SearchPlan:
    """A spec mapping (with ``search:``) and --set overrides -> :class:`SearchPlan`.

    Raises :class:`SpecError` whose message starts with the offending key path.
    """
    data = copy.deepcopy(dict(data))
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value)
    if "search" not in data:
        raise SpecError("search: required key is missing (tune needs a search: section)")
    if data.get("grid"):
        raise SpecError("grid: a search spec has no grid; search over the key paths instead")
    block = data.pop("search")
    data.pop("grid", None)
    try:
        search = parse_search(block)
    except ParamError as err:
        raise SpecError(str(err)) from None
    variants = expand(data)
    if len(variants) != 1:  # pragma: no cover - no grid, so one variant
        raise SpecError("search: the experiment must describe exactly one variant")
    base = variants[0]
    data.pop("description", None)
    # Every spec-level key path must give a valid experiment at the edges of its range.
    for dim in search.dimensions:
        if dim.key.startswith(ATTACK_PREFIX):
            continue
        for value in dim.sample_values():
            trial = copy.deepcopy(data)
            try:
                _set_path(trial, dim.key, value)
                expand(trial)
            except SpecError as err:
                raise SpecError(f"search.space.{dim.key}: {value!r} gives an invalid spec "
                                f"({err})") from None
    plan = SearchPlan(base, data, search)
    from orchestrator.search_objectives import OBJECTIVES

    objective = OBJECTIVES.get(search.objective)
    if objective.own_models:  # no forget requests: the objective checks the spec itself
        try:
            objective().check_spec(base)
        except ValueError as err:
            raise SpecError(str(err)) from None
        return plan
    needed = search.targets + search.heldout
    if base.forget.kind != "class_share" and base.forget.count < needed:
        raise SpecError(f"forget.count: the search needs targets + heldout = {needed} forget "
                        f"requests, the spec makes {base.forget.count}")
    return plan


def load_search_file(path, overrides: list[str] = ()) -> SearchPlan:
    return load_search(read_spec_file(path), overrides)
