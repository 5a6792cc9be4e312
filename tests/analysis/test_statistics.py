"""The one statistics module (issue 27): ROC AUC and points, TPR at low FPR, bootstraps.

Each function is checked against an independent computation written here, on a simulated
null (nothing separates the classes) and on a simulated leak."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tasks.analysis import statistics as st


def test_bootstrap_ci_is_seeded_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(3.0, 1.0, 20), rng.normal(3.0, 1.0, 2000)
    m, lo, hi = st.bootstrap_ci(small)
    assert lo < m < hi and m == pytest.approx(small.mean())
    assert st.bootstrap_ci(small) == (m, lo, hi)  # seeded: the same interval every time
    assert st.bootstrap_ci(small, seed=7) != (m, lo, hi)
    m2, lo2, hi2 = st.bootstrap_ci(large)
    assert lo2 < m2 < hi2 and (hi2 - lo2) < (hi - lo) / 5
    assert lo2 < 3.0 < hi2
    point, low, high = st.bootstrap_ci([4.0])  # one sample: no interval
    assert point == 4.0 and np.isnan(low) and np.isnan(high)
    assert all(np.isnan(st.bootstrap_ci([])))


def test_the_auc_interval_resamples_deleted_and_never_used_records_apart():
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, 500)
    one = np.r_[1, np.zeros(500)]
    point, low, high = st.stratified_auc_ci(one, np.r_[3.0, neg])
    assert point > 0.99 and np.isnan(low) and np.isnan(high)  # one deleted record: none
    labels = np.r_[np.ones(5), np.zeros(500)]
    scores = np.r_[rng.normal(1, 1, 5), neg]
    point, low, high = st.stratified_auc_ci(labels, scores)
    assert low < point < high and high - low > 0.15  # 5 positives: a wide interval
    assert st.stratified_auc_ci(labels, scores) == (point, low, high)  # seeded


def _pairwise_auc(pos, neg):
    """P(pos > neg) + P(pos = neg) / 2 over every pair: the definition, no ranks."""
    diff = np.subtract.outer(pos, neg)
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


@pytest.mark.parametrize("shift", [0.0, 1.5])  # null, leak
def test_every_auc_agrees_with_the_pairwise_definition_ties_included(shift):
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(shift, 1.0, 80), 1)  # rounded: many ties
    neg = np.round(rng.normal(0.0, 1.0, 120), 1)
    y, s = np.r_[np.ones(80), np.zeros(120)], np.r_[pos, neg]
    want = _pairwise_auc(pos, neg)
    assert st.auc(y, s) == pytest.approx(want, abs=1e-12)
    assert st.split_auc(pos, np.sort(neg)) == pytest.approx(want, abs=1e-12)
    assert st.roc_summary(y, s, (0.01,))[0] == pytest.approx(want, abs=1e-12)
    assert st.stratified_auc_ci(y, s)[0] == pytest.approx(want, abs=1e-12)
    assert st.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    if shift == 0.0:
        assert abs(want - 0.5) < 0.1
    else:
        assert want > 0.8


def test_stratified_interval_covers_the_null_auc_at_about_its_level():
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(100):
        y = np.r_[np.ones(40), np.zeros(40)]
        s = rng.normal(size=80)
        _, low, high = st.stratified_auc_ci(y, s, resamples=300, seed=int(rng.integers(1 << 30)))
        covered += low <= 0.5 <= high
    assert 88 <= covered <= 100, covered  # nominal 95 %; percentile bootstrap runs a bit short
