"""Per-record tests calibrated under the null (tasks.analysis.record_tests): the AUC against
a double loop, permutation p-values against full enumeration, uniform under simulated nulls
of both designs, and Benjamini-Hochberg's false-discovery control on a simulated leak."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import false_discovery_control, kstest, norm

from tasks.analysis import record_tests
from tasks.analysis.per_example import lira_scores, per_record_auc
from tasks.analysis.record_tests import benjamini_hochberg, record_auc, record_pvalues


def _ulira_null(models: int, records: int, seed: int):
    """phi iid N(0, 1); each model IN on a random half of the records (U-LiRA's design), so
    a record's IN count varies around models / 2."""
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(models, records))
    mask = np.argsort(rng.random((models, records)), axis=1) < records // 2
    return phi, mask, rng


def _challenge_mask(models: int, records: int) -> np.ndarray:
    """The challenge's design: the first half of the models unlearned every record."""
    mask = np.zeros((models, records), dtype=bool)
    mask[: models // 2] = True
    return mask


def _brute_statistic(x_in: np.ndarray, x_out: np.ndarray) -> float:
    """2 log LR of one MLE Gaussian per side against one for all, from scipy's logpdf."""
    both = np.concatenate([x_in, x_out])

    def loglik(x):
        return norm.logpdf(x, x.mean(), x.std()).sum()
    return 2 * (loglik(x_in) + loglik(x_out) - loglik(both))


def test_record_auc_matches_a_double_loop_with_ties():
    rng = np.random.default_rng(3)
    phi = rng.integers(0, 4, (9, 40)).astype(float)  # few values: many ties
    mask = rng.random((9, 40)) < 0.5
    mask[:, 0] = True  # no OUT model: NaN
    mask[:, 1] = False  # no IN model: NaN
    got = record_auc(phi, mask)
    assert np.isnan(got[:2]).all()
    for r in range(2, 40):
        x_in, x_out = phi[mask[:, r], r], phi[~mask[:, r], r]
        if len(x_in) == 0 or len(x_out) == 0:
            assert np.isnan(got[r])
            continue
        wins = sum((a > b) + 0.5 * (a == b) for a in x_in for b in x_out)
        assert got[r] == pytest.approx(wins / (len(x_in) * len(x_out)), abs=1e-12)


@pytest.mark.parametrize("models", [12, 24, 64])
def test_null_record_auc_has_mean_one_half_for_both_designs(models):
    phi, mask, _ = _ulira_null(models, 500, seed=models)
    for design in (mask, _challenge_mask(models, 500)):
        assert abs(np.nanmean(record_auc(phi, design)) - 0.5) < 0.02
    # The leave-one-out U-LiRA AUC this replaces is biased low on the same data.
    loo = np.nanmean(per_record_auc(lira_scores(phi, mask), mask))
    assert loo < 0.45


@pytest.mark.parametrize("models", [12, 24, 64])
def test_null_record_pvalues_are_uniform_for_both_designs(models):
    phi, mask, _ = _ulira_null(models, 500, seed=models)
    for design in (mask, _challenge_mask(models, 500)):
        p = record_pvalues(phi, design, permutations=199, seed=1)
        valid = p[~np.isnan(p)]
        assert len(valid) > 450
        # The p-values live on a grid of step 1/200, far finer than the KS resolution here.
        assert kstest(valid, "uniform").pvalue > 0.01


def test_record_pvalues_match_the_exact_permutation_distribution():
    # 10 models, 5 IN per record: all C(10, 5) = 252 relabellings can be enumerated.
    rng = np.random.default_rng(5)
    models, records = 10, 12
    phi = rng.normal(size=(models, records)) * rng.uniform(0.5, 5, records) + 3.0
    mask = np.argsort(rng.random((models, records)), axis=0) < 5
    phi[:, :4] += 1.2 * mask[:, :4]  # a mean shift on a few records
    phi[:, 4:7] *= np.where(mask[:, 4:7], 3.0, 1.0)  # a spread shift on others
    permutations = 19_999
    got = record_pvalues(phi, mask, permutations=permutations, seed=2)
    for r in range(records):
        observed = _brute_statistic(phi[mask[:, r], r], phi[~mask[:, r], r])
        stats = []
        for chosen in itertools.combinations(range(models), 5):
            sel = np.zeros(models, dtype=bool)
            sel[list(chosen)] = True
            stats.append(_brute_statistic(phi[sel, r], phi[~sel, r]))
        exact = np.mean(np.asarray(stats) >= observed - 1e-9)
        # Monte Carlo standard error is at most 0.5 / sqrt(B) = 0.0035.
        assert got[r] == pytest.approx(exact, abs=0.015)


def test_record_pvalues_catch_mean_and_spread_differences_in_both_directions():
    rng = np.random.default_rng(7)
    models, records = 32, 40
    phi = rng.normal(size=(models, records))
    mask = np.argsort(rng.random((models, records)), axis=0) < models // 2
    under, over, spread = slice(0, 10), slice(10, 20), slice(20, 30)
    phi[:, under] += 1.5 * mask[:, under]
    phi[:, over] -= 1.5 * mask[:, over]
    phi[:, spread] *= np.where(mask[:, spread], 3.0, 1.0)
    p = record_pvalues(phi, mask, permutations=499, seed=0)
    auc = record_auc(phi, mask)
    assert np.median(p[under]) < 0.01 and np.median(p[over]) < 0.01
    assert np.median(p[spread]) < 0.01
    assert np.median(p[30:]) > 0.1  # untouched records
    assert auc[under].min() > 0.6 and auc[over].max() < 0.4
    # The AUC cannot see a spread difference; the likelihood-ratio statistic does.
    assert abs(np.mean(auc[spread]) - 0.5) < 0.1


def test_record_pvalues_nan_constant_deterministic_and_chunk_free(monkeypatch):
    rng = np.random.default_rng(11)
    phi = rng.normal(size=(8, 30))
    mask = np.argsort(rng.random((8, 30)), axis=0) < 4
    mask[:, 0] = False
    mask[0, 0] = True  # 1 IN model: NaN
    mask[:, 1] = True
    mask[:2, 1] = False  # 2 OUT models: tested
    phi[:, 2] = 1.7  # constant record: no evidence at all
    p = record_pvalues(phi, mask, permutations=99, seed=4)
    assert np.isnan(p[0]) and not np.isnan(p[1:]).any()
    assert p[2] == 1.0
    # p = (1 + #{T_b >= T}) / (B + 1): on the grid k / 100 with k from 1 to 100.
    k = p[1:] * 100
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert ((k >= 1) & (k <= 100)).all()
    np.testing.assert_array_equal(p, record_pvalues(phi, mask, permutations=99, seed=4))
    assert not np.array_equal(p, record_pvalues(phi, mask, permutations=99, seed=5))
    # Chunks draw the same uniforms in the same order: the chunk size changes nothing.
    monkeypatch.setattr(record_tests, "CHUNK_CELLS", 8 * 30 * 7)
    np.testing.assert_array_equal(p, record_pvalues(phi, mask, permutations=99, seed=4))
    with pytest.raises(ValueError):
        record_pvalues(phi, mask, permutations=0)
    with pytest.raises(ValueError):
        record_pvalues(np.where(mask, np.nan, phi), mask)


def test_benjamini_hochberg_by_hand_against_scipy_and_with_nan():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005, 0.5])
    # Sorted: .005 .01 .03 .04 .2 .5 against q k / 6 = .0083 .0167 .025 .0333 .0417 .05:
    # the largest k passing is 2 (0.01 <= 0.0167), so 0.005 and 0.01 are rejected.
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.05),
                                  [True, False, False, False, True, False])
    # Step-up: k = 2 fails (0.025 > 0.02) but k = 3 passes (0.028 <= 0.03), so 3 rejected.
    np.testing.assert_array_equal(benjamini_hochberg([0.3, 0.028, 0.001, 0.8, 0.025], 0.05),
                                  [False, True, True, False, True])
    rng = np.random.default_rng(0)
    for _ in range(20):
        pv = np.concatenate([rng.uniform(size=80), rng.uniform(0, 0.01, size=20)])
        np.testing.assert_array_equal(benjamini_hochberg(pv, 0.1),
                                      false_discovery_control(pv) <= 0.1)
    # NaN never rejected and not counted in m: with m = 2 both pass (.01 <= .025, .04 <= .05).
    np.testing.assert_array_equal(benjamini_hochberg([0.01, 0.04, np.nan, np.nan], 0.05),
                                  [True, True, False, False])
    assert not benjamini_hochberg([np.nan, np.nan]).any()
    with pytest.raises(ValueError):
        benjamini_hochberg([0.5, 1.5])


def test_leak_is_found_and_false_discoveries_stay_below_q():
    q, runs, records, leaked = 0.1, 50, 200, 20
    fdp, power, leaked_p = [], [], []
    for run in range(runs):
        phi, mask, rng = _ulira_null(24, records, seed=100 + run)
        leak = np.zeros(records, dtype=bool)
        leak[rng.choice(records, leaked, replace=False)] = True
        phi = phi + 2.0 * (mask & leak[None])  # IN models keep a 2-sd higher confidence
        p = record_pvalues(phi, mask, permutations=399, seed=run)
        found = benjamini_hochberg(p, q)
        fdp.append((found & ~leak).sum() / max(1, found.sum()))
        power.append((found & leak).sum() / leaked)
        leaked_p.append(np.median(p[leak]))
    assert max(leaked_p) < 0.01
    assert np.mean(power) > 0.8
    # BH with independent p-values gives E[FDP] <= q m0 / m = 0.09. One run's FDP has a
    # standard deviation of about 0.06 here, so the mean of 50 has about 0.0085: 0.025 of
    # slack is 3 standard errors above q (and 4 above 0.09).
    assert np.mean(fdp) <= q + 0.025
