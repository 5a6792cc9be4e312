"""``pe_analyse``: per-record fits on the scoring pipeline's Parquet, and the stage's tables.

Per method and seed it reads phi (model x record), fits U-LiRA's Gaussians leave-one-out in
every requested variant, and writes

- ``ulira``: one row per (variant, variance) with AUC and TPR at 1 %, 0.1 % and 0 % FPR over
  all (model, record) decisions, the number of models, the per-record epsilon summary and the
  forget score; plus one row per Chen et al. feature, scored on the same odd-numbered pairs as
  the ``ulira_odd`` columns (design ``ulira`` only: the challenge design has no pair that
  never saw a target);
- ``per_example``: one row per target record: IN/OUT counts, phi statistics, its own AUC,
  its epsilon and its exposure rank;

and the curves and epsilons its figures need (``_arrays/per_example/<key>.json``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from orchestrator.spec import Spec
from orchestrator.stages.per_example.models import metrics_key
from orchestrator.stages.per_example.params import PerExampleParams
from orchestrator.stages.per_example.scoring import read_scores
from orchestrator.storage import Location
from orchestrator.tables import ARRAYS_DIR
from orchestrator.units import UNIT_FUNCTIONS, Rows, TaskContext
from tasks.analysis.epsilon import example_epsilons, forget_score
from tasks.analysis.per_example import (
    lira_scores,
    per_record_auc,
    record_summary,
    roc_metrics,
)
from tasks.attacks.membership_features import build_features, fit_and_score, softmax
from tasks.metrics_membership import auc, roc
from tasks.params import to_dict

ARRAYS = "per_example"
FPR_GRID = np.logspace(-4, 0, 121)


def _matrix(table, role: str, n_models: int, n_records: int, column: str) -> np.ndarray:
    """(member, position) -> value for one role, as a dense (models, records[, C]) array."""
    sel = table[table["role"] == role]
    member = sel["member"].to_numpy()
    position = sel["position"].to_numpy()
    values = np.stack(sel[column].to_numpy()) if column == "logits" else sel[column].to_numpy()
    out = np.full((n_models, n_records, *values.shape[1:]), np.nan)
    out[member, position] = values
    if np.isnan(out).any():
        raise ValueError(f"per_example scores: {role} outputs are missing for some "
                         "(member, record): rerun to rescore")
    return out


def _curve(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """TPR at each FPR of the log grid (the largest TPR at or below it), for the figure."""
    ok = ~np.isnan(scores)
    fpr, tpr = roc(labels[ok], scores[ok])
    return [float(tpr[fpr <= f + 1e-12].max()) for f in FPR_GRID]


def _half_leak(record_auc: np.ndarray) -> int:
    """How few records carry half of the total excess AUC (sum of max(0, AUC_r - 0.5))."""
    excess = np.sort(np.clip(np.nan_to_num(record_auc - 0.5), 0, None))[::-1]
    if excess.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(excess), excess.sum() / 2) + 1)


def _epsilons(phi: np.ndarray, member_in: np.ndarray) -> np.ndarray:
    if member_in.all(axis=0).any() or (~member_in).all(axis=0).any():
        raise ValueError("per_example: a target is IN (or OUT) for every model; raise "
                         "per_example.models")
    if (member_in.sum(axis=0) == member_in.sum(axis=0)[0]).all():  # equal sides: one call
        order = np.argsort(~member_in, axis=0, kind="stable")
        n_in = int(member_in[:, 0].sum())
        ranked = np.take_along_axis(phi, order, axis=0)
        return example_epsilons(ranked[:n_in], ranked[n_in:])
    return np.array([example_epsilons(phi[member_in[:, r], r][:, None],
                                      phi[~member_in[:, r], r][:, None])[0]
                     for r in range(phi.shape[1])])


def _chen_rows(params: PerExampleParams, logits_o: np.ndarray, logits_u: np.ndarray,
               member_in: np.ndarray, seed: int) -> list[tuple[str, dict, list[float]]]:
    """Chen et al.'s attack on the same pairs: fitted on even members, scored on odd ones."""
    shadow = np.arange(len(member_in)) % 2 == 0
    out = []
    for feature in params.chen_features:
        p, q = softmax(logits_o), softmax(logits_u)
        n, r, c = p.shape
        x = build_features(feature, p.reshape(n * r, c), q.reshape(n * r, c)).reshape(n, r, -1)
        fitted = fit_and_score(x[shadow].reshape(-1, x.shape[-1]), member_in[shadow].ravel(),
                               x[~shadow].reshape(-1, x.shape[-1]), params.chen_attack_model,
                               seed)
        labels = member_in[~shadow]
        scores = np.asarray(fitted.test).reshape(labels.shape)
        metrics = {**roc_metrics(scores, labels), **_auc_interval(scores, labels, seed)}
        out.append((feature, metrics, _curve(labels.ravel(), scores.ravel())))
    return out


