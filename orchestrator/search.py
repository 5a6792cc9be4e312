"""``unlearn-audit tune``: Ray Tune runs the trials, an Optuna study on a journal file decides.

Design (why not Tune's own OptunaSearch + ``Tuner.restore``): the study is the single source
of truth. It lives in ``RESULTS/<experiment>/_search/study.journal`` (Optuna's JournalStorage on
a file, append-only, so a killed process leaves at most one half-written line, which Optuna
skips). :class:`JournalSearcher` is a Ray Tune ``Searcher`` that asks that study for every new
trial and tells it every outcome; Tune provides the scheduling (ASHA), concurrency, resources
and fault handling. Every ``tune`` invocation starts a fresh Tune run under
``RESULTS/<experiment>/_search/tune/run-NNN`` for exactly the trials the study still lacks:

* finished trials (complete, pruned by ASHA, or failed with an error) count towards the budget;
* a trial that was running when the search stopped (Ctrl-C, SIGTERM, a kill, the time budget)
  is marked failed with ``interrupted`` and its parameters are enqueued, so ``--resume`` reruns
  that configuration instead of skipping it: the search ends with exactly ``budget.trials``
  finished trials however often it was interrupted;
* on resume the sampler's seed is advanced by the number of trials the study holds, so a seeded
  search repeats its first trials on a fresh start and never replays them on a resume.

Tables (``RESULTS/<experiment>/``): ``trials`` (one row per study trial: parameters, metrics,
state, wall seconds), ``best`` (single objective: the best trial re-scored on held-out targets,
and the unsearched baseline) or ``pareto`` (several objectives: every non-dominated trial,
re-scored on held-out targets). Figures: ``figures/search_best_so_far.png`` and
``figures/search_pareto.png``.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.search_objectives import OBJECTIVES, TargetSet, ensure_models, prepare_targets
from orchestrator.search_spec import SearchPlan
from orchestrator.spec import stable_hash
from orchestrator.tables import Results
from orchestrator.units import TaskContext

__all__ = [
    "SearchOutcome",
    "add_tune_parser",
    "evaluate_config",
    "journal_searcher_class",
    "open_study",
    "pareto_front",
    "run_search",
    "trial_rows",
]

SEARCH_DIR = "_search"
HELDOUT_SEED_OFFSET = 100_000
INTERRUPTED = "interrupted"


class SearchStateError(RuntimeError):
    """The results directory holds a search that this command may not silently continue."""


# --- the study -------------------------------------------------------------------------------

def search_dir(results: Results) -> str:
    if not results.location.local:
        raise SearchStateError("tune keeps its Optuna journal beside the results and needs a "
                               "local or mounted --results directory, not a URI")
    return results.location.path(results.experiment, SEARCH_DIR)


def open_study(plan: SearchPlan, results: Results, resume: bool):
    """The study on ``_search/study.journal``: created fresh, or continued with --resume."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = search_dir(results)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "study.journal")
    existed = os.path.exists(path) and os.path.getsize(path) > 0
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    name = plan.base.experiment
    search = plan.search
    if existed:
        study = optuna.load_study(study_name=name, storage=storage)
        if study.trials and not resume:
            raise SearchStateError(
                f"{folder} already holds a search with {len(study.trials)} trials; pass "
                "--resume to continue it, or choose another --results directory")
        old = study.user_attrs.get("fingerprint")
        if old and old != search.fingerprint():
            raise SearchStateError(
                "the search space, objective or targets changed since this study began; "
                "continue with the original spec or start in another --results directory")
    else:
        study = optuna.create_study(study_name=name, storage=storage,
                                    directions=search.directions)
        study.set_user_attr("fingerprint", search.fingerprint())
        study.set_user_attr("metrics", [m.name for m in search.metrics])
    return study


def make_sampler(plan: SearchPlan, n_existing: int):
    import optuna

    s = plan.search.sampler
    # A fresh search starts from the spec's seed; a resumed one advances it by the trials
    # already asked, so it does not replay their random draws.
    seed = s.seed + 7919 * n_existing
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # TPE counts the study's finished trials itself when deciding whether it is past startup.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials,
                                      multivariate=s.multivariate,
                                      constant_liar=plan.search.concurrency > 1)


def finished(trial) -> bool:
    """Counts towards the budget: complete, pruned, or failed with an error (not interrupted)."""
    import optuna

    state = trial.state
    if state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
        return True
    return state == optuna.trial.TrialState.FAIL and not trial.user_attrs.get(INTERRUPTED)


