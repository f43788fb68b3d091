"""Loading official SAM 2 checkpoints: key mapping, strict accounting, hub resolution, dtype choice."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from ..errors import CheckpointError, ModelNotFound
from ..runtime import tune_cpu_allocator
from .sam2 import SAM2ImageModel
from .video import SAM2VideoModel
from .variants import VariantSpec, get_variant, list_variants, variant_for_trunk

# Checkpoint entries of the video model that the image path never uses. Listed once, explicitly:
# anything else that fails to map is reported as an unexpected key.
VIDEO_ONLY_PREFIXES = (
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "mask_downsample.",
    "memory_attention.",
    "memory_encoder.",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
)

# Official prefix -> segany module path.
KEY_RENAMES = (
    ("image_encoder.trunk.", "trunk."),
    ("image_encoder.neck.", "neck."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("sam_mask_decoder.", "mask_decoder."),
)


def _is_video_only(key: str) -> bool:
    return any(key.startswith(p) if p.endswith(".") else key == p for p in VIDEO_ONLY_PREFIXES)


def map_official_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official checkpoint `model` dict -> (segany state dict, skipped video-only keys). Pure function.

    Keys that are neither mapped nor video-only pass through unchanged so strict loading names them.
    """
    mapped: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        if _is_video_only(key):
            skipped.append(key)
            continue
        new_key = key
        for old, new in KEY_RENAMES:
            if key.startswith(old):
                new_key = new + key[len(old):]
                break
        mapped[new_key] = value
    return mapped, skipped


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The `model` state dict of an official `.pt` (loaded with weights_only=True) or a `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file?): {exc}") from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (expected {{'model': {{name: tensor}}}})")
    return obj


def infer_variant(state_dict: Mapping[str, torch.Tensor]) -> VariantSpec | None:
    """The variant whose trunk matches the checkpoint's patch-embedding width and block count."""
    proj = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if proj is None:
        return None
    blocks = {k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")}
    is_2_1 = "no_obj_embed_spatial" in state_dict or any(k.startswith("obj_ptr_tpos_proj.") for k in state_dict)
    return variant_for_trunk(proj.shape[0], len(blocks), is_2_1)


def _key_problems(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of `given` against `expected`, as message parts (empty: it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [
        f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    problems = []
    for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f" (and {len(keys) - 5} more)" if len(keys) > 5 else "")
            problems.append(f"{len(keys)} {title}: {shown}")
    return problems


def load_state_dict_strict(model: SAM2ImageModel, official: Mapping[str, torch.Tensor], source: str) -> None:
    """Load an official state dict, failing with a message that names missing, unexpected or mis-shaped keys."""
    mapped, _ = map_official_keys(official)
    problems = _key_problems(model.state_dict(), mapped)
    if problems:
        raise CheckpointError(f"{source} does not fit {model.variant}: " + "; ".join(problems))
    model.load_state_dict(mapped, strict=True)


def load_video_state_dict_strict(model: SAM2VideoModel, official: Mapping[str, torch.Tensor], source: str) -> None:
    """Load every key of an official checkpoint into the video model: the image keys through the same remap as
    the image path, the video-only keys (`VIDEO_ONLY_PREFIXES`) under their own names. Names any key that
    is missing, unexpected or mis-shaped in either part."""
    mapped, video_keys = map_official_keys(official)
    video = {k: official[k] for k in video_keys}
    expected_video = {k: v for k, v in model.state_dict().items() if not k.startswith("image.")}
    problems = _key_problems(model.image.state_dict(), mapped) + _key_problems(expected_video, video)
    if problems:
        raise CheckpointError(f"{source} does not fit the {model.variant} video model: " + "; ".join(problems))
    model.load_state_dict({**{f"image.{k}": v for k, v in mapped.items()}, **video}, strict=True)


def resolve_checkpoint(spec: VariantSpec) -> Path:
    """Path of the official checkpoint for `spec`, from the Hugging Face cache or by download.

    Offline (HF_HUB_OFFLINE set) or unreachable hub: fails at once with how to supply the file.
    """
    from huggingface_hub import hf_hub_download

    how = (
        f"download {spec.checkpoint_file} from https://huggingface.co/{spec.hf_id} and pass it as "
        f"checkpoint=PATH (CLI: --checkpoint PATH), or place it in the Hugging Face cache"
    )
    try:
        return Path(hf_hub_download(spec.hf_id, spec.checkpoint_file, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelNotFound(f"{spec.name}: weights are not cached and HF_HUB_OFFLINE is set; {how}")
    try:
        return Path(hf_hub_download(spec.hf_id, spec.checkpoint_file, etag_timeout=5))
    except Exception as exc:  # network errors, missing repo or file: all mean "not available"
        raise ModelNotFound(f"{spec.name}: could not fetch {spec.hf_id}/{spec.checkpoint_file} ({type(exc).__name__}); {how}") from exc


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 beats float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _read_official(
    name_or_path: str | os.PathLike, checkpoint: str | os.PathLike | None
) -> tuple[VariantSpec, dict[str, torch.Tensor], str]:
    """(variant, official state dict, where it came from) for a variant name, hub id or checkpoint file."""
    spec = get_variant(str(name_or_path))
    official: dict[str, torch.Tensor] | None = None
    if spec is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise ModelNotFound(
                f"unknown model {str(name_or_path)!r}: expected one of {', '.join(list_variants())}, "
                "a Hugging Face id such as facebook/sam2.1-hiera-tiny, or a checkpoint file"
            )
        checkpoint = checkpoint or path
        official = read_checkpoint(checkpoint)
        spec = infer_variant(official)
        if spec is None:
            raise CheckpointError(f"{checkpoint} does not look like a SAM 2 checkpoint (no known Hiera trunk)")
    if checkpoint is None:
        checkpoint = resolve_checkpoint(spec)
    if official is None:
        official = read_checkpoint(checkpoint)
        found = infer_variant(official)
        if found is not None and found.hiera != spec.hiera:
            raise CheckpointError(f"{checkpoint} holds a {found.name} checkpoint, not {spec.name}")
    return spec, official, str(checkpoint)


def _device_and_dtype(device: str | torch.device | None, dtype: torch.dtype | str | None) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cpu":
        tune_cpu_allocator()
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}.get(dtype.lower())
        if dtype is None:
            raise ValueError("dtype must be one of float32, bfloat16, float16")
    return dev, dtype or default_dtype(dev)


def _cast_image_model(model: SAM2ImageModel, dtype: torch.dtype) -> None:
    if dtype != torch.float32:
        model.trunk.to(dtype)
        model.neck.to(dtype)
        model.mask_decoder.to(dtype)
        model.no_mem_embed.data = model.no_mem_embed.data.to(dtype)
        # The prompt encoder stays float32: its Fourier features take sin/cos of large arguments.


def load_model(
    name_or_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> SAM2ImageModel:
    """Build a SAM 2 image model and load official weights.

    `name_or_path` is a variant name (`sam2.1_hiera_tiny`, see `list_variants()`), a Hugging Face id
    (`facebook/sam2.1-hiera-tiny`), or a local checkpoint file whose variant is inferred from its
    shapes. `checkpoint` overrides where the weights come from. `dtype` None picks bfloat16 where the
    hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs) and float32 otherwise.
    """
    spec, official, source = _read_official(name_or_path, checkpoint)
    dev, dtype = _device_and_dtype(device, dtype)
    with torch.device("meta"):
        model = SAM2ImageModel(spec)
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, official, source)
    del official
    model = model.to(dev).eval().requires_grad_(False)
    _cast_image_model(model, dtype)
    return model


def load_video_model(
    name_or_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> SAM2VideoModel:
    """Build the SAM 2 video model (the image model plus memory modules) and load every key of the official
    checkpoint; arguments as `load_model`. `dtype` applies to the image encoder and mask decoder; the
    memory modules stay float32 (memories are stored in bfloat16 either way, as the official does)."""
    spec, official, source = _read_official(name_or_path, checkpoint)
    dev, dtype = _device_and_dtype(device, dtype)
    with torch.device("meta"):
        model = SAM2VideoModel(spec)
    model = model.to_empty(device="cpu")
    load_video_state_dict_strict(model, official, source)
    del official
    model = model.to(dev).eval().requires_grad_(False)
    _cast_image_model(model.image, dtype)
    return model
