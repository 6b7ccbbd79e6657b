"""Read and validate CSV rows (`class,protein,carbs,fat,additives`); feature scaling fitted on train."""

from __future__ import annotations

import csv
import io
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from foodcls.errors import DataError
from foodcls.fileio import atomic_write_text
from foodcls.labels import CLASSES, FEATURES

if TYPE_CHECKING:  # only for annotations: the predict path must not load the config schema
    from foodcls.config import Config

LABELLED_HEADERS = (("label", *FEATURES), ("class", *FEATURES))


@dataclass(frozen=True)
class LabelledData:
    """Features (n, 4) float32 in label units and class indices (n,) int64, read from `source`."""

    features: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledData:
        return LabelledData(self.features[indices], self.labels[indices], self.source)


@dataclass(frozen=True)
class Splits:
    train: LabelledData
    val: LabelledData | None
    test: LabelledData | None


@dataclass(frozen=True)
class FeatureTable:
    """Rows to predict: the input's columns as read (carried through) and their four features."""

    header: list[str]
    rows: list[list[str]]
    features: np.ndarray


def parse_feature(value: str, name: str, where: str) -> float:
    """One feature cell → float, refusing non-numbers, NaN, infinities, negatives and fractional additives."""
    try:
        number = float(value.strip())
    except ValueError:
        raise DataError(f"{where}: {name} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {name} must be a finite number, got {value.strip()!r}")
    if number < 0:
        raise DataError(f"{where}: {name} must not be negative, got {value.strip()}")
    if name == "additives" and not number.is_integer():
        raise DataError(f"{where}: additives must be a whole number, got {value.strip()}")
    return number


def parse_class(value: str, where: str) -> int:
    """A class cell is a class name or its index (0–3)."""
    text = value.strip()
    if text in CLASSES:
        return CLASSES.index(text)
    if text.isdigit() and int(text) < len(CLASSES):
        return int(text)
    raise DataError(f"{where}: unknown class {text!r}; expected one of {', '.join(CLASSES)} or 0-{len(CLASSES) - 1}")


def _open_text(path: str | Path) -> tuple[str, io.TextIOBase]:
    if str(path) == "-":
        return "<stdin>", sys.stdin
    try:
        return str(path), open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by caller
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None


def _read_rows(path: str | Path) -> tuple[str, list[tuple[int, list[str]]]]:
    name, handle = _open_text(path)
    try:
        rows = [(n, row) for n, row in enumerate(csv.reader(handle), start=1) if any(c.strip() for c in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{name}: not a readable CSV file ({error})") from None
    finally:
        if handle is not sys.stdin:
            handle.close()
    if not rows:
        raise DataError(f"{name}: file is empty")
    return name, rows


def read_labelled_csv(path: str | Path) -> LabelledData:
    """Read `class,protein,carbs,fat,additives` rows, with or without a header row."""
    name, rows = _read_rows(path)
    if tuple(c.strip().lower() for c in rows[0][1]) in LABELLED_HEADERS:
        rows = rows[1:]
        if not rows:
            raise DataError(f"{name}: file has a header but no rows")
    width = 1 + len(FEATURES)
    features = np.empty((len(rows), len(FEATURES)), dtype=np.float32)
    labels = np.empty(len(rows), dtype=np.int64)
    for i, (line, row) in enumerate(rows):
        where = f"{name}:{line}"
        if len(row) != width:
            raise DataError(f"{where}: expected {width} fields (class,{','.join(FEATURES)}), got {len(row)}")
        labels[i] = parse_class(row[0], where)
        features[i] = [parse_feature(cell, feature, where) for cell, feature in zip(row[1:], FEATURES)]
    return LabelledData(features, labels, name)


def read_labelled_csvs(paths: list[str | Path]) -> LabelledData:
    """Several labelled files read as one, in the order given."""
    datasets = [read_labelled_csv(path) for path in paths]
    return LabelledData(
        np.concatenate([d.features for d in datasets]), np.concatenate([d.labels for d in datasets]), ", ".join(d.source for d in datasets)
    )


def read_feature_table(path: str | Path) -> FeatureTable:
    """Rows to predict: a CSV whose header names protein, carbs, fat, additives, or the labelled format."""
    name, rows = _read_rows(path)
    header = [c.strip() for c in rows[0][1]]
    lowered = [c.lower() for c in header]
    if all(f in lowered for f in FEATURES):
        columns = [lowered.index(f) for f in FEATURES]
        body = rows[1:]
    else:
        # The labelled format without a header: class,protein,carbs,fat,additives.
        header = ["class", *FEATURES]
        columns = [1, 2, 3, 4]
        body = rows
    if not body:
        raise DataError(f"{name}: file has a header but no rows")
    features = np.empty((len(body), len(FEATURES)), dtype=np.float32)
    for i, (line, row) in enumerate(body):
        where = f"{name}:{line}"
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} fields, got {len(row)}")
        features[i] = [parse_feature(row[c], f, where) for c, f in zip(columns, FEATURES)]
    return FeatureTable(header, [row for _, row in body], features)


def fit_scale(features: np.ndarray) -> np.ndarray:
    """Per-feature divisor: the maximum over the training set (every minimum is 0); 1 where the max is 0."""
    maxima = features.max(axis=0).astype(np.float32)
    return np.where(maxima > 0, maxima, np.float32(1.0))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified split of row indices into (kept, held_out), held_out ≈ fraction of each class."""
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_held = int(round(len(idx) * fraction))
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


def split_training_file(config: Config) -> tuple[LabelledData, LabelledData | None]:
    """The rows a model trains on: the train file less any val_fraction, and the part held out
    (stratified, seeded by train.seed)."""
    train = read_labelled_csv(config.data.train)
    if config.data.val_fraction is None:
        return train, None
    kept, held = stratified_split(train.labels, config.data.val_fraction, config.train.seed)
    return train.subset(kept), train.subset(held)


def load_splits(config: Config) -> Splits:
    """Read train / val / test; a val_fraction is carved out of train."""
    train, held_out = split_training_file(config)
    val = read_labelled_csv(config.data.val) if config.data.val else held_out
    test = read_labelled_csv(config.data.test) if config.data.test else None
    return Splits(train, val, test)


def write_labelled_csv(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    """Write rows as `class,protein,carbs,fat,additives` with a header, atomically."""
    lines = ["label," + ",".join(FEATURES)]
    for (protein, carbs, fat, additives), label in zip(features.tolist(), labels.tolist()):
        lines.append(f"{CLASSES[label]},{protein:g},{carbs:g},{fat:g},{int(additives)}")
    atomic_write_text(path, "\n".join(lines) + "\n")
