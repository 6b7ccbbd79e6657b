"""Classification metrics: accuracy with its 95 % interval, per-class precision / recall / F1, confusion
matrix, macro-F1, balanced accuracy, and warnings when the figures cannot be trusted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Below these sizes an evaluation says little; eval says so instead of printing a lone accuracy.
MIN_EVAL_ROWS = 200
MIN_CLASS_ROWS = 20


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None for none) — over seeds or folds."""
    import statistics

    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95 % Wilson score interval of a proportion: honest for small n and for rates near 0 or 1."""
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def evaluation_warnings(report: dict[str, Any]) -> list[str]:
    """What makes an evaluation untrustworthy: a class never recognised, too few rows overall or per class."""
    warnings = []
    for name, m in report["per_class"].items():
        if m["support"] > 0 and m["recall"] == 0:
            warnings.append(f"{name}: recall 0 — the model never recognises this class ({m['support']} rows)")
    for name, m in report["per_class"].items():
        if m["support"] < MIN_CLASS_ROWS:
            warnings.append(f"{name}: only {m['support']} evaluation rows (< {MIN_CLASS_ROWS}); its figures are unreliable")
    if report["n"] < MIN_EVAL_ROWS:
        low, high = report["accuracy_ci"]
        warnings.append(f"only {report['n']} evaluation rows (< {MIN_EVAL_ROWS}): accuracy 95 % interval {low:.3f}-{high:.3f}")
    return warnings


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are the true class, columns the predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The metrics `foodcls eval --json` prints. A class never predicted has precision 0 (no division by zero)."""
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    true_pos = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    n = int(matrix.sum())
    present = support > 0
    report = {
        "accuracy": float(true_pos.sum() / n) if n else 0.0,
        "accuracy_ci": wilson_interval(int(true_pos.sum()), n),
        "n": n,
        "classes": list(classes),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "confusion_matrix": matrix.tolist(),
    }
    report["warnings"] = evaluation_warnings(report)
    return report


def probability_report(probabilities: np.ndarray, labels: np.ndarray, temperature: float,
                       scores: np.ndarray | None) -> dict[str, Any]:
    """What says whether the probabilities can be trusted: ECE (10 equal-width bins), NLL, Brier, the
    reliability bins, the risk–coverage table, and the empirical coverage and mean size of the 90 %
    conformal sets (when the checkpoint carries calibration scores)."""
    from foodcls.inference import calibration as cal

    return {
        "temperature": temperature,
        "ece": cal.expected_calibration_error(probabilities, labels),
        "nll": cal.nll(probabilities, labels),
        "brier": cal.brier(probabilities, labels),
        "reliability": cal.reliability(probabilities, labels),
        "risk_coverage": cal.risk_coverage(probabilities, labels),
        "conformal": cal.set_figures(probabilities, labels, scores, 0.9).to_json() if scores is not None else None,
    }


def split_report(predictor, data) -> dict[str, Any]:
    """Everything a run's summary says of one labelled split (LabelledData): classification_report,
    probability_report, with an `other` class the open-set figures (the checkpoint's score), and with an
    operating point the suggestions' precision and recall."""
    from foodcls.inference.calibration import open_set
    from foodcls.inference.judge import judge
    from foodcls.inference.suggest import suggestion_figures
    from foodcls.labels import OTHER

    judged = judge(predictor, data.features, names=data.columns.get("name"))
    probabilities = judged.probabilities
    report = classification_report(data.labels, probabilities.argmax(axis=1), predictor.classes)
    report.update(probability_report(probabilities, data.labels, predictor.temperature, predictor.conformal_scores))
    if predictor.has_other and (data.labels == predictor.classes.index(OTHER)).any():
        named = data.labels != predictor.classes.index(OTHER)
        report["open_set"] = open_set(probabilities[named], probabilities[~named], predictor.classes, data.labels[named],
                                      judged.open_set[named], judged.open_set[~named])
    if judged.thresholds is not None:
        report["suggestions"] = suggestion_figures(probabilities, data.labels, judged.suggest, predictor.classes)
    return report


