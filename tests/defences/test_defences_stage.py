"""The ``defences`` stage: validation, the adaptive attacker's defended features, and a tiny
end-to-end recovery sweep run inline."""

from __future__ import annotations

import numpy as np
import pytest

import orchestrator.stages.defences  # noqa: F401  (registers the stage and the transforms)
from orchestrator.context import TaskContext
from orchestrator.engine.execute import execute_inline
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import SpecError, expand
from orchestrator.store.tables import Results
from tasks.analysis.statistics import auc
from tasks.attacks.membership import OUTPUT_TRANSFORMS, PairRows, run_attacks
from tasks.data import load_dataset
from tasks.defences import DEFENCES
from tasks.unlearning import UnlearningMethod
from tasks.unlearning.base import copy_model
from tests.defences.tiny_spec import TINY


def _with(**section):
    data = {**TINY, "defences": {**TINY["defences"], **section}}
    return expand(data)


def test_output_defences_reach_the_membership_seam():
    for name in ("label_only", "top_k", "temperature"):
        assert name in OUTPUT_TRANSFORMS


def test_defence_attack_mismatch_and_unknown_names_are_spec_errors():
    with pytest.raises(SpecError, match="measured against membership"):
        _with(sweeps=[{"defence": "label_only", "strengths": [None]}])
    with pytest.raises(SpecError, match="known: .*pruning"):
        _with(sweeps=[{"defence": "prunning", "strengths": [0.1]}])
    with pytest.raises(SpecError, match="ratio"):
        _with(sweeps=[{"defence": "pruning", "strengths": [1.5]}])
    with pytest.raises(SpecError, match="unknown key"):
        _with(sweeps=[{"defence": "pruning", "strengths": [0.1], "params": {"rate": 1}}])


def test_every_feature_reads_defended_posteriors():
    # Members and non-members differ only in confidence, never in the predicted label: under
    # label-only output nothing is left to learn, for every feature, classical MIA included.
    rng = np.random.default_rng(0)

    def side(n):
        label = np.repeat([1, 0], n)
        p = rng.uniform(-1.0, 1.0, size=(2 * n, 3))
        p[:, 0] = rng.uniform(6.0, 7.0, size=2 * n)  # class 0 wins by >= 5 logits
        q = p.copy()
        q[label == 1, 0] -= 3.0  # deleted records lose confidence, keep their label
        return PairRows(p, q, label, {})

    shadow, target = side(100), side(100)
    feats = ("direct_diff", "sorted_diff", "direct_concat", "sorted_concat", "l2_distance",
             "basic_mia")
    open_ = {r.feature: auc(target.label, r.test_scores)
             for r in run_attacks(shadow, target, feats, ("dt",))}
    assert open_["direct_diff"] > 0.9  # the signal is there without the defence
    shut = {r.feature: auc(target.label, r.test_scores)
            for r in run_attacks(shadow, target, feats, ("dt",), "label_only", {})}
    assert shut == {f: 0.5 for f in feats}


def test_tiny_recovery_sweep_end_to_end(tmp_path):
    (spec,) = expand(TINY)
    _, units = plan_run(spec, None)
    results = Results(tmp_path / "R", spec.experiment)
    ctx = TaskContext(spec.experiment, str(tmp_path / "R"), str(tmp_path / "A"), None, "cpu")
    report = execute_inline(units, results, ctx)
    assert report.failed == 0, report.errors
    every = results.read("defences")
    li = every[every.attack == "label_inference"]
    assert len(li) == 4  # none + pruning x2 + label_only
    li_none = li[li.defence == "none"].iloc[0]
    li_zero = li[(li.defence == "pruning") & (li.strength == 0.0)].iloc[0]
    assert li_zero.attack_metric == li_none.attack_metric and li_none.n_targets >= 2
    assert li[(li.defence == "pruning") & (li.strength == 0.9)].iloc[0].test_acc_unlearned < \
        li_none.test_acc_unlearned
    df = every[every.attack == "recovery"]
    assert len(df) == 4  # none + obfuscation x2 + pruning x1
    none = df[df.defence == "none"].iloc[0]
    zero = df[(df.defence == "obfuscation") & (df.strength == 0.0)].iloc[0]
    # sigma = 0 publishes theta_u itself and the restarts are seeded alike: identical attack.
    assert zero.attack_metric == none.attack_metric
    assert zero.test_acc_unlearned == none.test_acc_unlearned
    noisy = df[(df.defence == "obfuscation") & (df.strength == 1e-2)].iloc[0]
    assert noisy.attack_metric != none.attack_metric
    assert set(df.attack) == {"recovery"} and df.epsilon.isna().all()
    figs = results.read("figure_index")
    assert figs.path.notna().all() and (tmp_path / "R" / spec.experiment / "figures").is_dir()


