"""The SAM 2 network (image path, and the video path composed from it), its variants and official-weight loading."""
from .sam2 import SAM2ImageModel
from .variants import VariantSpec, VideoSpec, get_variant, list_variants
from .video import SAM2VideoModel
from .weights import load_model, load_video_model, map_official_keys

__all__ = ["SAM2ImageModel", "SAM2VideoModel", "VariantSpec", "VideoSpec", "get_variant", "list_variants", "load_model",
           "load_video_model", "map_official_keys"]
