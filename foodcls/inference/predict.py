"""Predictions for products and CSV batches: a checkpoint's Predictor, the checks of a product's values, and
the batch table (with explanations on request)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from foodcls.feature_table import FeatureTable
from foodcls.preprocessing import Preprocessing
from foodcls.inference.checkpoint import Checkpoint, ensemble_size, load_checkpoint, weight_arrays
from foodcls.inference.explain import integrated_gradients
from foodcls.inference.judge import TrustOptions, check_trust_options, judge
from foodcls.inference.network import ACTIVATIONS, Calibration, NameModel, OperatingPoint, Predictor
from foodcls.inference.suggest import OPEN_SET_SCORES, default_score
from foodcls.errors import CheckpointError, DataError
from foodcls.features import NUTRIENTS, REQUIRED_FEATURES, consistency_problems, value_problem
from foodcls.labels import OTHER
from foodcls.text import NameHashing

def predictor_from_checkpoint(checkpoint: Checkpoint) -> Predictor:
    activation = checkpoint.meta["model"].get("activation")
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"{checkpoint.path}: unknown activation {activation!r}")
    features = tuple(checkpoint.meta["features"])
    unknown = [f for f in features if f not in NUTRIENTS]
    if unknown and checkpoint.meta.get("generic_features") is not True:
        raise CheckpointError(f"{checkpoint.path}: unknown feature {unknown[0]!r} in the checkpoint")
    stacked = ensemble_size(checkpoint) is not None
    # Every predictor holds (K, out, in) weights: one network is an ensemble of one.
    layers = [(w.astype(np.float32) if stacked else w.astype(np.float32)[None], b.astype(np.float32) if stacked else b.astype(np.float32)[None])
              for w, b in weight_arrays(checkpoint)]
    prep = Preprocessing.from_arrays(checkpoint.arrays)
    shapes_ok = all(a.shape == (len(features),) for a in prep.arrays().values())
    name = _name_model(checkpoint, layers[0][0].shape[0], stacked)
    inputs = len(features) + (name.hashing.dim if name is not None else 0)
    if layers[0][0].shape[2] != inputs or not shapes_ok:
        raise CheckpointError(f"{checkpoint.path}: weights or scaling do not match its {len(features)} features"
                              + (" and the name's vector" if name is not None else ""))
    if not all(np.isfinite(a).all() for a in prep.arrays().values()) or not (prep.scale != 0).all():
        raise CheckpointError(f"{checkpoint.path}: its feature scaling holds zeros or non-finite numbers (damaged file?)")
    classes = tuple(checkpoint.meta["classes"])
    if layers[-1][0].shape[1] != len(classes):
        raise CheckpointError(f"{checkpoint.path}: the output layer does not match its {len(classes)} classes")
    for (w, b), (w_next, _) in zip(layers, layers[1:]):
        if w.shape[1] != b.shape[1] or w_next.shape[2] != w.shape[1]:
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
    open_set_score = checkpoint.meta.get("open_set_score", default_score(classes))
    if open_set_score not in OPEN_SET_SCORES or (open_set_score == "not_other" and OTHER not in classes):
        raise CheckpointError(f"{checkpoint.path}: checkpoint metadata: unknown open-set score {open_set_score!r}")
    knn_reference = checkpoint.arrays.get(KNN_REFERENCE)
    if open_set_score == "knn" and (knn_reference is None or knn_reference.ndim != 3 or knn_reference.shape[0] != layers[0][0].shape[0]
                                    or knn_reference.shape[2] != layers[-1][0].shape[2]):
        raise CheckpointError(f"{checkpoint.path}: its knn open-set score lacks the reference rows of its hidden layer (damaged file?)")
    return Predictor(layers, activation, prep, classes, features, checkpoint.meta["config"], metrics,
                     float(temperature), scores.astype(np.float64) if scores is not None else None, min_confidence,
                     open_set_score, _calibration(checkpoint, len(classes)), _operating_point(checkpoint, classes),
                     knn_reference.astype(np.float32) if knn_reference is not None else None, name)


NAME_TABLE = "name.embedding"  # (buckets, dim), an ensemble's (K, buckets, dim): each bucket's learnt vector


def _name_model(checkpoint: Checkpoint, members: int, stacked: bool) -> NameModel | None:
    """The name feature of a checkpoint whose metadata `name` says how names are hashed."""
    meta = checkpoint.meta.get("name")
    if meta is None:
        return None
    try:
        hashing = NameHashing(**meta)
        numbers = [v for k, v in hashing.to_json().items() if k != "words"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in numbers) or not isinstance(hashing.words, bool):
            raise TypeError
    except TypeError:
        raise CheckpointError(f"{checkpoint.path}: checkpoint metadata: name must give buckets, ngram_min, ngram_max, "
                              f"max_ngrams and dim (and words, true or false), got {meta!r}") from None
    table = checkpoint.arrays.get(NAME_TABLE)
    tables = table[None] if table is not None and not stacked else table
    if tables is None or tables.shape != (members, hashing.buckets, hashing.dim) or tables.dtype.kind != "f" or not np.isfinite(tables).all():
        raise CheckpointError(f"{checkpoint.path}: its name vectors are missing or malformed (damaged file?)")
    return NameModel(hashing, tables.astype(np.float32))


# The arrays a calibrated checkpoint holds besides the weights (training/calibrate.py writes them).
CALIBRATION_ARRAYS = ("calibration.probabilities", "calibration.labels", "calibration.open_set_scores")
KNN_REFERENCE = "knn.reference"
SCORES_PREFIX = "calibration.scores."  # every open-set score of the calibration rows, by kind


def _calibration(checkpoint: Checkpoint, n_classes: int) -> Calibration | None:
    """The calibration rows' figures, when the checkpoint has them (from before this round: none)."""
    meta = checkpoint.meta.get("calibration")
    if not isinstance(meta, dict) or not all(name in checkpoint.arrays for name in CALIBRATION_ARRAYS):
        return None
    probabilities, labels, open_set = (checkpoint.arrays[name] for name in CALIBRATION_ARRAYS)
    n = len(labels)
    if (probabilities.shape != (n, n_classes) or open_set.shape != (n,) or labels.dtype.kind not in "iu"
            or not np.isfinite(probabilities).all() or not np.isfinite(open_set).all() or (n and not 0 <= labels.min() <= labels.max() < n_classes)):
        raise CheckpointError(f"{checkpoint.path}: its calibration rows are malformed (damaged file?)")
    sources = meta.get("sources") if isinstance(meta.get("sources"), list) else []
    by_kind = {name[len(SCORES_PREFIX):]: a.astype(np.float64) for name, a in checkpoint.arrays.items()
               if name.startswith(SCORES_PREFIX) and a.shape == (n,) and np.isfinite(a).all()}
    return Calibration(str(meta.get("method", "temperature")), probabilities.astype(np.float64), labels.astype(np.int64),
                       open_set.astype(np.float64), tuple(str(s) for s in sources), by_kind)


