"""Why the model called a product what it did: integrated gradients, in numpy (no torch import).

For the predicted class c, feature i gets (x_i - b_i) × the average of ∂p_c/∂x_i along the straight path
from the baseline b (the training medians stored in the checkpoint) to the product x. The contributions
add up to p_c(x) - p_c(b) (completeness), up to the error of the Riemann sum over `steps` points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foodcls.inference.network import ACTIVATIONS, Predictor

STEPS = 1024  # ≥ 64 asked; ReLU kinks need this many for the sum to hold within 1e-3

@dataclass(frozen=True)
class Explanation:
    target: int  # the class explained (the predicted one)
    contributions: np.ndarray  # (features,), in probability units
    probability: float  # p_target(product)
    baseline_probability: float  # p_target(baseline)


def probability_gradients(predictor: Predictor, features: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(p_target, ∂p_target/∂features) for raw label values (n, F), by backpropagation through the network
    and its input scaling, in float64 so the path integral is accurate. An ensemble's probability is the mean
    of its members', and so is its gradient."""
    prep = predictor.prep
    x = (features.astype(np.float64) - prep.shift) / prep.scale
    total_p, total_grad = np.zeros(len(x)), np.zeros_like(x)
    for member in range(predictor.members):
        p, grad = _member_gradients(predictor, x, target, member)
        total_p += p
        total_grad += grad
    return total_p / predictor.members, total_grad / predictor.members / prep.scale


def _member_gradients(predictor: Predictor, x: np.ndarray, target: int, member: int) -> tuple[np.ndarray, np.ndarray]:
    """One member's p_target and its gradient with respect to the scaled inputs x."""
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


def integrated_gradients(predictor: Predictor, product: np.ndarray, steps: int = STEPS, target: int | None = None) -> Explanation:
    """Contributions of each feature of one product (raw values, NaN where unknown) to its predicted class."""
    baseline = predictor.prep.fill.astype(np.float64)
    product = np.where(np.isnan(product), baseline, product).astype(np.float64)  # unknown: the median, contributing 0
    if target is None:
        target = int(predictor.probabilities(product[None, :]).argmax())
    alphas = (np.arange(steps) + 0.5) / steps  # midpoint rule
    path = baseline + alphas[:, None] * (product - baseline)
    _, gradients = probability_gradients(predictor, path, target)
    contributions = (product - baseline) * gradients.mean(axis=0)
    ends, _ = probability_gradients(predictor, np.stack([product, baseline]), target)
    return Explanation(target, contributions, float(ends[0]), float(ends[1]))
