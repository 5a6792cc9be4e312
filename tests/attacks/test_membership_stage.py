"""The membership stage end to end (inline executor): tabular and image targets, SISA, every
scenario, reruns that train nothing, and the figures."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from orchestrator.execute import execute_inline
from orchestrator.plan import plan_run
from orchestrator.spec import SpecError, expand
from orchestrator.tables import Results
from orchestrator.units import TaskContext
from tasks.data import load_dataset
from tasks.models import ModelConfig
from tasks.training import TrainConfig
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState
from tests.conftest import require_shared


def _run(data: dict, root, data_root=None):
    spec = expand(data)[0]
    _, units = plan_run(spec, data_root)
    results = Results(str(root), spec.experiment)
    ctx = TaskContext(spec.experiment, results.location.uri, str(root / "_artifacts"), data_root)
    return spec, units, results, execute_inline(units, results, ctx)


def _tabular_spec(**membership) -> dict:
    return {
        "experiment": "mia_test", "seed": 0, "dataset": {"name": "breast_cancer"},
        "model": {"name": "dt"}, "unlearning": [{"method": "retrain"}],
        "membership": {"set_num": 2, "set_size": 60, "unlearning_size": 6,
                       "attack_models": ["dt", "lr"], "group_size": 3, **membership},
    }


def test_every_scenario_runs_and_a_rerun_trains_nothing(tmp_path):
    data = _tabular_spec(scenarios=["single", "in_in", "group", "online", "chain"])
    _spec, _units, results, report = _run(data, tmp_path)
    assert report.failed == 0, report.errors
    mia = results.read("mia")
    features = {"direct_diff", "sorted_diff", "direct_concat", "sorted_concat", "l2_distance",
                "basic_mia"}
    main = mia[mia["control"] == "none"]
    assert set(main["scenario"]) == {"single", "in_in", "group", "online", "chain"}
    for _, g in main.groupby("scenario"):
        assert set(g["feature"]) == features and set(g["attack_model"]) == {"dt", "lr"}
    assert main["auc"].between(0, 1).all() and main["tpr_at_1pct"].between(0, 1).all()
    assert main.loc[main["feature"] != "basic_mia", "deg_count"].between(0, 1).all()
    assert main.loc[main["feature"] == "basic_mia", "deg_count"].isna().all()
    # 2 sides x 2 sets x 6 pairs: one positive and one negative per pair (k per pair in group).
    single = main[main["scenario"] == "single"].iloc[0]
    assert single["n_target_rows"] == 2 * 6 * 2
    assert main[main["scenario"] == "group"].iloc[0]["n_target_rows"] == 2 * 6 * 2 * 3
    assert {"config_hash", "experiment", "seed", "generalisation_gap",
            "cfg.membership.set_size"} <= set(mia.columns)
    members = results.read("membership")
    assert len(members) == main["n_target_rows"].sum()
    assert set(members["label"]) == {0, 1}
    models = results.read("models")
    # 4 originals; single/in_in share 24 unlearned models; group, online, chain 24 each.
    assert (models["role"] == "original").sum() == 4
    assert (models["role"] == "unlearned").sum() == 4 * 24
    assert models.loc[models["role"] == "unlearned", "trained"].all()
    online = models[models["scenario_family"] == "k1-online"]
    assert (online["replaced"] == 1).all()
    chain = models[models["scenario_family"] == "k1-chain"].sort_values("chain_position")
    assert list(chain[chain["set_index"] == 0]["chain_position"].unique()) == list(range(6))
    figures = list((tmp_path / "mia_test" / "figures").glob("*.png"))
    assert len(figures) == 6  # five ROC figures and the gain-vs-gap figure

    # Rerun: every unit is already in its table.
    _, _, _, again = _run(data, tmp_path)
    assert again.succeeded == 0 and again.skipped == again.total
    # Tables lost but artifacts kept: units run again, yet no model is trained.
    shutil.rmtree(tmp_path / "mia_test")
    _, _, results, third = _run(data, tmp_path)
    assert third.failed == 0
    models = results.read("models")
    assert not models["trained"].any()
    np.testing.assert_allclose(results.read("mia").set_index("key").sort_index()["auc"],
                               mia.set_index("key").sort_index()["auc"])


def test_sisa_retrains_one_shard_per_deletion(tmp_path):
    data = _tabular_spec(scenarios=["single", "chain"])
    data["unlearning"] = [{"method": "sisa", "shards": 5}]
    _spec, _units, results, report = _run(data, tmp_path)
    assert report.failed == 0, report.errors
    unlearned = results.read("models").query("role == 'unlearned'")
    retrained = unlearned["shards_retrained"].map(lambda s: __import__("json").loads(s))
    assert (retrained.map(len) == 1).all()
    mia = results.read("mia")
    assert set(mia["num_shard"]) == {5}


def test_sisa_unlearning_touches_only_the_deleted_records_shard():
    d = load_dataset("breast_cancer")
    state = TrainingState(d, ModelConfig("dt"), TrainConfig(), np.arange(200), seed=3)
    sisa = UNLEARNING.get("sisa")()
    params = sisa.Params(shards=10)
    state.original = sisa.train_original(state, params)
    before = state.original.proba(d.x_test).copy()
    shards_before = list(state.original.shards)
    for r in (5, 77, 150):
        model = sisa.unlearn(state, ForgetRequest(f"r{r}", "single", (r,)), params)
        assert len(model.retrained) == 1
        (s,) = model.retrained
        for i, (old, new) in enumerate(zip(shards_before, model.shards)):
            assert (old is new) == (i != s)
    # Aggregation never wrote into a cached shard's output.
    np.testing.assert_array_equal(state.original.proba(d.x_test), before)


def test_torch_image_path_end_to_end(tmp_path):
    data = {
        "experiment": "mia_digits", "seed": 0, "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [32]},
        "training": {"epochs": 3, "lr": 0.05, "batch_size": 32},
        "unlearning": [{"method": "retrain"}, {"method": "sisa", "shards": 2}],
        "membership": {"set_num": 1, "set_size": 150, "unlearning_size": 3,
                       "attack_models": ["dt"], "scenarios": ["single", "chain"],
                       "membership_rows": False, "figures": False},
    }
    _spec, _units, results, report = _run(data, tmp_path)
    assert report.failed == 0, report.errors
    mia = results.read("mia")
    assert set(mia["unlearning_method"]) == {"retrain", "sisa"}
    assert len(mia[mia["control"] == "none"]) == 2 * 2 * 6


@pytest.mark.shared_data
def test_cifar10_simple_cnn_end_to_end(tmp_path):
    require_shared("cifar10")
    data = {
        "experiment": "mia_cifar", "seed": 0, "dataset": {"name": "cifar10"},
        "model": {"name": "simple_cnn"},
        "training": {"epochs": 1, "lr": 0.001, "batch_size": 32, "optimizer": "adam"},
        "unlearning": [{"method": "retrain"}],
        "membership": {"set_num": 1, "set_size": 64, "unlearning_size": 2,
                       "attack_models": ["dt"], "membership_rows": False, "figures": False},
    }
    _spec, _units, results, report = _run(data, tmp_path)
    assert report.failed == 0, report.errors
    assert len(results.read("mia")) >= 6


def test_spec_errors_name_the_key():
    with pytest.raises(SpecError, match="membership"):
        expand(_tabular_spec(scenarios=["nope"]))
    with pytest.raises(SpecError, match="unknown attack model"):
        expand(_tabular_spec(attack_models=["svm"]))
    data = _tabular_spec(scenarios=["online"])
    data["unlearning"] = [{"method": "sisa"}]
    with pytest.raises(ValueError, match="online"):
        plan_run(expand(data)[0], None)
