"""The ``defences`` stage's figure (leakage against utility) and table summary."""

from __future__ import annotations

from orchestrator.context import TaskContext
from orchestrator.engine.units import UNIT_FUNCTIONS, Rows
from orchestrator.spec.schema import Spec
from orchestrator.store.handoff import UnitInputs
from orchestrator.store.location import Location
from orchestrator.store.tables import FIGURE_INDEX, FIGURES_DIR
from tasks.plotting import png_bytes, pyplot


def _group(point: dict) -> tuple[str, str]:
    return (point["unlearning_method"] or "", point.get("attack_model") or "")


def draw_figure(points: list[dict], title: str):
    """Leakage (y) against utility (x): one curve per defence, strengths annotated."""
    plt = pyplot()

    attacks = list(dict.fromkeys(p["attack"] for p in points))
    fig, axes = plt.subplots(1, len(attacks), figsize=(6.0 * len(attacks), 4.6),
                             squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        pts = [p for p in points if p["attack"] == attack]
        # One set of curves per (unlearning method, attack model): membership rows come
        # one per attack model.
        groups = sorted({_group(p) for p in pts})
        for group in groups:
            sub = [p for p in pts if _group(p) == group]
            base = [p for p in sub if p["defence"] == "none"]
            suffix = f" ({', '.join(g for g in group if g)})" if len(groups) > 1 else ""
            for b in base:
                ax.scatter([b["utility"]], [b["attack_metric"]], marker="*", s=140,
                           color="black", zorder=5, label=f"undefended{suffix}")
            for defence in dict.fromkeys(p["defence"] for p in sub if p["defence"] != "none"):
                curve = sorted((p for p in sub if p["defence"] == defence),
                               key=lambda p: (p["strength"] is None, p["strength"] or 0))
                xs = [p["utility"] for p in curve]
                ys = [p["attack_metric"] for p in curve]
                (line,) = ax.plot(xs, ys, marker="o", label=f"{defence}{suffix}")
                for p in curve:
                    if p["strength"] is not None:
                        ax.annotate(f"{p['strength']:g}", (p["utility"], p["attack_metric"]),
                                    fontsize=6, xytext=(3, 3), textcoords="offset points",
                                    color=line.get_color())
        name = pts[0]["attack_metric_name"]
        ax.set_xlabel("utility: test accuracy of the (defended) unlearned model")
        ax.set_ylabel({"auc": "leakage: membership AUC (target)",
                       "psnr": "leakage: recovery PSNR (dB)",
                       "accuracy": "leakage: attack accuracy"}.get(name, name))
        if name == "auc":
            ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
        ax.set_title(f"{title}: {attack}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


@UNIT_FUNCTIONS.register("defence_figure")
def defence_figure(params: dict, ctx: TaskContext, inputs: UnitInputs) -> Rows:
    spec: Spec = params["spec"]
    loc = Location(ctx.results_uri)
    # The sweep units' points, in plan order; a failed unit has none (see the errors table).
    points = [p for unit_points in inputs.values("points") for p in unit_points]
    path = None
    if points:
        png = draw_figure(points, spec.experiment)
        path = loc.write_bytes(png, spec.experiment, FIGURES_DIR,
                               f"defences-{spec.config_hash}.png")
    row = {"key": params["key"], "experiment": spec.experiment, "config_hash": spec.config_hash,
           "seed": spec.seeds[0], "figure": "defences", "path": path, "points": len(points)}
    row.update(spec.flat_config())
    return {FIGURE_INDEX: [row]}
