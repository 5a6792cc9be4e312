"""Experiment specs: YAML -> validated :class:`Spec` variants, with errors naming the key path.

A spec file may hold a ``grid:`` of key paths to value lists; it expands into one variant per
combination (``dataset.train_size: [8, 32, 128]``). ``--set key.path=value`` overrides are
applied before expansion; values are read as YAML (``--set training.epochs=5``).

Attack, defence and analysis sections are the entries of
:data:`orchestrator.stage_registry.STAGES`, filled by importing :mod:`orchestrator.stages`
(which imports this module, so this module never imports it). A caller that parses specs with
such sections imports ``orchestrator.stages`` first, as the ``run`` and ``tune`` commands do.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.stage_registry import STAGES
from tasks.models import MODELS, ModelConfig
from tasks.params import ParamError, build, convert, to_dict
from tasks.registry import UnknownComponentError
from tasks.training import TrainConfig
from tasks.unlearning import UNLEARNING, ForgetConfig


class SpecError(ValueError):
    """A spec that cannot run; the message starts with the offending key path."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "digits"
    # The first pool_size training samples are the private pool; the rest is public data.
    pool_size: int | None = None
    # N: samples drawn (seeded) from the pool to train theta; null = the whole pool.
    train_size: int | None = None


@dataclass(frozen=True)
class UnlearningSpec:
    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def typed_params(self, path: str = "unlearning"):
        return build(UNLEARNING.get(self.method).Params, self.params, path)


@dataclass(frozen=True)
class TaskResources:
    cpus: float = 1.0
    gpus: float = 0.0  # fractional GPUs share memory without isolation (docs/CLUSTER.md)
    # Custom Ray resources a task needs, e.g. {"gpu_node": 1}.
    custom: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourcesSpec:
    train: TaskResources = TaskResources()
    unlearn: TaskResources = TaskResources()
    attack: TaskResources = TaskResources()
    trial: TaskResources = TaskResources()
    # Retries of a task whose worker died or raised a transient error.
    max_retries: int = 3


@dataclass(frozen=True)
class RuntimeSpec:
    device: str = "auto"  # auto | cpu | cuda
    requests_per_task: int = 8  # forget requests unlearned in one Ray task
    deterministic: bool = True


@dataclass(frozen=True)
class Spec:
    experiment: str
    seeds: tuple[int, ...] = (0,)
    dataset: DatasetSpec = DatasetSpec()
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    pretraining: TrainConfig | None = None
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    unlearning: tuple[UnlearningSpec, ...] = (UnlearningSpec("retrain"),)
    resources: ResourcesSpec = ResourcesSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    # Attack, defence and search sections, keyed by stage name (see STAGES).
    stages: dict[str, Any] = field(default_factory=dict)
    # The raw variant this spec was built from (flattened into every result row).
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def config_hash(self) -> str:
        return stable_hash(self.raw)

    def flat_config(self) -> dict[str, Any]:
        return flatten(self.raw, "cfg")


_CORE_KEYS = ("experiment", "seed", "seeds", "dataset", "model", "training", "pretraining",
              "forget", "unlearning", "resources", "runtime", "grid", "description")


