"""Baselines beside every result: majority class, logistic regression, random forest and gradient boosting
(scikit-learn), trained on the same rows as the MLP (same fill values and scaling, same file weights) and
scored on the same evaluation data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from foodcls.config import Config, validate_config
from foodcls.data import LabelledData, read_labelled_csvs, split_training_file
from foodcls.preprocessing import Preprocessing
from foodcls.inference.evaluate import classification_report
from foodcls.inference.network import Predictor
from foodcls.inference.predict import load_predictor

BASELINES = ("majority", "logistic_regression", "random_forest", "gradient_boosting")


def _models(seed: int) -> dict[str, Any]:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "majority": DummyClassifier(strategy="most_frequent"),
        "logistic_regression": LogisticRegression(max_iter=2000),
        "random_forest": RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
    }


def baseline_predictions(train: LabelledData, evaluation: np.ndarray, prep: Preprocessing, seed: int) -> dict[str, np.ndarray]:
    """Each baseline fitted on the training rows and its probabilities (n, classes) for every evaluation row
    (a class its training rows lack gets 0); the predicted class is their argmax."""
    x_train, x_eval = prep.apply(train.features), prep.apply(evaluation)
    predictions = {}
    for name, model in _models(seed).items():
        model.fit(x_train, train.labels, sample_weight=train.weights)
        probabilities = np.zeros((len(x_eval), len(train.classes)))
        probabilities[:, model.classes_] = model.predict_proba(x_eval)
        predictions[name] = probabilities
    return predictions


def stored_training_config(checkpoint_path: str | Path, predictor: Predictor | None = None) -> Config:
    """The checkpoint's training config, checked (the baselines train on its training rows): a one-line error
    before any work starts when it cannot serve. `predictor`: the checkpoint, when already loaded."""
    predictor = predictor if predictor is not None else load_predictor(checkpoint_path)
    return validate_config(predictor.config, f"{checkpoint_path}: its stored config")


def baseline_scores(checkpoint_path: str | Path, data_files: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """({name: accuracy}, {name: {accuracy, macro_f1, balanced_accuracy}}) on the evaluation files."""
    predictor = load_predictor(checkpoint_path)
    config = stored_training_config(checkpoint_path, predictor)
    train, _ = split_training_file(config)
    evaluation = read_labelled_csvs(data_files, predictor.features, predictor.classes, predictor.ignored_labels)
    details = {}
    for name, probabilities in baseline_predictions(train, evaluation.features, predictor.prep, config.train.seed).items():
        report = classification_report(evaluation.labels, probabilities.argmax(axis=1), predictor.classes)
        details[name] = {k: report[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    return {name: d["accuracy"] for name, d in details.items()}, details
