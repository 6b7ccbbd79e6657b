import pytest
import torch
import torch.nn.functional as F

from foodcls.training.backprop import logits, loss_gradients, smooth_targets
from foodcls.config import ModelConfig
from foodcls.training.model import build_model, linear_layers


def stacked(models):
    """backprop.py's layers: each model's [W | b] (out, in + 1), stacked."""
    layers = [linear_layers(m) for m in models]
    return [torch.stack([torch.cat([ls[i].weight, ls[i].bias.unsqueeze(1)], dim=1).detach() for ls in layers])
            for i in range(len(layers[0]))]


def with_ones(x):
    """(..., rows, F) → (..., rows, F + 1): the bias's column of ones."""
    return torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)


def columns(t):
    """(k, rows, n) → (k, n, rows): backprop.py's layout, a column per product."""
    return t.transpose(1, 2)


def as_parameters(grads):
    """[W0 | b0, W1 | b1, ...] (k, out, in + 1) → [W0, b0, W1, b1, ...] as torch.nn.Linear holds them."""
    return [part for g in grads for part in (g[:, :, :-1], g[:, :, -1])]


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradients_of_each_stacked_model_match_autograd(activation, weighted):
    torch.manual_seed(1)
    models = [build_model(ModelConfig(hidden=(16, 8, 8), activation=activation), 4, 4).double() for _ in range(3)]
    x = torch.rand(3, 50, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (3, 50))
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64) if weighted else None

    actual = as_parameters(loss_gradients(stacked(models), activation, with_ones(x), columns(F.one_hot(y, 4).double()),
                                          weight[y] if weighted else None))
    for k, model in enumerate(models):
        F.cross_entropy(model(x[k]), y[k], weight=weight).backward()
        expected = [p.grad for layer in linear_layers(model) for p in (layer.weight, layer.bias)]
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got[k].reshape(want.shape), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_gradients_with_smoothed_targets_match_autograd_of_label_smoothed_cross_entropy(weighted):
    torch.manual_seed(4)
    models = [build_model(ModelConfig(hidden=(16, 8)), 4, 4).double() for _ in range(2)]
    x = torch.rand(2, 40, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 40))
    class_weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    targets = columns(F.one_hot(y, 4).double()).contiguous()
    for k in range(2):
        smooth_targets(targets[k], 0.1)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(2, 40, dtype=torch.float64))
    actual = as_parameters(loss_gradients(stacked(models), "relu", with_ones(x), targets, class_weight[y] if weighted else None))
    targets = columns(targets)
    for k, model in enumerate(models):
        if weighted:  # each row's smoothed cross-entropy, weighted by its true class: sum(w·l) / sum(w)
            w = class_weight[y[k]]
            per_row = -(targets[k] * F.log_softmax(model(x[k]), dim=1)).sum(dim=1)
            ((w * per_row).sum() / w.sum()).backward()
        else:  # torch's own label smoothing
            F.cross_entropy(model(x[k]), y[k], label_smoothing=0.1).backward()
        expected = [p.grad for layer in linear_layers(model) for p in (layer.weight, layer.bias)]
        for got, want in zip(actual, expected):
            torch.testing.assert_close(got[k].reshape(want.shape), want, rtol=1e-10, atol=1e-12)


def test_smoothing_leaves_padding_rows_without_a_target():
    one_hot = F.one_hot(torch.tensor([2, 0, 1]), 4).double().t().contiguous()  # (classes, products)
    one_hot[:, 2] = 0  # padding
    smoothed = smooth_targets(one_hot, 0.2)
    assert smoothed[:, 0].tolist() == pytest.approx([0.05, 0.05, 0.85, 0.05]) and smoothed[:, 2].sum() == 0


def test_padding_rows_change_nothing():
    torch.manual_seed(2)
    models = [build_model(ModelConfig(hidden=(8,)), 4, 4).double() for _ in range(2)]
    layers = stacked(models)
    x = with_ones(torch.rand(2, 10, 4, dtype=torch.float64))
    one_hot = F.one_hot(torch.randint(0, 4, (2, 10)), 4).double()
    real = torch.tensor([10, 6], dtype=torch.float64).view(2, 1, 1)
    one_hot[1, 6:] = 0  # the second model has 6 real rows and 4 of padding
    padded = loss_gradients(layers, "relu", x, columns(one_hot), None, real)
    alone = loss_gradients([layer[1:] for layer in layers], "relu", x[1:, :6], columns(one_hot[1:, :6]), None)
    for got, want in zip(padded, alone):
        torch.testing.assert_close(got[1:], want, rtol=1e-12, atol=1e-14)


def test_logits_match_the_torch_model_for_shared_and_per_model_inputs():
    torch.manual_seed(3)
    models = [build_model(ModelConfig(hidden=(8, 8), activation="tanh"), 4, 4) for _ in range(2)]
    layers = stacked(models)
    x = torch.rand(7, 4)
    shared = logits(layers, "tanh", x.t())
    own = logits(layers, "tanh", torch.stack([x.t(), x.t()]))
    for k, model in enumerate(models):
        with torch.no_grad():
            torch.testing.assert_close(shared[k], model(x).t())
            torch.testing.assert_close(own[k], model(x).t())


