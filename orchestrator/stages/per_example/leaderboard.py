"""``pe_leaderboard``: one ranked row per (seed, unlearning method) of a ``per_example`` run.

Leakage (U-LiRA's AUC and TPR at 1 % and 0.1 % FPR with 95 % intervals over records, the
median and 90th-percentile per-record epsilon, the forget score, Chen et al.'s best AUC on the
same pairs), utility (test, retained and forget accuracy of the unlearned members, the
originals' test accuracy) and cost (unlearning time per model relative to retraining in the
same run). Rank 1 leaks least: methods are ordered by U-LiRA's TPR at 1 % FPR, then by AUC,
then by test accuracy (higher first). The method's settings are recorded as run; a method is
only comparable at its tuned settings (issue 15), which this table does not choose.
"""

from __future__ import annotations

import io

from orchestrator.spec import Spec
from orchestrator.stages.per_example.analysis import read_points
from orchestrator.storage import Location
from orchestrator.tables import FIGURE_INDEX, FIGURES_DIR
from orchestrator.units import UNIT_FUNCTIONS, Rows, TaskContext

TABLE = "leaderboard"
LEAK = ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "median_epsilon")
COLUMNS = ("p90_epsilon", "forget_score", "records_half_leak", "unlearned_test_acc",
           "unlearned_retain_acc", "forget_acc", "original_test_acc", "unlearn_s_per_model",
           "chen_auc", "chen_tpr_at_0_1pct", "n_models", "n_records", "design", "variant",
           "variance")


def leaderboard_rows(points: list[dict]) -> list[dict]:
    """Ranked rows from the analyses' summary points (one per seed and method)."""
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
        rows.append(row)
    for seed in {r["seed"] for r in rows}:
        group = [r for r in rows if r["seed"] == seed]
        retrain = [r["unlearn_s_per_model"] for r in group if r["unlearning_method"] == "retrain"]
        for r in group:
            r["wall_vs_retrain"] = (r["unlearn_s_per_model"] / retrain[0]
                                    if retrain and retrain[0] else None)
        order = sorted(group, key=lambda r: (r["ulira_tpr_at_1pct"], r["ulira_auc"],
                                             -(r["unlearned_test_acc"] or 0)))
        for rank, r in enumerate(order, start=1):
            r["rank"] = rank
    return sorted(rows, key=lambda r: (r["seed"], r["rank"]))


def leaderboard_figure(rows: list[dict]) -> bytes:
    """Leak (U-LiRA TPR at 1 % FPR, 95 % interval) against test accuracy, one point per
    method; retraining marks the no-leak reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for r in rows:
        y = r["ulira_tpr_at_1pct"]
        err = [[y - r["ulira_tpr_at_1pct_low"]], [r["ulira_tpr_at_1pct_high"] - y]]
        ax.errorbar(r["unlearned_test_acc"], y, yerr=err, fmt="o", capsize=3,
                    color="black" if r["unlearning_method"] == "retrain" else None)
        ax.annotate(f"{r['rank']}. {r['unlearning_method']}",
                    (r["unlearned_test_acc"], y), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.axhline(0.01, color="grey", linewidth=0.6, linestyle=":")  # chance at 1 % FPR
    ax.set_xlabel("test accuracy of the unlearned models")
    ax.set_ylabel("U-LiRA TPR at 1 % FPR (lower leaks less)")
    ax.set_title(f"{rows[0]['dataset']}: unlearning methods by leak and utility", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


@UNIT_FUNCTIONS.register("pe_leaderboard")
def pe_leaderboard(params: dict, ctx: TaskContext) -> Rows:
    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    points = read_points(loc, spec.experiment, params["analyses"])
    rows = leaderboard_rows(points)
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
