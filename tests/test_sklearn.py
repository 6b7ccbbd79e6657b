"""foodcls's network as a scikit-learn estimator: scikit-learn's own estimator checks, and the places an
estimator goes (Pipeline, cross_val_score, GridSearchCV, a conformal wrapper)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from foodcls.sklearn import FoodClassifier  # noqa: E402

# Small and quick, as the checks fit dozens of times; big enough to learn their toy problems.
QUICK = {"hidden": (16,), "optimizer": "adam", "lr": 0.05, "epochs": 40, "batch_size": 32}


@parametrize_with_checks([FoodClassifier(**QUICK)], expected_failed_checks=lambda estimator: estimator.expected_failed_checks())
def test_scikit_learns_estimator_checks(estimator, check):
    check(estimator)


def test_in_a_pipeline_cross_validated_searched_and_pickled():
    X, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), FoodClassifier(**QUICK, random_state=0))
    scores = cross_val_score(pipeline, X, y, cv=3)
    assert scores.mean() > 0.85
    search = GridSearchCV(FoodClassifier(**QUICK, random_state=0), {"lr": [0.01, 0.05]}, cv=3).fit(X, y)
    assert search.best_params_["lr"] in (0.01, 0.05) and search.best_score_ > 0.85
    fitted = FoodClassifier(**QUICK, random_state=0).fit(X, y)
    again = FoodClassifier(**QUICK, random_state=0).fit(X, y)
    assert np.array_equal(fitted.predict_proba(X), again.predict_proba(X))  # the same seed, the same numbers
    restored = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(restored.predict_proba(X), fitted.predict_proba(X))


def test_it_trains_with_foodcls_stack_and_keeps_its_checkpoint():
    X, y = load_iris(return_X_y=True)
    fitted = FoodClassifier(**QUICK, random_state=1, validation_fraction=0.2, early_stopping=5, ensemble=2).fit(X, y)
    arrays, meta = fitted.checkpoint_
    assert meta["ensemble"] == 2 and meta["generic_features"] is True and meta["features"] == ["x0", "x1", "x2", "x3"]
    assert fitted.predictor_.members == 2 and fitted.predictor_.temperature != 1.0  # calibrated on its validation rows


def test_a_conformal_wrapper_around_a_fitted_estimator():
    crepes = pytest.importorskip("crepes")
    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, calibrate, test = order[:90], order[90:120], order[120:]
    wrapped = crepes.WrapClassifier(FoodClassifier(**QUICK, random_state=0))
    wrapped.fit(X[train], y[train])
    wrapped.calibrate(X[calibrate], y[calibrate])
    sets = wrapped.predict_set(X[test], confidence=0.9)  # per product, the labels of its set
    assert len(sets) == len(test) and all(set(s) <= {0, 1, 2} for s in sets)
    coverage = np.mean([label in s for label, s in zip(y[test].tolist(), sets)])
    assert coverage >= 0.7  # 30 rows: a loose bound on the promised 0.9