def test_the_name_tables_gradients_match_autograd_of_an_embedding_bag_before_the_mlp():
    """The name feature: each model's mean of its names' bucket vectors beside the nutrients; the explicit
    gradients of the network and the sparse gradient of the table match autograd's dense ones."""
    from foodcls.training.names import bag_vectors, step_bags

    torch.manual_seed(5)
    k, rows, buckets, dim, m = 2, 30, 50, 3, 6
    models = [build_model(ModelConfig(hidden=(8,)), 4 + dim, 4).double() for _ in range(k)]
    tables = torch.randn(k, buckets, dim, dtype=torch.float64)
    ids = torch.randint(0, buckets, (k, rows, m))
    ids[:, ::3, 4:] = buckets  # some names have fewer n-grams (padded)
    ids[:, 1] = buckets  # and one has none: zeros
    ids[:, 2, :2] = 7  # a bucket used twice in a name
    x, y = torch.rand(k, rows, 4, dtype=torch.float64), torch.randint(0, 4, (k, rows))
    inputs = with_ones(torch.cat([x, torch.zeros(k, rows, dim, dtype=torch.float64)], dim=2))
    bag = step_bags(ids, rows, buckets, torch.float64)[0]
    grads, (table_rows, table_values, table_runs) = loss_gradients(stacked(models), "relu", inputs, columns(F.one_hot(y, 4).double()),
                                                                   None, table=tables.clone(), bag=bag)
    assert torch.equal(bag_vectors(tables, bag)[:, 1], torch.zeros(k, dim, dtype=torch.float64))
    assert torch.equal(table_runs, table_rows // buckets)
    for i, model in enumerate(models):
        table = tables[i].clone().requires_grad_(True)
        padded = torch.cat([table, torch.zeros(1, dim, dtype=torch.float64)])
        real = (ids[i] != buckets).double()
        vectors = (padded[ids[i]] * real.unsqueeze(2)).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        F.cross_entropy(model(torch.cat([x[i], vectors], dim=1)), y[i]).backward()
        expected = [p.grad for layer in linear_layers(model) for p in (layer.weight, layer.bias)]
        for got, want in zip(as_parameters(grads), expected):
            torch.testing.assert_close(got[i].reshape(want.shape), want, rtol=1e-10, atol=1e-12)
        dense = torch.zeros(k * buckets, dim, dtype=torch.float64).index_add_(0, table_rows, table_values)[i * buckets:(i + 1) * buckets]
        torch.testing.assert_close(dense, table.grad, rtol=1e-10, atol=1e-12)
        assert set((table_rows[table_rows // buckets == i] % buckets).tolist()) == set(ids[i][ids[i] != buckets].tolist())


def test_a_blocks_step_bags_are_each_steps_own():
    """A block's steps worked out at once (names.step_bags): each step reads the same vectors as its slice of
    names read alone, with pads, empty names and a shorter last step; its table gradient sums each row's
    contributions as a dense one-hot sum does."""
    from foodcls.training.names import bag_vectors, step_bags, table_gradient

    torch.manual_seed(3)
    k, rows, buckets, dim, m, batch = 3, 23, 40, 4, 5, 6
    tables = torch.randn(k, buckets, dim, dtype=torch.float64)
    ids = torch.randint(0, buckets, (k, rows, m))
    ids[:, ::2, 3:] = buckets
    ids[0, 4] = buckets  # an empty name
    ids[:, 6:12] = buckets  # a step of empty names
    bags = step_bags(ids, batch, buckets, torch.float64)
    assert len(bags) == 4  # 6 + 6 + 6 + 5 rows
    for step, bag in enumerate(bags):
        part = ids[:, step * batch : (step + 1) * batch]
        alone = step_bags(part, part.shape[1], buckets, torch.float64)[0]
        assert all(torch.equal(a, b) for a, b in zip(bag, alone))
        real = (part != buckets).double()
        per_id = real / real.sum(2, keepdim=True).clamp(min=1)  # each id's weight in its name's mean
        padded = torch.cat([tables, torch.zeros(k, 1, dim, dtype=torch.float64)], dim=1)
        means = (torch.stack([padded[i][part[i]] for i in range(k)]) * per_id.unsqueeze(3)).sum(2)
        torch.testing.assert_close(bag_vectors(tables, bag), means, rtol=0, atol=1e-15)
        vector_grad = torch.randn(k, part.shape[1], dim, dtype=torch.float64)
        grad = table_gradient(bag, vector_grad, buckets)
        flat = (part + torch.arange(k).view(-1, 1, 1) * buckets).where(part != buckets, k * buckets)
        dense = torch.zeros(k * buckets + 1, dim, dtype=torch.float64).index_add_(
            0, flat.reshape(-1), (vector_grad.unsqueeze(2) * per_id.unsqueeze(3)).reshape(-1, dim))[:-1]
        assert torch.equal(grad.rows, torch.unique(flat[part != buckets]))
        torch.testing.assert_close(grad.values, dense[grad.rows], rtol=0, atol=1e-12)
        assert torch.equal(grad.run, grad.rows // buckets)
    assert len(bags[1].rows) == 0 and not bag_vectors(tables, bags[1]).any()
