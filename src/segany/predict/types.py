"""Frozen result types: the predictor's embedding and prediction, and labelled detections with masks."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from segany.errors import MissingExtra


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """Everything the mask decoder needs from one image; computed once, then shared read-only.

    Never mutated after creation, so one instance can be cached and used by many threads at once.
    """

    image_embed: torch.Tensor  # (1, 256, 64, 64), no_mem_embed already added
    high_res_feats: tuple[torch.Tensor, torch.Tensor]  # (1, 32, 256, 256), (1, 64, 128, 128)
    orig_hw: tuple[int, int]  # size of the original image, (height, width)
    variant: str  # the model that produced it; an embedding only fits that model's decoder

    @property
    def nbytes(self) -> int:
        tensors = (self.image_embed, *self.high_res_feats)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Output of `Predictor.predict`, shaped like the official `SAM2ImagePredictor.predict`.

    For one prompt (or a batch of one) the leading batch axis is dropped: masks (C, H, W); for B
    prompts masks are (B, C, H, W). C is 3 with multimask output, else 1.
    """

    masks: np.ndarray  # bool, or float32 logits when return_logits
    scores: np.ndarray  # float32 predicted IoU, (C,) or (B, C)
    low_res_logits: np.ndarray  # float32, (C, 256, 256) or (B, C, 256, 256), clamped to +-32


@dataclass(frozen=True, eq=False)
class Detections:
    """N labelled boxes, with one mask each once segmented; shaped like `supervision.Detections`.

    The result type of text and detector prompts in the server (the library's `segment_detections` and
    `segment_text` return `LabelledMasks`, which converts with `to_detections`).
    """

    xyxy: np.ndarray  # (N, 4) float32 pixels of the image
    mask: np.ndarray | None = None  # (N, H, W) bool, None before segmentation
    confidence: np.ndarray | None = None  # (N,) detector scores, NaN where one detection lacks it
    class_id: np.ndarray | None = None  # (N,) int64, -1 where one detection lacks it
    # Per-detection columns of length N: class_name, detection_id, mask_score, and any carried field.
    data: Mapping[str, np.ndarray] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)  # fields of the whole set (e.g. phrases)

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @property
    def class_names(self) -> list[str | None]:
        names = self.data.get("class_name")
        return [None] * len(self) if names is None else [None if n is None else str(n) for n in names]

    def select(self, keep: np.ndarray) -> Detections:
        """The subset picked by a boolean (N,) mask or an index array, in that order."""
        idx = np.arange(len(self))[keep]

        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[idx]

        return replace(self, xyxy=self.xyxy[idx], mask=pick(self.mask), confidence=pick(self.confidence),
                       class_id=pick(self.class_id), data={key: value[idx] for key, value in self.data.items()})

    def with_masks(self, mask: np.ndarray, mask_score: np.ndarray) -> Detections:
        """These detections with their (N, H, W) bool masks and (N,) SAM 2 scores (`data["mask_score"]`)."""
        return replace(self, mask=mask, data={**self.data, "mask_score": np.asarray(mask_score, np.float32)})

    def to_supervision(self) -> Any:
        """`supervision.Detections` (segany[supervision]) with the same arrays."""
        try:
            import supervision
        except ImportError as exc:
            raise MissingExtra("supervision", "supervision", "Converting to supervision.Detections") from exc
        return supervision.Detections(xyxy=self.xyxy.copy(), mask=None if self.mask is None else self.mask.copy(),
                                      confidence=None if self.confidence is None else self.confidence.copy(),
                                      class_id=None if self.class_id is None else self.class_id.copy(),
                                      data={key: np.asarray(value) for key, value in self.data.items()},
                                      metadata=dict(self.metadata))
