"""``run`` never hangs, stops cleanly on SIGTERM, and writes each row once under concurrency.

- an address where no Ray answers fails within the connect timeout, in one line;
- a unit no node can run (a GPU on this CPU machine) is refused before anything runs;
- units that wait for resources which never free up are reported and recorded as not run;
- SIGTERM mid-run: exit 130, finished rows kept, no Ray crash dump, no Ray process left, and
  the rerun resumes with every key once;
- two runs of one spec into one folder: one runs, the other is refused, every key is in the
  raw Parquet parts once; a lock whose holder died is taken over;
- a killed driver (SIGKILL: no handler runs) leaves no Ray process either.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.bad_inputs.harness import refused, run_cli

TINY = """
experiment: tiny
seed: 0
dataset: {name: digits, train_size: %(n)d}
model: {name: mlp, hidden: [16]}
training: {epochs: %(epochs)d, lr: 0.05, batch_size: 32}
forget: {kind: single, count: %(count)d}
unlearning:
  - method: retrain
  - method: gradient_ascent
    lr: 0.5
runtime: {requests_per_task: 1}
"""


def _spec(folder: Path, epochs: int = 2, count: int = 2, n: int = 200) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(TINY % {"epochs": epochs, "count": count, "n": n})
    return path


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _cli(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd,
                            env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)


def _rerun(spec: Path, results: Path, repo: Path) -> None:
    """The same command again, to resume (in this process, on the session's Ray: what is
    tested here is what the stopped run left)."""
    code, out, err = run_cli(["run", str(spec), "--results", str(results), "--quiet"], repo)
    assert code == 0, out + err


def _raw_keys(results: Path, table: str = "models") -> list[str]:
    """Every key of every part: no reader's one-row-per-key step."""
    keys: list[str] = []
    for part in sorted((results / "tiny" / table).glob("part-*.parquet")):
        keys += pq.read_table(part, columns=["key"]).column("key").to_pylist()
    return keys


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below ``root`` (Ray's workers and agents included:
    they are the raylet's children while the driver lives)."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(name)] = (int(fields[1]), fields[19])
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _still_running(snapshot: dict[int, str]) -> list[str]:
    alive = []
    for pid, start in snapshot.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            alive.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:80])
    return alive


def _wait_for(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}:\n"
                        f"{log.read_text() if log else ''}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


# -- no hangs ------------------------------------------------------------------------------

def test_an_address_where_nothing_listens_fails_at_once_in_one_line(tmp_path):
    spec = _spec(tmp_path)
    t0 = time.monotonic()
    refused(["run", str(spec), "--results", "R", "--address", "127.0.0.1:1"], tmp_path,
            "unlearn-audit: --address 127.0.0.1:1: no Ray cluster answers there within 30 s",
            in_process=False)
    assert time.monotonic() - t0 < 30


def test_an_address_that_accepts_but_never_answers_gives_up_at_the_connect_timeout(tmp_path):
    spec = _spec(tmp_path)
    with socket.socket() as silent:  # accepts connections, says nothing: Ray would wait
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        refused(["run", str(spec), "--results", "R", "--address", address,
                 "--connect-timeout", "4"], tmp_path,
                f"--address {address}: no Ray cluster answers there within 4 s",
                in_process=False)
        assert time.monotonic() - t0 < 25


@pytest.mark.parametrize(("setting", "expect"), [
    ("resources.train.gpus=1",
     "spec error: resources.train.gpus: 1 GPU per task, but no node has a GPU (nodes: 1 x {CPU:"),
    ("resources.unlearn.cpus=100",
     "spec error: resources.unlearn.cpus: 100 CPUs per task, but the largest node has"),
])
def test_a_unit_no_node_can_run_is_refused_before_anything_runs(tmp_path, setting, expect):
    import torch

    if "gpus" in setting and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = _spec(tmp_path)
    refused(["run", str(spec), "--results", "R", "--set", setting], tmp_path, expect,
            in_process=False)


