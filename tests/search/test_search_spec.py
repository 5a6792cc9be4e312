"""The search: block: distributions, key paths, objectives, and errors that name the key."""

from __future__ import annotations

import copy

import pytest

from orchestrator.search.spec import load_search, parse_dimension
from orchestrator.spec.schema import SpecError
from tasks.params import ParamError

BASE = {
    "experiment": "s",
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 1},
    "forget": {"kind": "single", "count": 4},
    "unlearning": [{"method": "gradient_ascent", "lr": 1.0e-3, "steps": 1}],
    "search": {
        "objective": "inversion",
        "attack": {"iterations": 20, "restarts": 1},
        "targets": 2,
        "heldout": 2,
        "space": {
            "attack.lr": {"loguniform": [1.0e-3, 0.3]},
            "attack.optimizer": {"choice": ["adam", "adamw"]},
            "attack.restarts": {"type": "int", "low": 1, "high": 4},
            "unlearning.0.lr": {"uniform": [1.0e-4, 1.0e-2]},
        },
        "scheduler": {"name": "asha", "metric": "matching_loss", "max_t": 20,
                      "grace_period": 5},
    },
}


def spec(**search_changes):
    data = copy.deepcopy(BASE)
    data["search"].update(search_changes)
    return data


def test_parses_every_kind_and_both_key_families():
    plan = load_search(spec())
    dims = {d.key: d for d in plan.search.dimensions}
    assert dims["attack.lr"].kind == "loguniform" and dims["attack.lr"].low == 1e-3
    assert dims["attack.optimizer"].choices == ("adam", "adamw")
    assert dims["attack.restarts"].kind == "int" and dims["attack.restarts"].high == 4
    assert plan.search.metrics[0].name == "psnr"
    assert plan.search.directions == ["maximize"]
    # attack.* goes to the objective's configuration, other paths into the experiment
    params = {"attack.lr": 0.1, "unlearning.0.lr": 5e-3}
    assert plan.attack_settings(params) == {"iterations": 20, "restarts": 1, "lr": 0.1}
    trial = plan.trial_spec(params)
    assert trial.unlearning[0].params["lr"] == 5e-3
    assert plan.base.unlearning[0].params["lr"] == 1e-3
    assert trial.config_hash != plan.base.config_hash


def test_distributions_match_optuna():
    import optuna.distributions as od

    plan = load_search(spec())
    dists = {d.key: d.distribution() for d in plan.search.dimensions}
    assert dists["attack.lr"] == od.FloatDistribution(1e-3, 0.3, log=True)
    assert dists["attack.restarts"] == od.IntDistribution(1, 4)
    assert dists["attack.optimizer"] == od.CategoricalDistribution(["adam", "adamw"])


def test_set_overrides_reach_the_search_block():
    plan = load_search(spec(), ["search.budget.trials=3", "search.sampler.name=random"])
    assert plan.search.budget.trials == 3 and plan.search.sampler.name == "random"


@pytest.mark.parametrize("change, path", [
    ({"space": {"attack.lr": {"loguniform": [0.0, 1.0]}}}, "search.space.attack.lr.loguniform"),
    ({"space": {"attack.lr": {"uniform": [1.0, 0.5]}}}, "search.space.attack.lr.uniform"),
    ({"space": {"attack.lr": {"uniform": [0.1]}}}, "search.space.attack.lr.uniform"),
    ({"space": {"attack.lr": {"uniform": [0.1, 0.2], "choice": [1]}}}, "search.space.attack.lr"),
    ({"space": {"attack.lr": {"type": "normal", "low": 0, "high": 1}}},
     "search.space.attack.lr.type"),
    ({"space": {"attack.lr": {"type": "uniform", "low": 0}}}, "search.space.attack.lr.high"),
    ({"space": {"attack.lr": {"uniform": [0.1, 0.2], "bins": 3}}},
     "search.space.attack.lr.bins"),
    ({"space": {"attack.restarts": {"int": ["a", 3]}}}, "search.space.attack.restarts.int"),
    ({"space": {"attack.optimizer": {"choice": []}}}, "search.space.attack.optimizer.choice"),
    ({"space": {"attack.optimizer": {"choice": ["sgd"]}}}, "search.space.attack.optimizer"),
    ({"space": {"attack.nope": {"choice": [1, 2]}}}, "search.space.attack.nope"),
    ({"space": {}}, "search.space"),
    ({"space": {"training.epochs": {"int": [-3, 2]}}}, "search.space.training.epochs"),
    ({"space": {"widget.size": {"int": [1, 2]}}}, "search.space.widget.size"),
    ({"objective": "telepathy"}, "search.objective"),
    ({"metrics": [{"name": "accuracy"}]}, "search.metrics[0].name"),
    ({"metrics": [{"name": "psnr", "direction": "up"}]}, "search.metrics[0].direction"),
    ({"scheduler": {"metric": "psnr"}}, "search.scheduler.metric"),
    ({"scheduler": {"metric": "matching_loss", "grace_period": 50, "max_t": 10}},
     "search.scheduler.max_t"),
    ({"sampler": {"name": "cmaes"}}, "search.sampler.name"),
    ({"budget": {"trials": 0}}, "search.budget.trials"),
    ({"attack": {"iterations": "many"}}, "search.attack.iterations"),
    ({"concurrency": 0}, "search.concurrency"),
    ({"colour": "blue"}, "search.colour"),
])
def test_errors_name_the_key_path(change, path):
    with pytest.raises(SpecError) as info:
        load_search(spec(**change))
    assert str(info.value).startswith(f"{path}:"), str(info.value)


