"""Label Studio ML-backend payloads: the labelling config's tags, interactive clicks, and result regions.

Label Studio gives region geometry in percent of the image (x right, y down, 0..100); results carry
`original_width` / `original_height` in pixels. Brush regions use Label Studio's own RLE
(`segany.io.ls_brush`), polygons a list of [x, y] percent points.
"""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segany.errors import InvalidInput, InvalidPrompt
from segany.io.ls_brush import mask_to_brush_rle
from segany.io.masks import mask_to_polygons

OUTPUT_KINDS = ("brushlabels", "polygonlabels")  # the region types segany answers with
PROMPT_KINDS = ("keypointlabels", "rectanglelabels")  # the interactive inputs it reads


class PredictIn(BaseModel):
    """`POST /predict` as Label Studio sends it (`label_studio/ml/api_connector.py`)."""

    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(min_length=1)
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class SetupIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int | None = None
    schema_: str | None = Field(None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None


@dataclass(frozen=True)
class OutputTag:
    kind: str  # "brushlabels" | "polygonlabels"
    from_name: str
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    images: dict[str, str]  # <Image name> -> the task data key of its value ("$image" -> "image")
    outputs: tuple[OutputTag, ...]


def parse_label_config(text: str | None) -> LabelConfig:
    """The `<Image>` tags and the brush / polygon control tags of a labelling config."""
    if not text:
        raise InvalidInput("label_config: Label Studio sent no labelling config", "label_config")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise InvalidInput(f"label_config: not valid XML ({error})", "label_config") from None
    images: dict[str, str] = {}
    outputs: list[OutputTag] = []
    for element in root.iter():
        tag = str(element.tag).lower()
        if tag == "image" and element.get("name") and element.get("value", "").startswith("$"):
            images[element.get("name", "")] = element.get("value", "")[1:]
        elif tag in OUTPUT_KINDS and element.get("name") and element.get("toName"):
            labels = tuple(child.get("value", "") for child in element if str(child.tag).lower() == "label")
            outputs.append(OutputTag(tag, element.get("name", ""), element.get("toName", ""), labels))
    if not images:
        raise InvalidInput("label_config: no <Image name=... value=\"$...\"> tag", "label_config")
    if not any(output.to_name in images for output in outputs):
        raise InvalidInput("label_config: add a <BrushLabels> or <PolygonLabels> tag whose toName is the image; "
                           "segany answers clicks with brush or polygon regions", "label_config")
    return LabelConfig(images, tuple(outputs))


@dataclass(frozen=True)
class Clicks:
    """One interactive request's prompt on one image, in fractions of its size (0..1)."""

    to_name: str
    label: str | None  # the label the user picked on the keypoint / rectangle tool
    points: list[tuple[float, float]]
    positive: list[int]
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1

    def in_pixels(self, width: int, height: int) -> tuple[list[list[float]] | None, list[int] | None,
                                                           list[float] | None]:
        points = [[x * width, y * height] for x, y in self.points] or None
        box = [self.box[0] * width, self.box[1] * height, self.box[2] * width, self.box[3] * height] \
            if self.box else None
        return points, (self.positive or None), box


def _percent(value: dict[str, Any], key: str, field: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not np.isfinite(number):
        raise InvalidPrompt(f"{field}.value.{key}: expected a number (percent of the image)", f"{field}.value.{key}")
    return float(number) / 100.0


def parse_clicks(context: dict[str, Any] | None) -> Clicks | None:
    """`params.context.result` keypoints (`is_positive`, default positive) and the last rectangle."""
    items = (context or {}).get("result") or []
    if not isinstance(items, list):
        raise InvalidPrompt("params.context.result: expected a list of regions", "params.context.result")
    points: list[tuple[float, float]] = []
    positive: list[int] = []
    box = None
    label = to_name = None
    for index, item in enumerate(items):
        field = f"params.context.result[{index}]"
        kind = str(item.get("type", "")).lower() if isinstance(item, dict) else ""
        if kind not in PROMPT_KINDS:
            continue
        value = item.get("value") or {}
        to_name = to_name or item.get("to_name")
        chosen = value.get(kind) or []
        label = chosen[0] if chosen else label
        x, y = _percent(value, "x", field), _percent(value, "y", field)
        if kind == "keypointlabels":
            points.append((x, y))
            positive.append(0 if item.get("is_positive") is False or item.get("is_positive") == 0 else 1)
        else:  # the reference backend keeps the last rectangle: one region per request
            box = (x, y, x + _percent(value, "width", field), y + _percent(value, "height", field))
    if not points and box is None:
        return None
    return Clicks(str(to_name or ""), label, points, positive, box)


def _region(tag: OutputTag, label: str | None, width: int, height: int, score: float) -> dict[str, Any]:
    chosen = label if label is not None else (tag.labels[0] if tag.labels else "")
    return {"id": uuid.uuid4().hex[:10], "from_name": tag.from_name, "to_name": tag.to_name,
            "original_width": width, "original_height": height, "image_rotation": 0, "type": tag.kind,
            "value": {tag.kind: [chosen]}, "score": score, "readonly": False}


def mask_regions(mask: np.ndarray, score: float, tags: list[OutputTag], label: str | None,
                 polygon_epsilon: float = 1.0) -> list[dict[str, Any]]:
    """One (H, W) mask -> a brush region per brush tag and a polygon region (largest part) per polygon tag."""
    height, width = mask.shape
    regions = []
    for tag in tags:
        region = _region(tag, label, width, height, score)
        if tag.kind == "brushlabels":
            region["value"].update({"format": "rle", "rle": mask_to_brush_rle(mask)})
        else:
            polygons = mask_to_polygons(mask, keep_holes=False, epsilon=polygon_epsilon)
            if not polygons:
                continue
            region["value"]["points"] = [[float(x) / width * 100, float(y) / height * 100]
                                         for x, y in polygons[0].exterior]
        regions.append(region)
    return regions
