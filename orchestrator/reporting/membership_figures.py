"""Figures of the membership stage, under ``RESULTS/<experiment>/figures/`` (matplotlib Agg).

- ``roc_<dataset>_<model>_<method>_<scenario>_<key>.png``: target ROC curves on log-log axes,
  one panel per attack model, one curve per feature, classical MIA dashed.
- ``gain_vs_gap.png``: AUC gain of each unlearning feature over classical MIA (same attack
  model) against the target originals' generalisation gap, one point per (variant, attack
  model). Each attack unit hands its points on to the stage's figure unit
  (``mia_gain_figure``), which draws it once every attack is done.

A pair from outside draws no figure while it runs; the redraw below draws its ROC curves
(titled "your pair", its pre-registered test's curve named so) and no gain figure.

Redraw everything from the tables with ``python -m orchestrator.reporting.membership_figures RESULTS
EXPERIMENT`` (e.g. after a run interrupted between an attack and its figure).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from orchestrator.store.location import Location
from orchestrator.store.tables import FIGURES_DIR
from tasks.plotting import png_bytes, pyplot

# The membership tables (tasks.analysis.membership: not imported, it loads torch).
ATTACKS, RECORDS = "membership_attacks", "membership_records"
YOUR_PAIR, PREREGISTERED = "your pair", "preregistered"  # as the pair's membership unit



def _save(fig, location: Location, *parts: str) -> str:
    return location.write_bytes(png_bytes(fig, dpi=110, tight=True), *parts)


def roc_figure(curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], title: str):
    """curves: (feature, attack_model) -> (fpr, tpr). Both axes log-scaled (low-FPR regime,
    where membership attacks are judged); rates below the axis floor are drawn at it."""
    plt = pyplot()
    models = list(dict.fromkeys(m for _, m in curves))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        floor = 1.0
        for (feature, m), (fpr, tpr) in curves.items():
            if m != model:
                continue
            positive = fpr[fpr > 0]
            if positive.size:
                floor = min(floor, positive.min())
        # The smallest non-zero FPR (1 / negatives) sets the floor, within [1e-4, 1e-3].
        floor = min(max(1e-4, floor / 2), 1e-3)
        for (feature, m), (fpr, tpr) in curves.items():
            if m != model:
                continue
            style = "--" if feature == "basic_mia" else "-"
            ax.step(np.maximum(fpr, floor), np.maximum(tpr, floor), where="post",
                    linestyle=style,
                    label="classical MIA" if feature == "basic_mia" else feature)
        # Enough points that y = x is the diagonal of the log-log axes whatever the scale.
        chance = np.logspace(np.log10(floor), 0, 200)
        ax.plot(chance, chance, color="grey", linewidth=0.6, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(floor, 1.05)
        ax.set_xlabel("false positive rate (log)")
        ax.set_ylabel("true positive rate (log)")
        ax.set_title(f"attack model {model}")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return fig


def gain_figure(points: list[dict[str, Any]], title: str = ""):
    """points: dicts with feature, attack_model, label (the target), gap, gain.

    One panel per feature; colour = target (dataset/model/method/scenario), marker = attack
    model.
    """
    plt = pyplot()
    from matplotlib.lines import Line2D

    features = sorted({p["feature"] for p in points}) or ["(none)"]
    labels = sorted({p["label"] for p in points})
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    markers = {"dt": "o", "rf": "s", "lr": "^", "mlp": "D"}
    fig, axes = plt.subplots(1, len(features), figsize=(3.6 * len(features), 3.6),
                             squeeze=False, sharey=True)
    for ax, feature in zip(axes[0], features):
        for p in points:
            if p["feature"] == feature:
                ax.scatter(p["gap"], p["gain"], marker=markers.get(p["attack_model"], "x"),
                           color=colours[p["label"]], s=28)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("generalisation gap of the original")
        ax.set_title(feature)
    axes[0][0].set_ylabel("AUC gain over classical MIA")
    handles = [Line2D([], [], color=colours[lab], marker="o", linestyle="", label=lab)
               for lab in labels]
    handles += [Line2D([], [], color="black", marker=m, linestyle="", label=f"attack {a}")
                for a, m in markers.items()]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.suptitle(title or "unlearning attack gain over classical MIA vs generalisation gap")
    fig.tight_layout()
    return fig


def _points_from_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gain points of the membership stage's rows; a pair's rows (no generalisation gap of
    the shadow originals, no classical AUC) have none."""
    return [{"feature": r["feature"], "attack_model": r["attack_model"],
             "label": f"{r['dataset']}/{r['model']}/{r['unlearning_method']}/{r['scenario']}",
             "gap": float(r["generalisation_gap"]), "gain": float(r["auc"] - r["classical_auc"]),
             "scenario": r["scenario"]}
            for r in rows if r["feature"] != "basic_mia" and r.get("control", "none") == "none"
            and _present(r.get("generalisation_gap")) and _present(r.get("classical_auc"))]


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _curve_name(feature: str, test: Any) -> str:
    """A pair's pre-registered test is named as such beside its exploratory curves."""
    return f"{feature} (pre-registered)" if test == PREREGISTERED else feature


