"""tasks.pairs: a user's pair in each of the five formats loads and answers the source models'
own outputs; bad files are refused with one-line PairErrors naming the key and the file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.data import load_dataset
from tasks.pairs import FORMATS, QUERY, WHITE_BOX, PairError, PairSide, UserPair, load_pair

ATOL = 1e-4
IDS = np.array([0, 3, 7, 11, 200, 5])  # unsorted, so order is checked too


class NotATensor:
    """A custom object: a weights-only unpickler must refuse it."""

    def __init__(self) -> None:
        self.value = 3


def mlp(hidden: int = 32, classes: int = 10) -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, classes))


def train_mlp(d, seed: int, rows: np.ndarray) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.as_tensor(d.x_train[rows]), torch.as_tensor(d.y_train[rows])
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def d():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def models(d):
    """theta trained on all training records, theta_u on all but the first 100."""
    torch.set_num_threads(1)
    every = np.arange(len(d.y_train))
    return {"original": train_mlp(d, 0, every), "unlearned": train_mlp(d, 1, every[100:])}


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def refused(call, key: str, *parts: str) -> str:
    with pytest.raises(PairError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{key}: "), message
    assert info.value.key == key
    for part in parts:
        assert str(part) in message, message
    return message


def check_matches(pair: UserPair, d, expected: dict[str, dict[str, np.ndarray]]) -> None:
    """Both sides' logits on IDS of both splits equal the source models' outputs."""
    for name in ("original", "unlearned"):
        side = getattr(pair, name)
        assert isinstance(side, PairSide) and side.name == name
        for split in ("train", "test"):
            got = side.logits(split, IDS, d)
            assert got.dtype == np.float32 and got.shape == (len(IDS), d.num_classes)
            np.testing.assert_allclose(got, expected[name][split], atol=ATOL)


def check_gradients(side: PairSide, d) -> None:
    """Autograd reaches the inputs and every parameter of a white-box side."""
    x = torch.as_tensor(d.x_test[:4]).clone().requires_grad_(True)
    side.module.zero_grad()
    side.module(x).logsumexp(dim=1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    params = list(side.module.parameters())
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def source_logits(d, fn) -> dict[str, np.ndarray]:
    return {split: fn(getattr(d, f"x_{split}")[IDS]) for split in ("train", "test")}


# --- torch_state_dict ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def state_dicts(models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd")
    paths = {"original": root / "theta.pt", "unlearned": root / "theta_u.pt"}
    torch.save(models["original"].state_dict(), paths["original"])
    # The other accepted layout: {"state_dict": ...}, as many training scripts save it.
    torch.save({"state_dict": models["unlearned"].state_dict()}, paths["unlearned"])
    return paths


def test_state_dict_pair_matches_and_gives_gradients(d, models, state_dicts):
    pair = load_pair(str(state_dicts["original"]), str(state_dicts["unlearned"]),
                     "torch_state_dict", d, model_builder=mlp)
    assert pair.format == "torch_state_dict" and pair.white_box and pair.queryable
    expected = {n: source_logits(d, lambda x, m=m: torch_logits(m, x)) for n, m in models.items()}
    check_matches(pair, d, expected)
    for side in (pair.original, pair.unlearned):
        assert side.white_box and side.estimator is None
        check_gradients(side, d)


def test_state_dict_reads_a_uri(d, models, state_dicts):
    uri = state_dicts["original"].resolve().as_uri()  # file:///...
    pair = load_pair(uri, str(state_dicts["unlearned"]), "torch_state_dict", d,
                     model_builder=mlp)
    np.testing.assert_allclose(pair.original.logits("test", IDS, d),
                               torch_logits(models["original"], d.x_test[IDS]), atol=ATOL)
    refused(lambda: load_pair(uri + ".gone", uri, "torch_state_dict", d, model_builder=mlp),
            "pair.original", uri + ".gone", "no such file")


def test_state_dict_refusals(d, state_dicts, tmp_path):
    theta, theta_u = str(state_dicts["original"]), str(state_dicts["unlearned"])

    def load(original=theta, **kw):
        kw.setdefault("model_builder", mlp)
        return load_pair(original, theta_u, "torch_state_dict", d, **kw)

    refused(lambda: load(model_builder=None), "pair.model", "required for format")
    renamed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                  torch.nn.Dropout(), torch.nn.Linear(32, 10))
    refused(lambda: load(model_builder=lambda: renamed), "pair.original", theta,
            "missing keys 4.weight, 4.bias", "unexpected keys 3.weight, 3.bias")
    refused(lambda: load(model_builder=lambda: mlp(hidden=16)), "pair.original", theta,
            "1.weight has shape (32, 64) in the file and (16, 64) in the model")
    custom = tmp_path / "custom.pt"
    torch.save({"1.weight": torch.zeros(32, 64), "extra": NotATensor()}, custom)
    refused(lambda: load(str(custom)), "pair.original", custom,
            "not a weights-only torch state dict", "NotATensor")
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    refused(lambda: load(str(listed)), "pair.original", listed,
            "not a weights-only torch state dict (holds a list")
    # A model for another dataset: right keys and shapes, wrong number of classes.
    three = tmp_path / "three.pt"
    torch.save(mlp(classes=3).state_dict(), three)
    refused(lambda: load(str(three), model_builder=lambda: mlp(classes=3)), "pair.original",
            three, "gives outputs of shape (2, 3); the dataset has 10 classes and inputs of "
                   "shape (1, 8, 8)")
    refused(lambda: load(str(tmp_path / "nope.pt")), "pair.original", "nope.pt", "no such file")


# --- torch_export -------------------------------------------------------------------------------

def export(model: torch.nn.Module, path: Path, dynamic: bool = True) -> Path:
    x = torch.zeros(4, 1, 8, 8)
    shapes = {"input": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)
    return path


def test_export_pair_matches_and_gives_gradients(d, models, tmp_path):
    paths = {n: export(m, tmp_path / f"{n}.pt2") for n, m in models.items()}
    pair = load_pair(str(paths["original"]), str(paths["unlearned"]), "torch_export", d)
    assert pair.white_box and pair.queryable
    expected = {n: source_logits(d, lambda x, m=m: torch_logits(m, x)) for n, m in models.items()}
    check_matches(pair, d, expected)
    for side in (pair.original, pair.unlearned):
        assert side.white_box
        check_gradients(side, d)


def test_export_refusals(d, models, tmp_path, capfd):
    dynamic = str(export(models["unlearned"], tmp_path / "dyn.pt2"))
    static = export(models["original"], tmp_path / "static.pt2", dynamic=False)
    refused(lambda: load_pair(str(static), dynamic, "torch_export", d), "pair.original",
            static, "static batch size of 4", "dynamic", 'dynamic_shapes={"input"')
    refused(lambda: load_pair(dynamic, str(static), "torch_export", d), "pair.unlearned",
            static, "dynamic")
    # torch.export.load logs a traceback before raising on a bad archive; none may show.
    broken = tmp_path / "broken.pt2"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("x/archive_format", "pt2")
    refused(lambda: load_pair(str(broken), dynamic, "torch_export", d), "pair.original", broken,
            "not a torch_export file")
    assert "Traceback" not in capfd.readouterr().err


# --- skops --------------------------------------------------------------------------------------

TREE = "sklearn.tree._tree.Tree"


@pytest.fixture(scope="module")
def skops_pair(d, tmp_path_factory):
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x = d.x_train.reshape(len(d.x_train), -1)
    root = tmp_path_factory.mktemp("skops")
    estimators = {
        "original": RandomForestClassifier(n_estimators=8, max_depth=6, random_state=0)
        .fit(x, d.y_train),
        "unlearned": LogisticRegression(max_iter=500).fit(x[100:], d.y_train[100:]),
    }
    paths = {}
    for name, est in estimators.items():
        paths[name] = root / f"{name}.skops"
        sio.dump(est, paths[name])
    return estimators, paths


def test_skops_pair_matches(d, skops_pair):
    estimators, paths = skops_pair
    pair = load_pair(str(paths["original"]), str(paths["unlearned"]), "skops", d,
                     trusted=[TREE])
    assert not pair.white_box and pair.queryable

    def proba_logits(est):
        return lambda x: np.log(np.clip(est.predict_proba(x.reshape(len(x), -1)), 1e-12, 1))

    expected = {n: source_logits(d, proba_logits(e)) for n, e in estimators.items()}
    check_matches(pair, d, expected)
    for name, side in (("original", pair.original), ("unlearned", pair.unlearned)):
        assert not side.white_box and type(side.estimator) is type(estimators[name])
        assert list(side.module.parameters()) == []
        out = side.module(torch.as_tensor(d.x_test[IDS]))
        np.testing.assert_allclose(out.numpy(), expected[name]["test"], atol=ATOL)


def test_skops_refusals(d, skops_pair, tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, paths = skops_pair
    theta, theta_u = str(paths["original"]), str(paths["unlearned"])
    message = refused(lambda: load_pair(theta, theta_u, "skops", d), "pair.trusted", theta,
                      f"holds types not trusted: {TREE}; list them under pair.trusted")
    assert not message.startswith(f"pair.trusted: {theta_u}")
    # An estimator without predict_proba cannot give posteriors.
    svc = tmp_path / "svc.skops"
    sio.dump(RidgeClassifier().fit(d.x_train[:200].reshape(200, -1), d.y_train[:200]), svc)
    refused(lambda: load_pair(theta, str(svc), "skops", d, trusted=[TREE]), "pair.unlearned",
            svc, "predict_proba")
    # A model fitted on other inputs fails the 2-record check with the dataset's shapes.
    narrow = tmp_path / "narrow.skops"
    sio.dump(make_pipeline(StandardScaler(), LogisticRegression())
             .fit(np.random.default_rng(0).normal(size=(60, 5)), np.arange(60) % 10), narrow)
    refused(lambda: load_pair(str(narrow), theta_u, "skops", d, trusted=[TREE]),
            "pair.original", narrow, "fails on inputs of shape (2, 1, 8, 8)")


# --- onnx ---------------------------------------------------------------------------------------

def to_onnx(model: torch.nn.Sequential, path: Path, *, batch="N", image_input: bool = False,
            softmax: bool = False) -> Path:
    """The MLP's weights as an ONNX graph: [Flatten] MatMul Add Relu MatMul Add [Softmax]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    first, second = model[1], model[3]
    weights = {"w1": first.weight.detach().numpy().T, "b1": first.bias.detach().numpy(),
               "w2": second.weight.detach().numpy().T, "b2": second.bias.detach().numpy()}
    nodes, x = [], "x"
    if image_input:
        nodes.append(helper.make_node("Flatten", ["x"], ["flat"], axis=1))
        x = "flat"
    nodes += [helper.make_node("MatMul", [x, "w1"], ["h1"]),
              helper.make_node("Add", ["h1", "b1"], ["a1"]),
              helper.make_node("Relu", ["a1"], ["r1"]),
              helper.make_node("MatMul", ["r1", "w2"], ["h2"]),
              helper.make_node("Add", ["h2", "b2"], ["logits"])]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["proba"], axis=1))
        out = "proba"
    in_shape = [batch, 1, 8, 8] if image_input else [batch, 64]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), k)
         for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())
    return path