def recover_stale(study) -> int:
    """Trials left RUNNING by a killed search: mark them interrupted, enqueue their params."""
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.RUNNING]
    storage = study._storage
    for t in stale:
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"rerun_of": t.number})
    return len(stale)


# --- Ray Tune side -----------------------------------------------------------------------------

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


def suggest_params(trial, dimensions) -> dict[str, Any]:
    """Define-by-run sampling of a space with ``when:`` conditions: every dimension whose
    conditions hold on the values sampled before it, in declaration order."""
    params: dict[str, Any] = {}
    for dim in dimensions:
        if not dim.active(params):
            continue
        if dim.kind == "choice":
            params[dim.key] = trial.suggest_categorical(dim.key, list(dim.choices))
        elif dim.kind == "int":
            params[dim.key] = trial.suggest_int(dim.key, int(dim.low), int(dim.high),
                                                step=int(dim.step or 1), log=dim.log)
        else:
            params[dim.key] = trial.suggest_float(dim.key, float(dim.low), float(dim.high),
                                                  step=dim.step, log=dim.kind == "loguniform")
    return params


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


# --- evaluating one configuration --------------------------------------------------------------

def evaluate_config(plan: SearchPlan, params: dict[str, Any], ctx: TaskContext,
                    data_root: str | None, *, heldout: bool, report=None, cpus: float = 1,
                    attack_cpus: float = 1) -> dict[str, float]:
    """Mean metrics of one configuration over the search targets (or the held-out ones).

    With ``search.fanout > 1`` and no intermediate reports wanted, the targets are split into
    that many Ray tasks; otherwise they run here as one (vectorised) program.
    """
    import torch

    from tasks.training import seed_everything

    torch.set_num_threads(max(1, int(cpus)))
    search = plan.search
    spec = plan.trial_spec(params)
    objective = OBJECTIVES.get(search.objective)()
    config = objective.config(plan.attack_settings(params))
    if objective.own_models:
        # The objective builds its own models and splits (membership: shadow vs target side).
        split = objective.evaluate_split(spec, config, ctx, data_root, heldout=heldout)
        return {k: float(np.mean(v)) for k, v in split.items()}
    core = ensure_models(spec, ctx, data_root)
    if heldout:
        targets = prepare_targets(core, search.targets, search.heldout, HELDOUT_SEED_OFFSET)
    else:
        targets = prepare_targets(core, 0, search.targets, 0)
    seed_everything(spec.seeds[0])
    fan = min(search.fanout, len(targets.pairs))
    if fan > 1 and (report is None or search.scheduler is None):
        import ray

        chunks = np.array_split(np.arange(len(targets.pairs)), fan)
        remote = ray.remote(_evaluate_chunk).options(num_cpus=attack_cpus)
        refs = [remote.remote(plan, params, ctx, data_root, heldout,
                              [int(i) for i in c], attack_cpus) for c in chunks if len(c)]
        parts = ray.get(refs)
        per_target = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        per_target = objective.evaluate(targets, ctx, config, report)
    out = {k: float(np.mean(v)) for k, v in per_target.items()}
    out["targets"] = float(len(targets.pairs))
    return out


