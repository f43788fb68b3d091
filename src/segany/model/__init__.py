"""The SAM 2 network (image path, and the video path composed from it), its variants and official-weight loading."""
from segany.model.sam2 import SAM2ImageModel
from segany.model.variants import VariantSpec, VideoSpec, get_variant, list_variants
from segany.model.video import SAM2VideoModel
from segany.model.weights import load_model, load_video_model, map_official_keys

__all__ = ["SAM2ImageModel", "SAM2VideoModel", "VariantSpec", "VideoSpec", "get_variant", "list_variants", "load_model",
           "load_video_model", "map_official_keys"]