def write_roc_figure(ctx, spec, scenario: str, method: str, attack_key: str, curves) -> str:
    """Called by the attack unit: its ROC figure."""
    short = attack_key.rsplit("-", 1)[-1][:8]
    name = f"roc_{spec.dataset.name}_{spec.model.name}_{method}_{scenario}_{short}.png"
    title = f"{spec.dataset.name} / {spec.model.name} / {method} / {scenario}"
    return _save(roc_figure(curves, title), Location(ctx.results_uri), ctx.experiment,
                 FIGURES_DIR, name)


def gain_points(mia_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an attack unit hands on to the gain figure."""
    return _points_from_rows(mia_rows)


def write_gain_figure(ctx, points: list[dict[str, Any]]) -> str:
    """The gain figure of every attack's points (the membership stage's figure unit)."""
    return _save(gain_figure(points), Location(ctx.results_uri), ctx.experiment, FIGURES_DIR,
                 "gain_vs_gap.png")


def redraw_from_tables(results_root: str, experiment: str) -> list[str]:
    """Every figure again, from the ``mia`` and ``membership`` tables."""
    from orchestrator.store.tables import Results
    from tasks.analysis.statistics import roc

    results = Results(results_root, experiment)
    mia = results.read(ATTACKS)
    members = results.read(RECORDS)
    loc = Location(results_root)
    written = []
    if mia.empty:
        return written
    mia = mia[mia["control"] == "none"]
    if "test" not in members.columns:  # the membership stage's rows: no pre-registration
        members = members.assign(test=None)
    for key, group in members.groupby(mia_attack_key(members["mia_key"])):
        first = group.iloc[0]
        # A pair's rows (pre-registered or exploratory) are its own: "your pair", never the
        # shadow recipe's method.
        method = YOUR_PAIR if _present(first["test"]) else first["unlearning_method"]
        curves = {}
        for (feature, model, test), g in group.groupby(["feature", "attack_model", "test"],
                                                       sort=False, dropna=False):
            curves[(_curve_name(feature, test), model)] = roc(g["label"].to_numpy(),
                                                              g["score"].to_numpy())
        name = (f"roc_{first['dataset']}_{first['model']}_{method}_"
                f"{first['scenario']}_{key.rsplit('-', 1)[-1][:8]}.png").replace(" ", "_")
        title = f"{first['dataset']} / {first['model']} / {method} / {first['scenario']}"
        written.append(_save(roc_figure(curves, title), loc, experiment, FIGURES_DIR, name))
    points = _points_from_rows(mia.to_dict("records"))
    if points:  # a pair's experiment has none
        written.append(_save(gain_figure(points), loc, experiment, FIGURES_DIR,
                             "gain_vs_gap.png"))
    return written


def mia_attack_key(mia_keys):
    return mia_keys.str.split(":").str[0]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m orchestrator.reporting.membership_figures RESULTS EXPERIMENT")
    for p in redraw_from_tables(sys.argv[1], sys.argv[2]):
        print(p)
