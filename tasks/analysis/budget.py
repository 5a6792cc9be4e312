"""What a shadow budget buys: U-LiRA with a given number of shadow models per record, scored on
a fixed set of target models (issue 28, item 6).

The members split into shadow models (whose outputs fit the Gaussians) and target models
(which are scored), so every budget is judged on the same target pairs. For a budget of ``b``
models a side, each record's fit takes the first ``b`` shadow models that unlearned it (IN) and
the first ``b`` that never saw it (OUT), in one seeded order of the shadow models; a record
with fewer on a side is left out at that budget (``n_records`` says how many were scored).
One variance is pooled over records (LiRA's advice for small budgets), so ``b`` starts at 2:
with one model a side there is no spread to pool. ``offline`` fits OUT only (``b`` shadow
models a record); ``online`` fits both sides (``2 b``).
"""

from __future__ import annotations

import numpy as np

from tasks.analysis.per_example import SD_FLOOR, check_pair

__all__ = ["budget_scores", "per_side_budgets"]


def per_side_budgets(in_shadow: np.ndarray) -> list[int]:
    """2, 4, 8, ... up to the largest number of shadow models every record has on each side
    (that largest number too, when it is no power of two)."""
    mask = np.asarray(in_shadow, dtype=bool)
    most = int(min(mask.sum(0).min(), (~mask).sum(0).min()))
    out = [b for b in (2 ** k for k in range(1, 20)) if b <= most]
    if most >= 2 and (not out or out[-1] != most):
        out.append(most)
    return out


def _first(side: np.ndarray, order: np.ndarray, b: int) -> np.ndarray:
    """(S, R) mask: the first ``b`` shadow models in ``order`` on ``side``, per record."""
    ranked = side[order]
    chosen = ranked & (np.cumsum(ranked, axis=0) <= b)
    out = np.zeros_like(chosen)
    out[order] = chosen
    return out


def _fit(phi: np.ndarray, chosen: np.ndarray, scored: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-record means, and one standard deviation pooled over the ``scored`` records
    (ddof 1 each): every fit at a budget uses exactly that many models a record."""
    chosen = chosen & scored[None, :]
    n = chosen.sum(0)
    mean = np.where(chosen, phi, 0.0).sum(0) / np.maximum(n, 1)
    ss = np.where(chosen, (phi - mean) ** 2, 0.0).sum()
    dof = float((n - 1).clip(0).sum())
    sd = float(np.sqrt(ss / dof)) if dof > 0 else 0.0
    return mean, max(sd, SD_FLOOR)


def budget_scores(phi_shadow: np.ndarray, in_shadow: np.ndarray, phi_target: np.ndarray,
                  per_side: int, variant: str, seed: int) -> np.ndarray:
    """U-LiRA scores (T, R) of the target models from ``per_side`` shadow models a side per
    record (larger = more likely IN); NaN for records with fewer."""
    phi_s, mask = check_pair(phi_shadow, in_shadow)
    phi_t = np.asarray(phi_target, dtype=np.float64)
    if phi_t.ndim != 2 or phi_t.shape[1] != phi_s.shape[1]:
        raise ValueError(f"phi_target {phi_t.shape} must be (targets, {phi_s.shape[1]})")
    if variant not in ("online", "offline"):
        raise ValueError(f"variant must be 'online' or 'offline', got {variant!r}")
    if per_side < 2:
        raise ValueError(f"per_side must be >= 2 (a pooled spread needs two), got {per_side}")
    order = np.random.default_rng([seed, 53]).permutation(len(phi_s))
    out_chosen = _first(~mask, order, per_side)
    enough = out_chosen.sum(0) == per_side
    if variant == "online":
        in_chosen = _first(mask, order, per_side)
        enough &= in_chosen.sum(0) == per_side
    mu_out, sd_out = _fit(phi_s, out_chosen, enough)
    if variant == "offline":
        scores = (phi_t - mu_out) / sd_out
    else:
        mu_in, sd_in = _fit(phi_s, in_chosen, enough)
        scores = (-0.5 * ((phi_t - mu_in) / sd_in) ** 2 - np.log(sd_in)
                  + 0.5 * ((phi_t - mu_out) / sd_out) ** 2 + np.log(sd_out))
    return np.where(enough[None, :], scores, np.nan)
