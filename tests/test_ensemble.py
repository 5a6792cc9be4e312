"""Vectorised ensemble training and unlearning equal one-at-a-time training (issue 14)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tasks.data import load_dataset
from tasks.ensemble import (
    ensemble_logits,
    gradient_ascent_members,
    train_ensemble,
    train_members,
)
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, predict_logits, train_model
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState

MLP = ModelConfig("mlp", {"hidden": [64]})
SEEDS = [3, 4, 5, 6]
ATOL = 1e-5


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _make(d):
    return lambda s: build_torch_model(MLP, d.input_shape, d.num_classes, d.mean, d.std, seed=s)


def _index_sets(d, size: int = 300) -> list[np.ndarray]:
    # 300 is no multiple of the batch size: the short last batch is exercised too.
    rng = np.random.default_rng(0)
    return [rng.choice(len(d.y_train), size, replace=False) for _ in SEEDS]


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(),
                                                          b.state_dict().values()))


def _assert_same_models(ensemble, singles, d) -> None:
    for e, s in zip(ensemble, singles):
        assert _max_diff(e, s) < ATOL
    logits = ensemble_logits(ensemble, d.x_test)
    for i, s in enumerate(singles):
        ref = predict_logits(s, d.x_test)
        np.testing.assert_allclose(logits[i], ref, atol=1e-4)
        np.testing.assert_array_equal(logits[i].argmax(1), ref.argmax(1))
    # Members differ from one another: each got its own seed and index set.
    assert _max_diff(ensemble[0], ensemble[1]) > 1e-2


@pytest.mark.parametrize("cfg", [
    TrainConfig(epochs=3, lr=0.05, batch_size=64, momentum=0.9, weight_decay=5e-4,
                lr_milestones=(2,)),
    TrainConfig(epochs=3, lr=0.01, batch_size=64, optimizer="adam", weight_decay=1e-4),
    TrainConfig(epochs=2, lr=0.1, batch_size=50, momentum=0.0),
], ids=["sgd-momentum-decay-milestone", "adam", "plain-sgd"])
def test_ensemble_equals_one_at_a_time(digits, cfg):
    d, make, sets = digits, _make(digits), _index_sets(digits)
    ensemble = train_ensemble(make, d.x_train, d.y_train, sets, cfg, SEEDS)
    singles = [train_model(make(s), d.x_train, d.y_train, idx, cfg, s)
               for s, idx in zip(SEEDS, sets)]
    _assert_same_models(ensemble, singles, d)
    assert not any(m.training for m in ensemble)


def test_exclusion_replays_retraining_per_member(digits):
    d, make = digits, _make(digits)
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=64)
    sets = _index_sets(d)
    excludes = [tuple(int(i) for i in idx[5 * k: 5 * k + 3]) for k, idx in enumerate(sets)]
    ensemble = train_ensemble(make, d.x_train, d.y_train, sets, cfg, SEEDS, excludes=excludes)
    singles = [train_model(make(s), d.x_train, d.y_train, idx, cfg, s, exclude=ex)
               for s, idx, ex in zip(SEEDS, sets, excludes)]
    _assert_same_models(ensemble, singles, d)


def test_unequal_sizes_are_refused(digits):
    d = digits
    sets = _index_sets(d)
    sets[2] = sets[2][:-1]
    with pytest.raises(ValueError, match="equally many samples"):
        train_ensemble(_make(d), d.x_train, d.y_train, sets, TrainConfig(epochs=1), SEEDS)


def test_batchnorm_and_dropout_are_refused(digits):
    d = digits
    for layer in (nn.BatchNorm1d(16), nn.Dropout(0.5)):
        models = [nn.Sequential(nn.Flatten(), nn.Linear(64, 16), layer, nn.Linear(16, 10))
                  for _ in SEEDS]
        with pytest.raises(ValueError, match="train such models one at a time|train_model"):
            train_members(models, d.x_train, d.y_train, _index_sets(d), TrainConfig(epochs=1),
                          SEEDS)


def test_mismatched_architectures_are_refused(digits):
    d = digits
    models = [_make(d)(0), build_torch_model(ModelConfig("mlp", {"hidden": [32]}),
                                             d.input_shape, 10, d.mean, d.std, seed=1)]
    with pytest.raises(ValueError, match="one architecture"):
        train_members(models, d.x_train, d.y_train, _index_sets(d)[:2], TrainConfig(epochs=1),
                      SEEDS[:2])


def _gradient_ascent_reference(d, models, forget_sets, params, model_cfg):
    method = UNLEARNING.get("gradient_ascent")()
    out = []
    for m, forget in zip(models, forget_sets):
        state = TrainingState(d, model_cfg, TrainConfig(), np.arange(10), 0, original=m)
        out.append(method.unlearn(state, ForgetRequest("r", "group", tuple(forget)), params))
    return out


@pytest.mark.parametrize("lr,steps,batch_size", [(0.5, None, 128), (0.2, 3, 2)],
                         ids=["one-step", "three-steps-wrapping"])
def test_gradient_ascent_across_members_equals_the_method(digits, lr, steps, batch_size):
    d, make = digits, _make(digits)
    models = train_ensemble(make, d.x_train, d.y_train, _index_sets(d),
                            TrainConfig(epochs=1), SEEDS)
    before = [copy.deepcopy(m) for m in models]
    forget = [[int(i) for i in idx[:5]] for idx in _index_sets(d)]
    params = UNLEARNING.get("gradient_ascent").Params(lr=lr, steps=steps, batch_size=batch_size)
    unlearned = gradient_ascent_members(models, d.x_train, d.y_train, forget, lr=lr,
                                        steps=steps, batch_size=batch_size)
    reference = _gradient_ascent_reference(d, models, forget, params, MLP)
    for u, r, m, b in zip(unlearned, reference, models, before):
        assert _max_diff(u, r) < ATOL
        assert _max_diff(u, m) > 1e-3  # the ascent moved the weights ...
        assert _max_diff(m, b) == 0.0  # ... of copies: the originals are untouched


def test_gradient_ascent_runs_batchnorm_members_in_eval_mode(digits):
    d = digits
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=64)
    models = []
    for s, idx in zip(SEEDS, _index_sets(d)):
        torch.manual_seed(s)
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 10))
        models.append(train_model(m, d.x_train, d.y_train, idx, cfg, s))
    forget = [[int(i) for i in idx[:4]] for idx in _index_sets(d)]
    unlearned = gradient_ascent_members(models, d.x_train, d.y_train, forget, lr=0.5)
    # The method only checks the family ("torch"); the modules themselves carry BatchNorm.
    reference = _gradient_ascent_reference(
        d, models, forget, UNLEARNING.get("gradient_ascent").Params(lr=0.5), MLP)
    for u, r in zip(unlearned, reference):
        assert _max_diff(u, r) < ATOL


# --- unlearning methods across members: the stacked path equals member-by-member ---------------

def _member_states(d, originals: bool):
    from tasks.unlearning.stacked import fit_members, member_states

    template = TrainingState(d, MLP, TrainConfig(epochs=2, batch_size=64, lr=0.05),
                             np.arange(10), 0)
    states = member_states(template, _index_sets(d), SEEDS)
    if originals:
        for state, model in zip(states, fit_members(states)):
            state.original = model
    return states


@pytest.mark.parametrize("method", ["retrain", "gradient_ascent", "finetune"])
def test_unlearn_members_equals_one_by_one(digits, method):
    from tasks.unlearning.base import UnlearningMethod

    states = _member_states(digits, originals=method != "retrain")
    requests = [ForgetRequest(f"r{i}", "group", tuple(int(v) for v in s.train_indices[:20]))
                for i, s in enumerate(states)]
    unlearner = UNLEARNING.get(method)()
    params = unlearner.Params(**({"lr": 0.05} if method == "gradient_ascent" else {}))
    stacked = unlearner.unlearn_members(states, requests, params)
    singles = UnlearningMethod.unlearn_members(unlearner, states, requests, params)
    _assert_same_models(stacked, singles, digits)


def test_fit_members_falls_back_for_unequal_sizes(digits):
    """Members of unequal size cannot share batches: they train one by one, same result."""
    from tasks.unlearning.stacked import fit_members, member_states

    template = TrainingState(digits, MLP, TrainConfig(epochs=1, batch_size=64), np.arange(10), 0)
    states = member_states(template, [np.arange(100), np.arange(120)], [1, 2])
    models = fit_members(states)
    ref = train_model(build_torch_model(MLP, digits.input_shape, digits.num_classes,
                                        digits.mean, digits.std, seed=2),
                      digits.x_train, digits.y_train, np.arange(120), states[1].train_cfg, 2)
    assert _max_diff(models[1], ref) < ATOL
