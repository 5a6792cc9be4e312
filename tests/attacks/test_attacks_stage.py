"""The generic attacks stage: refusals before any work, and the threat-model boundary."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

import orchestrator.stages  # noqa: F401  (registers the spec sections)
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import SpecError, expand

BASE = yaml.safe_load("""
experiment: atk
seed: 0
dataset: {name: digits, train_size: 200}
model: {name: mlp, hidden: [8]}
training: {epochs: 1, lr: 0.05, batch_size: 32}
forget: {kind: single, count: 2}
unlearning: [{method: retrain}, {method: gradient_ascent, lr: 1.0}]
attacks:
  ref:
    attack: inversion
    config: {knowledge: reference, iterations: 2, restarts: 1}
""")


def _plan(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        data[key] = value
    (spec,) = expand(data)
    return plan_run(spec, None)


def test_exact_reference_target_is_refused_without_pretraining():
    with pytest.raises(ValueError, match="needs a pretrained theta0"):
        _plan()
    # Restricted to the approximate method it plans.
    attacks = copy.deepcopy(BASE["attacks"])
    attacks["ref"]["methods"] = ["gradient_ascent"]
    _, units = _plan(attacks=attacks)
    assert any(u.fn == "attack_batch" for u in units)


def test_exact_reference_target_is_refused_after_more_than_one_step():
    with pytest.raises(ValueError, match="one training step from theta0; the recipe takes 7"):
        _plan(dataset={"name": "digits", "pool_size": 1000, "train_size": 200},
              pretraining={"epochs": 1})


def test_exact_reference_target_plans_for_one_full_batch_step():
    _, units = _plan(dataset={"name": "digits", "pool_size": 1000, "train_size": 200},
                     pretraining={"epochs": 1},
                     training={"epochs": 1, "lr": 0.05, "batch_size": 200})
    assert sum(u.fn == "attack_batch" for u in units) == 2


@pytest.mark.parametrize("entry, message", [
    ({"attack": "nope"}, "unknown attack 'nope'"),
    ({"attack": "tasks.models:mlp"}, "does not fit: expected a class"),
    ({"attack": "no_such_module:X"}, "cannot import 'no_such_module'"),
    ({"attack": "inversion", "config": {"iterashuns": 3}}, "config.iterashuns: unknown key"),
    ({"attack": "probing"}, "give the entry forget: {kind: class_share"),
    ({"attack": "inversion", "methods": ["sisa"]}, "'sisa' is not among"),
    ({"attack": "inversion", "targets_per_task": 0}, "targets_per_task: must be >= 1"),
])
def test_bad_entries_are_refused_with_the_key(entry, message):
    if entry["attack"] == "inversion" and "config" not in entry:
        entry = {"config": {"knowledge": "paper", "iterations": 2}, **entry}
    with pytest.raises((SpecError, ValueError), match=message):
        _plan(attacks={"bad": entry})


def test_a_white_box_attack_is_refused_on_a_scikit_learn_model():
    with pytest.raises(ValueError, match="needs a torch model"):
        _plan(model={"name": "dt"}, unlearning=[{"method": "retrain"}],
              attacks={"x": {"attack": "inversion", "config": {"knowledge": "paper"}}})


def test_query_access_exposes_no_model(digits_state):
    from tasks.cases import build_case
    from tasks.unlearning import ForgetRequest

    case, _ = build_case(dataset=digits_state.dataset, theta=digits_state.original,
                         theta_u=digits_state.original, request=ForgetRequest("r", "single",
                                                                              (0,)),
                         knowledge="paper", white_box=False)
    assert case.theta is None and case.theta_u is None
    for access in (case.query_original, case.query_unlearned):
        assert not hasattr(access, "__dict__")  # slots only: nothing to reach through
        assert not any(isinstance(getattr(access, n), torch.nn.Module)
                       for n in access.__slots__)
        before = access.queries
        probs = access(torch.as_tensor(digits_state.dataset.x_train[:3]))
        assert probs.shape == (3, 10) and access.queries == before + 3


def test_a_defended_query_access_answers_with_the_defended_outputs(digits_state):
    import numpy as np

    from tasks.cases import build_case
    from tasks.unlearning import ForgetRequest

    def label_only(logits):
        out = np.zeros_like(logits)
        out[np.arange(len(logits)), logits.argmax(1)] = 1.0
        return out

    case, _ = build_case(dataset=digits_state.dataset, theta=digits_state.original,
                         theta_u=digits_state.original,
                         request=ForgetRequest("r", "single", (0,)), knowledge="paper",
                         white_box=False, output_transform=label_only)
    probs = case.query_unlearned(torch.as_tensor(digits_state.dataset.x_train[:5])).numpy()
    assert set(np.unique(probs)) <= {0.0, 1.0} and (probs.sum(1) == 1).all()


def test_a_shadow_pair_attack_is_sent_to_the_membership_section():
    with pytest.raises(ValueError, match="run it from the membership: section"):
        _plan(attacks={"m": {"attack": "membership"}})
