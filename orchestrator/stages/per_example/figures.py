"""``pe_figures``: the stage's figures, from the JSON its analyses left beside the tables.

- ``per_example_epsilon.png``: the distribution (ECDF) of per-record epsilon, one curve per
  method and seed;
- ``per_example_roc.png``: log-log ROC per method, U-LiRA beside Chen et al.'s attack on the
  same (odd-numbered) pairs;
- ``per_example_budget.png`` (design ``ulira``): TPR at 1 % FPR against the number of shadow
  models, U-LiRA beside Chen et al. on the same target models (table ``budget``);
- ``per_example_exposed.png`` (image data): the most exposed records of each method.
"""

from __future__ import annotations

import numpy as np

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.store.handoff import UnitInputs
from orchestrator.store.location import Location
from orchestrator.store.tables import FIGURE_INDEX, FIGURES_DIR
from tasks.plotting import png_bytes, pyplot


def _png(fig) -> bytes:
    return png_bytes(fig, dpi=110, tight=True)


def epsilon_figure(points: list[dict]) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for p in points:
        eps = np.sort(np.asarray(p["epsilons"], dtype=float))
        eps = eps[~np.isnan(eps)]
        ax.step(eps, np.arange(1, len(eps) + 1) / len(eps), where="post",
                label=f"{p['method']} (seed {p['seed']})")
    ax.set_xlabel("per-record epsilon")
    ax.set_ylabel("share of records at or below")
    ax.set_title(f"{points[0]['dataset']}: per-record epsilon ({points[0]['design']})",
                 fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


def roc_figure(points: list[dict]) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 3.8), squeeze=False)
    for ax, p in zip(axes[0], points):
        fpr = np.asarray(p["fpr"])
        for name, tpr in p["curves"].items():
            ax.plot(fpr, np.maximum(np.asarray(tpr), fpr[0]), label=name,
                    linestyle="--" if name.startswith("Chen") else "-")
        ax.plot(fpr, fpr, color="grey", linewidth=0.6, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR")
        ax.set_title(f"{p['dataset']} {p['design']}: {p['method']} (seed {p['seed']})",
                     fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def budget_figure(points: list[dict]) -> bytes:
    """TPR at 1 % FPR (95 % interval) against the shadow models each attack used, one panel
    per method and seed, every attack on the same target models."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(points), figsize=(4.2 * len(points), 3.6), squeeze=False,
                             sharey=True)
    for ax, p in zip(axes[0], points):
        by_attack: dict[str, list[dict]] = {}
        for row in p["budget"]:
            by_attack.setdefault(row["attack"], []).append(row)
        for attack, rows in by_attack.items():
            rows = sorted(rows, key=lambda r: r["shadow_models"])
            x = [r["shadow_models"] for r in rows]
            ax.errorbar(x, [r["tpr_at_1pct"] for r in rows], capsize=2, marker="o",
                        markersize=3, label=attack,
                        yerr=[[max(0.0, r["tpr_at_1pct"] - r["tpr_at_1pct_low"]) for r in rows],
                              [max(0.0, r["tpr_at_1pct_high"] - r["tpr_at_1pct"])
                               for r in rows]])
        ax.axhline(0.01, color="grey", linewidth=0.6, linestyle=":")  # chance at 1 % FPR
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shadow models per record")
        ax.set_ylabel("TPR at 1 % FPR")
        ax.set_title(f"{p['dataset']}: {p['method']} (seed {p['seed']})", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


def exposed_figure(points: list[dict], x: np.ndarray) -> bytes:
    """Rows: methods; columns: their most exposed records, epsilon above each."""
    plt = pyplot()
    cols = max(len(p["exposed"]) for p in points)
    fig, axes = plt.subplots(len(points), cols, figsize=(1.2 * cols, 1.45 * len(points)),
                             squeeze=False)
    for row, p in zip(axes, points):
        for ax in row:
            ax.axis("off")
        for ax, record, eps in zip(row, p["exposed"], p["exposed_epsilon"]):
            img = x[record]
            img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
            ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None)
            ax.set_title(f"#{record} e={eps:.1f}", fontsize=6)
        row[0].text(-0.3, 0.5, p["method"], transform=row[0].transAxes, ha="right",
                    va="center", fontsize=7)
    return _png(fig)


@UNIT_FUNCTIONS.register("pe_figures")
def pe_figures(params: dict, ctx: TaskContext, inputs: UnitInputs) -> Rows:
    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    points = inputs.values("point", params["analyses"])  # a failed analysis has none
    figures = {}
    if points:
        figures["per_example_epsilon"] = epsilon_figure(points)
        figures["per_example_roc"] = roc_figure(points)
        with_budget = [p for p in points if p.get("budget")]
        if with_budget:
            figures["per_example_budget"] = budget_figure(with_budget)
        dataset = spec.dataset.load(ctx.data_root)
        if dataset.kind == "image":
            figures["per_example_exposed"] = exposed_figure(points, dataset.x_train)
    rows = []
    for i, (name, png) in enumerate(figures.items()):
        path = loc.write_bytes(png, spec.experiment, FIGURES_DIR,
                               f"{name}-{spec.config_hash}.png")
        rows.append({"key": params["key"] if i == 0 else f"{params['key']}:{name}",
                     "experiment": spec.experiment, "config_hash": spec.config_hash,
                     "seed": spec.seeds[0], "figure": name, "path": path,
                     "points": len(points), **spec.flat_config()})
    if not rows:  # nothing to draw: the marker row says so
        rows.append({"key": params["key"], "experiment": spec.experiment,
                     "config_hash": spec.config_hash, "seed": spec.seeds[0],
                     "figure": "per_example", "path": None, "points": 0})
    return {FIGURE_INDEX: rows}
