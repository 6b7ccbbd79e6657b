import pytest
import torch
import torch.nn.functional as F

from foodcls.backprop import loss_gradients
from foodcls.config import ModelConfig
from foodcls.model import build_model, linear_layers


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gradients_match_autograd(activation, weighted):
    torch.manual_seed(1)
    model = build_model(ModelConfig(hidden=(16, 8, 8), activation=activation), 4, 4).double()
    x = torch.rand(50, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (50,))
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64) if weighted else None

    F.cross_entropy(model(x), y, weight=weight).backward()
    layers = linear_layers(model)
    expected = [p.grad for layer in layers for p in (layer.weight, layer.bias)]
    actual = loss_gradients(layers, activation, x, F.one_hot(y, 4).double(), weight[y] if weighted else None)

    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
