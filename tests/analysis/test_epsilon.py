"""The NeurIPS 2023 challenge's per-record epsilon and forget score (tasks.analysis.epsilon),
against a brute force over thresholds and intervals placed anywhere on the line."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tasks.analysis.epsilon import example_epsilons, forget_score, null_epsilon_quantiles


def _rule_bound(fpr: float, fnr: float, delta: float) -> float | None:
    """The challenge's bound of one rule: inf if error-free, None if discarded."""
    if fpr == 0 and fnr == 0:
        return math.inf
    if fpr == 0 or fnr == 0:
        return None
    terms = [math.log(1 - delta - a) - math.log(b) for a, b in ((fpr, fnr), (fnr, fpr))
             if 1 - delta - a > 0]
    return max([0.0, *terms])


def _brute_epsilon(unlearned, retrained, delta=1e-5, cap=50.0):
    """Every threshold and interval whose ends lie at a sample value, between two adjacent
    ones, or beyond both ends: all distinct rules, without relying on counting tricks."""
    pos, neg = ((retrained, unlearned) if np.median(retrained) > np.median(unlearned)
                else (unlearned, retrained))
    big, small = max(np.ptp(pos), np.ptp(neg)), min(np.ptp(pos), np.ptp(neg))
    if big > 0 and small / big < 0.01:
        return cap
    peaky, other = (pos, neg) if np.ptp(pos) < np.ptp(neg) else (neg, pos)
    values = sorted(set(unlearned) | set(retrained))
    points = [values[0] - 1, *values, values[-1] + 1]
    points += [(a + b) / 2 for a, b in itertools.pairwise(values)]
    points.sort()
    best = None
    rules = [(np.mean(neg >= t), np.mean(pos < t)) for t in points]
    for i, lo in enumerate(points):
        for hi in points[i:]:
            inside_peaky = np.mean((peaky >= lo) & (peaky <= hi))
            inside_other = np.mean((other >= lo) & (other <= hi))
            rules.append((inside_other, 1 - inside_peaky))
    for fpr, fnr in rules:
        bound = _rule_bound(float(fpr), float(fnr), delta)
        if bound is not None:
            best = bound if best is None else max(best, bound)
    return 0.0 if best is None else min(best, cap)


def test_epsilons_equal_a_brute_force_over_all_thresholds_and_intervals():
    rng = np.random.default_rng(0)
    u = rng.normal(0.8, 1.0, (9, 12)).round(1)  # rounding makes ties within and across
    r = rng.normal(0.0, 1.4, (7, 12)).round(1)
    # Overlapping samples of equal range (binary fractions, so the ranges tie exactly).
    u[:, 0] = [0, 0.25, 0.5, 1, 2, 2, 1.5, 0.75, 1.25]
    r[:, 0] = u[:7, 0] + 0.5
    u[:, 1] = r[:, 1].max() + np.linspace(1, 2, 9)  # separated with spread: the cap
    got = example_epsilons(u, r)
    want = [_brute_epsilon(u[:, k], r[:, k]) for k in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[1] == 50.0
    assert len(set(np.round(got, 6))) > 4  # the records differ: not all 0 or all the cap
    loose = example_epsilons(u, r, delta=0.2, cap=7.0)
    np.testing.assert_allclose(
        loose, [_brute_epsilon(u[:, k], r[:, k], 0.2, 7.0) for k in range(12)], rtol=1e-12)


def test_epsilon_does_not_depend_on_which_side_is_which():
    rng = np.random.default_rng(1)
    u, r = rng.normal(0.5, 1, (16, 20)), rng.normal(0, 1.2, (16, 20))
    np.testing.assert_allclose(example_epsilons(u, r), example_epsilons(r, u))


def test_a_peaky_or_separated_record_gets_the_cap():
    rng = np.random.default_rng(2)
    spread = rng.normal(0, 1, (32, 1))
    constant_far = np.full((32, 1), 20.0)
    assert example_epsilons(constant_far, spread)[0] == 50.0
    # A near-constant sample interleaved with the other: no rule separates them (epsilon
    # about 3.3 without it), the 1 % range rule alone gives the cap.
    nearly_constant = 0.3 + 1e-4 * np.linspace(0, 1, 32)[:, None]
    mixed = spread.copy()
    mixed[:4, 0] = 0.3 + 1e-4 * np.array([0.2, 0.4, 0.6, 0.8])
    assert example_epsilons(nearly_constant, mixed, cap=30.0)[0] == 30.0
    assert example_epsilons(spread + 10, spread)[0] == 50.0  # perfectly separated
    assert example_epsilons(np.full((4, 1), 2.0), np.full((4, 1), 1.0))[0] == 50.0
    assert example_epsilons(np.full((4, 1), 1.0), np.full((4, 1), 1.0))[0] == 0.0


def test_same_distribution_sits_at_the_noise_floor_far_below_the_cap():
    k = 32
    floor = null_epsilon_quantiles(k, quantiles=(0.1, 0.5, 0.9), trials=200, seed=3)
    assert 0 < floor[0.1] <= floor[0.5] <= floor[0.9] < math.log(k)
    rng = np.random.default_rng(4)
    same = example_epsilons(rng.normal(2, 3, (k, 300)), rng.normal(2, 3, (k, 300)))
    assert abs(np.median(same) - floor[0.5]) < 0.25  # scale and location do not matter
    shifted = example_epsilons(rng.normal(1.5, 1, (k, 300)), rng.normal(0, 1, (k, 300)))
    assert np.median(shifted) > floor[0.9]  # a real difference reads above the floor
    assert null_epsilon_quantiles(k, trials=50, seed=7) == null_epsilon_quantiles(
        k, trials=50, seed=7)


def test_forget_score_buckets():
    # 64 models: ceil(log 63) = 5, ten buckets of 0.5 worth 1, 1/2, ..., 1/512.
    assert forget_score(np.zeros(6), 64) == 1.0
    assert forget_score(np.full(6, 0.7), 64) == 0.5
    assert forget_score(np.full(3, 0.5), 64) == 0.5  # a bucket's lower end belongs to it
    assert forget_score(np.array([0.1, 1.2, 4.99]), 64) == pytest.approx(
        (1 + 0.25 + 0.5**9) / 3)
    assert forget_score(np.array([5.0, 50.0]), 64) == 0.0  # past the last bucket
    assert forget_score(np.array([1.9]), 8) == 0.125  # ceil(log 7) = 2: four buckets
    assert forget_score(np.array([2.0]), 8) == 0.0
    assert forget_score(np.zeros(3), 2) == 0.0  # log(1) = 0: no bucket at all


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="at least 2 models per side"):
        example_epsilons(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same records"):
        example_epsilons(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        example_epsilons(np.full((4, 1), np.nan), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="delta"):
        example_epsilons(np.zeros((4, 1)), np.ones((4, 1)), delta=1.0)
    with pytest.raises(ValueError, match="num_models must be an integer >= 2"):
        forget_score(np.zeros(2), 1)
    with pytest.raises(ValueError, match="non-negative"):
        forget_score(np.array([0.1, np.nan]), 8)
    with pytest.raises(ValueError, match="empty"):
        forget_score(np.array([]), 8)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        null_epsilon_quantiles(1)
