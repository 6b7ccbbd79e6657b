"""What makes a checkpoint's confidence honest, fitted after training and stored in the checkpoint: one
temperature, the calibration rows' conformal scores, their calibrated probabilities, labels and open-set
scores (from which `predict --precision` sets thresholds anew), the operating point of `suggest`
(train.suggest_precision), and for the knn score its reference rows.

The calibration rows are the validation rows (train.calibration: temperature), or out-of-source predictions
(sources): each source of the data predicted by models trained without it (composite.py trains them), so the
constants measure the error on a source the model never saw — three times the in-source error on the
shared Open Food Facts exports — not the error on more rows like its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foodcls.config import Config
from foodcls.data import LabelledData
from foodcls.inference.calibration import conformal_scores, expected_calibration_error, fit_temperature, softmax
from foodcls.inference.checkpoint import load_checkpoint, save_checkpoint
from foodcls.inference.network import Predictor
from foodcls.inference.predict import CALIBRATION_ARRAYS, KNN_REFERENCE, SCORES_PREFIX, predictor_from_checkpoint
from foodcls.inference.suggest import (
    KNN_REFERENCE_ROWS, OPEN_SET_SCORES, default_score, named_classes, open_set_scores, suggest_thresholds, unit_rows,
)
from foodcls.features import NAME
from foodcls.labels import OTHER


@dataclass(frozen=True)
class HeldOut:
    """A model's predictions for rows it did not train on: each member's logits (K, n, C) and, for the knn
    score, last hidden layers (K, n, D) with that model's reference rows."""

    logits: np.ndarray
    labels: np.ndarray
    hidden: np.ndarray | None = None
    knn_reference: np.ndarray | None = None


def score_kind(config: Config) -> str:
    return config.train.open_set_score or default_score(config.data.classes)


def knn_reference(predictor: Predictor, train: LabelledData, seed: int) -> np.ndarray:
    """The knn score's neighbours: the last hidden layer (unit length) of up to KNN_REFERENCE_ROWS in-class
    training rows that are not train-only (real products, not a synthetic mix), a seeded sample: (K, R, D)."""
    rows = np.flatnonzero(~train.train_only & np.isin(train.labels, named_classes(predictor.classes)))
    if len(rows) > KNN_REFERENCE_ROWS:
        rows = np.sort(np.random.default_rng([seed, 7]).choice(rows, KNN_REFERENCE_ROWS, replace=False))
    names = train.columns.get(NAME)
    _, hidden = predictor.member_logits(predictor.inputs(train.features[rows], names[rows] if names is not None else None), keep_hidden=True)
    return unit_rows(hidden).astype(np.float32)


def held_out(predictor: Predictor, data: LabelledData, reference: np.ndarray | None = None) -> HeldOut:
    """predictor's predictions for `data` (rows it did not train on); reference: its knn rows, when that is the score."""
    logits, hidden = predictor.member_logits(predictor.inputs(data.features, data.columns.get(NAME)), keep_hidden=reference is not None)
    return HeldOut(logits.astype(np.float64), data.labels, hidden, reference)


@dataclass(frozen=True)
class Fitted:
    """What calibration stores in a checkpoint, and what the run's summary says of it."""

    method: str
    temperature: float
    probabilities: np.ndarray  # (n, C) calibrated, of the calibration rows
    labels: np.ndarray
    open_set_scores: np.ndarray
    score: str
    all_scores: dict[str, np.ndarray]  # every open-set score of the rows (cv compares them: suggest.OPEN_SET_SCORES)
    thresholds: dict[str, float | None] | None
    precision: float | None
    sources: tuple[str, ...]
    ece_before: float
    ece_after: float

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "temperature": self.temperature, "rows": int(len(self.labels)),
                               "val_ece_before": self.ece_before, "val_ece_after": self.ece_after, "open_set_score": self.score}
        if self.sources:
            out["sources"] = list(self.sources)
        if self.thresholds is not None:
            out["operating_point"] = {"precision": self.precision, "thresholds": self.thresholds}
        return out


def fit_calibration(parts: list[HeldOut], config: Config, method: str, sources: tuple[str, ...] = ()) -> Fitted:
    """One temperature for all the parts' logits (an ensemble's members share it), then the calibrated
    probabilities, conformal and open-set scores and the suggestion thresholds of those rows."""
    logits = np.concatenate([p.logits for p in parts], axis=1)
    labels = np.concatenate([p.labels for p in parts])
    temperature = fit_temperature(logits, labels)
    kind, classes = score_kind(config), config.data.classes
    probabilities = [softmax(p.logits, temperature) for p in parts]
    kinds = [k for k in OPEN_SET_SCORES if (k != "not_other" or OTHER in classes) and (k != "knn" or parts[0].knn_reference is not None)]
    all_scores = {k: np.concatenate([open_set_scores(k, pr, p.logits, classes, p.hidden, p.knn_reference)
                                     for p, pr in zip(parts, probabilities)]) for k in kinds}
    scores = all_scores[kind]
    calibrated = np.concatenate(probabilities)
    precision = config.train.suggest_precision
    thresholds = suggest_thresholds(calibrated, labels, scores, classes, precision) if precision is not None else None
    return Fitted(method, temperature, calibrated, labels, scores, kind, all_scores, thresholds, precision, sources,
                  expected_calibration_error(softmax(logits), labels), expected_calibration_error(calibrated, labels))


def store(path: Path, fitted: Fitted, reference: np.ndarray | None = None) -> None:
    """Write what was fitted into the checkpoint at path (atomically)."""
    checkpoint = load_checkpoint(path)
    arrays = {**checkpoint.arrays, "conformal_scores": conformal_scores(fitted.probabilities, fitted.labels)}
    arrays.update(zip(CALIBRATION_ARRAYS, (fitted.probabilities.astype(np.float32), fitted.labels.astype(np.int64),
                                           fitted.open_set_scores.astype(np.float32))))
    arrays.update({f"{SCORES_PREFIX}{k}": v.astype(np.float32) for k, v in fitted.all_scores.items()})
    if reference is not None:
        arrays[KNN_REFERENCE] = reference
    meta = {**checkpoint.meta, "temperature": fitted.temperature, "open_set_score": fitted.score,
            "calibration": {"method": fitted.method, "rows": int(len(fitted.labels)), "sources": list(fitted.sources)}}
    if fitted.thresholds is not None:
        meta["operating_point"] = {"precision": fitted.precision, "thresholds": fitted.thresholds}
    save_checkpoint(path, arrays, meta)


def calibrate_on_validation(path: Path, config: Config, train: LabelledData, val: LabelledData) -> dict[str, Any]:
    """train.calibration: temperature — fitted on the validation rows; returns the summary's entry."""
    predictor = predictor_from_checkpoint(load_checkpoint(path))
    reference = knn_reference(predictor, train, config.train.seed) if score_kind(config) == "knn" else None
    fitted = fit_calibration([held_out(predictor, val, reference)], config, "temperature")
    store(path, fitted, reference)
    return fitted.summary()
