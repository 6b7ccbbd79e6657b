"""Read and validate labelled CSV rows, and the train / val / test splits of a config.

A labelled CSV is either the seed's headerless `class,protein,carbs,fat,additives`, or any CSV with a
header naming a `class` (or `label`) column and the feature columns, in any order; other columns
(`source`, `code`, `name`…) are carried along. An empty cell of an optional nutrient means unknown
(NaN until filled with the training median).
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from foodcls.errors import DataError
from foodcls.features import NAME, NUTRIENTS, REQUIRED_FEATURES, SEED_FEATURES, invalid_mask, value_problem
from foodcls.fileio import atomic_write_text
from foodcls.labels import DEFAULT_CLASSES, names_a_class

if TYPE_CHECKING:  # only for annotations: the predict path must not load the config schema
    from foodcls.config import Config

LABEL_COLUMNS = ("class", "label")
# Written by `data build` beside the nine nutrients, so rows can be grouped (cv --group-by source) and traced.
TRACE_COLUMNS = ("source", "code")


@dataclass(frozen=True)
class LabelledData:
    """Features (n, F) float32 in label units (NaN: unknown), class indices (n,), per-row training
    weights, which rows are train-only (never scored by cv), and the text columns carried along."""

    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    source: str
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]
    train_only: np.ndarray = field(default=None)  # type: ignore[assignment]
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    classes: tuple[str, ...] = DEFAULT_CLASSES  # what the label indices name

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.weights is None:
            object.__setattr__(self, "weights", np.ones(n, dtype=np.float32))
        if self.train_only is None:
            object.__setattr__(self, "train_only", np.zeros(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> LabelledData:
        return LabelledData(
            self.features[indices], self.labels[indices], self.feature_names, self.source,
            self.weights[indices], self.train_only[indices], {k: v[indices] for k, v in self.columns.items()}, self.classes,
        )

    def column(self, name: str) -> np.ndarray:
        """A carried text column, e.g. `source`; a one-line error when the data lack it."""
        if name not in self.columns:
            have = ", ".join(self.columns) or "none"
            raise DataError(f"{self.source}: no {name!r} column to group by (text columns: {have})")
        return self.columns[name]


def concat(datasets: list[LabelledData]) -> LabelledData:
    """Several labelled sets as one, in order; a text column some lack is empty for their rows. One set is
    returned as it is (its arrays are the read cache's, read-only): a copy of a million rows is 29 MB."""
    if len(datasets) == 1:
        return datasets[0]
    differing = next((d for d in datasets if d.classes != datasets[0].classes), None)
    if differing is not None:
        raise DataError(f"{differing.source}: its classes ({', '.join(differing.classes)}) differ from "
                        f"{datasets[0].source}'s ({', '.join(datasets[0].classes)})")
    names = [c for d in datasets for c in d.columns]
    columns = {
        name: np.concatenate([d.columns.get(name, np.full(len(d), "", dtype=object)) for d in datasets])
        for name in dict.fromkeys(names)
    }
    return LabelledData(
        np.concatenate([d.features for d in datasets]), np.concatenate([d.labels for d in datasets]),
        datasets[0].feature_names, ", ".join(d.source for d in datasets),
        np.concatenate([d.weights for d in datasets]), np.concatenate([d.train_only for d in datasets]), columns,
        datasets[0].classes,
    )


@dataclass(frozen=True)
class Splits:
    train: LabelledData
    val: LabelledData | None
    test: LabelledData | None


def _open_text(path: str | Path) -> tuple[str, io.TextIOBase]:
    if str(path) == "-":
        return "<stdin>", sys.stdin
    try:
        return str(path), open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by caller
    except FileNotFoundError:
        built = Path(path).name in ("train.csv", "val.csv", "test.csv") and not Path(path).parent.exists()
        hint = f" (build it first: foodcls data build EXPORT... --other --out {Path(path).parent})" if built else ""
        raise DataError(f"{path}: file not found{hint}") from None
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


def _parse_labels(body: list[tuple[int, list[str]]], column: int, problems: list[tuple[int, str]],
                  classes: tuple[str, ...]) -> np.ndarray:
    """Class cells (a name or its index) → indices; the first unknown one goes to problems."""
    index_of = {**{name: i for i, name in enumerate(classes)}, **{str(i): i for i in range(len(classes))}}
    labels = np.empty(len(body), dtype=np.int64)
    for i, (_, row) in enumerate(body):
        index = index_of.get(row[column].strip())
        if index is None:
            problems.append((i, f"unknown class {row[column].strip()!r}; expected one of {', '.join(classes)} or 0-{len(classes) - 1}"))
            break
        labels[i] = index
    return labels


def _parse_columns(
    name: str, body: list[tuple[int, list[str]]], columns: list[int], features: tuple[str, ...],
    problems: list[tuple[int, str]] | None = None, required: tuple[str, ...] = REQUIRED_FEATURES,
) -> np.ndarray:
    """The feature cells of every row as float32 (n, F), NaN for an empty optional cell. Bad cells
    (and any problems the caller found) raise a DataError naming file:line, the feature and the
    value — the first one in file order."""
    out = np.empty((len(body), len(features)), dtype=np.float32)
    problems = [] if problems is None else problems  # (row index, message): the earliest row is reported
    for j, (column, feature) in enumerate(zip(columns, features)):
        cells = [row[column].strip() for _, row in body]
        empty = np.fromiter((not c for c in cells), dtype=bool, count=len(cells))
        try:
            values = np.array([c if c else "nan" for c in cells], dtype=np.float64)
        except ValueError:
            # Some cell is not a number: find the first, row by row (only on the error path).
            for i, cell in enumerate(cells):
                if cell:
                    try:
                        float(cell)
                    except ValueError:
                        problems.append((i, f"{feature} is not a number: {cell!r}"))
                        break
            continue
        stated_nan = np.isnan(values) & ~empty
        if feature in required and empty.any():
            problems.append((int(np.argmax(empty)), f"{feature} is empty (it is required)"))
        bad = stated_nan | invalid_mask(feature, values)
        if bad.any():
            i = int(np.argmax(bad))
            problems.append((i, f"{feature} {value_problem(feature, float(values[i]))}"))
        with np.errstate(over="ignore"):  # a value beyond float32 is reported above, not stored
            out[:, j] = values
    if problems:
        i, message = min(problems)
        raise DataError(f"{name}:{body[i][0]}: {message}")
    return out


def _label_index(header: list[str]) -> int | None:
    lowered = [c.strip().lower() for c in header]
    for label in LABEL_COLUMNS:
        if label in lowered:
            return lowered.index(label)
    return None


def _feature_columns(name: str, header: list[str], features: tuple[str, ...], what: str) -> list[int]:
    lowered = [c.strip().lower() for c in header]
    missing = [f for f in features if f not in lowered]
    if missing:
        separator = next((s for s in (";", "\t", "|") if len(header) == 1 and s in header[0]), None)
        hint = (f"; the header looks {'tab' if separator == chr(9) else repr(separator)}-separated: foodcls reads comma-separated CSVs"
                if separator else "")
        raise DataError(f"{name}:1: no {', '.join(repr(m) for m in missing)} column ({what} uses {', '.join(features)}){hint}")
    return [lowered.index(f) for f in features]


def read_labelled_csv(
    path: str | Path, features: tuple[str, ...] = SEED_FEATURES, weight: float = 1.0, train_only: bool = False,
    classes: tuple[str, ...] = DEFAULT_CLASSES, ignore: tuple[str, ...] = (),
) -> LabelledData:
    """Read labelled rows: the seed's headerless five columns, or a header naming class/label and the
    features. Labels are names from `classes` (or their indices); rows labelled one of `ignore` are skipped.
    Polars reads the file at column speed where it can (columnar.py); otherwise, and to name the culprit
    of a bad file, the csv module reads it row by row. Both give the same arrays, bit for bit."""
    from foodcls.columnar import read_labelled_columns  # polars: not on the predict path

    key = _cache_key(path, (tuple(features), weight, train_only, tuple(classes), tuple(ignore)))
    if key is not None and key in _READ_CACHE:
        _READ_CACHE.move_to_end(key)
        return _READ_CACHE[key]
    fast = read_labelled_columns(path, features, classes, ignore, LABEL_COLUMNS)
    if fast is None:
        data = read_labelled_rows(path, features, weight, train_only, classes, ignore)
    else:
        n = len(fast.labels)
        data = LabelledData(fast.features, fast.labels, tuple(features), str(path), np.full(n, weight, dtype=np.float32),
                            np.full(n, train_only), fast.text, tuple(classes))
    if key is not None:
        for array in (data.features, data.labels, data.weights, data.train_only, *data.columns.values()):
            array.flags.writeable = False  # shared by every run of this process that reads the file
        _READ_CACHE[key] = data
        while len(_READ_CACHE) > READ_CACHE_FILES:
            _READ_CACHE.popitem(last=False)
    return data


# The sets read in this process, by file (path, size, mtime, inode) and how it was read: the runs of a
# sweep, the trials of a tune and the folds of a cv in one worker process read each file once.
READ_CACHE_FILES = 8
_READ_CACHE: OrderedDict[tuple, LabelledData] = OrderedDict()


def _cache_key(path: str | Path, how: tuple) -> tuple | None:
    if str(path) == "-":
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, how)


