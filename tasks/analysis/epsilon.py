"""Per-record epsilon between unlearned and retrained models, and the forget score, after
the NeurIPS 2023 machine-unlearning challenge (google-deepmind/unlearning_evaluation).

Per forgotten record, a scalar statistic (the logit-scaled confidence) is observed under K1
unlearned and K2 retrained models. A decision rule telling the two samples apart with false
positive and false negative rates FPR and FNR bounds an (epsilon, delta) pair; the record's
epsilon is the largest bound over a family of rules. Two estimators (``estimator=``):

``"challenge"`` (the default) is the challenge's published estimator:

* The "positive" sample is the one with the larger median (the unlearned one on a tie).
* If the smaller of the two ranges (max - min) is under 1 % of the larger, the record gets
  the cap outright: a near-constant output on one side is taken as a failure to unlearn.
* Single thresholds: n = ceil(100 (max - min)) thresholds evenly spaced from the minimum to
  the maximum of both samples together (none when all values are equal); the positive
  sample is predicted at values >= t.
* Intervals [l, r], predicting the "peaky" sample (the smaller range; on a tie of ranges
  the negative one) inside, rates taken relative to it. With w its range and a buffer of 2,
  the right ends are ceil(100 (b - a)) points evenly spaced on [a, b] = [min + w - 2,
  max + 2] of the peaky sample, and for each right end r, 400 left ends evenly spaced on
  [r - w - 2, r - w + 2].
* Per rule: FPR = FNR = 0 gives infinity (then the cap); a rule with exactly one of them 0
  is discarded (the challenge read that as too few models rather than a bound); otherwise
  eps = max(log(1 - delta - FPR) - log(FNR), log(1 - delta - FNR) - log(FPR)), a NaN term
  (log of a negative) skipped, the rule discarded if both are NaN, and at least 0.
* The record's epsilon is the largest over the kept rules, clipped to [0, cap].

Samples closer together than the grids' spacing (about 0.01) can fall between thresholds:
two constant samples 0.004 apart get 0, every rule being discarded.

Where we differ from the challenge's code: rates are float64 (it used float32 on a GPU); a
record for which every rule is discarded (e.g. both samples one and the same constant, or
the case above) gets 0 (its code stopped with an assertion); K1 and K2 may differ.

``"exact"`` is a stronger and noisier variant: the supremum over every threshold and every
interval at the sample values (rates only change there, so every rule any grid can realise
is among them), with the same positive/peaky choice, 1 % rule and per-rule bound. It is
never below the challenge's, and higher under the null: with both samples N(0, 1), the
median epsilon is about 1.95 against 1.61 at 24 models a side, and it grows with the number
of models where the challenge's does not (:func:`null_epsilon_quantiles`).

The forget score buckets epsilons in steps of 0.5 from 0 up to ceil(log(K - 1)), K the
number of models a side, worth 1, 1/2, 1/4, ...; an epsilon past the last bucket scores 0;
the score is the mean over records (1.0: every epsilon below 0.5). Read both against
retraining's own: two samples of one distribution already give an epsilon well above 0
(:func:`null_epsilon_quantiles`, :func:`null_median_range`).
"""

from __future__ import annotations

import math

import numpy as np

DELTA = 1e-5
CAP = 50.0
BUCKET = 0.5
# Ranges differing by more than this factor get the cap outright (the challenge's 1 % rule).
PEAKY_RATIO = 0.01
ESTIMATORS = ("challenge", "exact")
PER_UNIT = 100  # the challenge's grid: thresholds per unit of the statistic
BUFFER = 2.0  # how far the challenge's interval ends reach past the peaky sample


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


def _split(unlearned: np.ndarray, retrained: np.ndarray) -> tuple | None:
    """(positive, negative, their ranges), or None when the 1 % range rule gives the cap."""
    if np.median(retrained) > np.median(unlearned):
        pos, neg = retrained, unlearned
    else:
        pos, neg = unlearned, retrained
    pos_range, neg_range = float(np.ptp(pos)), float(np.ptp(neg))
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    # Both constant: no ratio; the rules give the cap if they differ, else 0.
    if largest > 0 and smallest / largest < PEAKY_RATIO:
        return None
    return np.sort(pos), np.sort(neg), pos_range, neg_range


def _best(bounds: list[np.ndarray], cap: float) -> float:
    """The largest kept bound, clipped to the cap; 0 when every rule was discarded."""
    kept = np.concatenate([b[~np.isnan(b)] for b in bounds])
    return float(min(kept.max(), cap)) if kept.size else 0.0


