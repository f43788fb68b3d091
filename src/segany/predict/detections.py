"""Detections in, labelled masks out: another model's boxes become SAM 2 box prompts (Roboflow's workflow block).

Boxes arrive as `supervision.Detections` or as Roboflow-style prediction dicts (centre-based x, y, width,
height). Each box gets one mask; every input field rides along, the mask's own score is added, and the
input detection's id becomes the mask's `parent_id`. Everything here takes and returns plain values, so
the HTTP routes can call it directly.
"""
from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from segany.errors import InvalidInput, InvalidPrompt, MissingExtra
from segany.predict.types import Detections

# Boxes decoded per predictor call: bounds the (boxes x masks x H x W) full-resolution block in memory.
_BOXES_PER_CALL = 16

# Roboflow prediction keys with a meaning here; any other key is carried along in `data`.
_ROBOFLOW_KEYS = ("x", "y", "width", "height", "class", "class_id", "confidence", "detection_id", "tracker_id")
# supervision `data` keys this module writes itself.
_OWN_DATA_KEYS = ("class_name", "detection_id", "parent_id", "parent_index", "mask_score")


class NoDetectionsWarning(UserWarning):
    """A box-prompted segmentation had no boxes, so it returned no masks (never a whole-image mask)."""


@dataclass(frozen=True, eq=False)
class DetectionBoxes:
    """Parsed input detections: N boxes with whatever labels came with them."""

    boxes_xyxy: np.ndarray  # (N, 4) float32 pixels
    class_names: tuple[str | None, ...]
    class_ids: np.ndarray | None = None  # (N,) int64, -1 where one detection lacks it
    confidences: np.ndarray | None = None  # (N,) float, NaN where one detection lacks it
    tracker_ids: np.ndarray | None = None  # (N,) int64, -1 where one detection lacks it
    detection_ids: tuple[str | None, ...] = ()
    data: Mapping[str, np.ndarray] = field(default_factory=dict)  # other per-detection fields, length N each
    metadata: Mapping[str, Any] = field(default_factory=dict)  # fields of the whole set

    def __len__(self) -> int:
        return int(self.boxes_xyxy.shape[0])

    def to_detections(self) -> Detections:
        """The boxes as `Detections` (no masks yet); names, ids and tracker ids become `data` columns."""
        columns = {"class_name": _column(self.class_names)}
        if self.detection_ids:
            columns["detection_id"] = _column(self.detection_ids)
        if self.tracker_ids is not None:
            columns["tracker_id"] = self.tracker_ids.copy()
        return Detections(xyxy=np.asarray(self.boxes_xyxy, np.float32).reshape(-1, 4), confidence=_copy(self.confidences),
                          class_id=_copy(self.class_ids), data={**self.data, **columns}, metadata=dict(self.metadata))


