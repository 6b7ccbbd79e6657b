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
from foodcls.training.backprop import Hidden, hidden_buffers, logits, loss_gradients
from foodcls.training.names import TableGradient, bag_vectors, step_bags
from foodcls.training.trainstate import TABLE_STATE
from foodcls.training.epoch import EpochRows, GradientNorms
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
EPOCH_BLOCK_ROWS = 1 << 16  # rows of an epoch gathered at a time (EpochRows)


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


class Stack:
    """k runs of one model shape as stacked tensors: parameters, optimizer, training and evaluation data.
    Each layer is one tensor [W | b] (k, out, in + 1), and a batch's inputs a column of ones (backprop.py)."""

    def __init__(self, members: list[Run], device: torch.device, eval_threads: int = EVAL_THREADS) -> None:
        self.members, self.device, self.eval_threads = members, device, eval_threads
        first = members[0].config
        self.batch_size = first.train.batch_size
        self.activation = first.model.activation
        self.n_classes = len(first.data.classes)
        self.layers = [torch.from_numpy(np.stack([_with_bias(m.weights[i], m.biases[i]) for m in members])).to(device)
                       for i in range(members[0].n_layers)]
        # The name feature: each run's bucket vectors, and the ids of its rows' names (names.py).
        self.hashing = members[0].hashing
        self.table = torch.from_numpy(np.stack([m.name_table for m in members])).to(device) if self.hashing is not None else None
        t = [m.config.train for m in members]
        self.optimizer = make_optimizer(first.train.optimizer, self.layers, [m.schedule.lr for m in members],
                                        [x.weight_decay for x in t], [x.momentum for x in t], self.table)
        for name, tensor in self.optimizer.table_state.items():
            key = TABLE_STATE + name
            tensor.copy_(torch.from_numpy(np.stack([m.optimizer_state[key][0] if key in m.optimizer_state
                                                    else np.zeros(tensor.shape[1:], np.float32) for m in members])))
        if any(m.optimizer_state for m in members):
            for name, tensors in self.optimizer.state.items():
                per_layer = name in self.optimizer.per_parameter_state
                for i, tensor in enumerate(tensors):
                    # A run without this buffer (plain SGD beside a momentum run) starts it at zero, as alone.
                    tensor.copy_(torch.from_numpy(np.stack([
                        np.zeros(tensor.shape[1:], np.float32) if name not in m.optimizer_state
                        else _with_bias(*m.optimizer_state[name][2 * i : 2 * i + 2]) if per_layer
                        else m.optimizer_state[name][i].reshape(tensor.shape[1:]) for m in members]).astype(tensor.numpy().dtype)))
        self._build_data()

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
        n_features = len(members[0].config.nutrients)
        eval_x = np.zeros((len(members), width, n_features), np.float32)
        eval_y = np.zeros((len(members), width), np.int64)
        eval_ids = np.full((len(members), width, self.hashing.max_ngrams), self.hashing.pad, np.int32) if self.hashing else None
        self.eval_ranges: list[list[tuple[int, int, int]]] = []  # per run: (split index, first row, end row)
        for i, (m, splits) in enumerate(zip(members, self.eval_splits)):
            ranges, start = [], 0
            for s, rows in zip(splits, lengths[i]):
                m.inputs(s, out=eval_x[i, start : start + rows])
                eval_y[i, start : start + rows] = m.y[s]
                if eval_ids is not None:
                    eval_ids[i, start : start + rows] = m.name_ids[s]
                ranges.append((SPLIT_NAMES.index(s), start, start + rows))
                start += rows
            self.eval_ranges.append(ranges)
        self.eval_x = torch.from_numpy(eval_x).to(self.device)
        self.eval_y = torch.from_numpy(eval_y).to(self.device)
        self.eval_ids = torch.from_numpy(eval_ids).to(self.device) if eval_ids is not None else None
        # The evaluation chunks' names without their pads, worked out once (they do not change between epochs;
        # on an 11-run stack they took a ninth of each epoch).
        self.eval_bags = (step_bags(self.eval_ids, EVAL_CHUNK_ROWS, self.hashing.buckets, self.layers[0].dtype)
                          if self.eval_ids is not None else [])
        self.ids_train = None
        if self.ragged:  # each run's rows, then one all-zero row that padding indices point at
            x_train = np.zeros((len(members), max(n) + 1, n_features), np.float32)
            y_train = np.zeros((len(members), max(n) + 1), np.int64)
            for i, m in enumerate(members):
                x_train[i, : n[i]], y_train[i, : n[i]] = eval_x[i, : n[i]], m.y["train"]
            self.x_train, self.y_train = torch.from_numpy(x_train).to(self.device), torch.from_numpy(y_train).to(self.device)
            if eval_ids is not None:
                ids_train = np.full((len(members), max(n) + 1, eval_ids.shape[2]), self.hashing.pad, np.int32)
                for i in range(len(members)):
                    ids_train[i, : n[i]] = eval_ids[i, : n[i]]
                self.ids_train = torch.from_numpy(ids_train).to(self.device)
        else:  # the training rows come first in the evaluation rows: a view, not a copy
            self.x_train, self.y_train = self.eval_x[:, : n[0]], self.eval_y[:, : n[0]]
            self.ids_train = self.eval_ids[:, : n[0]] if self.eval_ids is not None else None
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
        # Each layer's outputs for a batch or an evaluation chunk, kept from epoch to epoch (backprop.py says
        # why), by number of products (at most four: a batch, the last batch, a chunk, the last chunk).
        self.workspaces: dict[int, tuple[list[Hidden], torch.Tensor]] = {}

    def _workspace(self, n: int) -> tuple[list[Hidden], torch.Tensor]:
        """hidden_buffers for n products, and a (k, C, n) tensor for the logits."""
        if n not in self.workspaces:
            self.workspaces[n] = (hidden_buffers(self.layers, n),
                                  torch.empty(len(self.members), self.n_classes, n, dtype=self.layers[0].dtype, device=self.device))
        return self.workspaces[n]

    def keep(self, indices: list[int]) -> None:
        """Continue with the listed runs only (the others finished or stopped early)."""
        index = torch.tensor(indices, dtype=torch.long, device=self.device)
        self.members = [self.members[i] for i in indices]
        if not self.members:  # let the data go before the last runs draw their plots
            self.x_train = self.y_train = self.w_train = self.eval_x = self.eval_y = self.workspaces = None
            self.ids_train = self.eval_ids = None
            _return_freed_memory()
            return
        self.layers = [layer.index_select(0, index) for layer in self.layers]
        self.table = self.table.index_select(0, index) if self.table is not None else None
        self.optimizer.keep(index, self.layers, self.table)
        self._build_data()

    def epoch_batches(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Every run's rows for its next epoch in its own order, all at once: inputs, one-hot targets, row
        weights, steps (training takes them a block at a time, EpochRows.block)."""
        epoch = EpochRows(self)
        return (*epoch.block(0, epoch.index.shape[1]), epoch.steps)

    @torch.no_grad()
    def train_epoch(self) -> list[list[float]]:
        """One pass over every run's data; each run's mean gradient norm per layer."""
        epoch = EpochRows(self)
        b, steps = self.batch_size, epoch.steps
        per_run_steps = [m.steps(b) for m in self.members]
        all_active = min(per_run_steps)
        weights_t = [layer[:, :, :-1].transpose(1, 2) for layer in self.layers]  # views: they follow the in-place updates
        norms = GradientNorms(self.layers)
        block_steps = max(1, EPOCH_BLOCK_ROWS // b)
        tail: _Tail | None = None  # the runs still stepping once some have done their epoch
        for first_step in range(0, steps, block_steps):
            block = range(first_step, min(first_step + block_steps, steps))
            xs, one_hot, weights, ids = epoch.block(block.start * b, block.stop * b)
            # Every step's slices at once (one op, not three a step).
            x_batches = xs.split(b, dim=1)
            target_batches = one_hot.split(b, dim=2)
            weight_batches = weights.split(b, dim=1) if weights is not None else [None] * len(block)
            # The block's names, worked out at once (names.step_bags); in a ragged epoch's last steps, the runs done
            # with it have padding rows there, empty names.
            bags = step_bags(ids, b, self.hashing.buckets, xs.dtype) if ids is not None else [None] * len(block)
            for j, step in enumerate(block):
                rows = (self.n_rows - step * b).clamp(0, b).view(-1, 1, 1).to(xs.dtype) if self.ragged else None
                if step < all_active:
                    grads, table_grad = _split(loss_gradients(self.layers, self.activation, x_batches[j], target_batches[j],
                                                              weight_batches[j], rows, weights_t, self._workspace(x_batches[j].shape[1])[0],
                                                              table=self.optimizer.table, bag=bags[j]))
                    norms.add(grads)
                    self.optimizer.step(grads, table_grad=table_grad)
                else:
                    # Runs with fewer rows are done with this epoch: step only the others, their parameters and
                    # optimizer state copied out once for as many steps as the same runs remain (not a copy a step).
                    active = tuple(i for i, n in enumerate(per_run_steps) if n > step)
                    if tail is None or tail.runs != active:
                        if tail is not None:
                            self.optimizer.end_subset()
                        tail = _Tail(active, torch.tensor(active, dtype=torch.long, device=self.device), self.optimizer)
                    pick = tail.pick
                    grads, table_grad = _split(loss_gradients(
                        tail.layers, self.activation, pick(x_batches[j]), pick(target_batches[j]),
                        pick(weight_batches[j]) if weights is not None else None, pick(rows), tail.weights_t,
                        tail.hidden(x_batches[j].shape[1]), table=self.optimizer.table, bag=bags[j], bag_runs=tail.index))
                    norms.add_some(grads, tail.index, len(self.members))
                    self.optimizer.step(grads, table_grad=table_grad)
        if tail is not None:
            self.optimizer.end_subset()
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
                if self.table is not None:  # each run's name vectors after its nutrients
                    x = torch.cat([x, bag_vectors(self.table, self.eval_bags[start // EVAL_CHUNK_ROWS]).transpose(1, 2)], dim=1)
                n = x.shape[2]
                hidden, out = self._workspace(n)
                z = logits(self.layers, self.activation, x, hidden, out)  # (k, C, rows)
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
        weights, biases = zip(*(_split_bias(layer[i].cpu().numpy()) for layer in self.layers))
        optimizer = {}
        for name, tensors in self.optimizer.state.items():
            if plain_sgd and name == "momentum_buffer":
                continue
            state = [t[i].cpu().numpy() for t in tensors]
            # Checkpoints hold a buffer per weight and per bias, the bias's as (1, out), as they always have.
            optimizer[name] = ([part for w, b in map(_split_bias, state) for part in (w, b.reshape(1, -1))]
                               if name in self.optimizer.per_parameter_state else [s.copy() for s in state])
        name_table = None
        if self.table is not None:
            name_table = self.table[i].cpu().numpy().copy()
            for name, tensor in self.optimizer.table_state.items():
                optimizer[TABLE_STATE + name] = [tensor[i].cpu().numpy().copy()]
        return {"weights": list(weights), "biases": list(biases), "optimizer": optimizer, "name_table": name_table}

    def set_lrs(self) -> None:
        self.optimizer.set_lrs([m.schedule.lr for m in self.members])


def _with_bias(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A layer's (or its optimizer buffer's) weights (out, in) and bias (out,) or (1, out) as one (out, in + 1)."""
    return np.concatenate([weight, bias.reshape(-1, 1)], axis=1)


def _split_bias(layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """_with_bias undone: copies of the weights (out, in) and the bias (out,)."""
    return layer[:, :-1].copy(), layer[:, -1].copy()


def group_key(config: Config) -> tuple:
    """Runs with equal keys can share a stack: same network shape (features, classes), optimizer kind, batch
    size and device."""
    return (tuple(config.model.hidden), config.model.activation, tuple(config.data.features),
            tuple(config.model.name.model_dump().values()) if config.uses_name else None, len(config.data.classes),
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


def _split(result) -> tuple[list[torch.Tensor], TableGradient | None]:
    """loss_gradients' result as (gradients, the name table's sparse gradient or None)."""
    return result if isinstance(result, tuple) else (result, None)


class _Tail:
    """The runs of a ragged stack still stepping in an epoch's last steps, as a stack of their own."""

    def __init__(self, runs: tuple[int, ...], index: torch.Tensor, optimizer: Any) -> None:
        self.runs, self.index = runs, index
        self.layers = optimizer.begin_subset(index)
        self.weights_t = [layer[:, :, :-1].transpose(1, 2) for layer in self.layers]
        self.buffers: dict[int, list] = {}

    def hidden(self, n: int) -> list:
        """hidden_buffers for n products (a full batch, or an epoch's last, shorter one)."""
        if n not in self.buffers:
            self.buffers[n] = hidden_buffers(self.layers, n)
        return self.buffers[n]

    def pick(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.index_select(0, self.index)


class Interrupted(Exception):
    """Every run of the stack was saved after Ctrl-C; the caller reports them as interrupted."""


