"""Membership verdicts on a user's pair that hold on a true null (issue 31).

A true null: two small models trained with different seeds, neither of which saw the claimed
records, given as original and unlearned. The pair stage's own test
(:func:`orchestrator.stages.pair.evidence.preregistered_test`, the function its unit calls on
the same rows) must call the records identifiable at most at its stated level; on pairs whose
records were deleted it must fire. Shadow pairs are built as the membership stage builds them
(originals on subsets of the shadow half, each with one record deleted by retraining, one
never-used record beside it)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from orchestrator.reporting import verdicts as vd
from orchestrator.stages.pair import evidence as ev
from tasks.attacks.membership import MembershipConfig, PairRows

SEEDS = range(20)
# Every feature of the default attack (and the classical baseline), two attack models: fast.
CONFIG = MembershipConfig(attack_models=("dt", "lr"))


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x, y = (d.data[order] / 16.0).astype(np.float32), d.target[order]
    # shadow members' pool | shadow never-used | the user's x_train | the user's x_test
    return x, y, {"shadow": np.arange(0, 700), "shadow_out": np.arange(700, 900),
                  "train": np.arange(900, 1500), "test": np.arange(1500, len(y))}


def _torch_fit(x, y, seed):
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()

    def logits(rows):
        with torch.no_grad():
            return net(torch.from_numpy(rows)).double().numpy()
    return logits


def _sklearn_fit(x, y, seed):
    from sklearn.ensemble import RandomForestClassifier

    model = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=seed, n_jobs=1)
    model.fit(x, y)

    def logits(rows):
        proba = np.zeros((len(rows), 10))
        proba[:, model.classes_] = model.predict_proba(rows)
        return np.log(np.clip(proba, 1e-6, 1.0))
    return logits


FITS = {"torch": _torch_fit, "sklearn": _sklearn_fit}


def _rows(p, q, x, parts):
    """PairRows of models p and q on (record ids, label) parts."""
    ids = np.concatenate([r for r, _ in parts])
    label = np.concatenate([np.full(len(r), y) for r, y in parts])
    n = len(ids)
    return PairRows(p(x[ids]), q(x[ids]), label, {"set_index": np.zeros(n, int),
                                                  "pair_index": np.zeros(n, int),
                                                  "record": ids})


def shadow_rows(family: str, sets: int = 4, deletions: int = 12, size: int = 300) -> PairRows:
    """The attacker's shadow pairs: per original, ``deletions`` pairs each retrained without
    one member, with that record (member, deleted) and one never-used record."""
    x, y, pools = _digits()
    fit = FITS[family]
    parts = []
    for s in range(sets):
        rng = np.random.default_rng([7, s])
        members = rng.choice(pools["shadow"], size, replace=False)
        original = fit(x[members], y[members], 100 + s)
        for j in range(deletions):
            keep = np.delete(members, j)
            unlearned = fit(x[keep], y[keep], 100 + s)
            rows = _rows(original, unlearned, x, [(members[j:j + 1], 1),
                                                  (rng.choice(pools["shadow_out"], 1), 0)])
            rows.meta["set_index"][:], rows.meta["pair_index"][:] = s, j
            parts.append(rows)
    return PairRows(np.concatenate([r.p_logits for r in parts]),
                    np.concatenate([r.q_logits for r in parts]),
                    np.concatenate([r.label for r in parts]),
                    {k: np.concatenate([r.meta[k] for r in parts]) for k in parts[0].meta})


def target_rows(family: str, seed: int, k: int, null: bool = True) -> PairRows:
    """The user's pair and its claimed records: a true null (both models trained without
    them, different seeds) or a real deletion (theta saw them, theta_u retrained without)."""
    x, y, pools = _digits()
    claimed = np.random.default_rng([seed, 5]).choice(pools["train"], k, replace=False)
    keep = np.setdiff1d(pools["train"], claimed)
    fit = FITS[family]
    if null:
        theta, theta_u = fit(x[keep], y[keep], 2 * seed), fit(x[keep], y[keep], 2 * seed + 1)
    else:
        theta = fit(x[pools["train"]], y[pools["train"]], seed)
        theta_u = fit(x[keep], y[keep], seed)
    return _rows(theta, theta_u, x, [(claimed, 1), (pools["test"], 0)])


@pytest.fixture(scope="module")
def shadows():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only cost
    yield {family: shadow_rows(family) for family in FITS}
    torch.set_num_threads(threads)


def _fired(shadow, target) -> tuple[bool, dict]:
    row, _ = ev.preregistered_test(target, shadow, CONFIG)
    verdict = vd.preregistered_verdict(row)
    called = verdict.sentence.startswith("deleted records are identifiable")
    assert called == row["identifiable"]
    return called, row


@pytest.mark.parametrize("family", sorted(FITS))
def test_a_true_null_pair_is_called_identifiable_at_most_at_the_stated_level(shadows, family):
    """20 seeds, k = 1 and k = 10: at most 3 of 20 false alarms each (level 0.05)."""
    for k in (1, 10):
        alarms = [_fired(shadows[family], target_rows(family, seed, k))[0] for seed in SEEDS]
        assert sum(alarms) <= 3, f"{family} k={k}: {sum(alarms)} of 20 false alarms"


@pytest.mark.parametrize("family", sorted(FITS))
def test_the_verdict_states_its_measured_error_rates_and_design_floor(shadows, family):
    _, row = _fired(shadows[family], target_rows(family, 0, 10))
    sentence = vd.preregistered_verdict(row).sentence
    assert row["fpr_trials"] > 0 and row["power_trials"] > 0
    assert f"false-positive rate {row['fpr']:.2f}" in sentence
    assert f"power {row['power']:.2f}" in sentence
    assert "rank-sum" in sentence and "999 permutations" in sentence
    assert "your pair" in sentence and row["feature"] in sentence
    _, one = _fired(shadows[family], target_rows(family, 0, 1))
    assert f"1/{one['n_negatives'] + 1}" in vd.preregistered_verdict(one).sentence


@pytest.mark.parametrize("family", sorted(FITS))
def test_records_the_pair_really_deleted_are_found_by_the_same_test(shadows, family):
    """The test is not merely silent: a pair whose theta saw 10 records and whose theta_u
    was retrained without them is called identifiable."""
    called, row = _fired(shadows[family], target_rows(family, 0, 10, null=False))
    assert called and row["combined_p"] <= 0.05, row


def test_record_pvalues_rank_among_negatives_and_simes_combines():
    neg = np.arange(1.0, 100.0)  # 99 negatives
    p = ev.record_pvalues(np.array([1000.0, 50.0, 0.0]), neg)
    assert p[0] == pytest.approx(1 / 100)  # the smallest p the design allows: 1/(n+1)
    assert p[1] == pytest.approx((1 + 50) / 100)  # ties count against the record
    assert p[2] == pytest.approx(1.0)
    assert ev.simes(np.array([0.01, 0.5, 0.9])) == pytest.approx(0.03)
    assert ev.simes(np.array([0.04, 0.04])) == pytest.approx(0.04)
    assert ev.combined_p(np.array([5.0]), neg) == pytest.approx(p_one := (1 + 95) / 100)
    assert p_one > 0.9
    # k records above every negative: the permutation floor; among them: no evidence.
    assert ev.combined_p(np.full(5, 1000.0), neg) == pytest.approx(1 / 1000)
    assert ev.combined_p(np.array([20.0, 40.0, 60.0, 80.0]), neg) > 0.3
    assert ev.smallest_p(1, 99) == pytest.approx(1 / 100)
    assert ev.smallest_p(2, 3) == pytest.approx(1 / 10)  # C(5, 2) subsets


def test_the_shadow_split_holds_out_whole_originals():
    meta = {"set_index": np.repeat([0, 1, 2, 3], 4), "pair_index": np.tile([0, 0, 1, 1], 4)}
    fit, val, unit = ev.split_shadow(meta, np.tile([1, 0], 8))
    assert unit == "shadow originals"
    assert set(meta["set_index"][val]) == {1, 3} and set(meta["set_index"][fit]) == {0, 2}
    one = {"set_index": np.zeros(8, int), "pair_index": np.repeat([0, 1, 2, 3], 2)}
    assert ev.split_shadow(one, np.tile([1, 0], 4))[2] == "shadow pairs"
    assert ev.split_shadow({"set_index": np.zeros(4, int), "pair_index": np.zeros(4, int)},
                           np.array([1, 0, 1, 0])) is None


# --- no interval from fewer than two samples, anywhere in a report -----------------------------

INTERVAL = r"\[[+-]?\d[\d.]*, [+-]?\d[\d.]*\]"


def _single_sample_tables() -> dict[str, list[dict]]:
    """One row per group of every verdict table, as a pair audit with one deleted record
    writes them (plus a defence table with one row per setting)."""
    base = {"experiment": "one", "unlearning_method": "your pair", "attack_config": "x"}
    pre = {"key": "m:preregistered", **base, "test": "preregistered", "scenario": "single",
           "feature": "direct_diff", "attack_model": "lr", "control": "none",
           "shadow_recipe": "retrain", "forget_size": 1, "n_negatives": 500,
           "combined_p": 0.4, "min_p": 1 / 501, "alpha": 0.05, "auc": 0.6, "auc_low": None,
           "auc_high": None, "candidates": 14, "selection_auc": 0.7, "n_validation_rows": 40,
           "fpr_fired": 1, "fpr_trials": 20, "power_fired": 5, "power_trials": 20,
           "shadow_reference_size": 20, "identifiable": False}
    explore = {**pre, "key": "m:direct_diff:dt:none", "test": "exploratory",
               "attack_model": "dt", "auc": 0.99, "auc_low": 0.98, "auc_high": 1.0}
    return {
        "recoveries": [{"key": "r", **base, "psnr": 20.0, "psnr_mean_image": 9.0}],
        "label_inference": [{"key": "l", **base, "correct": True, "top_k": 1,
                             "true_class": 3}],
        "membership_attacks": [pre, explore],
        "membership_records": [{"key": f"m:direct_diff:dt:none:{i}", "mia_key": "m:direct_diff:dt:none",
                        "label": int(i == 0), "score": 1.0 - i / 10} for i in range(5)],
        "defences": [{"key": "d", "attack": "inversion", "unlearning_method": "retrain",
                      "defence": "pruning", "strength": 0.5, "attack_metric": 3.0,
                      "test_acc_unlearned": 0.9}]}


def test_no_verdict_prints_an_interval_from_fewer_than_two_samples(tmp_path):
    from orchestrator.reporting.html_report import collect_verdicts, render
    from orchestrator.store.tables import Results

    results = Results(str(tmp_path), "one")
    for table, rows in _single_sample_tables().items():
        results.write(table, rows)
    verdicts = collect_verdicts({t: results.read(t) for t in results.tables()})
    assert {v.attack for v in verdicts} == {"feature recovery", "label inference",
                                            "membership inference", "defence"}
    for v in verdicts:
        assert not re.search(INTERVAL, v.sentence), v.sentence
        assert "nan" not in v.sentence.lower(), v.sentence
    (member,) = [v for v in verdicts if v.attack == "membership inference"]
    assert member.method == "your pair" and "pre-registered" in member.config  # not dt's 0.99
    assert "(1 never-used record claimed as deleted)" in member.sentence
    assert "trials with 1 deleted record:" in member.sentence
    label = next(v for v in verdicts if v.attack == "label inference").sentence
    assert "1 of 1 requests correct" in label and "one request: no p-value" in label
    page = render(results)
    verdict_html = page[page.index("<h2>Verdicts</h2>"):]
    verdict_html = verdict_html[:verdict_html.index("<h2>", 5)]
    assert not re.search(INTERVAL, verdict_html)
    assert "p=nan" not in page and "false-positive rate 0.05" in page and "power 0.25" in page
    assert "Exploratory, not verdicts: 1 other" in page


def test_the_interval_rule_fires_on_two_samples():
    """The check above can fail: two targets give an interval, and it is found."""
    df = pd.DataFrame({"unlearning_method": "m", "attack_config": "x", "psnr": [20.0, 25.0],
                       "psnr_mean_image": [9.0, 9.0]})
    (v,) = vd.recovery_verdicts(df)
    assert re.search(INTERVAL, v.sentence) and "over 2 targets" in v.sentence


