"""The network in numpy, from a checkpoint alone (no torch import, so `foodcls predict` answers at once),
and the one table of activations every path uses: this numpy forward and its derivative, the ONNX
operator, and by name the torch modules of training (tests tie the keys to the config's choices).

A checkpoint holds one network or an ensemble of K members of one shape (`model.ensemble`): each layer's
weights are then (K, out, in), and the probabilities are the mean of the members' (calibrated) softmax."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from foodcls.labels import OTHER
from foodcls.preprocessing import Preprocessing
from foodcls.text import NameHashing, ngram_ids, padded_bag_means


PREDICT_BLOCK = 16_384  # rows per block of Predictor.outputs (the same numbers as one block: rows are apart)


@dataclass(frozen=True)
class Activation:
    forward: Callable[[np.ndarray], np.ndarray]
    # d(post)/d(pre) from the values before (pre) and after (post) the activation: whichever is cheaper.
    derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]
    onnx_op: str


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(lambda x: np.maximum(x, 0), lambda pre, post: (pre > 0).astype(pre.dtype), "Relu"),
    "sigmoid": Activation(lambda x: 1 / (1 + np.exp(-x)), lambda pre, post: post * (1 - post), "Sigmoid"),
    "tanh": Activation(np.tanh, lambda pre, post: 1 - post * post, "Tanh"),
}


@dataclass(frozen=True)
class Calibration:
    """What the checkpoint's trust figures were fitted on (validation rows, or out-of-source predictions of
    leave-one-source-out models): their calibrated probabilities, labels and open-set scores. `predict
    --precision` fits the suggestion thresholds anew from these."""

    method: str  # "temperature" (validation rows) or "sources" (out-of-source predictions)
    probabilities: np.ndarray  # (n, classes)
    labels: np.ndarray  # (n,)
    open_set_scores: np.ndarray  # (n,), the checkpoint's open-set score of each row
    sources: tuple[str, ...] = ()
    scores_by_kind: dict[str, np.ndarray] = field(default_factory=dict)  # every open-set score of the rows


@dataclass(frozen=True)
class OperatingPoint:
    """When `suggest` is true: the predicted class is a named one and its open-set score reaches that class's
    threshold (None: never), the lowest that kept precision ≥ `precision` on the calibration rows."""

    precision: float
    thresholds: dict[str, float | None]


@dataclass(frozen=True)
class NameModel:
    """The name feature of a checkpoint: how names become ids, and each member's learnt vector per bucket. The
    first layer's inputs are the scaled nutrients, then the mean vector of the name's n-grams (zeros: no name)."""

    hashing: NameHashing
    tables: np.ndarray = field(repr=False)  # (K, buckets, dim)

    def vectors(self, names: Sequence[object] | None, n: int) -> np.ndarray:
        """(K, n, dim): each member's vector of each name (None: no names, zeros)."""
        if names is None:
            return np.zeros((len(self.tables), n, self.hashing.dim), dtype=np.float32)
        ids = ngram_ids(names, self.hashing)
        means = padded_bag_means(self._side_by_side, ids, self.hashing.pad)
        return means.reshape(len(ids), len(self.tables), self.hashing.dim).transpose(1, 0, 2)

    @cached_property
    def _side_by_side(self) -> np.ndarray:
        """The members' tables side by side, (buckets + 1, K * dim), the pad id's row of zeros last: one gather per
        slot for all K members. Built once per checkpoint, not per call (Predictor.outputs calls in blocks)."""
        members, buckets, dim = self.tables.shape
        side_by_side = self.tables.transpose(1, 0, 2).reshape(buckets, members * dim)
        return np.concatenate([side_by_side, np.zeros((1, members * dim), side_by_side.dtype)])


@dataclass(frozen=True)
class Outputs:
    """What the network says of some products: calibrated probabilities (members averaged), each member's
    logits before the temperature, and (when asked) each member's last hidden layer."""

    probabilities: np.ndarray  # (n, C)
    logits: np.ndarray  # (K, n, C)
    hidden: np.ndarray | None = None  # (K, n, D)