def test_onnx_pair_matches(d, models, tmp_path):
    # theta: logits from a rank-2 input (flattened); theta_u: probabilities, image input.
    theta = to_onnx(models["original"], tmp_path / "theta.onnx")
    theta_u = to_onnx(models["unlearned"], tmp_path / "theta_u.onnx", image_input=True,
                      softmax=True)
    pair = load_pair(str(theta), str(theta_u), "onnx", d)
    assert not pair.white_box and pair.queryable
    expected = {
        "original": source_logits(d, lambda x: torch_logits(models["original"], x)),
        "unlearned": source_logits(d, lambda x: torch_logits(models["unlearned"], x)
                                   .astype(np.float64)),
    }
    # Probabilities come back as log p: equal to the logits up to a per-row constant.
    for split, z in expected["unlearned"].items():
        expected["unlearned"][split] = torch.log_softmax(torch.as_tensor(z), 1).numpy()
    check_matches(pair, d, expected)
    assert pair.unlearned.module.probabilities and not pair.original.module.probabilities
    assert list(pair.original.module.parameters()) == []


def test_onnx_refusals(d, models, tmp_path):
    good = str(to_onnx(models["unlearned"], tmp_path / "good.onnx"))
    static = to_onnx(models["original"], tmp_path / "static.onnx", batch=4)
    refused(lambda: load_pair(str(static), good, "onnx", d), "pair.original", static,
            "static batch size of 4", "dynamic")
    refused(lambda: load_pair(good, str(static), "onnx", d), "pair.unlearned", static,
            "dynamic")


