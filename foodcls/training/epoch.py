"""What one epoch of a training stack is made of: each run's rows in its own order (a function of seed and
epoch only: the key to exact resume), gathered a block at a time into inputs, targets and row weights
(EpochRows); and the gradient norms of its steps (GradientNorms)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from foodcls.training.backprop import smooth_targets


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled row order of an epoch depends only on (seed, epoch): the key to exact resume."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def dropout_stream(seed: int, epoch: int) -> np.random.Generator:
    """Where feature dropout's draws come from: like the order, a function of (seed, epoch) alone, a stream
    of its own. An input value (row by row in the epoch's order, then feature by feature) is replaced when
    its draw is below the rate; drawn a block of rows at a time, the values are those of one draw for all."""
    return np.random.default_rng([seed, epoch, 1])


def name_dropout_stream(seed: int, epoch: int) -> np.random.Generator:
    """Name dropout's draws: one per row in the epoch's order, a stream of its own (feature dropout's draws
    stay what they were)."""
    return np.random.default_rng([seed, epoch, 2])


class GradientNorms:
    """Each step's gradient norm per layer (its weights, not its bias) and run, taken a few dozen steps at a
    time: one norm of the stacked gradients per layer instead of three ops a step (the same values, bit for
    bit: the norm of each (step, run) reduces its own block either way)."""

    def __init__(self, layers: list[torch.Tensor]) -> None:
        step_bytes = sum(layer.numel() * layer.element_size() for layer in layers)
        self.batch = max(1, min(64, (4 << 20) // step_bytes))  # steps held at most (≤ 4 MB of gradients)
        self.pending: list[list[torch.Tensor]] = [[] for _ in layers]
        self.chunks: list[torch.Tensor] = []  # (layers, k, steps) each

    def add(self, grads: list[torch.Tensor]) -> None:
        for pending, grad in zip(self.pending, grads):
            pending.append(grad)  # a fresh tensor each step: nothing updates it in place
        if len(self.pending[0]) == self.batch:
            self._flush()

    def add_some(self, grads: list[torch.Tensor], active: torch.Tensor, k: int) -> None:
        """A step of only the `active` runs: the others get 0 (not counted in their mean)."""
        self._flush()
        step_norms = torch.zeros(len(grads), k, device=active.device)
        step_norms.index_copy_(1, active, torch.stack([torch.linalg.vector_norm(g[:, :, :-1], dim=(1, 2)) for g in grads]))
        self.chunks.append(step_norms.unsqueeze(2))

    def _flush(self) -> None:
        if self.pending[0]:
            # The weights without the bias column, copied contiguous: the norm then reduces each (step, run)'s own
            # block, whatever k is (and took 60 µs an epoch on the demo, not 83 µs as a strided view).
            self.chunks.append(torch.stack([torch.linalg.vector_norm(torch.stack(p)[..., :-1].contiguous(), dim=(2, 3))
                                            for p in self.pending]).transpose(1, 2))
            for pending in self.pending:
                pending.clear()

    def per_step(self) -> torch.Tensor:
        """(layers, k, steps), contiguous."""
        self._flush()
        return torch.cat(self.chunks, dim=2)


class EpochRows:
    """One epoch of every run of a stack: each run's rows in its own order, gathered into inputs, one-hot
    targets and row weights a block of rows at a time (a million rows at once were ~56 MB of copies, the
    peak of such a training; the demo set's epoch is one block)."""

    def __init__(self, stack: Any) -> None:
        """stack: the stack.Stack whose epoch this is (not imported here: it imports this module)."""
        self.stack = stack
        members = stack.members
        orders = [epoch_order(m.config.train.seed, m.progress.epoch + 1, m.n_train) for m in members]
        self.steps = max(m.steps(stack.batch_size) for m in members)
        if stack.ragged:
            width = self.steps * stack.batch_size
            pad_index = stack.x_train.shape[1] - 1
            orders = [np.concatenate([o, np.full(width - len(o), pad_index)]) for o in orders]
        self.index = torch.from_numpy(orders[0][None] if len(orders) == 1 else np.stack(orders)).to(stack.device)
        self.dropout = [dropout_stream(m.config.train.seed, m.progress.epoch + 1) if m.config.train.feature_dropout > 0 else None
                        for m in members]
        self.name_dropout = [name_dropout_stream(m.config.train.seed, m.progress.epoch + 1)
                             if stack.ids_train is not None and m.config.train.name_dropout > 0 else None for m in members]

    def block(self, first: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Inputs (k, rows, F + 1: the bias's ones last; with the name feature F + dim + 1, the name's columns
        written step by step), one-hot targets (k, C, rows), row weights (k, rows) and name ids (k, rows, M) of
        the epoch's rows first..end; blocks must be asked for in order (feature dropout draws as it goes)."""
        stack, index = self.stack, self.index[:, first:end]
        # Inputs keep a row per product: a batch's slice transposed is then a column per product that BLAS
        # reads as it is (a slice of columns is strided, and bmm copied it element by element: 57 µs).
        # index_select per run and gather, not x_train[runs, index]: advanced indexing took 140 µs + 53 µs of the
        # demo epoch, these 28 µs + 7 µs.
        # The last column: ones, the bias's input (backprop.py); the data are kept without it (memory).
        nutrients = stack.x_train.shape[2]
        name_width = stack.hashing.dim if stack.hashing is not None else 0
        xs = torch.ones(index.shape[0], index.shape[1], nutrients + name_width + 1, dtype=stack.x_train.dtype, device=stack.device)
        for i in range(len(stack.members)):
            torch.index_select(stack.x_train[i], 0, index[i], out=xs[i, :, :nutrients])
        ids = None
        if stack.ids_train is not None:
            ids = torch.stack([stack.ids_train[i].index_select(0, index[i]) for i in range(len(stack.members))])
        ys = torch.gather(stack.y_train, 1, index)
        # Made in the inputs' dtype directly: F.one_hot's int64 copy was the peak of a million-row run (32 MB).
        one_hot = torch.zeros(ys.shape[0], stack.n_classes, ys.shape[1], dtype=xs.dtype, device=xs.device).scatter_(1, ys.unsqueeze(1), 1.0)
        if stack.ragged:
            one_hot.mul_((index < stack.n_rows.unsqueeze(1)).unsqueeze(1))  # padding rows have no target
        for i, member in enumerate(stack.members):
            t = member.config.train
            real = max(0, min(end, member.n_train) - first)  # the run's rows in this block (the rest is padding)
            if self.dropout[i] is not None and real:
                mask = self.dropout[i].random((real, nutrients)) < t.feature_dropout
                rows = xs[i, :real, :nutrients]
                rows.copy_(torch.where(torch.from_numpy(mask).to(stack.device), torch.from_numpy(member.fill_input).to(stack.device), rows))
            if self.name_dropout[i] is not None and real and ids is not None:
                # A dropped name is an empty bag: every id the pad, which reads nothing and learns nothing.
                dropped = torch.from_numpy(self.name_dropout[i].random(real) < t.name_dropout).to(stack.device)
                ids[i, :real].masked_fill_(dropped.unsqueeze(1), stack.hashing.pad)
            if t.label_smoothing > 0:
                smooth_targets(one_hot[i], t.label_smoothing)
        weights = torch.gather(stack.w_train, 1, index) if stack.w_train is not None else None
        return xs, one_hot, weights, ids