def read_labelled_rows(
    path: str | Path, features: tuple[str, ...] = SEED_FEATURES, weight: float = 1.0, train_only: bool = False,
    classes: tuple[str, ...] = DEFAULT_CLASSES, ignore: tuple[str, ...] = (),
) -> LabelledData:
    """read_labelled_csv, row by row with the csv module: every check names file:line, feature and value."""
    name, rows = _read_rows(path)
    first = [c.strip() for c in rows[0][1]]
    if _looks_like_header(first, classes):
        label_index = _label_index(first)
        if label_index is None:
            raise DataError(f"{name}:1: the header names no 'class' (or 'label') column")
        header, body = first, rows[1:]
        columns = _feature_columns(name, header, features, "the config")
        text_columns = {c.lower(): i for i, c in enumerate(header) if c and c.lower() not in (*NUTRIENTS, *LABEL_COLUMNS)}
        if not body:
            raise DataError(f"{name}: file has a header but no rows")
    else:
        if set(features) - set(SEED_FEATURES):
            extra = ", ".join(f for f in features if f not in SEED_FEATURES)
            raise DataError(f"{name}:1: no header, so the file holds only {', '.join(SEED_FEATURES)}; the config also uses {extra}")
        header, body, label_index, text_columns = ["class", *SEED_FEATURES], rows, 0, {}
        columns = [1 + SEED_FEATURES.index(f) for f in features]
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"{name}:{line}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
    if ignore:
        body = [(line, row) for line, row in body if row[label_index].strip() not in ignore]
        if not body:
            raise DataError(f"{name}: every row is labelled {' or '.join(ignore)} (data.ignore_labels)")
    problems: list[tuple[int, str]] = []
    labels = _parse_labels(body, label_index, problems, classes)
    values = _parse_columns(name, body, columns, features, problems)
    carried = {c: np.array([row[i] for _, row in body], dtype=object) for c, i in text_columns.items()}
    return LabelledData(
        values, labels, tuple(features), name,
        np.full(len(body), weight, dtype=np.float32), np.full(len(body), train_only), carried, tuple(classes),
    )


