"""PyTorch's bilinear upsampling (align_corners=False) reproduced tap by tap, so values match `F.interpolate`.

`axis_plan` lists, per output index, the two source indices and float32 weights PyTorch's CPU kernel uses,
and groups output indices by low-res cell; `blend` rounds a two-tap blend as that kernel does. Together
they let `upsample.UpsamplePlan` evaluate single output pixels bit-identically to the full upsampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AxisPlan:
    """Source taps and weights along one axis, per output index and per low-res cell."""

    index0: torch.Tensor  # (out,) int64 first source index
    index1: torch.Tensor  # (out,) int64 second source index
    weight0: torch.Tensor  # (out,) float32
    weight1: torch.Tensor  # (out,) float32
    cell_start: torch.Tensor  # (in,) int64 first output index of each cell
    cell_count: torch.Tensor  # (in,) int64 output indices in each cell (0 when downsampling skips it)
    cell_next: torch.Tensor  # (in,) int64 second source index of each cell
    block_index: torch.Tensor  # (in, block) int64 output indices of each cell, clamped
    block_valid: torch.Tensor  # (in, block) bool
    block_weight0: torch.Tensor  # (in, block) float32 weight0 of each block entry; NaN on padding
    block_weight1: torch.Tensor  # (in, block) float32 weight1 of each block entry; NaN on padding


def axis_plan(in_size: int, out_size: int, device: torch.device) -> AxisPlan:
    """PyTorch's `upsample_bilinear2d` (align_corners=False, no scale factor) taps, in float32."""
    out_index = np.arange(out_size)
    if in_size == out_size:  # PyTorch's identity shortcut
        index0 = out_index.astype(np.int64)
        index1 = index0.copy()
        weight1 = np.zeros(out_size, dtype=np.float32)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
        centre = (out_index.astype(np.float32) + np.float32(0.5)).astype(np.float64)
        # PyTorch's compiled kernel fuses this multiply-add (one rounding); float64 is exact here.
        real = (np.float64(scale) * centre - 0.5).astype(np.float32)
        real = np.where(real < 0, np.float32(0), real).astype(np.float32)
        index0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
        weight1 = np.clip(real - index0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
        index1 = index0 + (index0 < in_size - 1)
    weight0 = (np.float32(1) - weight1).astype(np.float32)
    cell_count = np.bincount(index0, minlength=in_size)
    cell_start = np.concatenate([[0], np.cumsum(cell_count)[:-1]])
    cell_next = np.minimum(np.arange(in_size) + 1, in_size - 1) if in_size != out_size else np.arange(in_size)
    block = max(int(cell_count.max()), 1)
    offsets = np.arange(block)
    block_index = np.minimum(cell_start[:, None] + offsets[None, :], out_size - 1)
    block_valid = offsets[None, :] < cell_count[:, None]
    # NaN weights make padding values NaN, which no threshold comparison counts as above.
    block_weight0 = np.where(block_valid, weight0[block_index], np.float32(np.nan)).astype(np.float32)
    block_weight1 = np.where(block_valid, weight1[block_index], np.float32(np.nan)).astype(np.float32)

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    return AxisPlan(
        tensor(index0), tensor(index1), tensor(weight0), tensor(weight1), tensor(cell_start.astype(np.int64)),
        tensor(cell_count.astype(np.int64)), tensor(cell_next.astype(np.int64)), tensor(block_index),
        tensor(block_valid), tensor(block_weight0), tensor(block_weight1),
    )


def blend(first: torch.Tensor, weight0: torch.Tensor, second: torch.Tensor, weight1: torch.Tensor) -> torch.Tensor:
    """first * weight0 + second * weight1 rounded as PyTorch's compiled CPU kernel does it.

    The kernel computes the second product, then fuses the first multiply with the add (one
    rounding); the product of two float32 is exact in float64, which emulates the fused step. This
    keeps values bit-identical to `F.interpolate` on x86 CPUs (blending along x, then along y).
    """
    second_term = (second * weight1).double()
    return (first.double() * weight0.double() + second_term).float()
