"""Reconstruction of a deleted record from a linear model's update (after HRec, Bertran et al.,
"Reconstruction Attacks on Machine Unlearning: Simple Models are Vulnerable", NeurIPS 2024;
no public code was found, so this follows the paper's idea, not its code).

For a linear model with an intercept, parameters θ̃ = (w, b) over x̃ = (x, 1), trained to the
minimum of ``Σ_i ℓ(y_i, x̃_iᵀθ̃) + λ/2 ‖w‖²`` and refit without the record (x*, y*), the
optimality conditions of θ and θ_u give

- ridge regression (ℓ squared error): ``H (θ_u − θ) = x̃* (x̃*ᵀθ_u − y*)`` exactly, with
  ``H = X̃ᵀX̃ + λ D`` the training covariance (``D`` = identity without the intercept);
- logistic regression: ``H (θ_u − θ) ≈ (σ(x̃*ᵀθ) − y*) x̃*`` (one Newton step from θ), with
  ``H = Σ_i σ'(x̃_iᵀθ) x̃_i x̃_iᵀ + λ D`` the Hessian of the training loss.

So the record is ``H Δθ`` up to a scalar, and the intercept coordinate (x̃*'s last entry is 1)
fixes the scalar and its sign. Without the training data the attacker estimates ``H`` from
public records, scaled to the training set's size. Two baselines: **MaxDiff** (the public
record whose prediction changed most between θ and θ_u) and the **public mean**. The measures:
the cosine to the deleted record, and the cosine after subtracting the public mean ("centred":
on non-negative pixels every image has a high cosine to the mean image, the mean included).

Functions only, on arrays; not (yet) an attack of the generic ``attacks`` stage: its cases
hold no public records for an attack to estimate ``H`` from.
"""

from __future__ import annotations

import numpy as np

__all__ = ["centred_cosine", "cosine", "logistic_hessian", "maxdiff", "reconstruct",
           "ridge_hessian"]


def _augmented(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return np.hstack([x, np.ones((len(x), 1))])


def _penalty(d: int, lam: float) -> np.ndarray:
    """λ D: the penalty's Hessian, the intercept unpenalised (as scikit-learn fits it)."""
    diag = np.full(d + 1, float(lam))
    diag[-1] = 0.0
    return np.diag(diag)


def ridge_hessian(x: np.ndarray, lam: float, n_train: int | None = None) -> np.ndarray:
    """``X̃ᵀX̃ + λ D`` from records ``x`` (the training set itself, or public records whose
    sum is scaled up to ``n_train`` records). Squared error halved: λ is scikit-learn's
    ``Ridge(alpha)``."""
    xa = _augmented(x)
    scale = 1.0 if n_train is None else n_train / len(xa)
    return scale * xa.T @ xa + _penalty(xa.shape[1] - 1, lam)


def logistic_hessian(x: np.ndarray, w: np.ndarray, b: float, lam: float,
                     n_train: int | None = None) -> np.ndarray:
    """``Σ σ'(x̃ᵀθ) x̃x̃ᵀ + λ D`` at θ = (w, b). For scikit-learn's
    ``LogisticRegression(C)``, λ = 1 / C."""
    xa = _augmented(x)
    p = 1.0 / (1.0 + np.exp(-(xa @ np.append(np.ravel(w), b))))
    scale = 1.0 if n_train is None else n_train / len(xa)
    return scale * (xa * (p * (1 - p))[:, None]).T @ xa + _penalty(xa.shape[1] - 1, lam)


def reconstruct(w: np.ndarray, b: float, w_u: np.ndarray, b_u: float,
                hessian: np.ndarray) -> np.ndarray:
    """The deleted record: ``H Δθ`` scaled so that its intercept coordinate is 1."""
    delta = np.append(np.ravel(w_u) - np.ravel(w), b_u - b).astype(np.float64)
    g = hessian @ delta
    if not np.isfinite(g).all() or abs(g[-1]) < 1e-300:
        raise ValueError("the update has no intercept component: the record's scale is lost")
    return g[:-1] / g[-1]


def maxdiff(public: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The public record whose prediction (score, probability) moved most."""
    change = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
    return np.asarray(public)[int(np.argmax(change.reshape(len(change), -1).sum(1)))]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def centred_cosine(guess: np.ndarray, record: np.ndarray, mean: np.ndarray) -> float:
    """Cosine after subtracting the public mean: 0 for the mean itself, 1 for the record."""
    mean = np.ravel(mean)
    return cosine(np.ravel(guess) - mean, np.ravel(record) - mean)
