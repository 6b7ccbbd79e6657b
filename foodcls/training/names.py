"""The name feature in a training stack: each run's table of bucket vectors, stacked (k, buckets, dim); a batch's
name vectors, the mean of their n-grams' rows (torch's embedding bag over the k tables laid end to end, each
run's ids offset by its table's place); and the gradient of the loss with respect to the rows a batch used —
sparse: a batch of 32 names touches a few hundred of 32,768 rows, and the optimizer updates only those
(optim.py: lazy updates, as torch's SparseAdam and fastText do).

Ids come from text.ngram_ids, computed once per file in numpy: training and predict read the same ids. What a
step needs from them (each n-gram's row and weight and the name it belongs to, the pads left out) is worked out
for a block of steps at once (step_bags): per step, over every slot, pads included, it was a dozen small
operations, and with the sort of the rows a step touched, a third of a named epoch's time. Only that sort is
still per step (sorting a block's keys at once measured twice as slow).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.nn import functional

from foodcls.text import NameHashing


class StepBag(NamedTuple):
    """One step's names without their pads: every n-gram of the step's k·B names, in order (run, row, slot),
    as rows of the k tables laid end to end, each with its weight (1 / its name's n-grams) and its name's
    place; and where each name's n-grams start (an empty name: none, its vector zeros)."""

    rows: torch.Tensor  # (N,) int64
    weights: torch.Tensor  # (N,)
    names: torch.Tensor  # (N,) int64: the name each n-gram belongs to, 0..k·B-1
    starts: torch.Tensor  # (k·B,) int64


class TableGradient(NamedTuple):
    """The loss's gradient with respect to the rows a step read: rows into the tables laid end to end (sorted),
    their gradients (rows, dim), and their runs (None for a stack of one)."""

    rows: torch.Tensor
    values: torch.Tensor
    run: torch.Tensor | None


def initial_table(hashing: NameHashing, seed: int) -> np.ndarray:
    """A run's starting bucket vectors, uniform in ±1/dim as fastText starts its subwords, from a stream of the
    seed's own (the network's start is not moved by adding a name)."""
    bound = 1.0 / hashing.dim
    return np.random.default_rng([seed, 2]).uniform(-bound, bound, (hashing.buckets, hashing.dim)).astype(np.float32)


def step_bags(ids: torch.Tensor, batch: int, buckets: int, dtype: torch.dtype = torch.float32) -> list[StepBag]:
    """The StepBag of each step of `batch` rows in ids (k, rows, M), in order, worked out for them all at once.
    Pads are left out here: most training rows can have no name (nameless files, name dropout), and their pads
    were most of a step's slots, each summed, sorted and updated for nothing."""
    k, n, width = ids.shape
    full = n // batch
    bags = _bags(ids[:, : full * batch].reshape(k, full, batch, width).transpose(0, 1), buckets, dtype) if full else []
    if n > full * batch:  # the epoch's last, shorter step
        bags += _bags(ids[:, full * batch :].unsqueeze(0), buckets, dtype)
    return bags


def _bags(ids: torch.Tensor, buckets: int, dtype: torch.dtype) -> list[StepBag]:
    """step_bags of ids (S steps, k, B, M)."""
    steps, k, b, width = ids.shape
    real = ids != buckets
    counts = real.sum(dim=3)  # (S, k, B): each name's n-grams
    offsets = torch.arange(k, dtype=ids.dtype, device=ids.device).view(1, k, 1, 1) * buckets
    rows = (ids + offsets).masked_select(real).long()  # in step, run, row, slot order (int32 until the pads are out)
    # Each n-gram's name (its place among the block's names), then that name's weight and place in its step:
    # from the names' counts, not two more masks over every slot.
    name_of = torch.repeat_interleave(torch.arange(counts.numel(), device=ids.device), counts.view(-1))
    weights = torch.ones(counts.numel(), dtype=dtype, device=ids.device).div_(counts.view(-1).clamp(min=1))[name_of]
    names = name_of.remainder_(k * b)
    per_name = counts.view(steps, k * b)
    starts = per_name.cumsum(dim=1).sub_(per_name)
    sizes = per_name.sum(dim=1).tolist()
    return [StepBag(*parts) for parts in zip(rows.split(sizes), weights.split(sizes), names.split(sizes), starts.unbind(0))]


def bag_vectors(table: torch.Tensor, bag: StepBag) -> torch.Tensor:
    """Each name's mean vector (k, B, dim) in its run's table (an empty name: zeros), from a step's StepBag."""
    k, buckets, dim = table.shape
    vectors = functional.embedding_bag(bag.rows, table.view(k * buckets, dim), bag.starts, mode="sum", per_sample_weights=bag.weights)
    return vectors.view(k, -1, dim)


def table_gradient(bag: StepBag, vector_grad: torch.Tensor, buckets: int) -> TableGradient:
    """The loss's gradient with respect to the rows the step read, from its gradient with respect to the name
    vectors (k, B, dim). A row read several times sums its contributions, in the batch's order (the same order
    a run alone or in a stack)."""
    contributions = vector_grad.reshape(-1, vector_grad.shape[2]).index_select(0, bag.names).mul_(bag.weights.unsqueeze(1))
    unique, inverse = torch.unique(bag.rows, return_inverse=True)
    values = torch.zeros(len(unique), vector_grad.shape[2], dtype=vector_grad.dtype, device=vector_grad.device)
    values.index_add_(0, inverse, contributions)
    run = torch.div(unique, buckets, rounding_mode="floor") if vector_grad.shape[0] > 1 else None
    return TableGradient(unique, values, run)
