"""``pe_leaderboard``: one ranked row per (seed, unlearning method) of a ``per_example`` run.

The board reads both ways. U-LiRA's AUC measures how far a method's unlearned models sit from
models that never saw the records, in either direction: still more confident on them
(under-unlearning) or less (over-unlearning, which an attacker reads just as well). Methods
are ranked by that distance from exact retraining's own AUC in the same run; methods whose
own permutation test (the run's null control, at 1 %) finds no leak are grouped with it ("as
retraining") ahead of the rest,
and an attack reading below its permutation null is marked "below chance" rather than ranked as
a small leak. Each row also says which way the records it names at the false-discovery rate
lean, whether the run's null control holds (retraining inside the run's permutation null), and the
(epsilon, delta) lower bound U-LiRA certifies at 95 % confidence. Intervals are over models
and records (``intervals_over``). Utility (test, retained and forget accuracy of the
unlearned members, the originals' test accuracy) and cost (unlearning time per model
relative to retraining in the same run) follow. The method's settings are recorded as run; a
method is only comparable at its tuned settings (issue 15), which this table does not choose.

Chen et al.'s AUC and the image attacks read theta against theta_u: they measure what
publishing both models reveals, which exact retraining reveals too, so each has a
``*_vs_retrain`` column (the method's value minus retraining's) beside it.

On image data, the attacks of ``per_example.attacks`` (planned by the generic attacks stage on
their own forget requests, one original for every method) add, per method: the feature-recovery
gain over the mean image in dB (mean over the forgotten samples of PSNR minus the mean image's
PSNR, with a 95 % bootstrap interval over those samples; none from fewer than two) and the
label-inference accuracy (share of requests whose forgotten class was inferred, likewise;
``label_inference`` rows). Each attack batch runs as ``pe_attack_batch``, which also leaves
its points beside the tables (the driver writes rows in batches, so a dependent unit cannot
rely on reading them from the table yet). On tabular data these columns are empty and
``image_attacks`` says "not applicable (tabular)".
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.stages.attacks.units import attack_batch
from orchestrator.store.handoff import HANDOFF, Handoff, UnitInputs
from orchestrator.store.location import Location
from orchestrator.store.tables import FIGURE_INDEX, FIGURES_DIR
from tasks.analysis.statistics import bootstrap_ci
from tasks.plotting import png_bytes, pyplot

TABLE = "leaderboard"
LEAK = ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "median_epsilon")
COLUMNS = ("p90_epsilon", "forget_score", "forget_score_k", "records_half_leak",
           "records_leaking", "records_under_unlearned", "records_over_unlearned", "fdr",
           "mean_record_auc", "epsilon_lb", "epsilon_lb_direction", "within_null",
           "below_chance", "calibration", "null_auc_low", "null_auc_high",
           "null_tpr_at_1pct_high", "null_auc", "null_median_epsilon", "null_median_epsilon_high",
           "null_auc_p", "null_median_epsilon_p",
           "epsilon_estimator", "epsilon_sides", "intervals_over", "unlearned_test_acc",
           "unlearned_retain_acc", "forget_acc", "original_test_acc", "unlearn_s_per_model",
           "chen_auc", "chen_auc_low", "chen_auc_high", "chen_tpr_at_0_1pct",
           "chen_epsilon_lb", "n_models", "n_records", "design", "variant", "variance")
RELATIVE = ("chen_auc", "recovery_gain_db", "label_inference_acc")
REFERENCE = "retrain"
RECOVERY, LABELS = "recoveries", "label_inference"
IMAGE_COLUMNS = ("recovery_gain_db", "recovery_gain_db_low", "recovery_gain_db_high",
                 "recovery_psnr_db", "recovery_targets", "label_inference_acc",
                 "label_inference_acc_low", "label_inference_acc_high",
                 "label_inference_requests")
NOT_APPLICABLE = "not applicable (tabular)"


def attack_points(rows: list[dict], table: str) -> list[dict]:
    """What the board keeps of an attack's rows: per recovered sample its PSNR and the mean
    image's, per label-inference request whether the forgotten class was found."""
    points = []
    for r in rows:
        point = {"table": table, "method": r["unlearning_method"], "seed": int(r["seed"])}
        if table == RECOVERY:
            if r.get("psnr") is None or r.get("psnr_mean_image") is None:
                continue
            point.update(psnr=float(r["psnr"]), psnr_mean_image=float(r["psnr_mean_image"]))
        elif table == LABELS:
            point["correct"] = float(bool(r["correct"]))
        else:
            continue
        points.append(point)
    return points


@UNIT_FUNCTIONS.register("pe_attack_batch")
def pe_attack_batch(params: dict, ctx: TaskContext) -> Rows:
    """The attacks stage's batch, which also hands its points on to the leaderboard."""
    out = attack_batch(params, ctx)
    handoff = out.pop(HANDOFF, None) or Handoff()
    handoff.values["points"] = [p for table, rows in out.items()
                                for p in attack_points(rows, table)]
    out[HANDOFF] = handoff
    return out


