"""``unlearn-audit tune``'s driver: Ray Tune runs the trials, the Optuna study decides.

Design (why not Tune's own OptunaSearch + ``Tuner.restore``): the study
(:mod:`orchestrator.search.study`) is the single source of truth. The searcher built by
:func:`journal_searcher_class` is a Ray Tune ``Searcher`` that asks that study for every new
trial and tells it every outcome; Tune provides the scheduling (ASHA), concurrency, resources
and fault handling. Every ``tune`` invocation starts a fresh Tune run under
``RESULTS/<experiment>/_search/tune/run-NNN`` for exactly the trials the study still lacks:

* finished trials (complete, pruned by ASHA, or failed with an error) count towards the budget;
* a trial that was running when the search stopped (Ctrl-C, SIGTERM, a kill, the time budget)
  is marked failed with ``interrupted`` and its parameters are enqueued, so ``--resume`` reruns
  that configuration instead of skipping it: the search ends with exactly ``budget.trials``
  finished trials however often it was interrupted.

After the trials: the ``trials`` table, the held-out re-score (``best`` or ``pareto``,
:mod:`orchestrator.search.result_tables`) and the figures (:mod:`orchestrator.search.figures`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from orchestrator.context import TaskContext
from orchestrator.search.evaluate import evaluate_config, rescore_heldout
from orchestrator.search.figures import write_figures
from orchestrator.search.objectives import objective_class
from orchestrator.search.result_tables import chosen_rows, write_chosen, write_trials
from orchestrator.search.space import suggest_params
from orchestrator.search.spec import SearchPlan
from orchestrator.search.study import (
    INTERRUPTED,
    drop_partial_record,
    finished,
    make_sampler,
    open_study,
    recover_stale,
    search_dir,
)
from orchestrator.store.tables import Results

__all__ = ["SearchOutcome", "journal_searcher_class", "run_search"]


@functools.cache
def journal_searcher_class():
    """The searcher class, built on first use: importing Ray must wait until ``start_ray`` has
    set the auth environment (Ray reads it once, on import)."""
    from ray.tune.search import Searcher

    class JournalSearcher(Searcher):
        """A Ray Tune searcher that asks and tells an Optuna study (any storage).

        ``scheduler_stopped`` is filled by :class:`_RecordingASHA` with the ids of trials that the
        scheduler stopped; they are told PRUNED. A trial that ends without its final result and was
        not stopped by the scheduler was interrupted.
        """

        def __init__(self, study, plan: SearchPlan, run_index: int,
                     scheduler_stopped: dict[str, tuple[int, float]], log=print) -> None:
            super().__init__(metric=None, mode=None)
            self.study = study
            self.plan = plan
            self.run_index = run_index
            self.distributions = {d.key: d.distribution() for d in plan.search.dimensions}
            self.scheduler_stopped = scheduler_stopped
            self.live: dict[str, dict[str, Any]] = {}
            self.log = log
            self.told = 0

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True  # the study carries its own objectives and directions

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self.plan.search.conditional:
                trial = self.study.ask()
                suggest_params(trial, self.plan.search.dimensions)
            else:
                trial = self.study.ask(self.distributions)
            trial.set_user_attr("ray_trial_id", trial_id)
            trial.set_user_attr("run", self.run_index)
            self.live[trial_id] = {"trial": trial, "start": time.time(), "curve": []}
            return dict(trial.params)

        def on_trial_result(self, trial_id: str, result: dict, info=None) -> None:
            info = info or self.live.get(trial_id)
            sched = self.plan.search.scheduler
            if info is not None and sched is not None and sched.metric in result \
                    and "step" in result and not result.get("final"):
                info["curve"].append((int(result["step"]), float(result[sched.metric])))

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            info = self.live.pop(trial_id, None)
            if info is None:
                return
            self._finish(trial_id, info, result or {}, error)

        def _finish(self, trial_id: str, info: dict, result: dict, error: bool) -> None:
            import optuna

            trial = info["trial"]
            wall = float(result.get("wall_s", time.time() - info["start"]))
            trial.set_user_attr("wall_s", wall)
            if info["curve"]:
                curve = info["curve"][-200:]
                trial.set_user_attr("curve", curve)
            names = [m.name for m in self.plan.search.metrics]
            if result.get("final") and not result.get("trial_error"):
                metrics = {k[len("m/"):]: float(v) for k, v in result.items()
                           if k.startswith("m/") and isinstance(v, (int, float))}
                trial.set_user_attr("metrics", metrics)
                values = [metrics[n] for n in names]
                if all(math.isfinite(v) for v in values):
                    self.study.tell(trial, values)
                    state = "complete"
                else:
                    trial.set_user_attr("error", "non-finite objective value")
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    state = "failed"
            elif result.get("trial_error") or error:
                trial.set_user_attr("error", str(result.get("trial_error", "the trial raised; see "
                                                                           "its Tune log"))[:4000])
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                state = "failed"
            elif trial_id in self.scheduler_stopped:
                step, value = self.scheduler_stopped[trial_id]
                trial.set_user_attr("curve", (info["curve"] + [(step, value)])[-200:])
                trial.set_user_attr("metrics", {})
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                state = f"pruned at step {step}"
            else:
                self.mark_interrupted(info)
                state = INTERRUPTED
            self.told += 1
            value = ""
            if state == "complete":
                got = trial.user_attrs["metrics"]
                value = "  " + "  ".join(f"{n}={got[n]:.4g}" for n in names)
            self.log(f"trial {trial.number:>3} {state}{value}  ({wall:.1f}s)")

        def mark_interrupted(self, info: dict) -> None:
            import optuna

            trial = info["trial"]
            trial.set_user_attr(INTERRUPTED, True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})

        def interrupt_live(self) -> int:
            """Everything still running (the search is stopping): interrupted, to be rerun."""
            n = 0
            for trial_id in list(self.live):
                info = self.live.pop(trial_id)
                try:
                    self.mark_interrupted(info)
                    self.log(f"trial {info['trial'].number:>3} {INTERRUPTED} (will rerun)")
                    n += 1
                except Exception as err:  # noqa: BLE001  best effort while shutting down
                    self.log(f"could not mark trial {info['trial'].number} interrupted: {err}")
            return n

    return JournalSearcher


def _asha_class():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class _RecordingASHA(ASHAScheduler):
        """ASHA that remembers which trials it stopped (so the searcher can tell PRUNED)."""

        def __init__(self, stopped: dict[str, tuple[int, float]], **kwargs) -> None:
            super().__init__(**kwargs)
            self.stopped = stopped

        def on_trial_result(self, tune_controller, trial, result):
            if result.get(self._time_attr, 0) >= self._max_t:
                # A trial that reached the full budget is finishing, not pruned: let it send
                # its final result.
                return TrialScheduler.CONTINUE
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("final"):
                self.stopped[trial.trial_id] = (int(result[self._time_attr]),
                                                float(result[self._metric]))
            return action

    return _RecordingASHA


@contextlib.contextmanager
def _lenient_metric_check():
    """A trial that raises reports its error without the scheduler's metric (it has none), and
    Tune's strict check would end the whole search on that result; it is off while the search
    runs (ASHA lets such a result pass), and the journal records the trial as failed."""
    name = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    old = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _trial_body(config: dict, plan: SearchPlan, ctx: TaskContext, data_root: str | None,
                cpus: float, attack_cpus: float) -> None:
    """One Tune trial: a configuration evaluated over the fixed search targets."""
    from ray import tune

    start = time.perf_counter()
    try:
        metrics = evaluate_config(plan, dict(config), ctx, data_root, heldout=False,
                                  report=lambda r: tune.report(dict(r)), cpus=cpus,
                                  attack_cpus=attack_cpus)
    except Exception as err:
        if type(err).__name__ in ("StopIteration", "SystemExit"):
            raise
        text = "".join(traceback.format_exception(err))
        tune.report({"trial_error": f"{type(err).__name__}: {err}\n{text[-3000:]}",
                     "wall_s": time.perf_counter() - start})
        return
    final = {f"m/{k}": v for k, v in metrics.items()}
    final.update({"final": 1, "wall_s": time.perf_counter() - start})
    sched = plan.search.scheduler
    if sched is not None and sched.metric in metrics:
        final[sched.metric] = metrics[sched.metric]
        final["step"] = int(metrics.get("iterations", sched.max_t))
    tune.report(final)


# --- the search --------------------------------------------------------------------------------

def _best(study, plan: SearchPlan, results: Results, ctx: TaskContext, log) -> list[dict]:
    """Re-score the chosen configuration(s) on the held-out targets, then write ``best`` or
    ``pareto`` (scores a previous run wrote are reused, not recomputed)."""
    own_models = objective_class(plan.search.objective).own_models
    chosen = chosen_rows(study, plan, results, own_models)
    if chosen is None:
        log("no trial completed; nothing to re-score")
        return []
    if chosen.pending:
        where = ("the held-out side" if own_models
                 else f"{plan.search.heldout} held-out targets")
        log(f"re-scoring {len(chosen.pending)} configuration(s) on {where}")
        scores = rescore_heldout(plan, [params for _, params in chosen.pending], ctx)
        for (row, _), score in zip(chosen.pending, scores):
            row.update({f"heldout.{k}": v for k, v in score.items()})
    return write_chosen(plan, results, chosen)


@dataclass
class SearchOutcome:
    finished: int
    requested: int
    ran: int
    interrupted: bool
    wall_s: float
    best: list[dict[str, Any]]


def _prepare_core(plan: SearchPlan, results: Results, ctx: TaskContext, progress: bool) -> None:
    """Train the base experiment's models on Ray before the trials need them."""
    from orchestrator.engine.execute import dedupe, execute, pending_units
    from orchestrator.engine.plan import plan_core

    objective = objective_class(plan.search.objective)()
    if objective.own_models:
        objective.prepare(plan.base, results, ctx, progress)
        return
    core = plan_core(plan.base, ctx.data_root)
    units = dedupe(core.units)  # the trials load every one of these models
    todo = pending_units(units, results, ctx.store, needed=[u.key for u in units])
    if todo:
        report = execute(units, results, ctx, plan.base.resources, progress=progress,
                         remake_lost=True)
        if report.failed:
            raise RuntimeError(f"training the base models failed: "
                               f"{report.errors[0]['error']}")


