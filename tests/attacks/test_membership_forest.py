"""The membership stage's forests (``tasks.sklearn_forest``): grown without scikit-learn's
per-tree set-up, they must be scikit-learn's own forests to the bit, or not be used."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from tasks.attacks.membership_features import fit_and_score
from tasks.models import ModelConfig, SklearnModel, build_sklearn_model
from tasks.sklearn_forest import fit_forest


def _data(n: int = 300, features: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    x[:, 3] = np.round(x[:, 3])  # ties, as label-encoded columns have
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n) > 0).astype(np.int64)
    return x, y


@pytest.mark.parametrize("settings", [
    {"n_estimators": 20},
    {"n_estimators": 15, "min_samples_leaf": 7, "max_depth": 6},
    {"n_estimators": 10, "criterion": "entropy", "max_features": "log2"},
    {"n_estimators": 5, "max_features": None, "min_samples_split": 9},
    {"n_estimators": 5, "max_features": 2},
])
def test_grown_forest_is_sklearns_forest(settings):
    x, y = _data()
    y = np.where(y == 1, 7, 3)  # labels that are not 0..K-1
    ref = RandomForestClassifier(random_state=11, n_jobs=1, **settings).fit(x, y)
    ours = fit_forest(RandomForestClassifier(random_state=11, n_jobs=1, **settings), x, y)
    assert ours is not None and list(ours.classes_) == [3, 7]
    assert len(ours.trees) == len(ref.estimators_)
    for tree, est in zip(ours.trees, ref.estimators_, strict=True):
        for name in ("children_left", "children_right", "feature", "threshold", "value"):
            assert np.array_equal(getattr(tree, name), getattr(est.tree_, name))
    query = _data(200, seed=1)[0].astype(np.float64)
    assert np.array_equal(ours.predict_proba(query), ref.predict_proba(query))


def test_other_estimators_and_data_are_left_to_sklearn():
    x, y = _data(80)
    assert fit_forest(RandomForestClassifier(class_weight="balanced", random_state=0), x,
                      y) is None
    assert fit_forest(RandomForestClassifier(random_state=None), x, y) is None
    assert fit_forest(RandomForestClassifier(bootstrap=False, random_state=0), x, y) is None
    bad = x.copy()
    bad[0, 0] = np.nan
    assert fit_forest(RandomForestClassifier(random_state=0), bad, y) is None
    assert fit_forest(RandomForestClassifier(random_state=0), x, y[:, None]) is None
    assert fit_forest(RandomForestClassifier(max_features=99, random_state=0), x, y) is None
    assert fit_forest(RandomForestClassifier(max_features=0.5, random_state=0), x, y) is None


def test_sklearn_model_logits_and_estimator_match_a_plain_fit():
    x, y = _data(400)
    cfg = ModelConfig("rf", {"n_estimators": 25})
    model = build_sklearn_model(cfg, num_classes=3, seed=5).fit(x, y)
    plain = SklearnModel(RandomForestClassifier(n_estimators=25, random_state=5, n_jobs=1), 3)
    plain.estimator.fit(x, y)
    query = _data(100, seed=2)[0]
    assert model.batch_invariant and not plain.batch_invariant
    assert np.array_equal(model.logits(query), plain.logits(query))
    both = np.concatenate([query, x[:7]])
    assert np.array_equal(model.logits(both)[-7:], model.logits(x[:7]))
    # The estimator is scikit-learn's own fitted forest, the same trees.
    assert np.array_equal(model.estimator.predict_proba(query),
                          plain.estimator.predict_proba(query))


def test_rf_attack_scores_match_a_plain_fit():
    x, y = _data(300, features=4)
    xt = _data(100, features=4, seed=3)[0].astype(np.float64)
    scores = fit_and_score(x.astype(np.float64), y, xt, "rf", seed=4)
    ref = RandomForestClassifier(n_estimators=500, min_samples_leaf=30, random_state=4,
                                 n_jobs=1).fit(x.astype(np.float64), y)
    assert np.array_equal(scores.train, ref.predict_proba(x.astype(np.float64))[:, 1])
    assert np.array_equal(scores.test, ref.predict_proba(xt)[:, 1])
