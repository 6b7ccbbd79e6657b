"""foodcls as a library: load a checkpoint and score products from a notebook or a script, or train a run.

    import foodcls
    model = foodcls.load("runs/off_open-…")            # a checkpoint file or a run directory; numpy only
    model.predict_proba(df)                             # pandas or polars DataFrame, dict of columns, list of dicts,
    model.decide(df, min_confidence=0.8, coverage=0.9)  # or a 2-D array in model.features' order
    run = foodcls.train("configs/mlp.yaml", overrides=["train.epochs=50"])

The same numbers as the command line (the same numpy predictor, the same checks of a product's values);
torch is imported only by train(). Errors are foodcls's own one-line exceptions (DataError, CheckpointError,
ConfigError), naming the culprit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.errors import DataError
from foodcls.features import NAME, REQUIRED_FEATURES, invalid_mask, value_problem
from foodcls.inference.explain import Explanation, integrated_gradients
from foodcls.inference.judge import TrustOptions, judge
from foodcls.inference.network import Predictor
from foodcls.inference.predict import load_predictor

__all__ = ["Decisions", "Model", "TrainedRun", "load", "train"]


@dataclass(frozen=True)
class Decisions:
    """What `decide` says of each product, as `foodcls predict` says it: the most probable class, its decision
    (a class, `other`, or `unsure` below the confidence threshold), whether the operating point suggests it,
    and the conformal set (classes, most probable first) when a coverage was asked."""

    predicted: list[str]
    decision: list[str]
    suggest: np.ndarray
    set: list[list[str]] | None
    probabilities: np.ndarray


class Model:
    """A trained model, from its checkpoint alone (numpy; no torch)."""

    def __init__(self, predictor: Predictor, path: Path) -> None:
        self.predictor, self.path = predictor, path

    def __repr__(self) -> str:
        return f"foodcls.Model({self.path}: {', '.join(self.features)} → {', '.join(self.classes)})"

    @property
    def classes(self) -> tuple[str, ...]:
        return self.predictor.classes

    @property
    def features(self) -> tuple[str, ...]:
        """The columns X must hold: its nutrients, then `name` for a model that reads the product's name."""
        return (*self.predictor.features, *((NAME,) if self.predictor.name is not None else ()))

    def _inputs(self, X: Any, allow_missing: bool) -> tuple[np.ndarray, list[Any] | None]:
        values, names = as_columns(X, self.predictor.features, self.predictor.name is not None)
        check_values(values, self.predictor.features, allow_missing)
        return values, names

    def predict_proba(self, X: Any, *, allow_missing: bool = False) -> np.ndarray:
        """(n, classes) calibrated probabilities, in `classes` order."""
        values, names = self._inputs(X, allow_missing)
        return self.predictor.probabilities(values, names)

    def predict(self, X: Any, *, allow_missing: bool = False) -> np.ndarray:
        """The most probable class of each product, by name."""
        return np.array(self.classes, dtype=object)[self.predict_proba(X, allow_missing=allow_missing).argmax(axis=1)]

    def decide(self, X: Any, *, min_confidence: float | None = None, coverage: float | None = None,
               precision: float | None = None, allow_missing: bool = False) -> Decisions:
        """Decision, suggest (at the checkpoint's operating point, or `precision`) and conformal sets (`coverage`)."""
        values, names = self._inputs(X, allow_missing)
        judged = judge(self.predictor, values, TrustOptions(min_confidence, coverage, precision), names)
        return Decisions(judged.predicted(), judged.decisions, judged.suggest, judged.sets, judged.probabilities)

    def explain(self, X: Any, *, allow_missing: bool = False) -> list[Explanation]:
        """Each product's contributions to its predicted class (integrated gradients, as `predict --explain`)."""
        values, names = self._inputs(X, allow_missing)
        return [integrated_gradients(self.predictor, row.astype(np.float64), name=names[i] if names is not None else None)
                for i, row in enumerate(values)]


def load(path: str | Path) -> Model:
    """A checkpoint file or a run directory (its best checkpoint) as a Model."""
    from foodcls.inference.checkpoint import resolve_checkpoint_path

    resolved = resolve_checkpoint_path(path)
    return Model(load_predictor(resolved), resolved)


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


@dataclass(frozen=True)
class TrainedRun:
    """A run trained by `train`: its directory, its summary.json and its model."""

    run_dir: Path
    summary: dict[str, Any]
    model: Model


def train(config: str | Path | Any, overrides: Sequence[str] = (), *, runs_root: str | Path = "runs", name: str | None = None) -> TrainedRun:
    """Train a run from a config file (or a loaded Config), with `--set`-style overrides, as `foodcls train`."""
    from foodcls import runs
    from foodcls.config import Config, load_config
    from foodcls.training.fit import train as train_run

    if isinstance(config, Config):
        from foodcls.config import derive, parse_yaml_value

        pairs = {o.partition("=")[0].strip(): parse_yaml_value(o.partition("=")[2]) for o in overrides}
        loaded, stem = (derive(config, pairs, "overrides") if pairs else config), name or "run"
    else:
        loaded, stem = load_config(config, list(overrides)), name or Path(config).stem
    result = train_run(loaded, runs_root=runs_root, name=stem)
    return TrainedRun(result.run_dir, runs.read_summary(result.run_dir), load(result.run_dir))
