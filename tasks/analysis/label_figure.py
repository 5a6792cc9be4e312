"""The label-inference figure: per-class confidence changes at every forget share p.

:func:`draw_label_inference` is pure (records in, matplotlib Figure out);
:func:`records_from_arrays` turns the arrays the label-inference scorer saves into records.

One panel per (method, box, decision score), wrapped three to a row so the figure reads at
page width. In a panel, each share p is one colour: a solid line with markers for the
forgotten class's own-confidence change (a request with no share p, as a user's own pair's,
is labelled by its forgotten class only: "deletion requests", no ``p=``), a dotted line for the largest drop among the other
classes, both against the forgotten class. Inference is right where the solid line lies below
the dotted one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tasks.plotting import pyplot

__all__ = ["PAGE_WIDTH", "draw_label_inference", "records_from_arrays"]

PAGE_WIDTH = 7.5  # inches: a page's text width, so nothing is scaled down when printed
_COLUMNS = 3
_FONT = 8  # smallest text is _FONT - 1 = 7 pt
_NO_SHARE = "deletion requests"  # the label of requests with no share p (a user's pair)


def _share(value: Any) -> float | None:
    """The share p, or None when it is missing or NaN (one key for all such requests)."""
    if value is None:
        return None
    share = float(value)
    return None if math.isnan(share) else share


def _share_order(share: float | None) -> tuple[bool, float]:
    return (share is None, 0.0 if share is None else share)


def _share_label(share: float | None) -> str:
    return _NO_SHARE if share is None else f"p={share:g}"



_Panels = dict[tuple[str, str, str], dict[float | None, dict[int, np.ndarray]]]


def _panels(deltas: list[dict[str, Any]]) -> _Panels:
    """(method, box, score) -> share (None: none) -> forgotten class -> mean delta (C,) over
    repeats (seeds, originals)."""
    stacks: dict[tuple[str, str, str], dict[float | None, dict[int, list[np.ndarray]]]] = {}
    for rec in deltas:
        key = (str(rec["method"]), str(rec.get("box", "")), str(rec.get("score", "")))
        by_share = stacks.setdefault(key, {}).setdefault(_share(rec.get("share")), {})
        by_share.setdefault(int(rec["true_class"]), []).append(
            np.asarray(rec["delta"], dtype=np.float64))
    out: _Panels = {}
    for key, shares in stacks.items():
        out[key] = {}
        for share, classes in shares.items():
            with np.errstate(all="ignore"):  # all-NaN columns stay NaN, quietly
                out[key][share] = {c: np.nanmean(np.stack(v), axis=0) if len(v) > 1 else v[0]
                                   for c, v in classes.items()}
    return out


def records_from_arrays(arrays: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """The records :func:`draw_label_inference` takes, from the arrays the label-inference
    scorer saves per batch (``label`` "method / entry", ``share``, ``true_class``, ``delta``).
    An entry named ``<box>-<score>`` (the ``label_inference`` stage's) is split in two."""
    out = []
    for data in arrays:
        for delta, label, share, c in zip(data["delta"], data["label"], data["share"],
                                          data["true_class"]):
            method, _, name = str(label).partition(" / ")
            box, _, score = name.partition("-")
            if box not in ("white", "black"):
                box, score = name, ""
            out.append({"method": method, "box": box, "score": score, "share": float(share),
                        "true_class": int(c), "delta": np.asarray(delta)})
    return out


def _largest_other_drop(delta: np.ndarray, own: int) -> float:
    rest = np.delete(delta, own)
    rest = rest[np.isfinite(rest)]
    return float(rest.min()) if rest.size else float("nan")


def draw_label_inference(deltas: list[dict[str, Any]]):
    """Draw the figure.

    Args:
        deltas: one record per (unlearned model, decision score): ``method``, ``box``,
            ``score``, ``share`` (p; missing or NaN for requests with none, drawn as
            "deletion requests"), ``true_class`` (the forgotten class) and ``delta``, the
            mean own-class confidence change per class (C,), NaN where no probe is labelled
            that class. Repeats of one (method, box, score, share, class) are averaged.
    Returns:
        A matplotlib Figure, at most :data:`PAGE_WIDTH` inches wide.
    """
    plt = pyplot()
    from matplotlib.lines import Line2D

    panels = _panels(deltas)
    keys = sorted(panels)
    shares = sorted({s for key in keys for s in panels[key]}, key=_share_order)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(shares), 1)))
    colour = dict(zip(shares, colours))
    cols = max(1, min(_COLUMNS, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, 2.2 * rows + 0.7),
                             squeeze=False)  # own y scales: logodds spans far more than prob
    flat = list(axes.flat)
    for ax, key in zip(flat, keys):
        classes_seen: set[int] = set()
        for share in sorted(panels[key], key=_share_order):
            by_class = panels[key][share]
            classes = sorted(by_class)
            classes_seen.update(classes)
            own = [by_class[c][c] for c in classes]
            other = [_largest_other_drop(by_class[c], c) for c in classes]
            ax.plot(classes, own, color=colour[share], marker="o", markersize=3,
                    linewidth=1.0, label=_share_label(share))
            ax.plot(classes, other, color=colour[share], linestyle=":", linewidth=1.0,
                    label="_other")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ticks = sorted(classes_seen)
        ax.set_xticks(ticks, [str(c) for c in ticks])
        parts = [key[0], f"{key[1]}-box" if key[1] in ("white", "black") else key[1], key[2]]
        ax.set_title(", ".join(p for p in parts if p), fontsize=_FONT)
        ax.tick_params(labelsize=_FONT - 1)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    for ax in flat[len(keys):]:
        ax.set_visible(False)
    if not keys:
        flat[0].text(0.5, 0.5, "no label-inference results", ha="center", va="center",
                     fontsize=_FONT, transform=flat[0].transAxes)
    for r in range(rows):
        axes[r, 0].set_ylabel("mean own-class change", fontsize=_FONT)
    for ax in flat[:len(keys)]:
        ax.set_xlabel("forgotten class", fontsize=_FONT)
    handles = [Line2D([], [], color=colour[s], marker="o", markersize=3,
                      label=_share_label(s)) for s in shares]
    handles += [Line2D([], [], color="black", marker="o", markersize=3,
                       label="forgotten class"),
                Line2D([], [], color="black", linestyle=":", label="largest other drop")]
    ncol = min(len(handles), 6)
    fig.legend(handles=handles, loc="upper center", ncol=ncol, fontsize=_FONT - 1,
               frameon=False, bbox_to_anchor=(0.5, 1.0))
    legend_in = 0.1 + 0.2 * math.ceil(len(handles) / ncol)  # inches kept free for it
    fig.tight_layout(rect=(0, 0, 1, 1 - legend_in / fig.get_figheight()))
    return fig