# --- posteriors ---------------------------------------------------------------------------------

def posterior_rows(d, model: torch.nn.Module, name: str | None, split: str,
                   ids: np.ndarray) -> pd.DataFrame:
    with torch.no_grad():
        p = torch.softmax(model(torch.as_tensor(getattr(d, f"x_{split}")[ids])).double(), 1)
    table = pd.DataFrame(p.numpy(), columns=[f"p_{k}" for k in range(10)])
    table.insert(0, "record_id", ids)
    if name is not None:
        table.insert(1, "model", name)
        table.insert(2, "split", split)
    return table


@pytest.fixture(scope="module")
def posterior_files(d, models, tmp_path_factory) -> dict[str, Path]:
    """One Parquet file holding both models and both splits; one CSV per model (train only,
    no model or split column)."""
    root = tmp_path_factory.mktemp("posteriors")
    ids = np.arange(250)[::-1]
    both = pd.concat([posterior_rows(d, m, n, s, ids) for n, m in models.items()
                      for s in ("train", "test")], ignore_index=True)
    paths = {"both": root / "both.parquet"}
    both.to_parquet(paths["both"])
    for name, model in models.items():
        paths[name] = root / f"{name}.csv"
        posterior_rows(d, model, None, "train", ids).to_csv(paths[name], index=False)
    return paths


