"""Per-example membership inference against unlearning: U-LiRA's statistics (Hayes et al.).

phi[j, r] is model j's logit-scaled confidence on record r; member_in[j, r] says whether
record r was IN for model j (trained on, then unlearned) or OUT (never seen). Per record,
Gaussians are fitted to phi under both hypotheses and model j's output is scored by their
likelihood ratio, leave-one-out: model j's own output never enters the fit that scores it,
so every model serves once as the target and otherwise as a shadow.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from tasks.metrics_membership import auc, tpr_at_fpr

# A record whose phi is the same under every model (e.g. a saturated prediction) would
# otherwise give a zero variance and infinite scores.
SD_FLOOR = 1e-3


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) = logit_y - logsumexp(other logits), in float64.

    ``logits`` (..., n, C), ``labels`` (n,); finite even for saturated predictions."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.shape[-2] != len(y):
        raise ValueError(f"logits hold {z.shape[-2]} records, labels {len(y)}")
    picked = np.take_along_axis(z, np.broadcast_to(y[:, None], z.shape[:-1] + (1,)), -1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, np.broadcast_to(y[:, None], z.shape[:-1] + (1,)), -np.inf, -1)
    top = others.max(axis=-1, keepdims=True)
    lse = top[..., 0] + np.log(np.exp(others - top).sum(axis=-1))
    return picked - lse


def _loo_moments(phi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray]:
    """Leave-one-out count, mean and standard deviation of phi over ``mask`` per record,
    for each model j (its own entry removed when it is in the mask)."""
    w = mask.astype(np.float64)
    v = np.where(mask, phi, 0.0)
    n = w.sum(axis=0)[None] - w
    s = v.sum(axis=0)[None] - v
    s2 = (v * v).sum(axis=0)[None] - v * v
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
        var = (s2 - n * mean * mean) / np.maximum(n - 1, 1)
    return n, mean, np.sqrt(np.clip(var, 0, None))


def _pooled_sd(phi: np.ndarray, mask: np.ndarray) -> float:
    """One standard deviation for all records: phi minus its per-record mean, pooled."""
    n = mask.sum(axis=0)
    with np.errstate(invalid="ignore"):
        means = np.where(mask, phi, 0.0).sum(axis=0) / np.maximum(n, 1)
    dev = np.where(mask, phi - means[None], 0.0)
    dof = max(int(mask.sum()) - int((n > 0).sum()), 1)
    return float(np.sqrt((dev * dev).sum() / dof))


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / sd) ** 2 - np.log(sd)


def lira_scores(phi: np.ndarray, member_in: np.ndarray, variant: str = "online",
                variance: str = "per_example", min_count: int = 2) -> np.ndarray:
    """Scores (M, R), larger = more likely IN; NaN where a record has fewer than
    ``min_count`` leave-one-out samples under a hypothesis the variant needs.

    online: log N(phi; IN) - log N(phi; OUT); offline: (phi - mu_OUT) / sd_OUT.
    variance: ``per_example`` (each record's own spread) or ``fixed`` (one pooled spread per
    hypothesis, the choice of LiRA with few shadow models)."""
    phi = np.asarray(phi, dtype=np.float64)
    member_in = np.asarray(member_in, dtype=bool)
    if phi.ndim != 2 or phi.shape != member_in.shape:
        raise ValueError(f"phi {phi.shape} and member_in {member_in.shape} must be equal "
                         "(models, records) arrays")
    if variant not in ("online", "offline"):
        raise ValueError(f"variant must be 'online' or 'offline', got {variant!r}")
    if variance not in ("per_example", "fixed"):
        raise ValueError(f"variance must be 'per_example' or 'fixed', got {variance!r}")
    if not np.isfinite(phi).all():
        raise ValueError("phi holds NaN or infinite values")
    n_out, mu_out, sd_out = _loo_moments(phi, ~member_in)
    if variance == "fixed":
        sd_out = np.full_like(phi, _pooled_sd(phi, ~member_in))
    sd_out = np.maximum(sd_out, SD_FLOOR)
    if variant == "offline":
        scores = (phi - mu_out) / sd_out
        return np.where(n_out >= min_count, scores, np.nan)
    n_in, mu_in, sd_in = _loo_moments(phi, member_in)
    if variance == "fixed":
        sd_in = np.full_like(phi, _pooled_sd(phi, member_in))
    sd_in = np.maximum(sd_in, SD_FLOOR)
    scores = _log_normal(phi, mu_in, sd_in) - _log_normal(phi, mu_out, sd_out)
    return np.where((n_out >= min_count) & (n_in >= min_count), scores, np.nan)


def roc_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1 %, 0.1 % and 0 % FPR over every (model, record) decision (NaN
    scores dropped), with the project's one TPR-at-FPR convention."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).astype(int).ravel()
    keep = ~np.isnan(s)
    s, y = s[keep], y[keep]
    return {"auc": auc(y, s), "tpr_at_1pct": tpr_at_fpr(y, s, 0.01),
            "tpr_at_0_1pct": tpr_at_fpr(y, s, 0.001), "tpr_at_0": tpr_at_fpr(y, s, 0.0),
            "n_positive": int(y.sum()), "n_negative": int(len(y) - y.sum())}


def per_record_auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each record's column (ties averaged); NaN where a column has one class or NaN
    scores."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    ranks = rankdata(s, axis=0)
    n_pos = y.sum(axis=0)
    n_neg = len(y) - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.where(y, ranks, 0).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    bad = (n_pos == 0) | (n_neg == 0) | np.isnan(s).any(axis=0)
    return np.where(bad, np.nan, out)


def record_summary(phi: np.ndarray, member_in: np.ndarray) -> dict[str, np.ndarray]:
    """Per record: IN/OUT counts and the mean and standard deviation of phi on each side."""
    out: dict[str, np.ndarray] = {}
    for side, mask in (("in", member_in), ("out", ~member_in)):
        n = mask.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(mask, phi, 0).sum(axis=0) / n
            var = np.where(mask, (phi - mean[None]) ** 2, 0).sum(axis=0) / np.maximum(n - 1, 1)
        out[f"n_{side}"] = n
        out[f"phi_{side}_mean"] = np.where(n > 0, mean, np.nan)
        out[f"phi_{side}_std"] = np.where(n > 1, np.sqrt(var), np.nan)
    return out
