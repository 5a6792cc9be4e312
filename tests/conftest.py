"""Shared fixtures: small real datasets, a shared-data skip, and quiet local settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import orchestrator.stages  # noqa: F401  (registers the spec sections, as the CLI does)
from tasks.data import load_dataset, resolve_data_root
from tasks.models import ModelConfig, build_torch_model
from tasks.training import TrainConfig, train_model
from tasks.unlearning import TrainingState

REPO = Path(__file__).resolve().parents[1]

# Tests must not pick up a developer's cluster by accident.
os.environ.pop("RAY_ADDRESS", None)


def shared_data_root() -> Path | None:
    return resolve_data_root(None)


def require_shared(*parts: str) -> Path:
    """Skip (with the reason) unless the real dataset files exist under the data root."""
    root = shared_data_root()
    if root is None:
        pytest.skip("no data root: set UNLEARN_AUDIT_DATA or place shared/data beside the repo")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset file {path} is absent")
    return path


@pytest.fixture
def repo() -> Path:
    return REPO

@pytest.fixture(scope="session")
def local_ray():
    """One embedded Ray per test process, for the tests that run the CLI in this process: each
    run attaches to it and leaves it running (``start_ray`` finds it), instead of paying about
    10 CPU-seconds to start and stop its own; its workers stay warm between runs. Tests of
    Ray's start, stop, signals and user code shipped with the spec run the CLI in a process
    of their own."""
    from orchestrator.engine.ray_session import start_ray, stop_ray

    info = start_ray(num_cpus=2)
    yield info
    stop_ray()


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", None)


@pytest.fixture(scope="session")
def digits_state(digits):
    """An MLP trained briefly on the digits training set, as the provider holds it."""
    torch.set_num_threads(1)
    cfg = ModelConfig("mlp", {"hidden": [32]})
    model = build_torch_model(cfg, digits.input_shape, 10, digits.mean, digits.std, seed=0)
    idx = np.arange(len(digits.y_train))
    tc = TrainConfig(epochs=5, lr=0.05, batch_size=64)
    train_model(model, digits.x_train, digits.y_train, idx, tc, 0)
    return TrainingState(digits, cfg, tc, idx, 0, original=model)


@pytest.fixture(scope="session")
def quickstart_results(tmp_path_factory, local_ray) -> Path:
    """RESULTS of the reduced quickstart run through the CLI, for the tests that only read it:
    made once per test session, also when several worker processes ask (``pytest -n``): the
    first builds it under a file lock, the others wait for it and read the same folder."""
    import yaml
    from filelock import FileLock

    from tests.bad_inputs.harness import run_cli

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, shared by its workers
    folder = base / "shared-quickstart"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".complete").is_file():
            folder.mkdir(exist_ok=True)
            (folder / "qs.yaml").write_text(yaml.safe_dump(reduced_quickstart(), sort_keys=False))
            code, out, err = run_cli(["run", "qs.yaml", "--results", "R", "--quiet"], folder)
            assert code == 0, out + err
            (folder / ".complete").touch()
    return folder / "R"


def reduced_quickstart() -> dict:
    """The quickstart spec with every stage kept and every size cut to seconds (as a dict)."""
    import yaml

    spec = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    spec["experiment"] = "qs"
    spec["dataset"]["train_size"] = 300
    spec["training"]["epochs"] = 3
    spec["forget"]["count"] = 2
    spec["runtime"]["requests_per_task"] = 2
    for entry in spec["attacks"].values():
        entry["config"].update(iterations=10, restarts=1)
    spec["label_inference"]["shares"] = [0.5]
    spec["label_inference"]["probes"] = {"probes_per_class": 2, "coordinates": 64}
    return spec
