"""Tuning an unlearning method to a utility target (issue 15, ``search.objective:
unlearning``): the distance to retraining's forget accuracy, with a penalty once test
accuracy falls more than ``max_test_drop`` below the original's."""

from __future__ import annotations

import pytest
import yaml

from orchestrator.context import TaskContext
from orchestrator.search.objectives import OBJECTIVES, ensure_models, prepare_targets
from orchestrator.spec.schema import expand

SPEC = """
experiment: tune-unlearning
seed: 0
dataset: {name: digits, train_size: 300}
model: {name: mlp, hidden: [32]}
training: {epochs: 20, lr: 0.05, batch_size: 32, momentum: 0.9}
forget: {kind: group, size: 20, count: 2}
unlearning: [{method: gradient_ascent, lr: 0.0001}, {method: retrain}]
"""


def _evaluate(tmp_path, method: dict, **config):
    data = yaml.safe_load(SPEC)
    data["unlearning"][0] = method
    (spec,) = expand(data)
    ctx = TaskContext(spec.experiment, str(tmp_path / "res"), str(tmp_path / "art"), None,
                      "cpu")
    core = ensure_models(spec, ctx, None)
    objective = OBJECTIVES.get("unlearning")()
    settings = objective.config(config, "search.attack")
    objective.check_config(spec, settings)
    out = objective.evaluate(prepare_targets(core, 0, 2, 0), ctx, settings)
    return {k: float(v.mean()) for k, v in out.items()}


def test_the_target_rewards_forgetting_like_retraining_and_punishes_lost_utility(tmp_path):
    timid = _evaluate(tmp_path, {"method": "gradient_ascent", "lr": 0.0001})
    wild = _evaluate(tmp_path, {"method": "gradient_ascent", "lr": 30.0, "steps": 5})
    itself = _evaluate(tmp_path, {"method": "retrain"})
    # Retraining against itself: the same recipe, the same models, no gap at all.
    assert itself["target_gap"] == 0 and itself["forget_gap"] == 0
    # A step too small keeps the forget set as well learnt as theta did (better than
    # retraining, which never saw it); one too large destroys the model and pays the penalty.
    assert timid["forget_acc"] > timid["reference_forget_acc"]
    assert timid["target_gap"] == pytest.approx(timid["forget_gap"])
    assert wild["test_drop"] > 0.01
    assert wild["target_gap"] > wild["forget_gap"] and wild["target_gap"] > timid["target_gap"]


def test_a_spec_without_the_reference_method_is_refused(tmp_path):
    data = yaml.safe_load(SPEC)
    data["unlearning"] = data["unlearning"][:1]
    (spec,) = expand(data)
    objective = OBJECTIVES.get("unlearning")()
    with pytest.raises(ValueError, match=r"search.attack.reference: .* needs 'retrain'"):
        objective.check_config(spec, objective.config({}, "search.attack"))


def test_matching_the_loss_bites_where_matching_accuracy_does_not(tmp_path):
    """Retraining classifies most forgotten digits correctly anyway, so a step that changes
    nothing meets the accuracy target; the forget loss still tells it from retraining."""
    timid = _evaluate(tmp_path, {"method": "gradient_ascent", "lr": 0.0001}, match="loss")
    accuracy = _evaluate(tmp_path, {"method": "gradient_ascent", "lr": 0.0001})
    assert timid["forget_loss"] < timid["reference_forget_loss"]
    assert 0.5 < timid["forget_gap"] <= 1  # theta's forget loss is a fraction of retraining's
    assert timid["forget_gap"] > 3 * accuracy["forget_gap"]
