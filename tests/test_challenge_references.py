"""The challenge design's references follow the method's own recipe (``per_example``).

``design: challenge`` compares, per target, unlearned models with references retrained on the
base set alone. A method that trains theta its own way (a non-empty ``original_recipe``:
``retrain_dp``'s DP-SGD, ``newton``'s perturbed objective) defines its exact retraining by
that recipe, so its references are trained by its ``train_original`` and keyed by its recipe;
methods with the plain recipe share one set of plain references. With plain references,
exact DP retraining read as a total leak (U-LiRA AUC 0.98 at the scale below); with its own
it reads as none.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.engine.plan import Unit, plan_run
from orchestrator.spec.schema import expand
from orchestrator.stages.per_example.planning import draw_records, references
from tests.bad_inputs.harness import run_cli

PLAN_SPEC = {
    "experiment": "pe_refs", "seed": 0, "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1, "lr": 0.05, "batch_size": 64},
    "unlearning": [{"method": "retrain"},
                   {"method": "gradient_ascent", "lr": 0.1, "steps": 1},
                   {"method": "retrain_dp", "noise_multiplier": 1.0},
                   {"method": "newton", "noise_sigma": 1.0},
                   {"method": "newton"}],  # noise_sigma 0: the plain recipe
    "per_example": {"design": "challenge", "models": 8, "targets": 16, "base_size": 128,
                    "members_per_task": 4, "figures": False, "leaderboard": False},
}
PLAIN = (0, 1, 4)  # method indices whose original_recipe is empty


def _plan(data: dict) -> tuple:
    (spec,) = expand(data)
    core, units = plan_run(spec, None)
    return spec, core, units


def _with(changes: dict[int, dict]) -> dict:
    """PLAN_SPEC with unlearning entry i's settings updated (``{2: {"noise": "shared"}}``)."""
    data = copy.deepcopy(PLAN_SPEC)
    for i, settings in changes.items():
        data["unlearning"][i].update(settings)
    return data


def _reference_keys(units: list[Unit]) -> dict[int, list[str]]:
    """Method index -> the reference keys its scoring (and analysis) reads."""
    return {u.params["method_index"]: [r["key"] for r in u.params["references"]]
            for u in units if u.fn == "pe_score"}


def _reference_units(units: list[Unit]) -> list[Unit]:
    return [u for u in units if u.fn == "pe_train" and u.params["role"] == "reference"]


def test_references_follow_the_methods_recipe_and_plain_ones_are_planned_once():
    spec, core, units = _plan(PLAN_SPEC)
    keys = _reference_keys(units)
    params = spec.stages["per_example"]
    records = draw_records(len(core.dataset.y_train), params, 0)
    plain = [x.key for x in references(spec, records, params, 0)]  # the plain recipe's
    assert len(plain) == 8
    # retrain, gradient_ascent and newton without noise: the plain references, shared.
    for m in PLAIN:
        assert keys[m] == plain, m
    # retrain_dp and newton with noise: references of their own, of their own recipe.
    for m in (2, 3):
        assert len(keys[m]) == 8 and not set(keys[m]) & set(plain), m
    assert not set(keys[2]) & set(keys[3])
    # Each reference is trained by exactly one unit, by the recipe of the method it serves:
    # the plain references once (method index None), not once per method.
    refs = _reference_units(units)
    assert len({u.key for u in units}) == len(units), "duplicate unit keys in the plan"
    trained = [k for u in refs for k in u.row_keys]
    assert len(trained) == len(set(trained)) == 3 * 8
    by_key = {k: u.params["method_index"] for u in refs for k in u.row_keys}
    assert {by_key[k] for k in plain} == {None}
    assert {by_key[k] for k in keys[2]} == {2} and {by_key[k] for k in keys[3]} == {3}
    # The scoring of a method waits for its own references only.
    unit_of = {k: u.key for u in refs for k in u.row_keys}
    for score in (u for u in units if u.fn == "pe_score"):
        m = score.params["method_index"]
        own = {unit_of[k] for k in keys[m]}
        assert own <= set(score.deps)
        assert not ({u.key for u in refs} - own) & set(score.deps), m


