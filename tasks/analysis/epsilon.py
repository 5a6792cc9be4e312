"""The NeurIPS 2023 unlearning challenge's per-example epsilon and forget score.

Per forgotten record, the challenge compares a scalar statistic (the logit-scaled confidence)
under K unlearned and K retrained models: every threshold attack that tells the two samples
apart bounds an (epsilon, delta) pair, and the record's epsilon is the largest such bound.
Two rule families are tried: one threshold (predict the distribution with the larger median
at or above it) and an interval (predict the distribution with the smaller range inside it).
A rule with no errors at all gives infinity (then the cap); a rule with exactly one error
rate at zero is discarded, as the challenge did, since it reflects too few models rather than
a bound. Records whose two samples differ in range by over 100x get the cap outright (a
near-constant unlearned output).

Our difference: the challenge scanned a grid of 100 thresholds per unit; here every threshold
and interval that changes a count is evaluated (thresholds at the sample values themselves),
which is the supremum over all thresholds, exactly.

The forget score buckets epsilons in steps of 0.5 up to ceil(log(K - 1)), worth 1, 1/2,
1/4, ...; an epsilon past the last bucket scores 0; the score is the mean over records
(1.0: every record below 0.5).
"""

from __future__ import annotations

import math

import numpy as np

DELTA = 1e-5
CAP = 50.0


def _bounds(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """Epsilon of each rule; NaN for the discarded ones."""
    both = (fpr == 0) & (fnr == 0)
    one = (fpr == 0) ^ (fnr == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = np.fmax(np.log(1 - delta - fpr) - np.log(fnr),
                      np.log(1 - delta - fnr) - np.log(fpr))
    eps = np.clip(eps, 0, None)
    eps = np.where(both, np.inf, eps)
    return np.where(one, np.nan, eps)


def _one_record(a: np.ndarray, b: np.ndarray, delta: float, cap: float) -> float:
    """Epsilon between samples ``a`` (unlearned) and ``b`` (retrained) of one record."""
    pos, neg = (b, a) if np.median(b) > np.median(a) else (a, b)
    pos_range, neg_range = np.ptp(pos), np.ptp(neg)
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    if largest == 0:
        return 0.0 if pos[0] == neg[0] else cap
    if smallest / largest < 0.01:
        return cap
    pos, neg = np.sort(pos), np.sort(neg)
    grid = np.unique(np.concatenate([pos, neg]))
    # Single threshold t: positive when value >= t.
    tpr = 1 - np.searchsorted(pos, grid, "left") / len(pos)
    fpr = 1 - np.searchsorted(neg, grid, "left") / len(neg)
    rules = [_bounds(fpr, 1 - tpr, delta)]
    # Interval [grid[i], grid[j]], i <= j: the peakier sample is predicted inside it.
    peaky, other = (pos, neg) if pos_range <= neg_range else (neg, pos)
    inside_p = (np.searchsorted(peaky, grid, "right")[None, :]
                - np.searchsorted(peaky, grid, "left")[:, None]) / len(peaky)
    inside_o = (np.searchsorted(other, grid, "right")[None, :]
                - np.searchsorted(other, grid, "left")[:, None]) / len(other)
    upper = np.triu(np.ones((len(grid), len(grid)), dtype=bool))
    rules.append(_bounds(inside_o[upper], 1 - inside_p[upper], delta))
    eps = np.concatenate(rules)
    if np.isnan(eps).all():
        return 0.0
    return float(np.clip(np.nanmax(eps), 0, cap))


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA,
                     cap: float = CAP) -> np.ndarray:
    """Per-record epsilon (R,) from (K1, R) unlearned and (K2, R) retrained statistics."""
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise ValueError(f"unlearned {u.shape} and retrained {r.shape} must be (models, "
                         "records) arrays over the same records")
    if min(len(u), len(r)) < 2:
        raise ValueError(f"at least 2 models per side, got {len(u)} unlearned and "
                         f"{len(r)} retrained")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("the statistics hold NaN or infinite values")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    return np.array([_one_record(u[:, i], r[:, i], delta, cap) for i in range(u.shape[1])])


def forget_score(epsilons: np.ndarray, num_models: int) -> float:
    """The challenge's bucketed score of the per-record epsilons (module docstring)."""
    if num_models < 2:
        raise ValueError(f"num_models must be at least 2, got {num_models}")
    eps = np.asarray(epsilons, dtype=np.float64)
    if eps.size == 0:
        raise ValueError("no epsilons to score")
    top = math.ceil(math.log(num_models - 1)) if num_models > 2 else 0
    buckets = int(top / 0.5)  # bucket b covers [0.5 b, 0.5 (b + 1)), all within [0, top]
    index = np.floor(eps / 0.5)
    points = np.where(index < buckets, 0.5 ** index, 0.0)
    return float(points.mean())


def null_epsilon_quantiles(k: int, quantiles: tuple[float, ...] = (0.5, 0.9),
                           trials: int = 200, seed: int = 0) -> dict[float, float]:
    """The epsilon this estimator reports when both samples (k models each) come from one
    distribution: its noise floor, simulated on standard normal samples."""
    if k < 2:
        raise ValueError(f"k must be at least 2 models, got {k}")
    rng = np.random.default_rng(seed)
    eps = example_epsilons(rng.standard_normal((k, trials)), rng.standard_normal((k, trials)))
    return {q: float(np.quantile(eps, q)) for q in quantiles}
