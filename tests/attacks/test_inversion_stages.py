"""The recovery and label_inference stages end to end, inline (no Ray): rows, images, figures."""

from __future__ import annotations

import json

import numpy as np
import yaml

from orchestrator.context import TaskContext
from orchestrator.engine.execute import execute_inline
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import expand
from orchestrator.store.tables import Results

SPEC = """
experiment: inv_tiny
seed: 0
dataset: {name: digits, train_size: 300}
model: {name: mlp, hidden: [16]}
training: {epochs: 3, lr: 0.05, batch_size: 32}
forget: {kind: single, count: 2}
unlearning:
  - method: gradient_ascent
    lr: 1.0
recovery:
  targets_per_task: 2
  configs:
    - {name: ref, iterations: 5, restarts: 2}
    - {name: paper, knowledge: paper, label_mode: inferred, iterations: 5, restarts: 1}
label_inference:
  shares: [1.0]
  classes: [0, 3]
  boxes: [black]
  scores: [prob, logodds]
  probes: {probes_per_class: 1, iterations_per_call: 2, max_calls: 1}
"""

RECOVERY_COLUMNS = {"key", "experiment", "config_hash", "seed", "psnr", "ssim", "mse",
                    "psnr_ref", "psnr_random", "psnr_mean_image", "cos_final", "true_label",
                    "label_used", "iterations", "attack.restarts", "wall_s", "arrays_path",
                    "unlearning_method", "knowledge", "attack.label_mode", "attack_config",
                    "cfg.experiment"}
LABEL_COLUMNS = {"key", "true_class", "predicted_class", "correct", "p", "unlearning_method",
                 "attack.box", "queries", "attack.score", "config_hash", "seed"}


def _vector(value) -> np.ndarray:
    """A list column as read back: a list, an array or its JSON text."""
    return np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64)


def test_recovery_and_label_inference_stages(tmp_path):
    (spec,) = expand(yaml.safe_load(SPEC))
    _, units = plan_run(spec, None)
    results = Results(tmp_path / "res", spec.experiment)
    ctx = TaskContext(spec.experiment, str(tmp_path / "res"), str(tmp_path / "art"), None, "cpu")
    report = execute_inline(units, results, ctx)
    assert report.failed == 0, report.errors
    rec = results.read("recoveries")
    assert len(rec) == 2 * 2 and RECOVERY_COLUMNS <= set(rec.columns)
    assert rec["arrays_path"].map(lambda p: p.endswith(".npz")).all()
    # Arrays and images live beside the tables, never inside a table's folder.
    assert not list((tmp_path / "res" / "inv_tiny" / "recoveries").glob("**/*.npz"))
    li = results.read("label_inference")
    assert len(li) == 2 * 2 and LABEL_COLUMNS <= set(li.columns)  # 2 classes x 2 scores
    assert (li["queries"] > 0).all()
    # Both decision rules ran: the reference one on probabilities and the log-odds one.
    score = li["attack.score"]
    assert sorted(score) == ["logodds", "logodds", "prob", "prob"]
    for rule, row in zip(score, li.itertuples()):
        delta = _vector(row.delta_by_class)
        # Each predicts the class whose own confidence dropped most.
        assert row.predicted_class == int(np.argmin(np.where(np.isnan(delta), np.inf, delta)))
        if rule == "prob":  # mean changes of probabilities
            assert np.nanmax(np.abs(delta)) <= 1
    prob = li[score == "prob"].set_index("request_id")["delta_by_class"]
    logodds = li[score == "logodds"].set_index("request_id")["delta_by_class"]
    for request in prob.index:
        assert not np.allclose(_vector(prob[request]), _vector(logodds[request]),
                               equal_nan=True)
    figures = results.read("figure_index")
    assert set(figures["figure"]) == {"recoveries", "label_inference"}
    pngs = sorted((tmp_path / "res" / "inv_tiny" / "figures").glob("*.png"))
    assert len(pngs) == len(figures) and all(p.stat().st_size > 1000 for p in pngs)
    # A rerun finds every unit done.
    assert execute_inline(units, results, ctx).skipped == len({u.key for u in units})
