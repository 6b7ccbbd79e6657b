"""Which rows go where in cross-validation: the rows cv scores (data.train's files plus data.val; never
data.test), each row's fold (stratified K folds, or one per value of a column: leave one source out), and
each fold's files and config. Nothing here trains; cv.py fits, scores and aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.config import Config, TrainFile, derive
from foodcls.data import LabelledData, concat, drop_missing, named, read_eval_file, read_labelled_csv, write_labelled_csv
from foodcls.errors import ConfigError, DataError


@dataclass(frozen=True)
class Fold:
    number: int  # 1-based
    group: str | None  # the held-out value of the group column, or None for stratified folds
    config: Config  # an ordinary config: data.train = the fold's files, data.test = the held-out rows
    n_train: int
    n_eval: int


def _scored_sets(config: Config) -> tuple[list[tuple[LabelledData, float]], list[TrainFile]]:
    """([(rows cv may score, their file's weight)], [train-only file]): data.train's files
    plus data.val; train-only files stay whole in every fold's training data."""
    features = config.nutrients
    scored, train_only = [], []
    for entry in config.data.train_files:
        if entry.train_only:
            train_only.append(entry)
        else:
            scored.append((named(config, read_labelled_csv(entry.path, features, entry.weight, classes=config.data.classes,
                                                           ignore=config.data.ignore_labels), entry.nameless), entry.weight))
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

    counts = np.bincount(data.labels, minlength=len(data.classes))
    if folds < 2 or folds > len(data):
        raise ConfigError(f"--folds must lie within 2-{len(data)} (the rows cv scores), got {folds}")
    if counts[counts > 0].min() < folds:
        rare = data.classes[int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))]
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
    train_only: list[TrainFile]
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
        train_entries += [entry.model_dump() for entry in train_only]
        where = f"cv fold {number}" + (f" ({group})" if group else "")
        fold_config = derive(config, {"data.train": train_entries, "data.val": None, "data.test": str(eval_path),
                                      "data.val_fraction": val_fraction}, where)
        plan.append(Fold(number, group, fold_config, int((~held).sum()), int(held.sum())))
    return plan
