"""End to end on an embedded Ray: rows, reuse, interruption, and loopback-only sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.bad_inputs.harness import run_cli

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
runtime: {requests_per_task: %(per_task)d}
"""


def _write_spec(tmp_path: Path, epochs=3, count=4, per_task=2, n=400) -> Path:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY % {"epochs": epochs, "count": count, "per_task": per_task, "n": n})
    return spec


def _cli(*args, cwd, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _keys(results: Path, table: str = "models") -> list[str]:
    keys = []
    for part in sorted((results / "tiny" / table).glob("part-*.parquet")):
        keys += pq.read_table(part, columns=["key"]).column("key").to_pylist()
    return keys


def _listening() -> dict[str, str]:
    """inode -> local address of every listening TCP socket (IPv4 and IPv6)."""
    out = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                out[f[9]] = f[1]
    return out


def _is_loopback(hex_addr: str) -> bool:
    host = hex_addr.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian
        return host.endswith("7F")
    # IPv6 ::1, or ::ffff:127.x.x.x (IPv4-mapped, as Ray's gRPC servers bind)
    return host == "00000000000000000000000001000000" or (
        host.startswith("0000000000000000FFFF0000") and host.endswith("7F"))


def test_run_writes_models_and_a_rerun_reuses_everything(tmp_path, repo, local_ray):
    spec = _write_spec(tmp_path)
    results = tmp_path / "R"
    code, out, err = run_cli(["run", str(spec), "--results", str(results), "--quiet"], repo)
    assert code == 0, out + err
    keys = _keys(results)
    assert len(keys) == 1 + 2 * 4 and len(set(keys)) == len(keys)
    import pandas as pd

    df = pd.concat(pq.read_table(p).to_pandas()
                   for p in (results / "tiny" / "models").glob("*.parquet"))
    assert df["node_id"].str.len().min() > 8  # a real Ray node id
    assert set(df["unlearning_method"].dropna()) == {"retrain", "gradient_ascent"}
    assert (df["seed"] == 0).all() and df["config_hash"].nunique() == 1
    assert "cfg.training.epochs" in df.columns

    code, out2, _ = run_cli(["run", str(spec), "--results", str(results), "--quiet"], repo)
    assert code == 0 and "already done" in out2
    assert sorted(_keys(results)) == sorted(keys)


def test_interrupted_run_resumes_with_each_row_once(tmp_path, repo, local_ray):
    # Slow enough (about 3 s a retrain on one CPU) to be stopped half-way.
    spec = _write_spec(tmp_path, epochs=60, count=4, per_task=1, n=800)
    results = tmp_path / "R"
    proc = _cli("run", str(spec), "--results", str(results), "--quiet", "--num-cpus", "1",
                cwd=repo)
    deadline = time.time() + 240
    while time.time() < deadline and not _keys(results):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    partial = _keys(results)
    assert 0 < len(partial) < 1 + 2 * 4, out
    assert not list((results / "tiny" / "models").glob(".tmp-*"))

    # The same command again (in this process, on the session's Ray) resumes.
    code, out2, err2 = run_cli(["run", str(spec), "--results", str(results), "--quiet"], repo)
    assert code == 0, out2 + err2
    keys = _keys(results)
    assert len(keys) == 1 + 2 * 4 and len(set(keys)) == len(keys)
    assert set(partial) <= set(keys)


def test_local_ray_listens_on_loopback_only_with_token_auth():
    before = _listening()
    code = (
        "import json, os\n"
        "from orchestrator.engine.ray_session import start_ray, stop_ray\n"
        "start_ray(num_cpus=1)\n"
        "import ray\n"
        "@ray.remote\n"
        "def f(): return os.environ.get('RAY_AUTH_MODE')\n"
        "mode = ray.get(f.remote())\n"
        "print(json.dumps({'mode': mode, 'token': bool(os.environ.get('RAY_AUTH_TOKEN'))}))\n"
        "import sys; sys.stdout.flush()\n"
        "input()\n"
        "stop_ray()\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        line = proc.stdout.readline()
        assert '"mode": "token"' in line and '"token": true' in line, line
        during = _listening()
        new = {inode: addr for inode, addr in during.items() if inode not in before}
        assert new, "the local Ray opened no listening socket at all?"
        public = [addr for addr in new.values() if not _is_loopback(addr)]
        assert not public, f"non-loopback listening sockets: {public}"
    finally:
        proc.communicate("\n", timeout=60)


def test_a_failing_unit_becomes_an_error_row_and_the_run_goes_on(tmp_path, repo, local_ray):
    spec = tmp_path / "tiny.yaml"
    spec.write_text((TINY % {"epochs": 2, "count": 2, "per_task": 1, "n": 200}).replace(
        "  - method: gradient_ascent\n", "  - method: refit\n  - method: gradient_ascent\n"))
    results = tmp_path / "R"
    code, out, err = run_cli(["run", str(spec), "--results", str(results), "--quiet"], repo)
    assert code == 1, out + err
    assert len(_keys(results)) == 1 + 2 + 2  # original, retrain x2, gradient_ascent x2
    errors = _keys(results, "errors")
    assert len(errors) == 2
    import pandas as pd

    df = pd.concat(pq.read_table(p).to_pandas()
                   for p in (results / "tiny" / "errors").glob("*.parquet"))
    assert df["error"].str.contains("needs a pretrained theta_0").all()