def test_missing_search_block_and_too_few_requests():
    data = copy.deepcopy(BASE)
    del data["search"]
    with pytest.raises(SpecError, match=r"^search: required"):
        load_search(data)
    with pytest.raises(SpecError, match=r"^forget.count: .* 8 forget"):
        load_search(spec(targets=4, heldout=4))
    data = spec()
    data["model"]["width"] = 3
    with pytest.raises(SpecError, match=r"^model"):
        load_search(data)


def test_bare_list_is_a_choice_and_int_log():
    dim = parse_dimension("attack.restarts", [1, 2, 5], "p")
    assert dim.kind == "choice" and dim.choices == (1, 2, 5)
    dim = parse_dimension("x", {"int": [1, 64], "log": True}, "p")
    assert dim.log and dim.distribution().log
    with pytest.raises(ParamError, match=r"^p.step"):
        parse_dimension("x", {"int": [1, 64], "log": True, "step": 2}, "p")


def test_shipped_search_spaces_parse(repo):
    from orchestrator.search.spec import load_search_file

    files = sorted((repo / "search_spaces").glob("*_search.yaml"))
    assert files
    for path in files:
        plan = load_search_file(path)
        assert plan.search.dimensions, path


def test_exact_reference_target_is_refused_as_in_the_attacks_stage():
    data = spec(attack={"iterations": 20, "restarts": 1, "knowledge": "reference",
                        "label_mode": "known"})
    data["unlearning"] = [{"method": "retrain"}]
    del data["search"]["space"]["unlearning.0.lr"]
    with pytest.raises(SpecError, match="search.attack: reference knowledge against exact "
                                        "unlearning .'retrain'. needs a pretrained theta0"):
        load_search(data)
    data["search"]["attack"].update(knowledge="paper", label_mode="inferred")
    assert load_search(data).search.objective == "inversion"


def _verdict(run) -> str:
    """"accepted", or the refusal without the section path that prefixes it."""
    try:
        run()
    except (SpecError, ValueError) as err:
        return str(err).split(": ", 1)[1] if str(err).startswith(("search.", "attacks.")) \
            else str(err)
    return "accepted"


@pytest.mark.parametrize("dataset", [{}, {"train_size": 500}, {"pool_size": 1000},
                                     {"pool_size": 1000, "train_size": 500}])
@pytest.mark.parametrize("batch_size", [4096, 200])
def test_exact_reference_target_counts_steps_on_the_stages_training_set(dataset, batch_size):
    # The search counts theta's training steps on the records the core plan selects (N from
    # the dataset itself when neither train_size nor pool_size is set), so it accepts an
    # exact reference target exactly when the attacks stage does, and refuses it for the
    # stage's reason (no 2**30-record guess).
    from orchestrator.engine.plan import plan_run
    from orchestrator.spec.schema import expand

    attack = {"iterations": 20, "restarts": 1, "knowledge": "reference", "label_mode": "known"}
    data = spec(attack=attack)
    del data["search"]["space"]["unlearning.0.lr"]
    data["dataset"].update(dataset)
    data.update(unlearning=[{"method": "retrain"}], pretraining={"epochs": 1},
                training={"epochs": 1, "batch_size": batch_size})
    run = {k: v for k, v in copy.deepcopy(data).items() if k != "search"}
    run["attacks"] = {"ref": {"attack": "inversion", "config": attack}}
    stage = _verdict(lambda: plan_run(expand(run)[0], None))
    search = _verdict(lambda: load_search(data))
    assert search == stage
    if batch_size == 4096 and "pool_size" in dataset:
        assert stage == "accepted"  # one full-batch step: both accept
