"""SISA (Bourtoule et al.): sharded, optionally sliced training; deletion retrains one shard.

The aggregate posterior is the mean of the shard posteriors. It is always built in a freshly
allocated tensor, never accumulated into a shard's own output (ATTACKS.md section 2.3: an
aliased running sum silently turns shard 0 into the mean).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from tasks.params import check
from tasks.training import train_model
from tasks.unlearning.base import (
    UNLEARNING,
    ForgetRequest,
    TrainingState,
    UnlearningMethod,
    fit_standard,
)


class SisaEnsemble(nn.Module):
    """Torch shard models; ``forward`` returns log of the mean shard softmax (n, C)."""

    def __init__(self, shards: list[nn.Module]) -> None:
        super().__init__()
        self.shards = nn.ModuleList(shards)
        # Per (shard, slice) checkpoints for sliced training; not part of the state dict.
        self.checkpoints: dict[str, dict[str, torch.Tensor]] = {}
        self.retrained: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x), dim=1) for m in self.shards])
        return torch.log(probs.mean(dim=0).clamp_min(1e-12))


@dataclass
class SisaSklearn:
    """Scikit-learn shard models with the same aggregate."""

    shards: list
    retrained: tuple[int, ...] = field(default=())

    @property
    def num_classes(self) -> int:
        return self.shards[0].num_classes

    def proba(self, x: np.ndarray) -> np.ndarray:
        return np.mean(np.stack([m.proba(x) for m in self.shards]), axis=0)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.log(np.clip(self.proba(x), 1e-12, 1.0)).astype(np.float32)


def shard_assignment(train_indices: np.ndarray, seed: int, shards: int,
                     slices: int) -> list[list[np.ndarray]]:
    """shard -> slice -> sample indices; a seeded random split of the training set."""
    order = np.asarray(train_indices)[np.random.default_rng([seed, 11]).permutation(
        len(train_indices))]
    return [np.array_split(part, slices) for part in np.array_split(order, shards)]


def _shard_seed(seed: int, shard: int) -> int:
    return seed * 1009 + 7919 * (shard + 1)


@UNLEARNING.register("sisa")
class Sisa(UnlearningMethod):
    name = "sisa"
    exact = True
    returns_ensemble = True

    @dataclass(frozen=True)
    class Params:
        shards: int = 10  # ATTACKS.md 2.3: num_shard = 10
        slices: int = 1

        def __post_init__(self) -> None:
            # Upper bound: at most one shard per training sample (checked when planned).
            check("shards", self.shards, low=1, integer=True)
            check("slices", self.slices, low=1, integer=True)

    def original_recipe(self, params: Params) -> dict:
        return {"sisa_shards": params.shards, "sisa_slices": params.slices}

    # -- training ---------------------------------------------------------------------------
    def _train_shard(self, state: TrainingState, plan: list[np.ndarray], shard: int,
                     start_slice: int, start_state: dict | None, exclude: tuple[int, ...],
                     checkpoints: dict) -> nn.Module:
        d = state.dataset
        seed = _shard_seed(state.seed, shard)
        model = state.initial_model(seed)
        if start_state is not None:
            model.load_state_dict(start_state)
        for r in range(start_slice, len(plan)):
            # Slice r trains on slices 0..r; excluded samples never take part.
            model = train_model(model, d.x_train, d.y_train, np.concatenate(plan[: r + 1]),
                                state.train_cfg, seed + r, state.device, exclude=exclude)
            if len(plan) > 1:
                checkpoints[f"s{shard}r{r}"] = copy.deepcopy(model.state_dict())
        return model

    def train_original(self, state: TrainingState, params: Params):
        plan = shard_assignment(state.train_indices, state.seed, params.shards, params.slices)
        if state.family == "sklearn":
            if params.slices != 1:
                raise ValueError("sisa.slices > 1 needs a torch model: scikit-learn models "
                                 "cannot resume from a checkpoint")
            return SisaSklearn([fit_standard(state, indices=np.concatenate(p),
                                             seed=_shard_seed(state.seed, s))
                                for s, p in enumerate(plan)])
        checkpoints: dict = {}
        models = [self._train_shard(state, p, s, 0, None, (), checkpoints)
                  for s, p in enumerate(plan)]
        ensemble = SisaEnsemble(models)
        ensemble.checkpoints = checkpoints
        return ensemble

    # -- unlearning -------------------------------------------------------------------------
    def unlearn(self, state: TrainingState, request: ForgetRequest, params: Params):
        plan = shard_assignment(state.train_indices, state.seed, params.shards, params.slices)
        exclude = tuple(state.removed) + request.indices
        forget = set(request.indices)
        affected = [s for s, p in enumerate(plan) if forget & set(np.concatenate(p).tolist())]
        original = state.original
        if state.family == "sklearn":
            shards = list(original.shards)
            for s in affected:
                keep = np.concatenate(plan[s])
                shards[s] = fit_standard(state, indices=keep, exclude=exclude,
                                         seed=_shard_seed(state.seed, s))
            return SisaSklearn(shards, retrained=tuple(affected))
        shards = [m for m in original.shards]
        checkpoints = dict(original.checkpoints)
        for s in affected:
            first = min(r for r, sl in enumerate(plan[s]) if forget & set(sl.tolist()))
            start = checkpoints.get(f"s{s}r{first - 1}") if first > 0 else None
            shards[s] = self._train_shard(state, plan[s], s, first if start else 0, start,
                                          exclude, checkpoints)
        ensemble = SisaEnsemble([copy.deepcopy(m) if i not in affected else m
                                 for i, m in enumerate(shards)])
        ensemble.checkpoints = checkpoints
        ensemble.retrained = tuple(affected)
        return ensemble
