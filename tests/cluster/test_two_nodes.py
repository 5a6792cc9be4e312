"""A real two-node Ray cluster in two network namespaces: placement, faults, resume, auth.

The module builds two hosts (see ``tests/cluster/netns.py``), starts a head in one and a worker in
the other with ``ray start`` and token authentication, and runs the core of the quickstart
(``two_nodes.yaml``) through ``unlearn-audit run --address``. Needs root and iproute2 (CI has
both); skipped otherwise.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from .netns import REPO, NetnsUnavailable, new_two_hosts

pytestmark = pytest.mark.netns

SPEC = "tests/cluster/two_nodes.yaml"  # the quickstart's core, fixed in size
EXPERIMENT = "cluster2n"
DRIVER_TIMEOUT = 240


@pytest.fixture(scope="module")
def hosts():
    """Two hosts with a head and a worker node formed, for the module's tests in turn (one
    cluster start, not one a test); the last test replaces the worker node."""
    net = new_two_hosts()
    try:
        net.create()
    except NetnsUnavailable as err:
        pytest.skip(str(err))
    try:
        formed = net.form({"head_node": 1}, {"worker_node": 1})
        print(f"\ntwo-node cluster formed in {formed:.1f}s")
        yield net
    finally:
        net.destroy()


def expected_model_keys(*sets: str) -> list[str]:
    from orchestrator.engine.execute import dedupe
    from orchestrator.engine.plan import plan_run
    from orchestrator.spec.schema import load_spec

    (spec,) = load_spec(SPEC, list(sets))
    _, units = plan_run(spec, None)
    return sorted(k for u in dedupe(units) if u.table == "models" for k in u.row_keys)


def raw_rows(results: Path, table: str) -> pd.DataFrame:
    """Every row of every part, without the readers' one-row-per-key step."""
    parts = sorted((results / EXPERIMENT / table).glob("*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n"
                        f"{log.read_text() if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}:\n"
                f"{log.read_text() if log and log.exists() else ''}")


def finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=DRIVER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the driver did not finish in {DRIVER_TIMEOUT}s:\n{log.read_text()}")
    return rc, log.read_text()


def assert_exact_rows(results: Path, expected: list[str], output: str) -> pd.DataFrame:
    models = raw_rows(results, "models")
    counts = Counter(models["key"]) if len(models) else Counter()
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not dupes, f"rows written more than once: {dupes}\n{output}"
    assert sorted(counts) == expected, (
        f"missing {sorted(set(expected) - set(counts))}, "
        f"unexpected {sorted(set(counts) - set(expected))}\n{output}")
    errors = raw_rows(results, "errors")
    assert errors.empty, f"error rows: {errors.to_dict('records')}\n{output}"
    return models


def test_both_nodes_work_token_is_required_and_an_interrupted_driver_resumes(hosts, tmp_path):
    # Joining takes the cluster's token: a wrong one is refused at once.
    refused = hosts.status(token="0" * 64, host=hosts.worker)
    assert refused.returncode != 0
    assert "InvalidAuthToken" in refused.stdout + refused.stderr

    # Training may only run on the head, unlearning only on the worker.
    # 150 epochs make each retraining task take seconds, so the interrupt below always lands
    # while unlearning tasks are still queued (at 30 epochs all six could finish first).
    sets = ("resources.train.custom.head_node=0.01", "resources.unlearn.custom.worker_node=0.01",
            "training.epochs=150")
    expected = expected_model_keys(*sets)
    assert len(expected) == 25
    results, log = tmp_path / "results", tmp_path / "run1.log"
    t0 = time.perf_counter()
    driver = hosts.launch(SPEC, str(results), *sets, log=log)

    # Interrupt the driver (as Ctrl-C would) while the worker node runs its first unlearning
    # task: training is done, and at least five of the six unlearning tasks are not.
    wait_for(lambda: hosts.worker.busy_workers("ray::unlearn_batch"), 180,
             "the first unlearning task on the worker node", driver, log)
    driver.send_signal(signal.SIGINT)
    rc, out1 = finish(driver, log)
    assert rc == 130, f"expected an interrupted run (130), got {rc}:\n{out1}"
    assert "rerun the same command to resume" in out1
    partial = raw_rows(results, "models")
    assert "original" in set(partial["role"]), out1
    assert len(partial) <= 1 + 4, out1

    # The same command again resumes: finished units are skipped, each row lands once.
    rerun = subprocess.run(hosts.run_cmd(SPEC, str(results), *sets), env=hosts.env(),
                           cwd=REPO, capture_output=True, text=True,
                           timeout=DRIVER_TIMEOUT, check=False)
    out2 = rerun.stdout + rerun.stderr
    wall = time.perf_counter() - t0
    print(f"interrupted run + resumed run: {wall:.1f}s")
    assert rerun.returncode == 0, out2
    assert "already done" in out2 and ", 0 already done" not in out2, out2
    models = assert_exact_rows(results, expected, out1 + out2)
    assert set(partial["key"]) < set(models["key"])

    # Both nodes worked, each on the kind of task its resource admits.
    head_id, worker_id = hosts.node_id(hosts.head), hosts.node_id(hosts.worker)
    by_role = models.groupby("role")["node_id"].agg(set).to_dict()
    assert by_role == {"original": {head_id}, "unlearned": {worker_id}}, by_role


def test_a_node_and_a_worker_process_dying_mid_run_lose_no_rows(hosts, tmp_path):
    """Unlearning is pinned to the worker node, so the worker node surely has a task in flight
    when it dies; its lost and pending tasks wait until a replacement node with the same
    resource joins (as an autoscaler would start one), and there a worker process running a
    task is killed too. Every task is retried; each expected row lands exactly once."""
    sets = ("resources.train.custom.head_node=0.01", "resources.unlearn.custom.worker_node=0.01")
    expected = expected_model_keys(*sets)
    results, log = tmp_path / "results", tmp_path / "run.log"
    t0 = time.perf_counter()
    driver = hosts.launch(SPEC, str(results), *sets, log=log)

    first = hosts.worker
    wait_for(lambda: first.busy_workers("ray::unlearn_batch"), 180,
             "an unlearning task on the worker node", driver, log)
    first_id = hosts.node_id(first)
    killed = first.kill_all()  # the whole node: raylet, agents, workers
    print(f"killed all {len(killed)} processes of the worker node "
          f"{time.perf_counter() - t0:.1f}s into the run")
    assert driver.poll() is None, log.read_text()

    second = hosts.replacement()
    hosts.start_worker({"worker_node": 1}, host=second)
    second_id = hosts.node_id(second)
    busy = wait_for(lambda: second.busy_workers("ray::unlearn_batch"), 180,
                    "an unlearning task on the replacement node", driver, log)
    pid, title = busy[0]
    subprocess.run(["kill", "-9", str(pid)], check=False)  # one worker process dies mid-task
    t_kill = time.perf_counter()
    print(f"replacement node up; killed its worker {pid} ({title}) {t_kill - t0:.1f}s "
          "into the run")

    rc, out = finish(driver, log)
    print(f"run finished {time.perf_counter() - t_kill:.1f}s later "
          f"({time.perf_counter() - t0:.1f}s in all)")
    assert rc == 0, out
    assert ", 0 failed" in out, out
    models = assert_exact_rows(results, expected, out)
    head_id = hosts.node_id(hosts.head)
    unlearned = set(models.loc[models["role"] == "unlearned", "node_id"])
    assert set(models.loc[models["role"] == "original", "node_id"]) == {head_id}
    assert second_id in unlearned and unlearned <= {first_id, second_id}, unlearned
