"""Large sweeps: windowed submission on a real local Ray, and compaction of a table's parts.

The cost figures (1,000 to 100,000 units) are in benchmarks/bench_sweep.py and
docs/BENCHMARKS.md; here only behaviour is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from orchestrator.cli.main import main
from orchestrator.engine.lock import ExperimentLock
from orchestrator.store.tables import Results, compact_tables

WINDOWED = r"""
import json, os, sys
from orchestrator.engine.ray_session import LOCAL_ENV, stop_ray
os.environ.update(LOCAL_ENV)
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
         log_to_driver=False, logging_level="ERROR")
from orchestrator.engine.execute import execute
from orchestrator.engine.plan import Unit
from orchestrator.spec.schema import ResourcesSpec
from orchestrator.store.tables import Results
from orchestrator.context import TaskContext

def unit(i, deps=(), fail=False):
    key = f"u{i:03d}"
    return Unit(key=key, kind="attack", fn="noop", table="t", row_keys=(key,),
                params={"table": "t", "key": key, "index": i, "fail": fail},
                deps=tuple(f"u{d:03d}" for d in deps), label=key)

# A chain, a failing unit with two dependants (one of them submitted only after it failed),
# and independent units, through a window of 3.
units = [unit(0)] + [unit(i, deps=[i - 1]) for i in range(1, 10)]
units += [unit(10, fail=True), unit(11, deps=[10])] + [unit(i) for i in range(12, 40)]
units += [unit(40, deps=[10, 5])]
results = Results(sys.argv[1], "sweep")
ctx = TaskContext("sweep", results.location.uri, sys.argv[1] + "/_artifacts", None)
report = execute(units, results, ctx, ResourcesSpec(max_retries=0), progress=False, window=3)
again = execute(units, results, ctx, ResourcesSpec(max_retries=0), progress=False, window=3)
errors = results.read("errors")
print(json.dumps({"succeeded": report.succeeded, "failed": report.failed,
                  "errors": sorted(errors["key"]), "again_skipped": again.skipped,
                  "again_failed": again.failed}))
stop_ray()
"""


def test_a_windowed_run_gives_every_row_once_and_skips_the_dependants_of_a_failure(
        tmp_path, repo):
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-c", WINDOWED, str(tmp_path)], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["succeeded"] == 38 and out["failed"] == 3
    assert out["errors"] == ["u010", "u011", "u040"]
    assert out["again_skipped"] == 38 and out["again_failed"] == 3  # the failures rerun
    keys = Results(tmp_path, "sweep").read("t")["key"].tolist()
    assert sorted(keys) == sorted(f"u{i:03d}" for i in range(41) if i not in (10, 11, 40))
    raw = [k for p in Results(tmp_path, "sweep").parts("t")
           for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()]
    assert len(raw) == len(set(raw)) == 38  # no row written twice


def _fragmented(root, parts: int = 40) -> Results:
    """A table of many small parts, a key rewritten with a new value, a column widened."""
    results = Results(root, "exp")
    for p in range(parts):
        rows = [{"key": f"k{p}-{i}", "value": p * 10 + i, "note": None} for i in range(5)]
        results.write("t", rows)
    results.write("t", [{"key": "k0-0", "value": 2.5, "note": "again"}])
    return results


def test_compaction_keeps_what_readers_see_in_a_few_bounded_parts(tmp_path):
    results = _fragmented(tmp_path)
    before = results.read("t").sort_values("key").reset_index(drop=True)
    assert len(results.parts("t")) == 41
    assert results.compact("t", max_rows=64) == (41, 4)  # 200 rows, 64 a part
    fresh = Results(tmp_path, "exp")
    after = fresh.read("t").sort_values("key").reset_index(drop=True)
    assert after.equals(before)
    assert after.set_index("key").loc["k0-0", "note"] == "again"
    assert all(pq.read_metadata(p).num_rows <= 64 for p in fresh.parts("t"))
    assert fresh.existing_keys("t") == set(before["key"])
    assert fresh.compact("t", max_rows=64) == (4, 4)  # idempotent: the same parts again


def test_runs_compact_only_fragmented_tables(tmp_path):
    results = _fragmented(tmp_path, parts=10)
    results.write("small", [{"key": "a"}])
    assert compact_tables(results, min_parts=8) == {"t": (11, 1)}
    assert len(results.parts("small")) == 1


def test_compact_command_merges_parts_and_refuses_a_busy_folder(tmp_path, capsys):
    _fragmented(tmp_path, parts=6)
    lock = ExperimentLock(tmp_path, "exp")
    lock.acquire()
    try:
        assert main(["compact", str(tmp_path / "exp")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is in use by pid" in err
    finally:
        lock.release()
    assert len(Results(tmp_path, "exp").parts("t")) == 7  # nothing touched
    assert main(["compact", str(tmp_path / "exp")]) == 0
    assert "7 parts -> 1" in capsys.readouterr().out
    assert len(Results(tmp_path, "exp").parts("t")) == 1


@pytest.mark.parametrize("target, expect", [("missing", "does not exist"),
                                            ("", "give RESULTS/<experiment>")])
def test_compact_command_refuses_what_is_not_an_experiment(tmp_path, capsys, target, expect):
    _fragmented(tmp_path / "R", parts=2)
    assert main(["compact", str(tmp_path / "R" / target) if target
                 else str(tmp_path / "R")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err
