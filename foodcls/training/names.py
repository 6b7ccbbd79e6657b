"""The name feature in a training stack: each run's table of bucket vectors, stacked (k, buckets, dim); a batch's
name vectors, the mean of their n-grams' rows (torch's embedding bag over the k tables laid end to end, each
run's ids offset by its table's place); and the gradient of the loss with respect to the rows a batch used —
sparse: a batch of 32 names touches a few hundred of 32,768 rows, and the optimizer updates only those
(optim.py: lazy updates, as torch's SparseAdam and fastText do).

Ids come from text.ngram_ids, computed once per file in numpy: training and predict read the same ids.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from foodcls.text import NameHashing


def initial_table(hashing: NameHashing, seed: int) -> np.ndarray:
    """A run's starting bucket vectors, uniform in ±1/dim as fastText starts its subwords, from a stream of the
    seed's own (the network's start is not moved by adding a name)."""
    bound = 1.0 / hashing.dim
    return np.random.default_rng([seed, 2]).uniform(-bound, bound, (hashing.buckets, hashing.dim)).astype(np.float32)


def bag_index(ids: torch.Tensor, buckets: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """For ids (k, B, M) of k runs (pad = buckets): the rows of the k tables laid end to end (k·buckets, dim)
    that each id reads (a pad reads row 0 with weight 0), and each id's weight, 1 / the name's n-grams."""
    real = ids != buckets
    counts = real.sum(dim=2, keepdim=True).clamp_(min=1)
    offsets = torch.arange(ids.shape[0], device=ids.device).view(-1, 1, 1) * buckets
    index = torch.where(real, ids.long() + offsets, offsets)
    return index, real.to(dtype) / counts


def name_vectors(table: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(vectors (k, B, dim), index, weights): each name's mean vector in its run's table (an empty name: zeros)."""
    k, buckets, dim = table.shape
    index, weights = bag_index(ids, buckets, table.dtype)
    vectors = functional.embedding_bag(index.view(-1, index.shape[2]), table.view(k * buckets, dim), mode="sum",
                                       per_sample_weights=weights.view(-1, weights.shape[2]))
    return vectors.view(k, ids.shape[1], dim), index, weights


def table_gradient(index: torch.Tensor, weights: torch.Tensor, vector_grad: torch.Tensor, rows_in_tables: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss's gradient with respect to the rows the batch read, from its gradient with respect to the name
    vectors (k, B, dim): (rows into the tables laid end to end, sorted, (rows, dim) values). A row read several
    times sums its contributions, in the batch's order (the same order a run alone or in a stack). Empty slots
    are sent to one row past the tables (rows_in_tables), summed there and left out: no boolean masking, which
    copied every slot's vector twice."""
    slots = torch.where(weights > 0, index, rows_in_tables).view(-1)
    contributions = (vector_grad.unsqueeze(2) * weights.unsqueeze(3)).view(-1, vector_grad.shape[2])
    unique, inverse = torch.unique(slots, return_inverse=True)
    values = torch.zeros(len(unique), vector_grad.shape[2], dtype=vector_grad.dtype, device=vector_grad.device)
    values.index_add_(0, inverse, contributions)
    if len(unique) and int(unique[-1]) == rows_in_tables:  # the empty slots' row: the last, being the largest
        unique, values = unique[:-1], values[:-1]
    return unique, values
