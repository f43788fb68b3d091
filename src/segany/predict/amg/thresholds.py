"""Threshold tests on mask logits, the primitives of `upsample`'s exact statistics.

`threshold_stats` counts and boxes the pixels of upsampled maps above thresholds (the dense route);
`reaching` finds the rows and columns of low-res maps that reach above a floor (each mask's cell window);
`margins` and `cell_levels` tell, from the min and max of a cell's sources, whether every bilinear blend of
them is surely above a threshold, surely at or below it, or straddles it.
"""
from __future__ import annotations

import numpy as np
import torch

ROW_BLOCK = 8  # rows per block when finding each mask's window (`reaching`)


def threshold_stats(values: torch.Tensor, thresholds: list[float], box_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of (n, h, w) `values` > each threshold, (n, T) int64, and the inclusive XYXY box of
    those > thresholds[box_k], (n, 4) int64, zeros where none. NaN entries never count.

    On CPU numpy compares and counts one mask at a time: its bool maps stay in cache, and numpy's
    bool kernels are several times faster than torch's on them (torch sums bools through int64).
    """
    n, h, w = values.shape
    if values.device.type == "cpu":
        counts = np.zeros((n, len(thresholds)), dtype=np.int64)
        row_has, col_has = np.zeros((n, h), dtype=bool), np.zeros((n, w), dtype=bool)
        for i, plane in enumerate(values.numpy()):
            for k, t in enumerate(thresholds):
                above = plane > np.float32(t)  # float32, as torch compares with a Python float
                counts[i, k] = np.count_nonzero(above)
                if k == box_k:  # OR over rows (axis 0) runs along contiguous memory, unlike `any` per row
                    row_has[i], col_has[i] = above.any(axis=1), np.logical_or.reduce(above, axis=0)
        row_any, col_any = torch.from_numpy(row_has), torch.from_numpy(col_has)
        count_t = torch.from_numpy(counts)
    else:
        count_t = torch.stack([(values > t).sum(dim=(1, 2)) for t in thresholds], dim=1)
        above = values > thresholds[box_k]
        row_any, col_any = above.any(dim=2), above.any(dim=1)

    def extent(has: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(has.shape[1], device=has.device, dtype=torch.int32)
        return torch.where(has, index, has.shape[1]).amin(dim=1), torch.where(has, index, -1).amax(dim=1)

    (top, bottom), (left, right) = extent(row_any), extent(col_any)
    boxes = torch.stack([left, top, right, bottom], dim=1).long()
    return count_t.to(values.device), torch.where((bottom < 0)[:, None], torch.zeros_like(boxes), boxes)


def reaching(x: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of (N, in, in) `x` that hold a value > floor, (N, in) bool each; NaN counts as
    reaching (a window may be larger than needed, never smaller). Only the first and last reaching row
    are exact: rows between them may read True regardless, which no window bound sees.

    One pass over `x` (two took twice as long, at memory speed): maxima over blocks of `ROW_BLOCK` rows
    give every column exactly and the rows block by block; only the two end blocks are read again.
    """
    n, size = x.shape[0], x.shape[1]
    if n == 0 or size % ROW_BLOCK:
        return ~(x.amax(dim=2) <= floor), ~(x.amax(dim=1) <= floor)
    count = size // ROW_BLOCK
    blocks = x.reshape(n, count, ROW_BLOCK, size).amax(dim=2)  # (N, blocks, in)
    cols = ~(blocks.amax(dim=1) <= floor)
    block_reach = ~(blocks.amax(dim=2) <= floor)  # (N, blocks)
    index = torch.arange(count, device=x.device)
    # Masks reaching nowhere read blocks that do not reach either, so their rows stay False.
    first = torch.where(block_reach, index, count - 1).amin(dim=1)
    last = torch.where(block_reach, index, 0).amax(dim=1)
    ends = torch.stack([first, last], dim=1)[:, :, None] * ROW_BLOCK + torch.arange(ROW_BLOCK, device=x.device)
    exact = ~(x[torch.arange(n, device=x.device)[:, None, None], ends].amax(dim=3) <= floor)  # (N, 2, block)
    rows = block_reach.repeat_interleave(ROW_BLOCK, dim=1)
    return rows.scatter_(1, ends.view(n, -1), exact.view(n, -1)), cols


def margins(thresholds: list[float]) -> tuple[list[float], list[float]]:
    """Per threshold t, the level a block's sources must all exceed for every blend of them to be > t,
    and the level they must all stay at or under for every blend to be <= t; float32 values.

    Rounding is monotone and moves a blend by a few ulps of its sources' level, which the margin
    covers. Rounded to float32, as PyTorch compares float32 tensors with a Python float.
    """
    margins = [1e-5 * abs(t) + 1e-6 for t in thresholds]
    above = [float(np.float32(t + m)) for t, m in zip(thresholds, margins)]
    below = [float(np.float32(t - m)) for t, m in zip(thresholds, margins)]
    return above, below


def cell_levels(
    low: torch.Tensor, high: torch.Tensor, above: list[float], below: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sure level (uint8) and straddling (bool) of cells whose sources' min is `low` and max `high`.

    With ascending thresholds, a cell's minimum exceeds the first s `above` levels and its maximum
    the first e `below` levels, s <= e: every blend is above the first s thresholds and at or under
    the last T - e, so the cell straddles some threshold iff s < e, and is otherwise sure up to
    level s. Counting in uint8 keeps every pass at the cells' shape, without (T, ...) broadcasts. A
    NaN source (min/max propagate it) gives s = e = 0: never above, as the upsampled NaN block.
    Straddling cells get level 0. On CPU numpy does the comparisons, ~3x faster than torch's.
    """
    if low.device.type == "cpu":
        low, high = low.numpy(), high.numpy()
        surely, reach = np.zeros(low.shape, dtype=np.uint8), np.zeros(low.shape, dtype=np.uint8)
    else:
        surely = torch.zeros(low.shape, dtype=torch.uint8, device=low.device)
        reach = torch.zeros_like(surely)
    for a, b in zip(above, below):
        surely += low > a
        reach += high > b
    straddle = surely < reach
    surely *= surely >= reach  # zero on straddling cells
    return torch.as_tensor(surely), torch.as_tensor(straddle)
