"""The frozen result of a tracking step: every object's mask on one frame."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class FrameResult:
    """What `Session.add_*` and `Session.propagate` yield for one frame (the official `(frame_idx, obj_ids,
    video_res_masks)` plus the object scores).

    Objects are in `obj_ids` order (the order they were first prompted). An object with no output on this
    frame yet has logits and score -1024 (the official placeholder).
    """

    index: int  # frame index, 0-based
    obj_ids: tuple[int, ...]
    logits: np.ndarray  # (N, H, W) float32 mask logits at the video's resolution
    object_scores: np.ndarray  # (N,) float32 object-score logits; > 0: the object is visible

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool: logits > 0."""
        return self.logits > 0

    def mask(self, obj_id: int) -> np.ndarray:
        """(H, W) bool mask of one object."""
        return self.logits[self.obj_ids.index(obj_id)] > 0

    def to_dict(self) -> dict[int, np.ndarray]:
        """{obj_id: (H, W) bool mask}."""
        return {obj_id: self.logits[i] > 0 for i, obj_id in enumerate(self.obj_ids)}
