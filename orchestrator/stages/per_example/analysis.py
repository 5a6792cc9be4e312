"""``pe_analyse``: per-record fits on the scoring pipeline's Parquet, and the stage's tables.

Per method and seed it reads phi (model x record), fits U-LiRA's Gaussians leave-one-out in
every requested variant, and writes

- ``ulira``: one row per (variant, variance) with AUC and TPR at 1 %, 0.1 % and 0 % FPR over
  all (model, record) decisions, the per-record epsilon summary and the forget score (K =
  models a side), the records named as leaking at the run's false-discovery rate, the
  (epsilon, delta) lower bound the attack certifies at 95 % confidence, and the run's own
  null control (the ranges these statistics take when nothing leaks, from permutations of
  which model unlearned which record); the main row (online; fixed variance below 64
  models a side, LiRA's advice) also carries 95 % intervals over models and records. Plus one row per Chen et al. feature,
  scored on the same odd-numbered pairs as the ``odd_`` columns (design ``ulira`` only: the
  challenge design has no pair that never saw a target);
- ``per_example``: one row per target record: IN/OUT counts, phi statistics, its AUC (models
  that unlearned it against models that never saw it: 0.5 in expectation when nothing
  leaks), its permutation p-value, whether it is named at the false-discovery rate, its
  epsilon and its exposure rank;
- ``budget`` (design ``ulira``): what a shadow budget buys, U-LiRA and Chen et al. fitted on
  2, 4, 8, ... of the even members and scored on the odd ones, with intervals
  (:mod:`tasks.analysis.budget`);

and, handed on to the figures and the leaderboard (:mod:`orchestrator.store.handoff`), the
curves and epsilons they need.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.per_example.models import metrics_key
from orchestrator.stages.per_example.params import PerExampleParams
from orchestrator.stages.per_example.scoring import read_scores
from orchestrator.store.handoff import HANDOFF, Handoff
from tasks.analysis.budget import budget_scores, per_side_budgets
from tasks.analysis.dp_bounds import attack_epsilon_lower_bound
from tasks.analysis.epsilon import forget_score
from tasks.analysis.null_control import (
    below_chance,
    membership_epsilons,
    permutation_null,
    within_null,
)
from tasks.analysis.per_example import lira_scores, record_summary, roc_metrics
from tasks.analysis.record_tests import benjamini_hochberg, record_auc, record_pvalues
from tasks.analysis.statistics import roc
from tasks.attacks.membership_features import build_features, fit_and_score, softmax
from tasks.params import to_dict
from tasks.unlearning import UNLEARNING

FPR_GRID = np.logspace(-4, 0, 121)
# LiRA (Carlini et al. 2022) fits one variance for all records below about 64 shadow models
# a side: per-record variances from fewer are too noisy.
FIXED_VARIANCE_BELOW = 64
INTERVALS = "models and records (two-way bootstrap of the scored decisions, not refitted)"


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


def _half_leak(auc_by_record: np.ndarray) -> int:
    """How few records carry half of the total excess AUC (sum of max(0, AUC_r - 0.5))."""
    excess = np.sort(np.clip(np.nan_to_num(auc_by_record - 0.5), 0, None))[::-1]
    if excess.sum() <= 0:
        return 0
    return int(np.searchsorted(np.cumsum(excess), excess.sum() / 2) + 1)


def _bound(scores: np.ndarray, labels: np.ndarray, select: np.ndarray,
           evaluate: np.ndarray) -> dict[str, float | str]:
    """The (epsilon, delta) lower bound certified at 95 %: threshold chosen on the ``select``
    models, certified on the disjoint ``evaluate`` ones."""
    got = attack_epsilon_lower_bound(scores[select].ravel(), labels[select].ravel(),
                                     scores[evaluate].ravel(), labels[evaluate].ravel())
    return {"epsilon_lb": float(got["epsilon_lb"]), "epsilon_lb_tpr": float(got["tpr"]),
            "epsilon_lb_fpr": float(got["fpr"]), "epsilon_lb_direction": got["direction"]}


def _chen_rows(params: PerExampleParams, logits_o: np.ndarray, logits_u: np.ndarray,
               member_in: np.ndarray, seed: int) -> list[tuple[str, dict, list[float]]]:
    """Chen et al.'s attack on the same pairs: fitted on even members, scored on odd ones
    (its epsilon bound: threshold chosen on members 1, 5, 9, ..., certified on 3, 7, ...)."""
    shadow = np.arange(len(member_in)) % 2 == 0
    odd_index = np.arange(int((~shadow).sum()))
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
        metrics = {**roc_metrics(scores, labels), **_intervals(scores, labels, None, seed),
                   **_bound(scores, labels, odd_index % 2 == 0, odd_index % 2 == 1)}
        out.append((feature, metrics, _curve(labels.ravel(), scores.ravel())))
    return out


def _budget_rows(settings: PerExampleParams, phi: np.ndarray, member_in: np.ndarray,
                 logits_o: np.ndarray, logits_u: np.ndarray, seed: int) -> list[dict]:
    """What a shadow budget buys (table ``budget``): U-LiRA (offline, online) and Chen et
    al.'s attack fitted on a growing number of the even members, all scored on the odd ones
    (the pairs the ``ulira`` table's ``odd_`` columns and Chen et al.'s rows are scored on)."""
    shadow = np.arange(len(phi)) % 2 == 0
    labels = member_in[~shadow]
    order = np.random.default_rng([seed, 59]).permutation(int(shadow.sum()))
    p, q = softmax(logits_o), softmax(logits_u)
    n, r, c = p.shape
    features = {f: build_features(f, p.reshape(n * r, c), q.reshape(n * r, c)).reshape(n, r, -1)
                for f in settings.chen_features}
    out = []
    for per_side in per_side_budgets(member_in[shadow]):
        found: list[tuple[str, int, np.ndarray]] = [
            (f"ulira_{variant}", per_side * (2 if variant == "online" else 1),
             budget_scores(phi[shadow], member_in[shadow], phi[~shadow], per_side, variant,
                           seed))
            for variant in ("offline", "online")]
        models = min(2 * per_side, len(order))  # Chen et al.: whole shadow pairs
        fit_on = np.flatnonzero(shadow)[order[:models]]
        for feature, x in features.items():
            fitted = fit_and_score(x[fit_on].reshape(-1, x.shape[-1]),
                                   member_in[fit_on].ravel(),
                                   x[~shadow].reshape(-1, x.shape[-1]),
                                   settings.chen_attack_model, seed)
            found.append((f"chen_{feature}", models,
                          np.asarray(fitted.test).reshape(labels.shape)))
        for attack, models_used, scores in found:
            out.append({"attack": attack, "shadow_models": models_used, "per_side": per_side,
                        "n_target_models": len(labels),
                        "n_records_scored": int((~np.isnan(scores).all(0)).sum()),
                        **roc_metrics(scores, labels), **_intervals(scores, labels, None, seed)})
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


def _intervals(scores: np.ndarray, member_in: np.ndarray, eps: np.ndarray | None, seed: int,
               rounds: int = 200) -> dict[str, float]:
    """95 % percentile intervals (``<name>_low``, ``<name>_high``) of AUC and TPR at 1 % and
    0.1 % FPR over models and records resampled together (a different draw of forgotten
    records and of trained models), and of the median epsilon over records (a record's
    epsilon is fitted on all models, so models are not resampled for it)."""
    rng = np.random.default_rng([seed, 41])
    n_models, n_records = scores.shape
    draws: dict[str, list[float]] = {}
    for _ in range(rounds):
        rows = rng.integers(0, n_models, n_models)
        cols = rng.integers(0, n_records, n_records)
        picked, labels = scores[np.ix_(rows, cols)], member_in[np.ix_(rows, cols)]
        if labels.all() or not labels.any():
            continue
        metrics = roc_metrics(picked, labels)
        for name in ("auc", "tpr_at_1pct", "tpr_at_0_1pct"):
            draws.setdefault(name, []).append(metrics[name])
        if eps is not None:
            draws.setdefault("median_epsilon", []).append(float(np.nanmedian(eps[cols])))
    out = {}
    for name, values in draws.items():
        out[f"{name}_low"], out[f"{name}_high"] = (float(v) for v in
                                                   np.nanquantile(values, [0.025, 0.975]))
    return out


def _main_key(all_scores: dict, per_side: int) -> tuple[str, str]:
    want = ("online", "fixed" if per_side < FIXED_VARIANCE_BELOW else "per_example")
    return want if want in all_scores else next(iter(all_scores))


def _calibration(method: str, within: bool, design: str, per_side: int,
                 variance: str) -> str | None:
    """The null control's verdict on an exact method (one that retrains): a perfect
    unlearner, so its numbers must lie in the run's permutation null; None for other methods."""
    cls = UNLEARNING.get(method)
    if not (cls.exact and cls.retrains_from_scratch):
        return None
    if within:
        return "calibrated: exact retraining reads inside the run's permutation null"
    why = [f"{per_side} models a side"]
    if variance == "per_example" and per_side < FIXED_VARIANCE_BELOW:
        why.append("per-record variances fitted from so few models are noisy "
                   "(per_example.variances: [fixed])")
    if design == "challenge":
        why.append("unlearned models and retrained references must follow one recipe")
    return ("not calibrated: exact retraining reads as a leak outside the run's permutation "
            "null (" + "; ".join(why) + ")")


