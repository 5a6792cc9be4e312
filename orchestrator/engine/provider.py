"""The provider's side of every stage: training states, model save/load, model pairs and the
cases attacks receive. One copy, used by the core units, the attack stages and the membership
stage alike."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tasks.cases import build_case
from tasks.models import SklearnModel
from tasks.splits import select_training_set
from tasks.training import deterministic_mode, predict_logits, seed_everything
from tasks.unlearning import UNLEARNING, ForgetRequest, SisaEnsemble, TrainingState
from tasks.unlearning.sisa import SisaSklearn

if TYPE_CHECKING:  # units imports this module; the context is only a type here
    from orchestrator.context import TaskContext
    from orchestrator.spec.schema import Spec


# --- training state ---------------------------------------------------------------------------

def provider_state(spec: Spec, seed: int, ctx: TaskContext, pretrain_key: str | None = None,
                   members: np.ndarray | None = None) -> TrainingState:
    """What produced theta: the spec's recipe on ``members`` (default: the spec's training
    selection for ``seed``), from theta_0 when ``pretrain_key`` names one."""
    device = ctx.torch_device()
    if spec.runtime.deterministic and spec.model.family == "torch":
        deterministic_mode(device)
    dataset = spec.dataset.load(ctx.data_root)
    if members is None:
        members = select_training_set(len(dataset.y_train), spec.dataset.pool_size,
                                      spec.dataset.train_size, seed).train
    pretrained = None
    if pretrain_key:
        pretrained = ctx.store.load_torch(pretrain_key, map_location=device)["state_dict"]
    return TrainingState(dataset, spec.model, spec.training, np.asarray(members), seed, device,
                         pretrained_state=pretrained)


def train_steps(spec: Spec, n_train: int) -> int | None:
    """Optimisation steps of the training recipe on ``n_train`` records: epochs x batches
    (None for scikit-learn models, which are not trained by steps)."""
    if spec.model.family != "torch":
        return None
    return spec.training.epochs * math.ceil(n_train / spec.training.batch_size)


# --- save / load --------------------------------------------------------------------------------

def save_torch_model(ctx: TaskContext, key: str, model: torch.nn.Module) -> str:
    """Weights-only checkpoint; a SISA ensemble also keeps its shard count and checkpoints."""
    payload: dict[str, Any] = {"state_dict": model.state_dict()}
    if isinstance(model, SisaEnsemble):
        payload["sisa_shards"] = len(model.shards)
        payload["checkpoints"] = model.checkpoints
    return ctx.store.save_torch(key, payload)


def save_model(ctx: TaskContext, key: str, model: Any, state: TrainingState) -> str:
    """Torch models as weights-only checkpoints; scikit-learn models as their logits on every
    training and test sample (they are cheap to refit deterministically when needed)."""
    if isinstance(model, (SklearnModel, SisaSklearn)):
        d = state.dataset
        return ctx.store.save_arrays(key, train=model.logits(d.x_train),
                                     test=model.logits(d.x_test))
    return save_torch_model(ctx, key, model)


def has_artifacts(ctx: TaskContext, key: str, weights: bool) -> bool:
    """The model's stored arrays (``.npz``), and its weights (``.pt``) when ``weights``."""
    return ctx.store.has(key, ".npz") and (not weights or ctx.store.has(key, ".pt"))


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


def load_original(spec: Spec, seed: int, method_index: int, key: str, ctx: TaskContext,
                  state: TrainingState):
    """theta of ``state``'s recipe, stored under ``key``. Scikit-learn originals are refitted
    from ``seed`` (deterministic) rather than unpickled; a worker keeps the last few."""
    if spec.model.family == "sklearn":
        if key not in _SKLEARN_ORIGINALS:
            entry = spec.unlearning[method_index]
            if len(_SKLEARN_ORIGINALS) >= 8:
                _SKLEARN_ORIGINALS.pop(next(iter(_SKLEARN_ORIGINALS)))
            seed_everything(seed)
            _SKLEARN_ORIGINALS[key] = UNLEARNING.get(entry.method)().train_original(
                state, entry.typed_params())
        return _SKLEARN_ORIGINALS[key]
    return load_torch_model(ctx, key, state)  # MissingArtifact, naming it, if it is gone


def model_logits(model: Any, x: np.ndarray, device: torch.device) -> np.ndarray:
    if isinstance(model, (SklearnModel, SisaSklearn)):
        return model.logits(x)
    return predict_logits(model, x, device)


# --- model pairs and cases ----------------------------------------------------------------------

@dataclass
class ProviderPairs:
    """theta, theta_0 and what the reference attacker may know, for the model pairs of one
    (seed, unlearning method) group; the attack stages build their cases from it."""

    method: str
    exact: bool
    state: TrainingState
    theta: Any
    theta0: torch.nn.Module | None  # the pretrained theta_0; None without pretraining
    eta: float | None  # the step size of approximate unlearning (reference knowledge)
    train_steps: int | None  # optimisation steps that trained theta (None: not by steps)

    def case(self, theta_u: torch.nn.Module, request: ForgetRequest, knowledge: str,
             white_box: bool = True, output_transform=None):
        return build_case(dataset=self.state.dataset, theta=self.theta, theta_u=theta_u,
                          request=request, knowledge=knowledge, white_box=white_box,
                          output_transform=output_transform, theta0=self.theta0,
                          n_finetune=len(self.state.train_indices), unlearn_lr=self.eta,
                          exact=self.exact, train_steps=self.train_steps,
                          device=self.state.device)


def load_provider_pairs(params: dict, ctx: TaskContext) -> ProviderPairs:
    """From a unit's ``spec``, ``seed``, ``method_index``, ``pairs`` and ``pretrain_key``."""
    spec: Spec = params["spec"]
    seed, m = params["seed"], params["method_index"]
    entry = spec.unlearning[m]
    method = UNLEARNING.get(entry.method)()
    state = provider_state(spec, seed, ctx, params.get("pretrain_key"))
    seed_everything(seed)
    theta = load_original(spec, seed, m, params["pairs"][0].original_key, ctx, state)
    # Without pretraining there is no theta_0 to know: the random initialisation is not one.
    theta0 = state.initial_model().eval() if state.pretrained_state is not None else None
    eta = None if method.exact else method.step_size(entry.typed_params())
    return ProviderPairs(entry.method, method.exact, state, theta, theta0, eta,
                         train_steps(spec, len(state.train_indices)))
