"""The eight official SAM 2 / SAM 2.1 models as registered functions.

Each function returns a `VariantSpec`: the trunk's numbers, the video switches, and where the official
weights live. The numbers are the facts of the official configs (`sam2/configs/sam2*/*.yaml`, with the
Hiera and `SAM2Base` class defaults filling the gaps). The image path of 2.0 and 2.1 is the same
network; 2.1 changed weights and video-only parts (`VideoSpec`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from segany.model.hiera import HieraConfig


@dataclass(frozen=True)
class VideoSpec:
    """The video half's switches (memory attention, memory encoder, object pointers) as numbers and flags.

    Every variant of one release shares these; 2.1 differs from 2.0 in the last four fields.
    """

    num_maskmem: int = 7  # memories attended per frame: the conditioning frames' plus 6 previous frames'
    mem_dim: int = 64  # channels of a memory (the memory encoder's out_proj)
    memory_attention_layers: int = 4
    memory_attention_ffn_dim: int = 2048
    rope_theta: float = 10000.0
    memory_temporal_stride: int = 1  # `memory_temporal_stride_for_eval`
    max_cond_frames_in_attn: int | None = None  # None: attend to every conditioning frame (official -1)
    max_obj_ptrs_in_encoder: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    # `build_sam2_video_predictor(apply_postprocessing=True)` turns this on: prompted frames are encoded into
    # memory from their thresholded mask, exactly what the user saw.
    binarize_mask_from_pts_for_mem_enc: bool = True
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    no_obj_embed_spatial: bool = False  # 2.1: a learned vector added to memories of frames without the object
    add_tpos_enc_to_obj_ptrs: bool = False  # 2.1: temporal encoding of object pointers...
    proj_tpos_enc_in_obj_ptrs: bool = False  # ...projected by `obj_ptr_tpos_proj`...
    use_signed_tpos_enc_to_obj_ptrs: bool = False  # ...with signed frame distances


VIDEO_2_0 = VideoSpec()
VIDEO_2_1 = VideoSpec(no_obj_embed_spatial=True, add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True,
                      use_signed_tpos_enc_to_obj_ptrs=True)


@dataclass(frozen=True)
class VariantSpec:
    name: str  # e.g. "sam2.1_hiera_tiny"
    hf_id: str  # Hugging Face repo holding the official checkpoint
    checkpoint_file: str  # file name in that repo and in the official release
    hiera: HieraConfig
    image_size: int = 1024
    d_model: int = 256
    video: VideoSpec = VIDEO_2_0

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
        video=VIDEO_2_0 if version == "2.0" else VIDEO_2_1,
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