@dataclass(frozen=True, eq=False)
class LabelledMasks:
    """One mask per kept input box, with the box's labels; the result type of text and detection prompts."""

    masks: np.ndarray  # (N, H, W) bool
    mask_scores: np.ndarray  # (N,) float32 SAM 2 predicted IoU
    boxes_xyxy: np.ndarray  # (N, 4) float32, the prompt boxes in pixels
    class_names: tuple[str | None, ...]
    class_ids: np.ndarray | None  # (N,) int64
    confidences: np.ndarray | None  # (N,) float detector scores, in the dtype they came in
    tracker_ids: np.ndarray | None  # (N,) int64
    detection_ids: tuple[str, ...]  # fresh id of each mask
    parent_ids: tuple[str | None, ...]  # id of the input detection each mask came from, when it had one
    parent_indices: np.ndarray  # (N,) int64 position of that detection in the input
    image_hw: tuple[int, int]
    data: Mapping[str, np.ndarray] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why the result is empty (or smaller than the input), for callers to show

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def select(self, keep: np.ndarray) -> "LabelledMasks":
        """The subset picked by a boolean (N,) mask or an index array."""
        idx = np.arange(len(self))[keep]
        return replace(
            self, masks=self.masks[idx], mask_scores=self.mask_scores[idx], boxes_xyxy=self.boxes_xyxy[idx],
            class_names=tuple(self.class_names[i] for i in idx), class_ids=_take(self.class_ids, idx),
            confidences=_take(self.confidences, idx), tracker_ids=_take(self.tracker_ids, idx),
            detection_ids=tuple(self.detection_ids[i] for i in idx), parent_ids=tuple(self.parent_ids[i] for i in idx),
            parent_indices=self.parent_indices[idx], data={k: v[idx] for k, v in self.data.items()},
        )

    def to_detections(self) -> Detections:
        """As `Detections`: data holds class_name, detection_id, parent_id, parent_index, mask_score, tracker_id."""
        columns = {"class_name": _column(self.class_names), "detection_id": _column(self.detection_ids),
                   "parent_id": _column(self.parent_ids), "parent_index": self.parent_indices.copy(),
                   "mask_score": self.mask_scores.copy()}
        if self.tracker_ids is not None:
            columns["tracker_id"] = self.tracker_ids.copy()
        return Detections(xyxy=self.boxes_xyxy.copy(), mask=self.masks.copy(), confidence=_copy(self.confidences),
                          class_id=_copy(self.class_ids), data={**self.data, **columns}, metadata=dict(self.metadata))

    def to_supervision(self) -> Any:
        """`supervision.Detections` with mask, xyxy, confidence, class_id, tracker_id; data holds class_name,
        detection_id, parent_id, parent_index, mask_score and every carried input field."""
        sv = _import_supervision()
        data = {key: value for key, value in self.data.items() if key not in _OWN_DATA_KEYS}
        data.update(
            class_name=_column(self.class_names), detection_id=_column(self.detection_ids),
            parent_id=_column(self.parent_ids), parent_index=self.parent_indices.copy(),
            mask_score=self.mask_scores.copy(),
        )
        return sv.Detections(
            xyxy=self.boxes_xyxy.copy(), mask=self.masks.copy(), confidence=_copy(self.confidences),
            class_id=_copy(self.class_ids), tracker_id=_copy(self.tracker_ids), data=data, metadata=dict(self.metadata),
        )

    @classmethod
    def from_supervision(cls, detections: Any) -> "LabelledMasks":
        """Back from `supervision.Detections` with masks (mask_score NaN where the data lacks it)."""
        if getattr(detections, "mask", None) is None:
            raise InvalidInput("detections have no masks to take labelled masks from", "detections.mask")
        mask = detections.mask
        masks = np.asarray(mask.to_dense() if hasattr(mask, "to_dense") else mask, dtype=bool)
        boxes = _boxes_from_supervision(detections)
        n = len(boxes)
        data = {key: _column(list(value)) for key, value in dict(detections.data).items()}
        own = {key: data.pop(key) for key in _OWN_DATA_KEYS if key in data}
        ids = own.get("detection_id")
        return cls(
            masks=masks, mask_scores=np.asarray(own.get("mask_score", np.full(n, np.nan)), dtype=np.float32),
            boxes_xyxy=boxes.boxes_xyxy, class_names=boxes.class_names, class_ids=boxes.class_ids,
            confidences=boxes.confidences, tracker_ids=boxes.tracker_ids,
            detection_ids=tuple(_new_id() if i is None else str(i) for i in (ids if ids is not None else [None] * n)),
            parent_ids=tuple(_optional_str(i) for i in own.get("parent_id", [None] * n)),
            parent_indices=np.asarray(own.get("parent_index", np.arange(n)), dtype=np.int64),
            image_hw=(int(masks.shape[1]), int(masks.shape[2])), data=data,
            metadata=dict(getattr(detections, "metadata", {}) or {}),
        )

    def to_dicts(self) -> list[dict[str, Any]]:
        """Roboflow-style records with plain Python values: x, y, width, height (the prompt box, centre-based),
        class, class_id, confidence, tracker_id (when known), detection_id, parent_id, mask_score, mask
        ((H, W) bool array; encode it as the response format needs) and every carried input field."""
        records = []
        for i in range(len(self)):
            x0, y0, x1, y1 = (float(v) for v in self.boxes_xyxy[i])
            record: dict[str, Any] = {key: _plain(value[i]) for key, value in self.data.items()}
            record.update(x=(x0 + x1) / 2, y=(y0 + y1) / 2, width=x1 - x0, height=y1 - y0)
            optional = {
                "class": self.class_names[i], "class_id": _item(self.class_ids, i, missing=-1),
                "confidence": _item(self.confidences, i, missing=None), "tracker_id": _item(self.tracker_ids, i, missing=-1),
            }
            record.update({key: value for key, value in optional.items() if value is not None})
            record.update(detection_id=self.detection_ids[i], parent_id=self.parent_ids[i],
                          mask_score=float(self.mask_scores[i]), mask=self.masks[i])
            records.append(record)
        return records


