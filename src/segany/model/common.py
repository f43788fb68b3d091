"""Small layers shared by the trunk, the prompt encoder and the mask decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.model import fused


class MLP(nn.Module):
    """`num_layers` linear layers with an activation between them (not after the last).

    Parameter names (`layers.<i>`) follow the official checkpoints.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The layers on x (..., input_dim); `residual`, added to the output, fuses with the last layer."""
        *hidden, last = self.layers
        activation = fused.activation_name(self.act)
        for layer in hidden:
            x = fused.linear(x, layer, activation) if activation else self.act(layer(x))
        x = fused.linear(x, last, residual=residual)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels  # a constant, also in traced exports (x.shape[1] is traced)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.layer_norm on a channels-last view is one fused kernel instead of five elementwise passes.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)
