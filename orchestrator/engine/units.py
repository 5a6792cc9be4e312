"""Worker-side unit functions: load inputs from the artifact store, call ``tasks``, save
outputs, return table rows. Each runs inside one Ray task (or inline, in tests)."""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from orchestrator.context import TaskContext
from orchestrator.engine.provider import (
    load_original,
    load_torch_model,
    model_logits,
    provider_state,
    save_model,
)
from orchestrator.spec.schema import Spec
from orchestrator.store.artifacts import reuse
from orchestrator.store.handoff import HANDOFF, Handoff, UnitInputs, save_handoff
from tasks.registry import Registry
from tasks.splits import select_training_set
from tasks.training import (
    accuracy,
    mean_loss,
    seed_everything,
    train_model,
)
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState

Rows = dict[str, list[dict[str, Any]]]  # table -> rows
UNIT_FUNCTIONS: Registry[Callable[..., Rows]] = Registry("unit function")


# --- rows -----------------------------------------------------------------------------------

def model_row(spec: Spec, ctx: TaskContext, *, key: str, seed: int, role: str, model: Any,
              state: TrainingState, wall_s: float, artifact: str, method: str | None = None,
              exact: bool | None = None, request: ForgetRequest | None = None,
              parent: str | None = None, **extra: Any) -> dict[str, Any]:
    d = state.dataset
    train_idx = np.setdiff1d(state.train_indices, np.asarray(request.indices if request else (),
                                                             dtype=np.int64))
    train_logits = model_logits(model, d.x_train[train_idx], state.device)
    test_logits = model_logits(model, d.x_test, state.device)
    row = {
        "key": key, "experiment": spec.experiment, "config_hash": spec.config_hash,
        "seed": seed, "role": role, "unlearning_method": method, "exact": exact,
        "request_id": request.request_id if request else None,
        "forget_kind": request.kind if request else None,
        "forget_size": len(request.indices) if request else None,
        "forget_class": request.forgotten_class if request else None,
        "forget_share": request.share if request else None,
        "dataset": spec.dataset.name, "model": spec.model.name,
        "train_size": len(state.train_indices),
        "train_acc": accuracy(train_logits, d.y_train[train_idx]),
        "test_acc": accuracy(test_logits, d.y_test),
        "forget_acc": None, "forget_loss": None,
        "wall_s": wall_s, "node_id": ctx.node_id, "artifact": artifact, "parent": parent,
    }
    if request is not None:
        idx = np.asarray(request.indices)
        logits = model_logits(model, d.x_train[idx], state.device)
        row["forget_acc"] = accuracy(logits, d.y_train[idx])
        row["forget_loss"] = mean_loss(logits, d.y_train[idx])
    row.update(extra)
    row.update(spec.flat_config())
    return row


# --- unit functions -------------------------------------------------------------------------

@UNIT_FUNCTIONS.register("pretrain")
def pretrain(params: dict, ctx: TaskContext) -> Rows:
    """theta_0 on the public split with the ``pretraining`` recipe."""
    spec: Spec = params["spec"]
    seed, key = params["seed"], params["model_key"]
    state = provider_state(spec, seed, ctx)
    sel = select_training_set(len(state.dataset.y_train), spec.dataset.pool_size,
                              spec.dataset.train_size, seed)
    start = time.perf_counter()
    seed_everything(seed)
    model = (reuse(functools.partial(load_torch_model, ctx, key, state))
             if ctx.store.has(key) else None)
    if model is None:
        model = state.initial_model()
        d = state.dataset
        train_model(model, d.x_train, d.y_train, sel.public, spec.pretraining, seed,
                    state.device)
        save_model(ctx, key, model, state)
    state.train_indices = sel.public
    row = model_row(spec, ctx, key=key, seed=seed, role="pretrained", model=model, state=state,
                    wall_s=time.perf_counter() - start, artifact=ctx.store.path(key))
    return {"models": [row]}


