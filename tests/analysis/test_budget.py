"""U-LiRA at a shadow budget (issue 28, item 6): on a simulated null the target models'
AUC is 0.5 at every budget; on a simulated leak it rises with the budget; the scores equal a
record-by-record re-implementation written here."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.analysis.budget import budget_scores, per_side_budgets
from tasks.analysis.per_example import roc_metrics


def _simulate(leak: float, models: int = 64, records: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    member = np.zeros((models, records), bool)
    for r in range(records):
        member[rng.permutation(models)[: models // 2], r] = True
    phi = rng.normal(0, 1, (models, records)) + rng.normal(0, 2, (1, records)) + leak * member
    return phi, member


def _split(phi, member):
    shadow = np.arange(len(phi)) % 2 == 0
    return phi[shadow], member[shadow], phi[~shadow], member[~shadow]


def test_budgets_double_up_to_what_every_record_has():
    member = np.zeros((10, 3), bool)
    member[:3, 0] = member[:5, 1] = member[:6, 2] = True
    assert per_side_budgets(member) == [2, 3]  # record 0: 3 IN, record 2: 4 OUT
    member = np.zeros((32, 2), bool)
    member[:16] = True
    assert per_side_budgets(member) == [2, 4, 8, 16]


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_nothing_leaks_auc_half_at_every_budget(variant):
    phi_s, in_s, phi_t, in_t = _split(*_simulate(0.0))
    for b in per_side_budgets(in_s):
        auc = roc_metrics(budget_scores(phi_s, in_s, phi_t, b, variant, 0), in_t)["auc"]
        assert abs(auc - 0.5) < 0.04, (b, auc)


def test_a_leak_is_found_better_with_more_shadow_models():
    phi_s, in_s, phi_t, in_t = _split(*_simulate(1.0))
    budgets = per_side_budgets(in_s)
    tpr = [roc_metrics(budget_scores(phi_s, in_s, phi_t, b, "online", 0), in_t)["tpr_at_1pct"]
           for b in budgets]
    auc = [roc_metrics(budget_scores(phi_s, in_s, phi_t, b, "online", 0), in_t)["auc"]
           for b in budgets]
    assert auc[-1] > 0.7 and auc[-1] > auc[0] + 0.02
    assert tpr[-1] > tpr[0] and tpr[-1] > 0.05


def test_scores_equal_a_record_by_record_fit():
    phi_s, in_s, phi_t, _ = _split(*_simulate(0.5, models=24, records=30, seed=3))
    b, seed = 4, 7
    got = budget_scores(phi_s, in_s, phi_t, b, "online", seed)
    order = np.random.default_rng([seed, 53]).permutation(len(phi_s))
    picks = {}
    for side in (True, False):
        picks[side] = [[j for j in order if in_s[j, r] == side][:b] for r in range(30)]
    full = [r for r in range(30) if len(picks[True][r]) == len(picks[False][r]) == b]
    assert 10 < len(full) < 30  # some records are short of b on a side, most are not
    spread = {}
    for side in (True, False):
        dev = [phi_s[picks[side][r], r] - phi_s[picks[side][r], r].mean() for r in full]
        spread[side] = np.sqrt(sum((d ** 2).sum() for d in dev) / (len(full) * (b - 1)))
    assert np.isnan(got[:, [r for r in range(30) if r not in full]]).all()
    for r in full:
        mu_in, mu_out = phi_s[picks[True][r], r].mean(), phi_s[picks[False][r], r].mean()
        for t in range(len(phi_t)):
            x = phi_t[t, r]
            want = (-0.5 * ((x - mu_in) / spread[True]) ** 2 - np.log(spread[True])
                    + 0.5 * ((x - mu_out) / spread[False]) ** 2 + np.log(spread[False]))
            assert got[t, r] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_a_record_short_of_shadow_models_is_left_out():
    phi_s, in_s, phi_t, _ = _split(*_simulate(0.0, models=20, records=5))
    in_s[:, 0] = False
    in_s[:2, 0] = True  # record 0: two IN shadow models only
    scores = budget_scores(phi_s, in_s, phi_t, 3, "online", 0)
    assert np.isnan(scores[:, 0]).all() and not np.isnan(scores[:, 1:]).any()
    with pytest.raises(ValueError, match="per_side must be >= 2"):
        budget_scores(phi_s, in_s, phi_t, 1, "online", 0)
