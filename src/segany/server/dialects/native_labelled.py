"""Text and detection prompts of the native `/v1/segment`: boxes with labels in, labelled masks out.

A text prompt runs the open-vocabulary detector (segany[text]) on the image's pixels; detections come
from another model (Roboflow-style dicts). Either way the boxes become SAM 2 box prompts with one mask
each, and every result carries its label fields.
"""
from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from segany.errors import InvalidInput
from segany.server.engine.engine import DecodedImage

_grounders: dict[str, Any] = {}
_grounders_lock = threading.Lock()


def grounder_for(model_id: str) -> Any:
    """One `TextGrounder` per detector id for the whole process (loading one takes seconds)."""
    from segany.predict.text.grounding import TextGrounder

    with _grounders_lock:
        if model_id not in _grounders:
            _grounders[model_id] = TextGrounder(model_id=model_id)
        return _grounders[model_id]


class RecentImages:
    """The last few decoded images by digest, so a text prompt can follow `/v1/embed` with only an image_id.

    The embedding cache holds features, not pixels, and the detector needs pixels.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._images: OrderedDict[str, DecodedImage] = OrderedDict()
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, image: DecodedImage) -> None:
        if image.rgb.nbytes > self._max_bytes:
            return
        with self._lock:
            if image.digest not in self._images:
                self._bytes += image.rgb.nbytes
            self._images[image.digest] = image
            self._images.move_to_end(image.digest)
            while self._bytes > self._max_bytes:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= dropped.rgb.nbytes

    def get(self, digest: str) -> DecodedImage | None:
        with self._lock:
            image = self._images.get(digest)
            if image is not None:
                self._images.move_to_end(digest)
            return image


@dataclass(frozen=True)
class LabelledBoxes:
    boxes_xyxy: np.ndarray  # (N, 4) float32 pixels
    labels: list[dict[str, Any]]  # per box: fields copied onto its result


async def text_boxes(image: DecodedImage | None, text: str, model_id: str, box_threshold: float | None,
                     text_threshold: float | None) -> LabelledBoxes:
    if image is None:
        raise InvalidInput("text prompts need the image itself (the detector reads pixels): send 'image'", "image")

    def ground() -> Any:
        return grounder_for(model_id).ground(image.rgb, text, box_threshold=box_threshold,
                                             text_threshold=text_threshold)

    found = await asyncio.to_thread(ground)
    labels = [{"label": label, "detector_score": float(score)} for label, score in zip(found.labels, found.scores)]
    return LabelledBoxes(found.boxes_xyxy.astype(np.float32), labels)


def detection_boxes(detections: Any) -> LabelledBoxes:
    from segany.predict.detections import parse_detections

    parsed = parse_detections(detections)
    labels = []
    for i in range(len(parsed.boxes_xyxy)):
        entry: dict[str, Any] = {"class": parsed.class_names[i]}
        if parsed.class_ids is not None and parsed.class_ids[i] >= 0:
            entry["class_id"] = int(parsed.class_ids[i])
        if parsed.confidences is not None and np.isfinite(parsed.confidences[i]):
            entry["confidence"] = float(parsed.confidences[i])
        if parsed.detection_ids and parsed.detection_ids[i] is not None:
            entry["parent_id"] = parsed.detection_ids[i]
        labels.append(entry)
    return LabelledBoxes(np.asarray(parsed.boxes_xyxy, np.float32).reshape(-1, 4), labels)
