"""Model units of the ``per_example`` stage: ``pe_train`` (originals or references, one
stacked ensemble per task) and ``pe_unlearn`` (one request per member, stacked where the
method's maths allows). Every member is its own artifact, so reruns and other methods reuse
it; a task whose members are all stored trains nothing."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from orchestrator.provider import load_torch_model, provider_state, save_torch_model
from orchestrator.spec import Spec
from orchestrator.stages.per_example.planning import Member
from orchestrator.units import UNIT_FUNCTIONS, Rows, TaskContext
from tasks.ensemble import ensemble_logits
from tasks.training import accuracy
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState, UnlearningMethod
from tasks.unlearning.stacked import fit_members, member_states


def _template(spec: Spec, params: dict, ctx: TaskContext) -> TrainingState:
    chunk: list[Member] = params["members"]
    return provider_state(spec, params["seed"], ctx, members=chunk[0].members)


def _rows(spec: Spec, params: dict, ctx: TaskContext, keys: list[str], models: list,
          trained: bool, role: str, wall: float, state: TrainingState,
          forget: list[tuple[int, ...]] | None = None) -> list[dict[str, Any]]:
    d = state.dataset
    test = ensemble_logits(models, d.x_test, state.device)
    rows = []
    m = params.get("method_index")
    method = spec.unlearning[m].method if m is not None and role == "unlearned" else None
    for i, (key, member) in enumerate(zip(keys, params["members"])):
        row = {"key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
               "seed": params["seed"], "stage": "per_example", "role": role,
               "unlearning_method": method, "member": member.index,
               "train_seed": member.seed, "train_size": len(member.members),
               "test_acc": accuracy(test[i], d.y_test), "forget_size": None,
               "forget_acc": None, "trained": trained, "wall_s": wall / len(keys),
               "node_id": ctx.node_id, "dataset": spec.dataset.name, "model": spec.model.name}
        if forget is not None:
            idx = np.asarray(forget[i], dtype=np.int64)
            row["forget_size"] = len(idx)
            row["forget_acc"] = accuracy(ensemble_logits([models[i]], d.x_train[idx],
                                                         state.device)[0], d.y_train[idx])
        row.update(spec.flat_config())
        rows.append(row)
    return rows


def _load_all(ctx: TaskContext, keys: list[str], state: TrainingState) -> list | None:
    if not all(ctx.store.has(k) for k in keys):
        return None
    return [load_torch_model(ctx, k, state) for k in keys]


@UNIT_FUNCTIONS.register("pe_train")
def pe_train(params: dict, ctx: TaskContext) -> Rows:
    """Train a chunk of members (originals or references) as one stacked ensemble."""
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
            # A method that trains theta its own way: member by member, as it asks.
            entry = spec.unlearning[m]
            models = [method().train_original(s, entry.typed_params()) for s in states]
        else:
            models = fit_members(states)
        for key, model in zip(keys, models):
            save_torch_model(ctx, key, model)
    return {"per_example_models": _rows(spec, params, ctx, keys, models, trained,
                                        params["role"], time.perf_counter() - start, template)}


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
    return {"per_example_models": _rows(spec, params, ctx, keys, models, trained, "unlearned",
                                        time.perf_counter() - start, template,
                                        forget=[x.forget for x in chunk])}
