"""Automatic-mask-generation parameters shared by `/v1/auto` and the Hugging Face dialect.

Every field is optional: an omitted one takes the server's `--auto-defaults` value if set, else the
`segany.MaskGenerator` default (the official generator's). Bounds keep one request's work finite.
"""
from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from segany.errors import InvalidInput

GENERATOR_FIELDS = (
    "points_per_side", "points_per_batch", "pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
    "mask_threshold", "box_nms_thresh", "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
    "crop_n_points_downscale_factor", "min_mask_region_area", "use_m2m", "multimask_output",
)


class AutoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    points_per_side: int | None = Field(None, ge=1, description="grid points per image side (default 32)")
    points_per_batch: int | None = Field(None, ge=1, le=1024, description="points decoded together (default 64)")
    pred_iou_thresh: float | None = Field(None, ge=0.0, le=1.0, description="minimum predicted IoU (default 0.8)")
    stability_score_thresh: float | None = Field(None, ge=0.0, le=1.0,
                                                 description="minimum stability score (default 0.95)")
    stability_score_offset: float | None = Field(None, ge=0.0, description="default 1.0")
    mask_threshold: float | None = Field(None, description="logit threshold of masks (default 0.0)")
    box_nms_thresh: float | None = Field(None, ge=0.0, le=1.0, description="default 0.7")
    crop_n_layers: int | None = Field(None, ge=0, le=4, description="default 0")
    crop_nms_thresh: float | None = Field(None, ge=0.0, le=1.0, description="default 0.7")
    crop_overlap_ratio: float | None = Field(None, ge=0.0, lt=1.0, description="default 512/1500")
    crop_n_points_downscale_factor: int | None = Field(None, ge=1, le=16, description="default 1")
    min_mask_region_area: int | None = Field(None, ge=0, description="default 0")
    use_m2m: bool | None = Field(None, description="mask-to-mask refinement (default false)")
    multimask_output: bool | None = Field(None, description="default true")


def parse_auto_defaults(text: str | None) -> dict[str, Any]:
    """The `--auto-defaults` JSON object, validated like request parameters."""
    if not text:
        return {}
    try:
        document = json.loads(text)
    except ValueError as error:
        raise InvalidInput(f"auto_defaults: not valid JSON ({error})", "auto_defaults") from None
    if not isinstance(document, dict):
        raise InvalidInput("auto_defaults: expected a JSON object", "auto_defaults")
    return AutoParams.model_validate(document).model_dump(exclude_none=True)


def auto_params_with_defaults(params: AutoParams, defaults: dict[str, Any],
                              exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """MaskGenerator keyword arguments: the request's values over the server defaults."""
    merged = {k: v for k, v in defaults.items() if k not in exclude}
    for name in GENERATOR_FIELDS:
        value = getattr(params, name, None)
        if value is not None and name not in exclude:
            merged[name] = value
    return merged
