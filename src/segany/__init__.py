"""segany: self-hosted Segment Anything 2 image segmentation.

    import segany
    model = segany.load_model("sam2.1_hiera_tiny")
    predictor = segany.Predictor(model)
    emb = predictor.embed("photo.jpg")
    out = predictor.predict(emb, point_coords=[[500, 375]], point_labels=[1])
"""
from __future__ import annotations

from segany.errors import CheckpointError, InvalidImage, InvalidInput, InvalidPrompt, ModelNotFound, SeganyError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ImageEmbedding", "InvalidImage", "InvalidInput", "InvalidPrompt", "MaskGenerator",
    "ModelNotFound", "Prediction", "Predictor", "SAM2ImageModel", "SeganyError", "TextGrounder", "list_variants",
    "load_model", "segment_detections", "VideoPredictor", "load_video_model", "SAM2VideoModel", "FrameResult",
]

# Everything that needs torch imports on first use, so `import segany` (and `segany --help`) stays fast.
_LAZY = {
    "load_model": ("segany.model", "load_model"),
    "list_variants": ("segany.model", "list_variants"),
    "SAM2ImageModel": ("segany.model", "SAM2ImageModel"),
    "Predictor": ("segany.predict.predictor", "Predictor"),
    "ImageEmbedding": ("segany.predict.types", "ImageEmbedding"),
    "Prediction": ("segany.predict.types", "Prediction"),
    "MaskGenerator": ("segany.predict.amg.generator", "MaskGenerator"),
    "TextGrounder": ("segany.predict.text.grounding", "TextGrounder"),
    "segment_detections": ("segany.predict.detections", "segment_detections"),
    "VideoPredictor": ("segany.predict.video", "VideoPredictor"),
    "FrameResult": ("segany.predict.video", "FrameResult"),
    "load_video_model": ("segany.model", "load_video_model"),
    "SAM2VideoModel": ("segany.model", "SAM2VideoModel"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'segany' has no attribute {name!r}")
