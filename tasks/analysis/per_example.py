"""Per-example membership inference against unlearning: U-LiRA's statistics (Hayes et al.).

``phi[j, r]`` is model j's logit-scaled confidence on record r; ``member_in[j, r]`` says
whether record r was IN for model j (trained on, then unlearned) or OUT (never seen). Per
record, Gaussians are fitted to phi under both hypotheses and model j's output is scored by
their likelihood ratio, leave-one-out: model j's own output never enters the fit that scores
it, so every model serves once as the target and otherwise as a shadow.

Pure numpy (scipy only for ranks); ROC quantities come from :mod:`tasks.analysis.statistics`
so that every table uses the project's one TPR-at-FPR convention.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from tasks.analysis.statistics import roc_summary

# Floor on every fitted standard deviation. A record whose phi is the same under every model
# (a saturated prediction, or float32 logits rounding to one value) would otherwise have a
# zero spread and infinite scores; 1e-3 sits far below the spread of phi between real
# models (order 0.1 to 1) yet above float32 rounding noise of phi (order 1e-6 relative).
SD_FLOOR = 1e-3

VARIANTS = ("online", "offline")
VARIANCES = ("per_example", "fixed")


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) = logit_y - logsumexp(other logits), in float64.

    ``logits`` (..., n, C) with C >= 2, ``labels`` (n,) ints in [0, C), broadcast over the
    leading axes; returns (..., n). Written without the softmax, so it stays finite for
    saturated predictions (e.g. logits [100, 0, 0] give about 99.3, [-100, 0, 0] -100.7).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim < 2 or z.shape[-1] < 2:
        raise ValueError(f"logits must be (..., n, C) with C >= 2 classes, got {z.shape}")
    if y.ndim != 1 or y.shape[0] != z.shape[-2]:
        raise ValueError(f"labels must be ({z.shape[-2]},) to match logits {z.shape}, "
                         f"got {y.shape}")
    # Integral floats (labels read through a float column) are accepted as class ids.
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == bool
    if y.size and (not numeric or not np.array_equal(y, np.round(y))
                   or y.min() < 0 or y.max() >= z.shape[-1]):
        raise ValueError(f"labels must be integers in [0, {z.shape[-1]}), got "
                         f"{y.dtype} values {np.unique(y)[:5]}")
    index = np.broadcast_to(y.astype(np.int64)[:, None], z.shape[:-1] + (1,))
    picked = np.take_along_axis(z, index, axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, index, -np.inf, axis=-1)
    top = others.max(axis=-1)  # finite: C >= 2 leaves at least one other class
    return picked - top - np.log(np.exp(others - top[..., None]).sum(axis=-1))


def check_pair(phi: np.ndarray, member_in: np.ndarray,
               finite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """float64 phi and bool member_in, both (models, records); ``finite``: refuse NaN or
    infinite phi too."""
    phi = np.asarray(phi, dtype=np.float64)
    mask = np.asarray(member_in)
    if phi.ndim != 2 or phi.shape != mask.shape:
        raise ValueError(f"phi {phi.shape} and member_in {mask.shape} must be equal "
                         "(models, records) arrays")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("member_in must hold booleans (or 0/1)")
        mask = mask.astype(bool)
    if finite and not np.isfinite(phi).all():
        raise ValueError("phi holds NaN or infinite values")
    return phi, mask


def _loo_moments(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """Leave-one-out count, mean and sd (ddof 1) of phi over ``mask``, per (model, record).

    Sums over all models minus model j's own term (when it is in the mask): no loop over
    models. phi is centred per record first, which leaves the result unchanged but keeps the
    sum-of-squares difference from cancelling when a record's mean is large.
    """
    w = mask.astype(np.float64)
    centred = phi - phi.mean(axis=0, keepdims=True)
    v = np.where(mask, centred, 0.0)
    n = w.sum(axis=0, keepdims=True) - w
    s = v.sum(axis=0, keepdims=True) - v
    s2 = (v * v).sum(axis=0, keepdims=True) - v * v
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        var = (s2 - s * mean) / (n - 1)
    sd = np.sqrt(np.clip(var, 0.0, None))
    return n, mean + phi.mean(axis=0, keepdims=True), sd


def _pooled_loo_sd(phi: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One spread shared by all records, leave-one-out per model: for (j, r), phi minus its
    record's mean over ``mask``, pooled over every record and every model but j (model j's
    own outputs, on any record, never enter the spread that scores it). Shape (M, R)."""
    n, _, sd = _loo_moments(phi, mask)
    dof = np.clip(n - 1, 0, None)
    ss = np.where(dof > 0, np.nan_to_num(sd, posinf=0.0) ** 2 * dof, 0.0)
    total_ss, total_dof = ss.sum(axis=1, keepdims=True), dof.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.sqrt(total_ss / total_dof)
    return np.broadcast_to(np.where(total_dof > 0, pooled, 0.0), phi.shape)


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """log N(x; mean, sd) without the constant, which cancels in every ratio taken here."""
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def lira_scores(phi: np.ndarray, member_in: np.ndarray, variant: str = "online",
                variance: str = "per_example", min_count: int = 2) -> np.ndarray:
    """Leave-one-out U-LiRA scores (M, R), larger = more likely IN.

    ``online``: log N(phi; mu_in, sd_in) - log N(phi; mu_out, sd_out); ``offline``:
    (phi - mu_out) / sd_out, only OUT fitted. ``variance``: ``per_example`` (each record's
    own leave-one-out spread) or ``fixed`` (one spread per hypothesis pooled over all
    records, leave-one-out too; LiRA's advice below about 64 models a side). Every sd is
    floored at :data:`SD_FLOOR`. A whole record is NaN when a side the variant needs holds
    fewer than ``min_count`` + 1 models (``per_example``: at least 3), so that every model
    left out still leaves ``min_count`` on each side; records are never half-scored.
    """
    phi, mask = check_pair(phi, member_in)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'online' or 'offline', got {variant!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be 'per_example' or 'fixed', got {variance!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) \
            or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    if not np.isfinite(phi).all():
        raise ValueError("phi holds NaN or infinite values")
    need = max(int(min_count), 2) if variance == "per_example" else int(min_count)
    hypotheses = [~mask] if variant == "offline" else [~mask, mask]
    fits = []
    # A record is scored for every model or for none: leaving out an IN model takes one
    # sample from the IN side only, so a per-model count check would drop positives (and not
    # negatives) exactly where a side is small, biasing what remains.
    enough = np.ones(phi.shape[1], dtype=bool)
    for side in hypotheses:
        _, mean, sd = _loo_moments(phi, side)
        if variance == "fixed":
            sd = _pooled_loo_sd(phi, side)
        enough &= side.sum(axis=0) - 1 >= need
        # sd is NaN/inf only where n < 2, which `enough` masks anyway.
        fits.append((mean, np.maximum(np.where(np.isfinite(sd), sd, 0.0), SD_FLOOR)))
    (mu_out, sd_out) = fits[0]
    if variant == "offline":
        scores = (phi - mu_out) / sd_out
    else:
        mu_in, sd_in = fits[1]
        scores = _log_normal(phi, mu_in, sd_in) - _log_normal(phi, mu_out, sd_out)
    return np.where(enough[None, :], scores, np.nan)


def roc_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1 %, 0.1 % and 0 % FPR over every (model, record) decision.

    NaN scores are dropped first (records lira_scores could not fit); ``n_positive`` and
    ``n_negative`` count what remains. :func:`tasks.analysis.statistics.roc_summary`: one
    sort for all four numbers, as the bootstraps and permutations call this thousands of
    times.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have one shape")
    s, y = s.ravel(), y.ravel().astype(bool)
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    out = {"n_positive": n_pos, "n_negative": n_neg}
    if n_pos == 0 or n_neg == 0:
        return {"auc": float("nan"), "tpr_at_1pct": float("nan"),
                "tpr_at_0_1pct": float("nan"), "tpr_at_0": float("nan"), **out}
    auc_value, tprs = roc_summary(y, s, (0.01, 0.001, 0.0))
    return {"auc": auc_value, "tpr_at_1pct": tprs[0], "tpr_at_0_1pct": tprs[1],
            "tpr_at_0": tprs[2], **out}


def per_record_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each column (record) of (M, R) ``scores`` against ``labels``, shape (R,).

    Not what the tables report per record: on leave-one-out U-LiRA scores it sits below 0.5
    when nothing leaks (each model is scored by fits without it, which lean to the other
    side); :func:`tasks.analysis.record_tests.record_auc` is calibrated.

    Mann-Whitney form with average ranks, so ties count one half (as scikit-learn does).
    NaN where a column has one class only or any NaN score.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be equal "
                         "(models, records) arrays")
    has_nan = np.isnan(s).any(axis=0)
    ranks = rankdata(np.where(np.isnan(s), 0.0, s), axis=0)  # NaN columns masked below
    n_pos = y.sum(axis=0)
    n_neg = len(y) - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(y, ranks, 0.0).sum(axis=0) - n_pos * (n_pos + 1) / 2
        out = u / (n_pos * n_neg)
    return np.where(has_nan | (n_pos == 0) | (n_neg == 0), np.nan, out)


def record_summary(phi: np.ndarray, member_in: np.ndarray) -> dict[str, np.ndarray]:
    """Per record: ``n_in``, ``n_out`` and phi's mean and sd (ddof 1) on each side.

    A mean is NaN with no samples on its side, an sd with fewer than two.
    """
    phi, mask = check_pair(phi, member_in)
    out: dict[str, np.ndarray] = {}
    for side, sel in (("in", mask), ("out", ~mask)):
        n = sel.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(sel, phi, 0.0).sum(axis=0) / n
            ss = np.where(sel, (phi - mean[None]) ** 2, 0.0).sum(axis=0)
            sd = np.sqrt(ss / (n - 1))
        out[f"n_{side}"] = n
        out[f"phi_{side}_mean"] = np.where(n > 0, mean, np.nan)
        out[f"phi_{side}_std"] = np.where(n > 1, sd, np.nan)
    return out
