"""The search's figures: ``search_best_so_far.png`` (every objective) and ``search_pareto.png``
(two or more objectives)."""

from __future__ import annotations

import numpy as np

from orchestrator.search.result_tables import pareto_front
from orchestrator.search.spec import SearchPlan
from orchestrator.store.tables import FIGURES_DIR, Results
from tasks.plotting import png_bytes, pyplot

__all__ = ["write_figures"]


def _save(fig, results: Results, name: str) -> str:
    return results.location.write_bytes(png_bytes(fig, dpi=110, tight=True), results.experiment, FIGURES_DIR,
                                             name)


def write_figures(study, plan: SearchPlan, results: Results, best: list[dict]) -> list[str]:
    plt = pyplot()
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

