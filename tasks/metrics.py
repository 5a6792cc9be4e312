"""Image-reconstruction metrics on [0, 1] images, and Hungarian matching of reconstructions.

Every image metric takes arrays or tensors shaped (n, C, H, W) (or (C, H, W)) in [0, 1] space,
never normalised inputs (ATTACKS.md section 3.4): PSNR uses peak 1 and is computed per image;
``psnr_ref`` is the compatibility column of the reference implementation (peak 1/std_c).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

__all__ = ["image_scores", "match_reconstructions", "mse", "psnr", "psnr_ref", "ssim"]


def _as4d(x) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float64))
    t = t.detach().to(torch.float64)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4:
        raise ValueError(f"expected images shaped (n, C, H, W) or (C, H, W), got {tuple(t.shape)}")
    return t


def mse(x_hat, x) -> np.ndarray:
    """Per-image mean squared error, (n,)."""
    a, b = _as4d(x_hat), _as4d(x)
    return ((a - b) ** 2).flatten(1).mean(1).numpy()


def psnr(x_hat, x, peak: float = 1.0) -> np.ndarray:
    """Per-image PSNR in dB, 10 log10(peak^2 / MSE); +inf for identical images."""
    m = mse(x_hat, x)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(peak**2 / m)


def psnr_ref(x_hat, x, std: Sequence[float]) -> np.ndarray:
    """mean_c 10 log10(1 / (std_c^2 MSE)): PSNR measured in normalised space, as the
    reference implementation reports it. Equals psnr + mean_c 20 log10(1/std_c)."""
    offset = float(np.mean([20.0 * math.log10(1.0 / s) for s in std]))
    return psnr(x_hat, x) + offset


def ssim(x_hat, x, window: int = 11, sigma: float = 1.5, peak: float = 1.0) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004), (n,), from scikit-image's ``structural_similarity``:
    Gaussian weights (sigma 1.5, 11 taps), population covariance, data range ``peak``, each
    channel scored apart and averaged, borders of half a window left out. The window shrinks
    to the largest odd size that fits small images (7 for 8x8 digits)."""
    a, b = _as4d(x_hat).numpy(), _as4d(x).numpy()
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape, got {a.shape} and {b.shape}")
    size = min(window, a.shape[2], a.shape[3])
    if size % 2 == 0:
        size -= 1
    return np.array([structural_similarity(a[i], b[i], win_size=size, gaussian_weights=True,
                                           sigma=sigma, use_sample_covariance=False,
                                           data_range=peak, channel_axis=0)
                     for i in range(len(a))], dtype=np.float64)


def match_reconstructions(x_hat, x) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment of reconstructions to originals by MSE.

    Returns ``(rows, cols)``: reconstruction ``rows[i]`` is scored against original
    ``cols[i]``. With unequal counts only min(len(x_hat), len(x)) pairs are made.
    """
    a, b = _as4d(x_hat), _as4d(x)
    cost = ((a[:, None] - b[None]) ** 2).flatten(2).mean(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return rows, cols


def image_scores(x_hat, x, std: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """mse, psnr, ssim (and psnr_ref when ``std`` is given), each per image (n,)."""
    out = {"mse": mse(x_hat, x), "psnr": psnr(x_hat, x), "ssim": ssim(x_hat, x)}
    if std is not None:
        out["psnr_ref"] = psnr_ref(x_hat, x, std)
    return out
