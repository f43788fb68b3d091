"""The seed model `lucataco/segment-anything-2`: its 13 inputs, its Cog schema and its prediction handler.

Inputs and defaults are the seed's (`lucataco/cog-segment-anything-2`, `predict.py`). The handler runs
`segany.MaskGenerator` with them through the shared engine and writes every mask as a 0/255 greyscale PNG
to storage, sorted by predicted IoU (highest first); the output is the list of their URLs. `mask_limit`
-1 returns every mask (the seed's `masks[:mask_limit]` drops the last one; segany does not), 0 none.
The seed runs SAM 2.0 Large; segany runs the server's default model.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from segany.io.masks import mask_to_png
from segany.predict.amg.params import validated_params
from segany.server.dialects.auto_params import request_field
from segany.server.dialects.replicate_model import ReplicateModel, cog_document
from segany.server.engine.engine import Engine
from segany.server.jobs.job_images import load_job_image, prepare_image
from segany.server.jobs.service import JobService
from segany.server.jobs.store import Job
from segany.server.jobs.workers import JobContext

MODEL_OWNER = "lucataco"
MODEL_NAME = "segment-anything-2"
MODEL_ID = f"{MODEL_OWNER}/{MODEL_NAME}"
MODEL_VERSION = "be7cbde9fdf0eecdc8b20ffec9dd0d1cfeace0832d4d0b58a071d993182e1be0"
VERSION_CREATED_AT = "2024-07-31T00:00:00.000000Z"
COG_VERSION = "0.9.13"  # the Cog HTTP API segany speaks; any version >= 0.3.9 marks array outputs as lists


# The seed's generator inputs in its order: (its name, the MaskGenerator parameter, its default, its description).
# Types and bounds come from the one declaration in `segany.predict.amg.params` (via `request_field`).
_SEED_PARAMETERS: tuple[tuple[str, str, Any, str], ...] = (
    ("points_per_side", "points_per_side", 64, "Grid points sampled along each side of the image."),
    ("points_per_batch", "points_per_batch", 128, "Grid points decoded together."),
    ("pred_iou_thresh", "pred_iou_thresh", 0.7, "Drop masks whose predicted IoU is below this (0 to 1)."),
    ("stability_score_thresh", "stability_score_thresh", 0.92,
     "Drop masks whose stability (IoU between masks at shifted cutoffs) is below this (0 to 1)."),
    ("stability_score_offset", "stability_score_offset", 0.7, "How far the cutoff shifts for the stability score."),
    ("crop_n_layers", "crop_n_layers", 1, "Layers of image crops segmented again (layer i has 4**i crops)."),
    ("box_nms_thresh", "box_nms_thresh", 0.7, "Box IoU above which non-maximum suppression drops duplicate masks."),
    ("crop_n_points_downscale_factor", "crop_n_points_downscale_factor", 2,
     "Crop layer i samples points_per_side / factor**i points per side."),
    ("min_mask_region_area", "min_mask_region_area", 25.0,
     "Fill holes and remove islands smaller than this many pixels (0 turns it off)."),
    ("mask_2_mask", "use_m2m", True, "Refine each mask once more, prompting with its own logits."),
    ("multimask_output", "multimask_output", False, "Three candidate masks per grid point instead of one."),
)


# No docstring: it would become the schema's description, which Cog's has not.
class _SeedInput(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="Input")

    def generator_kwargs(self) -> dict[str, Any]:
        """`segany.MaskGenerator` keyword arguments."""
        return {parameter: getattr(self, name) for name, parameter, _, _ in _SEED_PARAMETERS} | {
            "output_mode": "binary_mask"}


# The seed's inputs. Unknown fields are refused, so a typo does not silently run with a default.
Input = create_model(
    "Input", __base__=_SeedInput,
    image=(str, Field(description="Image to segment: an http(s) URL, a data: URI or an uploaded file's URL",
                      json_schema_extra={"format": "uri", "x-order": 0})),
    mask_limit=(int, Field(-1, description="Most masks to return, best predicted IoU first; -1 returns all of them.",
                           ge=-1, le=100_000, json_schema_extra={"x-order": 1})),
    **{name: request_field(parameter, default=default, description=description,
                           annotation=float if name == "min_mask_region_area" else None,
                           json_schema_extra={"x-order": order})
       for order, (name, parameter, default, description) in enumerate(_SEED_PARAMETERS, start=2)},
)


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


def check_limits(params: Input, engine: Engine) -> None:
    """Refuse grids the server does not run (InvalidInput, 400) before the job is queued."""
    engine.check_generate(params.generator_kwargs())
    validated_params(None, **params.generator_kwargs())  # e.g. a downscale factor that leaves no points


async def accept_input(jobs: JobService, raw: Any, *, api_key_id: str | None,
                       base_url: str) -> tuple[dict[str, Any], list[str]]:
    """Validate a submitted input; returns the input to record (inline image replaced by its stored URL) and
    the storage keys to tie to the job."""
    params = parse_input(raw)
    await asyncio.to_thread(check_limits, params, jobs.engine)
    image = await prepare_image(jobs, params.image, api_key_id=api_key_id, base_url=base_url,
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
    return cog_document(input_schema(), output_schema())


def select_masks(records: list[dict[str, Any]], mask_limit: int) -> list[dict[str, Any]]:
    """Records by predicted IoU, highest first (ties keep the generator's order); -1 keeps all."""
    ranked = sorted(records, key=lambda record: -float(record["predicted_iou"]))
    return ranked if mask_limit < 0 else ranked[:mask_limit]


def run_prediction(jobs: JobService, job: Job, context: JobContext) -> list[str]:
    """The job handler of the Replicate and Cog dialects: automatic masks -> PNG files -> their URLs."""
    params = parse_input(job.input)
    context.raise_if_canceled()
    image = load_job_image(jobs, job, params.image, "input.image")
    height, width = image.size_hw
    context.log(f"segmenting a {width}x{height} image with {params.points_per_side} points per side")
    records = jobs.call(jobs.engine.generate(image, None, params.generator_kwargs()))
    chosen = select_masks(records, params.mask_limit)
    context.log(f"{len(records)} masks found, returning {len(chosen)}")
    context.raise_if_canceled()
    urls = []
    for record in chosen:
        key = jobs.storage.put(mask_to_png(record["segmentation"]), ".png", "image/png", owner=job.api_key_id)
        context.add_files(key)
        urls.append(jobs.file_url(key, job))
    return urls


async def _accept(jobs: JobService, raw: Any, api_key_id: str | None, base_url: str) -> tuple[dict[str, Any], list[str]]:
    return await accept_input(jobs, raw, api_key_id=api_key_id, base_url=base_url)


MODEL = ReplicateModel(MODEL_OWNER, MODEL_NAME, MODEL_VERSION, VERSION_CREATED_AT,
                       "Segment Anything 2 automatic mask generation, served by segany", "replicate", _accept,
                       run_prediction, openapi_schema)
