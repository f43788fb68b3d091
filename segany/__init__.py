"""segany: self-hosted Segment Anything 2 image segmentation.

    import segany
    model = segany.load_model("sam2.1_hiera_tiny")
    predictor = segany.Predictor(model)
    emb = predictor.embed("photo.jpg")
    out = predictor.predict(emb, point_coords=[[500, 375]], point_labels=[1])
"""
from __future__ import annotations

from .errors import CheckpointError, InvalidImage, InvalidInput, InvalidPrompt, ModelNotFound, SeganyError
from .model import SAM2ImageModel, list_variants, load_model
from .predict.predictor import Predictor
from .predict.types import ImageEmbedding, Prediction

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ImageEmbedding", "InvalidImage", "InvalidInput", "InvalidPrompt", "ModelNotFound",
    "Prediction", "Predictor", "SAM2ImageModel", "SeganyError", "list_variants", "load_model",
]


def __getattr__(name: str):
    # Heavier or optional parts import on first use so `import segany` stays light.
    if name == "MaskGenerator":
        from .predict.amg import MaskGenerator

        return MaskGenerator
    if name == "TextGrounder":
        from .predict.grounding import TextGrounder

        return TextGrounder
    if name == "segment_detections":
        from .predict.detections import segment_detections

        return segment_detections
    raise AttributeError(f"module 'segany' has no attribute {name!r}")
