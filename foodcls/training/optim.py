"""SGD (momentum, weight decay) and Adam for a stack of k models, each with its own learning rate and
hyperparameters, written with torch._foreach_* ops; and the learning-rate schedules, per run.

Why not torch.optim: constructing one imports torch._dynamo (a second on this machine), and it updates one
model's parameters, not k stacked ones. tests/test_optim.py checks both against torch.optim step by step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from foodcls.training.names import TableGradient

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def _per_run(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """A (k, 1, 1) tensor that broadcasts a per-run value over a stacked parameter."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


class StackedOptimizer:
    """Updates stacked parameters in place; `state` holds every tensor a resume needs, per name,
    stacked over runs like the parameters."""

    kind = ""
    per_parameter_state: tuple[str, ...] = ()  # the state names that hold a tensor per parameter (the others: one in all)

    table_state_names: tuple[str, ...] = ()  # the buffers a bucket table keeps (per row, like the table)

    def __init__(self, params: list[torch.Tensor], lrs: list[float], weight_decays: list[float],
                 table: torch.Tensor | None = None) -> None:
        self.params = params
        self.state: dict[str, list[torch.Tensor]] = {}
        self.lrs: list[float] = []
        self.set_lrs(lrs)
        self.weight_decay = _per_run(weight_decays, params[0]) if any(weight_decays) else None
        # The name feature's bucket vectors (k, buckets, dim), updated sparsely (names.py): only the rows a step's
        # gradient names, each with the same rule as a dense parameter, the others left as they are.
        self.table = table
        self.table_state: dict[str, torch.Tensor] = {}
        self._full: tuple | None = None
        self._position: torch.Tensor | None = None  # during a subset: each run's place in it (-1: not in it)

    def set_lrs(self, lrs: list[float]) -> None:
        if self.lrs == list(lrs):
            return  # unchanged (no schedule): a new tensor each epoch cost 40 µs of a 5 ms demo epoch
        self.lrs = list(lrs)
        self._neg_lr = _per_run([-lr for lr in lrs], self.params[0])

    def _decayed(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.weight_decay is None:
            return grads
        return torch._foreach_add(grads, torch._foreach_mul(self.params, [self.weight_decay] * len(self.params)))

    def step(self, grads: list[torch.Tensor], runs: torch.Tensor | None = None,
             table_grad: TableGradient | None = None) -> None:
        """Update every run, or only `runs` (indices into the stack; grads then hold just those runs):
        the others' parameters and state stay exactly as they are. table_grad: the bucket table's rows (into
        the k tables laid end to end), their gradients and their runs."""
        if runs is not None:
            self.begin_subset(runs)
        try:
            self._step(grads)
            if table_grad is not None:
                self._table_step(table_grad)
        finally:
            if runs is not None:
                self.end_subset()

    def _rows(self, table_grad: TableGradient) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the table laid flat, the rows' values, their gradient with weight decay). The rows are distinct:
        each is written back once (index_put_), not added into (index_add_ took half as long again on an
        11-run stack's 23 MB of tables, where every row read is a cache miss)."""
        flat = self.table.view(-1, self.table.shape[2])
        values = torch.index_select(flat, 0, table_grad.rows)
        grad = table_grad.values
        if self.weight_decay is not None:
            grad = (values * self._per_row(self.weight_decay, table_grad.run)).add_(grad)
        return flat, values, grad

    def _per_row(self, per_run: torch.Tensor, run: torch.Tensor | None) -> torch.Tensor:
        """A per-run value (k, 1, 1) as a column for the rows of `run` (one run: the value itself, no gather). During
        a subset, the values are the subset's and the runs the whole stack's."""
        if run is None:
            return per_run.view(1, 1)
        return per_run.view(-1)[run if self._position is None else self._position[run]].unsqueeze(1)

    def _table_step(self, table_grad: TableGradient) -> None:
        raise NotImplementedError

    def begin_subset(self, runs: torch.Tensor) -> list[torch.Tensor]:
        """From now until end_subset, step only `runs`: their parameters and state are copied out once (and
        returned: the parameters to compute gradients with), stepped as a stack of their own, and written back
        by end_subset — a ragged stack's last steps of an epoch, several steps in one go, not a copy a step.
        The name tables stay whole (their gradient names rows of the whole stack's tables, and only the rows it
        names are touched): copying them out and back took a tenth of an 11-run stack's epoch."""
        self._full = (runs, self.params, self.state, self._neg_lr, self._hyper())
        if self.table is not None:  # a row's run → its place among `runs`, for the per-run values (_per_row)
            self._position = torch.full((self.table.shape[0],), -1, dtype=torch.long, device=runs.device)
            self._position.index_copy_(0, runs, torch.arange(len(runs), device=runs.device))
        self.params = [p.index_select(0, runs) for p in self._full[1]]
        self.state = {name: [t.index_select(0, runs) for t in tensors] for name, tensors in self._full[2].items()}
        self._neg_lr = self._full[3].index_select(0, runs)
        self._set_hyper({name: t.index_select(0, runs) if t is not None else None for name, t in self._full[4].items()})
        return self.params

    def end_subset(self) -> None:
        runs, params, state, neg_lr, hyper = self._full
        for target, updated in zip(params, self.params):
            target.index_copy_(0, runs, updated)
        for name, tensors in state.items():
            for target, updated in zip(tensors, self.state[name]):
                target.index_copy_(0, runs, updated)
        self.params, self.state, self._neg_lr = params, state, neg_lr
        self._set_hyper(hyper)
        self._full = self._position = None

    def keep(self, runs: torch.Tensor, params: list[torch.Tensor], table: torch.Tensor | None = None) -> None:
        """Drop the runs not listed (they left the stack); params (and table) are the already-shrunk parameters."""
        self.params = params
        self.table = table
        self.table_state = {name: t.index_select(0, runs) for name, t in self.table_state.items()}
        self.state = {name: [t.index_select(0, runs) for t in tensors] for name, tensors in self.state.items()}
        self._neg_lr = self._neg_lr.index_select(0, runs)
        self.lrs = [self.lrs[i] for i in runs.tolist()]
        self._set_hyper({name: t.index_select(0, runs) if t is not None else None for name, t in self._hyper().items()})

    def _hyper(self) -> dict[str, torch.Tensor | None]:
        return {"weight_decay": self.weight_decay}

    def _set_hyper(self, values: dict[str, torch.Tensor | None]) -> None:
        self.weight_decay = values["weight_decay"]

    def _step(self, grads: list[torch.Tensor]) -> None:
        raise NotImplementedError


class StackedSGD(StackedOptimizer):
    """torch.optim.SGD(lr, momentum, weight_decay), dampening 0, no Nesterov: buf = m·buf + g; p -= lr·buf."""

    kind = "sgd"
    per_parameter_state = ("momentum_buffer",)

    def __init__(self, params, lrs, weight_decays, momenta: list[float], table: torch.Tensor | None = None) -> None:
        super().__init__(params, lrs, weight_decays, table)
        self.momentum = _per_run(momenta, params[0]) if any(momenta) else None
        if self.momentum is not None:
            # The first step sets buf = g (torch's convention), as m·0 + g does.
            self.state["momentum_buffer"] = [torch.zeros_like(p) for p in params]
            if table is not None:
                self.table_state["momentum_buffer"] = torch.zeros_like(table)
                self.table_state_names = ("momentum_buffer",)

    def _table_step(self, table_grad: TableGradient) -> None:
        flat, values, grad = self._rows(table_grad)
        rows = table_grad.rows
        if self.momentum is not None:
            buffer = self.table_state["momentum_buffer"].view(-1, flat.shape[1])
            grad = buffer[rows].mul_(self._per_row(self.momentum, table_grad.run)).add_(grad)
            buffer.index_put_((rows,), grad)
        flat.index_put_((rows,), values.add_(grad * self._per_row(self._neg_lr, table_grad.run)))

    def _hyper(self) -> dict[str, torch.Tensor | None]:
        return {"weight_decay": self.weight_decay, "momentum": self.momentum}

    def _set_hyper(self, values: dict[str, torch.Tensor | None]) -> None:
        self.weight_decay, self.momentum = values["weight_decay"], values["momentum"]

    def _step(self, grads: list[torch.Tensor]) -> None:
        grads = self._decayed(grads)
        if self.momentum is not None:
            buffers = self.state["momentum_buffer"]
            torch._foreach_mul_(buffers, [self.momentum] * len(buffers))
            torch._foreach_add_(buffers, grads)
            grads = buffers
        torch._foreach_addcmul_(self.params, grads, [self._neg_lr] * len(self.params))


class StackedAdam(StackedOptimizer):
    """torch.optim.Adam(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay) with a step count per run."""

    kind = "adam"
    per_parameter_state = ("exp_avg", "exp_avg_sq")

    table_state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lrs, weight_decays, table: torch.Tensor | None = None) -> None:
        super().__init__(params, lrs, weight_decays, table)
        self.state["exp_avg"] = [torch.zeros_like(p) for p in params]
        self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]
        self.state["step"] = [torch.zeros(len(lrs), 1, 1, dtype=torch.float64, device=params[0].device)]
        if table is not None:
            self.table_state = {name: torch.zeros_like(table) for name in self.table_state_names}

    def _table_step(self, table_grad: TableGradient) -> None:
        """Adam on the rows a step used (lazy, as torch's SparseAdam), with the run's step count and bias
        corrections of the dense step (_step, just before)."""
        beta1, beta2 = ADAM_BETAS
        flat, values, grad = self._rows(table_grad)
        rows, width = table_grad.rows, flat.shape[1]
        exp_avg, exp_avg_sq = (self.table_state[n].view(-1, width) for n in ("exp_avg", "exp_avg_sq"))
        m = torch.index_select(exp_avg, 0, rows).lerp_(grad, 1 - beta1)
        v = torch.index_select(exp_avg_sq, 0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg.index_put_((rows,), m)
        exp_avg_sq.index_put_((rows,), v)
        step_size, correction = self._corrections
        flat.index_put_((rows,), values.add_(m.div_(v.sqrt_().div_(self._per_row(correction, table_grad.run)).add_(ADAM_EPS))
                                             .mul_(self._per_row(step_size, table_grad.run))))

    def _step(self, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = ADAM_BETAS
        grads = self._decayed(grads)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        step = self.state["step"][0]
        step.add_(1)
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        # Bias corrections per run (its own step count), in float64 as torch.optim computes them.
        bias_correction1 = 1 - torch.pow(beta1, step)
        bias_correction2_sqrt = torch.sqrt(1 - torch.pow(beta2, step))
        step_size = (self._neg_lr.double() / bias_correction1).to(self.params[0].dtype)
        correction = bias_correction2_sqrt.to(self.params[0].dtype)
        self._corrections = (step_size, correction)  # the table's rows take the same (_table_step)
        denominator = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denominator, [correction] * len(denominator))
        torch._foreach_add_(denominator, ADAM_EPS)
        torch._foreach_addcmul_(self.params, torch._foreach_div(exp_avg, denominator), [step_size] * len(self.params))


def make_optimizer(kind: str, params: list[torch.Tensor], lrs: list[float], weight_decays: list[float],
                   momenta: list[float], table: torch.Tensor | None = None) -> StackedOptimizer:
    if kind == "adam":
        return StackedAdam(params, lrs, weight_decays, table)
    return StackedSGD(params, lrs, weight_decays, momenta, table)


@dataclass
class Schedule:
    """One run's learning rate per epoch: none, step, cosine (over all epochs) or plateau (on a loss).
    `lr` is the rate for the next epoch; the state is plain numbers, saved in the checkpoint metadata."""

    kind: str
    base_lr: float
    epochs: int
    step_size: int
    gamma: float
    lr: float = 0.0
    best: float = math.inf  # plateau: the best loss so far
    bad_epochs: int = 0  # plateau: epochs since it improved

    def __post_init__(self) -> None:
        if self.lr == 0.0:
            self.lr = self.base_lr

    def after_epoch(self, epoch: int, loss: float | None) -> None:
        """Set the rate of epoch + 1, given the finished epoch (1-based) and, for plateau, its monitored loss."""
        if self.kind == "step":
            self.lr = self.base_lr * self.gamma ** (epoch // self.step_size)
        elif self.kind == "cosine":
            self.lr = self.base_lr * (1 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs)) / 2
        elif self.kind == "plateau" and loss is not None:
            # torch's ReduceLROnPlateau defaults: relative threshold 1e-4, no cooldown.
            if loss < self.best * (1 - 1e-4):
                self.best, self.bad_epochs = loss, 0
            else:
                self.bad_epochs += 1
            if self.bad_epochs > self.step_size:
                self.lr *= self.gamma
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": None if math.isinf(self.best) else self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = state["lr"]
        self.best = math.inf if state["best"] is None else state["best"]
        self.bad_epochs = state["bad_epochs"]
