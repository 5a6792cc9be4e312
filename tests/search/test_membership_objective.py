"""The membership search objective: conditional spaces, the shadow/target separation, the
paper's default attack reproduced, and a tiny seeded search that repeats (no Ray).

Victim: breast_cancer (bundled with scikit-learn), a 10-tree random forest retrained from
scratch, 3 shadow + 3 target originals of 80 records, 10 deletions each (66 small models,
built once per test module in a temporary artifact store, a few seconds).
"""

from __future__ import annotations

import copy

import numpy as np
import optuna
import pytest

from orchestrator.context import TaskContext
from orchestrator.search import evaluate_config, make_sampler, open_study, suggest_params
from orchestrator.search import membership as sm
from orchestrator.search.space import dimension_dict
from orchestrator.search.spec import load_search
from orchestrator.spec.schema import SpecError
from orchestrator.store.tables import Results

SPEC = {
    "experiment": "ms", "seed": 0, "dataset": {"name": "breast_cancer"},
    "model": {"name": "rf", "n_estimators": 10}, "unlearning": [{"method": "retrain"}],
    "membership": {"set_num": 3, "set_size": 80, "unlearning_size": 10,
                   "features": ["sorted_diff", "direct_diff"], "attack_models": ["dt"]},
    "search": {
        "objective": "membership",
        "space": {
            "attack.model": {"choice": ["dt", "lr"]},
            "attack.dt_max_leaf_nodes": {"int": [2, 60], "when": {"attack.model": "dt"}},
            "attack.lr_C": {"loguniform": [1.0e-3, 1.0e3], "when": {"attack.model": "lr"}},
            "attack.feature": {"choice": ["direct_diff", "sorted_concat", "l2_distance"]},
        },
        "sampler": {"name": "tpe", "seed": 0, "startup_trials": 3},
        "budget": {"trials": 6},
    },
}


