"""What every sweep unit of the ``defences`` stage shares: row columns, seeds, the held-out
data of update defences and the records utility is measured on, and the figure's points."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from orchestrator.engine.units import Rows
from orchestrator.spec.schema import Spec, stable_hash
from orchestrator.stages.defences.settings import TABLE
from orchestrator.store.handoff import HANDOFF, Handoff
from tasks.defences import DEFENCES, UpdateContext
from tasks.splits import select_training_set
from tasks.training import accuracy, predict_logits


def seed_of(*parts: Any) -> int:
    return int(stable_hash(list(parts), 8), 16)


def test_acc(model, dataset, device, records: np.ndarray) -> float:
    """Accuracy on the test records ``records`` (see :func:`update_data`)."""
    return accuracy(predict_logits(model, dataset.x_test[records], device),
                    dataset.y_test[records])


def update_data(spec: Spec, state, seed: int, source: str) -> tuple[UpdateContext, np.ndarray]:
    """The held-out data update defences (fine-tuning) may train on, and the test records every
    row of the unit measures utility on, disjoint from it.

    ``public``: the public split; utility on the whole test split. ``test``: a seeded half of
    the test split; utility on the other half, so no row reports accuracy on records the
    defence fine-tuned on (and rows of one sweep stay comparable, the baseline included).
    """
    d = state.dataset
    if source == "public":
        sel = select_training_set(len(d.y_train), spec.dataset.pool_size,
                                  spec.dataset.train_size, seed)
        return (UpdateContext(d.x_train, d.y_train, sel.public, spec.training, state.device,
                              "public"), np.arange(len(d.y_test)))
    order = np.random.default_rng([seed, 29]).permutation(len(d.y_test))
    half = len(order) // 2
    tune, evaluate = np.sort(order[:half]), np.sort(order[half:])
    return (UpdateContext(d.x_test, d.y_test, tune, spec.training, state.device, "test"),
            evaluate)


def common(spec: Spec, params: dict, attack: str) -> dict[str, Any]:
    defence = params["defence"]
    cls = None if defence == "none" else DEFENCES.get(defence)
    return {"key": params["key"], "experiment": spec.experiment,
            "config_hash": spec.config_hash, "seed": params["seed"],
            "dataset": spec.dataset.name, "model": spec.model.name, "attack": attack,
            "defence": defence, "acts_on": cls.acts_on if cls else None,
            "defence_paper": cls.paper if cls else None,
            "strength_name": cls.strength_field if cls else None,
            "strength": params["strength"],
            "defence_params": json.dumps(params["defence_params"], sort_keys=True) or None}


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def figure_point(row: dict, utility: str) -> dict:
    """What the figure unit draws of one row (handed on: it never waits for buffered rows)."""
    point = {k: row.get(k) for k in ("key", "attack", "defence", "strength", "strength_name",
                                     "attack_metric", "attack_metric_name", "epsilon",
                                     "epsilon_pair", "unlearning_method", "attack_model",
                                     "seed", "classical_auc")}
    point["utility"] = row[utility]
    point["utility_name"] = utility
    point["epsilon"] = _finite(point["epsilon"])
    point["epsilon_pair"] = _finite(point["epsilon_pair"])
    return point


def with_points(rows: list[dict], utility: str) -> Rows:
    """A defence unit's rows, its figure points handed on."""
    return {TABLE: rows,
            HANDOFF: Handoff({"points": [figure_point(r, utility) for r in rows]})}
