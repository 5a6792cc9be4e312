"""Worker-side unit functions: load inputs from the artifact store, call ``tasks``, save
outputs, return table rows. Each runs inside one Ray task (or inline, in tests)."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator.spec import Spec
from orchestrator.store import ArtifactStore
from tasks.cases import build_case
from tasks.data import load_dataset
from tasks.models import SklearnModel
from tasks.registry import Registry
from tasks.splits import select_training_set
from tasks.training import (
    accuracy,
    deterministic_mode,
    mean_loss,
    pick_device,
    predict_logits,
    seed_everything,
    train_model,
)
from tasks.unlearning import UNLEARNING, ForgetRequest, SisaEnsemble, TrainingState
from tasks.unlearning.sisa import SisaSklearn

Rows = dict[str, list[dict[str, Any]]]  # table -> rows
UNIT_FUNCTIONS: Registry[Callable[..., Rows]] = Registry("unit function")


@dataclass(frozen=True)
class TaskContext:
    """Where a task reads and writes; travels to every worker."""

    experiment: str
    results_uri: str
    artifacts_uri: str
    data_root: str | None
    device: str = "auto"
    node_id: str = "local"

    @property
    def store(self) -> ArtifactStore:
        return _store(self.artifacts_uri)

    def torch_device(self) -> torch.device:
        return pick_device(self.device)


@functools.lru_cache(maxsize=4)
def _store(uri: str) -> ArtifactStore:
    return ArtifactStore(uri)


# --- provider state -------------------------------------------------------------------------

def provider_state(spec: Spec, seed: int, ctx: TaskContext,
                   pretrain_key: str | None = None) -> TrainingState:
    device = ctx.torch_device()
    if spec.runtime.deterministic:
        deterministic_mode(device)
    dataset = load_dataset(spec.dataset.name, ctx.data_root)
    sel = select_training_set(len(dataset.y_train), spec.dataset.pool_size,
                              spec.dataset.train_size, seed)
    pretrained = None
    if pretrain_key:
        pretrained = ctx.store.load_torch(pretrain_key, map_location=device)["state_dict"]
    return TrainingState(dataset, spec.model, spec.training, sel.train, seed, device,
                         pretrained_state=pretrained)


def save_model(ctx: TaskContext, key: str, model: Any, state: TrainingState) -> str:
    """Torch models as weights-only checkpoints; scikit-learn models as their logits on every
    training and test sample (they are cheap to refit deterministically when needed)."""
    if isinstance(model, (SklearnModel, SisaSklearn)):
        d = state.dataset
        return ctx.store.save_arrays(key, train=model.logits(d.x_train),
                                     test=model.logits(d.x_test))
    payload: dict[str, Any] = {"state_dict": model.state_dict()}
    if isinstance(model, SisaEnsemble):
        payload["sisa_shards"] = len(model.shards)
        payload["checkpoints"] = model.checkpoints
    return ctx.store.save_torch(key, payload)


def load_torch_model(ctx: TaskContext, key: str, state: TrainingState) -> torch.nn.Module:
    payload = ctx.store.load_torch(key, map_location=state.device)
    if "sisa_shards" in payload:
        model: torch.nn.Module = SisaEnsemble(
            [state.initial_model() for _ in range(payload["sisa_shards"])])
        model.checkpoints = payload.get("checkpoints", {})
    else:
        model = state.initial_model()
    model.load_state_dict(payload["state_dict"])
    return model.to(state.device).eval()


_SKLEARN_ORIGINALS: dict[str, Any] = {}


def _sklearn_original(spec: Spec, seed: int, method_index: int, key: str, ctx: TaskContext):
    # Scikit-learn originals are refitted (deterministically, from their seed) rather than
    # unpickled; a worker keeps the last few it fitted.
    if key not in _SKLEARN_ORIGINALS:
        entry = spec.unlearning[method_index]
        state = provider_state(spec, seed, ctx)
        if len(_SKLEARN_ORIGINALS) >= 8:
            _SKLEARN_ORIGINALS.pop(next(iter(_SKLEARN_ORIGINALS)))
        _SKLEARN_ORIGINALS[key] = UNLEARNING.get(entry.method)().train_original(
            state, entry.typed_params())
    return _SKLEARN_ORIGINALS[key]


def load_original(spec: Spec, seed: int, method_index: int, key: str, ctx: TaskContext,
                  state: TrainingState):
    if spec.model.family == "sklearn":
        return _sklearn_original(spec, seed, method_index, key, ctx)
    if not ctx.store.has(key):
        raise FileNotFoundError(f"artifact {key} is missing from {ctx.store.uri}")
    return load_torch_model(ctx, key, state)


def model_logits(model: Any, x: np.ndarray, device: torch.device) -> np.ndarray:
    if isinstance(model, (SklearnModel, SisaSklearn)):
        return model.logits(x)
    return predict_logits(model, x, device)


@dataclass
class ProviderPairs:
    """theta, theta_0 and what the reference attacker may know, for the model pairs of one
    (seed, unlearning method) group; the attack stages build their cases from it."""

    method: str
    exact: bool
    state: TrainingState
    theta: Any
    theta0: torch.nn.Module  # pretrained theta_0, else the seeded initialisation
    eta: float | None  # the ascent step of approximate unlearning (reference knowledge)

    def case(self, theta_u: torch.nn.Module, request: ForgetRequest, knowledge: str):
        return build_case(dataset=self.state.dataset, theta=self.theta, theta_u=theta_u,
                          request=request, knowledge=knowledge, theta0=self.theta0,
                          n_finetune=len(self.state.train_indices), unlearn_lr=self.eta,
                          exact=self.exact, device=self.state.device)


def load_provider_pairs(params: dict, ctx: TaskContext) -> ProviderPairs:
    """From a unit's ``spec``, ``seed``, ``method_index``, ``pairs`` and ``pretrain_key``."""
    spec: Spec = params["spec"]
    seed, m = params["seed"], params["method_index"]
    entry = spec.unlearning[m]
    exact = UNLEARNING.get(entry.method).exact
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    seed_everything(seed)
    theta = load_original(spec, seed, m, params["pairs"][0].original_key, ctx, state)
    eta = None if exact else getattr(entry.typed_params(), "lr", None)
    return ProviderPairs(entry.method, exact, state, theta, state.initial_model().eval(), eta)


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
        "train_size": int(len(state.train_indices)),
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
    model = state.initial_model()
    if not ctx.store.has(key):
        d = state.dataset
        train_model(model, d.x_train, d.y_train, sel.public, spec.pretraining, seed,
                    state.device)
        save_model(ctx, key, model, state)
    else:
        model = load_torch_model(ctx, key, state)
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
    if ctx.store.has(key, suffix):
        model = load_original(spec, seed, m, key, ctx, state)
    else:
        model = method.train_original(state, entry.typed_params())
        save_model(ctx, key, model, state)
    wall = time.perf_counter() - start
    rows = [model_row(spec, ctx, key=key, seed=seed, role="original", model=model, state=state,
                      wall_s=wall, artifact=ctx.store.path(key, suffix),
                      parent=params.get("pretrain_key"),
                      shards=len(model.shards) if hasattr(model, "shards") else None)]
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
        if suffix == ".pt" and ctx.store.has(key):
            model = load_torch_model(ctx, key, state)
        else:
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


def _forget_loss(model: Any, state: TrainingState, request: ForgetRequest) -> float:
    idx = np.asarray(request.indices)
    d = state.dataset
    return mean_loss(model_logits(model, d.x_train[idx], state.device), d.y_train[idx])


def run_unit_inline(fn: str, params: dict, ctx: TaskContext) -> Rows:
    """Run one unit in this process (tests, and the body of every Ray task)."""
    import orchestrator.stages  # noqa: F401  (stages register their unit functions)

    threads = os.environ.get("UNLEARN_AUDIT_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    return UNIT_FUNCTIONS.get(fn)(params, ctx)
