"""Run-length encoding of binary masks: uncompressed RLE and COCO compressed RLE.

Uncompressed RLE is the official SAM/COCO layout: ``{"size": [H, W], "counts": [int, ...]}`` where the
counts are alternating run lengths of 0s and 1s over the mask flattened in column-major (Fortran)
order, always starting with a 0-run (a leading ``0`` when the first pixel is set) and never ending
with an empty run. COCO compressed RLE (``{"size": [H, W], "counts": str}``) is pycocotools' string
form of the same runs.

Encoding is vectorized over a batch of masks: one pass finds every run boundary of every mask, and
no Python code runs per pixel or per run.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from segany.errors import InvalidInput, MissingExtra

UncompressedRle = dict[str, Any]
CocoRle = dict[str, Any]


def masks_to_rle(masks: torch.Tensor | np.ndarray) -> list[UncompressedRle]:
    """Uncompressed RLEs of a batch of masks.

    Args:
        masks: (N, H, W) bool (any dtype; nonzero means set), torch tensor on any device or numpy array.

    Returns:
        N dicts ``{"size": [H, W], "counts": list[int]}``, identical to the official `mask_to_rle_pytorch`.
    """
    tensor = torch.as_tensor(masks)
    if tensor.ndim != 3:
        raise InvalidInput(f"masks must have shape (N, H, W), got {tuple(tensor.shape)}", field="masks")
    n, h, w = tensor.shape
    origins_yx = torch.zeros(n, 2, dtype=torch.int64)
    return window_masks_to_rle(tensor, origins_yx, (h, w))


def window_masks_to_rle(
    windows: torch.Tensor, origins_yx: torch.Tensor | np.ndarray, size_hw: tuple[int, int]
) -> list[UncompressedRle]:
    """Uncompressed RLEs of masks that are zero outside one window each.

    Args:
        windows: (N, h, w) bool, mask values inside each window; padding beyond a mask's own window
            must be False. A window may run past the image's bottom/right edge only over False pixels.
        origins_yx: (N, 2) int, (row, column) of each window's top-left pixel in the full image.
        size_hw: (H, W) of the full image.

    Returns:
        N uncompressed RLEs over the full (H, W) image.
    """
    height, width = int(size_hw[0]), int(size_hw[1])
    n = windows.shape[0]
    if n == 0:
        return []
    total = height * width
    positions, owners = _change_positions(windows, origins_yx, height)
    counts_flat, offsets = _runs_from_changes(positions, owners, n, total)
    size = [height, width]
    return [
        {"size": list(size), "counts": counts_flat[offsets[i] : offsets[i + 1]].tolist()} for i in range(n)
    ]


def _change_positions(
    windows: torch.Tensor, origins_yx: torch.Tensor | np.ndarray, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Column-major positions where each mask's value flips, sorted by (mask, position)."""
    n, win_h, win_w = windows.shape
    bits = windows.to(torch.bool).transpose(1, 2)  # (N, w, h): column-major walk inside the window
    # Zero sentinels above and below every window column: the full image is zero outside the window.
    padded = torch.zeros(n, win_w, win_h + 2, dtype=torch.bool, device=bits.device)
    padded[:, :, 1:-1] = bits
    flips = padded[:, :, 1:] ^ padded[:, :, :-1]  # flip between row r-1 and row r, r in [0, h]
    owner, col, row = (t.cpu().numpy() for t in flips.nonzero(as_tuple=True))
    origins = np.asarray(torch.as_tensor(origins_yx).cpu(), dtype=np.int64).reshape(n, 2)
    positions = (origins[owner, 1] + col) * height + origins[owner, 0] + row
    # A column ending in a set pixel at the image bottom and the next column starting with a set pixel
    # at the image top give the same position twice (1->0, then 0->1): no flip there, drop both.
    same = np.zeros(len(positions), dtype=bool)
    if len(positions) > 1:
        dup = (positions[1:] == positions[:-1]) & (owner[1:] == owner[:-1])
        same[1:] |= dup
        same[:-1] |= dup
    return positions[~same], owner[~same]


def _runs_from_changes(
    positions: np.ndarray, owners: np.ndarray, n: int, total: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of every mask, flattened, and each mask's slice offsets into them.

    Each mask's runs are the gaps between [0, flips..., total]; a flip at `total` (last pixel set)
    would add an empty trailing run, which the official format leaves out.
    """
    keep = positions < total
    positions, owners = positions[keep], owners[keep]
    per_mask = np.bincount(owners, minlength=n)
    # Boundaries laid out per mask as [0, flips..., total]; runs are the consecutive differences.
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_mask + 2, out=starts[1:])
    bounds = np.empty(starts[-1], dtype=np.int64)
    bounds[starts[:-1]] = 0
    bounds[starts[1:] - 1] = total
    bounds[np.repeat(starts[:-1] + 1, per_mask) + _rank_within(owners, per_mask)] = positions
    runs = np.diff(bounds)
    # Drop the difference that straddles two masks (between one's `total` and the next one's 0).
    between = starts[1:-1] - 1
    keep_runs = np.ones(len(runs), dtype=bool)
    keep_runs[between] = False
    runs = runs[keep_runs]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_mask + 1, out=offsets[1:])
    return runs, offsets


def _rank_within(owners: np.ndarray, per_mask: np.ndarray) -> np.ndarray:
    """Index of each element within its owner's group, for owners sorted ascending."""
    group_start = np.zeros(len(per_mask), dtype=np.int64)
    np.cumsum(per_mask[:-1], out=group_start[1:])
    return np.arange(len(owners)) - group_start[owners]


def rle_to_mask(rle: UncompressedRle) -> np.ndarray:
    """Decode an uncompressed RLE to an (H, W) bool array."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise InvalidInput("RLE counts do not add up to size[0] * size[1]", field="counts")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def rle_area(rle: UncompressedRle | CocoRle) -> int:
    """Number of set pixels of an uncompressed or COCO RLE."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return int(_mask_utils().area(_as_pycoco(rle)))
    return int(sum(counts[1::2]))


def rle_to_coco(rle: UncompressedRle) -> CocoRle:
    """COCO compressed RLE (counts as a str, JSON-ready) of an uncompressed RLE."""
    height, width = (int(v) for v in rle["size"])
    compressed = _mask_utils().frPyObjects({"size": [height, width], "counts": list(rle["counts"])}, height, width)
    return {"size": [height, width], "counts": compressed["counts"].decode("utf-8")}


def coco_encode(mask: np.ndarray | torch.Tensor) -> CocoRle:
    """COCO compressed RLE of one (H, W) mask (bool or 0/1, numpy or torch)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InvalidInput(f"mask must have shape (H, W), got {mask.shape}", field="mask")
    encoded = _mask_utils().encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("utf-8")}


def coco_decode(rle: CocoRle) -> np.ndarray:
    """Decode a COCO compressed RLE (counts str or bytes) to an (H, W) bool array."""
    with warnings.catch_warnings():  # pycocotools' decode trips a NumPy 2 copy-keyword deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        return _mask_utils().decode(_as_pycoco(rle)).astype(bool)


def _as_pycoco(rle: CocoRle) -> dict[str, Any]:
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def _mask_utils() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # optional: only COCO output needs it
        raise MissingExtra("coco", "pycocotools", "COCO RLE encoding") from exc
    return mask_utils
