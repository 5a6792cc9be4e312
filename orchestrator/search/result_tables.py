"""The search's tables: ``trials`` (one row per study trial) and ``best`` / ``pareto`` (the
chosen configurations re-scored on held-out targets, with the unsearched baseline).

Writing them trains and evaluates nothing: :func:`chosen_rows` says which configurations
still need held-out scores, the caller (:mod:`orchestrator.search.tune`) has them computed
(:func:`orchestrator.search.evaluate.rescore_heldout`), and :func:`write_chosen` writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.search.study import INTERRUPTED, finished
from orchestrator.spec.hashing import stable_hash
from orchestrator.store.tables import Results

if TYPE_CHECKING:  # annotations only: importing the search spec validates objectives
    from orchestrator.search.spec import SearchPlan

__all__ = ["Chosen", "chosen_rows", "pareto_front", "trial_rows", "write_chosen",
           "write_trials"]


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


@dataclass
class Chosen:
    """The rows of ``best`` (or ``pareto``) and the configurations still to score held out."""

    table: str
    rows: list[dict[str, Any]]
    pending: list[tuple[dict[str, Any], dict[str, Any]]]  # (row, params)


def chosen_rows(study, plan: SearchPlan, results: Results, own_models: bool) -> Chosen | None:
    """The chosen configuration(s) of a finished study as rows, with the held-out scores a
    previous run already wrote (cached by parameters and held-out fingerprint). ``own_models``:
    the objective builds its own models (membership), so it has no forget-request targets.
    None when no trial completed."""
    import optuna

    search = plan.search
    complete = [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
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
    if search.baseline and table == "best":
        jobs.append(("baseline", {}, None))
    existing = results.read(table)
    cached = {}
    if not existing.empty and "heldout_key" in existing:
        cached = {r["heldout_key"]: r for r in existing.to_dict("records")}
    rows, pending = [], []
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
    return Chosen(table, rows, pending)


def write_chosen(plan: SearchPlan, results: Results, chosen: Chosen) -> list[dict[str, Any]]:
    """Write ``best``/``pareto`` whole (held-out scores filled in by the caller); on a
    multi-objective search, mark which rows are non-dominated on the held-out scores too."""
    search, rows = plan.search, chosen.rows
    names = [m.name for m in search.metrics]
    if search.multi and rows and all(f"heldout.{n}" in r for r in rows for n in names):
        pts = np.array([[r[f"heldout.{n}"] for n in names] for r in rows])
        for r, keep in zip(rows, pareto_front(pts, search.directions)):
            r["heldout_nondominated"] = bool(keep)
    results.clear(chosen.table)
    results.write(chosen.table, rows)
    return rows