def parse_detections(detections: Any) -> DetectionBoxes:
    """Read `supervision.Detections`, a list of Roboflow prediction dicts, or a Roboflow response dict
    (`{"predictions": [...], ...}`; the other top-level keys become metadata). Raises InvalidPrompt naming
    the offending field (e.g. "detections[2].width")."""
    if hasattr(detections, "xyxy"):
        return _boxes_from_supervision(detections)
    metadata: dict[str, Any] = {}
    if isinstance(detections, Mapping):
        if "predictions" not in detections:
            raise InvalidPrompt("a detections object needs a 'predictions' list", "detections")
        metadata = {k: v for k, v in detections.items() if k != "predictions"}
        detections = detections["predictions"]
    if isinstance(detections, (str, bytes)) or not isinstance(detections, Sequence):
        raise InvalidPrompt(f"detections must be supervision.Detections or a list of dicts, got "
                            f"{type(detections).__name__}", "detections")
    boxes, names, extra_keys = [], [], []
    for i, item in enumerate(detections):
        if not isinstance(item, Mapping):
            raise InvalidPrompt(f"expected a dict, got {type(item).__name__}", f"detections[{i}]")
        cx, cy, w, h = (_number(item, key, i) for key in ("x", "y", "width", "height"))
        if w < 0 or h < 0:
            raise InvalidPrompt(f"width and height must be >= 0, got {w} x {h}", f"detections[{i}].width")
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        names.append(_optional_str(item.get("class")))
        extra_keys += [k for k in item if k not in _ROBOFLOW_KEYS and k not in extra_keys]
    items = list(detections)
    return DetectionBoxes(
        boxes_xyxy=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), class_names=tuple(names),
        class_ids=_optional_column(items, "class_id", np.int64, -1),
        confidences=_optional_column(items, "confidence", np.float64, np.nan),
        tracker_ids=_optional_column(items, "tracker_id", np.int64, -1),
        detection_ids=tuple(_optional_str(item.get("detection_id")) for item in items),
        data={key: _column([item.get(key) for item in items]) for key in extra_keys}, metadata=metadata,
    )


def segment_detections(
    predictor: Any, image: Any, detections: Any, multimask_output: bool = False, threshold: float = 0.0
) -> LabelledMasks:
    """One mask per detection box: `image` is any image source or an `ImageEmbedding` of it.

    multimask_output=True decodes three candidates per box and keeps the best-scoring one. Masks whose
    score is below `threshold` are dropped. No detections -> an empty result with a `reason` (and a
    NoDetectionsWarning), never a whole-image mask.
    """
    threshold = check_threshold(threshold)
    boxes = parse_detections(detections)
    return segment_boxes(predictor, image, boxes, multimask_output=multimask_output, threshold=threshold,
                         empty_reason="no detections were given, so there is nothing to segment")


def segment_boxes(
    predictor: Any, image: Any, boxes: DetectionBoxes, *, multimask_output: bool, threshold: float, empty_reason: str
) -> LabelledMasks:
    """Shared core of detection and text prompts: labelled boxes -> labelled masks."""
    from segany.io.images import load_image

    is_embedding = hasattr(image, "image_embed") and hasattr(image, "orig_hw")
    if len(boxes) == 0:
        image_hw = tuple(image.orig_hw) if is_embedding else load_image(image).shape[:2]
        warnings.warn(empty_reason, NoDetectionsWarning, stacklevel=3)
        return _empty(boxes, (int(image_hw[0]), int(image_hw[1])), empty_reason)
    embedding = image if is_embedding else predictor.embed(image)
    masks, scores = masks_for_boxes(predictor, embedding, boxes.boxes_xyxy, multimask_output)
    n = len(boxes)
    result = LabelledMasks(
        masks=masks, mask_scores=scores, boxes_xyxy=boxes.boxes_xyxy, class_names=boxes.class_names,
        class_ids=boxes.class_ids, confidences=boxes.confidences, tracker_ids=boxes.tracker_ids,
        detection_ids=tuple(_new_id() for _ in range(n)),
        parent_ids=boxes.detection_ids or (None,) * n, parent_indices=np.arange(n, dtype=np.int64),
        image_hw=tuple(embedding.orig_hw), data=dict(boxes.data), metadata=dict(boxes.metadata),
    )
    kept = result.select(scores >= threshold)
    if len(kept) < n:
        kept = replace(kept, reason=f"{n - len(kept)} of {n} masks scored below threshold={threshold}")
    return kept