@dataclass(frozen=True)
class Predictor:
    layers: list[tuple[np.ndarray, np.ndarray]]  # per layer (K, out, in) weights and (K, out) biases: K members
    activation: str
    prep: Preprocessing
    classes: tuple[str, ...]
    features: tuple[str, ...]
    config: dict  # the training config stored in the checkpoint
    metrics: dict  # the epoch's metrics at save time
    temperature: float = 1.0  # logits are divided by it before the softmax (calibration; 1: none)
    conformal_scores: np.ndarray | None = None  # sorted 1 - p(true class) of the calibration rows
    min_confidence: float | None = None  # below this top probability the decision is `unsure`
    open_set_score: str = "default"  # which score says "in one of the named classes" (calibration.OPEN_SET_SCORES)
    calibration: Calibration | None = None
    operating_point: OperatingPoint | None = None
    knn_reference: np.ndarray | None = field(default=None, repr=False)  # (K, R, D) unit rows: the knn score's neighbours
    name: NameModel | None = None  # the product's name as an input (data.features holding `name`)

    @property
    def members(self) -> int:
        return self.layers[0][0].shape[0]

    @property
    def has_other(self) -> bool:
        return OTHER in self.classes

    @property
    def ignored_labels(self) -> tuple[str, ...]:
        """The labels its training data skipped (data.ignore_labels): evaluation files skip them too."""
        data = self.config.get("data")
        ignored = data.get("ignore_labels", ()) if isinstance(data, dict) else ()
        return tuple(x for x in ignored if isinstance(x, str)) if isinstance(ignored, list | tuple) else ()

    def inputs(self, features: np.ndarray, names: Sequence[object] | None = None) -> np.ndarray:
        """The network's inputs for raw label values (n, F) (NaN: unknown) and, for a name model, the names:
        (n, F) filled and scaled, or (K, n, F + dim) with each member's name vectors after the nutrients."""
        scaled = self.prep.apply(np.asarray(features, dtype=np.float32))
        if self.name is None:
            return scaled
        vectors = self.name.vectors(names, len(scaled))
        return np.concatenate([np.broadcast_to(scaled, (len(vectors), *scaled.shape)), vectors], axis=2)

    def member_logits(self, inputs: np.ndarray, keep_hidden: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Each member's logits (K, n, C) on the network's inputs (n, F), or (K, n, F') for each member apart,
        and its last hidden layer (K, n, D) when asked. One network is computed as the 2-D product it always
        was (the same numbers)."""
        forward = ACTIVATIONS[self.activation].forward
        last = len(self.layers) - 1
        hidden = None
        if self.members == 1:
            x = inputs if inputs.ndim == 2 else inputs[0]
            for i, (weight, bias) in enumerate(self.layers):
                if i == last and keep_hidden:
                    hidden = x[None]
                x = x @ weight[0].T + bias[0]
                if i < last:
                    x = forward(x)
            return x[None], hidden
        x = inputs[None] if inputs.ndim == 2 else inputs
        for i, (weight, bias) in enumerate(self.layers):
            if i == last and keep_hidden:
                hidden = x
            x = np.matmul(x, weight.transpose(0, 2, 1)) + bias[:, None, :]
            if i < last:
                x = forward(x)
        return x, hidden

    def outputs(self, features: np.ndarray, keep_hidden: bool = False, names: Sequence[object] | None = None) -> Outputs:
        """Probabilities and logits (and hidden layers) for raw label values (n, features), NaN meaning unknown,
        and the products' names (a name model; None: no names). Computed PREDICT_BLOCK rows at a time: each
        block's arrays (ids, bags, K members' layers) stay small enough to be reused from the heap, where a whole
        batch's are fresh pages each call (100,000 named products, three networks: 1.2–1.5 s against 2.2–2.5 s)."""
        if len(features) > PREDICT_BLOCK:
            blocks = [self.outputs(features[i : i + PREDICT_BLOCK], keep_hidden, None if names is None else names[i : i + PREDICT_BLOCK])
                      for i in range(0, len(features), PREDICT_BLOCK)]
            hidden = np.concatenate([b.hidden for b in blocks], axis=1) if keep_hidden else None  # type: ignore[misc]
            return Outputs(np.concatenate([b.probabilities for b in blocks]), np.concatenate([b.logits for b in blocks], axis=1), hidden)
        logits, hidden = self.member_logits(self.inputs(features, names), keep_hidden)
        return Outputs(self.calibrated(logits), logits, hidden)

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """The members' softmax of logits / temperature, averaged: (K, n, C) → (n, C)."""
        x = logits / np.float32(self.temperature) if self.temperature != 1.0 else logits
        x = x - x.max(axis=2, keepdims=True)
        e = np.exp(x)
        p = e / e.sum(axis=2, keepdims=True)
        return p[0] if len(p) == 1 else p.mean(axis=0)

    def probabilities(self, features: np.ndarray, names: Sequence[object] | None = None) -> np.ndarray:
        """Class probabilities (n, classes) for raw label values (n, features), NaN meaning unknown (and names)."""
        return self.outputs(features, names=names).probabilities

    def predict(self, features: np.ndarray, names: Sequence[object] | None = None) -> np.ndarray:
        return self.probabilities(features, names).argmax(axis=1)

    @property
    def fill_values(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.features, self.prep.fill)}