def evaluate_checkpoint(checkpoint_path: str | Path, data_paths: list[str | Path] | None = None,
                        out_of_class: str | Path | None = None) -> dict[str, Any]:
    """Score a checkpoint on labelled CSVs taken together (default: the test file in its config), in numpy;
    with out_of_class (a CSV of products in none of the classes), also how well it tells them apart, and the
    suggestions' precision and recall with those products counted (a suggestion for one is an error)."""
    from foodcls.data import read_labelled_csvs
    from foodcls.feature_table import read_feature_table
    from foodcls.errors import DataError
    from foodcls.inference.calibration import open_set
    from foodcls.inference.judge import judge
    from foodcls.inference.predict import load_predictor
    from foodcls.inference.suggest import precision_recall_table, suggestion_figures
    from foodcls.labels import OTHER

    predictor = load_predictor(checkpoint_path)
    if not data_paths:
        data_config = predictor.config.get("data")
        default = (data_config.get("test") or data_config.get("val")) if isinstance(data_config, dict) else None
        if not isinstance(default, str):
            raise DataError(f"{checkpoint_path}: its config names no test or val file; pass --data")
        data_paths = [default]
    data = read_labelled_csvs(data_paths, predictor.features, predictor.classes, predictor.ignored_labels)
    if predictor.name is not None and "name" not in data.columns:
        raise DataError(f"{report_paths(data_paths)}: no 'name' column, and this model reads the product's name")
    judged = judge(predictor, data.features, names=data.columns.get("name"))
    probabilities = judged.probabilities
    report = classification_report(data.labels, probabilities.argmax(axis=1), predictor.classes)
    report.update(probability_report(probabilities, data.labels, predictor.temperature, predictor.conformal_scores))
    report["calibration"] = calibration_facts(predictor)
    from foodcls.inference.predict import fill_warnings

    report["warnings"] += fill_warnings(dict(zip(predictor.features, np.isnan(data.features).sum(axis=0).tolist())),
                                        predictor.fill_values, len(data))
    labels, scores, suggested = data.labels, judged.open_set, judged.suggest
    if out_of_class is not None:
        outside = read_feature_table(out_of_class, predictor.features, predictor.classes)
        _refuse_labelled_in_class(out_of_class, outside, predictor)
        outside_judged = judge(predictor, outside.features, names=outside.names() if predictor.name is not None else None)
        named = data.labels != predictor.classes.index(OTHER) if predictor.has_other else np.ones(len(data), bool)
        report["open_set"] = open_set(probabilities[named], outside_judged.probabilities, predictor.classes, data.labels[named],
                                      judged.open_set[named], outside_judged.open_set)
        report["open_set"]["data"] = str(out_of_class)
        # The out-of-class products join the evaluation of suggestions as `other` (or as no class at all).
        none = predictor.classes.index(OTHER) if predictor.has_other else len(predictor.classes)
        probabilities = np.concatenate([probabilities, outside_judged.probabilities])
        labels = np.concatenate([labels, np.full(len(outside.features), none)])
        scores = np.concatenate([scores, outside_judged.open_set])
        suggested = np.concatenate([suggested, outside_judged.suggest])
    if judged.thresholds is not None:
        report["suggestions"] = suggestion_figures(probabilities, labels, suggested, predictor.classes)
    if predictor.calibration is not None:
        c = predictor.calibration
        report["precision_recall"] = precision_recall_table(probabilities, labels, scores, predictor.classes,
                                                            c.probabilities, c.labels, c.open_set_scores)
    report["data"] = ", ".join(str(p) for p in data_paths)
    report["data_files"] = [str(p) for p in data_paths]
    return report


def _refuse_labelled_in_class(path, table, predictor) -> None:
    """An out-of-class file whose label column names one of the model's named classes would count those
    products as out of class (AUROC 0.628 on data/off/test.csv, without a word): refused, saying which."""
    from foodcls.errors import DataError
    from foodcls.labels import OTHER

    lowered = [c.strip().lower() for c in table.header]
    column = next((lowered.index(c) for c in ("label", "class") if c in lowered), None)
    if column is None:
        return
    named = [c for c in predictor.classes if c != OTHER]
    labelled = [row[column].strip() for row in table.rows if row[column].strip() in named]
    if labelled:
        kinds = ", ".join(sorted(set(labelled)))
        raise DataError(f"--out-of-class {path}: {len(labelled)} of its {len(table.rows)} rows are labelled {kinds}, classes of the model; "
                        f"an out-of-class file holds products in none of them (e.g. the rows of a `data build --other` labelled other)")


def report_paths(paths: list) -> str:
    return ", ".join(str(p) for p in paths)


def calibration_facts(predictor) -> dict[str, Any] | None:
    """Which calibration a checkpoint carries: fitted on what (validation rows, or out of source), how many rows,
    the temperature, the open-set score, the operating point of suggestions."""
    if predictor.calibration is None and predictor.temperature == 1.0 and predictor.conformal_scores is None:
        return None
    c = predictor.calibration
    point = predictor.operating_point
    return {"method": c.method if c is not None else "temperature", "rows": int(len(c.labels)) if c is not None else None,
            "sources": list(c.sources) if c is not None else [], "temperature": predictor.temperature,
            "members": predictor.members, "open_set_score": predictor.open_set_score,
            "operating_point": {"precision": point.precision, "thresholds": point.thresholds} if point is not None else None}
