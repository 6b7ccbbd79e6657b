"""k runs of one model shape trained as one stack of tensors, in lockstep: each run keeps its own rows,
order, learning rate, class weights and early stopping, exactly as if trained alone (one run is a stack
of one: the same code path). Per epoch: every run's rows in their own order (a function of seed and epoch
only: the key to exact resume), batches as slices, the explicit backprop of backprop.py, the optimizers
of optim.py; then one forward pass scores train, val and test of every run."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import numpy as np
import torch

from foodcls.config import Config
from foodcls.errors import FoodclsError, ResourceError, first_line
from foodcls.training.backprop import logits, loss_gradients, smooth_targets
from foodcls.training.optim import make_optimizer
from foodcls.training.run import SPLIT_NAMES, Run, finish

# Measured (2-core machine, 4-32-32-4 MLP, batch 256): a training step's ops are too small to gain from a
# second thread (5.8 vs 5.6 ms per epoch, within noise, and slower beside other work); the evaluation pass
# over every split at once is big enough: 2.0 → 1.45 ms per epoch with two. A worker among several
# passes eval_threads=1: a second thread per process oversubscribes the cores, and OpenMP's spinning
# threads then slow every process down.
TORCH_THREADS = 1
EVAL_THREADS = min(2, os.cpu_count() or 1)
# Rows evaluated at once: each layer's outputs for them are kept between epochs (2 MB for a 32-wide layer).
EVAL_CHUNK_ROWS = 1 << 14
EPOCH_BLOCK_ROWS = 1 << 16  # rows of an epoch gathered at a time (_Epoch)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffled row order of an epoch depends only on (seed, epoch): the key to exact resume."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def dropout_stream(seed: int, epoch: int) -> np.random.Generator:
    """Where feature dropout's draws come from: like the order, a function of (seed, epoch) alone, a stream
    of its own. An input value (row by row in the epoch's order, then feature by feature) is replaced when
    its draw is below the rate; drawn a block of rows at a time, the values are those of one draw for all."""
    return np.random.default_rng([seed, epoch, 1])


def _return_freed_memory() -> None:
    """Give the pages freed by the stack's data back to the system before the last runs finish (their plots
    load matplotlib, ~36 MB). glibc keeps freed heap pages, and its threshold for giving arrays their own
    mappings grows to the largest block freed (the data file's bytes), so a million rows' arrays come from
    the heap. Measured on a 1M-row training: peak RSS 418 → 395 MB. Nothing happens where the C library
    has no malloc_trim (macOS, musl)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _GradientNorms:
    """Each step's gradient norm per layer and run, taken a few dozen steps at a time: one norm of the
    stacked gradients per layer instead of three ops a step (the same values, bit for bit: the norm of each
    (step, run) reduces its own contiguous block either way)."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        step_bytes = sum(w.numel() * w.element_size() for w in weights)
        self.batch = max(1, min(64, (4 << 20) // step_bytes))  # steps held at most (≤ 4 MB of gradients)
        self.pending: list[list[torch.Tensor]] = [[] for _ in weights]
        self.chunks: list[torch.Tensor] = []  # (layers, k, steps) each

    def add(self, weight_grads: list[torch.Tensor]) -> None:
        for pending, grad in zip(self.pending, weight_grads):
            pending.append(grad)  # a fresh tensor each step: nothing updates it in place
        if len(self.pending[0]) == self.batch:
            self._flush()

    def add_some(self, weight_grads: list[torch.Tensor], active: torch.Tensor, k: int) -> None:
        """A step of only the `active` runs: the others get 0 (not counted in their mean)."""
        self._flush()
        step_norms = torch.zeros(len(weight_grads), k, device=active.device)
        step_norms.index_copy_(1, active, torch.stack([torch.linalg.vector_norm(g, dim=(1, 2)) for g in weight_grads]))
        self.chunks.append(step_norms.unsqueeze(2))

    def _flush(self) -> None:
        if self.pending[0]:
            self.chunks.append(torch.stack([torch.linalg.vector_norm(torch.stack(p), dim=(2, 3)) for p in self.pending]).transpose(1, 2))
            for pending in self.pending:
                pending.clear()

    def per_step(self) -> torch.Tensor:
        """(layers, k, steps), contiguous."""
        self._flush()
        return torch.cat(self.chunks, dim=2)


class _Epoch:
    """One epoch of every run of a stack: each run's rows in its own order, gathered into inputs, one-hot
    targets and row weights a block of rows at a time (a million rows at once were ~56 MB of copies, the
    peak of such a training; the demo set's epoch is one block)."""

    def __init__(self, stack: Stack) -> None:
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

    def block(self, first: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Inputs (k, rows, F), one-hot targets (k, C, rows) and row weights (k, rows) of the epoch's rows
        first..end; blocks must be asked for in order (feature dropout draws as it goes)."""
        stack, index = self.stack, self.index[:, first:end]
        # Inputs keep a row per product: a batch's slice transposed is then a column per product that BLAS
        # reads as it is (a slice of columns is strided, and bmm copied it element by element: 57 µs).
        # index_select per run and gather, not x_train[runs, index]: advanced indexing took 140 µs + 53 µs of the
        # demo epoch, these 28 µs + 7 µs.
        xs = torch.empty(index.shape[0], index.shape[1], stack.x_train.shape[2], dtype=stack.x_train.dtype, device=stack.device)
        for i in range(len(stack.members)):
            torch.index_select(stack.x_train[i], 0, index[i], out=xs[i])
        ys = torch.gather(stack.y_train, 1, index)
        # Made in the inputs' dtype directly: F.one_hot's int64 copy was the peak of a million-row run (32 MB).
        one_hot = torch.zeros(ys.shape[0], stack.n_classes, ys.shape[1], dtype=xs.dtype, device=xs.device).scatter_(1, ys.unsqueeze(1), 1.0)
        if stack.ragged:
            one_hot.mul_((index < stack.n_rows.unsqueeze(1)).unsqueeze(1))  # padding rows have no target
        for i, member in enumerate(stack.members):
            t = member.config.train
            real = max(0, min(end, member.n_train) - first)  # the run's rows in this block (the rest is padding)
            if self.dropout[i] is not None and real:
                mask = self.dropout[i].random((real, xs.shape[2])) < t.feature_dropout
                rows = xs[i, :real]
                rows.copy_(torch.where(torch.from_numpy(mask).to(stack.device), torch.from_numpy(member.fill_input).to(stack.device), rows))
            if t.label_smoothing > 0:
                smooth_targets(one_hot[i], t.label_smoothing)
        weights = torch.gather(stack.w_train, 1, index) if stack.w_train is not None else None
        return xs, one_hot, weights


class Stack:
    """k runs of one model shape as stacked tensors: parameters, optimizer, training and evaluation data."""

    def __init__(self, members: list[Run], device: torch.device, eval_threads: int = EVAL_THREADS) -> None:
        self.members, self.device, self.eval_threads = members, device, eval_threads
        first = members[0].config
        self.batch_size = first.train.batch_size
        self.activation = first.model.activation
        self.n_classes = len(first.data.classes)
        self.weights = [torch.from_numpy(np.stack([m.weights[i] for m in members])).to(device) for i in range(members[0].n_layers)]
        self.biases = [torch.from_numpy(np.stack([m.biases[i] for m in members])[:, :, None]).to(device) for i in range(members[0].n_layers)]
        t = [m.config.train for m in members]
        self.optimizer = make_optimizer(first.train.optimizer, self.params, [m.schedule.lr for m in members],
                                        [x.weight_decay for x in t], [x.momentum for x in t])
        if any(m.optimizer_state for m in members):
            for name, tensors in self.optimizer.state.items():
                for i, tensor in enumerate(tensors):
                    # A run without this buffer (plain SGD beside a momentum run) starts it at zero, as alone.
                    tensor.copy_(torch.from_numpy(np.stack([
                        m.optimizer_state[name][i].reshape(tensor.shape[1:]) if name in m.optimizer_state
                        else np.zeros(tensor.shape[1:], np.float32) for m in members]).astype(tensor.numpy().dtype)))
        self._build_data()

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def _build_data(self) -> None:
        """Each run's rows as tensors, made once: every array below is written in place, not concatenated and
        padded in copies (at a million rows each copy is 16 MB, and they were the bulk of a training's peak)."""
        members = self.members
        n = [m.n_train for m in members]
        # Runs with the same number of rows step in step: no padding, each batch exactly as a solo run sees it.
        self.ragged = len(set(n)) > 1
        # Evaluation: every split of every run, one after another, in one forward pass; eval_ranges says
        # which rows of a run are which split.
        self.eval_splits = [[s for s in SPLIT_NAMES if s in m.y] for m in members]
        lengths = [[len(m.y[s]) for s in splits] for m, splits in zip(members, self.eval_splits)]
        width = max(sum(row) for row in lengths)
        n_features = len(members[0].config.data.features)
        eval_x = np.zeros((len(members), width, n_features), np.float32)
        eval_y = np.zeros((len(members), width), np.int64)
        self.eval_ranges: list[list[tuple[int, int, int]]] = []  # per run: (split index, first row, end row)
        for i, (m, splits) in enumerate(zip(members, self.eval_splits)):
            ranges, start = [], 0
            for s, rows in zip(splits, lengths[i]):
                m.inputs(s, out=eval_x[i, start : start + rows])
                eval_y[i, start : start + rows] = m.y[s]
                ranges.append((SPLIT_NAMES.index(s), start, start + rows))
                start += rows
            self.eval_ranges.append(ranges)
        self.eval_x = torch.from_numpy(eval_x).to(self.device)
        self.eval_y = torch.from_numpy(eval_y).to(self.device)
        if self.ragged:  # each run's rows, then one all-zero row that padding indices point at
            x_train = np.zeros((len(members), max(n) + 1, n_features), np.float32)
            y_train = np.zeros((len(members), max(n) + 1), np.int64)
            for i, m in enumerate(members):
                x_train[i, : n[i]], y_train[i, : n[i]] = eval_x[i, : n[i]], m.y["train"]
            self.x_train, self.y_train = torch.from_numpy(x_train).to(self.device), torch.from_numpy(y_train).to(self.device)
        else:  # the training rows come first in the evaluation rows: a view, not a copy
            self.x_train, self.y_train = self.eval_x[:, : n[0]], self.eval_y[:, : n[0]]
        self.w_train = None
        if any(m.row_weight is not None for m in members):
            w_train = np.zeros((len(members), max(n) + int(self.ragged)), np.float32)
            for i, m in enumerate(members):
                w_train[i, : n[i]] = m.row_weight if m.row_weight is not None else 1.0
            self.w_train = torch.from_numpy(w_train).to(self.device)
        self.n_rows = torch.tensor(n, device=self.device)
        self.eval_counts = torch.ones(len(members), len(SPLIT_NAMES), device=self.device)
        for i, ranges in enumerate(self.eval_ranges):
            for split, first, end in ranges:
                self.eval_counts[i, split] = max(end - first, 1)
        # Each layer's outputs of an evaluation chunk, kept from epoch to epoch (backprop.logits says why).
        chunk = min(EVAL_CHUNK_ROWS, width)
        self.eval_buffers = [torch.empty(len(members) * w.shape[1] * chunk, dtype=self.eval_x.dtype, device=self.device)
                             for w in self.weights]

    def keep(self, indices: list[int]) -> None:
        """Continue with the listed runs only (the others finished or stopped early)."""
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in indices]
        if not self.members:  # let the data go before the last runs draw their plots
            self.x_train = self.y_train = self.w_train = self.eval_x = self.eval_y = self.eval_buffers = None
            _return_freed_memory()
            return
        self.weights = [w.index_select(0, index) for w in self.weights]
        self.biases = [b.index_select(0, index) for b in self.biases]
        self.optimizer.keep(index, self.params)
        self._build_data()

    def epoch_batches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Every run's rows for its next epoch in its own order, all at once: inputs, one-hot targets, row
        weights, steps (training takes them a block at a time, _Epoch.block)."""
        epoch = _Epoch(self)
        return (*epoch.block(0, epoch.index.shape[1]), epoch.steps)

    @torch.no_grad()
    def train_epoch(self) -> list[list[float]]:
        """One pass over every run's data; each run's mean gradient norm per layer."""
        epoch = _Epoch(self)
        b, steps = self.batch_size, epoch.steps
        per_run_steps = [m.steps(b) for m in self.members]
        all_active = min(per_run_steps)
        weights_t = [w.transpose(1, 2) for w in self.weights]  # views: they follow the in-place updates
        norms = _GradientNorms(self.weights)
        block_steps = max(1, EPOCH_BLOCK_ROWS // b)
        for first_step in range(0, steps, block_steps):
            block = range(first_step, min(first_step + block_steps, steps))
            xs, one_hot, weights = epoch.block(block.start * b, block.stop * b)
            # Every step's slices at once (one op, not three a step); inputs transposed to a column per product.
            x_batches = [x.transpose(1, 2) for x in xs.split(b, dim=1)]
            target_batches = one_hot.split(b, dim=2)
            weight_batches = weights.split(b, dim=1) if weights is not None else [None] * len(block)
            for j, step in enumerate(block):
                rows = (self.n_rows - step * b).clamp(0, b).view(-1, 1, 1).to(xs.dtype) if self.ragged else None
                if step < all_active:
                    grads = loss_gradients(self.weights, self.biases, self.activation, x_batches[j], target_batches[j],
                                           weight_batches[j], rows, weights_t)
                    norms.add(grads[0::2])
                    self.optimizer.step(grads)
                else:
                    # Runs with fewer rows are done with this epoch: step only the others.
                    active = torch.tensor([i for i, n in enumerate(per_run_steps) if n > step], dtype=torch.long, device=self.device)
                    pick = lambda t: t.index_select(0, active)  # noqa: E731
                    grads = loss_gradients([pick(w) for w in self.weights], [pick(x) for x in self.biases], self.activation,
                                           pick(x_batches[j]), pick(target_batches[j]),
                                           pick(weight_batches[j]) if weights is not None else None, pick(rows))
                    norms.add_some(grads[0::2], active, len(self.members))
                    self.optimizer.step(grads, active)
        counts = torch.tensor(per_run_steps, dtype=torch.float32, device=self.device)
        # Summed over a contiguous last axis of steps: each run's sum then takes the same order however many
        # runs share the stack (summing over the first axis vectorises across runs, and a solo run's last bit
        # came out different).
        return (norms.per_step().sum(dim=-1) / counts).t().tolist()

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Loss and accuracy of every run on each of its splits, from one forward pass and one host sync."""
        torch.set_num_threads(self.eval_threads)
        try:
            sums = torch.zeros(len(self.members), 2, len(SPLIT_NAMES), device=self.device)
            # In chunks of rows: the hidden activations of a million rows at once would take ~128 MB a layer.
            for start in range(0, self.eval_x.shape[1], EVAL_CHUNK_ROWS):
                rows = slice(start, start + EVAL_CHUNK_ROWS)
                x = self.eval_x[:, rows].transpose(1, 2)
                k, n = len(self.members), x.shape[2]
                out = [buffer[: k * w.shape[1] * n].view(k, w.shape[1], n) for buffer, w in zip(self.eval_buffers, self.weights)]
                z = logits(self.weights, self.biases, self.activation, x, out)  # (k, C, rows)
                y = self.eval_y[:, rows]
                nll = torch.logsumexp(z, dim=1).sub_(z.gather(1, y.unsqueeze(1)).squeeze(1))
                # max(dim).indices, not argmax: the same first maximal index, but argmax over a first axis of 4
                # took 0.9 ms on 10,000 products, max 0.05 ms.
                correct = (z.max(dim=1).indices == y).to(z.dtype)
                scores = torch.stack([nll, correct], dim=1)  # (k, 2, rows)
                for i, ranges in enumerate(self.eval_ranges):  # each run's splits are runs of rows: summed as slices
                    for split, first, end in ranges:
                        if first < start + n and end > start:
                            sums[i, :, split] += scores[i, :, max(first - start, 0) : end - start].sum(dim=1)
        finally:
            torch.set_num_threads(TORCH_THREADS)
        means = (sums / self.eval_counts.unsqueeze(1)).tolist()
        out = []
        for splits, (losses, accuracies) in zip(self.eval_splits, means):
            record = {}
            for s in splits:
                i = SPLIT_NAMES.index(s)
                record[f"{s}_loss"], record[f"{s}_accuracy"] = losses[i], accuracies[i]
            out.append(record)
        return out

    def state_of(self, i: int) -> dict[str, Any]:
        """Run i's weights and optimizer buffers as numpy copies (for its checkpoints): only the buffers its
        own optimizer has, so its files are those it would have written trained alone."""
        plain_sgd = self.optimizer.kind == "sgd" and self.members[i].config.train.momentum == 0
        # A bias's buffers are saved (1, out), as checkpoints have always held them (here they are (out, 1)).
        on_disk = lambda j, t: t[i].reshape(1, -1) if j % 2 else t[i]  # noqa: E731  (params alternate W, b)
        return {
            "weights": [w[i].cpu().numpy().copy() for w in self.weights],
            "biases": [b[i, :, 0].cpu().numpy().copy() for b in self.biases],
            "optimizer": {name: [on_disk(j, t).cpu().numpy().copy() for j, t in enumerate(tensors)]
                          for name, tensors in self.optimizer.state.items() if not (plain_sgd and name == "momentum_buffer")},
        }

    def set_lrs(self) -> None:
        self.optimizer.set_lrs([m.schedule.lr for m in self.members])


def group_key(config: Config) -> tuple:
    """Runs with equal keys can share a stack: same network shape (features, classes), optimizer kind, batch
    size and device."""
    return (tuple(config.model.hidden), config.model.activation, tuple(config.data.features), len(config.data.classes),
            config.train.optimizer, config.train.batch_size, config.train.device)


def fit_stack(members: list[Run], device: torch.device, eval_threads: int = EVAL_THREADS) -> None:
    """Train a stack of runs to their ends; each run writes its own files as it goes and when it stops."""
    stack = Stack(members, device, eval_threads)
    optimizer_kind = stack.optimizer.kind
    leaving: list[Run] = []  # runs out of the stack whose files are being finished
    try:
        while stack.members:
            started = time.perf_counter()
            epochs = [m.progress.epoch + 1 for m in stack.members]
            grad_norms = stack.train_epoch()
            scores = stack.evaluate()
            seconds = round(time.perf_counter() - started, 6)
            now = time.monotonic()
            stopping = []
            for i, member in enumerate(stack.members):
                record = {"epoch": epochs[i], **scores[i], "lr": member.schedule.lr, "grad_norms": grad_norms[i], "seconds": seconds}
                state = stack.state_of(i)
                if member.record_epoch(record, state):
                    stopping.append(i)
                elif member.checkpoint_due(now):
                    member.write_checkpoints(optimizer_kind)
            stack.set_lrs()
            if stopping:
                leaving = [stack.members[i] for i in stopping]
                for member in leaving:
                    member.write_checkpoints(optimizer_kind)
                # The stack shrinks first: when the last runs leave, its data go before their plots are drawn.
                stack.keep([i for i in range(len(stack.members)) if i not in stopping])
                for member in leaving:
                    finish(member)
                leaving = []
    except KeyboardInterrupt:
        # The live weights may be halfway through an epoch: each run saves the state kept at its last epoch's end.
        failure = None
        for member in [*stack.members, *leaving]:
            if member.done:
                continue  # it had just finished when the interrupt came
            member.status, member.stop_reason = "interrupted", "interrupted"
            try:
                member.write_checkpoints(optimizer_kind)
                finish(member)
            except FoodclsError as error:  # e.g. the disk filled up while saving
                member.fail(str(error))
                failure = error
        if failure is not None:
            raise failure from None
        raise Interrupted() from None
    except BaseException as error:
        if isinstance(error, RuntimeError) and "alloc" in str(error).lower():
            error = ResourceError(f"out of memory while training ({error.__class__.__name__}: {first_line(error)[:120]}); "
                                  "use a smaller model.hidden or fewer runs at once")
        reason = str(error) if isinstance(error, FoodclsError) else f"{type(error).__name__}: {error}"
        for member in [*stack.members, *leaving]:
            if not member.done:
                member.fail(reason)
        if isinstance(error, ResourceError):
            raise error from None
        raise


class Interrupted(Exception):
    """Every run of the stack was saved after Ctrl-C; the caller reports them as interrupted."""


