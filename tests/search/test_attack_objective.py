"""Any attack as a search objective: scored by its scorer, the same whatever the fanout."""

from __future__ import annotations

import numpy as np
import yaml

from orchestrator.context import TaskContext
from orchestrator.search.base import TargetSet
from orchestrator.search.objectives import (
    OBJECTIVES,
    ensure_models,
    objective_class,
    prepare_targets,
)
from orchestrator.spec.schema import expand

SPEC = """
experiment: objective
seed: 0
dataset: {name: digits, train_size: 200}
model: {name: mlp, hidden: [16]}
training: {epochs: 3, lr: 0.05, batch_size: 32}
forget: {kind: single, count: 4}
unlearning: [{method: gradient_ascent, lr: 1.0}]
"""


def test_probing_gives_the_same_result_whatever_the_fanout(tmp_path):
    (spec,) = expand(yaml.safe_load(SPEC))
    ctx = TaskContext(spec.experiment, str(tmp_path / "res"), str(tmp_path / "art"), None, "cpu")
    core = ensure_models(spec, ctx, None)
    objective = OBJECTIVES.get("probing")()
    config = objective.config({"box": "black", "probes_per_class": 1, "iterations_per_call": 2,
                               "max_calls": 1, "coordinates": 16})
    targets = prepare_targets(core, 0, 4, 0)
    whole = objective.evaluate(targets, ctx, config)
    # What search.fanout > 1 does: each target alone, with its seed in the whole trial.
    alone = [objective.evaluate(TargetSet(spec, core, [pair], i), ctx, config)
             for i, pair in enumerate(targets.pairs)]
    assert set(whole) == {"accuracy", "delta_own", "queries"}
    for name, values in whole.items():
        np.testing.assert_array_equal(values, np.concatenate([a[name] for a in alone]))


def test_any_registered_attack_is_an_objective_with_its_scorers_metrics():
    cls = objective_class("inversion")
    assert cls.metrics["psnr"] == "maximize" and cls.default_metric == "psnr"
    assert cls.intermediate == ("matching_loss",)
    assert objective_class("tasks.attacks.probing:ProbingLabelInference").default_metric == \
        "accuracy"