def _challenge_record(unlearned: np.ndarray, retrained: np.ndarray, delta: float,
                      cap: float) -> float:
    """The challenge's grid estimator on one record (module docstring)."""
    split = _split(unlearned, retrained)
    if split is None:
        return cap
    pos, neg, pos_range, neg_range = split
    n_pos, n_neg = len(pos), len(neg)
    # A rule's bound depends only on its two counts: tabulate it once per record, then look
    # each rule up (count of false positives i, false negatives j -> table[i, j]).
    single_table = _rule_epsilons(np.arange(n_neg + 1)[:, None] / n_neg,
                                  np.arange(n_pos + 1)[None, :] / n_pos, delta)
    lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
    t = np.linspace(lo, hi, math.ceil((hi - lo) * PER_UNIT))
    # Positive predicted at value >= t: false positives are negatives >= t, false negatives
    # positives < t.
    single = single_table[n_neg - np.searchsorted(neg, t, "left"),
                          np.searchsorted(pos, t, "left")]
    peaky, other = (pos, neg) if pos_range < neg_range else (neg, pos)
    n_peaky, n_other = len(peaky), len(other)
    width = min(pos_range, neg_range)
    start, stop = peaky[0] + width - BUFFER, peaky[-1] + BUFFER
    right = np.linspace(start, stop, math.ceil((stop - start) * PER_UNIT))
    left = np.linspace(right - width - BUFFER, right - width + BUFFER,
                       math.ceil(2 * BUFFER * PER_UNIT), axis=1)  # (rights, lefts)
    # Counts in [l, r] from one search of both samples merged and sorted: of its first i
    # values, peaky_first[i] are the peaky sample's and i - peaky_first[i] the other's.
    merged = np.concatenate([peaky, other])
    order = np.argsort(merged, kind="stable")
    peaky_first = np.concatenate([[0], np.cumsum(order < n_peaky)])
    last = np.searchsorted(merged[order], right, "right")[:, None]  # how many values <= r
    # How many values < l; capped at those <= r, so an empty interval (l > r) counts none.
    first = np.minimum(np.searchsorted(merged[order], left, "left"), last)
    in_peaky = peaky_first[last] - peaky_first[first]
    in_other = last - first - in_peaky
    interval_table = _rule_epsilons(np.arange(n_other + 1)[:, None] / n_other,
                                    np.arange(n_peaky + 1)[None, :] / n_peaky, delta)
    # Which (false positives, false negatives) pairs some interval realises.
    seen = np.zeros(interval_table.size, dtype=bool)
    seen[(in_other * (n_peaky + 1) + n_peaky - in_peaky).ravel()] = True
    return _best([single, interval_table.ravel()[seen]], cap)


def _exact_record(unlearned: np.ndarray, retrained: np.ndarray, delta: float,
                  cap: float) -> float:
    """Supremum over every threshold and interval at the sample values (module docstring)."""
    split = _split(unlearned, retrained)
    if split is None:
        return cap
    pos, neg, pos_range, neg_range = split
    grid = np.unique(np.concatenate([pos, neg]))
    # Cumulative counts at every grid value: how many of a sample lie below / at or below.
    below_p, below_n = np.searchsorted(pos, grid, "left"), np.searchsorted(neg, grid, "left")
    upto_p, upto_n = np.searchsorted(pos, grid, "right"), np.searchsorted(neg, grid, "right")
    # Single threshold t = grid[i]: positive predicted when value >= t.
    single = _rule_epsilons((len(neg) - below_n) / len(neg), below_p / len(pos), delta)
    # Interval [grid[i], grid[j]], i <= j: the peakier sample predicted inside.
    lo, hi = np.triu_indices(len(grid))
    if pos_range < neg_range:
        in_peaky = (upto_p[hi] - below_p[lo]) / len(pos)
        in_other = (upto_n[hi] - below_n[lo]) / len(neg)
    else:
        in_peaky = (upto_n[hi] - below_n[lo]) / len(neg)
        in_other = (upto_p[hi] - below_p[lo]) / len(pos)
    return _best([single, _rule_epsilons(in_other, 1 - in_peaky, delta)], cap)


