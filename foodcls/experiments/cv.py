"""Cross-validation over the config's training data (data.train plus data.val; never data.test):
stratified K folds, or one fold per value of a column (`--group-by source`: leave one source out).

Each fold is an ordinary training run under runs/cv-<stem>-<timestamp>/: it trains on the other folds
(plus every train-only file, with its weight), picks its best checkpoint on a validation share of its
own training rows, and is scored on the held-out fold as its test set. The pooled figures over all
out-of-fold predictions are the ones to trust when folds are small and skewed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.config import Config, load_config
from foodcls.data import LabelledData, read_eval_file
from foodcls.experiments.executors import check_cluster
from foodcls.experiments.folds import Fold, assign_folds, plan_folds
from foodcls.experiments.jobs import RunOutcome, train_runs
from foodcls.fileio import atomic_write_json, atomic_write_text
from foodcls.inference.evaluate import classification_report, mean_std
from foodcls.inference.suggest import OPEN_SET_SCORES
from foodcls.labels import OTHER
from foodcls.runs import CV_DIR_PREFIX, unique_dir

SUMMARY_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "worst_class_recall")
FoldCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class FoldPredictions:
    """A trained fold's held-out rows (read once) and what its model says of them: probabilities, every
    open-set score, suggestions at its operating point, whether the 90 % conformal set held the true class;
    and, when asked, each baseline's probabilities (trained on the fold's training rows)."""

    held_out: LabelledData
    probabilities: np.ndarray
    baselines: dict[str, np.ndarray]
    open_set: dict[str, np.ndarray] = field(default_factory=dict)  # score kind → (n,)
    suggest: np.ndarray | None = None  # None: the fold's model has no operating point
    set_held: np.ndarray | None = None  # None: it has no conformal scores
    set_size: np.ndarray | None = None
    suggest_by_score: dict[str, np.ndarray] = field(default_factory=dict)  # at its precision, were each score the one

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def labels(self) -> np.ndarray:
        return self.held_out.labels


SET_COVERAGE = 0.9


def predict_fold(fold: Fold, run: RunOutcome, baselines: bool) -> FoldPredictions:
    """The best checkpoint's predictions for the held-out rows of a trained fold (and the baselines')."""
    from foodcls.inference.calibration import conformal_threshold, prediction_sets
    from foodcls.inference.judge import judge_outputs
    from foodcls.inference.predict import load_predictor
    from foodcls.inference.suggest import open_set_scores

    predictor = load_predictor(run.best_checkpoint)
    held_out = read_eval_file(fold.config, fold.config.data.test)
    outputs = predictor.outputs(held_out.features, keep_hidden=predictor.knn_reference is not None, names=held_out.columns.get("name"))
    judged = judge_outputs(predictor, outputs)
    kinds = [k for k in OPEN_SET_SCORES if (k != "not_other" or predictor.has_other) and (k != "knn" or predictor.knn_reference is not None)]
    scores = {k: open_set_scores(k, outputs.probabilities, outputs.logits, predictor.classes, outputs.hidden, predictor.knn_reference)
              for k in kinds}
    held = size = None
    if predictor.conformal_scores is not None:
        sets = prediction_sets(outputs.probabilities, conformal_threshold(predictor.conformal_scores, SET_COVERAGE))
        held = np.array([int(label) in members for label, members in zip(held_out.labels.tolist(), sets)])
        size = np.array([len(members) for members in sets])
    by_score = {}
    if predictor.operating_point is not None and predictor.calibration is not None:
        from foodcls.inference.suggest import suggest_thresholds, suggestions

        c, precision = predictor.calibration, predictor.operating_point.precision
        for kind, rows in c.scores_by_kind.items():
            if kind in scores:
                thresholds = suggest_thresholds(c.probabilities, c.labels, rows, predictor.classes, precision)
                by_score[kind] = suggestions(outputs.probabilities, scores[kind], predictor.classes, thresholds)
    predicted: dict[str, np.ndarray] = {}
    if baselines:
        from foodcls.data import load_splits
        from foodcls.experiments.baselines import baseline_predictions

        train_rows = load_splits(fold.config).train
        predicted = baseline_predictions(train_rows, held_out.features, predictor.prep, fold.config.train.seed)
    return FoldPredictions(held_out, outputs.probabilities, predicted, scores,
                           judged.suggest if judged.thresholds is not None else None, held, size, by_score)


def fold_scores(labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """accuracy, macro_f1, balanced_accuracy, per_class_recall (classes present), worst_class_recall."""
    report = classification_report(labels, predicted, classes)
    recall = {name: m["recall"] for name, m in report["per_class"].items() if m["support"] > 0}
    return {
        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "balanced_accuracy": report["balanced_accuracy"],
        "per_class_recall": recall, "worst_class_recall": min(recall.values()) if recall else 0.0,
    }


def _mean_std(folds: list[dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    pairs = {metric: mean_std([f[metric] for f in folds if f.get(metric) is not None]) for metric in SUMMARY_METRICS}
    return {m: p[0] for m, p in pairs.items()}, {m: p[1] for m, p in pairs.items()}


def _pooled(labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    scores = fold_scores(labels, predicted, classes)
    return {"n": int(len(labels)), **scores, "accuracy_ci": classification_report(labels, predicted, classes)["accuracy_ci"]}


def run_cv(
    config_path: str | Path, *, folds: int = 5, group_by: str | None = None, overrides: list[str] = (),
    workers: int | None = None, runs_root: str | Path = "runs", baselines: bool = False,
    on_fold: FoldCallback | None = None, on_start: Callable[[int], None] | None = None, cluster: str | None = None,
) -> dict[str, Any]:
    """Run every fold; returns (and writes as cv.json) per-fold, mean ± std and pooled figures."""
    config = load_config(config_path, list(overrides))
    report = run_cv_config(config, folds=folds, group_by=group_by, runs_root=runs_root, stem=Path(config_path).stem, workers=workers,
                           baselines=baselines, on_fold=on_fold, on_start=on_start, cluster=cluster)
    report["config"] = str(config_path)
    return report


def run_cv_config(
    config: Config, *, folds: int, group_by: str | None, runs_root: str | Path, stem: str, workers: int | None = None,
    baselines: bool = False, on_fold: FoldCallback | None = None, on_start: Callable[[int], None] | None = None,
    cluster: str | None = None, eval_threads: int | None = None,
) -> dict[str, Any]:
    """run_cv for a config already loaded (a tune trial's); the folds go under runs_root/cv-<stem>-<timestamp>."""
    assigned = assign_folds(config, folds, group_by)  # every input is checked before a directory is made
    check_cluster(cluster)
    from foodcls.tracking import check_tracking

    check_tracking(config.tracking.mlflow)
    cv_dir = unique_dir(runs_root, f"{CV_DIR_PREFIX}{stem}")
    try:
        plan = plan_folds(config, assigned, cv_dir)
    except BaseException:
        import shutil

        shutil.rmtree(cv_dir, ignore_errors=True)  # nothing half-written
        raise
    if on_start is not None:
        on_start(len(plan))
    results: list[dict[str, Any] | None] = [None] * len(plan)
    predictions: list[FoldPredictions | None] = [None] * len(plan)
    names = [f"fold{f.number}" for f in plan]
    for indices, outcomes in train_runs([f.config for f in plan], names, cv_dir, workers=workers, cluster=cluster,
                                        eval_threads=eval_threads, ship_from=cv_dir / "folds"):
        for index, run in zip(indices, outcomes):
            fold = plan[index]
            entry = {"fold": fold.number, "group": fold.group, "n_train": fold.n_train, "n_eval": fold.n_eval,
                     "status": run.status, "run_dir": run.run_dir}
            if run.failed:
                entry["error"] = run.error
            else:
                predictions[index] = predict_fold(fold, run, baselines)
                entry.update(fold_scores(predictions[index].labels, predictions[index].predicted, config.data.classes))
            results[index] = entry
            if on_fold is not None:
                on_fold(entry)
    _write_predictions(cv_dir / "predictions.csv", plan, predictions)
    report = aggregate(results, [p for p in predictions if p is not None], group_by, folds, baselines)
    report.update(cv_dir=str(cv_dir))
    atomic_write_json(cv_dir / "cv.json", report)
    if config.tracking.mlflow:
        from foodcls.tracking import best_effort, log_group

        pooled = report["pooled"] or {}
        warning = best_effort(log_group, config.tracking.mlflow, cv_dir.name, {"group_by": group_by, "folds": folds},
                              [r["run_dir"] for r in results if r.get("run_dir")],
                              {f"pooled_{k}": pooled.get(k) for k in ("accuracy", "balanced_accuracy", "macro_f1")})
        report["warnings"] = [warning] if warning else []
    return report


def _write_predictions(path: Path, plan: list[Fold], predictions: list[FoldPredictions | None]) -> None:
    """Every out-of-fold prediction beside its row (features, source, code…), to see which products fail."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header_written = False
    for fold, fold_predictions in zip(plan, predictions):
        if fold_predictions is None:
            continue
        held_out = fold_predictions.held_out
        columns = list(held_out.columns)
        if not header_written:
            writer.writerow(["fold", "label", "predicted", *held_out.feature_names, *columns])
            header_written = True
        for i, predicted in enumerate(fold_predictions.predicted.tolist()):
            writer.writerow([fold.number, held_out.classes[held_out.labels[i]], held_out.classes[predicted],
                             *(f"{v:g}" for v in held_out.features[i].tolist()), *(held_out.columns[c][i] for c in columns)])
    atomic_write_text(path, buffer.getvalue())


def _pooled_trust(predictions: list[FoldPredictions], classes: tuple[str, ...]) -> dict[str, Any]:
    """What the folds' models' confidence was worth on the rows they never saw: ECE (all rows, and the rows of
    the named classes), the 90 % sets' coverage and size, every open-set score's AUROC and rejection (with an
    `other` class; `open_set` is the checkpoints' own score), and the suggestions' precision and recall."""
    from foodcls.inference.calibration import expected_calibration_error, labelled_open_set
    from foodcls.inference.suggest import named_classes, suggestion_figures

    probabilities = np.concatenate([p.probabilities for p in predictions])
    labels = np.concatenate([p.labels for p in predictions]).astype(np.int64)
    in_class = np.isin(labels, named_classes(classes))
    out: dict[str, Any] = {"ece": expected_calibration_error(probabilities, labels),
                           "ece_in_class": expected_calibration_error(probabilities[in_class], labels[in_class]) if in_class.any() else None}
    if all(p.set_held is not None for p in predictions):
        held = np.concatenate([p.set_held for p in predictions])
        out["conformal"] = {"coverage_target": SET_COVERAGE, "empirical_coverage": float(held.mean()),
                            "in_class_coverage": float(held[in_class].mean()) if in_class.any() else None,
                            "mean_size": float(np.concatenate([p.set_size for p in predictions]).mean())}
    if OTHER in classes:
        out["open_set"] = labelled_open_set(probabilities, labels, classes)
        kinds = set.intersection(*(set(p.open_set) for p in predictions))
        out["open_set_scores"] = {}
        for kind in (k for k in OPEN_SET_SCORES if k in kinds):
            figures = labelled_open_set(probabilities, labels, classes, np.concatenate([p.open_set[kind] for p in predictions]))
            out["open_set_scores"][kind] = {"auroc": figures["auroc"], "rejected_at_coverage": figures["rejected_at_coverage"]}
    if all(p.suggest is not None for p in predictions):
        out["suggestions"] = suggestion_figures(probabilities, labels, np.concatenate([p.suggest for p in predictions]), classes)
        out["suggestions"]["per_fold_precision"] = [
            suggestion_figures(p.probabilities, p.labels, p.suggest, classes)["precision"] for p in predictions]
        kinds = set.intersection(*(set(p.suggest_by_score) for p in predictions))
        out["suggestions_by_score"] = {}
        for kind in (k for k in OPEN_SET_SCORES if k in kinds):
            figures = suggestion_figures(probabilities, labels, np.concatenate([p.suggest_by_score[kind] for p in predictions]), classes)
            out["suggestions_by_score"][kind] = {k: figures[k] for k in ("suggested", "precision", "recall")}
    return out


def aggregate(results: list[dict[str, Any]], predictions: list[FoldPredictions], group_by: str | None, folds: int,
              baselines: bool) -> dict[str, Any]:
    """The report: per-fold entries, their mean ± std, and the figures pooled over every out-of-fold prediction."""
    done = [r for r in results if r["status"] != "failed"]
    mean, std = _mean_std(done)
    classes = predictions[0].held_out.classes if predictions else ()
    report: dict[str, Any] = {"group_by": group_by, "classes": list(classes), "folds": results, "mean": mean, "std": std,
                              "pooled": None}
    if not group_by:
        report["n_folds"] = folds
    if predictions:
        labels = np.concatenate([p.labels for p in predictions]).astype(np.int64)
        predicted = np.concatenate([p.predicted for p in predictions]).astype(np.int64)
        report["pooled"] = _pooled(labels, predicted, classes)
        report["pooled"].update(_pooled_trust(predictions, classes))
        if baselines:
            from foodcls.inference.calibration import expected_calibration_error, labelled_open_set

            report["baselines"] = {}
            for name in predictions[0].baselines:
                per_fold = [fold_scores(p.labels, p.baselines[name].argmax(axis=1), classes) for p in predictions]
                b_mean, b_std = _mean_std(per_fold)
                probabilities = np.concatenate([p.baselines[name] for p in predictions])
                pooled = _pooled(labels, probabilities.argmax(axis=1).astype(np.int64), classes)
                pooled["ece"] = expected_calibration_error(probabilities, labels)
                if OTHER in classes:
                    pooled["open_set"] = labelled_open_set(probabilities, labels, classes)
                report["baselines"][name] = {"mean": b_mean, "std": b_std, "pooled": pooled}
    return report
