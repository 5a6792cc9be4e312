"""Model units of the ``membership`` stage: ``mia_original`` and ``mia_unlearn`` (see the
package docstring). Each saves the logits its pairs score, so attacks never reload a model."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.provider import (
    has_artifacts,
    load_original,
    load_torch_model,
    model_logits,
    provider_state,
    save_torch_model,
)
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.membership.params import eval_records
from orchestrator.store.artifacts import reuse
from tasks.models import SklearnModel
from tasks.training import accuracy, seed_everything
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState


def _state(spec: Spec, params: dict, ctx: TaskContext) -> TrainingState:
    return provider_state(spec, params["train_seed"], ctx, members=params["members"])


def _base_row(spec: Spec, params: dict, key: str, role: str, wall: float,
              ctx: TaskContext) -> dict[str, Any]:
    entry = spec.unlearning[params["method_index"]]
    row = {"key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": params["seed"], "role": role, "stage": "membership",
           "unlearning_method": entry.method if role != "original" else None,
           "dataset": spec.dataset.name, "model": spec.model.name, "side": params["side"],
           "set_index": params["set_index"], "train_size": len(params["members"]),
           "wall_s": wall, "node_id": ctx.node_id, "forget_acc": None, "forget_loss": None,
           "forget_loss_original": None,
           "artifact": ctx.store.path(key, ".npz")}
    row.update(spec.flat_config())
    return row


def _split(logits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return logits[:n], logits[n:]


def _batch_invariant(model, d) -> bool:
    """Whether one batch of train and test records gives each record the logits it gets on
    its own (a forest grown by ``tasks.sklearn_forest``; any other model keeps its batches)."""
    return (isinstance(model, SklearnModel) and model.batch_invariant
            and d.x_train.dtype == d.x_test.dtype)


def _query_and_eval_logits(model, d, query: np.ndarray, eval_idx: np.ndarray,
                           device) -> tuple[np.ndarray, np.ndarray]:
    """An unlearned model's logits on its query records and on the test records that score
    it: one pass over a forest's trees, else two batches as before."""
    if not _batch_invariant(model, d):
        return (model_logits(model, d.x_train[query], device),
                model_logits(model, d.x_test[eval_idx], device))
    return _split(model_logits(model, np.concatenate([d.x_train[query], d.x_test[eval_idx]]),
                               device), len(query))


@UNIT_FUNCTIONS.register("mia_original")
def mia_original(params: dict, ctx: TaskContext) -> Rows:
    """Train M_i on S_i (or find it in the store); keep its logits and accuracies."""
    spec: Spec = params["spec"]
    entry = spec.unlearning[params["method_index"]]
    method = UNLEARNING.get(entry.method)()
    key = params["model_key"]
    start = time.perf_counter()
    trained = False
    torch_model = spec.model.family == "torch"
    arrays = ((reuse(partial(ctx.store.load_arrays, key)) or {})
              if has_artifacts(ctx, key, torch_model) else {})
    # Arrays stored before ``test_correct`` existed are rebuilt (the model is deterministic).
    if "test_correct" not in arrays:
        state = _state(spec, params, ctx)
        d = state.dataset
        seed_everything(state.seed)
        model = method.train_original(state, entry.typed_params())
        trained = True
        query = np.asarray(params["query"])
        members = np.asarray(params["members"])
        if not _batch_invariant(model, d):
            logits = model_logits(model, d.x_train[query], state.device)
            member_logits = model_logits(model, d.x_train[members], state.device)
            test_logits = model_logits(model, d.x_test, state.device)
        else:
            # One pass over the trees; the members are query records (sorted, unique).
            logits, test_logits = _split(model_logits(
                model, np.concatenate([d.x_train[query], d.x_test]), state.device), len(query))
            where = np.searchsorted(query, members).clip(0, max(len(query) - 1, 0))
            if len(query) and np.array_equal(query[where], members):
                member_logits = logits[where]
            else:
                member_logits = model_logits(model, d.x_train[members], state.device)
        correct = test_logits.argmax(1) == d.y_test
        arrays = {"indices": query, "logits": logits,
                  "train_acc": np.float64(accuracy(member_logits, d.y_train[members])),
                  "test_acc": np.float64(correct.mean()),
                  # per test record, so the attack rows compare it with the unlearned models
                  # on the same records
                  "test_correct": correct}
        if torch_model:
            save_torch_model(ctx, key, model)
        ctx.store.save_arrays(key, **arrays)
    row = _base_row(spec, params, key, "original", time.perf_counter() - start, ctx)
    row.update(train_acc=float(arrays["train_acc"]), test_acc=float(arrays["test_acc"]),
               generalisation_gap=float(arrays["train_acc"] - arrays["test_acc"]),
               trained=trained, parent=None,
               shards=entry.typed_params().shards if method.returns_ensemble else None)
    return {"models": [row]}


