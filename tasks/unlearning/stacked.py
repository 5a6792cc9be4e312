"""Training and unlearning many members at once (issue 14: hundreds of models per audit).

An audit by U-LiRA or the epsilon score trains M originals that differ only in their data and
seed, and unlearns each one. Where the maths allows, these helpers run all members in one
vectorised program (:mod:`tasks.ensemble`) and give the models member-by-member code would
give, up to float reduction order; where it does not (scikit-learn models, BatchNorm or
dropout in training, members of unequal size, online replacements) they run member by member.
Callers never need to know which path ran: the result is the same list of models.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np

from tasks.ensemble import gradient_ascent_members, stateful_layer, train_members
from tasks.training import TrainConfig, seed_everything
from tasks.unlearning.base import (
    ForgetRequest,
    Model,
    TrainingState,
    UnlearningMethod,
    fit_standard,
)


def _shared(states: Sequence[TrainingState]) -> bool:
    """One dataset, device and recipe for all members (the stacked program's precondition)."""
    first = states[0]
    return first.family == "torch" and all(
        s.dataset is first.dataset and s.device == first.device and s.model_cfg == first.model_cfg
        for s in states)


def _sizes_equal(states: Sequence[TrainingState], excludes: Sequence[Sequence[int]]) -> bool:
    sizes = {int((~np.isin(s.train_indices, np.asarray(ex, dtype=np.int64))).sum())
             for s, ex in zip(states, excludes)}
    return len(sizes) == 1


def _trainable_stacked(states: Sequence[TrainingState], excludes: Sequence[Sequence[int]],
                       probe: Model) -> bool:
    return (_shared(states) and _sizes_equal(states, excludes)
            and stateful_layer(probe) is None)


def fit_members(states: Sequence[TrainingState],
                excludes: Sequence[Sequence[int]] | None = None) -> list[Model]:
    """``fit_standard(state_i, exclude=excludes[i])`` for every member, stacked when possible
    (each member: its own seed, initial weights and training indices)."""
    if not states:
        return []
    excludes = [()] * len(states) if excludes is None else [tuple(e) for e in excludes]
    if states[0].family == "torch":
        models = [s.initial_model(s.seed) for s in states]
        if _trainable_stacked(states, excludes, models[0]):
            d = states[0].dataset
            return train_members(models, d.x_train, d.y_train,
                                 [s.train_indices for s in states], states[0].train_cfg,
                                 [s.seed for s in states], states[0].device, excludes)
    out = []
    for s, ex in zip(states, excludes):
        seed_everything(s.seed)
        out.append(fit_standard(s, exclude=ex))
    return out


def one_by_one(method, states: Sequence[TrainingState], requests: Sequence[ForgetRequest],
               params) -> list[Model]:
    """The member-by-member path (the base class's :meth:`unlearn_members`)."""
    return UnlearningMethod.unlearn_members(method, states, requests, params)


def retrain_members(method, states: Sequence[TrainingState],
                    requests: Sequence[ForgetRequest], params) -> list[Model]:
    """Retraining without each member's forget set: the recipe replayed, stacked."""
    if any(r.replacement for r in requests):
        return one_by_one(method, states, requests, params)
    return fit_members(states, [tuple(s.removed) + r.indices for s, r in
                                zip(states, requests, strict=True)])


def ascent_members(method, states: Sequence[TrainingState], requests: Sequence[ForgetRequest],
                   params) -> list[Model]:
    """Gradient ascent on each member's forget set (forget sets of one size), stacked."""
    sizes = {len(r.indices) for r in requests}
    if not _shared(states) or len(sizes) != 1 or any(s.original is None for s in states):
        return one_by_one(method, states, requests, params)
    d = states[0].dataset
    return gradient_ascent_members([s.original for s in states], d.x_train, d.y_train,
                                   [r.indices for r in requests], lr=params.lr,
                                   steps=params.steps, batch_size=params.batch_size,
                                   device=states[0].device)


def finetune_members(method, states: Sequence[TrainingState],
                     requests: Sequence[ForgetRequest], params, cfg: TrainConfig,
                     purpose: str) -> list[Model]:
    """``cfg``'s epochs on each member's retained data, from its original, stacked; each
    member's batch order from its ``purpose`` seed (these epochs follow the original's, they
    do not replay them)."""
    excludes = [tuple(s.removed) + r.indices for s, r in zip(states, requests, strict=True)]
    if any(s.original is None for s in states) or not _trainable_stacked(
            states, excludes, states[0].original):
        return one_by_one(method, states, requests, params)
    d = states[0].dataset
    models = [copy.deepcopy(s.original).to(s.device) for s in states]
    return train_members(models, d.x_train, d.y_train, [s.train_indices for s in states], cfg,
                         [s.seeds.seed(purpose) for s in states], states[0].device, excludes)


def member_states(template: TrainingState, index_sets: Sequence[np.ndarray],
                  seeds: Sequence[int]) -> list[TrainingState]:
    """One state per member, sharing the template's dataset (loaded once) and recipe."""
    return [dataclasses.replace(template, train_indices=np.asarray(idx, dtype=np.int64),
                                seed=int(seed), original=None, removed=(), extras={})
            for idx, seed in zip(index_sets, seeds, strict=True)]
