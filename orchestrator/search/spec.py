"""The ``search:`` block of a spec: what ``unlearn-audit tune`` searches and how.

A search spec is an ordinary experiment spec (dataset, model, training, forget, unlearning...)
plus a ``search:`` section::

    search:
      objective: inversion          # an objective (OBJECTIVES) or any attack (ATTACKS)
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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from orchestrator.search.space import Dimension, dimension_dict, order_conditions, parse_dimension
from orchestrator.spec.folder import resolve_paths
from orchestrator.spec.key_paths import set_path
from orchestrator.spec.schema import (
    Spec,
    SpecError,
    apply_overrides,
    expand,
    read_spec_beside,
    stable_hash,
)
from tasks.params import ParamError, build, check, check_seed, to_dict

__all__ = ["ATTACK_PREFIX", "BudgetSpec", "Metric", "SamplerSpec", "SchedulerSpec", "SearchPlan",
           "SearchSpec", "attack_settings", "load_search", "load_search_file", "parse_search"]

ATTACK_PREFIX = "attack."


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

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        check("startup_trials", self.startup_trials, low=0, integer=True)


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
        check("grace_period", self.grace_period, low=1, integer=True)
        check("max_t", self.max_t, low=self.grace_period, integer=True)
        check("reduction_factor", self.reduction_factor, low=1, low_open=True)


@dataclass(frozen=True)
class BudgetSpec:
    trials: int = 20
    time_s: float | None = None  # wall-clock budget of one tune invocation

    def __post_init__(self) -> None:
        check("trials", self.trials, low=1, integer=True)
        check("time_s", self.time_s, low=0, low_open=True, optional=True)


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
                            "space": [dimension_dict(d) for d in self.dimensions],
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
            set_path(data, key, value)
        # Trials run on workers; the driver checked the device when it loaded the spec.
        (spec,) = expand(data, local_devices=False)
        return spec

    def attack_settings(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return attack_settings(self.search.attack, params)


def attack_settings(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The objective's settings with every ``attack.a.b`` parameter set (nested paths allowed:
    ``attack.strengths.pruning``)."""
    out = copy.deepcopy(dict(base))
    for key, value in params.items():
        if key.startswith(ATTACK_PREFIX):
            set_path(out, key[len(ATTACK_PREFIX):], value)
    return out


def parse_search(data: Any, path: str = "search") -> SearchSpec:
    """Validate a ``search:`` block (without checking key paths against the experiment)."""
    from orchestrator.search.objectives import objective_class
    from tasks.registry import UnknownComponentError

    raw = build(_RawSearch, data, path)
    try:
        objective = objective_class(raw.objective)
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
    dims = order_conditions(dims, f"{path}.space")
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


def load_search(data: Mapping[str, Any], overrides: list[str] = (),
                data_root: str | None = None) -> SearchPlan:
    """A spec mapping (with ``search:``) and --set overrides -> :class:`SearchPlan`.
    ``data_root``: where the objective's checks read the dataset when one needs it.

    Raises :class:`SpecError` whose message starts with the offending key path.
    """
    data = copy.deepcopy(dict(data))
    apply_overrides(data, overrides)
    # The trials rebuild the spec from this mapping, on workers: every path in it absolute
    # (what --set gave relative: the current folder's).
    data = resolve_paths(data, os.getcwd())
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
                set_path(trial, dim.key, value)
                expand(trial)
            except SpecError as err:
                raise SpecError(f"search.space.{dim.key}: {value!r} gives an invalid spec "
                                f"({err})") from None
    plan = SearchPlan(base, data, search)
    from orchestrator.search.objectives import objective_class

    objective = objective_class(search.objective)
    if objective.own_models:  # no forget requests: the objective checks the spec itself
        try:
            objective().check_spec(base)
        except ValueError as err:
            raise SpecError(str(err)) from None
        return plan
    try:
        objective().check_config(base, objective().config(plan.attack_settings({})),
                                 data_root=data_root)
    except ValueError as err:
        raise SpecError(str(err)) from None
    needed = search.targets + search.heldout
    if base.forget.kind != "class_share" and base.forget.count < needed:
        raise SpecError(f"forget.count: the search needs targets + heldout = {needed} forget "
                        f"requests, the spec makes {base.forget.count}")
    return plan


def load_search_file(path, overrides: list[str] = (), data_root: str | None = None
                     ) -> SearchPlan:
    return load_search(read_spec_beside(path), overrides, data_root)
