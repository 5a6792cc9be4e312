"""Membership-inference metrics: AUC, accuracy, TPR at low FPR, DegCount/DegRate, gaps.

TPR-at-FPR convention (one, used everywhere): ``tpr_at_fpr(y, s, x)`` is the largest TPR among
the ROC's operating points (every score threshold, no interpolation) whose FPR is at most
``x``. With ``n`` negatives that admits ``floor(x * n)`` false positives; when ``x * n < 1``
it is the TPR at zero false positives (the 0.1% value on a few hundred negatives).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _check(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    score = np.asarray(score, dtype=float).ravel()
    if y.shape != score.shape:
        raise ValueError(f"labels {y.shape} and scores {score.shape} differ in length")
    if not np.isfinite(score).all():
        raise ValueError("scores hold NaN or infinite values")
    return y, score


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of ``score`` = P(member); NaN when only one class is present."""
    y, score = _check(y, score)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def roc(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every threshold, intermediate points kept."""
    y, score = _check(y, score)
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """Largest TPR over ROC points with FPR <= ``max_fpr`` (module docstring)."""
    if not 0 <= max_fpr <= 1:
        raise ValueError(f"max_fpr must lie in [0, 1], got {max_fpr}")
    y, score = _check(y, score)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr = roc(y, score)
    # A tiny tolerance so that FPR = 2/200 counts as <= 1%.
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def roc_summary(y: np.ndarray, score: np.ndarray,
                max_fprs: tuple[float, ...]) -> tuple[float, list[float]]:
    """AUC and :func:`tpr_at_fpr` at each of ``max_fprs``, from one sort (no scikit-learn
    call): the same ROC points (one after each run of tied scores) and conventions as
    :func:`auc` and :func:`tpr_at_fpr` (a test checks them equal), for callers that need them
    thousands of times. Both classes must be present."""
    y, score = _check(y, score)
    y = y.astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_summary needs both classes")
    order = np.argsort(-score, kind="stable")
    s_sorted, y_sorted = score[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tp = np.r_[0, np.cumsum(y_sorted)[ends]]
    fp = np.r_[0, (ends + 1) - tp[1:]]
    tpr, fpr = tp / n_pos, fp / n_neg
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids: ties half
    return area, [float(tpr[fpr <= rate + 1e-12].max()) for rate in max_fprs]


def accuracy(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> float:
    y, score = _check(y, score)
    return float(((score >= threshold).astype(int) == y).mean()) if len(y) else float("nan")


def true_label_confidence(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The attack's posterior on each row's true label: score for members, 1 - score else."""
    y, score = _check(y, score)
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