def _evaluate_chunk(plan: SearchPlan, params: dict, ctx: TaskContext, data_root: str | None,
                    heldout: bool, indices: list[int], cpus: float) -> dict[str, np.ndarray]:
    """A Ray task: one slice of a trial's targets (seeds as in the whole trial)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    search = plan.search
    spec = plan.trial_spec(params)
    objective = OBJECTIVES.get(search.objective)()
    config = objective.config(plan.attack_settings(params))
    core = ensure_models(spec, ctx, data_root)
    start, count, offset = ((search.targets, search.heldout, HELDOUT_SEED_OFFSET) if heldout
                            else (0, search.targets, 0))
    full = prepare_targets(core, start, count, offset)
    out: dict[str, list[np.ndarray]] = {}
    for i in indices:  # one target at a time keeps each target's seed (offset + i)
        one = TargetSet(spec, core, [full.pairs[i]], offset + i)
        for k, v in objective.evaluate(one, ctx, config, None).items():
            out.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in out.items()}


# --- the search --------------------------------------------------------------------------------

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
    from orchestrator.execute import dedupe, execute, pending_units
    from orchestrator.plan import plan_core

    objective = OBJECTIVES.get(plan.search.objective)()
    if objective.own_models:
        objective.prepare(plan.base, results, ctx, progress)
        return
    core = plan_core(plan.base, ctx.data_root)
    todo = pending_units(dedupe(core.units), results)
    if todo:
        report = execute(core.units, results, ctx, plan.base.resources, progress=progress)
        if report.failed:
            raise RuntimeError(f"training the base models failed: "
                               f"{report.errors[0]['error']}")


def run_search(plan: SearchPlan, results: Results, ctx: TaskContext, *, resume: bool = False,
               num_samples: int | None = None, progress: bool = True, log=print
               ) -> SearchOutcome:
    """Run (or continue) the search until the study holds the requested finished trials."""
    from ray import tune

    start = time.perf_counter()
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
        best = write_best(study, plan, results, ctx, log=log)
    try:
        write_figures(study, plan, results, best)
    except Exception as err:  # noqa: BLE001  a figure never fails a search
        log(f"figures skipped: {type(err).__name__}: {err}")
    return SearchOutcome(done, requested, ran, interrupted, time.perf_counter() - start, best)


# --- tables ------------------------------------------------------------------------------------

def trial_rows(study, plan: SearchPlan) -> list[dict[str, Any]]:
    rows = []
    names = [m.name for m in plan.search.metrics]
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if t.user_attrs.get(INTERRUPTED):
            state = INTERRUPTED
        row: dict[str, Any] = {
            "key": f"{plan.base.experiment}-trial-{t.number:05d}",
            "experiment": plan.base.experiment, "trial": t.number, "state": state,
            "finished": finished(t), "objective": plan.search.objective,
            "sampler": plan.search.sampler.name, "sampler_seed": plan.search.sampler.seed,
            "wall_s": t.user_attrs.get("wall_s"), "run": t.user_attrs.get("run"),
            "ray_trial_id": t.user_attrs.get("ray_trial_id"),
            "rerun_of": t.user_attrs.get("rerun_of"), "error": t.user_attrs.get("error"),
        }
        for dim in plan.search.dimensions:
            row[f"param.{dim.key}"] = t.params.get(dim.key)
        metrics = t.user_attrs.get("metrics") or {}
        for k, v in metrics.items():
            row[f"metric.{k}"] = v
        for i, n in enumerate(names):
            row[f"value.{n}"] = t.values[i] if t.values else None
        curve = t.user_attrs.get("curve")
        if curve:
            row["last_step"] = curve[-1][0]
            row["last_intermediate"] = curve[-1][1]
        rows.append(row)
    return rows


def write_trials(study, plan: SearchPlan, results: Results) -> None:
    # The journal is the source of truth; the table is rewritten whole from it each time.
    rows = trial_rows(study, plan)
    if rows:
        results.clear("trials")
        results.write("trials", rows)


def pareto_front(points: np.ndarray, directions: list[str]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` (n, m) under ``directions``."""
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    p = points * sign  # larger is better everywhere
    keep = np.ones(len(p), dtype=bool)
    for i in range(len(p)):
        dominated = np.all(p >= p[i], axis=1) & np.any(p > p[i], axis=1)
        keep[i] = not dominated.any()
    return keep


def _heldout(plan: SearchPlan, params: dict, ctx: TaskContext) -> dict[str, float]:
    res = plan.base.resources.trial
    return evaluate_config(plan, params, ctx, ctx.data_root, heldout=True, cpus=res.cpus,
                           attack_cpus=plan.base.resources.attack.cpus)


