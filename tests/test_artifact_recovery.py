"""Lost or damaged artifacts (trained models, an attack's arrays) are made again, not fatal.

- the store names a damaged artifact, moves it aside as ``<name>.damaged``, and names a
  missing one; ``reuse`` lets a unit remake what it finds damaged; ``scan`` finds them all;
- ``pending_units`` reruns the unit that made a lost artifact only where a pending unit needs
  it (a finished experiment whose artifacts were deleted retrains nothing);
- end to end: every artifact of a run cut short, its attack tables deleted; one rerun remakes
  the models and gives the same rows as the first run, each key once in the raw parts.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from orchestrator.engine.execute import pending_units
from orchestrator.engine.plan import Unit
from orchestrator.store.artifacts import ArtifactStore, DamagedArtifact, MissingArtifact, reuse
from orchestrator.store.tables import Results
from tests.bad_inputs.harness import run_cli
from tests.conftest import reduced_quickstart


def _damage(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short


def test_a_damaged_artifact_is_named_and_moved_aside(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save_torch("m-1", {"state_dict": torch.nn.Linear(3, 2).state_dict()})
    store.save_arrays("a-1", x=np.ones(3))
    for key, suffix, load in (("m-1", ".pt", store.load_torch),
                              ("a-1", ".npz", store.load_arrays)):
        path = Path(store.path(key, suffix))
        _damage(path)
        with pytest.raises(DamagedArtifact) as info:
            load(key)
        line = str(info.value)
        assert line.startswith(f"{path}: damaged artifact (") and "\n" not in line
        assert f"moved aside as {path.name}.damaged; rerun" in line
        assert not path.exists() and path.with_name(path.name + ".damaged").exists()
        with pytest.raises(MissingArtifact, match=f"{path}: missing from the artifact store"):
            load(key)
    assert store.names() == {"m-1.pt.damaged", "a-1.npz.damaged"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_error_is_not_taken_for_damage(tmp_path):
    """Read on the CPU, then moved: no CUDA here is the device's error, and the file stays."""
    store = ArtifactStore(tmp_path)
    store.save_torch("m-1", {"state_dict": torch.nn.Linear(3, 2).state_dict()})
    with pytest.raises((RuntimeError, AssertionError)) as info:
        store.load_torch("m-1", map_location="cuda")
    assert not isinstance(info.value, DamagedArtifact)
    assert store.names() == {"m-1.pt"}


