"""Inference in numpy from a checkpoint alone: no torch import, so `foodcls predict` answers at once."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foodcls.checkpoint import load_checkpoint, weight_arrays
from foodcls.data import FeatureTable
from foodcls.errors import CheckpointError, DataError
from foodcls.labels import NUTRIENTS

_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
}


@dataclass(frozen=True)
class Predictor:
    layers: list[tuple[np.ndarray, np.ndarray]]
    activation: str
    scale: np.ndarray
    classes: tuple[str, ...]
    config: dict  # the training config stored in the checkpoint

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) for raw label values (n, 4)."""
        x = np.asarray(features, dtype=np.float32) / self.scale
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if i < len(self.layers) - 1:
                x = _ACTIVATIONS[self.activation](x)
        x = x - x.max(axis=1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.probabilities(features).argmax(axis=1)


def load_predictor(path: str | Path) -> Predictor:
    checkpoint = load_checkpoint(path)
    activation = checkpoint.meta["model"].get("activation")
    if activation not in _ACTIVATIONS:
        raise CheckpointError(f"{checkpoint.path}: unknown activation {activation!r}")
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in weight_arrays(checkpoint)]
    return Predictor(layers, activation, checkpoint.arrays["scale"].astype(np.float32), tuple(checkpoint.meta["classes"]), checkpoint.meta["config"])


def check_product(protein: float, carbs: float, fat: float, additives: float) -> list[str]:
    """Refuse impossible label values; return warnings for merely suspicious ones."""
    for name, value in zip(NUTRIENTS, (protein, carbs, fat)):
        if not np.isfinite(value) or not 0 <= value <= 100:
            raise DataError(f"--{name} must lie within 0-100 g per 100 g, got {value:g}")
    if not np.isfinite(additives) or additives < 0 or not float(additives).is_integer():
        raise DataError(f"--additives must be a whole number >= 0, got {additives:g}")
    total = protein + carbs + fat
    if total > 100:
        return [f"protein + carbs + fat = {total:g} g exceeds 100 g per 100 g; check the label"]
    return []


def predict_table(predictor: Predictor, table: FeatureTable) -> tuple[list[str], list[list[str]]]:
    """The input's columns plus `predicted` and one `p_<class>` per class."""
    probabilities = predictor.probabilities(table.features)
    header = [*table.header, "predicted", *(f"p_{name}" for name in predictor.classes)]
    rows = [
        [*row, predictor.classes[int(p.argmax())], *(f"{value:.6f}" for value in p)]
        for row, p in zip(table.rows, probabilities)
    ]
    return header, rows


def format_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def predict_csv(checkpoint_path: str | Path, input_path: str | Path) -> str:
    """Batch prediction: the input CSV (or - for stdin) with predicted and p_<class> columns, as text."""
    from foodcls.data import read_feature_table

    return format_csv(*predict_table(load_predictor(checkpoint_path), read_feature_table(input_path)))
