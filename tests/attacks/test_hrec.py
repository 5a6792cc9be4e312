"""Reconstruction of a deleted record from a linear model's update (after HRec; issue 28,
item 3b), on digits with scikit-learn's ridge and logistic regression refit without the record.

With the training covariance, ridge regression gives the record back exactly; with public
records only, ridge and logistic regression give it back above MaxDiff and the public mean on
the centred measure, where a public record drawn at random scores about nothing (the
measure's null).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression, Ridge

from tasks.attacks.hrec import (
    centred_cosine,
    cosine,
    logistic_hessian,
    maxdiff,
    reconstruct,
    ridge_hessian,
)

ALPHA, C = 1.0, 1.0
N_TRAIN, N_PUBLIC, DELETED = 800, 400, 12


@pytest.fixture(scope="module")
def split():
    digits = load_digits()
    x = digits.data / 16.0
    order = np.random.default_rng(0).permutation(len(x))
    train, public = order[:N_TRAIN], order[N_TRAIN:N_TRAIN + N_PUBLIC]
    return x, digits.target, train, public


def _ridge(x, y):
    return Ridge(alpha=ALPHA).fit(x, y)


def _logistic(x, y):
    return LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x, y)


def _attacks(split, kind: str) -> dict[str, list[float]]:
    """Per deleted record: centred cosine of HRec (training covariance and public records),
    MaxDiff, the public mean and a public record drawn at random (chance); HRec's raw cosine
    and the public mean's."""
    x, target, train, public = split
    y = target.astype(float) if kind == "ridge" else (target % 2).astype(float)
    fit = _ridge if kind == "ridge" else _logistic
    theta = fit(x[train], y[train])
    w, b = np.ravel(theta.coef_), float(np.ravel(theta.intercept_)[0])
    mean = x[public].mean(0)
    if kind == "ridge":
        h_train = ridge_hessian(x[train], ALPHA)
        h_public = ridge_hessian(x[public], ALPHA, n_train=N_TRAIN)
    else:
        h_train = logistic_hessian(x[train], w, b, 1 / C)
        h_public = logistic_hessian(x[public], w, b, 1 / C, n_train=N_TRAIN)
    out: dict[str, list[float]] = {k: [] for k in (
        "train_cov", "public", "maxdiff", "mean", "random", "raw_public", "raw_mean")}
    rng = np.random.default_rng(1)
    for i in range(DELETED):
        kept = np.delete(train, i)
        theta_u = fit(x[kept], y[kept])
        w_u, b_u = np.ravel(theta_u.coef_), float(np.ravel(theta_u.intercept_)[0])
        record = x[train[i]]
        guess = reconstruct(w, b, w_u, b_u, h_public)
        out["train_cov"].append(cosine(reconstruct(w, b, w_u, b_u, h_train), record))
        out["public"].append(centred_cosine(guess, record, mean))
        out["raw_public"].append(cosine(guess, record))
        predict = (lambda m, v: m.predict(v)) if kind == "ridge" else (
            lambda m, v: m.predict_proba(v)[:, 1])
        picked = maxdiff(x[public], predict(theta, x[public]), predict(theta_u, x[public]))
        out["maxdiff"].append(centred_cosine(picked, record, mean))
        out["mean"].append(centred_cosine(mean, record, mean))
        out["random"].append(centred_cosine(x[rng.choice(public)], record, mean))
        out["raw_mean"].append(cosine(mean, record))
    return out


def test_ridge_with_the_training_covariance_is_exact(split):
    scores = _attacks(split, "ridge")
    assert min(scores["train_cov"]) >= 0.99


@pytest.mark.parametrize("kind", ["ridge", "logistic"])
def test_public_records_beat_maxdiff_and_the_mean_on_the_centred_measure(split, kind):
    scores = {k: np.median(v) for k, v in _attacks(split, kind).items()}
    assert scores["public"] > scores["maxdiff"] + 0.1
    assert scores["public"] > scores["mean"] + 0.3 and scores["mean"] == 0.0
    # Chance: a public record drawn at random scores about nothing.
    assert abs(scores["random"]) < 0.2 and scores["public"] > scores["random"] + 0.5


def test_logistic_with_the_training_hessian_is_close_to_exact(split):
    """The Newton step is the only approximation left: close to, not exactly, the record."""
    assert np.median(_attacks(split, "logistic")["train_cov"]) >= 0.95


def test_an_update_without_intercept_change_is_refused():
    with pytest.raises(ValueError, match="no intercept component"):
        reconstruct(np.zeros(3), 0.0, np.zeros(3), 0.0, np.eye(4))