def read_labelled_csvs(paths: list[str | Path], features: tuple[str, ...] = SEED_FEATURES,
                       classes: tuple[str, ...] = DEFAULT_CLASSES, ignore: tuple[str, ...] = ()) -> LabelledData:
    """Several labelled files read as one, in the order given."""
    return concat([read_labelled_csv(path, features, classes=classes, ignore=ignore) for path in paths])


def _looks_like_header(row: list[str], classes: tuple[str, ...] = DEFAULT_CLASSES) -> bool:
    """The seed's headerless rows start with a class (name or index); anything else is a header."""
    return not names_a_class(row[0].strip() if row else "", classes)


def drop_missing(data: LabelledData) -> LabelledData:
    """The rows whose every feature is known (data.missing: drop)."""
    return data.subset(np.flatnonzero(~np.isnan(data.features).any(axis=1)))


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


def named(config: Config, data: LabelledData, nameless: bool = False) -> LabelledData:
    """The data, checked to have the `name` column a config with the name feature needs (one line naming the file);
    a file declared nameless gets one of empty names."""
    if config.uses_name and nameless:
        return LabelledData(data.features, data.labels, data.feature_names, data.source, data.weights, data.train_only,
                            {**data.columns, NAME: np.full(len(data), "", dtype=object)}, data.classes)
    if config.uses_name and NAME not in data.columns:
        raise DataError(f"{data.source}: no {NAME!r} column, and data.features asks for the product's name "
                        "(`foodcls data build` writes it; the demo and synthetic sets have none)")
    return data


