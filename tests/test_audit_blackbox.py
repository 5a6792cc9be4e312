"""Audit a pair the user brings in a black-box format (issue 13): the attacks chosen by the
pair's threat model, the ones refused when listed, and ONNX, stored posteriors and skops pairs
audited end to end on the CLI (with an embedded Ray).

The pair: a digits MLP trained with plain torch in this module on the user's own NPZ, record 7
unlearned by one gradient-ascent step, saved as ONNX (built with onnx.helper, dynamic batch)
and as stored posteriors; a breast-cancer logistic regression from CSV files saved with skops,
theta_u retrained without the forgotten rows.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from threadpoolctl import threadpool_limits
from torch import nn

from orchestrator.stages.pair.params import PairParams
from orchestrator.stages.pair.planning import chosen_attacks, load_user_pair
from tasks.data.files import load_files_dataset
from tests.bad_inputs.harness import refused, run_cli

FORGOTTEN = 7
N_TRAIN = 1400
STORED_TEST = 120  # test records with stored posteriors: the only negatives they allow
CANCER_FORGET = tuple(range(0, 40, 4))  # 10 training rows of the CSV
# What each threat model allows (README, "Audit your own models", pair.attacks).
WHITE_BOX = ["inversion", "membership", "probing"]
# The analytic attack reads nn.Linear layers; a torch.export program has none left.
STATE_DICT = ["analytic", *WHITE_BOX]
QUERIES = ["membership", "probing"]
STORED = ["membership"]


# --- the user's side: models trained, unlearned and saved outside the package --------------------

def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 10))


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 20) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _ascend(model: nn.Module, x: torch.Tensor, y: torch.Tensor, i: int) -> nn.Module:
    """theta_u: one gradient-ascent step on record ``i``."""
    out = copy.deepcopy(model)
    loss = nn.functional.cross_entropy(out(x[i:i + 1]), y[i:i + 1])
    grads = torch.autograd.grad(loss, list(out.parameters()))
    with torch.no_grad():
        for p, g in zip(out.parameters(), grads):
            p.add_(g, alpha=1.0)
    return out.eval()


def _onnx(model: nn.Sequential, path: Path, in_shape: list) -> None:
    """The MLP's weights as an ONNX graph with a dynamic batch dimension ("batch")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    first, second = model[1], model[3]
    weights = {"w1": first.weight.detach().numpy().T, "b1": first.bias.detach().numpy(),
               "w2": second.weight.detach().numpy().T, "b2": second.bias.detach().numpy()}
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w1"], ["h1"]),
             helper.make_node("Add", ["h1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
             helper.make_node("Add", ["h2", "b2"], ["logits"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *in_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), k)
         for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def _posteriors(models: dict[str, nn.Module], x_train: np.ndarray, x_test: np.ndarray,
                train_ids: np.ndarray, test_ids: np.ndarray) -> pd.DataFrame:
    """record_id, model, split, p_0 .. p_9 of both models on the chosen records."""
    parts = []
    for name, model in models.items():
        for split, x, ids in (("train", x_train, train_ids), ("test", x_test, test_ids)):
            with torch.no_grad():
                p = torch.softmax(model(torch.as_tensor(x[ids])).double(), 1).numpy()
            part = pd.DataFrame(p, columns=[f"p_{k}" for k in range(p.shape[1])])
            part.insert(0, "record_id", ids.astype(np.int64))
            part.insert(1, "model", name)
            part.insert(2, "split", split)
            parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _save_side_files(root: Path, tag: str, models: dict[str, nn.Module], in_shape: list,
                     x_flat: np.ndarray, y: np.ndarray) -> None:
    """{tag}_{theta,theta_u}.{pt2,onnx,skops} for one input layout."""
    from sklearn.linear_model import LogisticRegression
    from skops.io import dump

    for name, model in models.items():
        program = torch.export.export(model, (torch.rand(4, *in_shape),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, root / f"{tag}_{name}.pt2")
        _onnx(model, root / f"{tag}_{name}.onnx", in_shape)
    keep = np.arange(len(y)) != FORGOTTEN
    for name, rows in (("theta", slice(None)), ("theta_u", keep)):
        with threadpool_limits(1):  # BLAS threads on a shared 2-core runner: 10x slower
            lr = LogisticRegression(max_iter=200).fit(x_flat[rows], y[rows])
        dump(lr, root / f"{tag}_{name}.skops")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """A user's folder: the digits NPZ (images) and its 2-D twin (tabular rows), theta and
    theta_u of each as torch.export, ONNX and skops files, stored posteriors, forget.txt."""
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("blackbox")
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)  # N x 8 x 8 in [0, 1]
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    y_tr, y_te = data.target[train], data.target[test]
    np.savez(root / "digits.npz", x_train=x[train], y_train=y_tr, x_test=x[test], y_test=y_te)
    flat = x.reshape(len(x), -1)
    np.savez(root / "rows.npz", x_train=flat[train], y_train=y_tr, x_test=flat[test],
             y_test=y_te)
    xt, yt = torch.from_numpy(x[train])[:, None], torch.from_numpy(y_tr).long()
    theta = _train(_mlp(64), xt, yt)
    models = {"theta": theta, "theta_u": _ascend(theta, xt, yt, FORGOTTEN)}
    _save_side_files(root, "img", models, [1, 8, 8], flat[train], y_tr)
    _save_side_files(root, "rows", models, [64], flat[train], y_tr)
    stored = {"original": models["theta"], "unlearned": models["theta_u"]}
    _posteriors(stored, x[train][:, None], x[test][:, None], np.array([FORGOTTEN]),
                np.arange(STORED_TEST)).to_parquet(root / "img_posteriors.parquet")
    _posteriors(stored, flat[train], flat[test], np.array([FORGOTTEN]),
                np.arange(STORED_TEST)).to_parquet(root / "rows_posteriors.parquet")
    (root / "forget.txt").write_text(f"{FORGOTTEN}\n")
    return root


@pytest.fixture(scope="module")
def cancer(tmp_path_factory) -> Path:
    """breast_cancer as the user's CSV files (standardised, as their model takes them) and a
    logistic-regression pair saved with skops: theta_u retrained without the forgotten rows."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from skops.io import dump

    root = tmp_path_factory.mktemp("cancer")
    data = load_breast_cancer()
    order = np.random.default_rng(1).permutation(len(data.target))
    train, test = order[:400], order[400:]
    mean, std = data.data[train].mean(0), data.data[train].std(0)
    columns = [f"f{i}" for i in range(data.data.shape[1])]
    for name, rows in (("train", train), ("test", test)):
        frame = pd.DataFrame((data.data[rows] - mean) / std, columns=columns)
        frame["label"] = data.target[rows]
        frame.to_csv(root / f"{name}.csv", index=False)
    x = (data.data[train] - mean) / std
    y = data.target[train]
    keep = np.setdiff1d(np.arange(len(train)), CANCER_FORGET)
    for name, rows in (("lr", np.arange(len(train))), ("lr_u", keep)):
        with threadpool_limits(1):
            model = LogisticRegression(max_iter=500).fit(x[rows], y[rows])
        dump(model, root / f"{name}.skops")
    (root / "forget.txt").write_text("\n".join(str(i) for i in CANCER_FORGET) + "\n")
    return root


# --- which attacks run: the threat model decides ------------------------------------------------

def _pair_files(root: Path, tag: str, fmt: str) -> dict:
    if fmt == "posteriors":
        both = str(root / f"{tag}_posteriors.parquet")
        return {"original": both, "unlearned": both}
    ext = {"torch_export": "pt2", "onnx": "onnx", "skops": "skops"}[fmt]
    return {"original": str(root / f"{tag}_theta.{ext}"),
            "unlearned": str(root / f"{tag}_theta_u.{ext}")}


def _state_dicts(root: Path, tag: str, dataset) -> dict:
    """A registered architecture's state dicts (pair.model names it)."""
    from orchestrator.stages.pair.params import model_config
    from tasks.models import build_torch_model

    model = {"name": "mlp", "hidden": [16]}
    paths = {}
    for name in ("original", "unlearned"):
        net = build_torch_model(model_config(model), dataset.input_shape, dataset.num_classes,
                                dataset.mean, dataset.std, seed=0)
        paths[name] = str(root / f"{tag}_{name}_sd.pt")
        torch.save(net.state_dict(), paths[name])
    return {**paths, "model": model}


def _chosen(root: Path, tag: str, fmt: str) -> list[str]:
    """The attacks chosen for the ``tag`` ("img" or "rows") pair in ``fmt``, none listed."""
    dataset = load_files_dataset(root / {"img": "digits.npz", "rows": "rows.npz"}[tag])
    files = _state_dicts(root, tag, dataset) if fmt == "torch_state_dict" \
        else _pair_files(root, tag, fmt)
    params = PairParams(format=fmt, **files)
    assert params.attacks is None  # left out: every attack that fits
    pair = load_user_pair(params, dataset)
    assert pair.format == fmt
    return sorted(name for name, _ in chosen_attacks(params, pair, dataset))


@pytest.mark.parametrize(("fmt", "expected"), [
    ("torch_state_dict", STATE_DICT), ("torch_export", WHITE_BOX), ("skops", QUERIES),
    ("onnx", QUERIES), ("posteriors", STORED)])
def test_image_pairs_get_every_attack_their_threat_model_allows(digits, fmt, expected):
    assert _chosen(digits, "img", fmt) == expected


@pytest.mark.parametrize(("fmt", "expected"), [
    ("torch_state_dict", QUERIES), ("torch_export", QUERIES), ("skops", QUERIES),
    ("onnx", QUERIES), ("posteriors", STORED)])
def test_tabular_pairs_never_get_feature_recovery(digits, fmt, expected):
    # The same models on the same digits, given as rows: inversion attacks images only.
    assert load_files_dataset(digits / "rows.npz").kind == "tabular"
    assert _chosen(digits, "rows", fmt) == expected


def test_a_skops_pair_on_csv_tables_gets_the_query_attacks(cancer):
    dataset = load_files_dataset(cancer / "train.csv", cancer / "test.csv", "label")
    assert dataset.kind == "tabular" and dataset.num_classes == 2
    params = PairParams(str(cancer / "lr.skops"), str(cancer / "lr_u.skops"), "skops")
    pair = load_user_pair(params, dataset)
    assert sorted(n for n, _ in chosen_attacks(params, pair, dataset)) == QUERIES


def _spec(root: Path, name: str, pair: dict, dataset: dict | None = None, **extra) -> Path:
    data = {"experiment": name, "seed": 0,
            "dataset": dataset or {"name": "files", "path": "digits.npz"}, "pair": pair, **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(("fmt", "attack", "why"), [
    ("onnx", {"attack": "inversion"}, ("needs the models' parameters", "onnx gives queries")),
    ("posteriors", {"attack": "probing", "config": {"box": "black"}},
     ("queries the models", "posteriors holds stored posteriors only")),
])
def test_a_listed_attack_that_does_not_fit_is_refused_in_one_line(digits, fmt, attack, why):
    files = {k: Path(v).name for k, v in _pair_files(digits, "img", fmt).items()}
    spec = _spec(digits, f"misfit-{fmt}", {**files, "format": fmt, "forget": "forget.txt",
                                           "attacks": [attack]})
    try:
        refused(["run", spec.name, "--results", "R-bad"], digits,
                ("spec error", "pair.attacks[0]", repr(attack["attack"]), *why))
    finally:
        spec.unlink()


# --- end to end: the CLI, an embedded Ray, the result tables ------------------------------------

def _run(root: Path, spec: Path) -> None:
    code, out, err = run_cli(["run", spec.name, "--results", "R", "--num-cpus", "2", "--quiet"],
                             root)
    assert code == 0, out + err


def _tables(folder: Path) -> dict[str, int]:
    """Rows per result table of an experiment."""
    return {p.name: len(pd.read_parquet(p)) for p in sorted(folder.iterdir())
            if p.is_dir() and p.name != "figures"}


def _parts(folder: Path) -> list[str]:
    """The Parquet files the experiment's tables are written in (one more per write)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.parquet"))


MEMBERSHIP = {"attack": "membership", "config": {"features": ["direct_diff"],
                                                 "attack_models": ["lr"]}}
SHADOWS = {"set_num": 1, "set_size": 150, "unlearning_size": 8, "deletions_per_task": 8}
SHADOW_MODEL = {"model": {"name": "mlp", "hidden": [16]},
                "training": {"epochs": 5, "lr": 0.05, "batch_size": 32}}


def _check_mia(folder: Path, n_target: int, forget_size: int) -> pd.DataFrame:
    mia = pd.read_parquet(folder / "membership_attacks")
    assert mia["auc"].between(0, 1).all()
    assert (mia["n_target_rows"] == n_target).all() and (mia["forget_size"] == forget_size).all()
    bounds = mia[["auc_low", "auc_high"]]
    if forget_size < 2:  # one deleted record: no interval, on any row
        assert bounds.isna().all().all(), mia[["auc_low", "auc", "auc_high"]]
    else:
        assert ((mia["auc_low"] <= mia["auc"]) & (mia["auc"] <= mia["auc_high"])).all(), \
            mia[["auc_low", "auc", "auc_high"]]
    # One pre-registered test (the verdict) beside the exploratory rows, each with its
    # per-record scores.
    assert (mia["test"] == "preregistered").sum() == 1
    assert (mia["test"] == "exploratory").sum() == len(mia) - 1 >= 1
    records = pd.read_parquet(folder / "membership_records")
    for test in ("preregistered", "exploratory"):
        row = mia[(mia["control"] == "none") & (mia["test"] == test)].iloc[0]
        assert int(records[records["mia_key"] == row["key"]]["label"].sum()) == forget_size
    return mia


@pytest.mark.slow
def test_an_onnx_pair_gets_label_inference_and_membership_and_resumes(digits, local_ray):
    pair = {"original": "img_theta.onnx", "unlearned": "img_theta_u.onnx", "format": "onnx",
            "forget": "forget.txt", "negatives": 100, "membership": SHADOWS, "attacks": [
                {"attack": "probing", "config": {"box": "black", "probes_per_class": 2,
                                                 "max_calls": 2}}, MEMBERSHIP]}
    spec = _spec(digits, "bb-onnx", pair, **SHADOW_MODEL)
    _run(digits, spec)
    folder = digits / "R" / "bb-onnx"
    labels = pd.read_parquet(folder / "label_inference")
    assert len(labels) == 1 and labels["correct"].notna().all()
    assert (labels["pair_format"] == "onnx").all() and not labels["white_box"].any()
    assert (labels["queries"] > 0).all()
    _check_mia(folder, 1 + 100, 1)
    assert not (folder / "recoveries").exists()
    before = _tables(folder), _parts(folder)
    _run(digits, spec)  # the same command again: every unit is already done
    assert (_tables(folder), _parts(folder)) == before


@pytest.mark.slow
def test_stored_posteriors_get_membership_scored_on_the_records_they_hold(digits, local_ray):
    # One Parquet file, both models: the forgotten record and STORED_TEST test records. No
    # attacks listed: membership inference is the one that fits stored posteriors.
    pair = {"original": "img_posteriors.parquet", "unlearned": "img_posteriors.parquet",
            "format": "posteriors", "forget": "forget.txt", "membership": SHADOWS}
    _run(digits, _spec(digits, "bb-posteriors", pair, **SHADOW_MODEL))
    folder = digits / "R" / "bb-posteriors"
    mia = _check_mia(folder, 1 + STORED_TEST, 1)
    assert set(mia["pair_format"]) == {"posteriors"}
    assert not {"recoveries", "label_inference", "guesses"} & set(_tables(folder))


@pytest.mark.slow
def test_a_skops_pair_on_csv_uris_gets_membership_with_the_tools_shadow_pairs(cancer, local_ray):
    def uri(name: str) -> str:
        return (cancer / name).as_uri()

    # A LogisticRegression holds only types skops trusts by default: no pair.trusted.
    pair = {"original": uri("lr.skops"), "unlearned": uri("lr_u.skops"), "format": "skops",
            "forget": uri("forget.txt"), "membership": SHADOWS, "attacks": [MEMBERSHIP]}
    dataset = {"name": "files", "path": uri("train.csv"), "test": uri("test.csv"),
               "label": "label"}
    _run(cancer, _spec(cancer, "bb-skops", pair, dataset, model={"name": "lr"}))
    folder = cancer / "R" / "bb-skops"
    mia = _check_mia(folder, len(CANCER_FORGET) + 169, len(CANCER_FORGET))
    assert set(mia["pair_format"]) == {"skops"} and set(mia["shadow_model"]) == {"lr"}
    models = pd.read_parquet(folder / "models")
    assert (models["role"] == "unlearned").sum() >= 1
