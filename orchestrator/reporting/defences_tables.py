"""The ``defences`` table as Markdown (docs/RESULTS.md is made from it)::

    python -m orchestrator.reporting.defences_tables RESULTS defences_inversion
"""

from __future__ import annotations

import math


def markdown(df) -> str:
    """The ``defences`` table as Markdown, one row per (attack, method, defence, strength)."""
    cols = ["attack", "unlearning_method", "defence", "strength", "attack_metric"]
    extra = [c for c in ("psnr_max", "gain_db", "cos_final", "classical_auc",
                         "auc_max_unlearning_feature", "deg_rate", "test_acc_original",
                         "test_acc_unlearned", "epsilon") if c in df and df[c].notna().any()]
    df = df.sort_values(["attack", "unlearning_method", "defence", "strength"],
                        na_position="first")
    lines = ["| " + " | ".join(cols + extra) + " |", "|" + "---|" * len(cols + extra)]
    for _, r in df[cols + extra].iterrows():
        cells = []
        for c in cols + extra:
            v = r[c]
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("-")
            elif isinstance(v, float):
                cells.append(f"{v:.4g}" if c == "strength" else f"{v:.3f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m orchestrator.reporting.defences_tables RESULTS EXPERIMENT
    import sys

    from orchestrator.store.tables import Results

    frame = Results(sys.argv[1], sys.argv[2]).read("defences")
    print(markdown(frame) if len(frame) else "no defences rows")
