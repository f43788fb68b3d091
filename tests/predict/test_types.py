"""`Detections`: the supervision-shaped result of text and detector prompts, and its adapters."""
from __future__ import annotations

import numpy as np

from segany.predict.detections import parse_detections
from segany.predict.types import Detections


def test_detection_boxes_become_detections_with_their_labels() -> None:
    boxes = parse_detections([{"x": 10, "y": 10, "width": 4, "height": 6, "class": "cat", "class_id": 3,
                               "confidence": 0.9, "detection_id": "d1"},
                              {"x": 20, "y": 5, "width": 2, "height": 2, "class": "dog"}])
    found = boxes.to_detections()
    assert len(found) == 2 and found.mask is None
    np.testing.assert_allclose(found.xyxy[0], [8, 7, 12, 13])
    assert found.class_names == ["cat", "dog"] and found.class_id.tolist() == [3, -1]
    assert list(found.data["detection_id"]) == ["d1", None]


def test_select_and_with_masks_keep_columns_aligned() -> None:
    found = Detections(np.arange(12, dtype=np.float32).reshape(3, 4), confidence=np.array([0.1, 0.2, 0.3]),
                       class_id=np.array([0, 1, 2]), data={"class_name": np.array(["a", "b", "c"])})
    picked = found.select(np.array([2, 0]))
    assert picked.class_names == ["c", "a"] and picked.class_id.tolist() == [2, 0]
    masked = picked.with_masks(np.ones((2, 5, 6), bool), np.array([0.5, 0.25]))
    assert masked.mask.shape == (2, 5, 6) and masked.data["mask_score"].tolist() == [0.5, 0.25]
    assert found.mask is None  # frozen: the original is unchanged
