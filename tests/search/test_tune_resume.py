"""End to end on a local Ray: the real inversion objective, a kill, and --resume.

A small search (digits, 8 trials of a 200-iteration inversion on 2 targets) is killed with
SIGKILL once a trial has finished; ``--resume`` must end with exactly the requested number of
finished trials, without redoing the ones that finished, and write ``trials`` and ``best``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.bad_inputs.harness import run_cli

N_TRIALS = 8
SPEC = {
    "experiment": "tiny-search",
    "seed": 0,
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 3, "lr": 0.05, "batch_size": 64, "optimizer": "sgd",
                 "momentum": 0.9},
    "forget": {"kind": "single", "count": 3},
    "unlearning": [{"method": "gradient_ascent", "lr": 1.0e-3, "steps": 1}],
    "resources": {"trial": {"cpus": 1}},
    "search": {
        "objective": "inversion",
        # Long enough that the kill below lands before the last trial finishes on an idle
        # machine too (40 iterations x 4 trials could all finish between two polls).
        "attack": {"iterations": 200, "restarts": 1, "callback_every": 10},
        "targets": 2, "heldout": 1,
        "space": {"attack.lr": {"loguniform": [1.0e-3, 0.3]},
                  "attack.tv_weight": {"loguniform": [1.0e-4, 1.0e-1]}},
        "sampler": {"name": "random", "seed": 3},
        "scheduler": {"name": "asha", "metric": "matching_loss", "grace_period": 50,
                      "max_t": 200, "reduction_factor": 2},
        "budget": {"trials": N_TRIALS},
        "concurrency": 1,
    },
}


def _tune(spec: Path, results: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "UNLEARN_AUDIT_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "tune", str(spec), "--results",
         str(results), "--num-cpus", "2", "--quiet", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def _complete_trials(results: Path) -> int:
    journal = results / "tiny-search" / "_search" / "study.journal"
    if not journal.exists():
        return 0
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from orchestrator.search import finished

    study = optuna.load_study(study_name="tiny-search",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    return sum(finished(t) for t in study.trials)


@pytest.mark.slow  # the killed search starts a Ray of its own; the resume uses the session's
def test_kill_then_resume_ends_with_the_requested_trials(tmp_path, local_ray):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    results = tmp_path / "R"
    proc = _tune(spec, results)
    deadline = time.time() + 150
    try:
        while time.time() < deadline and proc.poll() is None:
            if _complete_trials(results) >= 1:  # finished: complete or pruned
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        assert _complete_trials(results) >= 1, "no trial finished in time"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = _complete_trials(results)
    assert before < N_TRIALS, "the search finished before it could be killed"

    # Without --resume the existing study is refused (exit 2), untouched.
    code, out, err = run_cli(["tune", str(spec), "--results", str(results), "--quiet"],
                             tmp_path)
    assert code == 2, out + err
    assert "--resume" in err

    code, out, err = run_cli(["tune", str(spec), "--results", str(results), "--num-cpus", "2",
                              "--quiet", "--resume"], tmp_path)
    out += err
    assert code == 0, out
    assert f"{before} finished trial(s) in the study, {N_TRIALS - before} to run" in out

    from orchestrator.store.tables import Results

    tables = Results(results, "tiny-search")
    trials = tables.read("trials")
    assert int(trials["finished"].sum()) == N_TRIALS
    assert set(trials["state"]) <= {"complete", "pruned", "interrupted"}
    done = trials[trials["finished"]]
    assert done["wall_s"].notna().all()
    assert done["param.attack.lr"].between(1e-3, 0.3).all()
    best = tables.read("best")
    assert set(best["role"]) == {"best", "baseline"}
    assert best["heldout.psnr"].notna().all() and (best["heldout.psnr"] > 5).all()
    assert (best["heldout.targets"] == 1).all()
    figure = results / "tiny-search" / "figures" / "search_best_so_far.png"
    assert figure.exists() and figure.stat().st_size > 1000
    assert not (Path.home() / "ray_results" / "run-000").exists()


def test_a_trial_that_raises_is_recorded_and_the_search_goes_on(tmp_path, local_ray):
    """With ASHA, a trial's error report carries no scheduler metric; Tune's strict check used
    to end the whole search on it (a TuneError traceback). Here the models' artifacts are cut
    short between two runs, so the first resumed trials raise (DamagedArtifact); the search
    records them as failed, later trials and the held-out scoring remake the models."""
    import copy
    import shutil

    spec_data = copy.deepcopy(SPEC)
    spec_data["search"]["attack"]["iterations"] = 20
    spec_data["search"]["scheduler"].update(grace_period=10, max_t=20)
    spec_data["search"]["budget"]["trials"] = 2
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(spec_data))
    results = tmp_path / "R"
    argv = ["tune", str(spec), "--results", str(results), "--num-cpus", "2", "--quiet"]
    code, out, err = run_cli(argv, tmp_path)
    assert code == 0, out + err
    for path in (results / "_artifacts").rglob("*.pt"):
        path.write_bytes(path.read_bytes()[:100])
    code, out, err = run_cli([*argv, "--resume", "--num-samples", "5"], tmp_path)
    assert code == 0, out + err
    assert "5/5 trials finished (3 this run)" in out, out

    from orchestrator.store.tables import Results

    trials = Results(results, "tiny-search").read("trials")
    failed = trials[trials["state"] == "fail"]
    assert len(failed) >= 1, trials[["trial", "state"]]
    assert failed["error"].str.contains("damaged artifact|missing from the artifact store").all()
    assert list((results / "_artifacts").rglob("*.pt.damaged"))
    best = Results(results, "tiny-search").read("best")
    assert best["heldout.psnr"].notna().all()  # scored on models made again
    shutil.rmtree(results)
