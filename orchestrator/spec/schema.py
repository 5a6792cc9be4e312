"""Experiment specs: YAML -> validated :class:`Spec` variants, with errors naming the key path.

A spec file may hold a ``grid:`` of key paths to value lists; it expands into one variant per
combination (``dataset.train_size: [8, 32, 128]``); a key joining paths with commas sets them
together (:mod:`orchestrator.spec.key_paths`). ``--set key.path=value`` overrides are
applied before expansion; values are read as YAML (``--set training.epochs=5``).

Attack, defence and analysis sections are the entries of
:data:`orchestrator.spec.stage_registry.STAGES`, filled by importing :mod:`orchestrator.stages`
(which imports this module, so this module never imports it). A caller that parses specs with
such sections imports ``orchestrator.stages`` first, as the ``run`` and ``tune`` commands do.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.fingerprint import file_fingerprint
from orchestrator.spec.folder import import_from, resolve_paths, spec_folder
from orchestrator.spec.hashing import stable_hash
from orchestrator.spec.key_paths import SpecError, grid_variants, set_path
from orchestrator.spec.stage_registry import STAGES
from tasks.models import MODELS, ModelConfig
from tasks.params import (
    FieldError,
    ParamError,
    build,
    check,
    check_seed,
    convert,
    one_line,
    to_dict,
)
from tasks.registry import UnknownComponentError
from tasks.training import TrainConfig
from tasks.unlearning import UNLEARNING, ForgetConfig


class SpecFileError(SpecError):
    """The spec file itself is unreadable (missing, a folder, binary, not a mapping); the
    message starts with the file's path."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str = "digits"
    # The first pool_size training samples are the private pool; the rest is public data.
    pool_size: int | None = None
    # N: samples drawn (seeded) from the pool to train theta; null = the whole pool.
    train_size: int | None = None
    # The ``files`` dataset (a user's own data): the NPZ, CSV or Parquet file (local path or
    # pyarrow URI), the test file of tabular data, and its label column.
    path: str | None = None
    test: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.name == "files":
            if not self.path:
                raise FieldError("path", "required for dataset 'files': an .npz of x_train, "
                                         "y_train, x_test, y_test, or a .csv/.parquet file "
                                         "(with test: and label:)")
            # Workers may run elsewhere: local paths travel absolute (the spec loader joined
            # the file's relative ones to its folder; what is still relative: the cwd).
            for name in ("path", "test"):
                value = getattr(self, name)
                if value is not None and not isinstance(value, str):
                    raise FieldError(name, f"expected a path or URI, got {value!r}")
                if value and "://" not in value:
                    object.__setattr__(self, name, str(Path(value).expanduser().resolve()))
        elif self.path or self.test or self.label:
            given = next(k for k in ("path", "test", "label") if getattr(self, k))
            raise FieldError(given, f"only the 'files' dataset reads files; {self.name!r} is "
                                    "a registered dataset read from the data root")
        # Upper bounds depend on the data: plan_core checks them (tasks.splits).
        check("pool_size", self.pool_size, low=1, integer=True, optional=True)
        check("train_size", self.train_size, low=1, integer=True, optional=True)
        if (self.pool_size is not None and self.train_size is not None
                and self.train_size > self.pool_size):
            raise FieldError("train_size", f"must be at most pool_size ({self.pool_size}), "
                                           f"got {self.train_size}")


    def identity(self) -> Any:
        """What names the data in artifact keys: the registered name, or the user's files
        with a fingerprint of their content (a changed file is a different dataset)."""
        if self.name != "files":
            return self.name
        return {"files": [file_fingerprint(p) for p in (self.path, self.test) if p],
                "label": self.label}

    def determinant(self) -> dict[str, Any]:
        """The section as artifact keys hold it (keys made before ``files`` existed stay)."""
        out = {"name": self.name, "pool_size": self.pool_size, "train_size": self.train_size}
        if self.name == "files":
            out["data"] = self.identity()
        return out

    def load(self, data_root: str | None = None):
        """The dataset this section names (``files``: the user's own files)."""
        from tasks.data import load_dataset

        if self.name == "files":
            return load_dataset("files", data_root, path=self.path, test=self.test,
                                label=self.label)
        return load_dataset(self.name, data_root)


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

    def __post_init__(self) -> None:
        # Negative or infinite demands make Ray fail (or wait forever) after it started.
        check("cpus", self.cpus, low=0)
        check("gpus", self.gpus, low=0)
        for name, amount in self.custom.items():
            check(f"custom.{name}", amount, low=0)