def test_top_k_at_or_above_the_class_count_fails_at_planning():
    data = {**TINY, "experiment": "defences_tiny_mia", "dataset": {"name": "digits"},
            "unlearning": [{"method": "retrain"}],
            "defences": {"attack": "membership",
                         "membership": {"set_num": 1, "set_size": 50, "unlearning_size": 2},
                         "sweeps": [{"defence": "top_k", "strengths": [10]}]}}
    (spec,) = expand(data)
    with pytest.raises(ValueError, match="below the number of classes C = 10"):
        plan_run(spec, None)


def test_fine_tuning_on_test_records_measures_utility_on_the_others(tmp_path, monkeypatch):
    from orchestrator.stages.defences import attack_unit

    (spec,) = _with(sweeps=[{"defence": "fine_tuning", "strengths": [1]}],
                    finetune_source="test", max_requests=1, figure=False)
    tuned, scored = [], []
    fine_tuning = DEFENCES.get("fine_tuning")
    real_apply, real_acc = fine_tuning.apply, attack_unit.test_acc

    def apply(self, theta, theta_u, params, *, seed=0, context=None):
        if params.epochs:
            tuned.append(np.asarray(context.heldout))
        return real_apply(self, theta, theta_u, params, seed=seed, context=context)

    def test_acc(model, dataset, device, records):
        scored.append(np.asarray(records))
        return real_acc(model, dataset, device, records)

    monkeypatch.setattr(fine_tuning, "apply", apply)
    monkeypatch.setattr(attack_unit, "test_acc", test_acc)
    _, units = plan_run(spec, None)
    results = Results(tmp_path / "R", spec.experiment)
    ctx = TaskContext(spec.experiment, str(tmp_path / "R"), str(tmp_path / "A"), None, "cpu")
    report = execute_inline(units, results, ctx)
    assert report.failed == 0, report.errors
    assert tuned and scored
    n_test = len(load_dataset("digits").y_test)
    for records in scored:  # the baseline row too: one sweep, one set of utility records
        assert not np.isin(records, np.concatenate(tuned)).any()
        assert len(records) + len(tuned[0]) == n_test
    rows = results.read("defences")
    assert set(rows["utility_records"]) == {len(scored[0])}


class KeepOriginal(UnlearningMethod):
    """Publishes theta itself as theta_u."""

    name = "keep_original_toy"

    def unlearn(self, state, request, params):
        return copy_model(state.original)


def test_membership_sweep_runs_every_attack_model_on_shared_test_records(tmp_path):
    data = {"experiment": "defences_mia_models", "seed": 0, "dataset": {"name": "breast_cancer"},
            "model": {"name": "dt"}, "unlearning": [{"method": f"{__name__}:KeepOriginal"}],
            "defences": {"attack": "membership",
                         "membership": {"set_num": 1, "set_size": 60, "unlearning_size": 4,
                                        "attack_models": ["dt", "lr"],
                                        "unlearned_eval_size": 20},
                         "sweeps": [{"defence": "label_only", "strengths": [None]}]}}
    (spec,) = expand(data)
    _, units = plan_run(spec, None)
    results = Results(tmp_path / "R", spec.experiment)
    ctx = TaskContext(spec.experiment, str(tmp_path / "R"), str(tmp_path / "A"), None, "cpu")
    report = execute_inline(units, results, ctx)
    assert report.failed == 0, report.errors
    rows = results.read("defences")
    assert len(rows) == 4 and rows["key"].is_unique  # (none, label_only) x (dt, lr)
    for _, g in rows.groupby("defence"):
        assert sorted(g["attack_model"]) == ["dt", "lr"]
    # theta_u is theta: on the same test records both accuracies agree.
    np.testing.assert_allclose(rows["test_acc_original"], rows["test_acc_unlearned"],
                               rtol=0, atol=1e-12)
    # A rerun finds every row by its key (the attack model is part of it).
    again = execute_inline(units, results, ctx)
    assert again.skipped == again.total