def read_training_files(config: Config) -> LabelledData:
    """Every data.train file, with its weight and train-only flag, as one set."""
    features = config.nutrients
    data = concat([named(config, read_labelled_csv(f.path, features, f.weight, f.train_only, config.data.classes, config.data.ignore_labels),
                         f.nameless) for f in config.data.train_files])
    return drop_missing(data) if config.data.missing == "drop" else data


def split_training_file(config: Config) -> tuple[LabelledData, LabelledData | None]:
    """The rows a model trains on: the train files less any val_fraction, and the part held out
    (stratified, seeded by train.seed, taken only from rows that are not train-only)."""
    train = read_training_files(config)
    if config.data.val_fraction is None:
        return train, None
    scorable = np.flatnonzero(~train.train_only)
    kept, held = stratified_split(train.labels[scorable], config.data.val_fraction, config.train.seed)
    return train.subset(np.sort(np.concatenate([np.flatnonzero(train.train_only), scorable[kept]]))), train.subset(scorable[held])


def read_eval_file(config: Config, path: str) -> LabelledData:
    data = named(config, read_labelled_csv(path, config.nutrients, classes=config.data.classes, ignore=config.data.ignore_labels))
    return drop_missing(data) if config.data.missing == "drop" else data


def load_splits(config: Config) -> Splits:
    """Read train / val / test; a val_fraction is carved out of train."""
    train, held_out = split_training_file(config)
    val = read_eval_file(config, config.data.val) if config.data.val else held_out
    test = read_eval_file(config, config.data.test) if config.data.test else None
    for split_name, data in (("train", train), ("val", val), ("test", test)):
        if data is not None and len(data) == 0:
            raise DataError(f"data.{split_name}: no rows left (data.missing: drop removed every row)")
    return Splits(train, val, test)


def _format_value(value: float, feature: str) -> str:
    if math.isnan(value):
        return ""
    return str(int(value)) if NUTRIENTS[feature].whole else f"{value:g}"


def labelled_csv_text(data: LabelledData, columns: tuple[str, ...] = (), header: bool = True) -> str:
    """`label,<features…>,<columns…>` with a header: the format every reader here accepts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(["label", *data.feature_names, *columns])
    carried = [data.columns.get(c, np.full(len(data), "", dtype=object)) for c in columns]
    for i, (row, label) in enumerate(zip(data.features.tolist(), data.labels.tolist())):
        writer.writerow([data.classes[label], *(_format_value(v, f) for v, f in zip(row, data.feature_names)), *(c[i] for c in carried)])
    return buffer.getvalue()


def write_labelled_csv(path: Path, data: LabelledData, columns: tuple[str, ...] = ()) -> None:
    """Write rows with a header, atomically."""
    atomic_write_text(path, labelled_csv_text(data, columns))
