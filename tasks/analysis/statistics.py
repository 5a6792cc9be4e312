"""The statistics every layer reports with: ROC AUC and ROC points, TPR at low FPR, and
seeded bootstrap intervals (issue 27: one module for stages, search and report alike).

TPR-at-FPR convention (one, used everywhere): ``tpr_at_fpr(y, s, x)`` is the largest TPR among
the ROC's operating points (every score threshold, no interpolation) whose FPR is at most
``x``. With ``n`` negatives that admits ``floor(x * n)`` false positives; when ``x * n < 1``
it is the TPR at zero false positives (the 0.1% value on a few hundred negatives).

Intervals are percentile bootstraps with a fixed seed (:data:`SEED`, :data:`RESAMPLES`), so the
same rows give the same interval; fewer than two values give none (NaN bounds).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

RESAMPLES = 1000
SEED = 0


def check_scores(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    score = np.asarray(score, dtype=float).ravel()
    if y.shape != score.shape:
        raise ValueError(f"labels {y.shape} and scores {score.shape} differ in length")
    if not np.isfinite(score).all():
        raise ValueError("scores hold NaN or infinite values")
    return y, score


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of ``score`` = P(member); NaN when only one class is present."""
    y, score = check_scores(y, score)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def roc(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every threshold, intermediate points kept."""
    y, score = check_scores(y, score)
    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(y: np.ndarray, score: np.ndarray, max_fpr: float) -> float:
    """Largest TPR over ROC points with FPR <= ``max_fpr`` (module docstring)."""
    if not 0 <= max_fpr <= 1:
        raise ValueError(f"max_fpr must lie in [0, 1], got {max_fpr}")
    y, score = check_scores(y, score)
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
    y, score = check_scores(y, score)
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


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean,
                 resamples: int = RESAMPLES, seed: int = SEED,
                 level: float = 0.95) -> tuple[float, float, float]:
    """(statistic, low, high): the percentile bootstrap interval of ``stat`` over ``values``
    (resampled with replacement along the first axis). Fewer than two values give no
    interval (NaN bounds: one sample says nothing about its spread); none gives NaNs."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1:
        data = data[~np.isnan(data)]
    n = len(data)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(stat(data))
    if n < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = np.array([stat(data[i]) for i in idx], dtype=np.float64)
    stats = stats[~np.isnan(stats)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return point, float(low), float(high)


def stratified_auc_ci(labels, scores, resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high) with the positives and the negatives resampled separately (each
    bootstrap sample keeps k positives and n negatives); no interval (NaN bounds) with fewer
    than two of either."""
    labels = np.asarray(labels, dtype=np.float64) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan"), float("nan"), float("nan")
    point = split_auc(pos, np.sort(neg))
    if len(pos) < 2 or len(neg) < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array([split_auc(pos[rng.integers(0, len(pos), len(pos))],
                                 np.sort(neg[rng.integers(0, len(neg), len(neg))]))
                      for _ in range(resamples)])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return point, float(low), float(high)


def split_auc(pos: np.ndarray, sorted_neg: np.ndarray) -> float:
    """AUC of positive scores against sorted negative scores (ties count half): one
    binary search per positive, for the thousands of bootstrap resamples."""
    below = np.searchsorted(sorted_neg, pos, side="left")
    tied = np.searchsorted(sorted_neg, pos, side="right") - below
    return float(np.mean((below + 0.5 * tied) / len(sorted_neg)))


def has_interval(low: float, high: float) -> bool:
    return not (np.isnan(low) or np.isnan(high))
