"""Figures of scored attacks, drawn from the arrays each batch keeps beside its table."""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.plotting import pyplot

MAX_COLUMNS = 16



def recovery_figure(arrays: list[dict[str, np.ndarray]], title: str) -> Any:
    """Originals above recoveries, one column per sample (at most 16 per label)."""
    by_label: dict[str, tuple[list, list, list]] = {}
    for data in arrays:
        for o, r, p, label in zip(data["original"], data["recovered"], data["psnr"],
                                  data["label"]):
            entry = by_label.setdefault(str(label), ([], [], []))
            if len(entry[0]) < MAX_COLUMNS:
                entry[0].append(o)
                entry[1].append(r)
                entry[2].append(p)
    if not by_label:
        return None
    plt = pyplot()
    rows = 2 * len(by_label)
    cols = max(len(v[0]) for v in by_label.values())
    # Fixed cell size and explicit spacing: tight_layout shrinks the images to make room for
    # the row labels, leaving them a fraction of the figure.
    cell = 1.0
    # Wide enough for the longest row label (about 0.065 in per character at 8 pt): with few
    # columns a label like "torch_export / inversion: originals ..." was cut off.
    longest = max(len(f"{label}: originals (top), recoveries (below)") for label in by_label)
    width = max(cell * cols + 0.3, 0.065 * longest + 0.3)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 1.3 * cell * rows),
                             squeeze=False, gridspec_kw={"wspace": 0.08, "hspace": 0.3})
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / rows, bottom=0.01)
    for ax in axes.flat:
        ax.axis("off")
        ax.set_anchor("W")  # images from the left edge, under their row label
    for i, (label, (orig, rec, ps)) in enumerate(sorted(by_label.items())):
        for j in range(len(orig)):
            for r, img in ((2 * i, orig[j]), (2 * i + 1, rec[j])):
                show = np.clip(np.transpose(img, (1, 2, 0)), 0, 1)
                axes[r, j].imshow(show.squeeze(), cmap="gray" if show.shape[-1] == 1 else None,
                                  vmin=0, vmax=1, interpolation="nearest")
            axes[2 * i + 1, j].set_title(f"{ps[j]:.1f} dB", fontsize=7, pad=2)
        axes[2 * i, 0].text(0, 1.08, f"{label}: originals (top), recoveries (below)",
                            transform=axes[2 * i, 0].transAxes, fontsize=8, ha="left",
                            va="bottom")
    return fig


def label_inference_figure(arrays: list[dict[str, np.ndarray]], title: str) -> Any:
    """Own-class confidence changes per forgotten class, every share p (see label_figure)."""
    from tasks.analysis.label_figure import draw_label_inference, records_from_arrays

    records = records_from_arrays(arrays)
    return draw_label_inference(records) if records else None
