from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from tasks.metrics import match_reconstructions, mse, psnr, psnr_ref, ssim


def test_psnr_of_known_noise_matches_formula():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, size=(4, 3, 16, 16)).astype(np.float32)
    for sigma in (0.01, 0.05, 0.1):
        signs = rng.choice([-1.0, 1.0], size=x.shape)
        noisy = x + sigma * signs  # |error| = sigma everywhere, stays inside [0, 1]
        assert np.allclose(mse(noisy, x), sigma**2, rtol=1e-5)
        assert np.allclose(psnr(noisy, x), -20 * math.log10(sigma), atol=1e-3)
    # Gaussian noise: PSNR = 10 log10(1 / empirical MSE), per image.
    noisy = x + rng.normal(0, 0.05, size=x.shape)
    expect = [10 * math.log10(1 / np.mean((noisy[i] - x[i]) ** 2)) for i in range(4)]
    assert np.allclose(psnr(noisy, x), expect, atol=1e-6)


def test_psnr_ref_is_psnr_plus_the_std_offset():
    x = np.full((1, 3, 8, 8), 0.5)
    y = x + 0.1
    std = (0.247, 0.243, 0.262)
    offset = np.mean([20 * math.log10(1 / s) for s in std])
    assert psnr_ref(y, x, std)[0] == pytest.approx(psnr(y, x)[0] + offset)
    assert offset == pytest.approx(12.02, abs=0.01)  # the CIFAR-10 offset of ATTACKS.md 3.4


def _library_ssim(a, b, win_size):
    return np.array([structural_similarity(a[i], b[i], win_size=win_size, gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False,
                                           data_range=1.0, channel_axis=0)
                     for i in range(len(a))])


def test_ssim_is_scikit_image_structural_similarity():
    rng = np.random.default_rng(3)
    # CIFAR-sized colour images and 8x8 digits, where the window shrinks to 7 pixels.
    for shape, win in (((3, 3, 32, 32), 11), ((4, 1, 8, 8), 7)):
        x = rng.uniform(0, 1, size=shape)
        y = np.clip(x + rng.normal(0, 0.2, shape), 0, 1)
        np.testing.assert_allclose(ssim(y, x), _library_ssim(y, x, win), rtol=0, atol=1e-12)
    # A single (C, H, W) image is one image.
    assert ssim(y[0], x[0]).shape == (1,)
    # Two constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1).
    c1 = 0.01**2
    a, b = np.full((1, 3, 16, 16), 0.5), np.full((1, 3, 16, 16), 0.6)
    assert ssim(a, b)[0] == pytest.approx((2 * 0.3 + c1) / (0.25 + 0.36 + c1), rel=1e-12)


def test_ssim_identity_symmetry_and_degradation():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(2, 3, 32, 32))
    assert np.allclose(ssim(x, x), 1.0)
    a, b = x, np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    c = np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1)
    assert np.allclose(ssim(a, b), ssim(b, a))
    assert (ssim(a, c) < ssim(a, b)).all() and (ssim(a, b) < 1).all()
    # Small (8x8 digits) images shrink the window instead of failing.
    d = rng.uniform(0, 1, size=(1, 1, 8, 8))
    assert ssim(d, d)[0] == pytest.approx(1.0)
    assert ssim(d, np.clip(d + rng.normal(0, 0.1, d.shape), 0, 1))[0] < 0.99


def test_hungarian_matching_undoes_a_permutation():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(5, 1, 8, 8))
    perm = np.array([3, 0, 4, 1, 2])
    rec = x[perm] + rng.normal(0, 0.01, x.shape)
    rows, cols = match_reconstructions(rec, x)
    assert (cols[np.argsort(rows)] == perm).all()
