"""Out-of-tree plug-ins end to end: a toy unlearning method, attack and scorer that live outside
the package (docs/examples/toy_plugins.py, copied into an empty folder) run through
``unlearn-audit run``, a defence sweep and a 3-trial ``tune`` — by ``package.module:attr`` and by
entry points of an installed distribution — and no file of the package changes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.cli_server import CliServer

REPO = Path(__file__).resolve().parents[1]

COMMON = """
seed: 0
dataset: {name: digits, train_size: 300}
model: {name: mlp, hidden: [16]}
training: {epochs: 5, lr: 0.05, batch_size: 32}
forget: {kind: single, count: 4}
"""

RUN = COMMON + """
experiment: outside
unlearning:
  - method: toy_plugins:LastLayerAscent
    lr: 1.0
attacks:
  bias:
    attack: toy_plugins:BiasShiftAttack
"""

# Entry-point names, as an installed distribution registers them.
DEFEND = COMMON + """
experiment: outside-defended
unlearning:
  - method: last_layer_ascent
    lr: 1.0
defences:
  attack: bias
  attacks:
    bias: {attack: bias_shift}
  sweeps:
    - defence: obfuscation
      strengths: [1.0e-6, 1.0]
"""

TUNE = COMMON + """
experiment: outside-search
unlearning:
  - method: toy_plugins:LastLayerAscent
    lr: 1.0
search:
  objective: toy_plugins:BiasShiftAttack
  targets: 2
  heldout: 2
  space:
    unlearning.0.lr: {loguniform: [0.01, 1.0]}
  metrics:
    - {name: accuracy, direction: maximize}
  sampler: {name: tpe, seed: 0, startup_trials: 2}
  budget: {trials: 3}
  concurrency: 1
"""

ENTRY_POINTS = """[unlearn_audit.attacks]
bias_shift = toy_plugins:BiasShiftAttack

[unlearn_audit.unlearning]
last_layer_ascent = toy_plugins:LastLayerAscent
"""


def _package_digest() -> str:
    h = hashlib.sha256()
    for package in ("orchestrator", "tasks"):
        for path in sorted((REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """An empty folder holding only the plug-in module and its distribution's metadata."""
    root = tmp_path_factory.mktemp("outside")
    plug = root / "site"
    plug.mkdir()
    shutil.copy(REPO / "docs" / "examples" / "toy_plugins.py", plug / "toy_plugins.py")
    dist = plug / "toy_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    for name, text in (("run.yaml", RUN), ("defend.yaml", DEFEND), ("tune.yaml", TUNE)):
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def server(outside):
    """The CLI in a process of its own with the plug-ins' folder on its PYTHONPATH (so also on
    its Ray's workers), serving the module's runs on one Ray."""
    cli = CliServer({"PYTHONPATH": str(outside / "site")})
    yield cli
    cli.close()


def _table(outside: Path, experiment: str, table: str) -> pd.DataFrame:
    return pd.read_parquet(outside / "R" / experiment / table)


@pytest.mark.slow
def test_outside_plugins_run_defend_and_tune(outside, server):
    before = _package_digest()

    def cli(*args: str) -> None:
        code, out, err = server.run(list(args), outside)
        assert code == 0, out + err

    cli("run", "run.yaml", "--results", "R", "--num-cpus", "2", "--quiet")
    guesses = _table(outside, "outside", "toy_guesses")
    assert len(guesses) == 4
    assert set(guesses["unlearning_method"]) == {"toy_plugins:LastLayerAscent"}
    assert guesses["correct"].mean() >= 0.75  # the last-layer bias gives the label away

    cli("run", "defend.yaml", "--results", "R", "--num-cpus", "2", "--quiet")
    rows = _table(outside, "outside-defended", "defences").set_index("strength",
                                                                      drop=False)
    assert sorted(rows["defence"]) == ["none", "obfuscation", "obfuscation"]
    assert set(rows["attack"]) == {"bias"} and set(rows["attack_metric_name"]) == {"accuracy"}
    undefended = rows[rows["defence"] == "none"]["attack_metric"].item()
    assert undefended >= 0.75
    # Noise far larger than the update hides it; a tiny one does not.
    assert rows.loc[1.0, "attack_metric"] < undefended
    assert rows.loc[1.0e-6, "attack_metric"] == undefended

    cli("tune", "tune.yaml", "--results", "R", "--num-cpus", "2", "--quiet")
    trials = _table(outside, "outside-search", "trials")
    assert len(trials) == 3 and trials["finished"].all(), trials.get("error")
    assert trials["value.accuracy"].between(0, 1).all()
    assert len(_table(outside, "outside-search", "best")) >= 1

    assert _package_digest() == before


@pytest.mark.parametrize("method, message", [
    ("toy_plugins:BiasShiftAttack", ("does not fit: BiasShiftAttack is not a subclass of "
                                    "tasks.unlearning.base.UnlearningMethod")),
    ("toy_plugins:Nope", "'toy_plugins' has no attribute 'Nope'"),
    ("no_such_plugins:X", "cannot import 'no_such_plugins'"),
])
def test_an_object_that_does_not_fit_is_refused_with_the_key(outside, server, method, message):
    spec = outside / f"bad-{abs(hash(method))}.yaml"
    spec.write_text(RUN.replace("toy_plugins:LastLayerAscent", method))
    code, out, err = server.run(["run", spec.name, "--results", "R", "--dry-run"], outside)
    assert code == 2
    lines = (out + err).strip().splitlines()
    assert len(lines) == 1 and "unlearning[0].method" in lines[0] and message in lines[0], lines
