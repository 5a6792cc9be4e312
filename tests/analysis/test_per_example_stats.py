"""The statistics of per-example leakage (issue 14): U-LiRA's leave-one-out Gaussian fits and
the NeurIPS 2023 challenge's per-record epsilon, against naive reference computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.analysis.epsilon import example_epsilons, forget_score, null_epsilon_quantiles
from tasks.analysis.per_example import (
    lira_scores,
    logit_confidence,
    per_record_auc,
    record_summary,
    roc_metrics,
)


def test_logit_confidence_is_log_odds_of_the_label_and_finite_when_saturated():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (3, 5, 4))
    y = rng.integers(0, 4, 5)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    py = p[:, np.arange(5), y]
    np.testing.assert_allclose(logit_confidence(z, y), np.log(py / (1 - py)), rtol=1e-10)
    extreme = logit_confidence(np.array([[100.0, 0, 0], [-100.0, 0, 0]]), np.array([0, 0]))
    assert np.isfinite(extreme).all() and extreme[0] > 99 and extreme[1] < -99


def _naive(phi, member_in, variant, variance):
    m, r = phi.shape
    out = np.full((m, r), np.nan)

    def pooled(mask):
        dev = [phi[mask[:, k], k] - phi[mask[:, k], k].mean() for k in range(r)
               if mask[:, k].any()]
        dof = sum(len(d) for d in dev) - len(dev)
        return math.sqrt(sum((d * d).sum() for d in dev) / dof)

    for j in range(m):
        others = np.arange(m) != j
        for k in range(r):
            ins = phi[others & member_in[:, k], k]
            outs = phi[others & ~member_in[:, k], k]
            if len(outs) < 2 or (variant == "online" and len(ins) < 2):
                continue
            sd_out = pooled(~member_in) if variance == "fixed" else outs.std(ddof=1)
            if variant == "offline":
                out[j, k] = (phi[j, k] - outs.mean()) / sd_out
                continue
            sd_in = pooled(member_in) if variance == "fixed" else ins.std(ddof=1)
            out[j, k] = (-0.5 * ((phi[j, k] - ins.mean()) / sd_in) ** 2 - math.log(sd_in)
                         + 0.5 * ((phi[j, k] - outs.mean()) / sd_out) ** 2 + math.log(sd_out))
    return out


@pytest.mark.parametrize("variant", ["online", "offline"])
@pytest.mark.parametrize("variance", ["per_example", "fixed"])
def test_leave_one_out_scores_equal_a_naive_loop(variant, variance):
    rng = np.random.default_rng(1)
    member_in = rng.random((9, 6)) < 0.5
    member_in[:2, 0], member_in[2:, 0] = True, False  # record 0: too few IN for online
    phi = rng.normal(0, 1, (9, 6)) + member_in
    np.testing.assert_allclose(lira_scores(phi, member_in, variant, variance),
                               _naive(phi, member_in, variant, variance), rtol=1e-9,
                               atol=1e-9, equal_nan=True)


def test_scores_see_no_leak_where_there_is_none_and_a_clear_one_where_there_is():
    rng = np.random.default_rng(2)
    member_in = rng.random((64, 80)) < 0.5
    same = rng.normal(0, 1, member_in.shape) + rng.normal(0, 2, 80)  # per-record offsets
    assert abs(roc_metrics(lira_scores(same, member_in), member_in)["auc"] - 0.5) < 0.05
    leaky = same + 3 * member_in
    metrics = roc_metrics(lira_scores(leaky, member_in), member_in)
    assert metrics["auc"] > 0.95 and metrics["tpr_at_0_1pct"] > 0.25
    assert metrics["n_positive"] + metrics["n_negative"] == member_in.size


def test_bad_arguments_are_named():
    phi, mask = np.zeros((4, 3)), np.zeros((4, 3), bool)
    with pytest.raises(ValueError, match="variant must be 'online' or 'offline'"):
        lira_scores(phi, mask, "both")
    with pytest.raises(ValueError, match="variance must be"):
        lira_scores(phi, mask, variance="global")
    with pytest.raises(ValueError, match="phi .* and member_in"):
        lira_scores(phi, mask[:, :2])


def test_per_record_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.random((30, 5)) < 0.5
    scores = np.round(rng.normal(0, 1, (30, 5)) + labels, 1)  # rounding makes ties
    got = per_record_auc(scores, labels)
    for k in range(5):
        assert got[k] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]))
    labels[:, 0] = True
    assert np.isnan(per_record_auc(scores, labels)[0])
    summary = record_summary(scores, labels)
    assert summary["n_in"][0] == 30 and np.isnan(summary["phi_out_mean"][0])


def _brute_epsilon(a, b, delta=1e-5, cap=50.0):
    pos, neg = (b, a) if np.median(b) > np.median(a) else (a, b)
    if min(np.ptp(pos), np.ptp(neg)) / max(np.ptp(pos), np.ptp(neg)) < 0.01:
        return cap
    peaky, other = (pos, neg) if np.ptp(pos) <= np.ptp(neg) else (neg, pos)
    values = sorted(set(a) | set(b))
    rules = [(np.mean(pos >= t), np.mean(neg >= t)) for t in values]
    rules += [(np.mean((peaky >= lo) & (peaky <= hi)), np.mean((other >= lo) & (other <= hi)))
              for lo, hi in itertools.combinations_with_replacement(values, 2)]
    best = None
    for tpr, fpr in rules:
        fnr = 1 - tpr
        if fpr == 0 and fnr == 0:
            return cap
        if fpr == 0 or fnr == 0:
            continue
        terms = [math.log(1 - delta - a) - math.log(b) for a, b in ((fpr, fnr), (fnr, fpr))
                 if 1 - delta - a > 0]
        eps = max([*terms, 0.0])
        best = eps if best is None else max(best, eps)
    return min(best or 0.0, cap)


def test_epsilons_equal_a_brute_force_over_every_threshold_and_interval():
    rng = np.random.default_rng(4)
    u = rng.normal(0.7, 1, (12, 6)).round(2)
    r = rng.normal(0, 1.3, (10, 6)).round(2)
    got = example_epsilons(u, r)
    for k in range(6):
        assert got[k] == pytest.approx(_brute_epsilon(u[:, k], r[:, k]))


def test_epsilon_extremes_and_the_noise_floor():
    rng = np.random.default_rng(5)
    spread = rng.normal(0, 1, (32, 1))
    assert example_epsilons(spread + 10, spread)[0] == 50  # perfectly separated
    constant = np.full((32, 1), 0.3)
    assert example_epsilons(constant, spread)[0] == 50  # a near-constant unlearned output
    floor = null_epsilon_quantiles(32, quantiles=(0.5, 0.9), trials=100)
    same = example_epsilons(rng.normal(0, 1, (32, 200)), rng.normal(0, 1, (32, 200)))
    assert abs(np.median(same) - floor[0.5]) < 0.3
    assert 0 < floor[0.5] < floor[0.9] < math.log(32)  # no threshold separates two samples


def test_forget_score_buckets():
    assert forget_score(np.zeros(5), 64) == 1.0
    assert forget_score(np.full(5, 0.7), 64) == 0.5
    assert forget_score(np.array([0.2, 1.2]), 64) == pytest.approx((1 + 0.25) / 2)
    assert forget_score(np.full(3, 50.0), 64) == 0.0  # past ceil(log(63)) = 5
    with pytest.raises(ValueError, match="num_models"):
        forget_score(np.zeros(2), 1)


def test_epsilon_inputs_are_checked():
    with pytest.raises(ValueError, match="at least 2 models per side"):
        example_epsilons(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="same records"):
        example_epsilons(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        example_epsilons(np.full((4, 1), np.nan), np.zeros((4, 1)))
