"""Position encodings: the neck's sine encoding and the prompt encoder's random-Fourier encoding."""
from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_encoding(
    batch: int, size_hw: tuple[int, int], num_pos_feats: int = 256, temperature: float = 10000.0,
    device: torch.device | None = None, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """DETR-style normalised sine encoding, (batch, num_pos_feats, H, W).

    Half the channels encode y and half x; positions are 1-based and normalised to (0, 2*pi].
    The image path does not need it (the decoder uses the prompt encoder's dense encoding); it is
    part of the neck's output for callers that want the official `vision_pos_enc`.
    """
    h, w = size_hw
    half = num_pos_feats // 2
    eps = 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * 2 * math.pi
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * 2 * math.pi
    dim_t = torch.arange(half, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / half)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, half), interleaved sin/cos
        p = pos[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(h, w, half)
    pos_x = encode(x)[None, :, :].expand(h, w, half)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
    return pos.unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of (x, y) positions in [0, 1] (SAM's prompt/image position encoding)."""

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def _encode(self, coords_01: torch.Tensor) -> torch.Tensor:
        """(..., 2) in [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = (2 * coords_01 - 1) @ self.positional_encoding_gaussian_matrix.to(coords_01.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def dense(self, size_hw: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an H x W grid, (C, H, W)."""
        h, w = size_hw
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def points(self, coords_xy: torch.Tensor, input_size_hw: tuple[int, int]) -> torch.Tensor:
        """Encoding of (B, N, 2) pixel coordinates in the model input frame, (B, N, C)."""
        h, w = input_size_hw
        scale = torch.tensor([1.0 / w, 1.0 / h], dtype=torch.float32, device=coords_xy.device)
        return self._encode(coords_xy.float() * scale)
