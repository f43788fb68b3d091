"""The inputs of Replicate's `meta/sam-2-video` (version 33432afd...), and the clicks they describe.

Field names, defaults, bounds and descriptions follow the model's published input schema. The four click
fields are comma-separated text: `click_coordinates` "[x,y],[x,y]" (video pixels) sets the number of clicks;
`click_labels` (1 foreground, 0 background) and `click_frames` are extended with their last value when
shorter; `click_object_ids` are object names ("person,dog"), and a click without one gets a name of its own
("object_<n>"). Clicks with the same name are one object.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from segany.errors import InvalidPrompt

MODEL_OWNER = "meta"
MODEL_NAME = "sam-2-video"
MODEL_VERSION = "33432afdfc06a10da6b4018932893d39b0159f838b6d11dd1236dff85cc5ec1d"
VERSION_CREATED_AT = "2024-08-05T00:00:00.000000Z"


# No docstring: it would become the schema's description, which Cog's has not.
class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Input")

    input_video: str = Field(description="Input video file path",
                             json_schema_extra={"format": "uri", "x-order": 0})
    click_coordinates: str = Field(description="Click coordinates as '[x,y],[x,y],...'. Determines number of clicks.",
                                   json_schema_extra={"x-order": 1})
    click_labels: str = Field("1", description="Click types (1=foreground, 0=background) as '1,1,0,1'. "
                              "Auto-extends if shorter than coordinates.", json_schema_extra={"x-order": 2})
    click_frames: str = Field("0", description="Frame indices for clicks as '0,0,150,0'. Auto-extends if shorter "
                              "than coordinates.", json_schema_extra={"x-order": 3})
    click_object_ids: str = Field("", description="Object labels for clicks as 'person,dog,cat'. Auto-generates if "
                                  "missing or incomplete.", json_schema_extra={"x-order": 4})
    mask_type: Literal["binary", "highlighted", "greenscreen"] = Field(
        "binary", description="Mask type: binary (B&W), highlighted (colored overlay), or greenscreen",
        json_schema_extra={"x-order": 5})
    annotation_type: Literal["mask", "box", "both"] = Field(
        "mask", description="Annotation type: mask only, bounding box only, or both (ignored for binary and "
        "greenscreen)", json_schema_extra={"x-order": 6})
    output_video: bool = Field(False, description="True for video output, False for image sequence",
                               json_schema_extra={"x-order": 7})
    video_fps: int = Field(30, ge=1, le=60, description="Video output frame rate (ignored for image sequence)",
                           json_schema_extra={"x-order": 8})
    output_format: Literal["webp", "jpg", "png"] = Field(
        "webp", description="Image format for sequence (ignored for video)", json_schema_extra={"x-order": 9})
    output_quality: int = Field(80, ge=0, le=100, description="JPG/WebP compression quality (0-100, ignored for PNG "
                                "and video)", json_schema_extra={"x-order": 10})
    output_frame_interval: int = Field(1, ge=1, le=100_000, description="Output every Nth frame. 1=all frames, "
                                       "2=every other, etc.", json_schema_extra={"x-order": 11})


class _Envelope(BaseModel):
    """Validating through an envelope makes error locations read `input.<field>`."""

    input: Input


def parse_input(raw: Any) -> Input:
    """The model's input, validated; raises pydantic's ValidationError (422) naming `input.<field>`."""
    return _Envelope.model_validate({"input": raw}).input


def output_schema() -> dict[str, Any]:
    """Cog's `Output`: file URLs, published as an iterator (the client may poll it)."""
    return {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output",
            "x-cog-array-type": "iterator"}


@dataclass(frozen=True)
class ObjectClicks:
    """One object's clicks on one frame."""

    obj_id: int  # 1, 2, ... in order of the object's first click
    name: str  # the object name the client gave (or generated)
    frame: int
    points_xy: list[list[float]]
    labels: list[int]


def _field(name: str) -> str:
    return f"input.{name}"


def _coordinates(text: str) -> list[list[float]]:
    name = _field("click_coordinates")
    try:
        parsed = json.loads("[" + text.strip() + "]") if text.strip() else []
    except (ValueError, RecursionError):
        raise InvalidPrompt(f"{name}: expected '[x,y],[x,y],...', got {text[:60]!r}", name) from None
    if len(parsed) == 1 and isinstance(parsed[0], list) and parsed[0] and isinstance(parsed[0][0], list):
        parsed = parsed[0]  # "[[x,y],[x,y]]": the same clicks with outer brackets
    points = []
    for point in parsed:
        if (not isinstance(point, list) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
            raise InvalidPrompt(f"{name}: every click must be [x,y] numbers, got {json.dumps(point)[:40]}", name)
        points.append([float(point[0]), float(point[1])])
    if not points:
        raise InvalidPrompt(f"{name}: give at least one click as '[x,y]'", name)
    return points


def _extended(values: list[str], count: int, name: str) -> list[str]:
    if len(values) > count:
        raise InvalidPrompt(f"{_field(name)}: {len(values)} values for {count} clicks", _field(name))
    return values + [values[-1]] * (count - len(values))


def _integers(text: str, count: int, name: str, allowed: Sequence[int] | None = None) -> list[int]:
    parts = [part.strip() for part in text.split(",")] if text.strip() else []
    if not parts or not all(part.lstrip("-").isdigit() for part in parts):
        raise InvalidPrompt(f"{_field(name)}: expected comma-separated integers, got {text[:60]!r}", _field(name))
    values = [int(part) for part in _extended(parts, count, name)]
    if allowed is not None and any(v not in allowed for v in values):
        raise InvalidPrompt(f"{_field(name)}: values must be {' or '.join(map(str, allowed))}", _field(name))
    if allowed is None and min(values) < 0:
        raise InvalidPrompt(f"{_field(name)}: frame indices count from 0", _field(name))
    return values


def parse_clicks(params: Input, max_clicks: int) -> list[ObjectClicks]:
    """The input's clicks grouped per (object, frame), in order of first appearance."""
    points = _coordinates(params.click_coordinates)
    if len(points) > max_clicks:
        raise InvalidPrompt(f"{_field('click_coordinates')}: {len(points)} clicks, more than the limit of "
                            f"{max_clicks}", _field("click_coordinates"))
    labels = _integers(params.click_labels, len(points), "click_labels", (0, 1))
    frames = _integers(params.click_frames, len(points), "click_frames")
    given = [part.strip() for part in params.click_object_ids.split(",")] if params.click_object_ids.strip() else []
    if len(given) > len(points):
        raise InvalidPrompt(f"{_field('click_object_ids')}: {len(given)} ids for {len(points)} clicks",
                            _field("click_object_ids"))
    names = [given[i] if i < len(given) and given[i] else f"object_{i + 1}" for i in range(len(points))]
    obj_ids: dict[str, int] = {}
    groups: dict[tuple[int, int], tuple[str, list[list[float]], list[int]]] = {}
    for name, frame, point, label in zip(names, frames, points, labels):
        obj_id = obj_ids.setdefault(name, len(obj_ids) + 1)
        group = groups.setdefault((obj_id, frame), (name, [], []))
        group[1].append(point)
        group[2].append(label)
    return [ObjectClicks(obj_id, name, frame, pts, lbls) for (obj_id, frame), (name, pts, lbls) in groups.items()]