def _record_stats(phi: np.ndarray, member_in: np.ndarray, eps: np.ndarray,
                  settings: PerExampleParams, seed: int) -> dict[str, np.ndarray]:
    """Per record: its AUC, permutation p-value, whether named at the FDR, exposure rank."""
    auc_r = record_auc(phi, member_in)
    p = record_pvalues(phi, member_in, permutations=settings.permutations, seed=seed)
    named = benjamini_hochberg(p, settings.fdr)
    # Smallest p first, then largest epsilon; records without either last.
    exposure = np.lexsort((np.nan_to_num(-eps, nan=np.inf), np.nan_to_num(p, nan=2.0)))
    rank = np.empty(len(eps), dtype=np.int64)
    rank[exposure] = np.arange(1, len(eps) + 1)
    return {"auc": auc_r, "p": p, "named": named, "rank": rank, "exposure": exposure}


def _record_counts(stats: dict[str, np.ndarray], fdr: float) -> dict[str, float | int]:
    named, auc_r = stats["named"], stats["auc"]
    return {"records_leaking": int(named.sum()), "fdr": fdr,
            "records_under_unlearned": int((named & (auc_r > 0.5)).sum()),
            "records_over_unlearned": int((named & (auc_r < 0.5)).sum()),
            "mean_record_auc": float(np.nanmean(auc_r)),
            "records_half_leak": _half_leak(auc_r)}