def _operating_point(checkpoint: Checkpoint, classes: tuple[str, ...]) -> OperatingPoint | None:
    point = checkpoint.meta.get("operating_point")
    if point is None:
        return None
    thresholds = point.get("thresholds") if isinstance(point, dict) else None
    precision = point.get("precision") if isinstance(point, dict) else None
    if (not isinstance(thresholds, dict) or isinstance(precision, bool) or not isinstance(precision, (int, float))
            or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in thresholds.values())
            or set(thresholds) - set(classes)):
        raise CheckpointError(f"{checkpoint.path}: checkpoint metadata: operating_point must give a precision and a threshold per class")
    return OperatingPoint(float(precision), {c: (None if thresholds.get(c) is None else float(thresholds[c])) for c in classes if c != OTHER})


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
    unknown = [f for f in features if values.get(f) is None]
    missing = [f for f in unknown if f in REQUIRED_FEATURES] if not allow_missing else []
    warnings = consistency_problems({k: float(v) for k, v in values.items() if v is not None})
    unused = [f for f, v in values.items() if v is not None and f not in features]
    if unused:
        warnings.append(f"ignored {', '.join(name_of(f) for f in unused)}: this model uses {', '.join(features)}")
    if not missing:
        warnings += fill_warnings({f: 1 for f in unknown}, fill or {})
    row = [math.nan if values.get(f) is None else float(values[f]) for f in features]
    return ProductCheck(row, problems, missing, warnings)


