"""The membership stage end to end (inline executor): tabular and image targets, SISA, every
scenario, reruns that train nothing, and the figures."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import orchestrator.stages  # noqa: F401  (registers the spec sections)
from orchestrator.context import TaskContext
from orchestrator.engine.execute import execute_inline
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import SpecError, expand
from orchestrator.store.tables import Results
from tasks.data import load_dataset
from tasks.defences.dp import DPParams, dp_epsilon_pair
from tasks.models import ModelConfig
from tasks.training import TrainConfig
from tasks.unlearning import UNLEARNING, ForgetRequest, TrainingState, UnlearningMethod
from tasks.unlearning.base import copy_model, fit_standard
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
    mia = results.read("membership_attacks")
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
    members = results.read("membership_records")
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
    np.testing.assert_allclose(results.read("membership_attacks").set_index("key").sort_index()["auc"],
                               mia.set_index("key").sort_index()["auc"])


def test_sisa_retrains_one_shard_per_deletion(tmp_path):
    data = _tabular_spec(scenarios=["single", "chain"])
    # Neither the old hard-coded 5 nor the default 10: the count must come from the spec.
    data["unlearning"] = [{"method": "sisa", "shards": 4}]
    _spec, _units, results, report = _run(data, tmp_path)
    assert report.failed == 0, report.errors
    unlearned = results.read("models").query("role == 'unlearned'")
    retrained = unlearned["shards_retrained"].map(lambda s: __import__("json").loads(s))
    assert (retrained.map(len) == 1).all()
    mia = results.read("membership_attacks")
    assert set(mia["num_shard"]) == {4}


def test_sisa_shard_count_comes_from_the_typed_parameters(tmp_path):
    # No ``shards`` in the spec: every table records the one default, ATTACKS.md's 10.
    default = UNLEARNING.get("sisa").Params().shards
    assert default == 10
    data = _tabular_spec(scenarios=["single"], attack_models=["dt"])
    data["unlearning"] = [{"method": "sisa"}]
    _spec, _units, results, report = _run(data, tmp_path / "default")
    assert report.failed == 0, report.errors
    assert set(results.read("membership_attacks")["num_shard"]) == {default}
    # 3.0 in the YAML is the integer 3 once typed; the raw value would record a float.
    data["unlearning"] = [{"method": "sisa", "shards": 3.0}]
    _spec, _units, results, report = _run(data, tmp_path / "float")
    assert report.failed == 0, report.errors
    mia = results.read("membership_attacks")
    assert set(mia["num_shard"]) == {3} and pd.api.types.is_integer_dtype(mia["num_shard"])


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
    mia = results.read("membership_attacks")
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
    assert len(results.read("membership_attacks")) >= 6


def test_spec_errors_name_the_key():
    with pytest.raises(SpecError, match="membership"):
        expand(_tabular_spec(scenarios=["nope"]))
    with pytest.raises(SpecError, match="unknown attack model"):
        expand(_tabular_spec(attack_models=["svm"]))
    data = _tabular_spec(scenarios=["online"])
    data["unlearning"] = [{"method": "sisa"}]
    with pytest.raises(ValueError, match="online"):
        plan_run(expand(data)[0], None)


class ScratchRetrain(UnlearningMethod):
    """Named by no list in the package: only its declared capability says it retrains."""

    name = "scratch_retrain_toy"
    retrains_from_scratch = True

    def unlearn(self, state, request, params):
        return fit_standard(state, exclude=tuple(state.removed) + request.indices)


class ScratchRetrainUndeclared(ScratchRetrain):
    retrains_from_scratch = False


class KeepOriginal(UnlearningMethod):
    """Publishes theta itself as theta_u: both must score the same on the same records."""

    name = "keep_original_toy"

    def unlearn(self, state, request, params):
        return copy_model(state.original)


def _unlearn_deps(method: str) -> list[tuple[str, ...]]:
    data = _tabular_spec(scenarios=["single"])
    data["unlearning"] = [{"method": f"{__name__}:{method}"}]
    _, units = plan_run(expand(data)[0], None)
    return [u.deps for u in units if u.fn == "mia_unlearn"]


def test_a_method_that_declares_retraining_needs_no_original():
    scratch = _unlearn_deps("ScratchRetrain")
    assert scratch and all(deps == () for deps in scratch)
    undeclared = _unlearn_deps("ScratchRetrainUndeclared")
    assert undeclared and all(len(deps) == 1 for deps in undeclared)


def test_original_and_unlearned_accuracy_share_their_test_records(tmp_path):
    data = _tabular_spec(scenarios=["single"], attack_models=["dt"], unlearned_eval_size=20,
                         membership_rows=False, figures=False)
    data["unlearning"] = [{"method": f"{__name__}:KeepOriginal"}]
    _spec, _units, results, report = _run(data, tmp_path)
    assert report.failed == 0, report.errors
    mia = results.read("membership_attacks")
    # theta_u is theta: on the same 20 test records the accuracies agree exactly (before,
    # the originals were scored on the whole test split).
    np.testing.assert_allclose(mia["test_acc_original"], mia["test_acc_unlearned"],
                               rtol=0, atol=1e-12)
    full = results.read("models").query("role == 'original' and side == 'target'")["test_acc"]
    assert mia["generalisation_gap"].iloc[0] == pytest.approx(
        mia["train_acc_original"].iloc[0] - full.mean())


def _dp_spec(noise: str) -> dict:
    return {
        "experiment": f"mia_dp_{noise}", "seed": 0, "dataset": {"name": "digits"},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 2, "lr": 0.05, "batch_size": 16},
        "unlearning": [{"method": "retrain_dp", "noise_multiplier": 1.0, "noise": noise}],
        "membership": {"set_num": 1, "set_size": 40, "unlearning_size": 2,
                       "attack_models": ["dt"], "shuffled_control": [],
                       "membership_rows": False, "figures": False},
    }


def test_retrain_dp_rows_record_the_pairs_composed_epsilon(tmp_path):
    _spec, _units, results, report = _run(_dp_spec("fresh"), tmp_path)
    assert report.failed == 0, report.errors
    mia = results.read("membership_attacks")
    n = int(mia["set_size"].iloc[0])
    expected = dp_epsilon_pair(n, n - 1, _spec.training, DPParams(noise_multiplier=1.0))
    assert mia["dp_epsilon"].notna().all() and mia["epsilon_pair"].notna().all()
    assert mia["dp_epsilon"].iloc[0] == pytest.approx(expected["epsilon"])
    assert mia["epsilon_pair"].iloc[0] == pytest.approx(expected["epsilon_pair"])
    # Two trainings spend more than one and, composed by RDP, less than the sum of both.
    assert expected["epsilon"] < mia["epsilon_pair"].iloc[0] < \
        expected["epsilon"] + expected["epsilon_unlearned"]
    assert set(mia["dp_pair_composition"]) == {"accountant"} and mia["dp_note"].isna().all()


def test_retrain_dp_with_shared_noise_reports_an_unprotected_pair(tmp_path):
    _spec, _units, results, report = _run(_dp_spec("shared"), tmp_path)
    assert report.failed == 0, report.errors
    mia = results.read("membership_attacks")
    assert np.isinf(mia["epsilon_pair"]).all() and np.isfinite(mia["dp_epsilon"]).all()
    assert mia["dp_note"].str.contains("shared").all()