def log_softmax(model: torch.nn.Module):
    return lambda x: torch.log_softmax(torch.as_tensor(torch_logits(model, x)).double(), 1)\
        .numpy()


def test_posteriors_pair_matches(d, models, posterior_files):
    both = str(posterior_files["both"])
    pair = load_pair(both, both, "posteriors", d)
    assert not pair.white_box and not pair.queryable
    expected = {n: source_logits(d, log_softmax(m)) for n, m in models.items()}
    check_matches(pair, d, expected)
    assert pair.original.module is None and pair.original.source == both

    csv = load_pair(str(posterior_files["original"]), str(posterior_files["unlearned"]),
                    "posteriors", d)
    for name, model in models.items():
        np.testing.assert_allclose(getattr(csv, name).logits("train", IDS, d),
                                   log_softmax(model)(d.x_train[IDS]), atol=ATOL)
    # The CSVs hold no test rows: asking for them names the file and the first missing ids.
    refused(lambda: csv.unlearned.logits("test", IDS, d), "pair.unlearned",
            posterior_files["unlearned"], "no test rows for record_id 0, 3, 7 (+3 more)")
    refused(lambda: pair.original.logits("train", np.array([5, 260, 400]), d), "pair.original",
            both, "no train rows for record_id 260, 400")


def with_value(table: pd.DataFrame, row: int, col: str, value) -> pd.DataFrame:
    table = table.copy()
    table.loc[row, col] = value
    return table


