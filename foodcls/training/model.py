"""Build the MLP from the model config. Nothing here knows about training."""

from __future__ import annotations

from torch import nn

from foodcls.config import ModelConfig
from foodcls.training.backprop import TORCH_ACTIVATIONS


class Activation(nn.Module):
    """The activation of backprop.py's table as a module (no parameters, nothing to initialise)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, x):
        return TORCH_ACTIVATIONS[self.name][0](x)

    def extra_repr(self) -> str:
        return self.name


def build_model(config: ModelConfig, n_features: int, n_classes: int) -> nn.Sequential:
    """Linear → activation → … → Linear, returning logits (cross-entropy applies the softmax)."""
    layers: list[nn.Module] = []
    width = n_features
    for hidden in config.hidden:
        layers += [nn.Linear(width, hidden), Activation(config.activation)]
        width = hidden
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def linear_layers(model: nn.Sequential) -> list[nn.Linear]:
    """The model's Linear layers, first to last (the ones whose gradient norms we track)."""
    return [m for m in model if isinstance(m, nn.Linear)]
