"""A user's code and files beside the spec (issue 27, item 7): the spec's relative paths are
read from its own folder, and its folder's Python is importable on the driver and on every Ray
worker, with no PYTHONPATH and from any current folder. ``--set`` paths are the current
folder's (what a user typing on the command line means)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from orchestrator.spec import folder as spec_folder
from orchestrator.spec.folder import SpecFolderError, collect_code, resolve_paths
from tests.bad_inputs.harness import refused

REPO = Path(__file__).resolve().parents[1]

# The user's code: a factory (top-level module) that builds its layers with a package beside
# it, and logs which process called it (the driver when planning, the workers when attacking).
BYO_MODELS = '''
import os

from byo_layers.blocks import classifier


def make_mlp(input_shape, num_classes, log=None):
    if log:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {__file__}\\n")
    return classifier(input_shape, num_classes)
'''
BLOCKS = '''
from torch import nn


def classifier(input_shape, num_classes):
    width = 1
    for size in input_shape:
        width *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))
'''


def _write_code(folder: Path) -> None:
    (folder / "byo_models.py").write_text(BYO_MODELS)
    (folder / "byo_layers").mkdir()
    (folder / "byo_layers" / "__init__.py").write_text("")
    (folder / "byo_layers" / "blocks.py").write_text(BLOCKS)
    (folder / "byo_layers" / "weights.bin").write_bytes(b"\0" * 4096)  # data: never shipped


@pytest.fixture(scope="module")
def beside(tmp_path_factory) -> Path:
    """A user's folder: code, data, theta, theta_u and the forget file beside the spec."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("spec-folder")
    _write_code(root)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    np.savez(root / "digits.npz", x_train=x[:1200], y_train=digits.target[:1200],
             x_test=x[1200:], y_test=digits.target[1200:])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    xt, yt = torch.from_numpy(x[:1200])[:, None], torch.from_numpy(digits.target[:1200]).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for idx in torch.randperm(1200).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    torch.save(model.state_dict(), root / "theta.pt")
    with torch.no_grad():
        model[3].bias.add_(0.01)  # "unlearned": any other weights will do here
    torch.save(model.state_dict(), root / "theta_u.pt")
    (root / "forget.txt").write_text("7\n")
    return root


