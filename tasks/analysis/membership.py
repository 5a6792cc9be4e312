"""Scoring of membership inference: one copy of AUC and TPR at low FPR for every caller."""

from __future__ import annotations

import numpy as np

from tasks.metrics_membership import auc, tpr_at_fpr

LOW_FPRS = (0.01, 0.001, 0.0)


def membership_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1 %, 0.1 % and 0 % FPR of membership scores (P(member))."""
    out = {"auc": auc(y, score)}
    for fpr in LOW_FPRS:
        out[f"tpr_at_{fpr:g}_fpr"] = tpr_at_fpr(y, score, fpr)
    return out
