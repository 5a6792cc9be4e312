"""Scoring of label inference: the inferred class against the forgotten one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from tasks.analysis.base import SCORERS, ScoredBatch, Scorer, ScoringContext
from tasks.cases import GroundTruth


@SCORERS.register("label_inference")
class LabelInferenceScorer(Scorer):
    table: ClassVar[str] = "label_inference"
    # accuracy: 1 when the forgotten class is among the top-k guesses (its mean over targets
    # is the attack's accuracy).
    metrics: ClassVar[dict[str, str]] = {"accuracy": "maximize", "delta_own": "minimize",
                                         "queries": "minimize"}
    leakage: ClassVar[str] = "accuracy"

    def score(self, result, truths: Sequence[GroundTruth], config, context: ScoringContext
              ) -> ScoredBatch:
        out = result.per_target()
        top_k = int(getattr(config, "top_k", 1))
        rows, correct, own = [], [], []
        for i, truth in enumerate(truths):
            # A class-share request forgets one class; any other request, the classes of
            # its samples, all of which must be among the top-k guesses.
            forgotten = ({int(truth.forgotten_class)} if truth.forgotten_class is not None
                         else {int(v) for v in truth.y})
            c = min(forgotten)
            pred = [int(v) for v in out["predicted"][i]]
            delta = np.asarray(out["delta_by_class"][i], dtype=np.float64)
            hit = forgotten <= set(pred[:top_k])
            row = {"true_class": c, "predicted_class": pred[0], "predicted": pred,
                   "top_k": top_k, "correct": bool(hit),
                   "p": truth.share, "forget_size": len(truth.indices),
                   "delta_by_class": [float(v) for v in delta], "delta_own": float(delta[c]),
                   "probes_failed": int(out["probes_failed"][i]),
                   "queries": int(out["queries"][i])}
            for name in ("crafting_queries", "scoring_queries", "n_probes"):
                values = getattr(result, name, None)
                row[name] = int(values[i]) if values is not None else None
            rows.append([row])
            correct.append(float(hit))
            own.append(float(delta[c]))
        arrays = {"delta": np.asarray([r[0]["delta_by_class"] for r in rows]),
                  "share": np.asarray([np.nan if t.share is None else t.share
                                       for t in truths]),
                  "true_class": np.asarray([r[0]["true_class"] for r in rows])}
        return ScoredBatch(rows, {"accuracy": np.asarray(correct),
                                  "delta_own": np.asarray(own),
                                  "queries": np.asarray([r[0]["queries"] for r in rows],
                                                        dtype=np.float64)}, arrays)

    def figure(self, arrays, title):
        from tasks.analysis.figures import label_inference_figure

        return label_inference_figure(arrays, title)
