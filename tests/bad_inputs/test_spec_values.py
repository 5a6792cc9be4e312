"""Bad spec values, ``--set`` overrides and spec files: each is refused before any work with
one line, exit 2, naming the key (``spec error: <key path>: ...``) or the file
(``<path>: ...``), and nothing is written. Every row runs a plain ``run`` (no ``--dry-run``):
the refusal must come before Ray starts, not only in a dry run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.bad_inputs.harness import VALID, refused, spec_with, write_spec

# A device this machine lacks: plain cuda on a CPU-only machine, else a GPU index past the end.
_NO_DEVICE = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"

# (id, changes to the VALID spec, expected text of the one line)
SPEC_ROWS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("ascent-negative-lr", {"unlearning.1.lr": -1.0},
     ("spec error: unlearning[1].lr: must be > 0, got -1.0",)),
    ("ascent-zero-steps", {"unlearning.1.steps": 0},
     ("spec error: unlearning[1].steps: must be >= 1",)),
    ("ascent-zero-batch", {"unlearning.1.batch_size": 0},
     ("spec error: unlearning[1].batch_size: must be >= 1",)),
    ("finetune-negative-epochs", {"unlearning.1": {"method": "finetune", "epochs": -1}},
     ("spec error: unlearning[1].epochs: must be >= 1, got -1",)),
    ("sisa-zero-shards", {"unlearning.1": {"method": "sisa", "shards": 0}},
     ("spec error: unlearning[1].shards",)),
    ("unknown-method", {"unlearning.1": {"method": "forgetfulness"}},
     ("spec error: unlearning[1].method", "known:")),
    ("seed-huge-float", {"seed": 1.0e23}, ("spec error: seed: must be an integer in [0, 2**32)",)),
    ("seed-negative", {"seed": -1}, ("spec error: seed: must be an integer in [0, 2**32)",)),
    ("seed-2-to-32", {"seed": 2**32}, ("spec error: seed:",)),
    ("seed-text", {"seed": "1e23"}, ("spec error: seed: expected an integer",)),
    ("device-tpu", {"runtime": {"device": "tpu"}},
     ("spec error: runtime.device: must be one of auto, cpu, cuda",)),
    ("device-absent", {"runtime": {"device": _NO_DEVICE}},
     ("spec error: runtime.device:", "does not exist on this machine", "available: cpu")),
    ("max-retries-negative", {"resources": {"max_retries": -5}},
     ("spec error: resources.max_retries: must be >= 0, got -5",)),
    ("requests-per-task-zero", {"runtime": {"requests_per_task": 0}},
     ("spec error: runtime.requests_per_task: must be >= 1",)),
    ("cpus-negative", {"resources": {"train": {"cpus": -1}}},
     ("spec error: resources.train.cpus: must be >= 0",)),
    ("cpus-infinite", {"resources": {"train": {"cpus": float("inf")}}},
     ("spec error: resources.train.cpus: must be a finite number",)),
    ("gpus-negative", {"resources": {"unlearn": {"gpus": -0.5}}},
     ("spec error: resources.unlearn.gpus: must be >= 0",)),
    ("custom-negative", {"resources": {"attack": {"custom": {"gpu_node": -1}}}},
     ("spec error: resources.attack.custom.gpu_node: must be >= 0",)),
    ("epochs-negative", {"training.epochs": -1}, ("spec error: training.epochs: must be >= 0",)),
    ("momentum-above-1", {"training.momentum": 1.5},
     ("spec error: training.momentum: must be in [0, 1)",)),
    ("lr-nan", {"training.lr": float("nan")}, ("spec error: training.lr: must be a finite",)),
    ("hidden-zero", {"model.hidden": [8, 0]}, ("spec error: model.hidden[1]: must be >= 1",)),
    ("train-size-over-data", {"dataset.train_size": 100_000},
     ("spec error: dataset.train_size: must be in 1..",)),
    ("pool-size-over-data", {"dataset": {"name": "digits", "pool_size": 100_000}},
     ("spec error: dataset.pool_size: must be in 1..",)),
    ("train-size-over-pool", {"dataset": {"name": "digits", "pool_size": 50, "train_size": 80}},
     ("spec error: dataset.train_size: must be at most pool_size (50)",)),
    ("forget-count-over-data", {"forget": {"kind": "group", "count": 20, "size": 10}},
     ("spec error: forget.count:", "the training set has 100", "at most 10 requests")),
    ("forget-share-zero", {"forget": {"kind": "class_share", "shares": [0.0]}},
     ("spec error: forget.shares[0]: must be in (0, 1]",)),
    ("membership-set-size-over-data",
     {"membership": {"set_num": 1, "set_size": 10_000_000_000, "unlearning_size": 2}},
     ("spec error: membership.set_size: at most 287", "got 10000000000")),
    ("membership-split-seed", {"membership": {"split_seed": -3}},
     ("spec error: membership.split_seed: must be an integer in [0, 2**32)",)),
    ("attack-entry-lr", {"attacks": {"inv": {"attack": "inversion", "config": {"lr": -1}}}},
     ("spec error: attacks.inv.config.lr: must be > 0",)),
    ("attack-entry-targets", {"attacks": {"inv": {"attack": "inversion",
                                                  "targets_per_task": 0}}},
     ("spec error: attacks.inv.targets_per_task: must be >= 1",)),
    ("attack-unknown", {"attacks": {"x": {"attack": "mind_reading"}}},
     ("spec error: attacks.x.attack:",)),
    ("defence-strength-negative",
     {"defences": {"sweeps": [{"defence": "obfuscation", "strengths": [0.1, -1.0]}]}},
     ("spec error: defences.sweeps[0].strengths[1]: sigma must be >= 0, got -1.0",)),
    ("label-inference-share", {"label_inference": {"shares": [0.5, 2.0]}},
     ("spec error: label_inference.shares[1]: must be in (0, 1]",)),
    ("probe-zero-probes", {"label_inference": {"probes": {"probes_per_class": 0}}},
     ("spec error: label_inference.probes.probes_per_class: must be >= 1",)),
]


@pytest.mark.parametrize("changes, expect", [r[1:] for r in SPEC_ROWS],
                         ids=[r[0] for r in SPEC_ROWS])
def test_bad_spec_value_is_refused(tmp_path: Path, changes, expect):
    spec = write_spec(tmp_path, spec_with(changes))
    refused(["run", str(spec), "--results", "R"], tmp_path, expect)


# (id, --set override, expected text)
SET_ROWS = [
    ("yaml-error", "training.epochs=[", ("spec error: --set training.epochs=[:", "YAML")),
    ("index-past-end", "unlearning.7=1", ("spec error: --set unlearning.7=1:", "no such list")),
    ("index-not-number", "unlearning.x=1", ("spec error: --set unlearning.x=1:",)),
    ("no-equals", "noequals", ("spec error: --set noequals: expected key.path=value",)),
    ("empty-key-part", "training..epochs=3", ("spec error: --set training..epochs=3:",)),
    ("into-a-value", "seed.x=3", ("spec error: --set seed.x=3: seed: is a value",)),
    ("bad-value", "unlearning.1.lr=-1", ("spec error: unlearning[1].lr: must be > 0",)),
]


@pytest.mark.parametrize("override, expect", [r[1:] for r in SET_ROWS],
                         ids=[r[0] for r in SET_ROWS])
def test_bad_override_is_refused(tmp_path: Path, override, expect):
    spec = write_spec(tmp_path, VALID)
    refused(["run", str(spec), "--results", "R", "--set", override], tmp_path, expect)


def _spec_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "spec.yaml"
    if kind == "folder":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    elif kind == "empty":
        path.write_text("")
    elif kind == "list":
        path.write_text("- experiment: x\n- seed: 0\n")
    elif kind == "bad-yaml":
        path.write_text("experiment: x\ntraining: {epochs: [\n")
    return path  # "missing": never created


FILE_ROWS = [("folder", "is a folder"), ("binary", "not a text file"),
             ("empty", "is empty"), ("list", "a spec is a mapping"),
             ("bad-yaml", "not valid YAML"), ("missing", "not found")]


@pytest.mark.parametrize("command", ["run", "tune"])
@pytest.mark.parametrize("kind, expect", FILE_ROWS, ids=[r[0] for r in FILE_ROWS])
def test_bad_spec_file_is_refused(tmp_path: Path, command, kind, expect):
    path = _spec_file(tmp_path, kind)
    line = refused([command, str(path), "--results", "R"], tmp_path, (str(path), expect))
    assert line.startswith(f"unlearn-audit: {path}: "), line


def test_tune_reports_a_bad_value_like_run(tmp_path: Path):
    data = spec_with({"unlearning.1.lr": -1.0})
    data["search"] = {"objective": "inversion", "targets": 1, "heldout": 0,
                      "space": {"attack.lr": {"loguniform": [0.01, 0.1]}}}
    spec = write_spec(tmp_path, data)
    refused(["tune", str(spec), "--results", "R"], tmp_path,
            "spec error: unlearning[1].lr: must be > 0")
