"""Cross-validation over the config's training data (data.train plus data.val; never data.test):
stratified K folds, or one fold per value of a column (`--group-by source`: leave one source out).

Each fold is an ordinary training run under runs/cv-<stem>-<timestamp>/: it trains on the other folds
(plus every train-only file, with its weight), picks its best checkpoint on a validation share of its
own training rows, and is scored on the held-out fold as its test set. The pooled figures over all
out-of-fold predictions are the ones to trust when folds are small and skewed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.config import Config, config_to_dict, load_config, validate_config
from foodcls.data import LabelledData, concat, drop_missing, read_eval_file, read_labelled_csv, write_labelled_csv
from foodcls.errors import ConfigError, DataError
from foodcls.inference.evaluate import classification_report, mean_std
from foodcls.experiments.executors import check_cluster, train_runs
from foodcls.fileio import atomic_write_json
from foodcls.labels import CLASSES
from foodcls.runs import CV_DIR_PREFIX, unique_dir

SUMMARY_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "worst_class_recall")
FoldCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Fold:
    number: int  # 1-based
    group: str | None  # the held-out value of the group column, or None for stratified folds
    config: Config  # an ordinary config: data.train = the fold's files, data.test = the held-out rows
    n_train: int
    n_eval: int


def _scored_sets(config: Config) -> tuple[list[tuple[LabelledData, float]], list[tuple[str, float]]]:
    """([(rows cv may score, their file's weight)], [(train-only file, weight)]): data.train's files
    plus data.val; train-only files stay whole in every fold's training data."""
    features = config.data.features
    scored, train_only = [], []
    for entry in config.data.train_files:
        if entry.train_only:
            train_only.append((entry.path, entry.weight))
        else:
            scored.append((read_labelled_csv(entry.path, features, entry.weight), entry.weight))
    if config.data.val is not None:
        scored.append((read_eval_file(config, config.data.val), 1.0))
    if not scored:
        raise DataError("cv: every training file is train-only; nothing is left to score")
    if config.data.missing == "drop":
        scored = [(drop_missing(d), w) for d, w in scored]
    return scored, train_only


def fold_assignment(data: LabelledData, folds: int, group_by: str | None, seed: int) -> tuple[np.ndarray, list[str | None]]:
    """Per row, its 0-based fold; and each fold's group (None for stratified folds)."""
    if group_by is not None:
        groups = data.column(group_by).astype(str)
        names = sorted(set(groups.tolist()))
        if len(names) < 2:
            raise DataError(f"cv --group-by {group_by}: needs at least two groups, the data hold {len(names)} ({', '.join(names)})")
        index = {name: i for i, name in enumerate(names)}
        return np.array([index[g] for g in groups], dtype=np.int64), names
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(data.labels, minlength=len(CLASSES))
    if folds < 2 or folds > len(data):
        raise ConfigError(f"--folds must lie within 2-{len(data)} (the rows cv scores), got {folds}")
    if counts[counts > 0].min() < folds:
        rare = CLASSES[int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))]
        raise DataError(f"cv: class {rare} has only {counts[counts > 0].min()} rows, fewer than --folds {folds}")
    assignment = np.empty(len(data), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held) in enumerate(splitter.split(np.zeros(len(data)), data.labels)):
        assignment[held] = fold
    return assignment, [None] * folds


@dataclass(frozen=True)
class Assignment:
    """The rows cv scores, their fold, and the train-only files: read and checked, nothing written yet."""

    scored: list[tuple[LabelledData, float]]
    train_only: list[tuple[str, float]]
    everything: LabelledData
    fold_of_row: np.ndarray
    groups: list[str | None]


def assign_folds(config: Config, folds: int, group_by: str | None) -> Assignment:
    """Read the data and give every scored row its fold; every input error is raised here."""
    scored, train_only = _scored_sets(config)
    if group_by is not None:
        for data, _ in scored:
            data.column(group_by)  # every scored file must have the column, or the error names it
    everything = concat([d for d, _ in scored])
    fold_of_row, groups = fold_assignment(everything, folds, group_by, config.train.seed)
    return Assignment(scored, train_only, everything, fold_of_row, groups)


def plan_folds(config: Config, assigned: Assignment, cv_dir: Path) -> list[Fold]:
    """Write each fold's training and held-out files into cv_dir/folds/ and build its config."""
    scored, train_only, everything = assigned.scored, assigned.train_only, assigned.everything
    assignment, groups = assigned.fold_of_row, assigned.groups
    # Which scored set each row came from, so each keeps its weight in the fold's training files.
    origin = np.concatenate([np.full(len(d), i) for i, (d, _) in enumerate(scored)])
    val_fraction = config.data.val_fraction
    if val_fraction is None and config.data.val is not None:
        # The share the val file had: each fold picks its checkpoint on as much of its own training rows.
        val_fraction = round(len(scored[-1][0]) / len(everything), 4)
    columns = tuple(everything.columns)
    plan = []
    folder = cv_dir / "folds"
    for number, group in enumerate(groups, start=1):
        held = assignment == number - 1
        eval_path = folder / f"fold{number}-eval.csv"
        write_labelled_csv(eval_path, everything.subset(np.flatnonzero(held)), columns)
        train_entries: list[Any] = []
        for i, (_, weight) in enumerate(scored):
            rows = np.flatnonzero(~held & (origin == i))
            if len(rows):
                path = folder / f"fold{number}-train{i + 1}.csv"
                write_labelled_csv(path, everything.subset(rows), columns)
                train_entries.append({"path": str(path), "weight": weight})
        train_entries += [{"path": path, "weight": weight, "train_only": True} for path, weight in train_only]
        raw = config_to_dict(config)
        raw["data"].update(train=train_entries, val=None, test=str(eval_path), val_fraction=val_fraction)
        where = f"cv fold {number}" + (f" ({group})" if group else "")
        plan.append(Fold(number, group, validate_config(raw, where), int((~held).sum()), int(held.sum())))
    return plan


def fold_outcome(fold: Fold, run: dict[str, Any], baselines: bool) -> dict[str, Any]:
    """The best checkpoint's predictions for the held-out rows of a trained fold (and the baselines')."""
    from foodcls.inference.predict import load_predictor

    predictor = load_predictor(run["best_checkpoint"])
    held_out = read_eval_file(fold.config, fold.config.data.test)
    out = {"labels": held_out.labels.tolist(), "predicted": predictor.predict(held_out.features).tolist()}
    if baselines:
        from foodcls.experiments.baselines import baseline_predictions
        from foodcls.data import load_splits

        train_rows = load_splits(fold.config).train
        predicted = baseline_predictions(train_rows, held_out.features, predictor.prep, fold.config.train.seed)
        out["baselines"] = {k: v.tolist() for k, v in predicted.items()}
    return out


def fold_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """accuracy, macro_f1, balanced_accuracy, per_class_recall (classes present), worst_class_recall."""
    report = classification_report(labels, predicted, CLASSES)
    recall = {name: m["recall"] for name, m in report["per_class"].items() if m["support"] > 0}
    return {
        "accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "balanced_accuracy": report["balanced_accuracy"],
        "per_class_recall": recall, "worst_class_recall": min(recall.values()) if recall else 0.0,
    }


def _mean_std(folds: list[dict[str, Any]]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    pairs = {metric: mean_std([f[metric] for f in folds if f.get(metric) is not None]) for metric in SUMMARY_METRICS}
    return {m: p[0] for m, p in pairs.items()}, {m: p[1] for m, p in pairs.items()}


def _pooled(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    scores = fold_scores(labels, predicted)
    return {"n": int(len(labels)), **scores, "accuracy_ci": classification_report(labels, predicted, CLASSES)["accuracy_ci"]}


def run_cv(
    config_path: str | Path, folds: int = 5, group_by: str | None = None, overrides: list[str] = (),
    workers: int | None = None, runs_root: str | Path = "runs", baselines: bool = False,
    on_fold: FoldCallback | None = None, on_start: Callable[[int], None] | None = None, cluster: str | None = None,
) -> dict[str, Any]:
    """Run every fold; returns (and writes as cv.json) per-fold, mean ± std and pooled figures."""
    config = load_config(config_path, list(overrides))
    report = run_cv_config(config, folds, group_by, runs_root, Path(config_path).stem, workers, baselines, on_fold, on_start, cluster)
    report["config"] = str(config_path)
    return report


def run_cv_config(
    config: Config, folds: int, group_by: str | None, runs_root: str | Path, stem: str, workers: int | None = None,
    baselines: bool = False, on_fold: FoldCallback | None = None, on_start: Callable[[int], None] | None = None,
    cluster: str | None = None,
) -> dict[str, Any]:
    """run_cv for a config already loaded (a tune trial's); the folds go under runs_root/cv-<stem>-<timestamp>."""
    assigned = assign_folds(config, folds, group_by)  # every input is checked before a directory is made
    check_cluster(cluster)
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
    names = [f"fold{f.number}" for f in plan]
    for indices, outcomes in train_runs([f.config for f in plan], names, cv_dir, workers, cluster):
        for index, run in zip(indices, outcomes):
            fold = plan[index]
            entry = {"fold": fold.number, "group": fold.group, "n_train": fold.n_train, "n_eval": fold.n_eval,
                     "status": run["status"], "run_dir": run.get("run_dir")}
            if run["status"] == "failed":
                entry["error"] = run["error"]
            else:
                outcome = fold_outcome(fold, run, baselines)
                entry.update(fold_scores(np.array(outcome["labels"]), np.array(outcome["predicted"])))
                entry["_outcome"] = outcome
            results[index] = entry
            if on_fold is not None:
                on_fold(entry)
    _write_predictions(cv_dir / "predictions.csv", plan, results)
    report = summarise(results, group_by, folds, baselines)
    report.update(cv_dir=str(cv_dir))
    atomic_write_json(cv_dir / "cv.json", report)
    return report


def _write_predictions(path: Path, plan: list[Fold], results: list[dict[str, Any]]) -> None:
    """Every out-of-fold prediction beside its row (features, source, code…), to see which products fail."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header_written = False
    for fold, result in zip(plan, results):
        if result["status"] == "failed":
            continue
        held_out = read_labelled_csv(fold.config.data.test, fold.config.data.features)
        columns = list(held_out.columns)
        if not header_written:
            writer.writerow(["fold", "label", "predicted", *held_out.feature_names, *columns])
            header_written = True
        for i, predicted in enumerate(result["_outcome"]["predicted"]):
            writer.writerow([fold.number, CLASSES[held_out.labels[i]], CLASSES[predicted],
                             *(f"{v:g}" for v in held_out.features[i].tolist()), *(held_out.columns[c][i] for c in columns)])
    from foodcls.fileio import atomic_write_text

    atomic_write_text(path, buffer.getvalue())


def summarise(results: list[dict[str, Any]], group_by: str | None, folds: int, baselines: bool) -> dict[str, Any]:
    done = [r for r in results if r["status"] != "failed"]
    outcomes = [r.pop("_outcome") for r in done]
    mean, std = _mean_std(done)
    report: dict[str, Any] = {"group_by": group_by, "folds": results, "mean": mean, "std": std, "pooled": None}
    if not group_by:
        report["n_folds"] = folds
    if done:
        labels = np.concatenate([np.array(o["labels"], dtype=np.int64) for o in outcomes])
        predicted = np.concatenate([np.array(o["predicted"], dtype=np.int64) for o in outcomes])
        report["pooled"] = _pooled(labels, predicted)
        if baselines:
            report["baselines"] = {}
            for name in outcomes[0]["baselines"]:
                per_fold = [fold_scores(np.array(o["labels"]), np.array(o["baselines"][name])) for o in outcomes]
                b_mean, b_std = _mean_std(per_fold)
                pooled = _pooled(labels, np.concatenate([np.array(o["baselines"][name], dtype=np.int64) for o in outcomes]))
                report["baselines"][name] = {"mean": b_mean, "std": b_std, "pooled": pooled}
    return report
