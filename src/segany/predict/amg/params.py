"""Validated settings of the automatic mask generator (defaults are the official generator's)."""
from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from numbers import Integral, Real
from typing import Any, Sequence

import numpy as np

from segany.errors import InvalidInput
from segany.predict.amg.geometry import build_all_layer_point_grids

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def _knob(default: Any, help: str, kind: str, *, request_max: float | None = None, **bounds: float) -> Any:
    """One generator parameter: its default, help, kind ("int", "real", "bool", "choice"), the library's
    bounds (ge / le / lt) and the most one server request may ask for (`request_max`)."""
    return field(default=default, metadata={"help": help, "kind": kind, "bounds": bounds, "request_max": request_max})


@dataclass(frozen=True)
class MaskGeneratorParams:
    """Every knob of `MaskGenerator`, declared once; construct through `validated_params`.

    The HTTP schemas (`/v1/auto`, Hugging Face), the Replicate seed's schema and the CLI flags are built
    from these fields (`amg_fields()`).
    """

    points_per_side: int | None = _knob(32, "grid of points per image side (ignored with point_grids)", "int", ge=1)
    points_per_batch: int = _knob(64, "points decoded together; more is faster and uses more memory", "int",
                                  ge=1, request_max=1024)
    pred_iou_thresh: float = _knob(0.8, "drop masks whose predicted IoU is at or below this (0 keeps all)", "real",
                                   ge=0.0, le=1.0)
    stability_score_thresh: float = _knob(0.95, "drop masks whose stability score is below this (0 keeps all)",
                                          "real", ge=0.0, le=1.0)
    stability_score_offset: float = _knob(1.0, "logit offset used to compute the stability score", "real", ge=0.0,
                                          request_max=1000)
    mask_threshold: float = _knob(0.0, "logit threshold that turns logits into masks", "real")
    box_nms_thresh: float = _knob(0.7, "IoU above which overlapping masks of one crop are suppressed", "real",
                                  ge=0.0, le=1.0)
    crop_n_layers: int = _knob(0, "extra layers of image crops (0: the whole image only)", "int", ge=0,
                               request_max=4)
    crop_nms_thresh: float = _knob(0.7, "IoU above which masks of different crops are suppressed", "real",
                                   ge=0.0, le=1.0)
    crop_overlap_ratio: float = _knob(512 / 1500, "overlap of neighbouring crops, as a fraction of the crop side",
                                      "real", ge=0.0, lt=1.0)
    crop_n_points_downscale_factor: int = _knob(1, "points per side shrink by this factor in each crop layer", "int",
                                                ge=1, request_max=16)
    min_mask_region_area: int = _knob(0, "fill holes and remove islands up to this area (256x256 logit pixels)",
                                      "real", ge=0.0, request_max=1e8)
    output_mode: str = _knob("binary_mask", "mask encoding: " + ", ".join(OUTPUT_MODES), "choice")
    use_m2m: bool = _knob(False, "refine each mask once, prompting with its own logits", "bool")
    multimask_output: bool = _knob(True, "three masks per grid point (else one)", "bool")
    max_masks: int = _knob(-1, "keep the best N masks by predicted IoU (-1 keeps all)", "int", ge=-1)


def amg_fields() -> dict[str, Field]:
    """The parameters in declaration order, by name (`field.default`, `field.metadata`)."""
    return {f.name: f for f in fields(MaskGeneratorParams)}


def validated_params(point_grids: Sequence[Any] | None, **values: Any) -> tuple[MaskGeneratorParams, list[np.ndarray]]:
    """Check every setting and build the per-layer point grids.

    Returns:
        The params and one (K, 2) float64 grid in [0, 1] (x, y) per crop layer.
    Raises:
        InvalidInput naming the offending parameter.
    """
    params = MaskGeneratorParams(**values)
    for name, spec in amg_fields().items():
        if name == "points_per_side":
            continue  # checked with the point grids: None is valid when grids are given
        value, meta = getattr(params, name), spec.metadata
        bounds = meta["bounds"]
        if meta["kind"] == "int":
            _check_int(value, name, minimum=int(bounds["ge"]))
        elif meta["kind"] == "real":
            _check_real(value, name, minimum=bounds.get("ge"), maximum=bounds.get("le", bounds.get("lt")))
            if "lt" in bounds and value >= bounds["lt"]:
                raise InvalidInput(f"{name} must be below {bounds['lt']:g}", field=name)
        elif meta["kind"] == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise InvalidInput(f"{name} must be a boolean", field=name)
        elif value not in OUTPUT_MODES:
            raise InvalidInput(f"{name} must be one of {', '.join(OUTPUT_MODES)}", field=name)
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