STALL = r"""
import json, os, sys, time
from orchestrator.engine.ray_session import LOCAL_ENV, stop_ray
os.environ.update(LOCAL_ENV)
os.environ["RAY_AUTH_MODE"] = "disabled"
import ray
ray.init(num_cpus=2, resources={"slot": 1}, include_dashboard=False,
         _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="ERROR")
from orchestrator.engine.execute import execute
from orchestrator.engine.plan import plan_run
from orchestrator.spec.schema import load_spec
from orchestrator.store.tables import Results
from orchestrator.context import TaskContext

def run(folder, sets, wait):
    (spec,) = load_spec(sys.argv[1], sets)
    _, units = plan_run(spec, None)
    results = Results(folder, spec.experiment)
    ctx = TaskContext(spec.experiment, results.location.uri, folder + "/_artifacts", None)
    t0 = time.monotonic()
    report = execute(units, results, ctx, spec.resources, progress=False, resource_wait_s=wait)
    return {"units": len(units), "succeeded": report.succeeded, "not_run": report.not_run,
            "stalled": report.stalled, "wall": time.monotonic() - t0}

# This run's own units queue (each needs both CPUs) for longer than the limit: not a stall.
queued = run(sys.argv[2], ["resources.unlearn.cpus=2", "resources.train.cpus=2"], 5.0)
# Something else holds the only 'slot' for good: the training unit can never start.
@ray.remote(num_cpus=0, resources={"slot": 1})
def hold():
    time.sleep(300)
blocker = hold.remote()
time.sleep(2)
stalled = run(sys.argv[3], ["resources.train.custom.slot=1"], 5.0)
print(json.dumps({"queued": queued, "stalled": stalled}))
stop_ray()
"""


@pytest.mark.alone  # its 5 s stall limit is a wall time: a loaded machine starts Ray slower
def test_units_waiting_for_resources_that_never_free_are_reported_not_waited_for(
        tmp_path, repo):
    spec = _spec(tmp_path, epochs=80, count=6, n=800)  # 13 units, one at a time: ~10 s
    done = subprocess.run([sys.executable, "-c", STALL, str(spec), str(tmp_path / "Q"),
                           str(tmp_path / "S")], cwd=repo, env=_env(), capture_output=True,
                          text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    queued, stalled = out["queued"], out["stalled"]
    assert queued["succeeded"] == queued["units"] and not queued["stalled"], queued
    assert queued["wall"] > 5.0  # it did wait longer than the limit, behind its own units

    assert stalled["succeeded"] == 0 and stalled["not_run"] == stalled["units"], stalled
    assert stalled["wall"] < 60, stalled
    assert "1 train unit waited over 5 s for {CPU: 1, slot: 1} per task" in stalled["stalled"]
    assert "unlearn-audit: warning: 1 train unit waited over 5 s" in done.stderr
    errors = pq.read_table(tmp_path / "S" / "tiny" / "errors").to_pandas()
    assert len(errors) == stalled["units"] and set(errors["error_type"]) == {"NotRun"}
    assert not (tmp_path / "S" / "tiny" / "models").exists()


# -- signals -------------------------------------------------------------------------------

def test_sigterm_stops_like_ctrl_c_and_leaves_no_ray_process(tmp_path, repo, local_ray):
    # Slow enough (seconds per retraining on one CPU) to be stopped half-way.
    spec = _spec(tmp_path, epochs=100, count=3, n=800)
    results, log = tmp_path / "R", tmp_path / "run.log"
    proc = _cli("run", str(spec), "--results", str(results), "--quiet", "--num-cpus", "1",
                cwd=repo, log=log)
    _wait_for(lambda: _raw_keys(results), 240, "the first rows", proc, log)
    ray_processes = _descendants(proc.pid)
    assert any(p for p in ray_processes), "no Ray process below the driver?"
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=120)
    out = log.read_text()
    assert rc == 130, out
    assert "rerun the same command to resume" in out
    for dump in ("SIGTERM received", "Check failed", "Traceback", "StackTrace"):
        assert dump not in out, out
    assert not _still_running(ray_processes), "Ray processes outlived the driver"
    partial = _raw_keys(results)
    assert 0 < len(partial) < 1 + 2 * 3 and len(set(partial)) == len(partial), out

    _rerun(spec, results, repo)
    keys = _raw_keys(results)
    assert len(keys) == 1 + 2 * 3 and len(set(keys)) == len(keys)
    assert set(partial) <= set(keys)


