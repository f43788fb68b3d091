"""The seed model `lucataco/segment-anything-2`: its 13 inputs, its Cog schema and its prediction handler.

Inputs and defaults are the seed's (`lucataco/cog-segment-anything-2`, `predict.py`). The handler runs
`segany.MaskGenerator` with them through the shared engine and writes every mask as a 0/255 greyscale PNG
to storage, sorted by predicted IoU (highest first); the output is the list of their URLs. `mask_limit`
-1 returns every mask (the seed's `masks[:mask_limit]` drops the last one; segany does not), 0 none.
The seed runs SAM 2.0 Large; segany runs the server's default model.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from segany.io.masks import mask_to_png
from segany.predict.amg.params import validated_params
from segany.server.jobs.store import Job
from segany.server.http.limits import Limits
from segany.server.jobs.workers import JobContext

if TYPE_CHECKING:
    from segany.server.jobs.service import JobServices

MODEL_OWNER = "lucataco"
MODEL_NAME = "segment-anything-2"
MODEL_ID = f"{MODEL_OWNER}/{MODEL_NAME}"
MODEL_VERSION = "be7cbde9fdf0eecdc8b20ffec9dd0d1cfeace0832d4d0b58a071d993182e1be0"
VERSION_CREATED_AT = "2024-07-31T00:00:00.000000Z"
COG_VERSION = "0.9.13"  # the Cog HTTP API segany speaks; any version >= 0.3.9 marks array outputs as lists


def _input(default: Any, order: int, description: str, **bounds: Any) -> Any:
    return Field(default, description=description, json_schema_extra={"x-order": order}, **bounds)


# The seed's inputs (no docstring: it would become the schema's description, which Cog's has not).
# Unknown fields are refused, so a typo does not silently run with a default.
class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="Input")

    image: str = Field(description="Image to segment: an http(s) URL, a data: URI or an uploaded file's URL",
                       json_schema_extra={"format": "uri", "x-order": 0})
    mask_limit: int = _input(-1, 1, "Most masks to return, best predicted IoU first; -1 returns all of them.",
                             ge=-1, le=100_000)
    points_per_side: int = _input(64, 2, "Grid points sampled along each side of the image.", ge=1)
    points_per_batch: int = _input(128, 3, "Grid points decoded together.", ge=1, le=1024)
    pred_iou_thresh: float = _input(0.7, 4, "Drop masks whose predicted IoU is below this (0 to 1).", ge=0, le=1)
    stability_score_thresh: float = _input(
        0.92, 5, "Drop masks whose stability (IoU between masks at shifted cutoffs) is below this (0 to 1).",
        ge=0, le=1)
    stability_score_offset: float = _input(0.7, 6, "How far the cutoff shifts for the stability score.",
                                           ge=0, le=1000)
    crop_n_layers: int = _input(1, 7, "Layers of image crops segmented again (layer i has 4**i crops).", ge=0, le=4)
    box_nms_thresh: float = _input(0.7, 8, "Box IoU above which non-maximum suppression drops duplicate masks.",
                                   ge=0, le=1)
    crop_n_points_downscale_factor: int = _input(
        2, 9, "Crop layer i samples points_per_side / factor**i points per side.", ge=1, le=16)
    min_mask_region_area: float = _input(
        25.0, 10, "Fill holes and remove islands smaller than this many pixels (0 turns it off).", ge=0, le=1e8)
    mask_2_mask: bool = _input(True, 11, "Refine each mask once more, prompting with its own logits.")
    multimask_output: bool = _input(False, 12, "Three candidate masks per grid point instead of one.")

    def generator_kwargs(self) -> dict[str, Any]:
        """`segany.MaskGenerator` keyword arguments."""
        return {
            "points_per_side": self.points_per_side, "points_per_batch": self.points_per_batch,
            "pred_iou_thresh": self.pred_iou_thresh, "stability_score_thresh": self.stability_score_thresh,
            "stability_score_offset": self.stability_score_offset, "crop_n_layers": self.crop_n_layers,
            "box_nms_thresh": self.box_nms_thresh,
            "crop_n_points_downscale_factor": self.crop_n_points_downscale_factor,
            "min_mask_region_area": self.min_mask_region_area, "use_m2m": self.mask_2_mask,
            "multimask_output": self.multimask_output, "output_mode": "binary_mask",
        }


UriString = Annotated[str, Field(json_schema_extra={"format": "uri"})]


# URIs of the mask PNGs, best predicted IoU first.
class Output(RootModel[list[UriString]]):
    model_config = ConfigDict(title="Output")


class _Envelope(BaseModel):
    """Validating through an envelope makes error locations read `input.<field>`."""

    input: Input


def parse_input(raw: Any) -> Input:
    """The seed's input, validated; raises pydantic's ValidationError (422) naming `input.<field>`."""
    return _Envelope.model_validate({"input": raw}).input


def input_digest(raw: Any) -> str:
    """A digest of an input as the client sent it, to recognise a repeated idempotent request."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def check_limits(params: Input, limits: Limits) -> None:
    """Refuse grids the server does not run (InvalidInput, 400) before the job is queued."""
    limits.check_auto_grid(params.points_per_side, params.crop_n_layers, params.crop_n_points_downscale_factor)
    validated_params(None, **params.generator_kwargs())  # e.g. a downscale factor that leaves no points


