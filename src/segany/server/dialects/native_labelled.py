"""Text and detection prompts of the native `/v1/segment`: boxes with labels in, labelled masks out.

A text prompt goes to the engine's open-vocabulary detector (segany[text]) on the image's pixels;
detections come from another model (Roboflow-style dicts). Either way the boxes (`Detections`) become SAM 2
box prompts with one mask each, and every result carries its label fields.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from segany.errors import InvalidInput
from segany.predict.detections import parse_detections
from segany.predict.types import Detections
from segany.server.engine.engine import DecodedImage, Engine


async def text_boxes(engine: Engine, image: DecodedImage | None, text: str, box_threshold: float | None,
                     text_threshold: float | None) -> Detections:
    """The detector's boxes for `text` (metadata["source"] = "text")."""
    if image is None:
        raise InvalidInput("text prompts need the image itself (the detector reads pixels): send 'image'", "image")
    found = await engine.ground(image, text, box_threshold=box_threshold, text_threshold=text_threshold)
    return Detections(found.xyxy, confidence=found.confidence, class_id=found.class_id, data=found.data,
                      metadata={**found.metadata, "source": "text"})


def detection_boxes(detections: Any) -> Detections:
    """Request detections (Roboflow-style dicts or supervision's) as `Detections`."""
    return parse_detections(detections).to_detections()


def label_fields(found: Detections) -> list[dict[str, Any]]:
    """Per box, the fields copied onto its result: `label` + `detector_score` for text; `class`, `class_id`,
    `confidence`, `parent_id` (each when known) for given detections."""
    names = found.class_names
    if found.metadata.get("source") == "text":
        scores = found.confidence if found.confidence is not None else np.full(len(found), np.nan)
        return [{"label": name, "detector_score": float(score)} for name, score in zip(names, scores)]
    ids = found.data.get("detection_id")
    labels = []
    for i, name in enumerate(names):
        entry: dict[str, Any] = {"class": name}
        if found.class_id is not None and found.class_id[i] >= 0:
            entry["class_id"] = int(found.class_id[i])
        if found.confidence is not None and np.isfinite(found.confidence[i]):
            entry["confidence"] = float(found.confidence[i])
        if ids is not None and ids[i] is not None:
            entry["parent_id"] = str(ids[i])
        labels.append(entry)
    return labels