def run_search(plan: SearchPlan, results: Results, ctx: TaskContext, *, resume: bool = False,
               num_samples: int | None = None, progress: bool = True, log=print
               ) -> SearchOutcome:
    """Run (or continue) the search until the study holds the requested finished trials."""
    from ray import tune

    start = time.perf_counter()
    dropped = drop_partial_record(results)  # the caller holds the experiment's lock
    if dropped:
        log(f"the study journal ended in a half-written record ({dropped} bytes, from a "
            "stopped search); it was dropped")
    study = open_study(plan, results, resume)
    requested = num_samples or plan.search.budget.trials
    if resume:
        stale = recover_stale(study)
        if stale:
            log(f"{stale} trial(s) were running when the search stopped; they will rerun")
    done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    remaining = max(0, requested - done)
    log(f"{plan.base.experiment}: {done} finished trial(s) in the study, {remaining} to run "
        f"(objective {plan.search.objective}, "
        f"{', '.join(f'{m.direction} {m.name}' for m in plan.search.metrics)})")
    interrupted = False
    ran = 0
    if remaining:
        _prepare_core(plan, results, ctx, progress)
        tune_root = os.path.join(search_dir(results), "tune")
        run_index = (len([d for d in os.listdir(tune_root) if d.startswith("run-")])
                     if os.path.isdir(tune_root) else 0)
        study.sampler = make_sampler(plan, len(study.trials))
        stopped: dict[str, tuple[int, float]] = {}
        searcher = journal_searcher_class()(study, plan, run_index, stopped, log=log)
        scheduler = None
        s = plan.search.scheduler
        if s is not None:
            scheduler = _asha_class()(stopped, time_attr="step", metric=s.metric, mode=s.mode,
                                      max_t=s.max_t, grace_period=s.grace_period,
                                      reduction_factor=s.reduction_factor,
                                      stop_last_trials=False)
        res = plan.base.resources
        cpus, attack_cpus = res.trial.cpus, res.attack.cpus
        trainable = tune.with_parameters(_trial_body, plan=plan, ctx=ctx,
                                         data_root=ctx.data_root, cpus=cpus,
                                         attack_cpus=attack_cpus)
        bundle = {"CPU": cpus, **({"GPU": res.trial.gpus} if res.trial.gpus else {}),
                  **res.trial.custom}
        if plan.search.fanout > 1:
            # Extra bundles for the trial's own Ray tasks (captured by its placement group).
            pgf = tune.PlacementGroupFactory(
                [bundle] + [{"CPU": attack_cpus}] * plan.search.fanout, strategy="PACK")
            trainable = tune.with_resources(trainable, pgf)
        else:
            trainable = tune.with_resources(trainable, tune.PlacementGroupFactory([bundle]))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                max_concurrent_trials=plan.search.concurrency, reuse_actors=True,
                time_budget_s=plan.search.budget.time_s,
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
                trial_name_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(
                name=f"run-{run_index:03d}",
                storage_path=os.path.join(search_dir(results), "tune"),
                verbose=0, log_to_file=True,
                failure_config=tune.FailureConfig(max_failures=0)),
        )
        sigint = signal.getsignal(signal.SIGINT)
        try:
            with _lenient_metric_check():
                tuner.fit()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            # Tune leaves its own SIGINT handler installed (it only sets a flag): put ours back
            # so that Ctrl-C during the held-out evaluation still stops the command.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, sigint)
            if searcher.interrupt_live():
                interrupted = True
        ran = searcher.told
    done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    interrupted = interrupted or done < requested
    write_trials(study, plan, results)
    best: list[dict[str, Any]] = []
    if not interrupted:
        best = _best(study, plan, results, ctx, log)
    try:
        write_figures(study, plan, results, best)
    except Exception as err:  # noqa: BLE001  a figure never fails a search
        log(f"figures skipped: {type(err).__name__}: {err}")
    return SearchOutcome(done, requested, ran, interrupted, time.perf_counter() - start, best)