@UNIT_FUNCTIONS.register("train_original")
def train_original(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    seed, m, key = params["seed"], params["method_index"], params["model_key"]
    entry = spec.unlearning[m]
    method = UNLEARNING.get(entry.method)()
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    start = time.perf_counter()
    seed_everything(seed)
    suffix = ".npz" if spec.model.family == "sklearn" else ".pt"
    model = (reuse(functools.partial(load_original, spec, seed, m, key, ctx, state))
             if ctx.store.has(key, suffix) else None)
    if model is None:
        model = method.train_original(state, entry.typed_params())
        save_model(ctx, key, model, state)
    wall = time.perf_counter() - start
    rows = [model_row(spec, ctx, key=key, seed=seed, role="original", model=model, state=state,
                      wall_s=wall, artifact=ctx.store.path(key, suffix),
                      parent=params.get("pretrain_key"),
                      shards=len(model.shards) if method.returns_ensemble else None)]
    return {"models": rows}


@UNIT_FUNCTIONS.register("unlearn_batch")
def unlearn_batch(params: dict, ctx: TaskContext) -> Rows:
    """Unlearn a batch of forget requests from one original, one model per request."""
    spec: Spec = params["spec"]
    seed, m = params["seed"], params["method_index"]
    entry = spec.unlearning[m]
    method = UNLEARNING.get(entry.method)()
    method_params = entry.typed_params()
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    state.original = load_original(spec, seed, m, params["original_key"], ctx, state)
    suffix = ".npz" if spec.model.family == "sklearn" else ".pt"
    rows = []
    for request, key in zip(params["requests"], params["model_keys"]):
        start = time.perf_counter()
        seed_everything(seed)
        model = (reuse(functools.partial(load_torch_model, ctx, key, state))
                 if suffix == ".pt" and ctx.store.has(key) else None)
        if model is None:
            model = method.unlearn(state, request, method_params)
            save_model(ctx, key, model, state)
        rows.append(model_row(
            spec, ctx, key=key, seed=seed, role="unlearned", model=model, state=state,
            wall_s=time.perf_counter() - start, artifact=ctx.store.path(key, suffix),
            method=entry.method, exact=method.exact, request=request,
            parent=params["original_key"],
            shards_retrained=list(getattr(model, "retrained", ())) or None,
            forget_loss_original=_forget_loss(state.original, state, request)))
    return {"models": rows}


@UNIT_FUNCTIONS.register("noop")
def noop(params: dict, ctx: TaskContext) -> Rows:
    """One row and no work: measures what the orchestration itself costs per unit
    (benchmarks/bench_sweep.py), and exercises the run loop at any scale in tests."""
    if params.get("fail"):
        raise ValueError(f"unit {params['key']} was asked to fail")
    return {params["table"]: [{"key": params["key"], "index": params["index"],
                               "node_id": ctx.node_id}]}


def _forget_loss(model: Any, state: TrainingState, request: ForgetRequest) -> float:
    idx = np.asarray(request.indices)
    d = state.dataset
    return mean_loss(model_logits(model, d.x_train[idx], state.device), d.y_train[idx])


def run_unit_inline(fn: str, params: dict, ctx: TaskContext, key: str | None = None,
                    deps: tuple[str, ...] = (), hands_on: bool = False) -> Rows:
    """Run one unit in this process (tests, and the body of every Ray task). The stage units
    are registered by importing ``orchestrator.stages`` (``orchestrator.engine.execute`` does).

    A function that takes ``inputs`` gets the handoffs of the units ``deps`` names; what it
    returns under ``HANDOFF`` is kept under ``key`` for its own dependants (and an empty one
    where ``hands_on`` and it had nothing: see :mod:`orchestrator.store.handoff`)."""
    threads = os.environ.get("UNLEARN_AUDIT_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    function = UNIT_FUNCTIONS.get(fn)
    if _takes_inputs(function):
        rows = function(params, ctx, inputs=UnitInputs(ctx, deps))
    else:
        rows = function(params, ctx)
    handoff = rows.pop(HANDOFF, None)
    if handoff is None and hands_on:
        handoff = Handoff()
    if handoff is not None:
        if key is None:
            raise ValueError(f"unit function {fn} hands on an output: its unit needs a key")
        save_handoff(ctx, key, handoff)
    return rows


@functools.cache
def _takes_inputs(function: Callable[..., Rows]) -> bool:
    return "inputs" in inspect.signature(function).parameters