def fill_warnings(unknown: dict[str, int], fill: dict[str, float], rows: int | None = None) -> list[str]:
    """The one wording of filled values, wherever they are filled (one product, a CSV, an export, serve, eval):
    each nutrient left unknown, in how many of the rows, and the training median that took its place."""
    return [f"unknown {feature}{'' if rows is None else f' in {count:,} of {rows:,} rows'} "
            f"(filled with the training median {fill.get(feature, math.nan):g})" for feature, count in unknown.items() if count]


def check_product(values: dict[str, float | None], features: tuple[str, ...], fill: dict[str, float] | None = None,
                  allow_missing: bool = False, name_of=lambda f: NUTRIENTS[f].option) -> ProductCheck:
    """review_product, refusing (one DataError) an impossible value, or a missing protein, carbs, fat or
    additives figure unless allow_missing (the optional nutrients may always be unknown: filled, and said so)."""
    checked = review_product(values, features, fill, allow_missing, name_of)
    if checked.problems:
        feature, problem = checked.problems[0]
        raise DataError(f"{name_of(feature)} {problem}")
    if checked.missing:
        raise DataError(f"missing {', '.join(name_of(f) for f in checked.missing)} (this model uses {', '.join(features)}; "
                        "--allow-missing fills unknown values with the training medians)")
    return checked


def predict_table(predictor: Predictor, table: FeatureTable, explain: bool = False,
                  options: TrustOptions = TrustOptions()) -> tuple[list[str], list[list[str]]]:
    """The input's columns plus `predicted`, one `p_<class>` per class, `decision` and `suggest` (with a
    coverage, `set`: the classes joined by |); with explain, one `contrib_<feature>` per feature: its share of
    the predicted class's probability."""
    names = table.names() if predictor.name is not None else None
    judged = judge(predictor, table.features, options, names)
    header = [*table.header, "predicted", *(f"p_{name}" for name in predictor.classes), "decision", "suggest",
              *(["set"] if judged.sets is not None else [])]
    rows = [
        [*row, predicted, *(f"{value:.6f}" for value in p), decision, "true" if suggest else "false",
         *(["|".join(judged.sets[i])] if judged.sets is not None else [])]
        for i, (row, predicted, p, decision, suggest) in enumerate(
            zip(table.rows, judged.predicted(), judged.probabilities, judged.decisions, judged.suggest.tolist()))
    ]
    if explain:
        header += [f"contrib_{name}" for name in predictor.features] + (["contrib_name"] if predictor.name is not None else [])
        for i, (row, features, p) in enumerate(zip(rows, table.features, judged.probabilities)):
            explanation = integrated_gradients(predictor, features, target=int(p.argmax()), name=names[i] if names else None)
            row += [f"{c:.6f}" for c in explanation.contributions]
            if explanation.name is not None:
                row.append(f"{explanation.name:.6f}")
    return header, rows


def format_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def predict_csv(checkpoint_path: str | Path, input_path: str | Path, explain: bool = False,
                options: TrustOptions = TrustOptions(), allow_missing: bool = False) -> tuple[str, list[str]]:
    """Batch prediction: (the input CSV (or - for stdin) with predicted, p_<class>, decision and suggest (and
    set) columns, as text; the warnings: the unknown values filled)."""
    from foodcls.feature_table import read_feature_table

    predictor = load_predictor(checkpoint_path)
    check_trust_options(predictor, options)  # before the input is read
    table = read_feature_table(input_path, predictor.features, predictor.classes, allow_missing)
    unknown = dict(zip(predictor.features, np.isnan(table.features).sum(axis=0).tolist()))
    return format_csv(*predict_table(predictor, table, explain, options)), fill_warnings(unknown, predictor.fill_values, len(table.rows))
