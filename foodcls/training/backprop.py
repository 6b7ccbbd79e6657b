"""Backpropagation written out for a stack of k MLPs of one shape: forward, softmax + cross-entropy, and
the gradients, each a batched matrix product over the k models (one run trains as a stack of one).

Autograd spends most of a step on bookkeeping when the layers are this small (4-32-32-4); the explicit
chain rule below does the same arithmetic in a third of the time. tests/test_backprop.py checks every
gradient against torch.autograd.

Layout: one column per product (features × products), as the equations are written (z = W·x + b), the
softmax and the loss then reduce over a short axis that is not the last one, which torch vectorises across
the products (over a last axis of 4 it took 22 µs of a 4-32-32-4 step of 256 products, over the first 4.7).

Each layer is one matrix [W | b] (k, out, in + 1), and every layer's input carries a row of ones under its
values: the bias rides in the matrix product, forward (no separate add) and backward (its gradient is the
last column of the product, not a sum of its own); the optimizer updates three tensors, not six. The
hidden activations go into buffers whose last row is ones, kept between steps (hidden_buffers). With the
measures noted below, the demo's epoch of 32 steps went from 4.2-4.8 to 3.3-3.5 ms (thread CPU time, at
its fastest over 400 epochs; README, Performance).

Shapes: training inputs (k, F + 1, B) with ones in the last row; layers[i] (k, out, in + 1); targets (k, C, B).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from foodcls.training.names import StepBag, TableGradient, bag_vectors, table_gradient

# The torch side of inference/network.py's ACTIVATIONS (same keys, checked by tests/test_layout.py):
# forward; dL/d(pre-activation) from dL/d(output) and the output (grad may be overwritten); the forward in place.
TORCH_ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                   Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                                   Callable[[torch.Tensor], torch.Tensor]]] = {
    # relu'(pre) is 1 where the output is positive, else 0: the output's sign (threshold_backward took 5.3 µs
    # on a 32×256 step, sign and mul_ 3.4; a zero keeps its sign from grad, -0.0 where grad < 0, which no sum sees).
    "relu": (torch.relu, lambda grad, post: grad.mul_(post.sign()), torch.relu_),
    "sigmoid": (torch.sigmoid, lambda grad, post: torch.ops.aten.sigmoid_backward(grad, post), torch.sigmoid_),  # grad * s * (1 - s)
    "tanh": (torch.tanh, lambda grad, post: torch.ops.aten.tanh_backward(grad, post), torch.tanh_),  # grad * (1 - t²)
}


@dataclass(frozen=True)
class Hidden:
    """A hidden layer's outputs for n products, (k, width + 1, n), its last row ones (the next layer's bias
    input), with the two views a step reads made once (a view costs 1.5-2 µs; six a step were 7 % of it)."""

    full: torch.Tensor
    values: torch.Tensor  # full[:, :-1]: where the activations are written
    rows: torch.Tensor  # full transposed, a row per product: the next layer's weight gradient reads it


def hidden_buffers(layers: list[torch.Tensor], n: int) -> list[Hidden]:
    """A buffer per hidden layer for n products and each of the layers' k models, kept between steps by the caller."""
    k = layers[0].shape[0]
    buffers = [torch.ones(k, layer.shape[1] + 1, n, dtype=layer.dtype, device=layer.device) for layer in layers[:-1]]
    return [Hidden(b, b[:, :-1], b.transpose(1, 2)) for b in buffers]