async def accept_input(services: JobServices, raw: Any, *, api_key_id: str | None,
                       base_url: str) -> tuple[dict[str, Any], list[str]]:
    """Validate a submitted input; returns the input to record (inline image replaced by its stored URL) and
    the storage keys to tie to the job."""
    from segany.server.jobs.service import prepare_image

    params = parse_input(raw)
    await asyncio.to_thread(check_limits, params, services.app.state.limits)
    image = await prepare_image(services, params.image, api_key_id=api_key_id, base_url=base_url,
                                field="input.image")
    return {**raw, "image": image.value}, image.keys


def input_schema() -> dict[str, Any]:
    """The `Input` component as Cog publishes it."""
    return Input.model_json_schema()


def output_schema() -> dict[str, Any]:
    """The `Output` component as Cog publishes it: an array of URI strings."""
    return Output.model_json_schema()


def openapi_schema() -> dict[str, Any]:
    """The version's `openapi_schema` (what `GET /v1/models/.../versions/{id}` returns): Cog's document shape."""
    components = {"Input": input_schema(), "Output": output_schema()}
    return copy.deepcopy({
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {"/predictions": {"post": {
            "summary": "Predict",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"input": {"$ref": "#/components/schemas/Input"}}}}}},
            "responses": {"200": {"description": "Successful Response", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"output": {"$ref": "#/components/schemas/Output"}}}}}}},
        }}},
        "components": {"schemas": components},
    })


def select_masks(records: list[dict[str, Any]], mask_limit: int) -> list[dict[str, Any]]:
    """Records by predicted IoU, highest first (ties keep the generator's order); -1 keeps all."""
    ranked = sorted(records, key=lambda record: -float(record["predicted_iou"]))
    return ranked if mask_limit < 0 else ranked[:mask_limit]


def run_prediction(services: JobServices, job: Job, context: JobContext) -> list[str]:
    """The job handler of the Replicate and Cog dialects: automatic masks -> PNG files -> their URLs."""
    from segany.server.jobs.service import load_job_image

    params = parse_input(job.input)
    context.raise_if_canceled()
    image = load_job_image(services, job, params.image, "input.image")
    height, width = image.size_hw
    context.log(f"segmenting a {width}x{height} image with {params.points_per_side} points per side")
    records = services.call(services.engine.generate(image, None, params.generator_kwargs()))
    chosen = select_masks(records, params.mask_limit)
    context.log(f"{len(records)} masks found, returning {len(chosen)}")
    context.raise_if_canceled()
    urls = []
    for record in chosen:
        key = services.storage.put(mask_to_png(record["segmentation"]), ".png", "image/png", owner=job.api_key_id)
        context.add_files(key)
        urls.append(services.file_url(key, job))
    return urls
