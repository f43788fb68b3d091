"""Validated settings of the automatic mask generator (defaults are the official generator's)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np

from segany.errors import InvalidInput
from segany.predict.amg.geometry import build_all_layer_point_grids

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@dataclass(frozen=True)
class MaskGeneratorParams:
    """Every knob of `MaskGenerator`; construct through `validated_params`."""

    points_per_side: int | None = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    use_m2m: bool = False
    multimask_output: bool = True
    max_masks: int = -1


def validated_params(point_grids: Sequence[Any] | None, **values: Any) -> tuple[MaskGeneratorParams, list[np.ndarray]]:
    """Check every setting and build the per-layer point grids.

    Returns:
        The params and one (K, 2) float64 grid in [0, 1] (x, y) per crop layer.
    Raises:
        InvalidInput naming the offending parameter.
    """
    params = MaskGeneratorParams(**values)
    _check_int(params.points_per_batch, "points_per_batch", minimum=1)
    for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
        _check_real(getattr(params, name), name, minimum=0.0, maximum=1.0)
    _check_real(params.stability_score_offset, "stability_score_offset", minimum=0.0)
    _check_real(params.mask_threshold, "mask_threshold")
    _check_int(params.crop_n_layers, "crop_n_layers", minimum=0)
    _check_real(params.crop_overlap_ratio, "crop_overlap_ratio", minimum=0.0, maximum=1.0)
    if params.crop_overlap_ratio >= 1.0:
        raise InvalidInput("crop_overlap_ratio must be below 1", field="crop_overlap_ratio")
    _check_int(params.crop_n_points_downscale_factor, "crop_n_points_downscale_factor", minimum=1)
    _check_real(params.min_mask_region_area, "min_mask_region_area", minimum=0.0)
    if params.output_mode not in OUTPUT_MODES:
        raise InvalidInput(f"output_mode must be one of {', '.join(OUTPUT_MODES)}", field="output_mode")
    for name in ("use_m2m", "multimask_output"):
        if not isinstance(getattr(params, name), (bool, np.bool_)):
            raise InvalidInput(f"{name} must be a boolean", field=name)
    _check_int(params.max_masks, "max_masks", minimum=-1)
    return params, _point_grids(params, point_grids)


def _point_grids(params: MaskGeneratorParams, point_grids: Sequence[Any] | None) -> list[np.ndarray]:
    if (params.points_per_side is None) == (point_grids is None):
        raise InvalidInput("exactly one of points_per_side or point_grids must be given", field="point_grids")
    if params.points_per_side is not None:
        _check_int(params.points_per_side, "points_per_side", minimum=1)
        factor = params.crop_n_points_downscale_factor
        if int(params.points_per_side / factor**params.crop_n_layers) < 1:
            raise InvalidInput(
                "crop_n_points_downscale_factor leaves no points in the last crop layer",
                field="crop_n_points_downscale_factor",
            )
        return build_all_layer_point_grids(params.points_per_side, params.crop_n_layers, factor)
    grids = []
    for grid in point_grids or []:
        array = np.asarray(grid, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
            raise InvalidInput("each of point_grids must have shape (K, 2) with K >= 1", field="point_grids")
        if not np.isfinite(array).all() or (array < 0).any() or (array > 1).any():
            raise InvalidInput("point_grids coordinates must be normalized to [0, 1]", field="point_grids")
        grids.append(array)
    if len(grids) < params.crop_n_layers + 1:
        raise InvalidInput(
            f"point_grids needs one grid per crop layer ({params.crop_n_layers + 1}), got {len(grids)}",
            field="point_grids",
        )
    return grids


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Integral):
        raise InvalidInput(f"{name} must be an integer", field=name)
    if value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value}", field=name)


def _check_real(value: Any, name: str, minimum: float | None = None, maximum: float | None = None) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be a finite number", field=name)
    if minimum is not None and value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value}", field=name)
    if maximum is not None and value > maximum:
        raise InvalidInput(f"{name} must be <= {maximum}, got {value}", field=name)