def _spec(folder: Path, name: str, log: Path | None = None, **pair) -> Path:
    kwargs = {"log": str(log)} if log else {}
    data = {"experiment": name, "seed": 0,
            "dataset": {"name": "files", "path": "digits.npz"},
            "pair": {"original": "theta.pt", "unlearned": "theta_u.pt",
                     "format": "torch_state_dict",
                     "model": {"factory": "byo_models:make_mlp", "kwargs": kwargs},
                     "forget": "forget.txt",
                     "attacks": [{"attack": "inversion",
                                  "config": {"iterations": 5, "restarts": 1}}],
                     **pair}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _cli(cwd: Path, *args: str) -> subprocess.Popen:
    """``unlearn-audit ARGS`` run in ``cwd`` as a new user would: no PYTHONPATH, no cluster."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_spec_with_its_code_and_files_beside_it_runs_from_another_folder(beside, tmp_path):
    """The factory is imported on the driver (planning loads the pair) and in the Ray workers
    (the attack unit loads it again), from the spec's folder, with the current folder elsewhere
    and PYTHONPATH unset; the data, the pair and the forget file are the spec's folder's."""
    log = tmp_path / "calls.txt"
    spec = _spec(beside, "beside", log)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _cli(elsewhere, "run", str(spec), "--results", "R", "--num-cpus", "1", "--quiet")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    calls = [line.split(" ", 1) for line in log.read_text().splitlines()]
    driver = [f for pid, f in calls if int(pid) == proc.pid]
    workers = [f for pid, f in calls if int(pid) != proc.pid]
    assert driver == [str(beside / "byo_models.py")] * len(driver) and driver, calls
    # The workers' copy came with the job's runtime environment, not from the folder itself.
    assert workers and all(f != str(beside / "byo_models.py") for f in workers), calls
    import pandas as pd

    rows = pd.read_parquet(elsewhere / "R" / "beside" / "recoveries")
    assert list(rows["sample_index"]) == [7]  # forget.txt, read from the spec's folder
    cfg = rows.iloc[0]
    assert cfg["cfg.pair.original"] == str(beside / "theta.pt")
    assert cfg["cfg.dataset.path"] == str(beside / "digits.npz")


def test_only_the_folders_python_travels_and_a_huge_folder_is_refused(tmp_path, monkeypatch):
    _write_code(tmp_path)
    (tmp_path / "notes").mkdir()  # a folder without __init__.py: not a package
    (tmp_path / "notes" / "draft.py").write_text("x = 1\n")
    (tmp_path / "torch.py").write_text("")  # shadowed by the installed torch: not shipped
    (tmp_path / "orchestrator").mkdir()  # the tool itself (a spec in a checkout's root)
    (tmp_path / "orchestrator" / "__init__.py").write_text("")
    spec = tmp_path / "s.yaml"
    code = collect_code(spec)
    assert code.modules == ("byo_layers", "byo_models")
    assert sorted(code.files) == [os.path.join("byo_layers", "__init__.py"),
                                  os.path.join("byo_layers", "blocks.py"), "byo_models.py"]
    with spec_folder.runtime_env(code) as env:
        staged = next(Path(p) for p in env["py_modules"] if p.endswith("byo_layers"))
        assert sorted(p.name for p in staged.iterdir()) == ["__init__.py", "blocks.py"]
        assert str(tmp_path / "byo_models.py") in env["py_modules"]
    assert not staged.exists()  # the staged copy lasts as long as ray.init needs it
    with spec_folder.runtime_env(collect_code(tmp_path / "notes" / "s.yaml")) as env:
        assert env is not None  # notes/draft.py: a module of that folder
    monkeypatch.setattr(spec_folder, "MAX_CODE_BYTES", 100)
    with pytest.raises(SpecFolderError, match="too much to ship"):
        collect_code(spec)


def test_relative_paths_are_the_spec_folders_and_absolute_ones_and_uris_stay(tmp_path):
    data = {"dataset": {"name": "files", "path": "d.npz", "test": "/abs/t.csv"},
            "pair": {"original": "m/theta.pt", "unlearned": "s3://b/theta_u.pt",
                     "forget": "unknown", "model": {"factory": "x:y", "kwargs": {"f": "a"}},
                     "shadow": [{"original": "a.pt", "unlearned": "file:///b.pt",
                                 "forget": "../f.txt"}]},
            "grid": {"dataset.path": ["e.npz", "~/g.npz"],
                     "pair.original,pair.forget": [["p.pt", "unknown"], ["q.pt", "f2.txt"]],
                     "training.epochs": [1, 2]}}
    out = resolve_paths(data, tmp_path)
    assert out["dataset"] == {"name": "files", "path": str(tmp_path / "d.npz"),
                              "test": "/abs/t.csv"}
    assert out["pair"]["original"] == str(tmp_path / "m" / "theta.pt")
    assert out["pair"]["unlearned"] == "s3://b/theta_u.pt"
    assert out["pair"]["forget"] == "unknown"
    assert out["pair"]["model"] == {"factory": "x:y", "kwargs": {"f": "a"}}
    assert out["pair"]["shadow"] == [{"original": str(tmp_path / "a.pt"),
                                      "unlearned": "file:///b.pt",
                                      "forget": str(tmp_path.parent / "f.txt")}]
    assert out["grid"]["dataset.path"] == [str(tmp_path / "e.npz"), "~/g.npz"]
    assert out["grid"]["pair.original,pair.forget"] == [
        [str(tmp_path / "p.pt"), "unknown"], [str(tmp_path / "q.pt"), str(tmp_path / "f2.txt")]]
    assert out["grid"]["training.epochs"] == [1, 2]
    assert resolve_paths(out, tmp_path / "elsewhere") == out  # idempotent
    assert data["pair"]["original"] == "m/theta.pt"  # the caller's mapping is left as it is


def test_a_missing_file_is_refused_naming_the_key_and_the_resolved_path(beside, tmp_path):
    spec = _spec(beside, "missing", original="gone.pt")
    refused(["run", str(spec), "--results", str(tmp_path / "R")], tmp_path,
            ("pair.original", str(beside / "gone.pt"), "no such file"), watch=beside)
    spec = _spec(beside, "missing-data")
    data = yaml.safe_load(spec.read_text())
    data["dataset"]["path"] = "nowhere/data.npz"
    spec.write_text(yaml.safe_dump(data))
    refused(["run", str(spec), "--results", str(tmp_path / "R")], tmp_path,
            str(beside / "nowhere" / "data.npz"), watch=beside)


def test_a_set_path_is_the_current_folders(beside, tmp_path):
    """``--set pair.forget=ids.txt`` names ./ids.txt, not the spec's folder's."""
    spec = _spec(beside, "set-path")
    refused(["run", str(spec), "--set", "pair.forget=ids.txt", "--dry-run"], tmp_path,
            ("pair.forget", str(tmp_path / "ids.txt"), "no such file"), watch=beside)
    (tmp_path / "ids.txt").write_text("3\n")
    from tests.bad_inputs.harness import run_cli

    code, out, err = run_cli(["run", str(spec), "--set", "pair.forget=ids.txt", "--dry-run",
                              "--results", "R"], tmp_path)
    assert code == 0, out + err


@pytest.mark.slow  # a local Ray and Ray Tune: about 1-2 minutes on 2 busy CPUs
def test_tune_runs_the_users_unlearning_method_beside_the_spec_in_its_trials(beside, tmp_path):
    """``tune`` from another folder: trials (Ray Tune workers) train on the spec folder's data
    and unlearn with ``byo_methods:LastLayerAscent`` from the spec's folder."""
    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "byo_methods.py").write_text((REPO / "docs" / "examples" / "toy_plugins.py")
                                           .read_text())
    (folder / "data").mkdir()
    (folder / "data" / "digits.npz").write_bytes((beside / "digits.npz").read_bytes())
    spec = folder / "tune.yaml"
    spec.write_text(yaml.safe_dump({
        "experiment": "tune-beside", "seed": 0,
        "dataset": {"name": "files", "path": "data/digits.npz"},
        "model": {"name": "mlp", "hidden": [16]},
        "training": {"epochs": 1, "lr": 0.05, "batch_size": 64},
        "forget": {"kind": "single", "count": 3},
        "unlearning": [{"method": "byo_methods:LastLayerAscent"}, {"method": "retrain"}],
        "resources": {"trial": {"cpus": 1}},
        "search": {"objective": "unlearning", "attack": {"reference": "retrain"},
                   "targets": 2, "heldout": 1,
                   "space": {"unlearning.0.lr": {"loguniform": [0.01, 1.0]}},
                   "sampler": {"name": "random", "seed": 0},
                   "budget": {"trials": 2}, "concurrency": 1}}, sort_keys=False))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _cli(elsewhere, "tune", str(spec), "--results", "R", "--num-cpus", "1", "--quiet")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "2/2 trials finished" in out, out


def test_code_beside_the_spec_is_refused_on_a_ray_started_before_the_run(beside, tmp_path,
                                                                       local_ray):
    """A Ray this process already runs (a notebook's, the test session's) took its job's code
    when it started: the spec's own code cannot reach its workers, so the run is refused in
    one line before any work, and the Ray it found is left running."""
    import ray

    spec = _spec(beside, "attached")
    refused(["run", str(spec), "--results", str(tmp_path / "R")], tmp_path,
            "Ray was started in this process before the run, so the spec's own code "
            "(byo_layers, byo_models) cannot reach its workers")
    assert ray.is_initialized()
    assert not [p for p in (tmp_path / "R").rglob("*") if p.is_file()], "nothing written"
