"""The search's tables: ``trials`` (one row per study trial) and ``best`` / ``pareto`` (the
chosen configurations re-scored on held-out targets, with the unsearched baseline)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from orchestrator.search.evaluate import evaluate_config
from orchestrator.search.objectives import objective_class
from orchestrator.search.spec import SearchPlan
from orchestrator.search.study import INTERRUPTED, finished
from orchestrator.spec import stable_hash
from orchestrator.tables import Results
from orchestrator.units import TaskContext

__all__ = ["pareto_front", "trial_rows", "write_best", "write_trials"]


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
    own_models = objective_class(search.objective).own_models
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

