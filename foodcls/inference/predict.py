"""Predictions for products and CSV batches: a checkpoint's Predictor, the checks of a product's values, and
the batch table (with explanations on request)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foodcls.data import FeatureTable
from foodcls.preprocessing import Preprocessing
from foodcls.inference.checkpoint import Checkpoint, load_checkpoint, weight_arrays
from foodcls.inference.explain import integrated_gradients
from foodcls.inference.network import ACTIVATIONS, Predictor
from foodcls.errors import CheckpointError, DataError
from foodcls.features import NUTRIENTS, consistency_problems, value_problem

def predictor_from_checkpoint(checkpoint: Checkpoint) -> Predictor:
    activation = checkpoint.meta["model"].get("activation")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{checkpoint.path}: unknown activation {activation!r}")
    features = tuple(checkpoint.meta["features"])
    unknown = [f for f in features if f not in NUTRIENTS]
    if unknown:
        raise CheckpointError(f"{checkpoint.path}: unknown feature {unknown[0]!r} in the checkpoint")
    layers = [(w.astype(np.float32), b.astype(np.float32)) for w, b in weight_arrays(checkpoint)]
    prep = Preprocessing.from_arrays(checkpoint.arrays)
    shapes_ok = all(a.shape == (len(features),) for a in prep.arrays().values())
    if layers[0][0].shape[1] != len(features) or not shapes_ok:
        raise CheckpointError(f"{checkpoint.path}: weights or scaling do not match its {len(features)} features")
    if not all(np.isfinite(a).all() for a in prep.arrays().values()) or not (prep.scale != 0).all():
        raise CheckpointError(f"{checkpoint.path}: its feature scaling holds zeros or non-finite numbers (damaged file?)")
    if layers[-1][0].shape[0] != len(checkpoint.meta["classes"]):
        raise CheckpointError(f"{checkpoint.path}: the output layer does not match its {len(checkpoint.meta['classes'])} classes")
    for (w, b), (w_next, _) in zip(layers, layers[1:]):
        if w.shape[0] != b.shape[0] or w_next.shape[1] != w.shape[0]:
            raise CheckpointError(f"{checkpoint.path}: layer shapes do not chain")
    metrics = checkpoint.meta.get("metrics") if isinstance(checkpoint.meta.get("metrics"), dict) else {}
    return Predictor(layers, activation, prep, tuple(checkpoint.meta["classes"]), features, checkpoint.meta["config"], metrics)


def load_predictor(path: str | Path) -> Predictor:
    return predictor_from_checkpoint(load_checkpoint(path))


@dataclass(frozen=True)
class ProductCheck:
    """One product's values in the checkpoint's feature order (NaN: unknown, filled by the median),
    the values refused (feature, why), the features the model uses but the product lacks, and the
    warnings to show."""

    values: list[float]
    problems: list[tuple[str, str]]
    missing: list[str]
    warnings: list[str]


def review_product(values: dict[str, float | None], features: tuple[str, ...], fill: dict[str, float] | None = None,
                   allow_missing: bool = False, name_of=lambda f: NUTRIENTS[f].option) -> ProductCheck:
    """Everything wrong or suspicious about one product, without stopping at the first problem (the
    HTTP API names every bad field). name_of gives the name warnings use for a feature (the CLI option,
    or the JSON field)."""
    problems = []
    for feature, value in values.items():
        if value is not None:
            problem = value_problem(feature, float(value))
            if problem is not None:
                problems.append((feature, problem))
    missing = [f for f in features if values.get(f) is None]
    warnings = consistency_problems({k: float(v) for k, v in values.items() if v is not None})
    unused = [f for f, v in values.items() if v is not None and f not in features]
    if unused:
        warnings.append(f"ignored {', '.join(name_of(f) for f in unused)}: this model uses {', '.join(features)}")
    if missing and allow_missing:
        fill = fill or {}
        warnings.append("unknown " + ", ".join(f"{f} (used the training median {fill.get(f, math.nan):g})" for f in missing))
    row = [math.nan if values.get(f) is None else float(values[f]) for f in features]
    return ProductCheck(row, problems, missing, warnings)


def check_product(values: dict[str, float | None], features: tuple[str, ...], fill: dict[str, float] | None = None,
                  allow_missing: bool = False, name_of=lambda f: NUTRIENTS[f].option) -> ProductCheck:
    """review_product, refusing (one DataError) an impossible value, or a missing one unless allow_missing."""
    checked = review_product(values, features, fill, allow_missing, name_of)
    if checked.problems:
        feature, problem = checked.problems[0]
        raise DataError(f"{name_of(feature)} {problem}")
    if checked.missing and not allow_missing:
        raise DataError(f"missing {', '.join(name_of(f) for f in checked.missing)} (this model uses {', '.join(features)}; "
                        "--allow-missing fills unknown values with the training medians)")
    return checked


def predict_table(predictor: Predictor, table: FeatureTable, explain: bool = False) -> tuple[list[str], list[list[str]]]:
    """The input's columns plus `predicted` and one `p_<class>` per class (and, with explain, one
    `contrib_<feature>` per feature: its share of the predicted class's probability)."""
    probabilities = predictor.probabilities(table.features)
    header = [*table.header, "predicted", *(f"p_{name}" for name in predictor.classes)]
    rows = [
        [*row, predictor.classes[int(p.argmax())], *(f"{value:.6f}" for value in p)]
        for row, p in zip(table.rows, probabilities)
    ]
    if explain:
        header += [f"contrib_{name}" for name in predictor.features]
        for row, features, p in zip(rows, table.features, probabilities):
            row += [f"{c:.6f}" for c in integrated_gradients(predictor, features, target=int(p.argmax())).contributions]
    return header, rows


def format_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def predict_csv(checkpoint_path: str | Path, input_path: str | Path, explain: bool = False) -> str:
    """Batch prediction: the input CSV (or - for stdin) with predicted and p_<class> columns, as text."""
    from foodcls.data import read_feature_table

    predictor = load_predictor(checkpoint_path)
    return format_csv(*predict_table(predictor, read_feature_table(input_path, predictor.features), explain))
