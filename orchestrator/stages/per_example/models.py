"""Model units of the ``per_example`` stage: ``pe_train`` (originals or references, one
stacked ensemble per task, or member by member with the method's ``train_original`` where it
trains theta its own way) and ``pe_unlearn`` (one request per member, stacked where the
method's maths allows). Every member is its own artifact, so reruns and other methods reuse
it; a task whose members are all stored trains nothing. References follow the recipe of the
method they serve (see :mod:`.planning`): ``method_index`` None trains the plain recipe."""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.provider import load_torch_model, provider_state, save_torch_model
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.per_example.planning import Member
from orchestrator.store.artifacts import reuse
from tasks.ensemble import ensemble_logits
from tasks.training import accuracy
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState, UnlearningMethod
from tasks.unlearning.stacked import fit_members, member_states


def _template(spec: Spec, params: dict, ctx: TaskContext) -> TrainingState:
    chunk: list[Member] = params["members"]
    return provider_state(spec, params["seed"], ctx, members=chunk[0].members)


def metrics_key(unit_key: str) -> str:
    """The artifact of a model unit's per-member metrics (accuracies and the wall time of
    the training or unlearning that made the members, kept across reruns)."""
    return f"{unit_key}-metrics"


def _metrics(ctx: TaskContext, params: dict, models: list | None, state: TrainingState,
             wall: float, forget: list[tuple[int, ...]] | None) -> dict[str, np.ndarray]:
    """Per member: test accuracy, accuracy on its retained records and on its forget set,
    and its share of the unit's wall time; stored once, read back on reruns."""
    key = metrics_key(params["unit_key"])
    if models is None:
        return ctx.store.load_arrays(key)
    d = state.dataset
    chunk: list[Member] = params["members"]
    test = ensemble_logits(models, d.x_test, state.device)
    out = {"test_acc": [], "retain_acc": [], "forget_acc": [], "forget_size": []}
    for i, member in enumerate(chunk):
        gone = np.asarray(forget[i] if forget is not None else (), dtype=np.int64)
        kept = np.setdiff1d(member.members, gone)
        out["test_acc"].append(accuracy(test[i], d.y_test))
        own = ensemble_logits([models[i]], d.x_train[kept], state.device)[0]
        out["retain_acc"].append(accuracy(own, d.y_train[kept]))
        lost = ensemble_logits([models[i]], d.x_train[gone], state.device)[0] if len(gone) \
            else None
        out["forget_acc"].append(accuracy(lost, d.y_train[gone]) if lost is not None
                                 else np.nan)
        out["forget_size"].append(len(gone))
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    arrays["wall_s"] = np.full(len(chunk), wall / len(chunk))
    ctx.store.save_arrays(key, **arrays)
    return arrays


def _rows(spec: Spec, params: dict, ctx: TaskContext, keys: list[str], role: str,
          trained: bool, metrics: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    m = params.get("method_index")
    method = spec.unlearning[m].method if m is not None and role == "unlearned" else None
    rows = []
    for i, (key, member) in enumerate(zip(keys, params["members"])):
        row = {"key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
               "seed": params["seed"], "stage": "per_example", "role": role,
               "unlearning_method": method, "member": member.index,
               "train_seed": member.seed, "train_size": len(member.members),
               "trained": trained, "node_id": ctx.node_id, "dataset": spec.dataset.name,
               "model": spec.model.name}
        row.update({k: float(v[i]) for k, v in metrics.items()})
        row["forget_size"] = int(row["forget_size"]) if role == "unlearned" else None
        row.update(spec.flat_config())
        rows.append(row)
    return rows


def _load_all(ctx: TaskContext, keys: list[str], state: TrainingState) -> list | None:
    """The chunk's stored members, or None (trained again) where one is gone or damaged."""
    if not all(ctx.store.has(k) for k in keys):
        return None
    models = [reuse(functools.partial(load_torch_model, ctx, k, state)) for k in keys]
    return None if any(m is None for m in models) else models


@UNIT_FUNCTIONS.register("pe_train")
def pe_train(params: dict, ctx: TaskContext) -> Rows:
    """Train a chunk of members (originals, or references on the base set) by the recipe of
    ``method_index``: the method's ``train_original`` where it overrides it, else (and for
    None, the plain recipe) as one stacked ensemble."""
    spec: Spec = params["spec"]
    chunk: list[Member] = params["members"]
    keys = [x.key for x in chunk]
    start = time.perf_counter()
    template = _template(spec, params, ctx)
    models = _load_all(ctx, keys, template)
    trained = models is None
    if trained:
        states = member_states(template, [x.members for x in chunk], [x.seed for x in chunk])
        m = params["method_index"]
        method = UNLEARNING.get(spec.unlearning[m].method) if m is not None else None
        if method is not None and method.train_original is not UnlearningMethod.train_original:
            # A method that trains theta its own way (its originals, and the references of
            # the challenge design that retrain it): member by member, as it asks.
            entry = spec.unlearning[m]
            models = [method().train_original(s, entry.typed_params()) for s in states]
        else:
            models = fit_members(states)
        for key, model in zip(keys, models):
            save_torch_model(ctx, key, model)
    fresh = trained or not ctx.store.has(metrics_key(params["unit_key"]), ".npz")
    metrics = _metrics(ctx, params, models if fresh else None, template,
                       time.perf_counter() - start, None)
    return {"per_example_models": _rows(spec, params, ctx, keys, params["role"], trained,
                                        metrics)}


@UNIT_FUNCTIONS.register("pe_unlearn")
def pe_unlearn(params: dict, ctx: TaskContext) -> Rows:
    """Unlearn each member's forget set from its original: ``unlearn_members`` runs the
    method stacked across the chunk where its maths allows, member by member otherwise."""
    spec: Spec = params["spec"]
    m = params["method_index"]
    entry = spec.unlearning[m]
    method = UNLEARNING.get(entry.method)()
    chunk: list[Member] = params["members"]
    keys = list(params["keys"])
    start = time.perf_counter()
    template = _template(spec, params, ctx)
    models = _load_all(ctx, keys, template)
    trained = models is None
    if trained:
        states = member_states(template, [x.members for x in chunk], [x.seed for x in chunk])
        if not method.retrains_from_scratch:
            for state, x in zip(states, chunk):
                state.original = load_torch_model(ctx, x.key, template)
        requests = [ForgetRequest(f"per-example-{x.index}", "group", x.forget) for x in chunk]
        models = method.unlearn_members(states, requests, entry.typed_params())
        for key, model in zip(keys, models):
            save_torch_model(ctx, key, model)
    fresh = trained or not ctx.store.has(metrics_key(params["unit_key"]), ".npz")
    metrics = _metrics(ctx, params, models if fresh else None, template,
                       time.perf_counter() - start, [x.forget for x in chunk])
    return {"per_example_models": _rows(spec, params, ctx, keys, "unlearned", trained,
                                        metrics)}
