"""Membership inference against unlearning: features, attack models, metrics, splits."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.analysis.membership import degradation, true_label_confidence
from tasks.analysis.statistics import auc, tpr_at_fpr
from tasks.attacks.membership import (
    ATTACK_MODELS,
    CLASSICAL,
    FEATURES,
    UNLEARNING_FEATURES,
    PairRows,
    build_features,
    posteriors,
    run_attacks,
    softmax,
)
from tasks.mia_splits import effective_set_size, paper_split, sample_sets
from tasks.registry import UnknownComponentError


def _pq(n=5, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return softmax(rng.normal(size=(n, c))), softmax(rng.normal(size=(n, c)))


# --- features ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,width", [("direct_diff", 4), ("sorted_diff", 4),
                                        ("direct_concat", 8), ("sorted_concat", 8),
                                        ("l2_distance", 1), ("basic_mia", 4)])
def test_feature_shapes(name, width):
    p, q = _pq()
    assert build_features(name, p, q).shape == (5, width)


def test_every_feature_is_registered():
    assert set(FEATURES.names()) == {*UNLEARNING_FEATURES, CLASSICAL}


def test_sorted_features_follow_ascending_p():
    p = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    q = np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    # Row 0: argsort(p) = [0, 2, 1]; row 1: [1, 2, 0].
    np.testing.assert_allclose(build_features("sorted_diff", p, q),
                               [[-0.1, 0.0, 0.1], [-0.2, 0.1, 0.1]])
    np.testing.assert_allclose(build_features("sorted_concat", p, q),
                               [[0.1, 0.3, 0.6, 0.2, 0.3, 0.5], [0.2, 0.3, 0.5, 0.4, 0.2, 0.4]])
    sorted_p = build_features("sorted_concat", p, q)[:, :3]
    assert (np.diff(sorted_p, axis=1) >= 0).all()


def test_direct_features_and_l2():
    p, q = _pq()
    np.testing.assert_allclose(build_features("direct_diff", p, q), p - q)
    np.testing.assert_allclose(build_features("direct_concat", p, q), np.hstack([p, q]))
    np.testing.assert_allclose(build_features("l2_distance", p, q)[:, 0],
                               np.sqrt(((p - q) ** 2).sum(1)))
    # The classical baseline ignores q entirely.
    np.testing.assert_allclose(build_features("basic_mia", p, q), p)
    np.testing.assert_allclose(build_features("basic_mia", p, 1 - q), p)


def test_posteriors_are_the_softmax_of_logits():
    logits = np.log(np.array([[0.2, 0.8], [0.5, 0.5]]))
    np.testing.assert_allclose(posteriors(logits), [[0.2, 0.8], [0.5, 0.5]])
    # Output defences may be registered too (tasks.defences adds them), so match loosely.
    with pytest.raises(UnknownComponentError, match=r"'no_such_defence'; known: .*\bnone\b"):
        posteriors(logits, "no_such_defence")


def test_attack_models_match_the_reference_settings():
    assert ATTACK_MODELS.get("dt")(0).max_leaf_nodes == 10
    rf = ATTACK_MODELS.get("rf")(0)
    assert (rf.n_estimators, rf.min_samples_leaf) == (500, 30)
    lr = ATTACK_MODELS.get("lr")(0)
    assert [name for name, _ in lr.steps] == ["standardscaler", "logisticregression"]
    assert lr.steps[1][1].max_iter == 400
    mlp = ATTACK_MODELS.get("mlp")(0)
    assert mlp.hidden_layer_sizes == (100,) and mlp.early_stopping and mlp.learning_rate_init == 0.01


# --- metrics ----------------------------------------------------------------------------------

def test_tpr_at_fpr_on_a_hand_made_roc():
    # 10 negatives, 5 positives. Sorted by score: one negative (0.95) outranks all positives but
    # one; the second negative (0.85) comes after three positives.
    y = np.array([1, 0, 1, 1, 0, 1, 1] + [0] * 8)
    s = np.array([0.99, 0.95, 0.9, 0.88, 0.85, 0.8, 0.1] + [0.05] * 8)
    # FPR <= 0 (no false positive): only the first positive -> TPR 1/5.
    assert tpr_at_fpr(y, s, 0.0) == pytest.approx(0.2)
    assert tpr_at_fpr(y, s, 0.001) == pytest.approx(0.2)
    # FPR <= 10% (one false positive of 10): thresholds down to 0.88 -> 3/5.
    assert tpr_at_fpr(y, s, 0.1) == pytest.approx(0.6)
    # FPR <= 20%: down to 0.1 -> 5/5.
    assert tpr_at_fpr(y, s, 0.2) == pytest.approx(1.0)
    assert tpr_at_fpr(y, s, 0.19) == pytest.approx(0.6)


def test_tpr_at_fpr_counts_boundary_false_positives():
    # 200 negatives: FPR 1% admits exactly two false positives.
    y = np.array([0, 0, 1, 0, 1] + [0] * 197 + [1] * 10)
    s = np.concatenate([[0.9, 0.8, 0.7, 0.6, 0.55], np.full(197, 0.1), np.full(10, 0.05)])
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(1 / 12)


def test_degradation_on_a_hand_computed_example():
    y = np.array([1, 1, 0, 0])
    new = np.array([0.9, 0.4, 0.2, 0.7])  # confidence on truth: .9 .4 .8 .3
    classical = np.array([0.6, 0.6, 0.5, 0.5])  # .6 .6 .5 .5
    np.testing.assert_allclose(true_label_confidence(y, new), [0.9, 0.4, 0.8, 0.3])
    count, rate = degradation(y, new, classical)
    assert count == pytest.approx(2 / 4)
    assert rate == pytest.approx(((0.9 - 0.6) + (0.4 - 0.6) + (0.8 - 0.5) + (0.3 - 0.5)) / 4)
    assert degradation(y, classical, classical) == (0.0, 0.0)


def test_auc_of_perfect_and_reversed_scores():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    with pytest.raises(ValueError, match="NaN"):
        auc(y, np.array([0.1, np.nan, 0.8, 0.9]))


# --- the attack on synthetic pairs ------------------------------------------------------------

def _synthetic_side(n_pairs: int, seed: int, signal: float) -> PairRows:
    """Members lose ``signal`` of confidence on their top class after unlearning; everyone's
    posterior also jitters (the unlearning fingerprint the attack should find)."""
    rng = np.random.default_rng(seed)
    n = 2 * n_pairs
    label = np.tile([1, 0], n_pairs)
    p = softmax(rng.normal(0, 2, size=(n, 3)))
    # Retraining moves every posterior a little (no exact ties between p and q).
    q = p * np.exp(rng.normal(0, 0.05, size=p.shape))
    top = p.argmax(1)
    drop = signal * label * rng.uniform(0.5, 1.0, n)
    q[np.arange(n), top] -= drop * q[np.arange(n), top]
    q /= q.sum(1, keepdims=True)
    meta = {"set_index": np.zeros(n, int), "pair_index": np.repeat(np.arange(n_pairs), 2),
            "record": np.arange(n)}
    return PairRows(np.log(p), np.log(q), label, meta)


def test_attack_finds_a_planted_unlearning_signal_and_the_shuffled_control_does_not():
    shadow, target = _synthetic_side(200, 1, 0.5), _synthetic_side(200, 2, 0.5)
    results = run_attacks(shadow, target, ("sorted_diff", "l2_distance"), ("dt", "lr"),
                          shuffled_control=("dt", "lr"))
    by = {(r.feature, r.attack_model, r.control): auc(target.label, r.test_scores)
          for r in results}
    assert by[("sorted_diff", "dt", "none")] > 0.9
    assert by[("l2_distance", "lr", "none")] > 0.9
    # p alone carries no membership signal here.
    assert abs(by[(CLASSICAL, "dt", "none")] - 0.5) < 0.12
    for model in ("dt", "lr"):
        assert abs(by[("sorted_diff", model, "shuffled_labels")] - 0.5) < 0.12


def test_attack_rejects_single_label_shadow_rows():
    shadow = _synthetic_side(10, 1, 0.5)
    shadow = PairRows(shadow.p_logits, shadow.q_logits, np.ones_like(shadow.label), shadow.meta)
    with pytest.raises(ValueError, match="single membership label"):
        run_attacks(shadow, _synthetic_side(10, 2, 0.5), ("direct_diff",), ("dt",))


# --- splits -----------------------------------------------------------------------------------

def test_paper_split_is_disjoint_seeded_and_proportioned():
    split = paper_split(10_000)
    parts = [split.shadow.positive, split.shadow.negative, split.shadow.replace,
             split.target.positive, split.target.negative, split.target.replace]
    allidx = np.concatenate(parts)
    assert len(allidx) == 10_000 and len(np.unique(allidx)) == 10_000
    assert len(split.shadow.positive) == 4000
    assert len(split.shadow.negative) == 850 and len(split.shadow.replace) == 150
    again = paper_split(10_000)
    np.testing.assert_array_equal(again.target.negative, split.target.negative)
    other = paper_split(10_000, split_seed=1)
    assert not np.array_equal(other.target.positive, split.target.positive)


def test_sampled_sets_are_seeded_and_deletions_distinct():
    split = paper_split(5_000)
    a = sample_sets(split, "target", 3, 500, 20, 1, seed=0)
    b = sample_sets(split, "target", 3, 500, 20, 1, seed=0)
    for pa, pb in zip(a, b):
        np.testing.assert_array_equal(pa.members, pb.members)
        assert pa.pairs == pb.pairs
    for plan in a:
        deleted = [r for p in plan.pairs for r in p.deleted]
        assert len(set(deleted)) == len(deleted) == 20  # without replacement across j
        assert set(deleted) <= set(plan.members.tolist())
        for p in plan.pairs:
            assert set(p.negatives).isdisjoint(plan.members.tolist())
            assert set(p.negatives) <= set(split.target.negative.tolist())
            assert set(p.remaining) <= set(plan.members.tolist())
            assert set(p.remaining).isdisjoint(deleted)
            assert set(p.replacement) <= set(split.target.replace.tolist())
    assert not np.array_equal(a[0].members, a[1].members)
    assert a[0].train_seed != a[1].train_seed
    # Group deletions: the same S_i (shared originals), k records per pair.
    g = sample_sets(split, "target", 3, 500, 5, 10, seed=0)
    np.testing.assert_array_equal(g[0].members, a[0].members)
    assert all(len(p.deleted) == 10 and len(p.negatives) == 10 for p in g[0].pairs)


def test_set_size_is_capped_for_small_pools():
    assert effective_set_size(2000, 13024, 0.5) == 2000
    assert effective_set_size(2000, 182, 0.5, cap=True) == 91  # only when asked to
    with pytest.raises(ValueError, match=r"membership.set_size: at most 91 .*got 2000"):
        effective_set_size(2000, 182, 0.5)
    assert effective_set_size(50, 182, 0.5) == 50
    with pytest.raises(ValueError, match="too few"):
        effective_set_size(10, 3, 0.5)


def test_the_mlp_attack_model_fits_on_a_handful_of_shadow_rows():
    # Half of a small shadow set (a pair's pre-registered test fits on one half): 8 rows
    # leave early stopping's stratified validation split one row, fewer than the 2 classes.
    from tasks.attacks.membership_features import fit_and_score

    x = np.random.default_rng(0).normal(size=(8, 3))
    scores = fit_and_score(x, np.array([0, 1] * 4), x[:5], model="mlp")
    assert scores.train.shape == (8,) and scores.test.shape == (5,)
    assert np.all((scores.test >= 0) & (scores.test <= 1))