@torch.no_grad()
def logits(layers: list[torch.Tensor], activation: str, x: torch.Tensor, hidden: list[Hidden] | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """The stacked networks' logits (k, C, N); x (F, N), shared by all k, or (k, F, N), without a row of
    ones: the first layer adds its bias (the rows to score are kept without that column: 4 MB more per
    million rows and feature). hidden (hidden_buffers) and out (k, C, N): where to compute, kept between
    calls by an evaluation every epoch, which then reuses its memory rather than taking fresh pages from
    the system (measured: 554 page faults an epoch on the demo set, 0.5-1 ms of its 2 ms evaluation)."""
    act_in_place = TORCH_ACTIVATIONS[activation][2]
    hidden = hidden if hidden is not None else hidden_buffers(layers, x.shape[-1])
    h = x.expand(layers[0].shape[0], *x.shape[-2:])
    for i, layer in enumerate(layers):
        target = hidden[i].values if i < len(hidden) else out
        z = torch.baddbmm(layer[:, :, -1:], layer[:, :, :-1], h, out=target) if i == 0 else torch.bmm(layer, h, out=target)
        if i < len(hidden):
            act_in_place(z)
            h = hidden[i].full
    return z


@torch.no_grad()
def smooth_targets(one_hot: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label smoothing in place of one model's targets (C, B): (1 - e) on the true class plus e / C on every
    class, the targets of F.cross_entropy(label_smoothing=e); all-zero columns (padding, no target) stay zero."""
    has_target = one_hot.sum(dim=0, keepdim=True)
    return one_hot.mul_(1 - smoothing).add_(has_target * (smoothing / one_hot.shape[0]))


@torch.no_grad()
def loss_gradients(
    layers: list[torch.Tensor], activation: str, x_rows: torch.Tensor, one_hot: torch.Tensor,
    row_weight: torch.Tensor | None, rows: torch.Tensor | None = None, weights_t: list[torch.Tensor] | None = None,
    hidden: list[Hidden] | None = None, table: torch.Tensor | None = None, bag: StepBag | None = None,
    bag_runs: torch.Tensor | None = None,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], TableGradient]:
    """Gradients of the (weighted) mean cross-entropy of each model, one per layer (k, out, in + 1): the
    weights' gradient, then the bias's in the last column.

    x_rows (k, B, F + 1): a row per product, ones in the last column (read as its transpose, a column per
    product, by BLAS as it is); one_hot (k, C, B). weights_t: each layer's weights without the bias column,
    transposed (views the caller may keep: saves an op per layer and step). hidden: hidden_buffers for B
    products, overwritten (the gradients returned are fresh tensors).

    row_weight (k, B): a weight per row (class weight × file weight, 0 for padding); the loss is then
    sum(w·l) / sum(w), as F.cross_entropy(weight=...) computes it. Without weights every row counts
    once; rows (k, 1, 1), when given, is the number of real rows per model (the rest is padding and
    one_hot is zero there), else all B rows are real.

    bag and table (k, buckets, dim): the batch's names, worked out by names.step_bags, and the runs' bucket
    vectors (names.py); x_rows then has dim columns before the ones, where the names' vectors are written, and
    the result is (gradients, the sparse gradient of the tables). bag_runs: when the layers are some runs of a
    stack (a ragged epoch's last steps), which ones — the bag and the table are then the whole stack's (the
    other runs' names empty)."""
    act_in_place = TORCH_ACTIVATIONS[activation][2]
    n = x_rows.shape[1]
    if bag is not None:
        vectors = bag_vectors(table, bag)
        if bag_runs is not None:
            vectors = vectors.index_select(0, bag_runs)
        first_name = x_rows.shape[2] - 1 - table.shape[2]  # the name's columns: after the nutrients, before the ones
        x_rows[:, :, first_name:-1] = vectors
    hidden = hidden if hidden is not None else hidden_buffers(layers, n)
    x = x_rows.transpose(1, 2)
    h = x
    for layer, buffer in zip(layers, hidden):
        act_in_place(torch.bmm(layer, h, out=buffer.values))
        h = buffer.full
    z = torch.bmm(layers[-1], h)
    # d(mean cross-entropy)/d(logits) = (softmax - targets), weighted per row by the true class's weight;
    # one_hot may hold smoothed targets (smooth_targets): each real column still sums to 1.
    grad = torch.softmax(z, dim=1).sub_(one_hot)
    if row_weight is not None:
        grad.mul_((row_weight / row_weight.sum(dim=1, keepdim=True)).unsqueeze(1))
    elif rows is not None:
        grad.mul_((one_hot.sum(dim=1, keepdim=True))).div_(rows)  # padding rows (one_hot 0) contribute nothing
    else:
        grad.div_(n)
    transposed = weights_t or [layer[:, :, :-1].transpose(1, 2) for layer in layers]
    inputs_t = [x_rows, *(buffer.rows for buffer in hidden)]  # (k, B, in + 1): each layer's input, a row per product
    grads: list[torch.Tensor] = [torch.empty(0)] * len(layers)
    name_grad = None
    for i in range(len(layers) - 1, -1, -1):
        if i == 0 and bag is not None:  # the loss's gradient with respect to each name vector, then its rows'
            vector_grad = torch.bmm(transposed[0][:, first_name : first_name + table.shape[2]], grad).transpose(1, 2)
            if bag_runs is not None:  # the whole stack's, zeros for the runs not stepping (their names are empty)
                vector_grad = vector_grad.new_zeros(table.shape[0], *vector_grad.shape[1:]).index_copy_(0, bag_runs, vector_grad)
            name_grad = table_gradient(bag, vector_grad, table.shape[1])
        if i == 0 and 5 <= x.shape[1] < 12 <= grad.shape[1]:
            # The same product computed transposed: MKL's sgemm took 13-38 µs for (32 or 64)×256 by 256×(5-10),
            # the demo's first layer, and 6-13 µs for its transpose (both ways measured from 3 to 65 columns).
            grads[i] = torch.bmm(x, grad.transpose(1, 2)).transpose(1, 2)
        else:
            grads[i] = torch.bmm(grad, inputs_t[i])
        if i > 0:
            grad = TORCH_ACTIVATIONS[activation][1](torch.bmm(transposed[i], grad), hidden[i - 1].values)
    return grads if name_grad is None else (grads, name_grad)