@UNIT_FUNCTIONS.register("pe_analyse")
def pe_analyse(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    settings: PerExampleParams = params["params"]
    method = spec.unlearning[params["method_index"]].method
    seed = int(params["seed"])
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
        # Each target is IN for about half the members: K (the forget score's models a
        # side) is that half; the OUT side never saw the record (it was not retrained).
        per_side, sides = n // 2, "unlearned vs never-seen members"
    else:
        phi_r = _matrix(table, "reference", len(params["references"]), n_records, "phi")
        phi = np.concatenate([phi_u, phi_r])
        member_in = np.concatenate([np.ones_like(phi_u, bool), np.zeros_like(phi_r, bool)])
        per_side, sides = n, "unlearned vs retrained references"
    estimator = settings.epsilon_estimator
    eps = membership_epsilons(phi, member_in, estimator)
    # A record with fewer than two models on a side has no epsilon (NaN): left out of its
    # summaries, which say over how many records they are (n_records_epsilon).
    scored_eps = eps[~np.isnan(eps)]
    if not len(scored_eps):
        raise ValueError("per_example: no target has two models on each side; raise "
                         "per_example.models")
    score_fs = forget_score(scored_eps, per_side)
    base = {"experiment": spec.experiment, "config_hash": spec.config_hash,
            "seed": seed, "design": settings.design, "unlearning_method": method,
            "dataset": spec.dataset.name, "model": spec.model.name, "n_models": len(phi),
            "n_records": n_records}
    rows, curves, all_scores = [], {}, {}
    odd = np.arange(len(phi)) % 2 == 1
    for variant in settings.variants:
        for variance in settings.variances:
            scores = all_scores[(variant, variance)] = lira_scores(phi, member_in, variant,
                                                                   variance)
            metrics = roc_metrics(scores, member_in)
            odd_metrics = roc_metrics(scores[odd], member_in[odd])
            row = {**base, "key": f"{params['key']}:{variant}:{variance}", "attack": "ulira",
                   "variant": variant, "variance": variance, **metrics,
                   **{f"odd_{k}": v for k, v in odd_metrics.items()},
                   **_bound(scores, member_in, ~odd, odd),
                   "median_epsilon": float(np.median(scored_eps)),
                   "p90_epsilon": float(np.quantile(scored_eps, 0.9)),
                   "n_records_epsilon": len(scored_eps), "forget_score": score_fs,
                   "forget_score_k": per_side, "epsilon_estimator": estimator,
                   "epsilon_sides": sides, "models_per_side": per_side}
            rows.append(row)
            curves[f"U-LiRA {variant}/{variance}"] = _curve(member_in[odd].ravel(),
                                                              scores[odd].ravel())
    main_key = _main_key(all_scores, per_side)
    main = all_scores[main_key]
    stats = _record_stats(phi, member_in, eps, settings, seed)
    counts = _record_counts(stats, settings.fdr)
    null = permutation_null(phi, member_in, *main_key, estimator, settings.null_runs,
                            settings.null_epsilon_runs, seed)
    utility = _utility(ctx, params["model_units"])
    for row in rows:
        row.update(counts)
        row["main"] = (row["variant"], row["variance"]) == main_key
        row.update(utility)
        if row["main"]:
            row.update(_intervals(main, member_in, eps, seed), **null,
                       intervals_over=INTERVALS)
            row["within_null"] = within_null(null)
            row["below_chance"] = below_chance(row["auc"], null)
            row["calibration"] = _calibration(method, row["within_null"], settings.design,
                                              per_side, main_key[1])
    budget_rows = []
    if settings.design == "ulira":
        logits_o = _matrix(table, "original", n, n_records, "logits")
        logits_u = _matrix(table, "unlearned", n, n_records, "logits")
        for row in _budget_rows(settings, phi, member_in, logits_o, logits_u, seed):
            budget_rows.append({**base, **row, **spec.flat_config(),
                                "key": f"{params['key']}:{row['attack']}:{row['per_side']}"})
        for feature, metrics, curve in _chen_rows(settings, logits_o, logits_u, member_in,
                                                  seed):
            rows.append({**base, "key": f"{params['key']}:chen:{feature}",
                         "attack": f"chen_{feature}", "variant": None, "variance": None,
                         **{f"odd_{k}": v for k, v in metrics.items()}})
            curves[f"Chen et al. {feature}"] = curve
    for row in rows:
        row.update(spec.flat_config())
    summary = record_summary(phi, member_in)
    labels = table[table["role"] == "unlearned"].drop_duplicates("position") \
        .set_index("position")["label"]
    per_rows = []
    for r in range(n_records):
        per_rows.append({**base, "key": f"{params['key']}:{int(targets[r])}",
                         "record": int(targets[r]), "label": int(labels[r]),
                         "epsilon": float(eps[r]), "record_auc": float(stats["auc"][r]),
                         "record_p": float(stats["p"][r]), "leaks": bool(stats["named"][r]),
                         "exposure_rank": int(stats["rank"][r]),
                         "score_in_mean": float(np.nanmean(main[member_in[:, r], r])),
                         "score_out_mean": float(np.nanmean(main[~member_in[:, r], r])),
                         **{k: float(v[r]) for k, v in summary.items()},
                         **spec.flat_config()})
    main_row = next(r for r in rows if r.get("main"))
    point = figure_point(spec, params, method, curves, eps, targets, stats["exposure"],
                         _summary_point(spec, params, rows, main_row))
    point["budget"] = [{k: row.get(k) for k in BUDGET_POINT} for row in budget_rows]
    return {"ulira": rows, "per_example": per_rows, "budget": budget_rows,
            HANDOFF: Handoff({"point": point})}


BUDGET_POINT = ("attack", "shadow_models", "per_side", "auc", "tpr_at_1pct", "tpr_at_1pct_low",
                "tpr_at_1pct_high")
CHEN_SUMMARY = ("auc", "auc_low", "auc_high", "tpr_at_0_1pct", "epsilon_lb")
TEXT_SUMMARY = ("calibration", "epsilon_estimator", "epsilon_sides", "intervals_over",
                "epsilon_lb_direction", "design", "variant", "variance")


def _summary_point(spec: Spec, params: dict, rows: list[dict], main_row: dict) -> dict:
    """What the leaderboard keeps of one analysis: the main row's numbers, the strongest
    Chen et al. feature (by AUC on the odd pairs), the method's settings."""
    chen = [r for r in rows if r["attack"].startswith("chen_")]
    best = max(chen, key=lambda r: r["odd_auc"]) if chen else {}
    point = {k: v for k, v in main_row.items()
             if isinstance(v, (int, float, bool)) or v is None or k in TEXT_SUMMARY}
    point.update({f"chen_{k}": best.get(f"odd_{k}") for k in CHEN_SUMMARY})
    point["method_params"] = json.dumps(to_dict(spec.unlearning[
        params["method_index"]].typed_params()), sort_keys=True)
    return point


def figure_point(spec: Spec, params: dict, method: str, curves: dict[str, list[float]],
                 eps: np.ndarray, targets: np.ndarray, exposure: np.ndarray,
                 main_row: dict[str, Any]) -> dict[str, Any]:
    """What an analysis hands on to the figures and the leaderboard: its curves, epsilons,
    most exposed records and summary."""
    settings: PerExampleParams = params["params"]
    top = exposure[: settings.exposed]
    point = {"key": params["key"], "method": method, "seed": params["seed"],
             "dataset": spec.dataset.name, "design": settings.design,
             "fpr": FPR_GRID.tolist(), "curves": curves, "epsilons": eps.tolist(),
             "exposed": [int(targets[i]) for i in top],
             "exposed_epsilon": [float(eps[i]) for i in top],
             "auc": main_row["auc"], "summary": main_row}
    return point

