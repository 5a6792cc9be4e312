"""Audit a pair the user brings (issue 13): models trained and unlearned outside the package,
saved in the user's formats, audited through the ``pair:`` section of a spec, end to end on
the CLI with an embedded Ray.

The digits pair: an MLP trained with plain torch in this module on the user's own NPZ, one
sample unlearned by one gradient-ascent step, saved as a state dict (with the architecture
named as ``module:function``) and as a ``torch.export`` program (no user code needed)."""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from tests.bad_inputs.harness import refused
from tests.cli_server import CliServer

REPO = Path(__file__).resolve().parents[1]
FORGOTTEN = 7

# The user's own code, outside the package: workers import it through PYTHONPATH.
USER_MODULE = '''
import torch
from torch import nn


def make_mlp(input_shape, num_classes):
    width = 1
    for size in input_shape:
        width *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 64), nn.ReLU(),
                         nn.Linear(64, num_classes))
'''


def _user_module(site: Path):
    site.mkdir(exist_ok=True)
    (site / "user_models.py").write_text(USER_MODULE)
    namespace: dict = {}
    exec(compile(USER_MODULE, str(site / "user_models.py"), "exec"), namespace)  # noqa: S102
    return namespace["make_mlp"]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder as a user would have it: data, code, theta and theta_u in two formats."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("byo")
    make_mlp = _user_module(root / "site")
    # The user's own unlearning method, for the shadow pairs of membership inference.
    shutil.copy(REPO / "docs" / "examples" / "toy_plugins.py", root / "site" / "toy_plugins.py")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # N x H x W in [0, 1]
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    np.savez(root / "digits.npz", x_train=x[train], y_train=digits.target[train],
             x_test=x[test], y_test=digits.target[test])
    xt = torch.from_numpy(x[train])[:, None]
    yt = torch.from_numpy(digits.target[train]).long()
    torch.manual_seed(0)
    theta = _train(make_mlp((1, 8, 8), 10), xt, yt)
    theta_u = copy.deepcopy(theta)  # one gradient-ascent step on the forgotten sample
    loss = nn.functional.cross_entropy(theta_u(xt[FORGOTTEN:FORGOTTEN + 1]),
                                       yt[FORGOTTEN:FORGOTTEN + 1])
    grads = torch.autograd.grad(loss, list(theta_u.parameters()))
    with torch.no_grad():
        for p, g in zip(theta_u.parameters(), grads):
            p.add_(g, alpha=1.0)
    for name, model in (("theta", theta), ("theta_u", theta_u)):
        torch.save(model.state_dict(), root / f"{name}.pt")
        program = torch.export.export(model, (torch.rand(4, 1, 8, 8),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, root / f"{name}.pt2")
        static = torch.export.export(model, (torch.rand(4, 1, 8, 8),))
        torch.export.save(static, root / f"{name}_static.pt2")
    (root / "forget.txt").write_text(f"{FORGOTTEN}\n")
    return root


ATTACKS = [{"attack": "inversion", "config": {"iterations": 300, "restarts": 2}},
           {"attack": "probing", "config": {"box": "white", "probes_per_class": 3,
                                            "max_calls": 3}}]


def _spec(root: Path, name: str, pair: dict, **extra) -> Path:
    data = {"experiment": name, "seed": 0, "dataset": {"name": "files", "path": "digits.npz"},
            "pair": pair, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def server(outside):
    """The CLI in a process of its own with the user's code folder on its PYTHONPATH (so also
    on its Ray's workers), serving the module's runs on one Ray."""
    cli = CliServer({"PYTHONPATH": str(outside / "site")})
    yield cli
    cli.close()


def _run(server: CliServer, root: Path, spec: Path) -> None:
    code, out, err = server.run(["run", spec.name, "--results", "R", "--num-cpus", "2",
                                 "--quiet"], root)
    assert code == 0, out + err


@pytest.mark.slow
def test_a_pair_trained_outside_is_recovered_and_its_label_inferred(outside, server):
    """The same pair as a state dict (architecture: the user's function) and as a torch.export
    program (no user code): two variants of one spec (a grid over the pair section)."""
    state_dict = {"original": "theta.pt", "unlearned": "theta_u.pt",
                  "format": "torch_state_dict", "model": {"factory": "user_models:make_mlp"},
                  "forget": "forget.txt", "attacks": ATTACKS}
    exported = {"original": "theta.pt2", "unlearned": "theta_u.pt2", "format": "torch_export",
                "forget": "forget.txt", "attacks": ATTACKS}
    spec = _spec(outside, "byo-formats", state_dict)
    data = yaml.safe_load(spec.read_text())
    data["grid"] = {"pair": [state_dict, exported]}
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    _run(server, outside, spec)
    folder = outside / "R" / "byo-formats"
    rec = pd.read_parquet(folder / "recoveries").set_index("pair_format")
    assert sorted(rec.index) == ["torch_export", "torch_state_dict"]
    assert (rec["sample_index"] == FORGOTTEN).all()
    for fmt, row in rec.iterrows():
        gain = float(row["psnr"] - row["psnr_mean_image"])
        assert gain >= 6.0, f"{fmt}: {gain:.1f} dB over the mean image"
    labels = pd.read_parquet(folder / "label_inference")
    assert sorted(labels["pair_format"]) == ["torch_export", "torch_state_dict"]
    assert labels["correct"].notna().all()
    figures = pd.read_parquet(folder / "figure_index")
    assert len(figures) == 4 and all(Path(p).is_file() for p in figures["path"])


@pytest.mark.slow
def test_forget_unknown_gives_guesses_and_a_ranking_with_the_users_unlearning_method(outside, server):
    pair = {"original": "theta.pt2", "unlearned": "theta_u.pt2", "format": "torch_export",
            "forget": "unknown", "candidates": 300, "attacks": [
                ATTACKS[0], {"attack": "membership", "config": {
                    "features": ["direct_diff"], "attack_models": ["lr"]}}],
            "membership": {"set_num": 1, "set_size": 150, "unlearning_size": 4,
                           "deletions_per_task": 4}}
    _run(server, outside, _spec(outside, "byo-unknown", pair, model={"name": "mlp", "hidden": [16]},
                        training={"epochs": 5, "lr": 0.05, "batch_size": 32},
                        unlearning=[{"method": "toy_plugins:LastLayerAscent", "lr": 0.5}]))
    folder = outside / "R" / "byo-unknown"
    tables = {p.name for p in folder.iterdir()}
    assert "guesses" in tables and "membership_ranking" in tables
    assert not tables & {"recoveries", "label_inference", "membership_attacks",
                       "membership_records"}
    guesses = pd.read_parquet(folder / "guesses")
    assert list(guesses["attack"]) == ["inversion"]
    assert not any(c in guesses for c in ("psnr", "correct", "auc"))
    ranking = pd.read_parquet(folder / "membership_ranking")
    assert len(ranking) == 300 and sorted(ranking["rank"]) == list(range(1, 301))
    # The shadow pairs were unlearned with the user's own method, named module:Class.
    assert set(ranking["unlearning_method"]) == {"your pair"}
    assert set(ranking["shadow_recipe"]) == {"toy_plugins:LastLayerAscent"}
    models = pd.read_parquet(folder / "models")
    assert set(models["unlearning_method"].dropna()) == {"toy_plugins:LastLayerAscent"}
    assert (models["role"] == "unlearned").sum() == 4
    code, _, err = server.run(["report", "R/byo-unknown"], outside)
    assert code == 0, err
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "forget set is unknown" in page and "guesses-inversion" in page


def _export(model: nn.Module, path: Path) -> None:
    program = torch.export.export(model.eval(), (torch.rand(4, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)


@pytest.mark.slow
def test_membership_inference_on_shadow_pairs_the_user_supplies(outside, server):
    """No shadow model is trained: the user's own pairs (theta with one other record each
    unlearned by the same gradient-ascent step) fit the attack."""
    theta = torch.export.load(outside / "theta.pt2").module()
    data = np.load(outside / "digits.npz")
    shadow = []
    for i, record in enumerate((20, 31, 42, 53, 64, 75)):
        model = copy.deepcopy(theta)
        x = torch.from_numpy(data["x_train"][record:record + 1])[:, None]
        y = torch.from_numpy(data["y_train"][record:record + 1]).long()
        params = [p for p in model.parameters()]
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g, alpha=1.0)
        _export(model, outside / f"shadow_u{i}.pt2")
        (outside / f"shadow_forget{i}.txt").write_text(f"{record}\n")
        shadow.append({"original": "theta.pt2", "unlearned": f"shadow_u{i}.pt2",
                       "forget": f"shadow_forget{i}.txt"})
    pair = {"original": "theta.pt2", "unlearned": "theta_u.pt2", "format": "torch_export",
            "forget": "forget.txt", "negatives": 100, "shadow": shadow,
            "attacks": [{"attack": "membership", "config": {"features": ["direct_diff"],
                                                             "attack_models": ["lr"]}}]}
    _run(server, outside, _spec(outside, "byo-shadow", pair))
    folder = outside / "R" / "byo-shadow"
    assert not (folder / "models").exists()  # nothing trained
    mia = pd.read_parquet(folder / "membership_attacks")
    row = mia[(mia["feature"] == "direct_diff") & (mia["control"] == "none")
              & (mia["test"] == "exploratory")].iloc[0]
    assert row["unlearning_method"] == "your pair" and row["shadow_recipe"] == "supplied"
    assert row["n_shadow_rows"] == 6 * 101
    assert row["auc"] >= 0.9  # one gradient-ascent step gives the forgotten record away
    # The verdict: one pre-registered test, chosen on 3 of the 6 shadow pairs (by pair: one
    # original), with its error rates measured on the other 3.
    (pre,) = mia[mia["test"] == "preregistered"].to_dict("records")
    assert pre["split_unit"] == "shadow pairs" and pre["n_validation_rows"] == 3 * 101
    assert pre["forget_size"] == 1 and pre["min_p"] == pytest.approx(1 / 101)
    assert pre["fpr_trials"] == 300 and pre["power_trials"] == 3
    assert pre["identifiable"] and pre["combined_p"] <= 0.05
    assert server.run(["report", "R/byo-shadow"], outside)[0] == 0
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "your pair, pre-registered: direct_diff / lr" in page
    assert "false-positive rate" in page and "Exploratory, not verdicts" in page


def _skops_pair(root: Path) -> None:
    """A random-forest pair on Adult: theta on 1500 records, theta_u retrained without 30."""
    from sklearn.ensemble import RandomForestClassifier
    from skops.io import dump

    from tasks.data import load_dataset

    adult = load_dataset("adult")
    members = np.arange(1500)
    forget = members[:30]
    keep = members[30:]
    for name, rows in (("rf", members), ("rf_u", keep)):
        model = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=1)
        model.fit(adult.x_train[rows], adult.y_train[rows])
        dump(model, root / f"{name}.skops")
    (root / "adult_forget.txt").write_text("\n".join(str(i) for i in forget) + "\n")


@pytest.mark.slow
@pytest.mark.shared_data
def test_an_adult_random_forest_pair_from_skops_gets_an_auc_with_its_interval(outside, server):
    from tests.conftest import require_shared

    require_shared("adult")
    _skops_pair(outside)
    pair = {"original": "rf.skops", "unlearned": "rf_u.skops", "format": "skops",
            "trusted": ["sklearn.ensemble._forest.RandomForestClassifier",
                        "sklearn.tree._classes.DecisionTreeClassifier",
                        "sklearn.tree._tree.Tree"],
            "forget": "adult_forget.txt", "negatives": 300,
            "attacks": [{"attack": "membership", "config": {"features": ["direct_diff"],
                                                             "attack_models": ["rf"]}}],
            "membership": {"set_num": 2, "set_size": 300, "unlearning_size": 25,
                           "deletions_per_task": 25}}
    spec = outside / "adult.yaml"
    spec.write_text(yaml.safe_dump({
        "experiment": "byo-adult", "seed": 0, "dataset": {"name": "adult"}, "pair": pair,
        "model": {"name": "rf", "n_estimators": 30}}, sort_keys=False))
    _run(server, outside, spec)
    mia = pd.read_parquet(outside / "R" / "byo-adult" / "membership_attacks")
    records = pd.read_parquet(outside / "R" / "byo-adult" / "membership_records")
    direct = mia[(mia["feature"] == "direct_diff") & (mia["control"] == "none")]
    # The exploratory row (fitted on all shadow pairs): an interval over the 30 deleted and
    # 300 never-used records, resampled separately.
    (row,) = direct[direct["test"] == "exploratory"].to_dict("records")
    assert 0.0 <= row["auc_low"] <= row["auc"] <= row["auc_high"] <= 1.0
    assert row["auc_high"] > row["auc_low"]
    assert row["n_target_rows"] == 330 and row["forget_size"] == 30
    assert int(records[records["mia_key"] == row["key"]]["label"].sum()) == 30
    # The verdict, pre-registered on one shadow original (25 deleted, 25 never-used rows) and
    # validated on the other: too few validation records to measure its error rates at k = 30.
    (pre,) = direct[direct["test"] == "preregistered"].to_dict("records")
    assert pre["split_unit"] == "shadow originals" and pre["n_validation_rows"] == 50
    assert 0.0 <= pre["auc_low"] <= pre["auc"] <= pre["auc_high"] <= 1.0
    assert pre["forget_size"] == 30 and pre["n_negatives"] == 300
    assert pre["fpr_trials"] == 0 and pre["power_trials"] == 0
    assert int(records[records["mia_key"] == pre["key"]]["label"].sum()) == 30


# --- refusals: one line, exit 2, before any work -------------------------------------------------

def _bad(root: Path, pair: dict, **extra) -> Path:
    return _spec(root, "bad-pair", pair, **extra)


GOOD = {"original": "theta.pt", "unlearned": "theta_u.pt", "format": "torch_state_dict",
        "model": {"factory": "user_models:make_mlp"}, "forget": "forget.txt"}


@pytest.mark.parametrize(("change", "expect"), [
    ({"format": "pickle"}, ("pair.format", "torch_state_dict")),
    ({"original": "missing.pt"}, ("pair.original", "missing.pt", "no such file")),
    ({"model": None}, ("pair.model", "required")),
    ({"forget": "nowhere.txt"}, ("pair.forget", "no such file")),
    ({"forget": "digits.npz"}, ("pair.forget", "not a text file")),
    ({"original": "forget.txt"}, ("pair.original", "forget.txt")),  # wrong format: text
    ({"format": "torch_export", "original": "theta.pt", "model": None},
     ("pair.original", "theta.pt")),  # a state dict is not a torch.export program
    ({"format": "torch_export", "original": "theta_static.pt2",
      "unlearned": "theta_u_static.pt2", "model": None}, ("pair.original", "dynamic")),
    ({"attacks": [{"attack": "inversion", "config": {"knowledge": "reference"}}]},
     ("pair.attacks[0].config", "paper")),
])
def test_a_bad_pair_is_refused_in_one_line(outside, change, expect):
    pair = {**GOOD, **change}
    pair = {k: v for k, v in pair.items() if v is not None}
    os.environ["PYTHONPATH"] = str(outside / "site")
    sys.path.insert(0, str(outside / "site"))
    try:
        spec = _bad(outside, pair)
        refused(["run", spec.name, "--results", "R-bad"], outside, expect, watch=outside / "R")
    finally:
        sys.path.remove(str(outside / "site"))


def test_an_untrusted_skops_type_is_refused(outside, tmp_path):
    from sklearn.ensemble import RandomForestClassifier
    from skops.io import dump

    from tasks.data import load_dataset

    digits = load_dataset("digits")
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(
        digits.x_train.reshape(len(digits.x_train), -1), digits.y_train)
    dump(model, tmp_path / "lr.skops")  # a forest holds sklearn.tree._tree.Tree, untrusted
    (tmp_path / "forget.txt").write_text("3\n")
    spec = _spec(tmp_path, "untrusted", {"original": "lr.skops", "unlearned": "lr.skops",
                                         "format": "skops", "forget": "forget.txt"})
    spec.write_text(spec.read_text().replace("name: files\n  path: digits.npz", "name: digits"))
    refused(["run", spec.name, "--results", "R"], tmp_path,
            ("pair.trusted", "lr.skops", "sklearn.tree._tree.Tree"))


@pytest.mark.parametrize(("text", "ids_or_message"), [
    ("7\n", (7,)),
    ("record_id\n3\n1, 2; 5  # the rest\n", (3, 1, 2, 5)),
    ("-1\n", "line 1: '-1' is not a record id"),
    ("7\n8 7\n", "record id 7 appears twice"),
    ("seven\n", "holds no record ids (its first line, 'seven', was read as a column header)"),
    ("", "holds no record ids"),
])
def test_the_forget_file_reads_ids_or_says_what_is_wrong(tmp_path, text, ids_or_message):
    from orchestrator.stages.pair.params import read_forget_ids
    from tasks.params import FieldError

    path = tmp_path / "forget.txt"
    path.write_text(text)
    if isinstance(ids_or_message, tuple):
        assert read_forget_ids(str(path)) == ids_or_message
        return
    with pytest.raises(FieldError, match=re.escape(ids_or_message)):
        read_forget_ids(str(path))
