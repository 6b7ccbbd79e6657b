"""Rows to predict (`foodcls predict --input CSV`, `eval --out-of-class`): a CSV whose header names the model's
features, in any order (other columns carried through; an empty cell of an optional nutrient means unknown),
or the seed's labelled headerless rows for a four-feature model. Read with data.py's row reader, which names
the culprit of a bad cell (file:line, feature, value)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foodcls.data import _feature_columns, _looks_like_header, _parse_columns, _read_rows
from foodcls.errors import DataError
from foodcls.features import NAME, REQUIRED_FEATURES, SEED_FEATURES
from foodcls.labels import DEFAULT_CLASSES


@dataclass(frozen=True)
class FeatureTable:
    """Rows to predict: the input's columns as read (carried through) and their features."""

    header: list[str]
    rows: list[list[str]]
    features: np.ndarray

    def names(self) -> list[str] | None:
        """The rows' product names: the `name` column (or product_name), where the input has one."""
        lowered = [c.strip().lower() for c in self.header]
        column = next((lowered.index(c) for c in (NAME, "product_name") if c in lowered), None)
        return [row[column] for row in self.rows] if column is not None else None


def read_feature_table(path: str | Path, features: tuple[str, ...] = SEED_FEATURES,
                       classes: tuple[str, ...] = DEFAULT_CLASSES, allow_missing: bool = False) -> FeatureTable:
    """Rows to predict: a CSV whose header names the features (other columns carried through), or
    the seed's labelled headerless format for a four-feature model (its first cell one of `classes`). An
    optional nutrient's column may be absent or its cells empty (unknown: NaN, filled by the predictor); so
    may protein, carbs, fat and additives with allow_missing."""
    name, rows = _read_rows(path)
    first = [c.strip() for c in rows[0][1]]
    lowered = [c.lower() for c in first]
    required = () if allow_missing else REQUIRED_FEATURES
    if all(f in lowered for f in features if f in REQUIRED_FEATURES) or _looks_like_header(first, classes):
        header = first
        present = tuple(f for f in features if f in lowered or f in required)
        columns = _feature_columns(name, header, present, "the checkpoint")
        body = rows[1:]
    else:
        if set(features) - set(SEED_FEATURES):
            raise DataError(f"{name}:1: no header; a header must name the checkpoint's features: {', '.join(features)}")
        header = ["class", *SEED_FEATURES]
        columns = [1 + SEED_FEATURES.index(f) for f in features]
        body, present = rows, features
    if not body:
        raise DataError(f"{name}: file has a header but no rows")
    for line, row in body:
        if len(row) != len(header):
            raise DataError(f"{name}:{line}: expected {len(header)} fields, got {len(row)}")
    values = _parse_columns(name, body, columns, present, required=required)
    if present != features:  # the absent optional columns: every value unknown
        full = np.full((len(body), len(features)), np.nan, dtype=np.float32)
        full[:, [features.index(f) for f in present]] = values
        values = full
    return FeatureTable(header, [row for _, row in body], values)
