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
    temperature = checkpoint.meta.get("temperature", 1.0)  # absent in checkpoints from before calibration
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise CheckpointError(f"{checkpoint.path}: checkpoint metadata: temperature must be a positive number, got {temperature!r}")
    scores = checkpoint.arrays.get("conformal_scores")
    if scores is not None and (scores.ndim != 1 or scores.dtype.kind != "f" or not np.isfinite(scores).all()):
        raise CheckpointError(f"{checkpoint.path}: its conformal scores are not a list of finite numbers (damaged file?)")
    train_config = checkpoint.meta["config"].get("train")
    min_confidence = train_config.get("min_confidence") if isinstance(train_config, dict) else None
    if min_confidence is not None and (isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float))
                                       or not 0 <= min_confidence <= 1):
        raise CheckpointError(f"{checkpoint.path}: checkpoint config: train.min_confidence must lie within 0-1, got {min_confidence!r}")
    return Predictor(layers, activation, prep, tuple(checkpoint.meta["classes"]), features, checkpoint.meta["config"], metrics,
                     float(temperature), scores.astype(np.float64) if scores is not None else None, min_confidence)


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


@dataclass(frozen=True)
class Verdict:
    """What to do with one prediction: the decision (a class, `other`, or `unsure` below the confidence
    threshold) and, when a coverage was asked, the conformal set of classes (most probable first)."""

    decision: str
    set: list[str] | None = None


def check_trust_options(predictor: Predictor, min_confidence: float | None, coverage: float | None) -> None:
    """Refuse, in one line, a threshold or coverage that means nothing, or sets a checkpoint cannot give."""
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise DataError(f"--min-confidence {min_confidence:g}: expected a probability within 0-1")
    if coverage is not None:
        if not 0 < coverage < 1:
            raise DataError(f"--coverage {coverage:g}: expected a share strictly between 0 and 1, e.g. 0.9")
        if predictor.conformal_scores is None:
            raise DataError("--coverage: this checkpoint holds no calibration scores (train it with validation data; "
                            "train.calibration: temperature keeps them)")


def verdicts(predictor: Predictor, probabilities: np.ndarray, *, min_confidence: float | None = None,
             coverage: float | None = None) -> list[Verdict]:
    """Decision (and set) per row; min_confidence None takes the checkpoint's train.min_confidence."""
    from foodcls.inference.calibration import conformal_threshold, decisions, prediction_sets

    check_trust_options(predictor, min_confidence, coverage)
    threshold = predictor.min_confidence if min_confidence is None else min_confidence
    decided = decisions(probabilities, predictor.classes, threshold)
    if coverage is None:
        return [Verdict(d) for d in decided]
    sets = prediction_sets(probabilities, conformal_threshold(predictor.conformal_scores, coverage))
    return [Verdict(d, [predictor.classes[k] for k in members]) for d, members in zip(decided, sets)]


def predict_table(predictor: Predictor, table: FeatureTable, explain: bool = False, *, min_confidence: float | None = None,
                  coverage: float | None = None) -> tuple[list[str], list[list[str]]]:
    """The input's columns plus `predicted`, one `p_<class>` per class and `decision` (with coverage, `set`:
    the classes joined by |); with explain, one `contrib_<feature>` per feature: its share of the predicted
    class's probability."""
    probabilities = predictor.probabilities(table.features)
    judged = verdicts(predictor, probabilities, min_confidence=min_confidence, coverage=coverage)
    header = [*table.header, "predicted", *(f"p_{name}" for name in predictor.classes), "decision",
              *(["set"] if coverage is not None else [])]
    rows = [
        [*row, predictor.classes[int(p.argmax())], *(f"{value:.6f}" for value in p), verdict.decision,
         *(["|".join(verdict.set)] if verdict.set is not None else [])]
        for row, p, verdict in zip(table.rows, probabilities, judged)
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


def predict_csv(checkpoint_path: str | Path, input_path: str | Path, explain: bool = False, *,
                min_confidence: float | None = None, coverage: float | None = None) -> str:
    """Batch prediction: the input CSV (or - for stdin) with predicted, p_<class> and decision (and set) columns, as text."""
    from foodcls.data import read_feature_table

    predictor = load_predictor(checkpoint_path)
    check_trust_options(predictor, min_confidence, coverage)  # before the input is read
    table = read_feature_table(input_path, predictor.features)
    return format_csv(*predict_table(predictor, table, explain, min_confidence=min_confidence, coverage=coverage))
