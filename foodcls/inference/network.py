"""The network in numpy, from a checkpoint alone (no torch import, so `foodcls predict` answers at once),
and the one table of activations every path uses: this numpy forward and its derivative, the ONNX
operator, and by name the torch modules of training (tests tie the keys to the config's choices)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from foodcls.labels import OTHER
from foodcls.preprocessing import Preprocessing


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
class Predictor:
    layers: list[tuple[np.ndarray, np.ndarray]]
    activation: str
    prep: Preprocessing
    classes: tuple[str, ...]
    features: tuple[str, ...]
    config: dict  # the training config stored in the checkpoint
    metrics: dict  # the epoch's metrics at save time
    temperature: float = 1.0  # logits are divided by it before the softmax (calibration; 1: none)
    conformal_scores: np.ndarray | None = None  # sorted 1 - p(true class) of the calibration rows
    min_confidence: float | None = None  # below this top probability the decision is `unsure`

    @property
    def has_other(self) -> bool:
        return OTHER in self.classes

    @property
    def ignored_labels(self) -> tuple[str, ...]:
        """The labels its training data skipped (data.ignore_labels): evaluation files skip them too."""
        data = self.config.get("data")
        ignored = data.get("ignore_labels", ()) if isinstance(data, dict) else ()
        return tuple(x for x in ignored if isinstance(x, str)) if isinstance(ignored, list | tuple) else ()

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """The network on preprocessed inputs (filled and scaled)."""
        x = inputs
        forward = ACTIVATIONS[self.activation].forward
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if i < len(self.layers) - 1:
                x = forward(x)
        return x

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (n, classes) for raw label values (n, features); NaN means unknown."""
        x = self.logits(self.prep.apply(np.asarray(features, dtype=np.float32)))
        if self.temperature != 1.0:
            x = x / np.float32(self.temperature)
        x = x - x.max(axis=1, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.probabilities(features).argmax(axis=1)

    @property
    def fill_values(self) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.features, self.prep.fill)}