def _utility(ctx: TaskContext, units: dict[str, list[str]]) -> dict[str, float]:
    """The members' accuracies and unlearning time (means over members), from the metrics
    the model units keep beside the weights."""
    out: dict[str, float] = {}
    for role, prefix in (("original", "original"), ("unlearned", "unlearned")):
        parts = [ctx.store.load_arrays(metrics_key(k)) for k in units[role]]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out[f"{prefix}_test_acc"] = float(merged["test_acc"].mean())
        out[f"{prefix}_retain_acc"] = float(merged["retain_acc"].mean())
        if role == "unlearned":
            out["forget_acc"] = float(np.nanmean(merged["forget_acc"]))
            out["unlearn_s_per_model"] = float(merged["wall_s"].mean())
        else:
            out["train_s_per_model"] = float(merged["wall_s"].mean())
    return out


def _record_intervals(n_records: int, stats, rng_key: list[int],
                      rounds: int = 200) -> dict[str, float]:
    """95 % intervals (``<name>_low``, ``<name>_high``) of the statistics ``stats(cols)``
    returns, over target records resampled with replacement: the variation a different draw
    of forgotten records would bring."""
    rng = np.random.default_rng(rng_key)
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, value in stats(rng.integers(0, n_records, n_records)).items():
            draws.setdefault(name, []).append(value)
    out = {}
    for name, values in draws.items():
        out[f"{name}_low"], out[f"{name}_high"] = (float(v) for v in
                                                   np.nanquantile(values, [0.025, 0.975]))
    return out


def _bootstrap(scores: np.ndarray, member_in: np.ndarray, eps: np.ndarray,
               seed: int) -> dict[str, float]:
    """U-LiRA's intervals: AUC, TPR at 1 % and 0.1 % FPR and the median epsilon."""
    def stats(cols):
        metrics = roc_metrics(scores[:, cols], member_in[:, cols])
        return {**{name: metrics[name] for name in ("auc", "tpr_at_1pct", "tpr_at_0_1pct")},
                "median_epsilon": float(np.median(eps[cols]))}

    return _record_intervals(scores.shape[1], stats, [seed, 41])


def _auc_interval(scores: np.ndarray, member_in: np.ndarray, seed: int) -> dict[str, float]:
    """Chen et al.'s AUC interval, as U-LiRA's: near chance the best of several features is
    biased upwards, and the interval says by how much it may move with other records."""
    return _record_intervals(
        scores.shape[1], lambda cols: {"auc": auc(member_in[:, cols].ravel().astype(int),
                                                  scores[:, cols].ravel())}, [seed, 43])


