"""Baselines beside every result: majority class, logistic regression, gradient boosting (scikit-learn),
trained on the checkpoint's own training data and scored on the same evaluation data as the MLP."""

from __future__ import annotations

from pathlib import Path

from foodcls.config import Config
from foodcls.data import fit_scale, read_labelled_csvs, split_training_file
from foodcls.evaluate import classification_report
from foodcls.labels import CLASSES
from foodcls.predict import load_predictor


def baseline_scores(checkpoint_path: str | Path, data_files: list[str]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """({name: accuracy}, {name: {accuracy, macro_f1, balanced_accuracy}}) on the evaluation files."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    config = Config.model_validate(load_predictor(checkpoint_path).config)
    seed = config.train.seed
    train, _ = split_training_file(config)
    evaluation = read_labelled_csvs(data_files)
    scale = fit_scale(train.features)  # the same scaling the MLP gets
    models = {
        "majority": DummyClassifier(strategy="most_frequent"),
        "logistic_regression": LogisticRegression(max_iter=2000),
        "gradient_boosting": HistGradientBoostingClassifier(random_state=seed),
    }
    details = {}
    for name, model in models.items():
        model.fit(train.features / scale, train.labels)
        report = classification_report(evaluation.labels, model.predict(evaluation.features / scale), CLASSES)
        details[name] = {k: report[k] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    return {name: d["accuracy"] for name, d in details.items()}, details
