"""The per-example null control (tasks.analysis.null_control): permutations of which model
unlearned which record, on a simulated null (no false alarm beyond its level, whatever the
correlation between one model's outputs) and on a simulated leak (found)."""

from __future__ import annotations

import numpy as np

from tasks.analysis.epsilon import example_epsilons
from tasks.analysis.null_control import (
    ALPHA,
    below_chance,
    membership_epsilons,
    permutation_null,
    within_null,
)


def _layout(rng: np.random.Generator, models: int, records: int) -> np.ndarray:
    """The U-LiRA design: every model unlearned a random half of the records."""
    member_in = np.zeros((models, records), dtype=bool)
    for j in range(models):
        member_in[j, rng.choice(records, records // 2, replace=False)] = True
    return member_in


def _phi(rng, member_in, shift=0.0):
    # Records differ in difficulty and each model is more or less confident on all of them:
    # the correlation between records that a simulation with independent records misses.
    models, records = member_in.shape
    return (rng.normal(0, 2, records)[None] + rng.normal(0, 0.7, models)[:, None]
            + rng.standard_normal((models, records)) + shift * member_in)


def test_a_perfect_unlearner_is_rarely_called_a_leak():
    alarms, centres = 0, []
    for seed in range(15):
        rng = np.random.default_rng(seed)
        member_in = _layout(rng, 12, 32)
        null = permutation_null(_phi(rng, member_in), member_in, "online", "fixed", "exact",
                                runs=99, epsilon_runs=19, seed=seed)
        alarms += not within_null(null)
        centres.append(null["null_auc"])
        assert null["null_auc_low"] < null["null_auc"] < null["null_auc_high"]
    # Level 1 %: 0.15 alarms expected in 15 runs; 2 or more happen with probability 0.01.
    assert alarms <= 1, alarms
    # With 6 models a side the leave-one-out fits pull U-LiRA's null AUC below 0.5: the
    # reason the control compares with the permutation median, not with 0.5.
    assert np.mean(centres) < 0.498


def test_a_leak_is_found_and_not_called_below_chance():
    rng = np.random.default_rng(99)
    member_in = _layout(rng, 12, 32)
    null = permutation_null(_phi(rng, member_in, shift=1.5), member_in, "online", "fixed",
                            "exact", runs=99, epsilon_runs=19, seed=1)
    assert not within_null(null)
    assert null["null_auc_p"] <= ALPHA
    assert not below_chance(0.9, null)


def test_below_chance_needs_a_significant_shortfall():
    null = {"null_auc": 0.47, "null_auc_p": 0.01}
    assert below_chance(0.30, null)
    assert not below_chance(0.30, {**null, "null_auc_p": 0.2})
    assert not below_chance(0.60, null)  # far, but above: a leak, not below chance


def test_epsilons_follow_each_records_own_sides():
    rng = np.random.default_rng(5)
    member_in = _layout(rng, 10, 6)
    member_in[:, 0] = np.arange(10) < 3  # unequal sides on one record
    member_in[:, 1] = np.arange(10) < 1  # one model a side: no epsilon
    phi = _phi(rng, member_in, shift=1.0)
    got = membership_epsilons(phi, member_in, "challenge")
    assert np.isnan(got[1]) and np.isfinite(np.delete(got, 1)).all()
    for r in (0, 2, 3, 4, 5):
        want = example_epsilons(phi[member_in[:, r], r][:, None],
                                phi[~member_in[:, r], r][:, None])[0]
        assert got[r] == want
