import subprocess
import sys

import pytest

from orchestrator.spec.schema import SpecError, expand, load_spec

BASE = {"experiment": "t", "dataset": {"name": "digits"}, "model": {"name": "mlp"},
        "unlearning": [{"method": "retrain"}, {"method": "gradient_ascent", "lr": 1.0}]}


def test_quickstart_parses(repo):
    (spec,) = load_spec(repo / "search_spaces" / "quickstart.yaml")
    assert spec.experiment == "quickstart" and spec.forget.count >= 8
    assert {u.method for u in spec.unlearning} >= {"retrain", "gradient_ascent"}


@pytest.mark.parametrize("patch,path", [
    ({"datset": {}}, "datset"),
    ({"training": {"epochs": 2, "lrr": 0.1}}, "training.lrr"),
    ({"unlearning": [{"method": "retrain"}, {"method": "gradient_ascent", "lr": "x"}]},
     "unlearning[1].lr"),
    ({"unlearning": [{"method": "retrian"}]}, "unlearning[0].method"),
    ({"model": {"name": "mlp", "hiden": [3]}}, "model.hiden"),
    ({"forget": {"kind": "some"}}, "forget.kind"),
])
def test_errors_name_the_key_path(patch, path):
    with pytest.raises(SpecError) as info:
        expand({**BASE, **patch})
    assert str(info.value).startswith(path + ":")


def test_unknown_method_lists_known_ones():
    with pytest.raises(SpecError, match="known: .*gradient_ascent.*retrain"):
        expand({**BASE, "unlearning": [{"method": "nope"}]})


def test_grid_and_overrides_expand_into_variants():
    data = {**BASE, "grid": {"dataset.train_size": [8, 32], "training.epochs": [1, 2]}}
    variants = expand(data, ["forget.count=3", "unlearning.1.lr=0.5"])
    assert len(variants) == 4
    assert {(v.dataset.train_size, v.training.epochs) for v in variants} == {
        (8, 1), (8, 2), (32, 1), (32, 2)}
    assert all(v.forget.count == 3 for v in variants)
    assert variants[0].unlearning[1].typed_params().lr == 0.5
    assert len({v.config_hash for v in variants}) == 4


def test_joint_grid_keys_set_their_paths_together():
    """A model and the unlearning settings tuned for it vary together, not as a product."""
    mlp = [{"method": "retrain"}, {"method": "gradient_ascent", "lr": 0.5}]
    logreg = [{"method": "retrain"}, {"method": "gradient_ascent", "lr": 0.01}]
    data = {**BASE, "grid": {"model.hidden, unlearning": [[[64], mlp], [[], logreg]],
                             "training.epochs": [1, 2]}}
    variants = expand(data)
    assert len(variants) == 4
    assert {(tuple(v.model.params["hidden"]), v.unlearning[1].typed_params().lr,
             v.training.epochs) for v in variants} == {
        ((64,), 0.5, 1), ((64,), 0.5, 2), ((), 0.01, 1), ((), 0.01, 2)}


@pytest.mark.parametrize("grid,message", [
    ({"model.hidden, unlearning": [[[64]]]},
     (r"^grid\.model\.hidden, unlearning\.0: expected a list of 2 values, one for each of "
     r"model\.hidden, unlearning$")),
    ({"model.hidden, unlearning": [[64], 3]}, r"^grid\.model\.hidden, unlearning\.0: "),
    ({"model.hidden,": [[[64]]]}, r"^grid\.model\.hidden,: expected a key path"),
    ({"model.hidden, unlearning.x": [[[64], 1]]}, r"^grid\.unlearning\.x: no such list item"),
    ({"model.hidden": [[8]], "model.hidden, unlearning": [[[64], []]]},
     r"^grid\.model\.hidden: set by two grid keys; keep it in one$"),
])
def test_bad_joint_grid_keys_are_refused_naming_the_key(grid, message):
    with pytest.raises(SpecError, match=message):
        expand({**BASE, "grid": grid})


