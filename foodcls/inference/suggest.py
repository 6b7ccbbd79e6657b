"""Suggestions at a stated precision, in numpy: how much a product looks like one of the named classes (the
open-set score), the per-class thresholds on it that keep the suggestions' precision at a target on the
calibration rows (products in none of the classes included: a suggestion for one of them is an error), and
the figures that check them.

A product is suggested its predicted class when that class is a named one (not `other`) and its open-set
score reaches the class's threshold — Open Food Facts' category model works the same way: per-category
thresholds set for a precision before anything is suggested.
"""

from __future__ import annotations

import math

import numpy as np

from foodcls.labels import OTHER

# The open-set scores (train.open_set_score): higher means more like one of the named classes.
#   probability: the predicted named class's calibrated probability;
#   not_other:   1 − p(other) (a model with an `other` class);
#   max_logit:   the largest named-class logit (before the temperature), averaged over an ensemble's members;
#   energy:      log Σ exp(named-class logits), averaged over the members (Liu et al., 2020);
#   knn:         minus the distance from the product's last hidden layer (unit length) to its k-th nearest
#                in-class training row's (Sun et al., 2022), averaged over the members;
#   entropy:     minus the entropy of the calibrated probabilities, `other` included (Σ p·log p): how
#                concentrated the answer is, not only how high its top (a beverage at 0.6 against a dessert
#                at 0.4 scores above one at 0.6 with the rest spread over four classes, like no class).
OPEN_SET_SCORES = ("probability", "not_other", "max_logit", "energy", "knn", "entropy")
KNN_NEIGHBOURS = 10
KNN_REFERENCE_ROWS = 4096  # in-class training rows kept in the checkpoint for the knn score (seeded sample)
KNN_CHUNK_ROWS = 2048
# Target precisions of eval's precision–recall table of suggestions.
PRECISION_TARGETS = (0.7, 0.8, 0.85, 0.9, 0.95, 0.99)


def default_score(classes: tuple[str, ...]) -> str:
    """The open-set score when the config names none: 1 − p(other) with an `other` class, else the probability."""
    return "not_other" if OTHER in classes else "probability"


def named_classes(classes: tuple[str, ...]) -> np.ndarray:
    return np.array([i for i, c in enumerate(classes) if c != OTHER], dtype=np.int64)


