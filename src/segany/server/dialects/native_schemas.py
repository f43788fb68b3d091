"""Request and response models of the native API (`/v1/embed`, `/v1/segment`, `/v1/auto`)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from segany.server.dialects.auto_params import AutoParams, auto_params_with_defaults

Point = list[float]


class _Strict(BaseModel):
    # Unknown fields are errors, so a typo ("lables") is reported instead of silently ignored.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LogitsIn(_Strict):
    size: list[int] = Field(description="[256, 256]")
    dtype: Literal["float32"] = "float32"
    data: str = Field(description="base64 of little-endian float32, row-major")


class PromptIn(_Strict):
    points: list[Point] | None = Field(None, description="clicks [[x, y], ...] in image pixels")
    labels: list[int] | None = Field(None, description="one per point: 1 positive, 0 negative (default 1)")
    box: list[float] | None = Field(None, description="[x0, y0, x1, y1] in image pixels")
    mask_input: list[list[float]] | LogitsIn | None = Field(
        None, description="256x256 low-res logits of an earlier answer (format 'logits'), to refine it"
    )


class ImageIn(_Strict):
    image: str | None = Field(None, description="base64 image or data URI (or an http(s) URL when enabled)")
    model: str | None = Field(None, description="variant or Hugging Face id; default: the server's model")


class EmbedIn(ImageIn):
    pass


class SegmentIn(ImageIn):
    image_id: str | None = Field(None, description="id from /v1/embed, instead of the image")
    prompts: list[PromptIn] = Field(default_factory=list, description="point / box / mask prompts")
    text: str | None = Field(None, max_length=2000, description='objects to find, e.g. "a dog. a ball." '
                             "(needs segany[text]; one mask per detected box, each with its phrase)")
    detections: list[dict[str, Any]] | None = Field(
        None, description="boxes from another model, Roboflow-style {x, y, width, height (centre-based), class, "
        "class_id, confidence, detection_id}; one mask each, labels kept")
    box_threshold: float | None = Field(None, ge=0, le=1, description="detector box score threshold (text)")
    text_threshold: float | None = Field(None, ge=0, le=1, description="detector phrase threshold (text)")
    min_score: float = Field(0.0, ge=0, le=1, description="drop text/detection masks scoring below this")
    multimask: bool = Field(True, description="three masks per point/box prompt (else one)")
    format: Literal["rle", "png", "polygon", "logits"] = "rle"


class AutoIn(ImageIn, AutoParams):
    point_grids: list[list[Point]] | None = Field(
        None, description="explicit points in [0, 1] per crop layer, instead of points_per_side"
    )
    max_masks: int = Field(-1, ge=-1, description="keep the best N by predicted IoU; -1 keeps all")
    format: Literal["rle", "png", "polygon"] = "rle"

    def generator_params(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """`segany.MaskGenerator` keyword arguments (request over server defaults); output via `format`."""
        params = auto_params_with_defaults(self, defaults)
        params["max_masks"] = self.max_masks
        if self.point_grids is not None:
            params["point_grids"] = self.point_grids
            params["points_per_side"] = None
        return params


class EmbedOut(BaseModel):
    image_id: str
    model: str
    width: int
    height: int
    cached: bool
    timing_ms: dict[str, float]


class MaskOut(BaseModel):
    score: float
    box_xyxy: list[int] = Field(description="inclusive pixel bounds [x0, y0, x1, y1]")
    area: int
    rle: dict[str, Any] | None = Field(None, description="COCO compressed RLE {size: [h, w], counts: str}")
    png: str | None = Field(None, description="base64 PNG, mode L, 0/255, image size")
    polygons: list[dict[str, Any]] | None = Field(None, description="[{exterior: [[x, y]...], holes: [...]}]")
    logits: dict[str, Any] | None = Field(None, description="low-res logits {size, dtype, data}")


class PromptResultOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # text/detection results add label, class, confidence, ...
    masks: list[MaskOut]


class SegmentOut(BaseModel):
    image_id: str
    model: str
    width: int
    height: int
    results: list[PromptResultOut]
    timing_ms: dict[str, float]


class AutoOut(BaseModel):
    image_id: str
    model: str
    width: int
    height: int
    records: list[dict[str, Any]]
    timing_ms: dict[str, float]


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorBody
