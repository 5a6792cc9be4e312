"""The NeurIPS 2023 unlearning challenge's per-example epsilon and forget score.

Per forgotten record, the challenge compares a scalar statistic (the logit-scaled confidence)
under K1 unlearned and K2 retrained models. Every threshold attack that tells the two samples
apart bounds an (epsilon, delta) pair; the record's epsilon is the largest such bound.

* The "positive" sample is the one with the larger median (the unlearned one on a tie).
* If the smaller of the two ranges is under 1 % of the larger, the record gets the cap
  outright: a near-constant output on one side is taken as a failure to unlearn.
* Two rule families: a single threshold t (predict positive when value >= t), and an
  interval [l, r] (predict the peakier sample, the one with the smaller range, inside it;
  on a tie of ranges the smaller-median sample counts as the peakier, as in the challenge).
* Per rule, FPR and FNR are rates over the models. FPR = FNR = 0 gives infinity (then the
  cap); a rule with exactly one of them 0 is discarded (the challenge read that as too few
  models rather than a bound); otherwise
  eps = max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)), at least 0.
* The record's epsilon is the largest over the rules, clipped to [0, cap].

Our deliberate differences from the challenge's code:

* It scanned a grid of 100 thresholds per unit (and, for intervals, only those whose width
  is near the peaky sample's range). Rates only change at sample values, so here every
  threshold t in the sorted union of both samples and every interval [a_i, a_j] with
  a_i <= a_j in that union is evaluated: every rule the grid can realise is among them, so
  this is the exact supremum over all thresholds and intervals, never below the grid's.
* Rates are float64 (the challenge used float32).
* A record for which every rule is discarded (e.g. both samples one and the same constant)
  gets 0; the challenge's code stopped with an assertion there.

The forget score buckets epsilons in steps of 0.5 from 0 up to ceil(log(K - 1)), worth 1,
1/2, 1/4, ...; an epsilon past the last bucket scores 0; the score is the mean over records
(1.0: every epsilon below 0.5). Read it against retraining's own score: with K models a side,
two samples of one distribution already give an epsilon well above 0
(:func:`null_epsilon_quantiles`).
"""

from __future__ import annotations

import math

import numpy as np

DELTA = 1e-5
CAP = 50.0
BUCKET = 0.5
# Ranges differing by more than this factor get the cap outright (the challenge's 1 % rule).
PEAKY_RATIO = 0.01


def _rule_epsilons(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """Epsilon bound of each rule: inf when error-free, NaN when discarded, else >= 0."""
    both = (fpr == 0) & (fnr == 0)
    one = (fpr == 0) ^ (fnr == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # A log of a negative number (a rate above 1 - delta) is NaN; fmax skips it.
        eps = np.fmax(np.log(1 - delta - fpr) - np.log(fnr),
                      np.log(1 - delta - fnr) - np.log(fpr))
    eps = np.clip(eps, 0.0, None)
    eps = np.where(both, np.inf, eps)
    return np.where(one, np.nan, eps)


def _record_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float,
                    cap: float) -> float:
    """Epsilon between the two samples of one record (module docstring)."""
    if np.median(retrained) > np.median(unlearned):
        pos, neg = retrained, unlearned
    else:
        pos, neg = unlearned, retrained
    pos_range, neg_range = float(np.ptp(pos)), float(np.ptp(neg))
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    # Both constant: no ratio; the rules below give the cap if they differ, else 0.
    if largest > 0 and smallest / largest < PEAKY_RATIO:
        return cap
    pos, neg = np.sort(pos), np.sort(neg)
    grid = np.unique(np.concatenate([pos, neg]))
    # Cumulative counts at every grid value: how many of a sample lie below / at or below.
    below_p, below_n = np.searchsorted(pos, grid, "left"), np.searchsorted(neg, grid, "left")
    upto_p, upto_n = np.searchsorted(pos, grid, "right"), np.searchsorted(neg, grid, "right")
    # Single threshold t = grid[i]: positive predicted when value >= t.
    single = _rule_epsilons((len(neg) - below_n) / len(neg), below_p / len(pos), delta)
    # Interval [grid[i], grid[j]], i <= j: the peakier sample predicted inside. The challenge
    # breaks a tie of ranges towards the smaller-median sample; so do we.
    lo, hi = np.triu_indices(len(grid))
    if pos_range < neg_range:
        in_peaky = (upto_p[hi] - below_p[lo]) / len(pos)
        in_other = (upto_n[hi] - below_n[lo]) / len(neg)
    else:
        in_peaky = (upto_n[hi] - below_n[lo]) / len(neg)
        in_other = (upto_p[hi] - below_p[lo]) / len(pos)
    interval = _rule_epsilons(in_other, 1 - in_peaky, delta)
    eps = np.concatenate([single, interval])
    if np.isnan(eps).all():
        return 0.0
    return float(min(np.nanmax(eps), cap))


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA,
                     cap: float = CAP) -> np.ndarray:
    """Per-record epsilon (R,) from (K1, R) unlearned and (K2, R) retrained statistics.

    K1 and K2 may differ but must each be at least 2. Records are processed one at a time,
    so memory stays at O((K1 + K2)^2) whatever R is.
    """
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise ValueError(f"unlearned {u.shape} and retrained {r.shape} must be (models, "
                         "records) arrays over the same records")
    if min(len(u), len(r)) < 2:
        raise ValueError(f"need at least 2 models per side, got {len(u)} unlearned and "
                         f"{len(r)} retrained")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("unlearned and retrained must hold no NaN or infinite values")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    if not cap > 0:
        raise ValueError(f"cap must be positive, got {cap}")
    return np.array([_record_epsilon(u[:, i], r[:, i], delta, float(cap))
                     for i in range(u.shape[1])], dtype=np.float64)


def forget_score(epsilons: np.ndarray, num_models: int) -> float:
    """The challenge's bucketed score of per-record epsilons (module docstring).

    ``num_models`` is K, the models per side; buckets [0, 0.5), [0.5, 1), ... up to
    ceil(log(K - 1)) are worth 1, 1/2, 1/4, ...; later epsilons score 0 (so with K = 2
    every record scores 0, as in the challenge).
    """
    if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) \
            or num_models < 2:
        raise ValueError(f"num_models must be an integer >= 2, got {num_models!r}")
    eps = np.asarray(epsilons, dtype=np.float64).ravel()
    if eps.size == 0:
        raise ValueError("epsilons is empty: no records to score")
    if np.isnan(eps).any() or (eps < 0).any():
        raise ValueError("epsilons must be non-negative numbers (no NaN)")
    n_buckets = round(math.ceil(math.log(num_models - 1)) / BUCKET)
    # Bucket b covers [0.5 b, 0.5 (b + 1)); 0.5 is a power of two, so this floor is exact.
    bucket = np.floor(eps / BUCKET)
    scored = bucket < n_buckets
    points = np.where(scored, 0.5 ** np.where(scored, bucket, 0.0), 0.0)
    return float(points.mean())


def null_epsilon_quantiles(k: int, quantiles: tuple[float, ...] = (0.5, 0.9),
                           trials: int = 200, seed: int = 0) -> dict[float, float]:
    """Quantiles of the epsilon this estimator reports when both samples (k models each)
    come from one distribution (standard normal), over ``trials`` simulated records: its
    noise floor, the value an ideal unlearning method would still be given."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2 models, got {k!r}")
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if not all(0 <= q <= 1 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    rng = np.random.default_rng(seed)
    eps = example_epsilons(rng.standard_normal((k, trials)), rng.standard_normal((k, trials)))
    return {float(q): float(np.quantile(eps, q)) for q in quantiles}