def write_best(study, plan: SearchPlan, results: Results, ctx: TaskContext, log=print
               ) -> list[dict[str, Any]]:
    """Re-score the chosen configuration(s) on the held-out targets; write ``best``/``pareto``.

    Held-out scores are cached in the table by (parameters, held-out fingerprint), so a rerun
    of a finished search does not recompute them.
    """
    import optuna

    search = plan.search
    names = [m.name for m in search.metrics]
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        log("no trial completed; nothing to re-score")
        return []
    if search.multi:
        table = "pareto"
        pts = np.array([t.values for t in complete])
        chosen = [(t, "pareto") for t, keep in
                  zip(complete, pareto_front(pts, search.directions)) if keep]
    else:
        table = "best"
        sign = 1 if search.directions[0] == "maximize" else -1
        top = max(complete, key=lambda t: sign * t.values[0])
        chosen = [(top, "best")]
    heldout_id = stable_hash({"fp": search.fingerprint(), "heldout": search.heldout,
                              "spec": plan.base.config_hash})
    jobs: list[tuple[str, dict, Any]] = [(role, dict(t.params), t) for t, role in chosen]
    # Objectives with their own models (membership) have no forget-request targets.
    own_models = OBJECTIVES.get(search.objective).own_models
    if search.baseline and table == "best":
        jobs.append(("baseline", {}, None))
    existing = results.read(table)
    cached = {}
    if not existing.empty and "heldout_key" in existing:
        cached = {r["heldout_key"]: r for r in existing.to_dict("records")}
    rows = []
    pending = []
    for role, params, trial in jobs:
        hkey = stable_hash({"h": heldout_id, "params": params}, 20)
        row: dict[str, Any] = {
            "key": f"{role}-{hkey}" if role != "pareto" else f"pareto-{hkey}",
            "heldout_key": hkey, "experiment": plan.base.experiment, "role": role,
            "trial": trial.number if trial is not None else None,
            "objective": search.objective, "sampler": search.sampler.name,
            "search_targets": None if own_models else search.targets,
            "heldout_targets": None if own_models else search.heldout,
            "params": json.dumps(params, sort_keys=True, default=str)}
        for dim in search.dimensions:
            row[f"param.{dim.key}"] = params.get(dim.key)
        if trial is not None:
            for k, v in (trial.user_attrs.get("metrics") or {}).items():
                row[f"search.{k}"] = v
        rows.append(row)
        if hkey in cached and any(c.startswith("heldout.") for c in cached[hkey]):
            row.update({k: v for k, v in cached[hkey].items() if k.startswith("heldout.")})
        elif search.heldout > 0:
            pending.append((row, params))
    if pending:
        where = ("the held-out side" if own_models
                 else f"{search.heldout} held-out targets")
        log(f"re-scoring {len(pending)} configuration(s) on {where}")
        scores = _run_heldout(plan, [p for _, p in pending], ctx)
        for (row, _), score in zip(pending, scores):
            row.update({f"heldout.{k}": v for k, v in score.items()})
    if search.multi and rows and all(f"heldout.{n}" in r for r in rows for n in names):
        pts = np.array([[r[f"heldout.{n}"] for n in names] for r in rows])
        for r, keep in zip(rows, pareto_front(pts, search.directions)):
            r["heldout_nondominated"] = bool(keep)
    results.clear(table)
    results.write(table, rows)
    return rows


def _run_heldout(plan: SearchPlan, configs: list[dict], ctx: TaskContext) -> list[dict]:
    """Held-out scores, one Ray task per configuration (inline when Ray is not running)."""
    import ray

    if not ray.is_initialized() or len(configs) == 1 and plan.search.fanout > 1:
        return [_heldout(plan, c, ctx) for c in configs]
    res = plan.base.resources.trial
    remote = ray.remote(_heldout).options(num_cpus=res.cpus, num_gpus=res.gpus or None)
    return ray.get([remote.remote(plan, c, ctx) for c in configs])


# --- figures -----------------------------------------------------------------------------------