def _interval(values: list[float]) -> tuple:
    """Mean and 95 % bootstrap interval; no interval from fewer than two values."""
    if not values:
        return None, None, None
    point, low, high = bootstrap_ci(values)
    return (point, low, high) if len(values) >= 2 else (point, None, None)


def image_columns(points: list[dict], data_kind: str, planned: bool) -> dict:
    """(seed, method) -> the image-attack columns of its row."""
    by: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        cell = by[(p["seed"], p["method"])]
        if p["table"] == RECOVERY:
            cell["gain"].append(p["psnr"] - p["psnr_mean_image"])
            cell["psnr"].append(p["psnr"])
        else:
            cell["correct"].append(p["correct"])
    status = ("measured" if planned else "not run") if data_kind == "image" else NOT_APPLICABLE
    out = {}
    for key, cell in by.items():
        # Sorted first: the interval must not depend on the order the units' points were read
        # in (fresh, or partly reused from an earlier run).
        gain, low, high = _interval(sorted(cell["gain"]))
        acc, acc_low, acc_high = _interval(sorted(cell["correct"]))
        out[key] = {"recovery_gain_db": gain, "recovery_gain_db_low": low,
                    "recovery_gain_db_high": high,
                    "recovery_psnr_db": float(np.mean(cell["psnr"])) if cell["psnr"] else None,
                    "recovery_targets": len(cell["gain"]), "label_inference_acc": acc,
                    "label_inference_acc_low": acc_low, "label_inference_acc_high": acc_high,
                    "label_inference_requests": len(cell["correct"]), "image_attacks": status}
    return defaultdict(lambda: {**dict.fromkeys(IMAGE_COLUMNS), "image_attacks": status}, out)


def leaderboard_rows(points: list[dict], image: dict | None = None) -> list[dict]:
    """Ranked rows from the analyses' summary points (one per seed and method); ``image``:
    :func:`image_columns`, joined by (seed, method)."""
    image = image if image is not None else image_columns([], "image", False)
    rows = []
    for p in points:
        s = p["summary"]
        row = {"unlearning_method": p["method"], "seed": p["seed"], "dataset": p["dataset"],
               "method_params": s.get("method_params"), "analysis": p["key"]}
        for name in LEAK:
            row[f"ulira_{name}" if name != "median_epsilon" else name] = s.get(name)
            for side in ("low", "high"):
                key = f"{name}_{side}"
                row[f"ulira_{key}" if name != "median_epsilon" else key] = s.get(key)
        row.update({c: s.get(c) for c in COLUMNS})
        row["ulira_epsilon_lb"] = row.pop("epsilon_lb")
        row["ulira_epsilon_lb_direction"] = row.pop("epsilon_lb_direction")
        row.update(image[(int(p["seed"]), p["method"])])
        rows.append(row)
    for seed in {r["seed"] for r in rows}:
        _rank(group=[r for r in rows if r["seed"] == seed])
    return sorted(rows, key=lambda r: (r["seed"], r["rank"]))


def _reading(row: dict, as_retrain: bool) -> str:
    """Which way a method's leak points (module docstring)."""
    if row.get("below_chance"):
        return "below chance"
    if as_retrain:
        return "as retraining"
    under, over = row.get("records_under_unlearned") or 0, row.get("records_over_unlearned") or 0
    if under == over:
        return ("under-unlearning" if (row.get("mean_record_auc") or 0.5) >= 0.5
                else "over-unlearning")
    return "under-unlearning" if under > over else "over-unlearning"


def _overlap(a: dict, b: dict) -> bool:
    bounds = (a.get("ulira_auc_low"), a.get("ulira_auc_high"), b.get("ulira_auc_low"),
              b.get("ulira_auc_high"))
    if not all(_finite(v) for v in bounds):
        return False
    return bounds[0] <= bounds[3] and bounds[2] <= bounds[1]


def _rank(group: list[dict]) -> None:
    """Rank one seed's rows by distance from retraining's AUC (module docstring)."""
    reference = next((r for r in group if r["unlearning_method"] == REFERENCE), None)
    centre = reference["ulira_auc"] if reference is not None else 0.5
    for r in group:
        # Indistinguishable from retraining: the method's own permutation test finds no
        # leak (retraining is a perfect unlearner); where a row has no such test, its
        # interval overlaps retraining's.
        own = r.get("within_null")
        if r is reference:
            as_retrain = True
        elif own is not None:
            as_retrain = bool(own)
        else:
            as_retrain = reference is not None and _overlap(r, reference)
        as_retrain = as_retrain and not r.get("below_chance")
        r["as_retrain"] = as_retrain
        r["reading"] = _reading(r, as_retrain)
        r["distance_from_retrain"] = abs(r["ulira_auc"] - centre) \
            if _finite(r.get("ulira_auc")) else None
        r["wall_vs_retrain"] = (r["unlearn_s_per_model"] / reference["unlearn_s_per_model"]
                                if reference is not None and reference["unlearn_s_per_model"]
                                else None)
        for column in RELATIVE:
            mine = r.get(column)
            theirs = reference.get(column) if reference is not None else None
            r[f"{column}_vs_retrain"] = (mine - theirs if _finite(mine) and _finite(theirs)
                                         else None)
        r["calibrated"] = reference.get("within_null") if reference is not None else None
    order = sorted(group, key=lambda r: (r["reading"] == "below chance", not r["as_retrain"],
                                         r["distance_from_retrain"]
                                         if r["distance_from_retrain"] is not None else 1.0,
                                         -(r["unlearned_test_acc"] or 0)))
    for rank, r in enumerate(order, start=1):
        r["rank"] = rank


