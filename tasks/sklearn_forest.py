"""Random forests grown without scikit-learn's per-tree Python set-up.

``RandomForestClassifier.fit`` spends about half of a 100-tree fit on 2,000 Adult records in
Python around each tree (parameter validation, ``clone``/``set_params``, target checks); the
membership stage fits hundreds of such forests. :func:`fit_forest` grows the same trees (same
tree seeds, bootstrap counts, splitter and builder, called directly) and
:class:`FittedForest` predicts as the forest does with one job, so every number is the same to
the bit. Each process checks this once against scikit-learn's own ``fit`` on a small problem
and otherwise falls back to it (a release that changed these internals).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FittedForest:
    """The trees of a random forest classifier, and its ``predict_proba``: the trees' class
    fractions summed in tree order and divided by their count, as scikit-learn's forest does
    with one job, so the numbers are the same to the bit."""

    def __init__(self, trees: list, classes: np.ndarray) -> None:
        self.trees = trees
        self.classes_ = classes

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float32)
        n_classes = len(self.classes_)
        out = np.zeros((len(rows), n_classes))
        for tree in self.trees:
            out += tree.predict(rows)[:, :n_classes]
        out /= len(self.trees)
        return out


_MAX_INT = np.iinfo(np.int32).max
_FOREST_DEFAULTS = {"bootstrap": True, "oob_score": False, "warm_start": False,
                    "class_weight": None, "max_samples": None, "max_leaf_nodes": None,
                    "min_weight_fraction_leaf": 0.0, "min_impurity_decrease": 0.0,
                    "ccp_alpha": 0.0, "monotonic_cst": None}
_FOREST_CHECKED: list[bool] = []  # this process's verdict of _forest_matches_sklearn


def _forest_params(estimator: Any) -> dict[str, Any] | None:
    """The settings of a plain ``RandomForestClassifier`` that :func:`_grow` reproduces, or
    None (anything else is fitted by scikit-learn)."""
    try:
        from sklearn.ensemble import RandomForestClassifier
    except ImportError:  # pragma: no cover
        return None
    if type(estimator) is not RandomForestClassifier:
        return None
    params = estimator.get_params(deep=False)
    if any(params.get(k) != v for k, v in _FOREST_DEFAULTS.items()):
        return None
    if (params["criterion"] not in ("gini", "entropy", "log_loss")
            or not isinstance(params["random_state"], (int, np.integer))
            or isinstance(params["random_state"], bool)
            or not isinstance(params["min_samples_leaf"], (int, np.integer))
            or not isinstance(params["min_samples_split"], (int, np.integer))
            or not (params["max_features"] in ("sqrt", "log2", None)
                    or isinstance(params["max_features"], (int, np.integer)))):
        return None
    # Values scikit-learn refuses are left to it, so its own error is raised.
    depth = params["max_depth"]
    if (params["n_estimators"] < 1 or params["min_samples_leaf"] < 1
            or params["min_samples_split"] < 2 or (depth is not None and depth < 1)
            or (isinstance(params["max_features"], (int, np.integer))
                and params["max_features"] < 1)):
        return None
    return params


def _grow(params: dict[str, Any], x: np.ndarray, y: np.ndarray) -> FittedForest:
    """The trees ``RandomForestClassifier(**params).fit(x, y)`` grows (single output, no
    sample weights, bootstrap): the same tree seeds, bootstrap counts, splitter and builder,
    called directly."""
    from sklearn.tree._criterion import Entropy, Gini
    from sklearn.tree._splitter import BestSplitter
    from sklearn.tree._tree import DepthFirstTreeBuilder, Tree

    n_samples, n_features = x.shape
    classes, encoded = np.unique(y, return_inverse=True)
    targets = np.ascontiguousarray(encoded.reshape(-1, 1), dtype=np.float64)
    n_classes = np.array([len(classes)], dtype=np.intp)
    max_features = params["max_features"]
    if max_features == "sqrt":
        max_features = max(1, int(np.sqrt(n_features)))
    elif max_features == "log2":
        max_features = max(1, int(np.log2(n_features)))
    elif max_features is None:
        max_features = n_features
    leaf = int(params["min_samples_leaf"])
    split = max(int(params["min_samples_split"]), 2 * leaf)
    depth = _MAX_INT if params["max_depth"] is None else int(params["max_depth"])
    criterion = Gini if params["criterion"] == "gini" else Entropy
    forest_rng = np.random.RandomState(params["random_state"])
    # scikit-learn gives each tree a fresh RandomState(tree seed) for its bootstrap and
    # another for its splitter (which draws its own seed from it once, when built). Reseeding
    # one generator gives the same states without building a generator (and drawing OS
    # entropy for it) twice per tree.
    tree_rng = np.random.RandomState(0)
    trees = []
    for _ in range(int(params["n_estimators"])):
        tree_seed = forest_rng.randint(_MAX_INT)
        tree_rng.seed(tree_seed)
        picks = tree_rng.randint(0, n_samples, n_samples)
        weight = np.bincount(picks.astype(np.int32), minlength=n_samples).astype(np.float64)
        tree_rng.seed(tree_seed)
        splitter = BestSplitter(criterion(1, n_classes), max_features, leaf, 0.0, tree_rng,
                                None)
        tree = Tree(n_features, n_classes, 1)
        DepthFirstTreeBuilder(splitter, split, leaf, 0.0, depth, 0.0).build(
            tree, x, targets, weight, None)
        trees.append(tree)
    return FittedForest(trees, classes)


def _forest_matches_sklearn() -> bool:
    """Once per process: :func:`_grow` gives scikit-learn's own trees on a small problem
    (a scikit-learn release that changed its internals falls back to ``fit``)."""
    if not _FOREST_CHECKED:
        ok = False
        try:
            from sklearn.ensemble import RandomForestClassifier

            rng = np.random.default_rng(0)
            x = rng.normal(size=(120, 5)).astype(np.float32)
            y = (x[:, 0] + rng.normal(size=120) > 0).astype(np.int64) * 2 + 1
            ref = RandomForestClassifier(n_estimators=4, random_state=3, n_jobs=1)
            ref.fit(x, y)
            ours = _grow(ref.get_params(deep=False), x, y)
            ok = (np.array_equal(ref.classes_, ours.classes_)
                  and all(_same_tree(a.tree_, b) for a, b in zip(ref.estimators_, ours.trees,
                                                                  strict=True))
                  and np.array_equal(ref.predict_proba(x), ours.predict_proba(x)))
        except Exception:  # noqa: BLE001  (any failure: use scikit-learn's fit)
            ok = False
        _FOREST_CHECKED.append(ok)
    return _FOREST_CHECKED[0]


def _same_tree(a, b) -> bool:
    return all(np.array_equal(getattr(a, k), getattr(b, k))
               for k in ("children_left", "children_right", "feature", "threshold", "value"))


def fit_forest(estimator: Any, x: np.ndarray, y: np.ndarray) -> FittedForest | None:
    """``estimator.fit(x, y)``'s trees for a plain random forest classifier on dense, finite,
    single-output data, grown without scikit-learn's per-tree Python set-up (validation,
    ``clone``/``set_params`` of each tree: about half of a 100-tree fit on 2,000 Adult
    records); None for anything else, which the caller fits with ``estimator.fit``. The
    estimator itself is left unfitted."""
    params = _forest_params(estimator)
    y = np.asarray(y)
    if params is None or y.ndim != 1 or len(y) != len(x) or len(y) == 0:
        return None
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.kind not in "fiu":
        return None
    rows = np.asarray(x, dtype=np.float32)
    features = params["max_features"]
    if isinstance(features, (int, np.integer)) and features > rows.shape[1]:
        return None
    if not np.isfinite(rows).all() or not _forest_matches_sklearn():
        return None
    return _grow(params, rows, y)


__all__ = ["FittedForest", "fit_forest"]
