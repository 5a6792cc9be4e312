"""The parts of membership inference against unlearning, selected by name (Chen et al.).

Three lookup tables (an unknown name lists the known ones):

- :data:`OUTPUT_TRANSFORMS`: stored logits (n, C) -> the posteriors (n, C) the attacker sees.
  ``none`` is the plain softmax. Output defences (label-only, top-k, temperature) plug in
  here; they are applied to shadow and target logits alike, before *every* feature,
  including ``basic_mia`` (ATTACKS.md 6.4: the adaptive attacker).
- :data:`FEATURES`: (p, q) -> (n, d) attack features.
- :data:`ATTACK_MODELS`: seed -> an unfitted scikit-learn binary classifier.

Example::

    p = posteriors(orig_logits)            # (n, C), transform "none"
    q = posteriors(unlearned_logits)
    x = FEATURES.get("sorted_diff")(p, q)  # (n, C)
    scores = fit_and_score(x_shadow, y_shadow, x_target, "dt")

The attack itself (a registry entry of :data:`tasks.attacks.ATTACKS`) is
:mod:`tasks.attacks.membership`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.registry import Registry
from tasks.sklearn_forest import fit_forest

Array = np.ndarray

# --- posteriors: the seam for output defences ------------------------------------------------

PosteriorTransform = Callable[..., Array]  # (logits (n, C), **params) -> posteriors (n, C)
OUTPUT_TRANSFORMS: Registry[PosteriorTransform] = Registry("output defence")


def softmax(logits: Array) -> Array:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@OUTPUT_TRANSFORMS.register("none")
def undefended(logits: Array) -> Array:
    """Plain softmax of the stored logits (scikit-learn logits are log-probabilities, so this
    returns their probabilities unchanged; SISA logits are the log of the mean shard softmax)."""
    return softmax(logits)


def posteriors(logits: Array, transform: str = "none",
               params: dict[str, Any] | None = None) -> Array:
    """logits (n, C) -> posteriors (n, C) under the named output transform."""
    out = OUTPUT_TRANSFORMS.get(transform)(np.asarray(logits), **(params or {}))
    if out.shape != np.shape(logits):
        raise ValueError(f"output defence {transform!r} changed the shape {np.shape(logits)} "
                         f"-> {out.shape}")
    return out


# --- features (p: original posterior, q: unlearned posterior; both (n, C)) ------------------

FeatureFn = Callable[[Array, Array], Array]
FEATURES: Registry[FeatureFn] = Registry("membership feature")
CLASSICAL = "basic_mia"
UNLEARNING_FEATURES = ("direct_diff", "sorted_diff", "direct_concat", "sorted_concat",
                       "l2_distance")


def _sort_by_p(p: Array, q: Array) -> tuple[Array, Array]:
    s = np.argsort(p, axis=1, kind="stable")  # ascending, as the reference
    return np.take_along_axis(p, s, axis=1), np.take_along_axis(q, s, axis=1)


@FEATURES.register("direct_diff")
def direct_diff(p: Array, q: Array) -> Array:
    """p - q: (n, C)."""
    return p - q


@FEATURES.register("sorted_diff")
def sorted_diff(p: Array, q: Array) -> Array:
    """p[s] - q[s] with s = argsort(p) ascending: (n, C)."""
    ps, qs = _sort_by_p(p, q)
    return ps - qs


@FEATURES.register("direct_concat")
def direct_concat(p: Array, q: Array) -> Array:
    """[p, q]: (n, 2C)."""
    return np.concatenate([p, q], axis=1)


@FEATURES.register("sorted_concat")
def sorted_concat(p: Array, q: Array) -> Array:
    """[p[s], q[s]] with s = argsort(p) ascending: (n, 2C)."""
    return np.concatenate(_sort_by_p(p, q), axis=1)


@FEATURES.register("l2_distance")
def l2_distance(p: Array, q: Array) -> Array:
    """||p - q||_2: (n, 1)."""
    return np.linalg.norm(p - q, axis=1, keepdims=True)


@FEATURES.register(CLASSICAL)
def basic_mia(p: Array, q: Array) -> Array:
    """The classical MIA baseline on the original posterior alone: p, (n, C)."""
    return np.array(p, copy=True)


def build_features(name: str, p: Array, q: Array) -> Array:
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"p {p.shape} and q {q.shape} must both be (n, C)")
    return np.asarray(FEATURES.get(name)(p, q), dtype=np.float64)


# --- attack classifiers (ATTACKS.md 6.5) ------------------------------------------------------

ATTACK_MODELS: Registry[Callable[[int], Any]] = Registry("attack model")


@ATTACK_MODELS.register("dt")
def _dt(seed: int):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_leaf_nodes=10, random_state=seed)


@ATTACK_MODELS.register("rf")
def _rf(seed: int):
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=500, min_samples_leaf=30, random_state=seed,
                                  n_jobs=1)


@ATTACK_MODELS.register("lr")
def _lr(seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # The scaler is fitted once, on the shadow features, and reused on the target rows.
    return make_pipeline(StandardScaler(),
                         LogisticRegression(solver="lbfgs", max_iter=400, random_state=seed))


@ATTACK_MODELS.register("mlp")
def _mlp(seed: int):
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=(100,), solver="adam", learning_rate_init=0.01,
                         early_stopping=True, max_iter=200, random_state=seed)


def attack_model(name: str, seed: int, params: dict[str, Any] | None = None):
    """Unfitted attack model ``name``; ``params``: scikit-learn ``set_params`` overrides of
    its registry settings (e.g. ``{"max_leaf_nodes": 30}``, ``{"logisticregression__C": 2}``)."""
    clf = ATTACK_MODELS.get(name)(seed)
    return clf.set_params(**params) if params else clf


def _no_early_stopping_on_few_rows(clf, y_train: Array) -> None:
    """An MLP's early stopping holds out a stratified validation fraction, which needs at
    least one row of each class on both sides: with fewer shadow rows (half of a small shadow
    set, as a pair's pre-registered test fits on) it is turned off instead of failing."""
    if not getattr(clf, "early_stopping", False):
        return
    n, counts = len(y_train), np.bincount(y_train)
    held = int(np.ceil(clf.validation_fraction * n))
    if held < 2 or n - held < 2 or counts[counts > 0].min() < 2:
        clf.set_params(early_stopping=False)


@dataclass(frozen=True)
class AttackScores:
    """P(member) of a fitted attack on its training (shadow) and test (target) rows."""

    train: Array  # (n_shadow,)
    test: Array  # (n_target,)


def fit_and_score(x_train: Array, y_train: Array, x_test: Array, model: str = "dt",
                  seed: int = 0, params: dict[str, Any] | None = None) -> AttackScores:
    """Fit attack ``model`` (with ``params``, see :func:`attack_model`) on shadow features,
    score both sides. Labels: 1 = member."""
    y_train = np.asarray(y_train).astype(int)
    if len(np.unique(y_train)) < 2:
        raise ValueError("the shadow rows hold a single membership label: nothing to learn")
    clf = attack_model(model, seed, params)
    _no_early_stopping_on_few_rows(clf, y_train)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    # A random forest grows the same trees without scikit-learn's per-tree set-up.
    fitted = fit_forest(clf, np.asarray(x_train), y_train)
    if fitted is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x_train, y_train)
        fitted = clf
    col = list(fitted.classes_).index(1)
    return AttackScores(fitted.predict_proba(x_train)[:, col],
                        fitted.predict_proba(x_test)[:, col])


__all__ = ["ATTACK_MODELS", "CLASSICAL", "FEATURES", "OUTPUT_TRANSFORMS",
           "UNLEARNING_FEATURES", "AttackScores", "attack_model", "build_features",
           "fit_and_score", "posteriors", "softmax"]
