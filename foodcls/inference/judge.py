"""What predict says of products besides the probabilities, one place for every face (CLI, batch, export
predict, serve, the Python API): the decision (a class, `other`, or `unsure` below the confidence
threshold), `suggest` (the checkpoint's operating point accepts the answer), the open-set score, and on
request the conformal set of classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from foodcls.errors import DataError
from foodcls.inference.calibration import conformal_threshold, decisions, prediction_sets
from foodcls.inference.network import Outputs, Predictor
from foodcls.inference.suggest import open_set_scores, suggest_thresholds, suggestions


@dataclass(frozen=True)
class TrustOptions:
    """The per-call choices: abstain below min_confidence (None: the checkpoint's train.min_confidence), the
    coverage of the conformal sets (None: no sets), the precision of suggestions (None: the checkpoint's
    operating point)."""

    min_confidence: float | None = None
    coverage: float | None = None
    precision: float | None = None


def check_trust_options(predictor: Predictor, options: TrustOptions) -> None:
    """Refuse, in one line, a threshold, coverage or precision that means nothing, or that the checkpoint cannot give."""
    if options.min_confidence is not None and not 0 <= options.min_confidence <= 1:
        raise DataError(f"--min-confidence {options.min_confidence:g}: expected a probability within 0-1")
    if options.coverage is not None:
        if not 0 < options.coverage < 1:
            raise DataError(f"--coverage {options.coverage:g}: expected a share strictly between 0 and 1, e.g. 0.9")
        if predictor.conformal_scores is None:
            raise DataError("--coverage: this checkpoint holds no calibration scores (train it with validation data; "
                            "train.calibration: temperature keeps them)")
    if options.precision is not None:
        if not 0 < options.precision <= 1:
            raise DataError(f"--precision {options.precision:g}: expected a precision within 0-1, e.g. 0.9")
        if predictor.calibration is None:
            raise DataError("--precision: this checkpoint holds no calibration rows to set thresholds on (train it with "
                            "validation data or train.calibration: sources)")


def thresholds_for(predictor: Predictor, precision: float | None) -> dict[str, float | None] | None:
    """The suggestion thresholds: fitted for `precision` on the checkpoint's calibration rows, or its operating
    point's; None when it has none (nothing is suggested)."""
    if precision is not None and predictor.calibration is not None:
        c = predictor.calibration
        return suggest_thresholds(c.probabilities, c.labels, c.open_set_scores, predictor.classes, precision)
    return predictor.operating_point.thresholds if predictor.operating_point is not None else None


@dataclass(frozen=True)
class Judgement:
    """Per product: probabilities, open-set score, decision, whether the answer is suggested, and the
    conformal set (classes most probable first) when a coverage was asked."""

    classes: tuple[str, ...]
    probabilities: np.ndarray  # (n, C)
    open_set: np.ndarray  # (n,)
    decisions: list[str]
    suggest: np.ndarray  # (n,) bool
    sets: list[list[str]] | None
    thresholds: dict[str, float | None] | None  # the suggestion thresholds used; None: no operating point

    def predicted(self) -> list[str]:
        return [self.classes[k] for k in self.probabilities.argmax(axis=1).tolist()]

    def fields(self, i: int) -> dict[str, Any]:
        """Product i's decision, suggest (and set), as the JSON answers give them."""
        out: dict[str, Any] = {"decision": self.decisions[i], "suggest": bool(self.suggest[i])}
        if self.sets is not None:
            out["set"] = self.sets[i]
        return out


def network_outputs(predictor: Predictor, features: np.ndarray, names: Sequence[object] | None = None) -> Outputs:
    """The outputs the checkpoint's open-set score needs (the hidden layers only for knn)."""
    return predictor.outputs(features, keep_hidden=predictor.open_set_score == "knn", names=names)


def scores_of(predictor: Predictor, outputs: Outputs) -> np.ndarray:
    return open_set_scores(predictor.open_set_score, outputs.probabilities, outputs.logits, predictor.classes,
                           outputs.hidden, predictor.knn_reference)


def judge_outputs(predictor: Predictor, outputs: Outputs, options: TrustOptions = TrustOptions()) -> Judgement:
    check_trust_options(predictor, options)
    probabilities = outputs.probabilities
    threshold = predictor.min_confidence if options.min_confidence is None else options.min_confidence
    scores = scores_of(predictor, outputs)
    thresholds = thresholds_for(predictor, options.precision)
    suggested = (suggestions(probabilities, scores, predictor.classes, thresholds) if thresholds is not None
                 else np.zeros(len(probabilities), dtype=bool))
    sets = None
    if options.coverage is not None:
        members = prediction_sets(probabilities, conformal_threshold(predictor.conformal_scores, options.coverage))
        sets = [[predictor.classes[k] for k in row] for row in members]
    return Judgement(predictor.classes, probabilities, scores, decisions(probabilities, predictor.classes, threshold),
                     suggested, sets, thresholds)


def judge(predictor: Predictor, features: np.ndarray, options: TrustOptions = TrustOptions(),
          names: Sequence[object] | None = None) -> Judgement:
    """Everything predict says of these products (raw label values, NaN: unknown; their names, for a name model)."""
    check_trust_options(predictor, options)  # before any work
    return judge_outputs(predictor, network_outputs(predictor, np.asarray(features, dtype=np.float32), names), options)