def masks_for_boxes(
    predictor: Any, embedding: Any, boxes_xyxy: np.ndarray, multimask_output: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) pixel boxes -> masks (N, H, W) bool and scores (N,) float32, one per box (best of 3 if multimask)."""
    all_masks, all_scores = [], []
    for start in range(0, len(boxes_xyxy), _BOXES_PER_CALL):
        out = predictor.predict(embedding, box=boxes_xyxy[start : start + _BOXES_PER_CALL],
                                multimask_output=multimask_output)
        masks, scores = out.masks, out.scores
        if masks.ndim == 3:  # the predictor drops the batch axis for a single box
            masks, scores = masks[None], scores[None]
        best = scores.argmax(axis=1)
        rows = np.arange(len(best))
        all_masks.append(masks[rows, best].astype(bool, copy=False))
        all_scores.append(scores[rows, best].astype(np.float32))
    return np.concatenate(all_masks), np.concatenate(all_scores)


def check_threshold(threshold: float, field: str = "threshold") -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise InvalidInput(f"{field} must be a number, got {threshold!r}", field) from None
    if not np.isfinite(value):
        raise InvalidInput(f"{field} must be finite, got {value}", field)
    return value


# ---- helpers -------------------------------------------------------------------------------------


def _empty(boxes: DetectionBoxes, image_hw: tuple[int, int], reason: str) -> LabelledMasks:
    none = np.zeros(0, dtype=np.int64)
    return LabelledMasks(
        masks=np.zeros((0, *image_hw), dtype=bool), mask_scores=np.zeros(0, dtype=np.float32),
        boxes_xyxy=np.zeros((0, 4), dtype=np.float32), class_names=(), class_ids=None, confidences=None,
        tracker_ids=None, detection_ids=(), parent_ids=(), parent_indices=none, image_hw=image_hw,
        data={key: value[:0] for key, value in boxes.data.items()}, metadata=dict(boxes.metadata), reason=reason,
    )


def _boxes_from_supervision(detections: Any) -> DetectionBoxes:
    xyxy = np.asarray(detections.xyxy, dtype=np.float32)
    if xyxy.ndim != 2 or xyxy.shape[1] != 4 or not np.isfinite(xyxy).all():
        raise InvalidPrompt(f"xyxy must be (N, 4) finite numbers, got shape {xyxy.shape}", "detections.xyxy")
    if (xyxy[:, 2:] < xyxy[:, :2]).any():
        raise InvalidPrompt("every box needs x1 >= x0 and y1 >= y0", "detections.xyxy")
    n = len(xyxy)
    data = {key: _column(list(value)) for key, value in dict(detections.data).items()}
    names = data.pop("class_name", None)
    ids = data.pop("detection_id", None)
    return DetectionBoxes(
        boxes_xyxy=xyxy, class_names=tuple(_optional_str(v) for v in (names if names is not None else [None] * n)),
        class_ids=_copy(detections.class_id, np.int64), confidences=_copy(detections.confidence),
        tracker_ids=_copy(detections.tracker_id, np.int64),
        detection_ids=tuple(_optional_str(v) for v in (ids if ids is not None else [None] * n)),
        data=data, metadata=dict(getattr(detections, "metadata", {}) or {}),
    )


def _number(item: Mapping[str, Any], key: str, index: int) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        raise InvalidPrompt(f"needs a finite number, got {value!r}", f"detections[{index}].{key}")
    return float(value)


def _optional_column(items: Sequence[Mapping[str, Any]], key: str, dtype: Any, missing: Any) -> np.ndarray | None:
    """A typed column, or None when no item has the key; items without it get `missing`."""
    if not any(item.get(key) is not None for item in items):
        return None
    try:
        return np.asarray([missing if item.get(key) is None else item[key] for item in items], dtype=dtype)
    except (TypeError, ValueError):
        bad = next(i for i, item in enumerate(items) if not isinstance(item.get(key), (int, float, np.number, type(None))))
        raise InvalidPrompt(f"needs a number, got {items[bad][key]!r}", f"detections[{bad}].{key}") from None


def _column(values: Sequence[Any]) -> np.ndarray:
    """A length-N array; object dtype when the values are not all of one plain scalar kind."""
    kinds = {type(v) for v in values}
    if len(kinds) == 1 and next(iter(kinds)) in (str, int, float, bool, np.str_, np.int64, np.float32, np.float64):
        return np.asarray(values)
    column = np.empty(len(values), dtype=object)
    column[:] = list(values)
    return column


def _copy(values: Any, dtype: Any = None) -> np.ndarray | None:
    return None if values is None else np.array(values, dtype=dtype)


def _take(values: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[idx]


def _item(values: np.ndarray | None, i: int, missing: Any) -> Any:
    if values is None:
        return None
    value = values[i].item()
    return None if value == missing or (isinstance(value, float) and np.isnan(value)) else value


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _new_id() -> str:
    return str(uuid.uuid4())


def _import_supervision() -> Any:
    try:
        import supervision
    except ImportError as exc:
        raise MissingExtra("supervision", "supervision", "Converting to and from supervision.Detections") from exc
    return supervision
