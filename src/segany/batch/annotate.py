"""One decoded image -> annotation records, the same code for local runs and Ray workers.

A record is a plain, JSON-ready dict: `segmentation` (COCO compressed RLE, counts a str), `area` (pixels),
`bbox` ([x, y, w, h] pixel extent of the mask, COCO's convention), `score`, `category` (a name; the COCO
writer turns names into ids) and a few mode-specific fields:

- auto: score = predicted IoU; plus stability_score, point_coords [[x, y]], crop_box [x, y, w, h].
- text: score = detector confidence; plus mask_score (SAM 2's predicted IoU) and box_xyxy (detector box).
- boxes: score = the box's given score, else the mask score; plus mask_score and box_xyxy.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

MODES = ("auto", "text", "boxes")
DEFAULT_CATEGORY = "object"


@dataclass(frozen=True)
class BoxPrompt:
    """A box to segment in boxes mode: xyxy pixels, with an optional label and detector score."""

    box_xyxy: tuple[float, float, float, float]
    label: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class AnnotatorConfig:
    """Everything a worker needs to build its model and label images; picklable and JSON-ready."""

    mode: str = "auto"
    model: str = "sam2.1_hiera_tiny"
    checkpoint: str | None = None
    device: str | None = None
    dtype: str | None = None
    encoder_runtime: str | None = None  # auto, eager, openvino; None reads SEGANY_ENCODER_RUNTIME
    threads: int | None = None  # CPU threads for torch and OpenCV; None leaves their defaults
    amg: Mapping[str, Any] = field(default_factory=dict)  # MaskGenerator keyword arguments (not output_mode)
    text: str | None = None
    detector: str | None = None  # text mode: hub id or local directory; None means Grounding DINO tiny
    box_threshold: float | None = None
    text_threshold: float | None = None
    multimask: bool = False  # boxes/text: decode 3 candidates per box and keep the best

    def __post_init__(self) -> None:
        from segany.errors import InvalidInput

        if self.mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}", "mode")
        if self.mode == "text" and not (self.text or "").strip():
            raise InvalidInput("mode text needs --text, e.g. --text 'a dog. a cat.'", "text")

    def categories(self) -> list[str]:
        """Category names known before any image is seen (text phrases, or the generic one for auto)."""
        if self.mode == "text":
            from segany.predict.text.grounding import normalize_text

            return list(normalize_text(self.text or ""))
        return [DEFAULT_CATEGORY] if self.mode == "auto" else []

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"amg": dict(self.amg)}


class ImageAnnotator:
    """Holds the model (and generator or grounder) of one worker; `annotate` labels one image."""

    def __init__(self, config: AnnotatorConfig) -> None:
        import segany
        from segany import runtime

        self.config = config
        if config.threads:
            runtime.limit_cpu_threads(int(config.threads))
        self.model = segany.load_model(config.model, checkpoint=config.checkpoint, device=config.device,
                                       dtype=config.dtype, encoder_runtime=config.encoder_runtime)
        self.predictor = segany.Predictor(self.model)
        self.generator = None
        self.grounder = None
        if config.mode == "auto":
            self.generator = segany.MaskGenerator(self.predictor, **{**dict(config.amg), "output_mode": "coco_rle"})
        elif config.mode == "text":
            from segany.predict.text.grounding import DEFAULT_MODEL_ID, TextGrounder

            self.grounder = TextGrounder(config.detector or DEFAULT_MODEL_ID, box_threshold=config.box_threshold,
                                         text_threshold=config.text_threshold, device=config.device)

    @property
    def variant(self) -> str:
        return self.model.variant

    def annotate(self, rgb: np.ndarray, boxes: Sequence[BoxPrompt] = ()) -> list[dict[str, Any]]:
        """Records for one (H, W, 3) uint8 RGB image; `boxes` are used in boxes mode only."""
        if self.config.mode == "auto":
            return [_auto_record(record) for record in self.generator.generate(rgb)]
        if self.config.mode == "text":
            return self._text_records(rgb)
        return self._box_records(rgb, boxes)

    def _text_records(self, rgb: np.ndarray) -> list[dict[str, Any]]:
        import warnings

        from segany.predict.detections import NoDetectionsWarning
        from segany.predict.text.segment import segment_text

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoDetectionsWarning)  # an image without the phrase is normal here
            found = segment_text(self.predictor, rgb, self.config.text or "", self.grounder,
                                 multimask_output=self.config.multimask)
        confidences = found.confidences if found.confidences is not None else found.mask_scores
        return [
            _mask_record(found.masks[i], score=float(confidences[i]), category=found.class_names[i] or DEFAULT_CATEGORY,
                         mask_score=float(found.mask_scores[i]), box_xyxy=found.boxes_xyxy[i])
            for i in range(len(found))
        ]

    def _box_records(self, rgb: np.ndarray, boxes: Sequence[BoxPrompt]) -> list[dict[str, Any]]:
        if not boxes:
            return []
        from segany.predict.detections import masks_for_boxes

        boxes_xyxy = np.asarray([b.box_xyxy for b in boxes], dtype=np.float32).reshape(-1, 4)
        embedding = self.predictor.embed(rgb)
        masks, scores = masks_for_boxes(self.predictor, embedding, boxes_xyxy, self.config.multimask)
        return [
            _mask_record(masks[i], score=float(scores[i]) if box.score is None else float(box.score),
                         category=box.label or DEFAULT_CATEGORY, mask_score=float(scores[i]), box_xyxy=boxes_xyxy[i])
            for i, box in enumerate(boxes)
        ]


def _finite(value: float) -> float:
    # JSON has no NaN; a 0/0 stability score (an empty mask) becomes 0.
    return float(value) if math.isfinite(value) else 0.0


def _auto_record(record: Mapping[str, Any]) -> dict[str, Any]:
    rle = record["segmentation"]
    return {
        "segmentation": rle, "area": int(record["area"]), "bbox": rle_bbox_xywh(rle),
        "score": _finite(record["predicted_iou"]), "category": DEFAULT_CATEGORY,
        "stability_score": _finite(record["stability_score"]),
        "point_coords": [[float(v) for v in point] for point in record["point_coords"]],
        "crop_box": [float(v) for v in record["crop_box"]],
    }


def _mask_record(mask: np.ndarray, *, score: float, category: str, mask_score: float,
                 box_xyxy: np.ndarray) -> dict[str, Any]:
    from segany.io.rle import coco_encode

    rle = coco_encode(mask)
    return {
        "segmentation": rle, "area": int(mask.sum()), "bbox": rle_bbox_xywh(rle), "score": _finite(score),
        "category": str(category), "mask_score": _finite(mask_score), "box_xyxy": [float(v) for v in box_xyxy],
    }


def rle_bbox_xywh(rle: Mapping[str, Any]) -> list[float]:
    """[x, y, w, h] pixel extent of a COCO RLE mask (w = last column - first column + 1; zeros if empty)."""
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        from segany.errors import MissingExtra

        raise MissingExtra("coco", "pycocotools", "COCO output") from exc
    counts = rle["counts"]
    as_bytes = counts.encode("utf-8") if isinstance(counts, str) else counts
    box = mask_utils.toBbox({"size": [int(v) for v in rle["size"]], "counts": as_bytes})
    return [float(v) for v in box]
