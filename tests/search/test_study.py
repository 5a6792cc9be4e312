"""The Optuna side without Ray: seeded samplers, the journal, resume bookkeeping, Pareto."""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import optuna
import pytest

from orchestrator.search import (
    finished,
    make_sampler,
    open_study,
    pareto_front,
    recover_stale,
    trial_rows,
)
from orchestrator.search.spec import load_search
from orchestrator.search.study import INTERRUPTED
from orchestrator.store.tables import Results
from tests.search.test_search_spec import BASE


def _plan(sampler="tpe", seed=0):
    data = copy.deepcopy(BASE)
    data["search"]["sampler"] = {"name": sampler, "seed": seed, "startup_trials": 3}
    return load_search(data)


def _ask(study, plan, n):
    dists = {d.key: d.distribution() for d in plan.search.dimensions}
    out = []
    for _ in range(n):
        t = study.ask(dists)
        study.tell(t, float(np.log(t.params["attack.lr"]) ** 2))
        out.append(dict(t.params))
    return out


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_seeded_searches_repeat_their_first_trials(tmp_path, sampler):
    plan = _plan(sampler)
    firsts = []
    for run in ("a", "b"):
        study = open_study(plan, Results(tmp_path / run, "s"), resume=False)
        study.sampler = make_sampler(plan, 0)
        firsts.append(_ask(study, plan, 5))  # past TPE's 3 startup trials
    assert firsts[0] == firsts[1]
    other = open_study(_plan(sampler, seed=1), Results(tmp_path / "c", "s"), resume=False)
    other.sampler = make_sampler(_plan(sampler, seed=1), 0)
    assert _ask(other, plan, 5) != firsts[0]


def test_journal_resume_and_its_guards(tmp_path):
    from orchestrator.search import SearchStateError

    plan = _plan()
    results = Results(tmp_path, "s")
    study = open_study(plan, results, resume=False)
    study.sampler = make_sampler(plan, 0)
    first = _ask(study, plan, 3)
    assert (tmp_path / "s" / "_search" / "study.journal").exists()
    # A running trial whose process died (nothing told it) is recovered on resume.
    dists = {d.key: d.distribution() for d in plan.search.dimensions}
    dead = study.ask(dists)
    with pytest.raises(SearchStateError, match="--resume"):
        open_study(plan, results, resume=False)
    changed = copy.deepcopy(BASE)
    changed["search"]["space"]["attack.lr"] = {"loguniform": [1.0e-2, 0.3]}
    with pytest.raises(SearchStateError, match="changed"):
        open_study(load_search(changed), results, resume=True)
    again = open_study(plan, results, resume=True)
    assert recover_stale(again) == 1
    assert sum(finished(t) for t in again.trials) == 3
    # The interrupted configuration is asked again first; the sampler does not replay.
    again.sampler = make_sampler(plan, len(again.trials))
    rerun = again.ask(dists)
    assert rerun.params == dead.params
    assert rerun.user_attrs["rerun_of"] == dead.number
    again.tell(rerun, 1.0)
    nxt = _ask(again, plan, 1)[0]
    assert nxt not in first
    rows = trial_rows(again, plan)
    states = [r["state"] for r in rows]
    assert states.count("interrupted") == 1 and states.count("complete") == 5
    assert sum(r["finished"] for r in rows) == 5
    assert {f"param.{d.key}" for d in plan.search.dimensions} <= set(rows[0])


def test_a_half_written_last_record_is_dropped_before_the_next_append(tmp_path):
    """A search killed while appending leaves a partial last line. Optuna reads past it, but
    the next append would join it into one unreadable line (JSONDecodeError on every later
    read); drop_partial_record cuts it off first, and the study goes on."""
    from orchestrator.search.study import drop_partial_record

    plan = _plan()
    results = Results(tmp_path, "s")
    study = open_study(plan, results, resume=False)
    study.sampler = make_sampler(plan, 0)
    _ask(study, plan, 3)
    journal = tmp_path / "s" / "_search" / "study.journal"
    whole = journal.read_bytes()
    assert drop_partial_record(results) == 0 and journal.read_bytes() == whole
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "sta')
    assert drop_partial_record(results) == len(b'{"op_code": 5, "worker_id": "x", '
                                               b'"trial_id": 0, "sta')
    assert journal.read_bytes() == whole
    again = open_study(plan, results, resume=True)
    again.sampler = make_sampler(plan, len(again.trials))
    _ask(again, plan, 1)  # an append, then a read of the whole journal
    assert sum(finished(t) for t in open_study(plan, results, resume=True).trials) == 4


@pytest.mark.parametrize("content", [b"garbage{{{\n", b'{"op_code": 0, "worker_id"\n{}\n'])
def test_a_damaged_journal_is_refused_in_one_line(tmp_path, content):
    from orchestrator.search import SearchStateError

    plan = _plan()
    results = Results(tmp_path, "s")
    open_study(plan, results, resume=False)
    journal = tmp_path / "s" / "_search" / "study.journal"
    journal.write_bytes(content)
    with pytest.raises(SearchStateError) as info:
        open_study(plan, results, resume=True)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{journal}: damaged study journal (")
    assert "aside to start the search afresh" in line


def test_pareto_front_respects_directions():
    pts = np.array([[20.0, 0.90], [25.0, 0.95], [30.0, 0.97], [28.0, 0.93], [20.0, 0.89]])
    # leakage (PSNR) minimised, utility maximised: the last two are dominated
    assert pareto_front(pts, ["minimize", "maximize"]).tolist() == [True, True, True, False,
                                                                    False]
    assert pareto_front(pts, ["maximize", "maximize"]).tolist() == [False, False, True, False,
                                                                    False]
    assert pareto_front(pts, ["maximize", "minimize"]).tolist() == [False, False, True, True,
                                                                    True]


def test_importing_the_search_module_leaves_ray_unloaded():
    # start_ray must set the auth environment before Ray is imported; the CLI imports us.
    code = ("import sys, orchestrator.cli.main as c; c.build_parser(); "
            "assert 'ray' not in sys.modules, 'ray imported early'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_finished_counts_complete_pruned_and_failed_trials_but_not_interrupted_ones():
    state = optuna.trial.TrialState

    def trial(s, **attrs):
        return SimpleNamespace(state=s, user_attrs=attrs)

    assert finished(trial(state.COMPLETE)) and finished(trial(state.PRUNED))
    assert finished(trial(state.FAIL))  # an error: it spent its share of the budget
    assert not finished(trial(state.FAIL, **{INTERRUPTED: True}))  # killed: run again
    assert not finished(trial(state.RUNNING)) and not finished(trial(state.WAITING))
