"""Why the model called a product what it did: integrated gradients, in numpy (no torch import).

For the predicted class c, feature i gets (x_i - b_i) × the average of ∂p_c/∂x_i along the straight path
from the baseline b (the training medians stored in the checkpoint) to the product x. The contributions
add up to p_c(x) - p_c(b) (completeness), up to the error of the Riemann sum over `steps` points.

With the name feature the path also runs the name's vector v from zeros (no name) to v: the name's
contribution is v · the average of ∂p_c/∂v, and since v is the mean of its n-grams' vectors, each n-gram's
share is its own part of v times the same average gradient (the shares add up to the name's contribution).
An ensemble's probability is the mean of its members', and so is each contribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from foodcls.inference.network import ACTIVATIONS, Predictor
from foodcls.text import ngram_ids, ngrams

STEPS = 1024  # ≥ 64 asked; ReLU kinks need this many for the sum to hold within 1e-3
TOP_NGRAMS = 5


@dataclass(frozen=True)
class Explanation:
    target: int  # the class explained (the predicted one)
    contributions: np.ndarray  # (features,), in probability units
    probability: float  # p_target(product)
    baseline_probability: float  # p_target(baseline: the medians and no name)
    name: float | None = None  # the name's contribution as a whole (a name model)
    ngrams: list[tuple[str, float]] = field(default_factory=list)  # the n-grams that weigh most, either way


def probability_gradients(predictor: Predictor, features: np.ndarray, target: int,
                          vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(p_target, ∂p_target/∂features, ∂p_target/∂name vector per member) for raw label values (n, F) and, for a
    name model, each member's name vectors (K, n, dim); backpropagation through the network and its input
    scaling, in float64 so the path integral is accurate."""
    prep = predictor.prep
    x = (features.astype(np.float64) - prep.shift) / prep.scale
    total_p, total_grad = np.zeros(len(x)), np.zeros_like(x)
    vector_grads = [] if vectors is not None else None
    for member in range(predictor.members):
        inputs = x if vectors is None else np.concatenate([x, vectors[member].astype(np.float64)], axis=1)
        p, grad = _member_gradients(predictor, inputs, target, member)
        total_p += p
        total_grad += grad[:, : x.shape[1]]
        if vector_grads is not None:
            vector_grads.append(grad[:, x.shape[1] :] / predictor.members)
    return (total_p / predictor.members, total_grad / predictor.members / prep.scale,
            np.stack(vector_grads) if vector_grads is not None else None)


def _member_gradients(predictor: Predictor, x: np.ndarray, target: int, member: int) -> tuple[np.ndarray, np.ndarray]:
    """One member's p_target and its gradient with respect to its network inputs x."""
    pres, posts = [], [x]
    h = x
    layers = [(w[member].astype(np.float64), b[member].astype(np.float64)) for w, b in predictor.layers]
    activation = predictor.activation
    for i, (weight, bias) in enumerate(layers):
        z = h @ weight.T + bias
        if i < len(layers) - 1:
            h = ACTIVATIONS[activation].forward(z)
            pres.append(z)
            posts.append(h)
        else:
            h = z / predictor.temperature
    z = h - h.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p_target = p[:, target]
    # d p_t / d z_j = p_t (δ_tj - p_j)
    grad = -p_target[:, None] * p
    grad[:, target] += p_target
    grad /= predictor.temperature  # the logits are the last layer's output divided by T
    for i in range(len(layers) - 1, -1, -1):
        grad = grad @ layers[i][0]
        if i > 0:
            grad = grad * ACTIVATIONS[activation].derivative(pres[i - 1], posts[i])
    return p_target, grad


def integrated_gradients(predictor: Predictor, product: np.ndarray, steps: int = STEPS, target: int | None = None,
                         name: object = None) -> Explanation:
    """Contributions of each feature of one product (raw values, NaN where unknown; its name for a name model)
    to its predicted class."""
    baseline = predictor.prep.fill.astype(np.float64)
    product = np.where(np.isnan(product), baseline, product).astype(np.float64)  # unknown: the median, contributing 0
    model = predictor.name
    vector = model.vectors([name], 1)[:, 0].astype(np.float64) if model is not None else None  # (K, dim)
    if target is None:
        target = int(predictor.probabilities(product[None, :], [name] if model is not None else None).argmax())
    alphas = (np.arange(steps) + 0.5) / steps  # midpoint rule
    path = baseline + alphas[:, None] * (product - baseline)
    path_vectors = alphas[None, :, None] * vector[:, None, :] if vector is not None else None
    _, gradients, vector_gradients = probability_gradients(predictor, path, target, path_vectors)
    contributions = (product - baseline) * gradients.mean(axis=0)
    ends_vectors = np.stack([vector, np.zeros_like(vector)], axis=1) if vector is not None else None
    ends, _, _ = probability_gradients(predictor, np.stack([product, baseline]), target, ends_vectors)
    if vector is None:
        return Explanation(target, contributions, float(ends[0]), float(ends[1]))
    mean_gradient = vector_gradients.mean(axis=1)  # (K, dim): each member's, already divided by K
    return Explanation(target, contributions, float(ends[0]), float(ends[1]), float((vector * mean_gradient).sum()),
                       _ngram_shares(predictor, name, mean_gradient))


def _ngram_shares(predictor: Predictor, name: object, mean_gradient: np.ndarray) -> list[tuple[str, float]]:
    """Each distinct n-gram's share of the name's contribution (its part of the mean vector, times the average
    gradient), the TOP_NGRAMS that weigh most either way."""
    model = predictor.name
    ids = ngram_ids([name], model.hashing)[0]
    count = int((ids != model.hashing.pad).sum())
    if not count:
        return []
    shares: dict[str, float] = {}
    for text, bucket in ngrams(name, model.hashing)[:count]:
        share = float((model.tables[:, bucket].astype(np.float64) * mean_gradient).sum()) / count
        shares[text] = shares.get(text, 0.0) + share
    return sorted(shares.items(), key=lambda item: -abs(item[1]))[:TOP_NGRAMS]
