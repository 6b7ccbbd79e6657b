"""Second-stage calibration maps tried on a leave-one-source-out cv run, without training anything again.

Each fold's checkpoint carries its calibration rows: the out-of-source predictions of its inner models on the
sources it trained on (`calibration: sources`), with their labels. A map fitted on those rows and applied to
the fold's predictions on the source it never saw is an honest out-of-source test of that map — the same
nesting as the checkpoint's own temperature. Prints, pooled over the folds, the ECE of all products, of the
in-class ones (5-class probabilities, as cv reports it), of the in-class ones over the four named classes
(p_k / (1 - p_other)), accuracy, AUROC of p(other), and the suggestions at --precision; then, with the
checkpoints' own probabilities, the suggestions and the open-set AUROC of each score that needs only the
probabilities (probability, not_other, entropy: suggest.open_set_scores), thresholds fitted on the same rows.

    foodcls cv --config configs/off_suggest.yaml --group-by source      # writes runs/cv-off_suggest-…
    python scripts/calibration_maps.py runs/cv-off_suggest-<stamp> [--precision 0.9]

Needs the baselines extra (scikit-learn, scipy). The softmax, NLL and temperature fit are foodcls's own
(inference/calibration.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from foodcls.inference.calibration import expected_calibration_error, fit_temperature, nll, softmax
from foodcls.inference.predict import load_predictor
from foodcls.inference.suggest import open_set_scores, suggest_thresholds, suggestion_figures, suggestions

Map = Callable[[np.ndarray], np.ndarray]


def tempered(p: np.ndarray, t: float) -> np.ndarray:
    """Probabilities p re-tempered: softmax(log p / t), as the checkpoint's own temperature acts on logits."""
    return softmax(np.log(p + 1e-12), t)


def fitted_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature for probabilities p, fitted as training fits the checkpoint's (calibration.fit_temperature)."""
    return fit_temperature(np.log(p + 1e-12), y)


def identity(p: np.ndarray, y: np.ndarray, other: int) -> Map:
    return lambda q: q


def by_group(groups: Callable[[np.ndarray], list[np.ndarray]]):
    """A temperature per group of rows (groups: masks from the probabilities alone: the map never sees labels)."""
    def fit(p: np.ndarray, y: np.ndarray, other: int) -> Map:
        temperatures = [fitted_temperature(p[m], y[m]) if m.sum() >= 20 else 1.0 for m in groups(p)]

        def apply(q: np.ndarray) -> np.ndarray:
            out = q.copy()
            for m, t in zip(groups(q), temperatures):
                out[m] = tempered(q[m], t)
            return out
        return apply
    return fit


def vector_scaling(p: np.ndarray, y: np.ndarray, other: int) -> Map:
    c, logs = p.shape[1], np.log(p + 1e-12)
    w = minimize(lambda w: nll(softmax(logs * w[:c] + w[c:]), y), np.r_[np.ones(c), np.zeros(c)], method="L-BFGS-B").x
    return lambda q: softmax(np.log(q + 1e-12) * w[:c] + w[c:])


def isotonic_top(p: np.ndarray, y: np.ndarray, other: int) -> Map:
    """The top probability mapped to the accuracy isotonic regression gives it; the rest scaled to fit."""
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p.max(axis=1), (p.argmax(axis=1) == y).astype(float))

    def apply(q: np.ndarray) -> np.ndarray:
        top, k = q.max(axis=1), q.argmax(axis=1)
        new = np.maximum(iso.predict(top), 1.0 / q.shape[1] + 1e-6)
        out = q * ((1 - new) / np.maximum(1 - top, 1e-12))[:, None]
        out[np.arange(len(q)), k] = new
        return out
    return apply


def named_conditional(p: np.ndarray, other: int) -> np.ndarray:
    named = np.delete(p, other, axis=1)
    return named / np.maximum(named.sum(axis=1, keepdims=True), 1e-12)


def two_part(p: np.ndarray, y: np.ndarray, other: int) -> Map:
    """p(other) kept; among the four named classes a temperature of their own, fitted on the in-class rows."""
    in_class = y != other
    named_labels = y[in_class] - (y[in_class] > other)
    t = fitted_temperature(named_conditional(p[in_class], other), named_labels)

    def apply(q: np.ndarray) -> np.ndarray:
        out = q.copy()
        keep = [i for i in range(q.shape[1]) if i != other]
        out[:, keep] = tempered(named_conditional(q, other), t) * (1 - q[:, [other]])
        return out
    return apply