# -- exactly once under concurrency --------------------------------------------------------

def test_two_runs_at_once_into_one_folder_write_every_row_once(tmp_path, repo):
    spec = _spec(tmp_path, epochs=20, count=3, n=400)
    results = tmp_path / "R"
    runs = [_cli("run", str(spec), "--results", str(results), "--quiet", cwd=repo,
                 log=tmp_path / f"run{i}.log") for i in range(2)]
    codes = sorted(p.wait(timeout=300) for p in runs)
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert codes == [0, 2], logs
    line = next(text for text in logs if "is in use by pid" in text).strip()
    assert len(line.splitlines()) == 1 and "wait for it or stop it" in line, line
    assert f"{results / 'tiny'} is in use by pid" in line
    for table, expected in (("models", 1 + 2 * 3),):
        counts = Counter(_raw_keys(results, table))
        assert len(counts) == expected and set(counts.values()) == {1}, counts


HOLD = r"""
import sys, time
from orchestrator.engine.lock import ExperimentLock
lock = ExperimentLock(sys.argv[1], "tiny")
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_live_holder_is_named_and_a_dead_holders_lock_is_taken_over(tmp_path, repo):
    spec = _spec(tmp_path)
    results = tmp_path / "R"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(results)], cwd=repo,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        # Refused before Ray starts (quick), naming the holder; nothing written.
        refused(["run", str(spec), "--results", str(results)], tmp_path,
                f"{results / 'tiny'} is in use by pid {holder.pid} on {socket.gethostname()}",
                in_process=False)
    finally:
        holder.kill()  # dies holding the lock, as a killed run would
        holder.wait()
    note = json.loads((results / "tiny" / ".lock.owner").read_text())
    assert note["pid"] == holder.pid  # its note stays behind; the lock is free all the same
    from orchestrator.engine.lock import ExperimentLock

    with ExperimentLock(results, "tiny"):
        assert json.loads((results / "tiny" / ".lock.owner").read_text())["pid"] == os.getpid()


def test_a_killed_driver_leaves_no_ray_process_and_its_lock_is_taken_over(tmp_path, repo,
                                                                          local_ray):
    spec = _spec(tmp_path, epochs=100, count=4, n=800)
    results, log = tmp_path / "R", tmp_path / "run.log"
    proc = _cli("run", str(spec), "--results", str(results), "--quiet", "--num-cpus", "1",
                cwd=repo, log=log)
    _wait_for(lambda: _raw_keys(results), 240, "the first rows", proc, log)
    ray_processes = _descendants(proc.pid)
    proc.kill()  # no handler runs: the watchdog must clean up
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _still_running(ray_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _still_running(ray_processes), "Ray processes outlived a killed driver"
    assert json.loads((results / "tiny" / ".lock.owner").read_text())["pid"] == proc.pid

    _rerun(spec, results, repo)
    keys = _raw_keys(results)
    assert len(keys) == 1 + 2 * 4 and len(set(keys)) == len(keys)


def test_on_an_object_store_the_lock_is_an_owner_object(tmp_path):
    """pyarrow's in-memory store stands in for S3: no OS lock there, an owner object instead."""
    from orchestrator.engine.lock import ExperimentLock, LockHeld

    first = ExperimentLock("mock:///bucket/R", "tiny")
    second = ExperimentLock("mock:///bucket/R", "tiny")
    second.location = first.location  # one store (each mock:// URI opens its own)
    first.acquire()
    with pytest.raises(LockHeld, match=rf"in use by pid {os.getpid()} .*delete "):
        second.check_free()
    with pytest.raises(LockHeld):
        second.acquire()
    first.release()
    assert not first.location.exists("tiny", ".lock")
    second.acquire()
    second.release()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid runs nothing now
    for host, taken in ((socket.gethostname(), True), ("another-host", False)):
        note = {"pid": dead.pid, "host": host, "since": 0}
        first.location.write_bytes(json.dumps(note).encode(), "tiny", ".lock")
        if taken:
            second.acquire()  # a dead holder on this host: taken over
            second.release()
        else:  # another host's holder cannot be checked: refused, with how to clear it
            with pytest.raises(LockHeld, match="another-host"):
                second.acquire()
