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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.features import NAME
from foodcls.inference.explain import Explanation, integrated_gradients
from foodcls.inference.inputs import as_columns, check_values
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