def unit_rows(hidden: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(hidden, axis=-1, keepdims=True)
    return hidden / np.where(norms > 0, norms, 1.0)


def knn_distance(hidden: np.ndarray, reference: np.ndarray, k: int = KNN_NEIGHBOURS) -> np.ndarray:
    """Per member and product, the distance from its unit hidden row to the k-th nearest reference row:
    hidden (K, n, D), reference (K, R, D) of unit rows → (K, n), in chunks of products (memory)."""
    queries = unit_rows(hidden.astype(np.float32))
    k = max(1, min(k, reference.shape[1]))
    out = np.empty(queries.shape[:2], dtype=np.float32)
    for start in range(0, queries.shape[1], KNN_CHUNK_ROWS):
        chunk = queries[:, start : start + KNN_CHUNK_ROWS]
        # |q - r|² = 2 - 2 q·r for unit rows: the k-th largest similarity is the k-th nearest row.
        similarity = np.matmul(chunk, reference.transpose(0, 2, 1))
        kth = np.partition(similarity, similarity.shape[2] - k, axis=2)[:, :, similarity.shape[2] - k]
        out[:, start : start + KNN_CHUNK_ROWS] = np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
    return out


def open_set_scores(kind: str, probabilities: np.ndarray, logits: np.ndarray, classes: tuple[str, ...],
                    hidden: np.ndarray | None = None, knn_reference: np.ndarray | None = None) -> np.ndarray:
    """Each product's open-set score of this kind (OPEN_SET_SCORES) from the network's outputs: probabilities
    (n, C), logits (K, n, C), for knn the last hidden layers (K, n, D) and the reference rows (K, R, D)."""
    named = named_classes(classes)
    if kind == "probability":
        return probabilities[:, named].max(axis=1)
    if kind == "not_other":
        return 1.0 - probabilities[:, classes.index(OTHER)]
    if kind == "max_logit":
        return logits[:, :, named].max(axis=2).mean(axis=0)
    if kind == "energy":
        z = logits[:, :, named].astype(np.float64)
        top = z.max(axis=2, keepdims=True)
        return (top[..., 0] + np.log(np.exp(z - top).sum(axis=2))).mean(axis=0)
    if kind == "entropy":
        p = probabilities.astype(np.float64)
        return (p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)  # 0·log 0 = 0
    if kind == "knn":
        if hidden is None or knn_reference is None:
            raise ValueError("the knn score needs the hidden layers and the reference rows")
        return -knn_distance(hidden, knn_reference).mean(axis=0)
    raise ValueError(f"unknown open-set score {kind!r}")


def suggest_thresholds(probabilities: np.ndarray, labels: np.ndarray, scores: np.ndarray, classes: tuple[str, ...],
                       precision: float) -> dict[str, float | None]:
    """Per named class, the lowest open-set score above which the products predicted that class were that
    class at least `precision` of the time on these rows (every product counts: one of another class, or of
    `other`, is a wrong suggestion); None where no threshold reaches it. Ties are never split."""
    predicted = probabilities.argmax(axis=1)
    thresholds: dict[str, float | None] = {}
    for k in named_classes(classes).tolist():
        rows = np.flatnonzero(predicted == k)
        order = np.argsort(-scores[rows], kind="stable")
        ranked, correct = scores[rows][order], labels[rows][order] == k
        if not len(ranked):
            thresholds[classes[k]] = None
            continue
        precision_at = np.cumsum(correct) / np.arange(1, len(ranked) + 1)
        last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
        reached = np.flatnonzero((precision_at >= precision) & last_of_tie)
        thresholds[classes[k]] = float(ranked[reached[-1]]) if len(reached) else None
    return thresholds


def suggestions(probabilities: np.ndarray, scores: np.ndarray, classes: tuple[str, ...],
                thresholds: dict[str, float | None]) -> np.ndarray:
    """Per product: whether its predicted class is suggested (a named class whose threshold its score reaches)."""
    limit = np.array([math.inf if thresholds.get(c) is None else thresholds[c] for c in classes], dtype=np.float64)
    return scores >= limit[probabilities.argmax(axis=1)]


def suggestion_figures(probabilities: np.ndarray, labels: np.ndarray, suggested: np.ndarray,
                       classes: tuple[str, ...]) -> dict:
    """Precision of the suggestions (wrong class or `other` product: an error) and recall (the share of a
    class's products suggested their class), per named class and overall; `suggested_share`: of every product."""
    predicted = probabilities.argmax(axis=1)
    right = suggested & (predicted == labels)
    in_class = np.isin(labels, named_classes(classes))
    per_class = {}
    for k in named_classes(classes).tolist():
        made, hits, products = int((suggested & (predicted == k)).sum()), int((right & (labels == k)).sum()), int((labels == k).sum())
        per_class[classes[k]] = {"suggested": made, "precision": hits / made if made else None,
                                 "recall": hits / products if products else None, "support": products}
    made = int(suggested.sum())
    return {"suggested": made, "precision": int(right.sum()) / made if made else None,
            "recall": int(right.sum()) / int(in_class.sum()) if in_class.any() else None,
            "suggested_share": made / len(labels) if len(labels) else None, "per_class": per_class}


def precision_recall_table(probabilities: np.ndarray, labels: np.ndarray, scores: np.ndarray, classes: tuple[str, ...],
                           calibration_probabilities: np.ndarray, calibration_labels: np.ndarray,
                           calibration_scores: np.ndarray, targets: tuple[float, ...] = PRECISION_TARGETS) -> list[dict]:
    """For each target precision: the thresholds fitted on the calibration rows (what `predict --precision P`
    would use), and the precision and recall of the suggestions they make on these rows."""
    table = []
    for target in targets:
        thresholds = suggest_thresholds(calibration_probabilities, calibration_labels, calibration_scores, classes, target)
        figures = suggestion_figures(probabilities, labels, suggestions(probabilities, scores, classes, thresholds), classes)
        table.append({"target": target, "precision": figures["precision"], "recall": figures["recall"],
                      "suggested": figures["suggested"]})
    return table
