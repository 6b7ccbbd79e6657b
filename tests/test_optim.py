"""The stacked optimizers and schedules against torch.optim, step by step, one model per slice."""

import math

import pytest
import torch

from foodcls.training.optim import Schedule, StackedAdam, StackedSGD

SETTINGS = [
    {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.0},
    {"lr": 0.02, "momentum": 0.5, "weight_decay": 0.01},
]


def run_torch(make, params, grads_per_step):
    own = [p.clone().requires_grad_(True) for p in params]
    optimizer = make(own)
    for grads in grads_per_step:
        for p, g in zip(own, grads):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in own]


def random_problem(k, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(k, 5, 3, generator=g), torch.randn(k, 1, 5, generator=g)]
    grads = [[torch.randn(k, 5, 3, generator=g), torch.randn(k, 1, 5, generator=g)] for _ in range(steps)]
    return params, grads


def test_sgd_matches_torch_per_run():
    params, grads = random_problem(len(SETTINGS), 6)
    stacked = [p.clone() for p in params]
    optimizer = StackedSGD(stacked, [s["lr"] for s in SETTINGS], [s["weight_decay"] for s in SETTINGS], [s["momentum"] for s in SETTINGS])
    for step in grads:
        optimizer.step([g.clone() for g in step])
    for k, setting in enumerate(SETTINGS):
        expected = run_torch(lambda ps: torch.optim.SGD(ps, **setting), [p[k] for p in params], [[g[k] for g in s] for s in grads])
        for got, want in zip(stacked, expected):
            torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_torch_per_run(weight_decay):
    lrs = [0.01, 0.003]
    params, grads = random_problem(2, 8, seed=1)
    stacked = [p.clone() for p in params]
    optimizer = StackedAdam(stacked, lrs, [weight_decay] * 2)
    for step in grads:
        optimizer.step([g.clone() for g in step])
    for k, lr in enumerate(lrs):
        expected = run_torch(lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay), [p[k] for p in params],
                             [[g[k] for g in s] for s in grads])
        for got, want in zip(stacked, expected):
            torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-7)


def test_stepping_a_subset_leaves_the_other_runs_untouched():
    params, grads = random_problem(3, 3, seed=2)
    stacked = [p.clone() for p in params]
    optimizer = StackedAdam(stacked, [0.01] * 3, [0.0] * 3)
    optimizer.step([g.clone() for g in grads[0]])
    before = [p.clone() for p in stacked]
    runs = torch.tensor([0, 2])
    optimizer.step([g.index_select(0, runs) for g in grads[1]], runs)
    assert all(torch.equal(b[1], p[1]) for b, p in zip(before, stacked))
    assert optimizer.state["step"][0].flatten().tolist() == [2, 1, 2]
    # The stepped runs moved exactly as a full stack would have moved them.
    full = [p.clone() for p in params]
    reference = StackedAdam(full, [0.01] * 3, [0.0] * 3)
    reference.step([g.clone() for g in grads[0]])
    reference.step([g.clone() for g in grads[1]])
    for got, want in zip(stacked, full):
        assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])


def torch_schedule(kind, epochs, losses=None):
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = {
        "step": lambda: torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5),
        "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs),
        "plateau": lambda: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2),
    }[kind]()
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step(losses[epoch]) if kind == "plateau" else scheduler.step()
    return lrs


@pytest.mark.parametrize("kind", ["step", "cosine", "plateau"])
def test_schedules_match_torch(kind):
    epochs = 12
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.8, 0.85, 0.86, 0.9, 0.91, 0.92, 0.93]
    schedule = Schedule(kind, 0.1, epochs, 3 if kind == "step" else 2, 0.5)
    ours = []
    for epoch in range(1, epochs + 1):
        ours.append(schedule.lr)
        schedule.after_epoch(epoch, losses[epoch - 1])
    expected = torch_schedule(kind, epochs, losses)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    state = schedule.state_dict()
    again = Schedule(kind, 0.1, epochs, 3 if kind == "step" else 2, 0.5)
    again.load_state_dict(state)
    assert again.lr == schedule.lr and (again.best == schedule.best or math.isinf(again.best))
