"""Label Studio request shapes and the expected masks, shared by the contract and end-to-end tests."""
from __future__ import annotations

from typing import Any

import numpy as np

# The segment_anything_2_image example's config, reduced to its three control tags, plus a polygon tag.
CONFIG = """<View>
  <BrushLabels name="tag" toName="image"><Label value="cat" background="#FFA39E"/></BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true"><Label value="cat"/></KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true"><Label value="cat"/></RectangleLabels>
  <Image name="image" value="$image" zoom="true"/>
</View>"""
POLYGON_CONFIG = CONFIG.replace('<Image name="image"', '<PolygonLabels name="poly" toName="image">'
                                '<Label value="cat"/></PolygonLabels>\n  <Image name="image"')
WIDTH, HEIGHT = 451, 300  # chelsea.png


def keypoint(x: float, y: float, positive: bool = True) -> dict[str, Any]:
    """A smart keypoint as Label Studio's editor sends it in `context.result` (percent coordinates)."""
    return {"id": f"k{x:g}", "type": "keypointlabels", "from_name": "tag2", "to_name": "image", "origin": "manual",
            "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0, "is_positive": positive,
            "value": {"x": x / WIDTH * 100, "y": y / HEIGHT * 100, "width": 0.33, "keypointlabels": ["cat"]}}


def rectangle(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"id": "r1", "type": "rectanglelabels", "from_name": "tag3", "to_name": "image", "origin": "manual",
            "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0,
            "value": {"x": x0 / WIDTH * 100, "y": y0 / HEIGHT * 100, "width": (x1 - x0) / WIDTH * 100,
                      "height": (y1 - y0) / HEIGHT * 100, "rotation": 0, "rectanglelabels": ["cat"]}}


def best_mask(predictor: Any, image_bytes: bytes, **prompt: Any) -> np.ndarray:
    """The mask segany answers with: the best-scoring of the three for the same prompt in pixels."""
    prediction = predictor.predict(predictor.embed(image_bytes), multimask_output=True, **prompt)
    return prediction.masks[int(np.argmax(prediction.scores))]


def pixels(x: float, y: float) -> list[float]:
    """A click position as segany reads it back from Label Studio's percent."""
    return [x / WIDTH * 100 / 100 * WIDTH, y / HEIGHT * 100 / 100 * HEIGHT]