@UNIT_FUNCTIONS.register("mia_unlearn")
def mia_unlearn(params: dict, ctx: TaskContext) -> Rows:
    """Unlearn a batch of deletions from one original (in order, for a chain)."""
    spec: Spec = params["spec"]
    m = params["method_index"]
    entry = spec.unlearning[m]
    method = UNLEARNING.get(entry.method)()
    method_params = entry.typed_params()
    torch_model = spec.model.family == "torch"
    needs_model = not method.retrains_from_scratch
    state = _state(spec, params, ctx)
    d = state.dataset
    eval_idx = eval_records(params["seed"], len(d.y_test), params["eval_size"])
    rows = []
    previous = None  # the model of the previous chain version
    for job in params["jobs"]:
        key = job["model_key"]
        start = time.perf_counter()
        trained = False
        cached = has_artifacts(ctx, key, torch_model and params["chain"])
        model = None
        if cached:
            arrays = reuse(partial(ctx.store.load_arrays, key))
            cached = arrays is not None
        if cached and params["chain"] and needs_model and torch_model:
            model = reuse(partial(load_torch_model, ctx, key, state))
        if not cached or (params["chain"] and needs_model and model is None):
            first_of_chain = previous is None or not params["chain"]
            if needs_model and first_of_chain and state.original is None:
                state.original = load_original(spec, state.seed, m, params["original_key"],
                                               ctx, state)
            if params["chain"]:
                state.removed = tuple(job["removed"])
                if previous is not None:
                    state.original = previous
            request = ForgetRequest(f"{params['scenario_family']}-{job['pair_index']}",
                                    "group" if len(job["forget"]) > 1 else "single",
                                    tuple(job["forget"]), tuple(job["replacement"]))
            seed_everything(state.seed)
            model = method.unlearn(state, request, method_params)
            trained = True
            if not cached:
                query = np.asarray(job["query"], dtype=np.int64)
                logits, eval_logits = _query_and_eval_logits(model, d, query, eval_idx,
                                                             state.device)
                arrays = {"indices": query, "logits": logits,
                          "test_acc": np.float64(accuracy(eval_logits, d.y_test[eval_idx])),
                          "retrained": np.asarray(getattr(model, "retrained", ()),
                                                  dtype=np.int64)}
                if torch_model and params["chain"]:
                    save_torch_model(ctx, key, model)
                ctx.store.save_arrays(key, **arrays)
        if params["chain"]:
            previous = model
        row = _base_row(spec, params, key, "unlearned", time.perf_counter() - start, ctx)
        row.update(test_acc=float(arrays["test_acc"]), train_acc=None,
                   trained=trained, parent=params["original_key"],
                   scenario_family=params["scenario_family"], pair_index=job["pair_index"],
                   forget_size=len(job["forget"]), replaced=len(job["replacement"]),
                   chain_position=len(job["removed"]) if params["chain"] else None,
                   shards_retrained=[int(s) for s in arrays["retrained"]] or None)
        rows.append(row)
    return {"models": rows}