def _plan(**search):
    data = copy.deepcopy(SPEC)
    data["search"].update(search)
    return load_search(data)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A context whose artifact store holds every shadow and target pair (built inline)."""
    root = tmp_path_factory.mktemp("mia-search")
    ctx = TaskContext("ms", str(root), str(root / "_artifacts"), None)
    sm.clear_caches()
    plan = _plan()
    evaluate_config(plan, {}, ctx, None, heldout=False)  # builds the 66 models inline
    layout = sm.membership_layout(plan.base, None)
    assert not sm._missing(layout, ctx)
    return plan, ctx, layout


# --- the space ----------------------------------------------------------------------------

def test_conditional_dimensions_parse_and_their_errors():
    plan = _plan()
    dims = {d.key: d for d in plan.search.dimensions}
    assert plan.search.conditional
    assert dims["attack.dt_max_leaf_nodes"].when == (("attack.model", ("dt",)),)
    assert dims["attack.dt_max_leaf_nodes"].active({"attack.model": "dt"})
    assert not dims["attack.dt_max_leaf_nodes"].active({"attack.model": "lr"})
    # A space without conditions hashes as before `when:` existed (old studies still resume).
    assert "when" not in dimension_dict(dims["attack.model"])
    assert "when" in dimension_dict(dims["attack.lr_C"])
    space = copy.deepcopy(SPEC["search"]["space"])
    # Conditions may name a choice declared later (YAML writers sort keys): it is sampled first.
    later = {"attack.lr_C": space["attack.lr_C"], "attack.dt_max_leaf_nodes":
             space["attack.dt_max_leaf_nodes"], "attack.model": space["attack.model"]}
    keys = [d.key for d in _plan(space=later).search.dimensions]
    assert keys == ["attack.model", "attack.lr_C", "attack.dt_max_leaf_nodes"]
    bad = {
        "missing key": {"attack.lr_C": {"loguniform": [1e-3, 1e3], "when": {"attack.nope":
                                                                           "l2_distance"}}},
        "itself": {"attack.model": {"choice": ["dt", "lr"], "when": {"attack.model": "dt"}}},
        "not a choice": {"attack.dt_max_leaf_nodes": {"int": [2, 60],
                                                      "when": {"attack.lr_C": 1.0}}},
        "unknown value": {"attack.lr_C": {"loguniform": [1e-3, 1e3],
                                          "when": {"attack.model": "svm"}}},
        "empty": {"attack.lr_C": {"loguniform": [1e-3, 1e3], "when": {}}},
    }
    for name, change in bad.items():
        with pytest.raises(SpecError, match=r"search\.space\.attack\.") as err:
            _plan(space={**space, **change})
        assert "when" in str(err.value), name
    cycle = {**space, "attack.model": {"choice": ["dt", "lr"],
                                       "when": {"attack.feature": "l2_distance"}},
             "attack.feature": {"choice": ["l2_distance", "direct_diff"],
                                "when": {"attack.model": "dt"}}}
    with pytest.raises(SpecError, match="cycle"):
        _plan(space=cycle)
    with pytest.raises(SpecError, match="dt_max_leaf_nodes"):
        _plan(space={**space, "attack.dt_max_leaf_nodes": {"int": [1, 60]}})
    data = copy.deepcopy(SPEC)
    del data["membership"]
    with pytest.raises(SpecError, match="membership"):
        load_search(data)


def test_conditional_sampling_draws_only_the_chosen_models_hyperparameters(tmp_path):
    plan = _plan(sampler={"name": "random", "seed": 1})
    study = open_study(plan, Results(tmp_path, "s"), resume=False)
    study.sampler = make_sampler(plan, 0)
    seen = set()
    for _ in range(16):
        trial = study.ask()
        params = suggest_params(trial, plan.search.dimensions)
        assert params == trial.params
        model = params["attack.model"]
        seen.add(model)
        assert ("attack.dt_max_leaf_nodes" in params) == (model == "dt")
        assert ("attack.lr_C" in params) == (model == "lr")
        study.tell(trial, 0.5)
    assert seen == {"dt", "lr"}


# --- the objective ------------------------------------------------------------------------

def test_default_hyperparameters_equal_the_stages_attack_models():
    from tasks.attacks.membership import ATTACK_MODELS

    def plain(clf):
        return {k: v for k, v in clf.get_params(deep=True).items()
                if not hasattr(v, "fit") and k != "steps"}

    for model in ("dt", "rf", "lr", "mlp"):
        ours = sm.attack_classifier(sm.MembershipAttackConfig(model=model), 3)
        assert plain(ours) == plain(ATTACK_MODELS.get(model)(3)), model
    tuned = sm.attack_classifier(sm.MembershipAttackConfig(model="lr", lr_C=0.01), 0)
    assert tuned.get_params()["logisticregression__C"] == 0.01
    mlp = sm.attack_classifier(sm.MembershipAttackConfig(model="mlp", mlp_hidden=7), 0)
    assert mlp.hidden_layer_sizes == (7,)


def test_search_reads_only_shadow_models_and_heldout_reads_the_target(built, monkeypatch):
    from orchestrator.stages import membership as stage

    plan, ctx, layout = built
    shadow_keys = set(layout.keys("single", "shadow"))
    target_keys = set(layout.keys("single", "target"))
    assert shadow_keys and target_keys and not shadow_keys & target_keys
    loaded: list[str] = []
    real_get = stage.StoredLogits.get

    def spy(self, key):
        loaded.append(key)
        return real_get(self, key)

    monkeypatch.setattr(stage.StoredLogits, "get", spy)
    sm.clear_caches()
    search = evaluate_config(plan, {"attack.model": "lr"}, ctx, None, heldout=False)
    assert set(loaded) == shadow_keys  # every shadow model, no target model
    loaded.clear()
    held = evaluate_config(plan, {"attack.model": "lr"}, ctx, None, heldout=True)
    assert set(loaded) == target_keys  # shadow rows cached; now the target side
    assert search["rows"] < held["rows"]  # a validation fold vs all 60 target rows
    assert held["rows"] == 3 * 10 * 2
    # Shadow and target rows never share a record (the paper split's disjoint halves).
    shadow = sm.side_rows(layout, "single", "shadow", ctx)
    target = sm.side_rows(layout, "single", "target", ctx)
    assert not set(shadow.meta["record"]) & set(target.meta["record"])


def test_validation_folds_hold_out_whole_originals_and_shared_records(built, monkeypatch):
    plan, ctx, layout = built
    shadow = sm.side_rows(layout, "single", "shadow", ctx)
    masks = sm.shadow_folds(shadow.meta["set_index"], 3)
    assert np.array_equal(np.sum(masks, axis=0), np.ones(len(shadow.label)))  # a partition
    for mask in masks:
        assert len(np.unique(shadow.meta["set_index"][mask])) == 1  # 3 originals, 3 folds
    with pytest.raises(ValueError, match="set_num"):
        sm.shadow_folds(shadow.meta["set_index"], 4)
    import tasks.attacks.membership as attack

    fits: list[tuple[int, int]] = []
    real = attack.fit_and_score

    def spy(x_fit, y_fit, x_eval, *args, **kwargs):
        fits.append((len(x_fit), len(x_eval)))
        return real(x_fit, y_fit, x_eval, *args, **kwargs)

    monkeypatch.setattr(attack, "fit_and_score", spy)
    out = evaluate_config(plan, {}, ctx, None, heldout=False)
    records = shadow.meta["record"]
    expected = [(int((~m).sum()), int((m & ~np.isin(records, records[~m])).sum()))
                for m in masks]
    assert fits == expected
    assert out["rows"] == pytest.approx(np.mean([e for _, e in expected]))


def test_heldout_default_is_the_papers_attack_as_the_stage_runs_it(built):
    from tasks.analysis.statistics import auc
    from tasks.attacks.membership import run_attacks

    plan, ctx, layout = built
    shadow = sm.side_rows(layout, "single", "shadow", ctx)
    target = sm.side_rows(layout, "single", "target", ctx)
    # The spec lists sorted_diff first: the unsearched default is DT (10 leaves) on it.
    (ref,) = [r for r in run_attacks(shadow, target, ("sorted_diff",), ("dt",))
              if r.feature == "sorted_diff"]
    held = evaluate_config(plan, {}, ctx, None, heldout=True)
    assert held["auc"] == pytest.approx(auc(target.label, ref.test_scores), abs=1e-12)
    assert held["fit_auc"] == pytest.approx(auc(shadow.label, ref.train_scores), abs=1e-12)
    # The hyperparameters reach the classifier: a 2-leaf tree fits worse than a 60-leaf one.
    small = evaluate_config(plan, {"attack.dt_max_leaf_nodes": 2}, ctx, None, heldout=True)
    large = evaluate_config(plan, {"attack.dt_max_leaf_nodes": 60}, ctx, None, heldout=True)
    assert small["fit_auc"] < large["fit_auc"]


def test_a_tiny_seeded_search_repeats_its_first_trials(built, tmp_path):
    plan, ctx, _ = built
    runs = []
    for name in ("a", "b"):
        study = open_study(plan, Results(tmp_path / name, "ms"), resume=False)
        study.sampler = make_sampler(plan, 0)
        trials = []
        for _ in range(5):  # past TPE's 3 startup trials
            trial = study.ask()
            params = suggest_params(trial, plan.search.dimensions)
            metrics = evaluate_config(plan, params, ctx, None, heldout=False)
            study.tell(trial, metrics["auc"])
            trials.append((params, metrics["auc"]))
        runs.append(trials)
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert runs[0] == runs[1]
    assert len({json_key(p) for p, _ in runs[0]}) == 5
    assert all(0.0 <= v <= 1.0 for _, v in runs[0])


def json_key(params: dict) -> str:
    import json

    return json.dumps(params, sort_keys=True)


@pytest.mark.slow
def test_tune_runs_a_conditional_membership_search_end_to_end(tmp_path, local_ray):
    import yaml

    from tests.bad_inputs.harness import run_cli

    data = copy.deepcopy(SPEC)
    data["search"]["budget"] = {"trials": 4}
    data["search"]["concurrency"] = 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(["tune", str(spec), "--results", str(tmp_path / "R"),
                              "--num-cpus", "2", "--quiet"], tmp_path)
    assert code == 0, out + err
    tables = Results(tmp_path / "R", "ms")
    trials = tables.read("trials")
    assert int(trials["finished"].sum()) == 4 and set(trials["state"]) == {"complete"}
    for _, row in trials.iterrows():
        dt = row["param.attack.model"] == "dt"
        assert pd_present(row["param.attack.dt_max_leaf_nodes"]) == dt
        assert pd_present(row["param.attack.lr_C"]) == (not dt)
        assert 0 <= row["value.auc"] <= 1
    best = tables.read("best")
    assert set(best["role"]) == {"best", "baseline"}
    assert best["heldout.auc"].between(0, 1).all()
    assert (best["heldout.rows"] == 60).all()
    top = trials.loc[trials["value.auc"].idxmax()]
    chosen = best[best["role"] == "best"].iloc[0]
    assert chosen["trial"] == top["trial"] and chosen["search.auc"] == top["value.auc"]


def pd_present(value) -> bool:
    import pandas as pd

    return value is not None and not pd.isna(value)
