"""The (epsilon, delta) lower bound a membership attack certifies, with confidence.

As in DP auditing (Jagielski et al. 2020, "Auditing differentially private machine
learning: how private is private SGD?"; Nasr et al. 2021, "Adversary instantiation: lower
bounds for differentially private machine learning"): if unlearning gave outputs
(eps, delta)-indistinguishable from retraining, every test telling "the record was trained
on and unlearned" (positive) from "never seen" (negative) would obey
FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta. An attack with error rates
(FPR, FNR) therefore refutes every eps below
max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR)). The rates are only
estimated, so they are replaced by Clopper-Pearson upper bounds, each one-sided at level
(1 - confidence) / 2 (Bonferroni over the two, so both hold jointly with probability at
least ``confidence``); the bound then reads (at the default 0.95): with 95 % confidence,
theta_u is not (eps, delta)-indistinguishable from retraining for any eps below eps_lb.

Assumption: each (model, record) decision is treated as an independent Bernoulli trial.
Decisions that share a model (or a record) can be correlated, which makes the intervals
too narrow; count each model once per record at most and read the confidence as nominal.

Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta

DELTA = 1e-5
# Candidate thresholds on the selection split: at most this many quantiles of its scores.
MAX_THRESHOLDS = 2000


def clopper_pearson(k, n, alpha: float) -> tuple:
    """Exact two-sided 1 - alpha interval (low, high) for a binomial rate, k of n.

    low = Beta(alpha/2; k, n - k + 1) quantile (0 when k = 0), high = Beta(1 - alpha/2;
    k + 1, n - k) quantile (1 when k = n). Each end alone is a one-sided bound at level
    alpha / 2. Broadcasts over array ``k`` and ``n`` (then returns arrays, else floats).
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if (n < 1).any() or (k < 0).any() or (k > n).any():
        raise ValueError("need 0 <= k <= n and n >= 1")
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k == 0, 0.0, beta.ppf(alpha / 2, k, n - k + 1))
        high = np.where(k == n, 1.0, beta.ppf(1 - alpha / 2, k + 1, n - k))
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def epsilon_lower_bound(fp, n_neg, fn, n_pos, delta: float = DELTA,
                        confidence: float = 0.95):
    """Epsilon an attack with ``fp`` false positives of ``n_neg`` and ``fn`` false
    negatives of ``n_pos`` certifies with probability ``confidence`` (module docstring).

    FPR_hi and FNR_hi are the one-sided Clopper-Pearson upper bounds at level
    (1 - confidence) / 2 each; eps_lb = max(0, log((1 - delta - FPR_hi) / FNR_hi),
    log((1 - delta - FNR_hi) / FPR_hi)), a term with a non-positive numerator counting 0.
    Broadcasts over arrays (then returns an array, else a float).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    # A two-sided interval at alpha = 1 - confidence has one-sided ends at (1 - conf) / 2.
    fpr_hi = np.asarray(clopper_pearson(fp, n_neg, 1 - confidence)[1])
    fnr_hi = np.asarray(clopper_pearson(fn, n_pos, 1 - confidence)[1])
    # Both upper bounds are > 0 (the k = 0 bound is 1 - a^(1/n)), so the ratios are finite.
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = [np.where(num > 0, np.log(np.where(num > 0, num, 1.0) / den), 0.0)
                 for num, den in ((1 - delta - fpr_hi, fnr_hi), (1 - delta - fnr_hi, fpr_hi))]
    eps = np.maximum(0.0, np.maximum(*terms))
    return float(eps) if eps.ndim == 0 else eps


def _split(scores, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positive and negative scores of one split, NaN scores dropped (inf refused)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{name} scores {s.shape} and labels {y.shape} differ in length")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{name} labels must hold booleans (or 0/1)")
        y = y.astype(bool)
    if np.isinf(s).any():
        raise ValueError(f"{name} scores hold infinite values")
    keep = ~np.isnan(s)
    pos, neg = np.sort(s[keep & y]), np.sort(s[keep & ~y])
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"the {name} split needs positive and negative scores (NaN dropped)")
    return pos, neg


def _rates(pos: np.ndarray, neg: np.ndarray, t: np.ndarray, direction: str):
    """(true positives, false positives) at each threshold: member when s >= t ("high")
    or s <= t ("low"); ``pos`` and ``neg`` sorted."""
    if direction == "high":
        return (len(pos) - np.searchsorted(pos, t, "left"),
                len(neg) - np.searchsorted(neg, t, "left"))
    return np.searchsorted(pos, t, "right"), np.searchsorted(neg, t, "right")


def attack_epsilon_lower_bound(select_scores, select_labels, eval_scores, eval_labels,
                               delta: float = DELTA, confidence: float = 0.95) -> dict:
    """Certified epsilon of a threshold attack, chosen on one split and certified on another.

    Labels: True (1) for a positive decision (model trained on the record, then unlearned
    it), False (0) for a negative one (never saw it). Candidate thresholds are the midpoints
    between consecutive sorted unique selection scores (at most MAX_THRESHOLDS of them,
    evenly spaced in rank: quantiles), in both directions: "high" predicts member when
    score >= t, "low" when score <= t (an attack that reads below chance is an attack too).
    The rule with the largest bound on the SELECTION split is then certified on the
    disjoint EVALUATION split: choosing and certifying on the same data would select for
    luck and void the confidence. NaN scores are dropped; infinite ones are refused.

    Returns the evaluation split's ``epsilon_lb``, ``tpr``, ``fpr``, ``n_pos``, ``n_neg``,
    the chosen ``threshold`` and ``direction``, and ``selection_epsilon_lb`` (the chosen
    rule's bound on the selection split, for information only: it is not a valid bound).
    """
    sel_pos, sel_neg = _split(select_scores, select_labels, "selection")
    ev_pos, ev_neg = _split(eval_scores, eval_labels, "evaluation")
    values = np.unique(np.concatenate([sel_pos, sel_neg]))
    # Every t in (v_i, v_i+1] splits the selection scores alike; the midpoint is the rule
    # with the widest margin on both sides, so it carries over best to new scores.
    grid = values[:-1] / 2 + values[1:] / 2 if len(values) > 1 else values
    if len(grid) > MAX_THRESHOLDS:
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, MAX_THRESHOLDS).round()
                              .astype(np.int64))]
    best = None
    for direction in ("high", "low"):
        tp, fp = _rates(sel_pos, sel_neg, grid, direction)
        eps = epsilon_lower_bound(fp, len(sel_neg), len(sel_pos) - tp, len(sel_pos),
                                  delta, confidence)
        i = int(np.argmax(eps))
        if best is None or eps[i] > best[0]:
            best = (float(eps[i]), float(grid[i]), direction)
    sel_eps, threshold, direction = best
    tp, fp = _rates(ev_pos, ev_neg, np.array([threshold]), direction)
    tp, fp = int(tp[0]), int(fp[0])
    n_pos, n_neg = len(ev_pos), len(ev_neg)
    return {"epsilon_lb": epsilon_lower_bound(fp, n_neg, n_pos - tp, n_pos, delta, confidence),
            "threshold": threshold, "direction": direction, "tpr": tp / n_pos,
            "fpr": fp / n_neg, "n_pos": n_pos, "n_neg": n_neg,
            "selection_epsilon_lb": sel_eps}