@UNIT_FUNCTIONS.register("pe_analyse")
def pe_analyse(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    settings: PerExampleParams = params["params"]
    method = spec.unlearning[params["method_index"]].method
    targets = np.asarray(params["targets"])
    pairs = params["pairs"]
    n, n_records = len(pairs), len(targets)
    table = read_scores(ctx, params["scores_key"]).to_pandas()
    phi_u = _matrix(table, "unlearned", n, n_records, "phi")
    if settings.design == "ulira":
        forgot = np.zeros((n, n_records), dtype=bool)
        position = {int(t): i for i, t in enumerate(targets)}
        for j, p in enumerate(pairs):
            forgot[j, [position[int(t)] for t in p["forget"]]] = True
        phi, member_in = phi_u, forgot
    else:
        phi_r = _matrix(table, "reference", len(params["references"]), n_records, "phi")
        phi = np.concatenate([phi_u, phi_r])
        member_in = np.concatenate([np.ones_like(phi_u, bool), np.zeros_like(phi_r, bool)])
    eps = _epsilons(phi, member_in)
    score_fs = forget_score(eps, n)
    base = {"experiment": spec.experiment, "config_hash": spec.config_hash,
            "seed": params["seed"], "design": settings.design, "unlearning_method": method,
            "dataset": spec.dataset.name, "model": spec.model.name, "n_models": len(phi),
            "n_records": n_records}
    rows, curves, all_scores = [], {}, {}
    for variant in settings.variants:
        for variance in settings.variances:
            scores = all_scores[(variant, variance)] = lira_scores(phi, member_in, variant,
                                                                   variance)
            metrics = roc_metrics(scores, member_in)
            odd = np.arange(len(phi)) % 2 == 1
            odd_metrics = roc_metrics(scores[odd], member_in[odd])
            row = {**base, "key": f"{params['key']}:{variant}:{variance}", "attack": "ulira",
                   "variant": variant, "variance": variance, **metrics,
                   **{f"odd_{k}": v for k, v in odd_metrics.items()},
                   "median_epsilon": float(np.median(eps)),
                   "p90_epsilon": float(np.quantile(eps, 0.9)), "forget_score": score_fs}
            rows.append(row)
            curves[f"U-LiRA {variant}/{variance}"] = _curve(member_in[odd].ravel(),
                                                              scores[odd].ravel())
    # The per-record view (and the intervals) use the strongest form where it was run.
    main_key = ("online", "per_example") if ("online", "per_example") in all_scores else \
        next(iter(all_scores))
    main = all_scores[main_key]
    record_auc = per_record_auc(main, member_in)
    utility = _utility(ctx, params["model_units"])
    for row in rows:
        row["records_half_leak"] = _half_leak(record_auc)
        row["main"] = (row["variant"], row["variance"]) == main_key
        row.update(utility)
        if row["main"]:
            row.update(_bootstrap(main, member_in, eps, params["seed"]))
    if settings.design == "ulira":
        logits_o = _matrix(table, "original", n, n_records, "logits")
        logits_u = _matrix(table, "unlearned", n, n_records, "logits")
        for feature, metrics, curve in _chen_rows(settings, logits_o, logits_u, member_in,
                                                  params["seed"]):
            rows.append({**base, "key": f"{params['key']}:chen:{feature}",
                         "attack": f"chen_{feature}", "variant": None, "variance": None,
                         **{f"odd_{k}": v for k, v in metrics.items()}})
            curves[f"Chen et al. {feature}"] = curve
    for row in rows:
        row.update(spec.flat_config())
    summary = record_summary(phi, member_in)
    exposure = np.lexsort((-np.nan_to_num(record_auc), -eps))  # most exposed first
    rank = np.empty(n_records, dtype=np.int64)
    rank[exposure] = np.arange(1, n_records + 1)
    labels = table[table["role"] == "unlearned"].drop_duplicates("position") \
        .set_index("position")["label"]
    per_rows = []
    for r in range(n_records):
        per_rows.append({**base, "key": f"{params['key']}:{int(targets[r])}",
                         "record": int(targets[r]), "label": int(labels[r]),
                         "epsilon": float(eps[r]), "record_auc": float(record_auc[r]),
                         "exposure_rank": int(rank[r]),
                         "score_in_mean": float(np.nanmean(main[member_in[:, r], r])),
                         "score_out_mean": float(np.nanmean(main[~member_in[:, r], r])),
                         **{k: float(v[r]) for k, v in summary.items()},
                         **spec.flat_config()})
    chen = [r for r in rows if r["attack"].startswith("chen_")]
    best_chen = max(chen, key=lambda r: r["odd_auc"]) if chen else None
    main_row = next(r for r in rows if r["main"])
    summary_point = {**{k: v for k, v in main_row.items() if isinstance(v, (int, float, bool))
                        or v is None},
                     "chen_auc": best_chen["odd_auc"] if best_chen else None,
                     "chen_auc_low": best_chen["odd_auc_low"] if best_chen else None,
                     "chen_auc_high": best_chen["odd_auc_high"] if best_chen else None,
                     "chen_tpr_at_0_1pct": best_chen["odd_tpr_at_0_1pct"] if best_chen else None,
                     "method_params": json.dumps(to_dict(spec.unlearning[
                         params["method_index"]].typed_params()), sort_keys=True)}
    _write_arrays(ctx, spec, params, method, curves, eps, targets, exposure, summary_point)
    return {"ulira": rows, "per_example": per_rows}


def _write_arrays(ctx: TaskContext, spec: Spec, params: dict, method: str,
                  curves: dict[str, list[float]], eps: np.ndarray, targets: np.ndarray,
                  exposure: np.ndarray, main_row: dict[str, Any]) -> None:
    settings: PerExampleParams = params["params"]
    top = exposure[: settings.exposed]
    point = {"key": params["key"], "method": method, "seed": params["seed"],
             "dataset": spec.dataset.name, "design": settings.design,
             "fpr": FPR_GRID.tolist(), "curves": curves, "epsilons": eps.tolist(),
             "exposed": [int(targets[i]) for i in top],
             "exposed_epsilon": [float(eps[i]) for i in top],
             "auc": main_row["auc"], "summary": main_row}
    Location(ctx.results_uri).write_bytes(json.dumps(point).encode(), spec.experiment,
                                          ARRAYS_DIR, ARRAYS, f"{params['key']}.json")


def read_points(loc: Location, experiment: str, analyses: list[str]) -> list[dict]:
    """The summary points the analyses left for the figures and the leaderboard; a failed
    analysis has none (its row is in the errors table)."""
    points = []
    for key in analyses:
        try:
            points.append(json.loads(loc.read_bytes(experiment, ARRAYS_DIR, ARRAYS,
                                                    f"{key}.json")))
        except FileNotFoundError:
            continue
    return points