def test_cli_exits_2_naming_the_misspelled_key(tmp_path, repo):
    spec = tmp_path / "bad.yaml"
    spec.write_text("experiment: bad\ndataset: {name: digits}\ntraining: {epohcs: 3}\n")
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "run", str(spec),
                          "--results", str(tmp_path / "R")], capture_output=True, text=True,
                         cwd=repo, check=False)
    assert out.returncode == 2
    assert "training.epohcs" in out.stderr and "allowed:" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_exits_2_naming_a_missing_dataset_path(tmp_path, repo):
    out = subprocess.run([sys.executable, "-m", "orchestrator.cli.main", "run",
                          str(repo / "search_spaces" / "quickstart.yaml"), "--set",
                          "dataset.name=mnist", "--data-root", str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, cwd=repo, check=False)
    assert out.returncode == 2
    assert str(tmp_path / "mnist") in out.stderr and "train-images-idx3-ubyte.gz" in out.stderr


@pytest.mark.parametrize("patch, message", [
    ({"seeds": [0, -1]}, "seeds[1]: must be an integer in [0, 2**32), got -1"),
    ({"seeds": [3, 3]}, "seeds: each seed may appear once"),
    ({"seeds": []}, "seeds: expected a non-empty list"),
    ({"seed": 0, "seeds": [1]}, "seed: give either seed or seeds"),
    ({"attacks": {"a": {"attack": "inversion", "forget": {"kind": "single", "count": 1},
                        "unlearning": [{"method": "gradient_ascent", "steps": 0}]}}},
     "attacks.a.unlearning[0].steps: must be >= 1, got 0"),
    ({"membership": {"output_defence": "top_k", "output_defence_params": {"k": 0}}},
     "membership.output_defence_params.k: must be >= 1, got 0"),
    ({"membership": {"set_size": 1}}, "membership.set_size: must be >= 2, got 1"),
    ({"label_inference": {"unlearning": [{"method": "finetune", "epochs": 0}]}},
     "label_inference.unlearning[0].epochs: must be >= 1, got 0"),
])
def test_range_errors_name_the_full_key_path(patch, message):
    import orchestrator.stages  # noqa: F401  (the attack sections)

    with pytest.raises(SpecError) as info:
        expand({**BASE, **patch})
    assert message in str(info.value), str(info.value)


def test_override_errors_name_the_override():
    with pytest.raises(SpecError, match=r"^--set unlearning\.7=1: unlearning\.7: no such"):
        expand(BASE, ["unlearning.7=1"])
    with pytest.raises(SpecError, match=r"^--set training\.epochs=\[: the value is not valid"):
        expand(BASE, ["training.epochs=["])
    with pytest.raises(SpecError, match=r"^grid\.unlearning\.x: no such list item"):
        expand({**BASE, "grid": {"unlearning.x": [1]}})


def test_a_dotted_key_of_the_spec_is_set_whole():
    """A search space's keys are dotted paths ('attack.lr'): --set search.space.attack.lr=...
    replaces that entry rather than nesting a new 'attack' section beside it."""
    from orchestrator.spec.key_paths import set_path

    data = {"search": {"space": {"attack.lr": {"loguniform": [1e-3, 0.3]},
                                 "attack.restarts": {"choice": [1, 2]}}}}
    set_path(data, "search.space.attack.lr", {"loguniform": [1e-4, 0.1]})
    assert data["search"]["space"] == {"attack.lr": {"loguniform": [1e-4, 0.1]},
                                       "attack.restarts": {"choice": [1, 2]}}
    set_path(data, "search.space.attack.restarts.choice.1", 5)  # into the entry's list
    assert data["search"]["space"]["attack.restarts"] == {"choice": [1, 5]}
    set_path(data, "search.space.attack.tv_weight", 1)  # a new path still nests
    assert data["search"]["space"]["attack"] == {"tv_weight": 1}


def test_a_nested_search_space_entry_is_named_with_a_hint(repo):
    from orchestrator.search.spec import load_search_file

    path = repo / "search_spaces" / "inversion_search.yaml"
    with pytest.raises(SpecError, match=r"search\.space\.attack: expected exactly one of .*"
                                        r"a space key is one whole dotted path, such as "
                                        r"attack\.lr"):
        load_search_file(path, ["search.space.attack.bogus={choice: [1]}"])


def test_a_cuda_device_is_left_to_the_cluster_when_tasks_ask_for_gpus():
    """No GPU here, but the spec's tasks ask Ray for one: the cluster's resources decide."""
    gpu_tasks = {"resources": {"train": {"gpus": 1}, "unlearn": {"gpus": 1}},
                 "runtime": {"device": "cuda"}}
    (spec,) = expand({**BASE, **gpu_tasks})
    assert spec.runtime.device == "cuda"