def example_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA,
                     cap: float = CAP, estimator: str = "challenge") -> np.ndarray:
    """Per-record epsilon (R,) from (K1, R) unlearned and (K2, R) retrained statistics.

    ``estimator`` is ``"challenge"`` (the challenge's published grid estimator) or
    ``"exact"`` (the supremum over every threshold and interval at the sample values:
    stronger, noisier, higher under the null); see the module docstring. K1 and K2 may
    differ but must each be at least 2. Records are processed one at a time (about 10 ms
    each with the challenge's estimator, under 1 ms with the exact one, at 64 models a
    side), so memory does not grow with R.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
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
    record = _challenge_record if estimator == "challenge" else _exact_record
    return np.array([record(u[:, i], r[:, i], delta, float(cap)) for i in range(u.shape[1])],
                    dtype=np.float64)


def forget_score(epsilons: np.ndarray, num_models: int) -> float:
    """The challenge's bucketed score of per-record epsilons (module docstring).

    ``num_models`` is K, the number of models a side (unlearned, and retrained); buckets
    [0, 0.5), [0.5, 1), ... up to ceil(log(K - 1)) are worth 1, 1/2, 1/4, ...; later
    epsilons score 0 (so with K = 2 every record scores 0, as in the challenge).
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


def _null_epsilons(k: int, k_retrained: int | None, records: int, estimator: str,
                   rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Epsilons of ``records`` records whose two samples (k unlearned, k_retrained or k
    retrained models) are both N(0, scale^2)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    for name, value in (("k", k), ("k_retrained", k if k_retrained is None else k_retrained)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2 models, got {value!r}")
    k2 = k if k_retrained is None else k_retrained
    return example_epsilons(scale * rng.standard_normal((k, records)),
                            scale * rng.standard_normal((k2, records)), estimator=estimator)


def null_epsilon_quantiles(k: int, quantiles: tuple[float, ...] = (0.5, 0.9),
                           trials: int = 200, seed: int = 0, estimator: str = "challenge",
                           k_retrained: int | None = None,
                           scale: float = 1.0) -> dict[float, float]:
    """Quantiles of the epsilon ``estimator`` reports when both samples (k unlearned and
    ``k_retrained``, by default k, retrained models) come from one distribution (normal,
    standard deviation ``scale``), over ``trials`` simulated records: its noise floor, the
    value an ideal unlearning method would still be given.

    Measured (4000 records each, seed 11): the challenge's median is 1.609 (log 5) at
    k = 16, 24 and 64 alike (10 % and 90 % quantiles about 1.10 and 2.08), the exact
    estimator's 1.792, 1.946 and 2.079 (log 6, 7 and 8). The challenge's grid is in units of
    the statistic (100 thresholds a unit, intervals within 2 units), so its null depends on
    the statistic's spread, which the exact estimator's does not: at k = 64 its median is
    1.79 at scale 0.1, 1.95 at 0.3, 1.61 at 1 and 3, 1.50 at 10 (300 records, seed 0).
    A run's own permutation null (:mod:`tasks.analysis.null_control`) needs no such guess.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    if not all(0 <= q <= 1 for q in quantiles):
        raise ValueError(f"quantiles must lie in [0, 1], got {quantiles}")
    eps = _null_epsilons(k, k_retrained, trials, estimator, np.random.default_rng(seed), scale)
    return {float(q): float(np.quantile(eps, q)) for q in quantiles}


def null_median_range(k: int, records: int, estimator: str = "challenge", runs: int = 200,
                      seed: int = 0, k_retrained: int | None = None,
                      scale: float = 1.0) -> tuple[float, float]:
    """The 2.5 % and 97.5 % quantiles, over ``runs`` simulated runs, of the MEDIAN epsilon
    over ``records`` records whose two samples (k unlearned and ``k_retrained``, by default
    k, retrained models) are both N(0, scale^2): the range a run of that many independent
    records shows for a perfect unlearner (records that share models vary more). Costs runs x records records (about 10 ms each
    with the challenge's estimator). Measured (runs=40, seed=5), 200 records: 1.386 to
    1.609 (log 4 to log 5) at k = 24 and at k = 64.
    """
    if isinstance(records, bool) or not isinstance(records, (int, np.integer)) \
            or records < 1:
        raise ValueError(f"records must be an integer >= 1, got {records!r}")
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 2:
        raise ValueError(f"runs must be an integer >= 2, got {runs!r}")
    eps = _null_epsilons(k, k_retrained, runs * records, estimator,
                         np.random.default_rng(seed), scale)
    medians = np.median(eps.reshape(runs, records), axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return float(low), float(high)
