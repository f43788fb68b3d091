"""Exact statistics of bilinearly upsampled mask logits, without upsampling whole masks.

The official generator upsamples every 256x256 logit map to the crop size (`F.interpolate`,
bilinear, align_corners=False) just to count pixels above a few thresholds (stability score) and
find the mask's box. Every upsampled pixel is a convex combination of the 2x2 source values of one
low-res "cell" (all output pixels sharing the same first source row and column), so a cell whose
four sources are all above (below) a threshold gives an output block that is entirely above
(below) it. Only cells straddling a threshold, typically a thin band along the mask outline, need
their output pixels computed, with PyTorch's own index and weight arithmetic (float32), so counts
and boxes equal those of the full upsampling. Cells are classified on one window of the cell grid per
mask, around the sources above the lowest threshold: outside it every block is below all thresholds.
Drawing masks inside known boxes (`windows`) takes the cells under the box instead, with no pass over
the logits to find them.

A mask whose logits hover around the thresholds everywhere (random weights give such maps, and so do
textures) straddles almost every cell; gathering those cells one by one costs several times the plain
upsampling, so such masks are upsampled whole with `F.interpolate`, which is the reference anyway.
They are picked before the classification, from straddling cells counted on a sample of cell rows.

Frames: logits are (N, 256, 256) on the low-res grid of one crop; output pixels are in that crop's
(h, w) frame; boxes are XYXY with inclusive right/bottom.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segany.predict.amg.bilinear import AxisPlan, axis_plan, blend
from segany.predict.amg.thresholds import cell_levels, margins, reaching, threshold_stats

_CELL_CHUNK = 1 << 16  # straddling cells evaluated per step (bounds memory: cells * block pixels)
_MASK_CHUNK = 128  # masks classified per step (bounds memory: masks * in * in)
_SAMPLE_STRIDE = 16  # the dense route is chosen on every 16th cell row: ~4k cells, enough for a share
# Upsampled pixels per step on the dense route: about one 427x640 mask (1 MB of float32) on CPU, so
# that its threshold passes read it from cache; 16 times that on accelerators, to keep them busy.
_DENSE_CHUNK_PIXELS = 1 << 18
# A mask goes the dense route when its straddling cells' pixels exceed this share of the crop's: a
# straddling pixel, gathered and blended on its own, costs about as much as DENSE_SHARE^-1 pixels of
# F.interpolate plus the numpy threshold passes (measured on a 2-core Xeon, 640x427 and 1024x768
# crops: 128 smooth synthetic masks at 1024x768 take 447 ms at 0.1, 237 ms at 0.03 and 0.01).
DENSE_SHARE = 0.03


def _cell_rows(table: torch.Tensor, cells: torch.Tensor, width: int) -> torch.Tensor:
    """The first `width` entries of each of `cells`' rows of an (in, block) axis table.

    index_select, then the cut: several times faster than indexing and slicing in one step."""
    return table.index_select(0, cells)[:, :width]


@dataclass(frozen=True)
class UpsampledStats:
    """Per-mask facts about the upsampled logits of a batch."""

    counts: torch.Tensor  # (N, T) int64 pixels with value > thresholds[t]
    boxes_xyxy: torch.Tensor  # (N, 4) int64 inclusive box of pixels > box_threshold; zeros when none


@dataclass(frozen=True)
class _Straddling:
    """Cells whose output block straddles a threshold, with their exact above-threshold pixels."""

    mask: torch.Tensor  # (K,) int64 which mask
    out_row: torch.Tensor  # (K, block_h) int64 output rows of each cell's block (clamped on padding)
    out_col: torch.Tensor  # (K, block_w) int64 output columns
    row_valid: torch.Tensor  # (K, block_h) bool: real output rows, not padding
    col_valid: torch.Tensor  # (K, block_w) bool
    above: torch.Tensor  # (K, T, block_h, block_w) bool per threshold, False on padding


@dataclass(frozen=True)
class _Window:
    """Per mask, the window of the cell grid that holds every cell with a source above the lowest threshold."""

    row0: torch.Tensor  # (N,) int64 first cell row
    col0: torch.Tensor  # (N,) int64 first cell column
    rows: torch.Tensor  # (N,) int64 cell rows (0 for a mask that reaches nowhere)
    cols: torch.Tensor  # (N,) int64 cell columns

    def select(self, index: torch.Tensor) -> _Window:
        return _Window(self.row0[index], self.col0[index], self.rows[index], self.cols[index])


@dataclass(frozen=True)
class _Cells:
    """Cells of a batch against thresholds, on one window of the cell grid per mask."""

    row0: torch.Tensor  # (N,) int64 cell row of each window's first row
    col0: torch.Tensor  # (N,) int64 cell column of each window's first column
    # (N, rows, cols) uint8: the whole block is > thresholds[t] for t < level (thresholds sorted);
    # 0 on straddling cells, which are evaluated exactly instead.
    level: torch.Tensor
    straddling: list[_Straddling]  # cells in global cell coordinates


class UpsamplePlan:
    """Bilinear upsampling of (N, in, in) logits to one crop size, queried without materializing it."""

    def __init__(
        self, in_size: int, out_hw: tuple[int, int], device: torch.device | str = "cpu", dense_share: float = DENSE_SHARE
    ) -> None:
        self.in_size = int(in_size)
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.device = torch.device(device)
        self.rows = axis_plan(self.in_size, self.out_hw[0], self.device)
        self.cols = axis_plan(self.in_size, self.out_hw[1], self.device)
        # Straddling cells per mask above which it is upsampled whole (0: always; inf: never).
        cell_pixels = self._inner_block(self.rows) * self._inner_block(self.cols)
        self._dense_cells = dense_share * self.out_hw[0] * self.out_hw[1] / cell_pixels
        self._all_occupied = bool((self.rows.cell_count > 0).all() and (self.cols.cell_count > 0).all())
        self._row_identity = self.in_size == self.out_hw[0]
        self._col_identity = self.in_size == self.out_hw[1]

    def stats(self, logits: torch.Tensor, thresholds: list[float], box_threshold: float) -> UpsampledStats:
        """Pixel counts above each threshold and the box above `box_threshold`.

        Args:
            logits: (N, in, in) float32 on the plan's device.
            thresholds: values t; counts[:, k] is the number of output pixels > thresholds[k].
            box_threshold: must be one of `thresholds`.
        """
        if logits.shape[0] > _MASK_CHUNK:  # bound the (N, in, in) temporaries
            parts = [self.stats(logits[i : i + _MASK_CHUNK], thresholds, box_threshold)
                     for i in range(0, logits.shape[0], _MASK_CHUNK)]
            return UpsampledStats(torch.cat([p.counts for p in parts]), torch.cat([p.boxes_xyxy for p in parts]))
        x = logits.float()
        distinct = sorted(set(thresholds))  # a zero stability offset repeats the mask threshold
        box_k = distinct.index(box_threshold)
        counts = torch.zeros(len(x), len(distinct), dtype=torch.int64, device=x.device)
        boxes = torch.zeros(len(x), 4, dtype=torch.int64, device=x.device)
        by_cells, cells, by_dense = self._routes(x, distinct)
        if cells is not None:
            counts[by_cells], boxes[by_cells] = self._cell_stats(cells, len(distinct), box_k)
        for index, upsampled in self._dense(x, by_dense):
            counts[index], boxes[index] = threshold_stats(upsampled, distinct, box_k)
        order = torch.tensor([distinct.index(t) for t in thresholds], device=x.device)
        return UpsampledStats(counts=counts[:, order], boxes_xyxy=boxes)

    def _cell_stats(self, cells: _Cells, t: int, box_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, t) int64 counts above each of t thresholds and (N, 4) int64 boxes above thresholds[box_k]."""
        row_weight, col_weight = self._window_weights(cells)
        n, rows, cols = cells.level.shape
        # Sure cells count whole blocks: block widths summed along rows (float32 sums of integers
        # below 2**24 are exact, also from TF32 inputs: 0/1 and block widths), then block heights
        # in float64 (exact for any crop size).
        ranks = torch.arange(t, dtype=torch.uint8, device=cells.level.device)[None, :, None, None]
        sure = torch.empty(n, t, rows, cols, device=cells.level.device)
        torch.gt(cells.level[:, None], ranks, out=sure)  # written as float32: one pass, no bool map
        per_row = torch.bmm(sure.view(n, t * rows, cols), col_weight[:, :, None]).view(n, t, rows)
        counts = (per_row.double() * row_weight[:, None, :]).sum(dim=2).round().long()
        for part in cells.straddling:  # (uint8 sums: PyTorch sums bools through int64 copies)
            counts.index_add_(0, part.mask, part.above.view(torch.uint8).sum(dim=(2, 3), dtype=torch.int32).long())
        # Sure cells always own output pixels (cells owning none are never sure), so a window row or
        # column holds one iff its weighted sum is positive: the row sums are at hand already.
        row_has = per_row[:, box_k] > 0
        col_has = torch.bmm(row_weight.float()[:, None, :], sure[:, box_k])[:, 0] > 0
        return counts, self._boxes(cells, box_k, row_has, col_has)

    def windows(self, logits: torch.Tensor, boxes_xyxy: torch.Tensor, threshold: float) -> torch.Tensor:
        """Upsampled masks (value > threshold) inside each box, top-left aligned and False-padded.

        Args:
            logits: (N, in, in) float32 on the plan's device.
            boxes_xyxy: (N, 4) int64 inclusive boxes in the output frame, covering every set pixel.
        Returns:
            (N, max box height, max box width) bool.
        """
        x = logits.float()
        left, top, right, bottom = boxes_xyxy.unbind(dim=1)
        win_h, win_w = int((bottom - top).max()) + 1, int((right - left).max()) + 1
        r = top[:, None] + torch.arange(win_h, device=x.device)[None, :]
        c = left[:, None] + torch.arange(win_w, device=x.device)[None, :]
        inside = (r <= bottom[:, None])[:, :, None] & (c <= right[:, None])[:, None, :]
        r, c = r.clamp(max=self.out_hw[0] - 1), c.clamp(max=self.out_hw[1] - 1)
        window = torch.zeros(len(x), win_h, win_w, dtype=torch.bool, device=x.device)
        # Every pixel above the threshold is inside its box, so the cells covering the box will do.
        cell_window = self._box_cells(top, bottom, left, right)
        by_cells, cells, by_dense = self._routes(x, [threshold], cell_window)
        if cells is not None:
            window[by_cells] = self._cell_window(cells, r[by_cells], c[by_cells], top[by_cells], left[by_cells])
        for index, upsampled in self._dense(x, by_dense):
            batch = torch.arange(len(index), device=x.device)[:, None, None]
            window[index] = upsampled[batch, r[index][:, :, None], c[index][:, None, :]] > threshold
        return window & inside

    def _routes(
        self, x: torch.Tensor, thresholds: list[float], window: _Window | None = None
    ) -> tuple[torch.Tensor, _Cells | None, torch.Tensor]:
        """Masks of (N, in, in) `x` on the cells route (M,) int64, their classification (None when M = 0),
        and masks on the dense route (D,) int64. `window`: cells outside which every block is known to
        be below all thresholds; found from `x` when not given."""
        if self._dense_cells <= 0:
            return torch.zeros(0, dtype=torch.int64, device=x.device), None, torch.arange(len(x), device=x.device)
        if window is None:
            window = self._cell_windows(x, min(margins(thresholds)[1]))
        dense = self._goes_dense(x, thresholds, window.rows * window.cols)
        by_cells = (~dense).nonzero()[:, 0]
        cells = None
        if len(by_cells) == len(x):
            cells = self._classify(x, thresholds, window)
        elif len(by_cells):
            cells = self._classify(x[by_cells], thresholds, window.select(by_cells))
        return by_cells, cells, dense.nonzero()[:, 0]

    def _cell_window(
        self, cells: _Cells, r: torch.Tensor, c: torch.Tensor, top: torch.Tensor, left: torch.Tensor
    ) -> torch.Tensor:
        """(N, win_h, win_w) bool: pixels above the one classified threshold at output rows (N, win_h)
        `r` and columns (N, win_w) `c`, windows whose first row and column are `top`, `left` (N,)."""
        sure = cells.level  # 0/1 with one threshold
        win_h, win_w = r.shape[1], c.shape[1]
        # Window-relative cells; those outside a mask's cell window are below the threshold.
        cell_r, cell_c = self.rows.index0[r] - cells.row0[:, None], self.cols.index0[c] - cells.col0[:, None]
        row_in, col_in = (cell_r >= 0) & (cell_r < sure.shape[1]), (cell_c >= 0) & (cell_c < sure.shape[2])
        inside = row_in[:, :, None] & col_in[:, None, :]
        cell_r, cell_c = cell_r.clamp(0, sure.shape[1] - 1), cell_c.clamp(0, sure.shape[2] - 1)
        # Two gathers (rows, then columns) cost a fraction of one three-index lookup per pixel.
        n, win_cells = sure.shape[0], sure.shape[2]
        by_row = torch.gather(sure, 1, cell_r[:, :, None].expand(n, win_h, win_cells))
        window = torch.gather(by_row, 2, cell_c[:, None, :].expand(n, win_h, win_w)).view(torch.bool) & inside
        for part in cells.straddling:
            above = part.above[:, 0]
            out_r = part.out_row[:, :, None] - top[part.mask][:, None, None]
            out_c = part.out_col[:, None, :] - left[part.mask][:, None, None]
            out_r, out_c = out_r.expand(above.shape), out_c.expand(above.shape)
            fits = (out_r >= 0) & (out_r < win_h) & (out_c >= 0) & (out_c < win_w)
            fits &= part.row_valid[:, :, None] & part.col_valid[:, None, :]
            owner = part.mask[:, None, None].expand(above.shape)
            window[owner[fits], out_r[fits], out_c[fits]] = above[fits]
        return window

    def _classify(self, x: torch.Tensor, thresholds: list[float], window: _Window) -> _Cells:
        """Per cell of each mask's `window`, how many of the (ascending) thresholds its whole block is
        surely above; and the straddling cells, whose pixels are computed once and compared with all
        thresholds."""
        above, below = margins(thresholds)
        row0, col0, low, high = self._cell_bounds(x, window)
        level, straddle = cell_levels(low, high, above, below)
        mask, row, col = straddle.nonzero(as_tuple=True)
        row, col = row + row0[mask], col + col0[mask]
        parts = []
        levels = torch.tensor(thresholds, dtype=torch.float32, device=x.device)[None, :, None, None]
        for n, i, j, block_hw in self._by_block_size(mask, row, col):
            for start in range(0, len(n), _CELL_CHUNK):
                part = slice(start, start + _CELL_CHUNK)
                ni, ii, jj = n[part], i[part], j[part]
                values = self._cell_values(x, ni, ii, jj, block_hw)  # NaN on padding: never above
                block_h, block_w = block_hw
                parts.append(_Straddling(
                    ni, _cell_rows(self.rows.block_index, ii, block_h), _cell_rows(self.cols.block_index, jj, block_w),
                    _cell_rows(self.rows.block_valid, ii, block_h), _cell_rows(self.cols.block_valid, jj, block_w),
                    values[:, None] > levels,
                ))
        return _Cells(row0, col0, level, parts)

    def _goes_dense(self, x: torch.Tensor, thresholds: list[float], window_cells: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the masks to upsample whole, whose straddling cells exceed the plan's limit.

        Decided before the classification, which dense masks then skip. A mask straddles at most the
        cells of its window (`window_cells`, (N,)), so only masks with larger windows are looked at.
        The route changes the speed, never the result, so an estimate does: cells blending sources
        (i, i + 1) x (j, j + 1) on every `_SAMPLE_STRIDE`-th row i, by strided views rather than the
        exact (edge-clamped, possibly identity or downsampling) cell layout.
        """
        dense = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        large = (window_cells > self._dense_cells).nonzero()[:, 0]
        if len(large) == 0:
            return dense
        upper, lower = x[:, 0:-1:_SAMPLE_STRIDE][large], x[:, 1::_SAMPLE_STRIDE][large]  # copies sampled rows only
        low, high = torch.minimum(upper, lower), torch.maximum(upper, lower)
        low = torch.minimum(low[:, :, :-1], low[:, :, 1:])
        high = torch.maximum(high[:, :, :-1], high[:, :, 1:])
        _, straddle = cell_levels(low, high, *margins(thresholds))
        sampled = straddle.view(torch.uint8).sum(dim=(1, 2), dtype=torch.int32)
        dense[large] = sampled * (self.in_size / max(upper.shape[1], 1)) > self._dense_cells
        return dense

    def _dense(self, x: torch.Tensor, masks: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(index, (n, h, w) float32 upsampled logits) for the given masks, a few at a time."""
        pixels = _DENSE_CHUNK_PIXELS * (1 if x.device.type == "cpu" else 16)
        step = max(1, pixels // (self.out_hw[0] * self.out_hw[1]))
        for start in range(0, len(masks), step):
            index = masks[start : start + step]
            upsampled = F.interpolate(x[index][:, None], self.out_hw, mode="bilinear", align_corners=False)
            yield index, upsampled[:, 0]

    def _by_block_size(
        self, mask: torch.Tensor, row: torch.Tensor, col: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]]:
        """Cells grouped into inner ones, with the smaller blocks of the inner cells, and the rest.

        The first and last cell of an axis own the output pixels clamped to the edge, so their blocks
        can be larger (4 x 6 pixels in a 768 x 1024 crop, against 3 x 4 inside); padding every cell
        to those would evaluate twice the pixels.
        """
        full = (self.rows.block_index.shape[1], self.cols.block_index.shape[1])
        inner_hw = (self._inner_block(self.rows), self._inner_block(self.cols))
        if inner_hw == full:
            return [(mask, row, col, full)]
        last = self.in_size - 1
        inner = (row > 0) & (row < last) & (col > 0) & (col < last)
        # One stable sort puts the inner cells first; the rest are few (cells on the grid's edges).
        order = torch.argsort(~inner, stable=True)
        split = int(inner.sum())
        mask, row, col = mask[order], row[order], col[order]
        groups = [(slice(0, split), inner_hw), (slice(split, None), full)]
        return [(mask[g], row[g], col[g], hw) for g, hw in groups if len(mask[g])]

    def _inner_block(self, axis: AxisPlan) -> int:
        """Output indices per cell, at most, over the cells that are neither first nor last."""
        counts = axis.cell_count[1:-1]
        return max(int(counts.max()), 1) if len(counts) else axis.block_index.shape[1]

    def _cell_windows(self, x: torch.Tensor, floor: float) -> _Window:
        """Each mask's window of the cells that have a source > floor (outside it every block is below)."""
        row_reach, col_reach = reaching(x, floor)
        row0, rows_n = self._axis_window(row_reach, self._row_identity)
        col0, cols_n = self._axis_window(col_reach, self._col_identity)
        return _Window(row0, col0, rows_n, cols_n)

    def _box_cells(
        self, top: torch.Tensor, bottom: torch.Tensor, left: torch.Tensor, right: torch.Tensor
    ) -> _Window:
        """The window of the cells that own output pixels of each inclusive box (N,) x 4."""
        row0, col0 = self.rows.index0[top], self.cols.index0[left]
        return _Window(row0, col0, self.rows.index0[bottom] - row0 + 1, self.cols.index0[right] - col0 + 1)

    def _cell_bounds(self, x: torch.Tensor, window: _Window) -> tuple[torch.Tensor, ...]:
        """The min/max of the sources of every cell in each mask's window.

        Returns row0, col0 (N,) int64 and low, high (N, rows, cols) float32, -inf outside a mask's
        window and on cells that own no output pixel (so they are never sure and never straddle).
        """
        n, size = x.shape[0], self.in_size
        row0, col0, rows_n, cols_n = window.row0, window.col0, window.rows, window.cols
        height = max(int(rows_n.max()), 1) if n else 1
        width = max(int(cols_n.max()), 1) if n else 1
        # Sources of the window's cells: one more row/column on interpolated axes (cell i blends
        # sources i and i + 1), clamped where the last cell blends the last source with itself.
        local_r = torch.arange(height + (not self._row_identity), device=x.device)
        local_c = torch.arange(width + (not self._col_identity), device=x.device)
        src_r = (row0[:, None] + local_r).clamp(max=size - 1)
        src_c = (col0[:, None] + local_c).clamp(max=size - 1)
        flat = (src_r[:, :, None] * size + src_c[:, None, :]).flatten(1)
        sources = torch.gather(x.reshape(n, size * size), 1, flat).view(n, len(local_r), len(local_c))
        low = high = sources
        if not self._row_identity:
            low, high = torch.minimum(low[:, :-1], low[:, 1:]), torch.maximum(high[:, :-1], high[:, 1:])
        if not self._col_identity:
            low = torch.minimum(low[:, :, :-1], low[:, :, 1:])
            high = torch.maximum(high[:, :, :-1], high[:, :, 1:])
        row_ok = local_r[:height] < rows_n[:, None]
        col_ok = local_c[:width] < cols_n[:, None]
        if not self._all_occupied:  # downsampling: some cells own no output pixel
            row_ok &= self.rows.cell_count[src_r[:, :height]] > 0
            col_ok &= self.cols.cell_count[src_c[:, :width]] > 0
        outside = ~(row_ok[:, :, None] & col_ok[:, None, :])
        return row0, col0, low.masked_fill(outside, -math.inf), high.masked_fill(outside, -math.inf)

    @staticmethod
    def _axis_window(reaches: torch.Tensor, identity: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) first cell and cell count of the cells whose sources include a set entry of (N, in) `reaches`."""
        size = reaches.shape[1]
        index = torch.arange(size, device=reaches.device, dtype=torch.int32)
        has = reaches.any(dim=1)
        first = torch.where(reaches, index, size).amin(dim=1).long()
        last = torch.where(reaches, index, -1).amax(dim=1).long()
        if not identity:  # cell i - 1 blends source i too
            first = (first - 1).clamp(min=0)
        count = torch.where(has, last - first + 1, 0)
        return torch.where(has, first, 0), count

    def _window_weights(self, cells: _Cells) -> tuple[torch.Tensor, torch.Tensor]:
        """Output pixels per window row (N, rows) float64 and per window column (N, cols) float32."""
        rows, cols = cells.level.shape[1:]
        local_r = torch.arange(rows, device=cells.row0.device)
        local_c = torch.arange(cols, device=cells.col0.device)
        cell_r = (cells.row0[:, None] + local_r).clamp(max=self.in_size - 1)
        cell_c = (cells.col0[:, None] + local_c).clamp(max=self.in_size - 1)
        return self.rows.cell_count[cell_r].double(), self.cols.cell_count[cell_c].float()

    def _boxes(self, cells: _Cells, k: int, row_has: torch.Tensor, col_has: torch.Tensor) -> torch.Tensor:
        """(N, 4) inclusive XYXY of the pixels above thresholds[k]; zeros for empty masks (the official convention).

        row_has (N, window rows), col_has (N, window cols): bool, the window rows and columns holding a
        cell surely above thresholds[k]."""
        top, bottom, left, right = self._sure_box(cells, row_has, col_has)
        for part in cells.straddling:
            self._merge_straddling_box(part, part.above[:, k], (top, bottom, left, right))
        empty = (top > bottom) | (left > right)
        boxes = torch.stack([left, top, right, bottom], dim=1)
        return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)

    def _sure_box(self, cells: _Cells, row_has: torch.Tensor, col_has: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inclusive pixel extent (top, bottom, left, right) of the sure cells, from the window rows and
        columns that hold one; empty as top > bottom."""
        rows, cols = self.rows, self.cols
        out_h, out_w = self.out_hw
        n_rows, n_cols = row_has.shape[1], col_has.shape[1]
        local_r = torch.arange(n_rows, device=row_has.device, dtype=torch.int32)
        local_c = torch.arange(n_cols, device=col_has.device, dtype=torch.int32)
        first_row = torch.where(row_has, local_r, n_rows - 1).amin(dim=1) + cells.row0
        last_row = torch.where(row_has, local_r, 0).amax(dim=1) + cells.row0
        first_col = torch.where(col_has, local_c, n_cols - 1).amin(dim=1) + cells.col0
        last_col = torch.where(col_has, local_c, 0).amax(dim=1) + cells.col0
        has = row_has.any(dim=1)
        # Clamped only for masks without sure cells, whose values are then replaced.
        first_row, last_row = first_row.clamp(max=self.in_size - 1), last_row.clamp(max=self.in_size - 1)
        first_col, last_col = first_col.clamp(max=self.in_size - 1), last_col.clamp(max=self.in_size - 1)
        top = torch.where(has, rows.cell_start[first_row], out_h)
        bottom = torch.where(has, rows.cell_start[last_row] + rows.cell_count[last_row] - 1, -1)
        left = torch.where(has, cols.cell_start[first_col], out_w)
        right = torch.where(has, cols.cell_start[last_col] + cols.cell_count[last_col] - 1, -1)
        return top, bottom, left, right

    def _cell_values(
        self, x: torch.Tensor, ni: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor, block_hw: tuple[int, int]
    ) -> torch.Tensor:
        """(K, block_h, block_w) upsampled values of K cells, blocks cut to `block_hw`; NaN on padding."""
        rows, cols = self.rows, self.cols
        block_h, block_w = block_hw
        # Flat offsets: one-dimensional index_select gathers ~2x faster than indexing by three tensors.
        size = self.in_size
        flat = x.reshape(-1)
        top = (ni * size + ii) * size
        bottom = top + (rows.cell_next.index_select(0, ii) - ii) * size
        right = cols.cell_next.index_select(0, jj) - jj
        a, b = flat.index_select(0, top + jj)[:, None], flat.index_select(0, top + jj + right)[:, None]
        c, d = flat.index_select(0, bottom + jj)[:, None], flat.index_select(0, bottom + jj + right)[:, None]
        wx0, wx1 = _cell_rows(cols.block_weight0, jj, block_w), _cell_rows(cols.block_weight1, jj, block_w)
        wy0 = _cell_rows(rows.block_weight0, ii, block_h)[:, :, None]
        wy1 = _cell_rows(rows.block_weight1, ii, block_h)[:, :, None]
        upper, lower = blend(a, wx0, b, wx1), blend(c, wx0, d, wx1)
        return blend(upper[:, None, :], wy0, lower[:, None, :], wy1)

    def _merge_straddling_box(self, part: _Straddling, above: torch.Tensor, box: tuple[torch.Tensor, ...]) -> None:
        """Widen (top, bottom, left, right) in place by the set pixels of straddling cells."""
        top, bottom, left, right = box
        out_h, out_w = self.out_hw
        # int32: PyTorch's CPU min/max over a short last dimension is far slower for int64.
        row_index, col_index = part.out_row.int(), part.out_col.int()
        row_has, col_has = above.any(dim=2), above.any(dim=1)  # (K, block_h), (K, block_w)
        first_row = torch.where(row_has, row_index, out_h).amin(dim=1).long()
        last_row = torch.where(row_has, row_index, -1).amax(dim=1).long()
        first_col = torch.where(col_has, col_index, out_w).amin(dim=1).long()
        last_col = torch.where(col_has, col_index, -1).amax(dim=1).long()
        top.scatter_reduce_(0, part.mask, first_row, reduce="amin")
        bottom.scatter_reduce_(0, part.mask, last_row, reduce="amax")
        left.scatter_reduce_(0, part.mask, first_col, reduce="amin")
        right.scatter_reduce_(0, part.mask, last_col, reduce="amax")