def stable_hash(obj: Any, length: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def flatten(obj: Any, prefix: str) -> dict[str, Any]:
    """Nested mapping -> {"prefix.a.b": scalar}; lists become JSON strings (Parquet-friendly)."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(obj, default=str)
    else:
        out[prefix] = obj
    return out


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(k)]
                continue
            except (ValueError, IndexError):
                raise SpecError(f"{'.'.join(keys[:i + 1])}: no such list item") from None
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        if not isinstance(nxt, (dict, list)):
            raise SpecError(f"{'.'.join(keys[:i + 1])}: is a value, not a section")
        node = nxt
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected key.path=value")
    key, _, raw = text.partition("=")
    return key.strip(), yaml.safe_load(raw)


def _flat_component(data: Any, path: str, name_key: str) -> tuple[str, dict]:
    """``{name: mlp, hidden: [64]}`` -> ("mlp", {"hidden": [64]}); a bare string is a name."""
    if isinstance(data, str):
        return data, {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: expected a mapping with '{name_key}', got {data!r}")
    if name_key not in data:
        raise SpecError(f"{path}.{name_key}: required key is missing")
    rest = {k: v for k, v in data.items() if k != name_key}
    return str(data[name_key]), rest


def build_variant(data: Mapping[str, Any]) -> Spec:
    """Validate one variant (no grid left) into a Spec."""
    allowed = set(_CORE_KEYS) | set(STAGES.names())
    for key in data:
        if key not in allowed:
            hint = ("" if STAGES.names() else " (no attack section is registered: import "
                                               "orchestrator.stages before parsing specs)")
            raise SpecError(f"{key}: unknown key; allowed: {', '.join(sorted(allowed))}{hint}")
    try:
        if "experiment" not in data:
            raise ParamError("experiment", "required key is missing")
        experiment = data["experiment"]
        if not isinstance(experiment, str) or not experiment.replace("-", "").replace(
                "_", "").isalnum():
            raise ParamError("experiment", "expected a name of letters, digits, '-' and '_'")
        if "seed" in data and "seeds" in data:
            raise ParamError("seed", "give either seed or seeds, not both")
        seeds = data.get("seeds", [data.get("seed", 0)])
        seeds = tuple(convert(list[int], seeds, "seeds"))
        name, mparams = _flat_component(data.get("model", {"name": "mlp"}), "model", "name")
        model = ModelConfig(name, mparams)
        try:
            MODELS.get(name)
        except UnknownComponentError as err:
            raise ParamError("model.name", str(err)) from None
        model.typed_params("model")
        unlearning = []
        raw_unlearning = data.get("unlearning", [{"method": "retrain"}])
        if not isinstance(raw_unlearning, list) or not raw_unlearning:
            raise ParamError("unlearning", "expected a non-empty list of methods")
        for i, item in enumerate(raw_unlearning):
            method, params = _flat_component(item, f"unlearning[{i}]", "method")
            try:
                UNLEARNING.get(method)
            except UnknownComponentError as err:
                raise ParamError(f"unlearning[{i}].method", str(err)) from None
            entry = UnlearningSpec(method, params)
            entry.typed_params(f"unlearning[{i}]")
            unlearning.append(entry)
        stages = {}
        for stage in STAGES.names():
            if stage in data:
                # A section's settings: a dataclass, or any annotation (``attacks`` is a
                # mapping of names to entries).
                stages[stage] = convert(STAGES.get(stage).params, data[stage], stage)
        return Spec(
            experiment=experiment,
            seeds=seeds,
            dataset=build(DatasetSpec, data.get("dataset"), "dataset"),
            model=model,
            training=build(TrainConfig, data.get("training"), "training"),
            pretraining=(build(TrainConfig, data["pretraining"], "pretraining")
                         if data.get("pretraining") is not None else None),
            forget=build(ForgetConfig, data.get("forget"), "forget"),
            unlearning=tuple(unlearning),
            resources=build(ResourcesSpec, data.get("resources"), "resources"),
            runtime=build(RuntimeSpec, data.get("runtime"), "runtime"),
            stages=stages,
            raw=copy.deepcopy(dict(data)),
        )
    except ParamError as err:
        raise SpecError(str(err)) from None


def expand(data: Mapping[str, Any], overrides: list[str] = ()) -> list[Spec]:
    """Apply overrides, expand the grid, validate every variant."""
    data = copy.deepcopy(dict(data))
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value)
    grid = data.pop("grid", None) or {}
    if not isinstance(grid, Mapping):
        raise SpecError("grid: expected a mapping of key paths to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{key}: expected a non-empty list of values")
    data.pop("description", None)
    variants = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        variant = copy.deepcopy(data)
        for key, value in zip(keys, combo):
            try:
                _set_path(variant, key, value)
            except SpecError as err:
                raise SpecError(f"grid.{err}") from None
        variants.append(build_variant(variant))
    return variants


def read_spec_file(path: str | Path) -> Mapping[str, Any]:
    """The YAML mapping of a spec file, or a SpecError saying why it is not one."""
    path = Path(path)
    if not path.exists():
        raise SpecError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, Mapping):
        raise SpecError(f"{path}: a spec is a mapping of sections")
    return data


def load_spec(path: str | Path, overrides: list[str] = ()) -> list[Spec]:
    return expand(read_spec_file(path), list(overrides))


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    return to_dict(dataclasses.replace(spec, raw={}))

