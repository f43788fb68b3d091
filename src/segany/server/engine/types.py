"""The engine's typed inputs and outputs, what dialects decode their wire formats into and encode from."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segany.predict.types import ImageEmbedding


@dataclass(frozen=True, eq=False)
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    digest: str  # image_digest(rgb): the cache key and the native image_id

    @property
    def size_hw(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


@dataclass(frozen=True, eq=False)
class EmbedResult:
    embedding: ImageEmbedding
    image_id: str
    variant: str
    cached: bool  # True when this request started no embed (cache hit, or joined one in flight)
    embed_ms: float


@dataclass(frozen=True, eq=False)
class Prompt:
    """One prompt in pixels of the original image."""

    points_xy: np.ndarray | None = None  # (N, 2) float
    labels: np.ndarray | None = None  # (N,) int: 1 positive, 0 negative, -1 padding
    box_xyxy: np.ndarray | None = None  # (4,) float
    mask_input: np.ndarray | None = None  # (1, 256, 256) float32 logits

    def signature(self) -> tuple[int, bool, bool]:
        return (0 if self.points_xy is None else len(self.points_xy), self.box_xyxy is not None,
                self.mask_input is not None)


@dataclass(frozen=True, eq=False)
class PromptOutput:
    """One prompt's result: C masks (3 with multimask, else 1) in the decoder's order."""

    masks: np.ndarray  # (C, H, W) bool, or float32 logits when return_logits
    scores: np.ndarray  # (C,) float32 predicted IoU
    low_res_logits: np.ndarray  # (C, 256, 256) float32, clamped to +-32