def _finite(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
        and bool(np.isfinite(value))


def leaderboard_figure(rows: list[dict]) -> bytes:
    """Leak (U-LiRA AUC, 95 % interval over models and records) against test accuracy, one
    point per method, with the band the run's null control gives a perfect unlearner;
    retraining marks the reference. With image attacks, a second panel: the feature-recovery
    gain over the mean image (95 % interval) per method, in rank order, with the
    label-inference accuracy beside it."""
    plt = pyplot()

    image = [r for r in rows if _finite(r.get("recovery_gain_db"))]
    order = sorted(rows, key=lambda r: r["rank"])  # one colour per method in both panels
    colour = {r["unlearning_method"]: "black" if r["unlearning_method"] == REFERENCE
              else f"C{i % 10}" for i, r in enumerate(order)}
    fig, axes = plt.subplots(1, 2 if image else 1, figsize=(10.4 if image else 5.6, 4.0),
                             squeeze=False)
    ax = axes[0, 0]
    band = [r for r in rows if _finite(r.get("null_auc_low"))]
    if band:
        ax.axhspan(band[0]["null_auc_low"], band[0]["null_auc_high"], color="grey",
                   alpha=0.2, label="null (nothing leaks), 95 %")
        ax.legend(fontsize=7, loc="upper left")
    for r in rows:
        y = r["ulira_auc"]
        low, high = r.get("ulira_auc_low"), r.get("ulira_auc_high")
        err = [[y - low], [high - y]] if _finite(low) and _finite(high) else None
        ax.errorbar(r["unlearned_test_acc"], y, yerr=err, fmt="o", capsize=3,
                    color=colour[r["unlearning_method"]])
        ax.annotate(f"{r['rank']}. {r['unlearning_method']}",
                    (r["unlearned_test_acc"], y), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("test accuracy of the unlearned models")
    ax.set_ylabel("U-LiRA AUC (0.5: as a perfect unlearner)")
    ax.set_title(f"{rows[0]['dataset']}: unlearning methods by leak and utility", fontsize=9)
    if image:
        ax = axes[0, 1]
        image = sorted(image, key=lambda r: r["rank"])
        ys = np.arange(len(image))[::-1]
        for y, r in zip(ys, image):
            g = r["recovery_gain_db"]
            low, high = r.get("recovery_gain_db_low"), r.get("recovery_gain_db_high")
            err = [[g - low], [high - g]] if _finite(low) and _finite(high) else None
            ax.errorbar(g, y, xerr=err, fmt="o", capsize=3, color=colour[r["unlearning_method"]])
            acc = r.get("label_inference_acc")
            label = f"label acc {acc:.2f}" if _finite(acc) else ""
            ax.annotate(label, (g, y), fontsize=7, xytext=(6, 4), textcoords="offset points")
        ax.axvline(0.0, color="grey", linewidth=0.6, linestyle=":")  # the mean image
        ax.set_yticks(ys, [f"{r['rank']}. {r['unlearning_method']}" for r in image],
                      fontsize=7)
        ax.set_xlabel("feature recovery: PSNR gain over the mean image (dB)")
        ax.set_title("Hu et al. attacks on single deletions (95 % intervals)", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=110)


@UNIT_FUNCTIONS.register("pe_leaderboard")
def pe_leaderboard(params: dict, ctx: TaskContext, inputs: UnitInputs) -> Rows:
    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    points = inputs.values("point", params["analyses"])  # a failed analysis has none
    units = [u["key"] for u in params.get("attack_units", [])]
    attack = [p for unit_points in inputs.values("points", units) for p in unit_points]
    image = image_columns(attack, params.get("data_kind", "image"), bool(units))
    rows = leaderboard_rows(points, image)
    for r in rows:
        r.update({"key": f"{params['key']}:{r['analysis']}", "experiment": spec.experiment,
                  "config_hash": spec.config_hash, **spec.flat_config()})
    out: Rows = {TABLE: rows}
    if rows:
        path = loc.write_bytes(leaderboard_figure(rows), spec.experiment, FIGURES_DIR,
                               f"leaderboard-{spec.config_hash}.png")
        out[FIGURE_INDEX] = [{"key": f"{params['key']}:figure", "experiment": spec.experiment,
                              "config_hash": spec.config_hash, "seed": spec.seeds[0],
                              "figure": "leaderboard", "path": path, "points": len(rows),
                              **spec.flat_config()}]
    return out
