"""Backpropagation written out for a stack of k MLPs of one shape: forward, softmax + cross-entropy, and
the gradients, each a batched matrix product over the k models (one run trains as a stack of one).

Autograd spends most of a step on bookkeeping when the layers are this small (4-32-32-4); the explicit
chain rule below does the same arithmetic in a third of the time. tests/test_backprop.py checks every
gradient against torch.autograd.

Layout: one column per product (features × products), as the equations are written (z = W·x + b).
Measured on a 4-32-32-4 step of 256 products: 76 µs against 110 µs with one row per product, because the
softmax and the loss then reduce over a short axis that is not the last one, which torch vectorises across
the products (torch.softmax over a last axis of 4 took 22 µs of the step, over the first 4.7 µs), and no
weight needs a transposed view on the way forward.

Shapes: inputs x (k, F, B); weights[i] (k, out, in); biases[i] (k, out, 1); targets (k, C, B).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The torch side of inference/network.py's ACTIVATIONS (same keys, checked by tests/test_layout.py):
# forward, and dL/d(pre-activation) from dL/d(output), the pre-activation and the output; then the forward
# in place (evaluation, where nothing needs the pre-activation).
TORCH_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                   Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                                   Callable[[torch.Tensor], torch.Tensor]]] = {
    "relu": (torch.relu, lambda grad, pre, post: torch.ops.aten.threshold_backward(grad, pre, 0), torch.relu_),
    "sigmoid": (torch.sigmoid, lambda grad, pre, post: torch.ops.aten.sigmoid_backward(grad, post), torch.sigmoid_),  # grad * s * (1 - s)
    "tanh": (torch.tanh, lambda grad, pre, post: torch.ops.aten.tanh_backward(grad, post), torch.tanh_),  # grad * (1 - t²)
}


@torch.no_grad()
def logits(weights: list[torch.Tensor], biases: list[torch.Tensor], activation: str, x: torch.Tensor,
           out: list[torch.Tensor] | None = None) -> torch.Tensor:
    """The stacked networks' logits (k, C, N); x may be (F, N), shared by all k, or (k, F, N).
    out: a buffer per layer (k, width, N) to compute into, activations in place: an evaluation every epoch
    then reuses its memory rather than taking fresh pages from the system (measured: 554 page faults an
    epoch on the demo set, 0.5-1 ms of its 2 ms evaluation)."""
    act_in_place = TORCH_ACTIVATIONS[activation][2]
    h = x
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        h = torch.matmul(weight, h, out=out[i] if out is not None else None).add_(bias)
        if i < len(weights) - 1:
            h = act_in_place(h)
    return h


@torch.no_grad()
def smooth_targets(one_hot: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing in place of one model's targets (C, B): (1 - e) on the true class plus e / C on every
    class, the targets of F.cross_entropy(label_smoothing=e); all-zero columns (padding, no target) stay zero."""
    has_target = one_hot.sum(dim=0, keepdim=True)
    return one_hot.mul_(1 - smoothing).add_(has_target * (smoothing / one_hot.shape[0]))


@torch.no_grad()
def loss_gradients(
    weights: list[torch.Tensor], biases: list[torch.Tensor], activation: str, x: torch.Tensor, one_hot: torch.Tensor,
    row_weight: torch.Tensor | None, rows: torch.Tensor | None = None, weights_t: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Gradients of the (weighted) mean cross-entropy of each model, [W0, b0, W1, b1, ...], each (k, ...).
    weights_t: the weights' transposed views, if the caller keeps them (saves an op per layer and step).
    x (k, F, B) and one_hot (k, C, B): a column per product.

    row_weight (k, B): a weight per row (class weight × file weight, 0 for padding); the loss is then
    sum(w·l) / sum(w), as F.cross_entropy(weight=...) computes it. Without weights every row counts
    once; rows (k, 1, 1), when given, is the number of real rows per model (the rest is padding and
    one_hot is zero there), else all B rows are real."""
    act = TORCH_ACTIVATIONS[activation][0]
    inputs, pre_acts = [x], []
    h = x
    for i, (weight, bias) in enumerate(zip(weights, biases)):
        z = torch.baddbmm(bias, weight, h)
        if i < len(weights) - 1:
            pre_acts.append(z)
            h = act(z)
            inputs.append(h)
    # d(mean cross-entropy)/d(logits) = (softmax - targets), weighted per row by the true class's weight;
    # one_hot may hold smoothed targets (smooth_targets): each real column still sums to 1.
    grad = torch.softmax(z, dim=1).sub_(one_hot)
    if row_weight is not None:
        grad.mul_((row_weight / row_weight.sum(dim=1, keepdim=True)).unsqueeze(1))
    elif rows is not None:
        grad.mul_((one_hot.sum(dim=1, keepdim=True))).div_(rows)  # padding rows (one_hot 0) contribute nothing
    else:
        grad.div_(x.shape[2])
    transposed = weights_t or [w.transpose(1, 2) for w in weights]
    grads: list[torch.Tensor] = [torch.empty(0)] * (2 * len(weights))
    for i in range(len(weights) - 1, -1, -1):
        grads[2 * i] = torch.bmm(grad, inputs[i].transpose(1, 2))
        grads[2 * i + 1] = grad.sum(dim=2, keepdim=True)
        if i > 0:
            grad = TORCH_ACTIVATIONS[activation][1](torch.bmm(transposed[i], grad), pre_acts[i - 1], inputs[i])
    return grads
