"""Scoring of membership inference: one copy of AUC, TPR at low FPR, accuracy and the
classical-baseline comparison (DegCount/DegRate) for every caller.

The scorer ``membership`` turns a :class:`tasks.attacks.membership.MembershipResult` and each
case's :class:`tasks.attacks.membership.MembershipTruth` into one row per (feature, attack
model, control) of every case -- the metric columns of the ``mia`` table -- and keeps the
per-record scores in ``arrays`` (the ``membership`` table and the ROC figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from tasks.analysis.base import SCORERS, ScoredBatch, Scorer, ScoringContext
from tasks.analysis.statistics import auc, check_scores, roc, tpr_at_fpr
from tasks.attacks.membership_features import CLASSICAL

LOW_FPRS = (0.01, 0.001, 0.0)


def membership_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1 %, 0.1 % and 0 % FPR of membership scores (P(member))."""
    out = {"auc": auc(y, score)}
    for fpr in LOW_FPRS:
        out[f"tpr_at_{fpr:g}_fpr"] = tpr_at_fpr(y, score, fpr)
    return out


def _nan() -> float:
    return float("nan")


def entry_rows(entries: Sequence[tuple[str, str, str]], label: np.ndarray,
               scores: np.ndarray, shadow_label: np.ndarray,
               shadow_scores: np.ndarray) -> list[dict[str, Any]]:
    """One row per entry: its metrics on the candidates (``label``, ``scores`` (E, n)) and on
    the shadow rows it was fitted on, and the gain over the classical attack of its model."""
    classical = {m: e for e, (f, m, c) in enumerate(entries) if f == CLASSICAL and c == "none"}
    rows = []
    for e, (feature, model, control) in enumerate(entries):
        s = scores[e]
        m = membership_metrics(label, s)
        row = {"feature": feature, "attack_model": model, "control": control,
               "auc": m["auc"], "acc": accuracy(label, s),
               "train_auc": auc(shadow_label, shadow_scores[e]),
               "train_acc": accuracy(shadow_label, shadow_scores[e]),
               "tpr_at_1pct": m["tpr_at_0.01_fpr"], "tpr_at_0_1pct": m["tpr_at_0.001_fpr"]}
        base = classical.get(model)
        if base is None:  # the classical attack was not fitted (config.classical false)
            row.update(classical_auc=_nan(), classical_acc=_nan(),
                       classical_tpr_at_1pct=_nan())
        else:
            b = scores[base]
            row.update(classical_auc=auc(label, b), classical_acc=accuracy(label, b),
                       classical_tpr_at_1pct=tpr_at_fpr(label, b, 0.01))
        row["auc_gain"] = row["auc"] - row["classical_auc"]
        if feature == CLASSICAL or control != "none" or base is None:
            row["deg_count"] = row["deg_rate"] = None
        else:
            row["deg_count"], row["deg_rate"] = degradation(label, s, scores[base])
        rows.append(row)
    return rows


def roc_curves(arrays: dict[str, np.ndarray], case: int | None = None
               ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(fpr, tpr) of every (feature, attack model) without control, from a scored batch's
    ``arrays`` (``case``: that case's rows only; default all)."""
    keep = slice(None) if case is None else arrays["case"] == case
    label = arrays["label"][keep]
    return {(str(f), str(m)): roc(label, arrays["score"][e][keep])
            for e, (f, m, c) in enumerate(zip(arrays["feature"], arrays["attack_model"],
                                              arrays["control"])) if c == "none"}


# Its tables: one row per attack (feature x attack model x scenario), and one per scored record.
ATTACKS_TABLE = "membership_attacks"
RECORDS_TABLE = "membership_records"


@SCORERS.register("membership")
class MembershipScorer(Scorer):
    """Rows: one per (feature, attack model, control) of each case, not one per case.

    Per-target metrics are those of the case's first entry: the configuration's first feature
    and attack model, without control (a search or defence sweep names one attack that way).
    """

    table: ClassVar[str] = ATTACKS_TABLE
    metrics: ClassVar[dict[str, str]] = {"auc": "maximize", "acc": "maximize",
                                         "tpr_at_1pct": "maximize",
                                         "tpr_at_0_1pct": "maximize",
                                         "train_auc": "maximize"}
    leakage: ClassVar[str] = "auc"

    def score(self, result, truths: Sequence[Any], config: Any,
              context: ScoringContext) -> ScoredBatch:
        out = result.per_target()
        entries = list(result.entries)
        if len(truths) != len(out["scores"]):
            raise ValueError(f"{len(truths)} truths for {len(out['scores'])} cases")
        rows, labels, cases, scores, classical = [], [], [], [], []
        base = {m: e for e, (f, m, c) in enumerate(entries) if f == CLASSICAL and c == "none"}
        for i, truth in enumerate(truths):
            label = np.asarray(truth.label).astype(int)
            s = np.asarray(out["scores"][i], dtype=np.float64)
            if s.shape != (len(entries), len(label)):
                raise ValueError(f"case {i}: scores {s.shape} for {len(entries)} attacks and "
                                 f"{len(label)} candidates")
            rows.append(entry_rows(entries, label, s, result.shadow_labels[i],
                                   np.asarray(out["shadow_scores"][i], dtype=np.float64)))
            labels.append(label)
            cases.append(np.full(len(label), i))
            scores.append(s)
            classical.append(np.stack([s[base[m]] if m in base else np.full(len(label), np.nan)
                                       for _, m, _ in entries]))
        metrics = {name: np.asarray([r[0][name] for r in rows], dtype=np.float64)
                   for name in self.metrics}
        arrays = {"feature": np.asarray([f for f, _, _ in entries], dtype=str),
                  "attack_model": np.asarray([m for _, m, _ in entries], dtype=str),
                  "control": np.asarray([c for _, _, c in entries], dtype=str),
                  "label": np.concatenate(labels) if labels else np.zeros(0, int),
                  "case": np.concatenate(cases) if cases else np.zeros(0, int),
                  "score": np.concatenate(scores, axis=1) if scores
                  else np.zeros((len(entries), 0)),
                  "classical_score": np.concatenate(classical, axis=1) if classical
                  else np.zeros((len(entries), 0))}
        return ScoredBatch(rows, metrics, arrays)


# --- metrics of membership inference against unlearning (ATTACKS.md 6.6) ---------------

def accuracy(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> float:
    y, score = check_scores(y, score)
    return float(((score >= threshold).astype(int) == y).mean()) if len(y) else float("nan")


def true_label_confidence(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The attack's posterior on each row's true label: score for members, 1 - score else."""
    y, score = check_scores(y, score)
    return np.where(y == 1, score, 1.0 - score)


def degradation(y: np.ndarray, score_new: np.ndarray,
                score_classical: np.ndarray) -> tuple[float, float]:
    """(DegCount, DegRate) of an unlearning attack against classical MIA (ATTACKS.md 6.6).

    DegCount = fraction of rows where the new attack is strictly more confident of the true
    label; DegRate = mean confidence gain on the true label. Both lie in [-1, 1] (DegCount in
    [0, 1]); positive DegRate means unlearning leaks more than the original model alone.
    """
    conf_f = true_label_confidence(y, score_new)
    conf_b = true_label_confidence(y, score_classical)
    if len(conf_f) == 0:
        return float("nan"), float("nan")
    return float(np.mean(conf_f > conf_b)), float(np.mean(conf_f - conf_b))


def generalisation_gap(train_acc: float, test_acc: float) -> float:
    """Train accuracy minus held-out test accuracy of the original model."""
    return float(train_acc - test_acc)