@dataclass(frozen=True)
class ResourcesSpec:
    train: TaskResources = TaskResources()
    unlearn: TaskResources = TaskResources()
    attack: TaskResources = TaskResources()
    trial: TaskResources = TaskResources()
    # Drives a Ray Data pipeline whose map tasks ask for ``attack``'s resources (docs/CLUSTER.md)
    pipeline: TaskResources = TaskResources(cpus=0.0)
    # Retries of a task whose worker died or raised a transient error.
    max_retries: int = 3

    def __post_init__(self) -> None:
        check("max_retries", self.max_retries, low=0, integer=True)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICES = "auto, cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class RuntimeSpec:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    requests_per_task: int = 8  # forget requests unlearned in one Ray task
    deterministic: bool = True

    def __post_init__(self) -> None:
        if not _DEVICE.fullmatch(self.device):
            raise FieldError("device", f"must be one of {DEVICES}, got {self.device!r}")
        check("requests_per_task", self.requests_per_task, low=1, integer=True)


def available_devices() -> list[str]:
    """The torch devices of this machine (``cpu`` always)."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def check_device(runtime: RuntimeSpec, resources: ResourcesSpec) -> None:
    """Refuse a device this machine lacks, unless the spec's tasks ask Ray for GPUs: then the
    cluster holds them, and the run's resource check against the cluster decides."""
    device = runtime.device
    if device in ("auto", "cpu"):
        return
    if device.startswith("cuda") and any(
            getattr(resources, f.name).gpus > 0 for f in dataclasses.fields(resources)
            if isinstance(getattr(resources, f.name), TaskResources)):
        return
    have = available_devices()
    if device not in have:
        raise ParamError("runtime.device", f"{device!r} does not exist on this machine; "
                                           f"available: {', '.join(have)}")


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


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` -> (key path, the value read as YAML)."""
    if "=" not in text:
        raise SpecError(f"--set {text}: expected key.path=value")
    key, _, raw = text.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise SpecError(f"--set {text}: the value is not valid YAML "
                        f"({_yaml_problem(err)})") from None
    if not key.strip():
        raise SpecError(f"--set {text}: expected key.path=value")
    return key.strip(), value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``--set`` overrides in place; errors name the override."""
    for text in overrides:
        key, value = parse_override(text)
        try:
            set_path(data, key, value)
        except SpecError as err:
            raise SpecError(f"--set {text}: {err}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where."""
    problem = getattr(err, "problem", None) or one_line(str(err))
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


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


def _pair_model(data: Mapping[str, Any]) -> dict | None:
    """A spec auditing a brought pair trains its shadow models with the pair's architecture
    unless ``model:`` says otherwise (``{factory: ...}`` is the registered ``factory``)."""
    pair = data.get("pair")
    model = pair.get("model") if isinstance(pair, Mapping) else None
    if not isinstance(model, Mapping):
        return None
    if "factory" in model and "name" not in model:
        return {"name": "factory", **model}
    return dict(model)


def _seeds(data: Mapping[str, Any]) -> tuple[int, ...]:
    """``seed: 3`` or ``seeds: [0, 1]``: integers in [0, 2**32), each once."""
    if "seeds" in data:
        raw = data["seeds"]
        if not isinstance(raw, list) or not raw:
            raise ParamError("seeds", f"expected a non-empty list of integers, got {raw!r}")
        paths = [f"seeds[{i}]" for i in range(len(raw))]
    else:
        raw, paths = [data.get("seed", 0)], ["seed"]
    seeds = []
    for value, path in zip(raw, paths):
        seed = convert(int, value, path)
        try:
            check_seed(path, seed)
        except FieldError:
            raise ParamError(path, f"must be an integer in [0, 2**32), got {value!r}") from None
        seeds.append(seed)
    if len(set(seeds)) != len(seeds):
        raise ParamError("seeds", f"each seed may appear once, got {raw!r}")
    return tuple(seeds)


def build_variant(data: Mapping[str, Any], local_devices: bool = True) -> Spec:
    """Validate one variant (no grid left) into a Spec. ``local_devices=False`` skips the
    check that ``runtime.device`` exists here (a worker rebuilding a spec the driver checked:
    its GPUs are what Ray gave the task)."""
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
        seeds = _seeds(data)
        borrowed = "model" not in data and _pair_model(data) is not None
        where = "pair.model" if borrowed else "model"  # errors name the key the user wrote
        name, mparams = _flat_component(data.get("model", _pair_model(data) or {"name": "mlp"}),
                                        where, "name")
        model = ModelConfig(name, mparams)
        try:
            MODELS.get(name)
        except UnknownComponentError as err:
            raise ParamError(f"{where}.name", str(err)) from None
        model.typed_params(where)
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
        resources = build(ResourcesSpec, data.get("resources"), "resources")
        runtime = build(RuntimeSpec, data.get("runtime"), "runtime")
        if local_devices:
            check_device(runtime, resources)
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
            resources=resources,
            runtime=runtime,
            stages=stages,
            raw=copy.deepcopy(dict(data)),
        )
    except ParamError as err:
        raise SpecError(one_line(str(err))) from None


def expand(data: Mapping[str, Any], overrides: list[str] = (),
           local_devices: bool = True) -> list[Spec]:
    """Apply overrides, expand the grid, validate every variant (see :func:`build_variant`)."""
    if not isinstance(data, Mapping):
        raise SpecError(f"<root>: a spec is a mapping of sections, got {data!r}")
    data = copy.deepcopy(dict(data))
    apply_overrides(data, overrides)
    # Paths still relative came from --set (the spec file's are joined to its folder by
    # load_spec): a user typing on the command line means the current folder.
    data = resolve_paths(data, Path.cwd())
    grid = data.pop("grid", None) or {}
    data.pop("description", None)
    return [build_variant(variant, local_devices) for variant in grid_variants(data, grid)]


def read_spec_file(path: str | Path) -> Mapping[str, Any]:
    """The YAML mapping of a spec file, or a SpecFileError saying why it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"{path}: spec file not found") from None
    except IsADirectoryError:
        raise SpecFileError(f"{path}: is a folder, not a spec file") from None
    except UnicodeDecodeError:
        raise SpecFileError(f"{path}: not a text file (a spec is UTF-8 YAML)") from None
    except OSError as err:
        raise SpecFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecFileError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if data is None:
        raise SpecFileError(f"{path}: the spec file is empty")
    if not isinstance(data, Mapping):
        raise SpecFileError(f"{path}: a spec is a mapping of sections, got a "
                            f"{type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise SpecFileError(f"{path}: section names must be strings, got {bad[0]!r}")
    return data


def read_spec_beside(path: str | Path) -> dict[str, Any]:
    """The spec file's mapping with its relative file paths joined to its folder, which is
    made importable (the user's factories and methods beside it; ``orchestrator.spec.folder``
    ships them to the workers)."""
    data = read_spec_file(path)
    folder = spec_folder(path)
    import_from(folder)
    return resolve_paths(data, folder)


def load_spec(path: str | Path, overrides: list[str] = ()) -> list[Spec]:
    return expand(read_spec_beside(path), list(overrides))


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    return to_dict(dataclasses.replace(spec, raw={}))