def test_reference_keys_are_keyed_by_the_recipe():
    keys = _reference_keys(_plan(PLAN_SPEC)[2])
    # How retrain_dp's theta_u draws its noise is not part of theta's recipe: same references.
    assert _reference_keys(_plan(_with({2: {"noise": "shared"}}))[2])[2] == keys[2]
    # A setting of the recipe is: new references (and the plain ones unchanged).
    other = _reference_keys(_plan(_with({2: {"noise_multiplier": 2.0},
                                         3: {"noise_sigma": 2.0}}))[2])
    for m in (2, 3):
        assert not set(other[m]) & set(keys[m]), m
    for m in PLAIN:
        assert other[m] == keys[m], m
    # Two entries of one recipe share their references, trained once.
    data = copy.deepcopy(PLAN_SPEC)
    data["unlearning"].append({"method": "retrain_dp", "noise_multiplier": 1.0,
                               "noise": "shared"})
    units = _plan(data)[2]
    assert _reference_keys(units)[5] == _reference_keys(units)[2]
    assert len({u.key for u in units}) == len(units)
    assert len(_reference_units(units)) == 3 * 2  # 3 recipes x 8 references / 4 per unit


def test_the_ulira_design_trains_no_references():
    data = copy.deepcopy(PLAN_SPEC)
    data["per_example"]["design"] = "ulira"
    units = _plan(data)[2]
    assert not _reference_units(units)
    assert all(not u.params["references"] for u in units if u.fn == "pe_score")


def test_a_method_whose_retraining_cannot_be_reproduced_is_refused(tmp_path):
    from tests.bad_inputs.harness import refused

    data = copy.deepcopy(PLAN_SPEC)
    data["unlearning"] = [{"method": "retrain"}, {"method": "sisa", "shards": 2}]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    refused(["run", "spec.yaml", "--results", "R"], tmp_path, ("'sisa'", "shard ensemble"))


# --- acceptance: exact DP retraining reads as no leak --------------------------------------------

E2E_SPEC = {
    "experiment": "pe_dp", "seed": 0, "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [64]},
    "training": {"epochs": 20, "lr": 0.1, "batch_size": 64, "momentum": 0.9},
    "unlearning": [{"method": "retrain_dp", "noise_multiplier": 1.0, "max_grad_norm": 1.0}],
    "per_example": {"design": "challenge", "models": 12, "targets": 32, "base_size": 128,
                    "members_per_task": 12, "scoring": "in_task", "figures": False,
                    "leaderboard": False, "exposed": 4},
}


def _run(root: Path) -> str:
    code, out, err = run_cli(["run", "spec.yaml", "--results", "R", "--artifacts", "A",
                              "--num-cpus", "2", "--quiet"], root)
    assert code == 0, out + err
    return out + err


def _main_row(ulira: pd.DataFrame) -> pd.Series:
    """The U-LiRA row the analysis marks main (online, per-example variance where run)."""
    rows = ulira[ulira["attack"] == "ulira"]
    if "main" in rows:
        rows = rows[rows["main"].astype(bool)]
    else:
        rows = rows[(rows["variant"] == "online") & (rows["variance"] == "per_example")]
    assert len(rows) == 1, rows
    return rows.iloc[0]


@pytest.mark.slow
def test_exact_dp_retraining_reads_as_no_leak_in_the_challenge_design(tmp_path, local_ray):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(E2E_SPEC))
    _run(tmp_path)
    folder = tmp_path / "R" / "pe_dp"
    row = _main_row(pd.read_parquet(folder / "ulira"))
    # Before the references followed the method's recipe: AUC 0.98 (plain against DP-SGD).
    assert abs(row["auc"] - 0.5) <= 0.07, row["auc"]
    models = pd.read_parquet(folder / "per_example_models")
    assert (models["role"] == "reference").sum() == 12
    assert models["trained"].all()
