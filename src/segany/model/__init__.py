"""The SAM 2 image network, its variants and official-weight loading."""
from segany.model.sam2 import SAM2ImageModel
from segany.model.variants import VariantSpec, get_variant, list_variants
from segany.model.weights import load_model, map_official_keys

__all__ = ["SAM2ImageModel", "VariantSpec", "get_variant", "list_variants", "load_model", "map_official_keys"]