def _save(fig, results: Results, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return results.location.write_bytes(buf.getvalue(), results.experiment, "figures", name)


def write_figures(study, plan: SearchPlan, results: Results, best: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    search = plan.search
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    paths = []
    names = [m.name for m in search.metrics]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for j, (name, direction) in enumerate(zip(names, search.directions)):
        ax = axes[0, j]
        xs = [t.number for t in complete]
        ys = [t.values[j] for t in complete]
        ax.scatter(xs, ys, s=14, color="tab:blue", alpha=0.6, label="complete trial")
        pruned = [t.number for t in trials if t.state == optuna.trial.TrialState.PRUNED]
        if pruned:
            lo = min(ys)
            ax.scatter(pruned, [lo] * len(pruned), marker="x", s=14, color="tab:gray",
                       label="pruned (ASHA)")
        order = sorted(zip(xs, ys))
        running, best_so_far = [], None
        for _, y in order:
            if best_so_far is None or (y > best_so_far if direction == "maximize"
                                       else y < best_so_far):
                best_so_far = y
            running.append(best_so_far)
        ax.step([x for x, _ in order], running, where="post", color="tab:red",
                label="best so far")
        for row in best:
            if row.get("role") == "baseline" and f"heldout.{name}" in row:
                ax.axhline(row[f"heldout.{name}"], color="k", ls=":",
                           label="baseline (held-out)")
            if row.get("role") == "best" and f"heldout.{name}" in row:
                ax.axhline(row[f"heldout.{name}"], color="tab:red", ls="--",
                           label="best (held-out)")
        ax.set_xlabel("trial number")
        ax.set_ylabel(f"{name} ({direction})")
        ax.set_title(f"{plan.base.experiment}: {search.sampler.name}")
        ax.legend(fontsize=7)
    paths.append(_save(fig, results, "search_best_so_far.png"))
    if search.multi and len(names) >= 2:
        pts = np.array([t.values[:2] for t in complete])
        keep = pareto_front(np.array([t.values for t in complete]), search.directions)
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.scatter(pts[:, 0], pts[:, 1], s=14, color="tab:gray", alpha=0.6, label="trial")
        front = pts[keep]
        front = front[np.argsort(front[:, 0])]
        ax.plot(front[:, 0], front[:, 1], "o-", color="tab:red", label="Pareto front (search)")
        held = [r for r in best if f"heldout.{names[0]}" in r and f"heldout.{names[1]}" in r]
        if held:
            ax.scatter([r[f"heldout.{names[0]}"] for r in held],
                       [r[f"heldout.{names[1]}"] for r in held], marker="s", s=26,
                       facecolors="none", edgecolors="tab:blue", label="held-out re-score")
        ax.set_xlabel(f"{names[0]} ({search.directions[0]})")
        ax.set_ylabel(f"{names[1]} ({search.directions[1]})")
        ax.set_title(f"{plan.base.experiment}: Pareto front")
        ax.legend(fontsize=7)
        paths.append(_save(fig, results, "search_pareto.png"))
    return paths


# --- CLI ---------------------------------------------------------------------------------------

def cmd_tune(args: argparse.Namespace) -> int:
    from orchestrator.cli import _fail, resolved_data_root, task_context
    from orchestrator.execute import start_ray, stop_ray
    from orchestrator.search_spec import load_search_file
    from orchestrator.spec import SpecError
    from tasks.data import MissingDataError

    try:
        plan = load_search_file(args.spec, args.set)
    except SpecError as err:
        return _fail(f"spec error: {err}")
    if args.num_samples is not None and args.num_samples < 1:
        return _fail("--num-samples: must be at least 1")
    data_root = resolved_data_root(args)
    results = Results(args.results, plan.base.experiment)
    try:
        search_dir(results)
        from orchestrator.plan import plan_core

        plan_core(plan.base, data_root)  # fails early on missing data
    except (SearchStateError, MissingDataError, ValueError) as err:
        return _fail(str(err))
    ctx = task_context(args, results, plan.base, data_root)
    try:
        # Refuse an existing study without --resume before starting anything.
        open_study(plan, results, args.resume)
    except SearchStateError as err:
        return _fail(str(err))
    info = None
    try:
        info = start_ray(args.address, num_cpus=args.num_cpus, auth=not args.no_auth)
        outcome = run_search(plan, results, ctx, resume=args.resume,
                             num_samples=args.num_samples, progress=not args.quiet)
    except SearchStateError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("\ninterrupted: the study is saved; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    finally:
        if info is not None:
            stop_ray()
    print(f"\n{outcome.finished}/{outcome.requested} trials finished ({outcome.ran} this run) "
          f"in {outcome.wall_s:.1f}s")
    for row in outcome.best:
        scores = ", ".join(f"{k}={v:.4g}" for k, v in row.items()
                           if k.startswith(("heldout.", "search.")) and isinstance(v, float))
        print(f"  {row['role']:<8} trial {row['trial']}: {row['params']}\n    {scores}")
    print(f"tables: {results.location.uri}/{plan.base.experiment}/(trials, "
          f"{'pareto' if plan.search.multi else 'best'})")
    if outcome.interrupted:
        print("the search stopped before its budget; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    return 0


def add_tune_parser(sub) -> None:
    tune = sub.add_parser(
        "tune", help="search attack or defence settings (Ray Tune + Optuna)",
        description="Search the space of a spec's search: section. The Optuna study is kept "
                    "in RESULTS/<experiment>/_search/study.journal; --resume continues it.")
    tune.add_argument("spec", help="YAML spec with a search: section, e.g. "
                                   "search_spaces/inversion_search.yaml")
    tune.add_argument("--results", default="RESULTS", help="results directory (default: RESULTS)")
    tune.add_argument("--artifacts", default=None,
                      help="artifact store (default: <results>/_artifacts)")
    tune.add_argument("--num-samples", type=int, default=None,
                      help="finished trials wanted (default: search.budget.trials)")
    tune.add_argument("--resume", action="store_true",
                      help="continue the study in the results directory")
    tune.add_argument("--address", default=None,
                      help="join this Ray cluster (default: $RAY_ADDRESS, else a local "
                           "loopback-only Ray)")
    tune.add_argument("--data-root", default=None, help="folder holding the datasets")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a spec value, e.g. --set search.budget.trials=10")
    tune.add_argument("--num-cpus", type=int, default=None,
                      help="CPUs for the local Ray (default: all)")
    tune.add_argument("--no-auth", action="store_true",
                      help="start the local Ray without token authentication (not advised)")
    tune.add_argument("--quiet", action="store_true", help="no progress bar")
    tune.set_defaults(func=cmd_tune)
