"""Memory encoder: a frame's image features fused with its (1024 x 1024) mask into a 64-channel memory.

Parameter names follow `memory_encoder.` in the official checkpoints.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d
from .position import sine_position_encoding


class MaskDownSampler(nn.Module):
    """Stride-2 conv + LayerNorm2d + GELU, repeated until the mask is 1/16 of its size, then a 1x1 conv.

    Channels grow 4x per step (1 -> 4 -> 16 -> 64 -> 256) before the projection to `dim`.
    """

    def __init__(self, dim: int = 256, total_stride: int = 16, kernel_size: int = 3, stride: int = 2, padding: int = 1) -> None:
        super().__init__()
        steps = round(math.log(total_stride, stride))
        layers: list[nn.Module] = []
        channels = 1
        for _ in range(steps):
            out = channels * stride * stride
            layers += [nn.Conv2d(channels, out, kernel_size, stride, padding), LayerNorm2d(out), nn.GELU()]
            channels = out
        layers.append(nn.Conv2d(channels, dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: 7x7 depthwise conv, LayerNorm, pointwise MLP (4x, GELU), layer scale, residual."""

    def __init__(self, dim: int = 256, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    def __init__(self, dim: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    def __init__(self, dim: int = 256, mem_dim: int = 64) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(dim)
        self.pix_feat_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.fuser = Fuser(dim)
        self.out_proj = nn.Conv2d(dim, mem_dim, kernel_size=1)
        self.mem_dim = mem_dim

    def forward(self, pix_feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pix_feat (B, dim, 64, 64) raw image features; mask (B, 1, 1024, 1024) already scaled for the encoder
        (sigmoid or binarised, then scale and bias) -> memory (B, mem_dim, 64, 64)."""
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(mask)
        return self.out_proj(self.fuser(x))

    def position_encoding(self, size_hw: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """The memories' spatial encoding (the same for every frame), (1, mem_dim, H, W)."""
        return sine_position_encoding(1, size_hw, self.mem_dim, device=device)