def test_reuse_gives_none_only_for_damage(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save_arrays("a-1", x=np.arange(3))
    np.testing.assert_array_equal(reuse(lambda: store.load_arrays("a-1"))["x"], np.arange(3))
    _damage(Path(store.path("a-1", ".npz")))
    assert reuse(lambda: store.load_arrays("a-1")) is None  # made again by the caller
    with pytest.raises(MissingArtifact):  # gone: the unit that made it must run, not this one
        reuse(lambda: store.load_arrays("a-1"))


def test_scan_moves_every_damaged_artifact_aside(tmp_path):
    store = ArtifactStore(tmp_path)
    for i in range(4):
        store.save_arrays(f"a-{i}{i}", x=np.ones(2))
    for i in (1, 3):
        _damage(Path(store.path(f"a-{i}{i}", ".npz")))
    read, damaged = store.scan()
    assert read == 4 and sorted(damaged) == ["a-11.npz", "a-33.npz"]
    assert store.names() == {"a-00.npz", "a-22.npz", "a-11.npz.damaged", "a-33.npz.damaged"}


def _units() -> list[Unit]:
    """pretrain -> original -> two unlearned -> an attack on one of them."""
    return [Unit("p", "train", "pretrain", {}, "models", ("p",)),
            Unit("o", "train", "train_original", {}, "models", ("o",), deps=("p",)),
            Unit("u", "unlearn", "unlearn_batch", {}, "models", ("u-1", "u-2"), deps=("o",)),
            Unit("v", "unlearn", "unlearn_batch", {}, "models", ("v-1",), deps=("o",)),
            Unit("a", "attack", "attack_batch", {}, "recoveries", ("r-1",), deps=("u",))]


def test_a_lost_artifact_is_made_again_only_where_a_pending_unit_needs_it(tmp_path):
    results, store = Results(tmp_path, "e"), ArtifactStore(tmp_path / "_artifacts")
    results.write("models", [{"key": k} for k in ("p", "o", "u-1", "u-2", "v-1")])
    results.write("recoveries", [{"key": "r-1"}])
    units = _units()
    assert pending_units(units, results, store) == []  # all rows; artifacts deleted: no work
    for key in ("p", "o", "u-1", "u-2", "v-1"):
        store.save_torch(key, {"x": torch.ones(1)})
    os.remove(store.path("u-2"))
    os.remove(store.path("o"))
    assert pending_units(units, results, store) == []  # still nothing pending needs them
    # A search loads models outside any unit: it names them, and they are made again.
    assert [u.key for u in pending_units(units, results, store, needed=["u"])] == ["o", "u"]
    results.clear("recoveries")  # the attack must run again: it loads u, which needs o
    assert [u.key for u in pending_units(units, results, store)] == ["o", "u", "a"]
    assert [u.key for u in pending_units(units, results)] == ["a"]  # rows only
    store.save_arrays("o", x=np.ones(1))  # a scikit-learn model's artifact is arrays
    assert [u.key for u in pending_units(units, results, store)] == ["u", "a"]


def _tables(results: Path) -> dict[str, list[tuple]]:
    """Each table's rows, sorted by key, without the columns that time or place the run."""
    out = {}
    for table in ("models", "prepared", "recoveries", "label_inference"):
        frame = pq.read_table(results / "qs" / table).to_pandas().sort_values("key")
        keep = [c for c in frame.columns
                if not any(w in c for w in ("wall", "time", "node", "artifact"))]
        out[table] = [tuple(str(v) for v in row) for row in frame[keep].itertuples(index=False)]
    return out


def test_a_run_whose_artifacts_were_damaged_remakes_them_in_one_rerun(tmp_path, repo,
                                                                       local_ray):
    spec = tmp_path / "qs.yaml"
    spec.write_text(yaml.safe_dump(reduced_quickstart()))
    results = tmp_path / "R"

    def run() -> SimpleNamespace:
        code, out, err = run_cli(["run", str(spec), "--results", str(results), "--quiet"], repo)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    before = _tables(results)
    artifacts = [p for p in (results / "_artifacts").rglob("*") if p.is_file()]
    assert artifacts
    for path in artifacts:
        _damage(path)
    for table in ("recoveries", "label_inference"):
        shutil.rmtree(results / "qs" / table)
    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "found a model missing or damaged" in second.stderr
    assert "0 failed" in second.stdout
    assert _tables(results) == before  # made again bit for bit
    for table in before:  # each key once in the raw parts: rewritten rows were compacted
        keys = [k for part in (results / "qs" / table).glob("part-*.parquet")
                for k in pq.read_table(part, columns=["key"]).column("key").to_pylist()]
        assert set(Counter(keys).values()) == {1}, table
    shutil.rmtree(results / "_artifacts")  # a finished experiment needs none of them
    third = run()
    assert third.returncode == 0 and "nothing to run" in third.stdout, third.stdout


def test_a_per_example_scores_dataset_counts_as_an_artifact_and_is_moved_aside(tmp_path):
    """The per-example stage's scores are a Parquet folder, ``<key>.parquet.d``: present, it
    holds its unit done; cut short, reading it names it and moves it aside."""
    import pyarrow as pa

    from orchestrator.context import TaskContext
    from orchestrator.stages.per_example.scoring import read_scores, scores_path

    ctx = TaskContext("e", str(tmp_path / "R"), str(tmp_path / "A"), None)
    results = Results(tmp_path / "R", "e")
    units = [Unit("s-1", "attack", "pe_score", {}, "per_example_scoring", ("s-1",)),
             Unit("an", "attack", "pe_analyse", {}, "ulira", ("an:1",), deps=("s-1",))]
    results.write("per_example_scoring", [{"key": "s-1"}])
    folder = Path(scores_path(ctx, "s-1"))
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"score": [0.5, 0.7]}), folder / "part-0.parquet")
    assert [u.key for u in pending_units(units, results, ctx.store)] == ["an"]
    assert read_scores(ctx, "s-1").num_rows == 2
    _damage(folder / "part-0.parquet")
    with pytest.raises(DamagedArtifact, match=f"{folder}: damaged artifact"):
        read_scores(ctx, "s-1")
    assert not folder.exists() and Path(f"{folder}.damaged").is_dir()
    assert [u.key for u in pending_units(units, results, ctx.store)] == ["s-1", "an"]
    with pytest.raises(MissingArtifact, match=f"{folder}: missing"):
        read_scores(ctx, "s-1")