def folds(cv_dir: Path) -> list[dict]:
    predictions = pl.read_csv(cv_dir / "predictions.csv", infer_schema_length=0)
    out = []
    for fold_dir in sorted(cv_dir.glob("fold*-*")):
        number = fold_dir.name.split("-")[0].removeprefix("fold")
        predictor = load_predictor(fold_dir / "checkpoints" / "best.safetensors")
        rows = predictions.filter(pl.col("fold") == number)
        x = np.array([[np.nan if v in ("", "nan") else float(v) for v in rows[f].to_list()] for f in predictor.features], np.float32).T
        names = rows["name"].to_list() if predictor.name is not None else None
        classes = list(predictor.classes)
        out.append({"classes": predictor.classes, "probabilities": predictor.probabilities(x, names),
                    "labels": np.array([classes.index(c) for c in rows["label"].to_list()]),
                    "calibration": (predictor.calibration.probabilities, predictor.calibration.labels)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--precision", type=float, default=0.9)
    args = parser.parse_args()
    data = folds(args.cv_dir)
    classes = data[0]["classes"]
    other = classes.index("other")
    maps = {"none (the checkpoint's)": identity,
            "temperature per predicted class": by_group(lambda p: [p.argmax(axis=1) == k for k in range(p.shape[1])]),
            "temperatures: predicted other / named": by_group(lambda p: [p.argmax(axis=1) == other, p.argmax(axis=1) != other]),
            "vector scaling": vector_scaling, "isotonic top probability": isotonic_top,
            "two-part: a temperature among the named": two_part}
    print(f"{'map':40s} {'ECE':>6s} {'in-class':>8s} {'in 4-cl':>7s} {'acc':>6s} {'AUROC':>6s}  suggestions (precision, share of in-class)")
    for name, fit in maps.items():
        probabilities, labels, suggested = [], [], []
        for fold in data:
            calibration_p, calibration_y = fold["calibration"]
            mapping = fit(calibration_p, calibration_y, other)
            mapped_calibration, mapped = mapping(calibration_p), mapping(fold["probabilities"])
            thresholds = suggest_thresholds(mapped_calibration, calibration_y, mapped_calibration.max(axis=1), classes, args.precision)
            probabilities.append(mapped)
            labels.append(fold["labels"])
            suggested.append(suggestions(mapped, mapped.max(axis=1), classes, thresholds))
        p, y = np.concatenate(probabilities), np.concatenate(labels)
        in_class = y != other
        named_y = y[in_class] - (y[in_class] > other)
        figures = suggestion_figures(p, y, np.concatenate(suggested), classes)
        print(f"{name:40s} {expected_calibration_error(p, y):6.3f} {expected_calibration_error(p[in_class], y[in_class]):8.3f} "
              f"{expected_calibration_error(named_conditional(p[in_class], other), named_y):7.3f} {(p.argmax(axis=1) == y).mean():6.3f} "
              f"{roc_auc_score((y == other).astype(int), p[:, other]):6.3f}  {figures['precision']:.3f}, {figures['recall']:.3f}")
    compare_scores(data, classes, other, args.precision)


def compare_scores(data: list[dict], classes: tuple[str, ...], other: int, precision: float) -> None:
    print(f"\n{'open-set score':16s} {'AUROC':>6s}  suggestions (precision, share of in-class, suggested)")
    for kind in ("probability", "not_other", "entropy"):
        scores, labels, suggested = [], [], []
        for fold in data:
            calibration_p, calibration_y = fold["calibration"]
            def score(p: np.ndarray) -> np.ndarray:
                return open_set_scores(kind, p, np.zeros((1, *p.shape)), classes)
            thresholds = suggest_thresholds(calibration_p, calibration_y, score(calibration_p), classes, precision)
            scores.append(score(fold["probabilities"]))
            labels.append(fold["labels"])
            suggested.append(suggestions(fold["probabilities"], scores[-1], classes, thresholds))
        y = np.concatenate(labels)
        p = np.concatenate([fold["probabilities"] for fold in data])
        figures = suggestion_figures(p, y, np.concatenate(suggested), classes)
        auroc = roc_auc_score((y != other).astype(int), np.concatenate(scores))
        print(f"{kind:16s} {auroc:6.3f}  {figures['precision']:.3f}, {figures['recall']:.3f}, {figures['suggested']}")


if __name__ == "__main__":
    main()
