"""Products as the library and MLflow's model take them: a pandas or polars DataFrame, a dict of columns, a list
of dicts (one per product) or a 2-D array in the model's feature order → the nutrient values (NaN: unknown)
and the names; and the checks `foodcls predict` makes of them, one line naming the column, row and value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from foodcls.errors import DataError
from foodcls.features import NAME, REQUIRED_FEATURES, invalid_mask, value_problem


def as_columns(X: Any, features: tuple[str, ...], named: bool) -> tuple[np.ndarray, list[Any] | None]:
    """X's nutrient values (n, features) float32 (NaN: unknown) and, for a name model, its names. X: a pandas or
    polars DataFrame, a dict of columns, a list of dicts (one per product), or a 2-D array in the features' order."""
    if hasattr(X, "to_dict") and hasattr(X, "columns"):  # pandas or polars
        X = {str(c): list(X[c]) for c in X.columns}
    if isinstance(X, Mapping):
        columns = {str(k).strip().lower(): v for k, v in X.items()}
        missing = [f for f in features if f not in columns and f in REQUIRED_FEATURES]
        if missing:
            raise DataError(f"X: no {', '.join(repr(m) for m in missing)} column (this model uses {', '.join(features)}; "
                            f"X has {', '.join(map(repr, columns)) or 'none'})")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise DataError(f"X: its columns have different lengths ({sorted(lengths)})")
        n = lengths.pop() if lengths else 0
        values = np.column_stack([_numbers(columns[f], f) if f in columns else np.full(n, np.nan) for f in features]) \
            if n else np.zeros((0, len(features)))
        names = [None if v is None else str(v) for v in columns[NAME]] if named and NAME in columns else None
        return values.astype(np.float32), names
    if isinstance(X, Sequence) and not isinstance(X, (str, bytes)) and X and all(isinstance(row, Mapping) for row in X):
        keys = {k for row in X for k in row}
        return as_columns({k: [row.get(k) for row in X] for k in keys}, features, named)
    try:
        array = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"X: expected a DataFrame, a dict of columns, a list of dicts or a 2-D array of numbers, "
                        f"got {type(X).__name__}") from None
    if array.ndim != 2 or array.shape[1] != len(features):
        raise DataError(f"X: a 2-D array needs {len(features)} columns in the order {', '.join(features)}, got shape {array.shape}")
    return array.astype(np.float32), None


def _numbers(column: Any, feature: str) -> np.ndarray:
    try:
        return np.array([np.nan if v is None else v for v in column], dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in column if v is not None and not isinstance(v, (int, float, np.number)))
        raise DataError(f"X[{feature!r}]: not a number: {bad!r}") from None


def check_values(values: np.ndarray, features: tuple[str, ...], allow_missing: bool) -> None:
    """Refuse, in one line naming the feature, row and value, what predict refuses: an impossible value, or an
    unknown protein, carbs, fat or additives figure unless allow_missing (optional nutrients are filled)."""
    for j, feature in enumerate(features):
        column = values[:, j].astype(np.float64)
        bad = np.flatnonzero(invalid_mask(feature, column))
        if len(bad):
            raise DataError(f"X[{feature!r}] row {int(bad[0])}: {feature} {value_problem(feature, float(column[bad[0]]))}")
        unknown = np.flatnonzero(np.isnan(column))
        if len(unknown) and feature in REQUIRED_FEATURES and not allow_missing:
            raise DataError(f"X[{feature!r}] row {int(unknown[0])}: unknown (NaN or missing); allow_missing=True fills it with "
                            "the training median")