def test_posteriors_refusals(d, posterior_files, skops_pair, tmp_path):
    both = pd.read_parquet(posterior_files["both"])
    one = both[both["model"] == "original"]
    theta_u = str(posterior_files["unlearned"])
    # (table, extension, given as both sides, key, what the message says)
    cases = [
        (both.drop(columns=["p_3"]), ".parquet", False, "original", "missing column p_3"),
        (with_value(both, 4, "p_0", both.loc[4, "p_0"] * 0.5), ".csv", False, "original",
         f"the probabilities of record_id {both.loc[4, 'record_id']} sum to "),
        (pd.concat([both, both.iloc[[7]]]), ".parquet", False, "original",
         "appears more than once"),
        (with_value(both, 2, "model", "retrained"), ".parquet", False, "original",
         "column model: value 'retrained'"),
        (with_value(both, 0, "record_id", 100_000), ".parquet", False, "original",
         "beyond the train split's 1438 records"),
        (with_value(both, 1, "p_2", 1.5), ".csv", False, "original", "column p_2: 1.5 is outside"),
        (both.drop(columns=["model"]), ".parquet", False, "original",
         "appears more than once for split train (without a model column the file holds one"),
        (one.drop(columns=["model"]), ".parquet", True, "original", "no model column"),
        (one, ".csv", True, "unlearned", "no rows with model 'unlearned'"),
    ]
    for i, (table, ext, shared, side, expect) in enumerate(cases):
        path = tmp_path / f"bad{i}{ext}"
        if ext == ".csv":
            table.to_csv(path, index=False)
        else:
            table.to_parquet(path)
        refused(lambda p=str(path), s=shared: load_pair(p, p if s else theta_u, "posteriors", d),
                f"pair.{side}", path, expect)
    skops_file = skops_pair[1]["original"]
    refused(lambda: load_pair(str(skops_file), theta_u, "posteriors", d), "pair.original",
            ".skops", "use .parquet or .csv")


# --- every format -------------------------------------------------------------------------------

def test_wrong_format_files(d, models, state_dicts, skops_pair, posterior_files, tmp_path,
                            capfd):
    """Each format given another format's file: one line, "not a ..." and the file named."""
    onnx_file = to_onnx(models["original"], tmp_path / "m.onnx")
    skops_file = skops_pair[1]["original"]
    pt2 = export(models["original"], tmp_path / "m.pt2")
    csv_named = tmp_path / "m.csv"
    csv_named.write_bytes(pt2.read_bytes())
    cases = [
        ("torch_state_dict", onnx_file, "not a weights-only torch state dict"),
        ("torch_state_dict", skops_file, "not a weights-only torch state dict"),
        ("torch_export", onnx_file, "not a torch_export file (not a zip archive)"),
        ("torch_export", state_dicts["original"], "not a torch_export file (a torch.save file"),
        ("skops", onnx_file, "not a skops file (not a zip archive)"),
        ("skops", pt2, "not a skops file (a zip archive without schema.json)"),
        ("onnx", state_dicts["original"], "not an onnx file"),
        ("onnx", posterior_files["both"], "not an onnx file"),
        ("posteriors", csv_named, "not a posteriors file"),
    ]
    for fmt, path, expect in cases:
        refused(lambda p=str(path), f=fmt: load_pair(p, p, f, d, model_builder=mlp,
                                                     trusted=[TREE]),
                "pair.original", path, expect)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_formats_and_missing_files(d, tmp_path):
    assert FORMATS == ("torch_state_dict", "torch_export", "skops", "onnx", "posteriors")
    assert WHITE_BOX == {"torch_state_dict", "torch_export"} and QUERY == {"skops", "onnx"}
    refused(lambda: load_pair("a", "b", "pickle", d), "pair.format", "'pickle' is not one of")
    for fmt in FORMATS:
        gone = tmp_path / f"gone-{fmt}.bin"
        refused(lambda p=str(gone), f=fmt: load_pair(p, p, f, d, model_builder=mlp),
                "pair.original", gone, "no such file")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    refused(lambda: load_pair(str(empty), str(empty), "onnx", d), "pair.original", empty,
            "empty file")
    refused(lambda: load_pair(str(tmp_path), str(tmp_path), "onnx", d), "pair.original",
            tmp_path, "not a file")


def test_exported_program_moves_to_another_device_with_its_constants():
    """Ops an exported program creates tensors with carry ``device=cpu`` from the export;
    ``meta`` stands in for a GPU (``Module.to`` alone left them on the CPU: a mismatch)."""
    import io

    from tasks.pairs.torch_formats import load_export_side

    class WithConstants(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + torch.ones(x.shape[0], 3) + torch.tensor([1.0, 2.0, 3.0])

    x = torch.rand(5, 4)
    buf = io.BytesIO()
    torch.export.save(torch.export.export(WithConstants().eval(), (x[:2],), dynamic_shapes={
        "x": {0: torch.export.Dim("batch")}}), buf)
    out = load_export_side("original", "m.pt2", buf.getvalue(), "meta").module(x.to("meta"))
    assert out.device.type == "meta" and out.shape == (5, 3)
