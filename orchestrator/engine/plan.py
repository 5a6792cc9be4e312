"""Spec -> units: the smallest pieces of work worth a Ray task, each with a content key.

The core plan trains the originals (and theta_0 when the recipe pretrains) and unlearns every
forget request with every method; stage planners (attacks, defences) add units that depend on
those models. A unit whose rows are already in its table is skipped on rerun.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.spec.schema import Spec, stable_hash
from orchestrator.spec.stage_registry import STAGES
from orchestrator.store.artifacts import artifact_key
from tasks.data import Dataset
from tasks.params import to_dict
from tasks.splits import Selection, select_training_set
from tasks.unlearning import UNLEARNING, ForgetRequest, make_requests


@dataclass(frozen=True)
class Unit:
    key: str
    kind: str  # resource class from the spec: train | unlearn | attack | trial
    fn: str  # name in orchestrator.engine.units.UNIT_FUNCTIONS
    params: dict[str, Any]
    table: str  # the table whose rows mark this unit done
    row_keys: tuple[str, ...]
    deps: tuple[str, ...] = ()
    label: str = ""
    # Its function hands an output on to its dependants (orchestrator.store.handoff): one
    # whose output is gone runs again where a unit still to run needs it.
    hands_on: bool = False


@dataclass(frozen=True)
class ModelPair:
    """One (theta, theta_u) produced by the core plan; what attack stages consume."""

    seed: int
    method: str
    method_index: int
    exact: bool
    request: ForgetRequest
    original_key: str
    unlearned_key: str
    unlearn_unit: str  # unit key that produces theta_u (and depends on theta)


@dataclass
class CorePlan:
    spec: Spec
    dataset: Dataset
    units: list[Unit] = field(default_factory=list)
    pairs: list[ModelPair] = field(default_factory=list)
    selections: dict[int, Selection] = field(default_factory=dict)
    original_keys: dict[tuple[int, str], str] = field(default_factory=dict)  # (seed, recipe)
    pretrain_keys: dict[int, str] = field(default_factory=dict)


def recipe_id(spec: Spec, method_index: int) -> str:
    entry = spec.unlearning[method_index]
    method = UNLEARNING.get(entry.method)()
    return stable_hash(method.original_recipe(entry.typed_params()), 8)


def _base_determinants(spec: Spec, seed: int) -> dict[str, Any]:
    return {"dataset": spec.dataset.determinant(), "model": to_dict(spec.model),
            "training": to_dict(spec.training), "seed": seed}


def pretrain_key(spec: Spec, seed: int) -> str | None:
    if spec.pretraining is None:
        return None
    return artifact_key("pretrain", dataset=spec.dataset.identity(), pool_size=spec.dataset.pool_size,
                        model=to_dict(spec.model), pretraining=to_dict(spec.pretraining),
                        seed=seed)


def original_key(spec: Spec, seed: int, method_index: int) -> str:
    entry = spec.unlearning[method_index]
    recipe = UNLEARNING.get(entry.method)().original_recipe(entry.typed_params())
    return artifact_key("original", **_base_determinants(spec, seed),
                        pretrain=pretrain_key(spec, seed), recipe=recipe)


def unlearned_key(spec: Spec, seed: int, method_index: int, request: ForgetRequest,
                  removed: tuple[int, ...] = ()) -> str:
    entry = spec.unlearning[method_index]
    return artifact_key("unlearned", original=original_key(spec, seed, method_index),
                        method=entry.method, params=to_dict(entry.typed_params()),
                        forget=list(request.indices), replacement=list(request.replacement),
                        removed=list(removed))


def training_selection(spec: Spec, n_records: int, seed: int) -> Selection:
    """Seed ``seed``'s split of the dataset's ``n_records`` training records (private pool,
    theta's training set, public rest), refused when the recipe pretrains and no public
    record is left. What the core plan trains on, hence what every stage counts."""
    selection = select_training_set(n_records, spec.dataset.pool_size, spec.dataset.train_size,
                                    seed)
    if spec.pretraining is not None and len(selection.public) == 0:
        raise ValueError("pretraining needs public data: set dataset.pool_size below "
                         f"the {n_records} training samples")
    return selection


def training_set_size(spec: Spec, dataset: Dataset) -> int:
    """N = |D| (|D_ft| when pretrained): how many records theta trains on, as the core plan
    selects them from ``dataset`` (the same for every seed). The attacks stage and the search
    count training steps with it (orchestrator.stages.attacks.planning.check_reference_target)."""
    return len(training_selection(spec, len(dataset.y_train), spec.seeds[0]).train)


def plan_core(spec: Spec, data_root: str | None, dataset: Dataset | None = None) -> CorePlan:
    # ``dataset``: an already loaded dataset (the defences stage, which replaces the core plan
    # for membership attacks, rebuilds it for recovery attacks from its CorePlan.dataset).
    dataset = dataset if dataset is not None else spec.dataset.load(data_root)
    core = CorePlan(spec, dataset)
    res_batch = max(1, spec.runtime.requests_per_task)
    for seed in spec.seeds:
        selection = training_selection(spec, len(dataset.y_train), seed)
        core.selections[seed] = selection
        pkey = pretrain_key(spec, seed)
        if pkey:
            core.pretrain_keys[seed] = pkey
            core.units.append(Unit(pkey, "train", "pretrain",
                                   {"spec": spec, "seed": seed, "model_key": pkey},
                                   "models", (pkey,), label=f"pretrain seed {seed}"))
        requests = make_requests(spec.forget, selection.train, dataset.y_train, seed,
                                 replace_pool=selection.public)
        for m, entry in enumerate(spec.unlearning):
            okey = original_key(spec, seed, m)
            rid = recipe_id(spec, m)
            if (seed, rid) not in core.original_keys:
                core.original_keys[(seed, rid)] = okey
                core.units.append(Unit(okey, "train", "train_original",
                                       {"spec": spec, "seed": seed, "method_index": m,
                                        "model_key": okey, "pretrain_key": pkey},
                                       "models", (okey,), deps=(pkey,) if pkey else (),
                                       label=f"train original seed {seed}"))
            method = UNLEARNING.get(entry.method)
            for start in range(0, len(requests), res_batch):
                batch = requests[start: start + res_batch]
                ukeys = tuple(unlearned_key(spec, seed, m, r) for r in batch)
                unit_key = "unlearn-" + stable_hash(ukeys, 24)
                core.units.append(Unit(unit_key, "unlearn", "unlearn_batch",
                                       {"spec": spec, "seed": seed, "method_index": m,
                                        "requests": batch, "model_keys": ukeys,
                                        "original_key": okey, "pretrain_key": pkey},
                                       "models", ukeys, deps=(okey,),
                                       label=f"{entry.method} x{len(batch)} seed {seed}"))
                core.pairs.extend(
                    ModelPair(seed, entry.method, m, method.exact, r, okey, k, unit_key)
                    for r, k in zip(batch, ukeys))
    return core


def plan_run(spec: Spec, data_root: str | None) -> tuple[CorePlan, list[Unit]]:
    """All units of one variant: the core plan, then every stage the spec enables."""
    if any(STAGES.get(stage).replaces_core for stage in spec.stages):
        core = CorePlan(spec, spec.dataset.load(data_root))
    else:
        core = plan_core(spec, data_root)
    units = list(core.units)
    for stage, params in spec.stages.items():
        units.extend(STAGES.get(stage).planner(spec, core, params))
    return core, units
