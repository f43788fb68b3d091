"""The eight official SAM 2 / SAM 2.1 image models as registered functions.

Each function returns a `VariantSpec`: the trunk's numbers plus where the official weights live.
The numbers are the facts of the official configs (`sam2/configs/sam2*/*.yaml`, with the Hiera class
defaults filling the gaps). The image path of 2.0 and 2.1 is the same network; 2.1 changed weights
and video-only parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from segany.model.hiera import HieraConfig


@dataclass(frozen=True)
class VariantSpec:
    name: str  # e.g. "sam2.1_hiera_tiny"
    hf_id: str  # Hugging Face repo holding the official checkpoint
    checkpoint_file: str  # file name in that repo and in the official release
    hiera: HieraConfig
    image_size: int = 1024
    d_model: int = 256

    @property
    def backbone_channel_list(self) -> list[int]:
        """Trunk stage channels, lowest resolution first (the neck's order)."""
        return self.hiera.channels[::-1]


_REGISTRY: dict[str, Callable[[], VariantSpec]] = {}

_TINY = HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                    window_pos_embed_bkg_spatial_size=(7, 7))
_SMALL = HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                     window_pos_embed_bkg_spatial_size=(7, 7))
_BASE_PLUS = HieraConfig(embed_dim=112, num_heads=2)  # the Hiera defaults are base_plus
_LARGE = HieraConfig(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                     window_spec=(8, 4, 16, 8), window_pos_embed_bkg_spatial_size=(7, 7))


def register(fn: Callable[[], VariantSpec]) -> Callable[[], VariantSpec]:
    _REGISTRY[fn().name] = fn
    return fn


def _spec(version: str, size: str, hiera: HieraConfig) -> VariantSpec:
    prefix = "sam2" if version == "2.0" else "sam2.1"
    return VariantSpec(
        name=f"{prefix}_hiera_{size}",
        hf_id=f"facebook/{prefix}-hiera-{size.replace('_', '-')}",
        checkpoint_file=f"{prefix}_hiera_{size}.pt",
        hiera=hiera,
    )


@register
def sam2_hiera_tiny() -> VariantSpec:
    return _spec("2.0", "tiny", _TINY)


@register
def sam2_hiera_small() -> VariantSpec:
    return _spec("2.0", "small", _SMALL)


@register
def sam2_hiera_base_plus() -> VariantSpec:
    return _spec("2.0", "base_plus", _BASE_PLUS)


@register
def sam2_hiera_large() -> VariantSpec:
    return _spec("2.0", "large", _LARGE)


@register
def sam2_1_hiera_tiny() -> VariantSpec:
    return _spec("2.1", "tiny", _TINY)


@register
def sam2_1_hiera_small() -> VariantSpec:
    return _spec("2.1", "small", _SMALL)


@register
def sam2_1_hiera_base_plus() -> VariantSpec:
    return _spec("2.1", "base_plus", _BASE_PLUS)


@register
def sam2_1_hiera_large() -> VariantSpec:
    return _spec("2.1", "large", _LARGE)


def list_variants() -> list[str]:
    return list(_REGISTRY)


def get_variant(name: str) -> VariantSpec | None:
    """A variant by name (`sam2.1_hiera_tiny`) or Hugging Face id (`facebook/sam2.1-hiera-tiny`); None if unknown."""
    if name in _REGISTRY:
        return _REGISTRY[name]()
    for fn in _REGISTRY.values():
        spec = fn()
        if spec.hf_id.lower() == name.lower():
            return spec
    return None


def variant_for_trunk(embed_dim: int, num_blocks: int, is_2_1: bool) -> VariantSpec | None:
    """Identify a variant from a checkpoint's trunk width and depth (to load a bare .pt file)."""
    for fn in _REGISTRY.values():
        spec = fn()
        if (spec.hiera.embed_dim, sum(spec.hiera.stages), spec.name.startswith("sam2.1")) == (embed_dim, num_blocks, is_2_1):
            return spec
    return None
