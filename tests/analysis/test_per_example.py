"""U-LiRA statistics (tasks.analysis.per_example): the logit-scaled confidence, leave-one-out
Gaussian scores against a naive loop over models, ROC summaries and per-record AUCs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.analysis.per_example import (
    SD_FLOOR,
    lira_scores,
    logit_confidence,
    per_record_auc,
    record_summary,
    roc_metrics,
)
from tasks.analysis.statistics import tpr_at_fpr


def _softmax_log_odds(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    p_y = np.take_along_axis(p, np.broadcast_to(labels[:, None], p.shape[:-1] + (1,)), -1)
    return np.log(p_y / (1 - p_y))[..., 0]


def test_logit_confidence_is_the_softmax_log_odds_of_the_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 7, 5))
    labels = rng.integers(0, 5, 7)
    got = logit_confidence(logits, labels)
    assert got.shape == (4, 7)
    np.testing.assert_allclose(got, _softmax_log_odds(logits, labels), rtol=1e-9, atol=1e-12)
    # Without leading axes, and from float32 logits, the result is float64.
    got2 = logit_confidence(logits[1].astype(np.float32), labels)
    assert got2.dtype == np.float64
    np.testing.assert_allclose(got2, _softmax_log_odds(logits[1], labels), atol=1e-5)


def test_logit_confidence_stays_finite_when_saturated():
    logits = np.array([[100.0, 0, 0], [-100.0, 0, 0], [100.0, 0, 0], [800.0, -800, 0]])
    got = logit_confidence(logits, np.array([0, 0, 1, 2]))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, [100 - math.log(2), -100 - math.log(2), -100, -800],
                               rtol=1e-12)


def test_logit_confidence_refuses_bad_labels():
    with pytest.raises(ValueError, match="labels must be integers in"):
        logit_confidence(np.zeros((3, 4)), np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="labels must be integers in"):
        logit_confidence(np.zeros((3, 4)), np.array([0, 1, 0.5]))
    with pytest.raises(ValueError, match="labels must be"):
        logit_confidence(np.zeros((3, 4)), np.array([0, 1]))
    np.testing.assert_allclose(logit_confidence(np.zeros((2, 4)), np.array([1.0, 3.0])),
                               -math.log(3))
    with pytest.raises(ValueError, match="C >= 2"):
        logit_confidence(np.zeros((3, 1)), np.array([0, 0, 0]))


def _naive_scores(phi, member_in, variant, variance, min_count=2):
    """One model at a time: fit the Gaussians on the other models, score the held-out one."""
    m, r = phi.shape

    def pooled(mask, rest):
        devs, dof = [], 0
        for k in range(r):
            vals = phi[rest & mask[:, k], k]
            if len(vals):
                devs.extend(vals - vals.mean())
                dof += len(vals) - 1
        return math.sqrt(sum(d * d for d in devs) / dof)

    need = max(min_count, 2) if variance == "per_example" else min_count
    out = np.full((m, r), np.nan)
    for k in range(r):
        # every model of a record keeps `need` on each side it needs once one is left out
        if (~member_in[:, k]).sum() - 1 < need or (
                variant == "online" and member_in[:, k].sum() - 1 < need):
            continue
        for j in range(m):
            rest = np.arange(m) != j
            ins, outs = phi[rest & member_in[:, k], k], phi[rest & ~member_in[:, k], k]
            sd_out = pooled(~member_in, rest) if variance == "fixed" else outs.std(ddof=1)
            sd_out = max(sd_out, SD_FLOOR)
            z_out = (phi[j, k] - outs.mean()) / sd_out
            if variant == "offline":
                out[j, k] = z_out
                continue
            sd_in = pooled(member_in, rest) if variance == "fixed" else ins.std(ddof=1)
            sd_in = max(sd_in, SD_FLOOR)
            z_in = (phi[j, k] - ins.mean()) / sd_in
            out[j, k] = -0.5 * z_in**2 - math.log(sd_in) + 0.5 * z_out**2 + math.log(sd_out)
    return out


@pytest.mark.parametrize("variant", ["online", "offline"])
@pytest.mark.parametrize("variance", ["per_example", "fixed"])
def test_leave_one_out_scores_equal_a_loop_over_models(variant, variance):
    rng = np.random.default_rng(1)
    member_in = rng.random((10, 7)) < 0.5
    member_in[:, 0] = np.arange(10) < 2  # 2 IN: one left out of them is too few
    member_in[:, 1] = np.arange(10) < 8  # 2 OUT: likewise, for both variants
    phi = rng.normal(0, 1, (10, 7)) + 2 * member_in + rng.normal(0, 3, 7)
    got = lira_scores(phi, member_in, variant, variance)
    want = _naive_scores(phi, member_in, variant, variance)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # Too few on a side: the whole record is unscored, never its positives alone.
    assert np.isnan(got[:, 1]).all()
    assert np.isnan(got[:, 0]).all() == (variant == "online")
    assert np.isfinite(got[:, 0]).all() == (variant == "offline")
    assert np.isfinite(got[:, 2:]).all()
    higher = lira_scores(phi, member_in, variant, variance, min_count=4)
    np.testing.assert_allclose(higher, _naive_scores(phi, member_in, variant, variance, 4))
    assert np.isnan(higher).sum() > np.isnan(got).sum()


def test_scores_do_not_lose_precision_on_a_large_offset():
    rng = np.random.default_rng(2)
    member_in = rng.random((40, 5)) < 0.5
    phi = rng.normal(0, 0.01, (40, 5)) + 0.02 * member_in
    np.testing.assert_allclose(lira_scores(phi + 1e4, member_in), lira_scores(phi, member_in),
                               rtol=1e-6, atol=1e-6)


def test_a_record_constant_across_models_gets_finite_scores():
    member_in = np.tile(np.arange(8) % 2 == 0, (3, 1)).T
    phi = np.zeros((8, 3))
    phi[:, 1] = np.where(member_in[:, 1], 1.0, 0.0)  # two constants, one per side
    scores = lira_scores(phi, member_in)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores[:, 0], 0.0)
    assert (scores[member_in[:, 1], 1] > 0).all() and (scores[~member_in[:, 1], 1] < 0).all()


def test_no_leak_gives_chance_and_a_clear_leak_is_found():
    rng = np.random.default_rng(3)
    member_in = rng.random((64, 60)) < 0.5
    offsets = rng.normal(0, 2, 60)  # records differ in difficulty
    same = rng.normal(0, 1, member_in.shape) + offsets
    for variant in ("online", "offline"):
        null = roc_metrics(lira_scores(same, member_in, variant), member_in)
        assert abs(null["auc"] - 0.5) < 0.05
    leaky = same + 5.0 * member_in
    found = roc_metrics(lira_scores(leaky, member_in), member_in)
    assert found["auc"] > 0.95 and found["tpr_at_0_1pct"] > 0.5
    assert found["n_positive"] == member_in.sum()
    assert found["n_positive"] + found["n_negative"] == member_in.size


def test_roc_metrics_drop_nan_scores_and_follow_the_project_convention():
    rng = np.random.default_rng(4)
    labels = rng.random((20, 30)) < 0.4
    scores = rng.normal(0, 1, labels.shape) + labels
    scores[:, :3] = np.nan
    got = roc_metrics(scores, labels)
    kept_s, kept_y = scores[:, 3:].ravel(), labels[:, 3:].ravel()
    assert got["n_positive"] == kept_y.sum() and got["n_negative"] == (~kept_y).sum()
    assert got["auc"] == pytest.approx(roc_auc_score(kept_y, kept_s))
    for key, rate in (("tpr_at_1pct", 0.01), ("tpr_at_0_1pct", 0.001), ("tpr_at_0", 0.0)):
        assert got[key] == tpr_at_fpr(kept_y, kept_s, rate)
    with pytest.raises(ValueError, match="one shape"):
        roc_metrics(scores, labels[:, :5])


def test_per_record_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(5)
    labels = rng.random((25, 8)) < 0.5
    labels[0, :], labels[1, :] = True, False  # both classes in every column
    scores = np.round(rng.normal(0, 1, labels.shape) + labels, 1)  # rounding makes ties
    scores[:, 2] = 0.0  # all tied: 0.5
    got = per_record_auc(scores, labels)
    want = [roc_auc_score(labels[:, k], scores[:, k]) for k in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[2] == 0.5
    one_class, with_nan = labels.copy(), scores.copy()
    one_class[:, 4] = False
    with_nan[3, 6] = np.nan
    assert np.isnan(per_record_auc(scores, one_class)[4])
    assert np.isnan(per_record_auc(with_nan, labels)[6])
    assert np.isfinite(per_record_auc(with_nan, labels)[[0, 1, 2, 3, 4, 5, 7]]).all()


def test_record_summary_counts_and_moments():
    rng = np.random.default_rng(6)
    member_in = rng.random((12, 4)) < 0.5
    member_in[:, 0] = True  # no OUT samples
    member_in[:, 1] = np.arange(12) == 0  # a single IN sample
    phi = rng.normal(0, 1, (12, 4))
    got = record_summary(phi, member_in)
    for k in range(4):
        ins, outs = phi[member_in[:, k], k], phi[~member_in[:, k], k]
        assert got["n_in"][k] == len(ins) and got["n_out"][k] == len(outs)
        for side, vals in (("in", ins), ("out", outs)):
            mean = vals.mean() if len(vals) else np.nan
            std = vals.std(ddof=1) if len(vals) > 1 else np.nan
            np.testing.assert_allclose(got[f"phi_{side}_mean"][k], mean)
            np.testing.assert_allclose(got[f"phi_{side}_std"][k], std)
    assert np.isnan(got["phi_out_mean"][0]) and np.isnan(got["phi_in_std"][1])


def test_bad_arguments_name_what_is_allowed():
    phi, mask = np.zeros((5, 3)), np.zeros((5, 3), bool)
    with pytest.raises(ValueError, match="variant must be 'online' or 'offline', got 'x'"):
        lira_scores(phi, mask, "x")
    with pytest.raises(ValueError, match="variance must be 'per_example' or 'fixed'"):
        lira_scores(phi, mask, variance="global")
    with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
        lira_scores(phi, mask, min_count=0)
    with pytest.raises(ValueError, match=r"phi \(5, 3\) and member_in \(5, 2\)"):
        lira_scores(phi, mask[:, :2])
    with pytest.raises(ValueError, match="member_in must hold booleans"):
        lira_scores(phi, np.full((5, 3), 2))
    with pytest.raises(ValueError, match="phi holds NaN"):
        lira_scores(np.full((5, 3), np.nan), mask)
    with pytest.raises(ValueError, match="must be equal"):
        per_record_auc(phi, mask[:, :2])


def test_roc_summary_equals_the_scikit_learn_convention_with_ties():
    from tasks.analysis.statistics import auc, roc_summary

    rng = np.random.default_rng(12)
    for trial in range(20):
        labels = rng.random(300) < rng.uniform(0.05, 0.9)
        labels[:2] = [True, False]
        scores = np.round(rng.normal(0, 1, 300) + labels * rng.uniform(0, 2), trial % 3)
        area, tprs = roc_summary(labels, scores, (0.01, 0.001, 0.0, 0.2))
        assert area == pytest.approx(auc(labels, scores), abs=1e-12)
        assert tprs == [tpr_at_fpr(labels, scores, x) for x in (0.01, 0.001, 0.0, 0.2)]
