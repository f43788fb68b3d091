"""Loading official SAM 2 checkpoints: key mapping, strict accounting, hub resolution, dtype choice."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Literal, Mapping

import torch

from segany.errors import CheckpointError, InvalidInput, ModelNotFound
from segany.model import hub
from segany.model.encoder_runtime import choose_runtime, load_openvino_encoder
from segany.runtime import cpu_flags, onednn_runs_avx512, tune_cpu_allocator
from segany.model.sam2 import SAM2ImageModel
from segany.model.video import SAM2VideoModel
from segany.model.variants import VariantSpec, get_variant, list_variants, variant_for_trunk

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

# Where a loaded model's weights came from, kept on the model as `model.weights`: "official" (the
# Hugging Face checkpoint of its variant), "file" (a checkpoint file the user gave), "random" (a file
# marked as randomly initialised, such as the one scripts/serve.sh writes offline: its masks are noise).
WeightsSource = Literal["official", "file", "random"]
# Top-level entry of a checkpoint dict (beside "model") that marks it as random weights.
RANDOM_MARKER_KEY = "segany_weights"
RANDOM_MARKER_VALUE = "random"

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


def _read_checkpoint_marked(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """(the `model` state dict, whether the file is marked as random weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            return load_file(str(path)), metadata.get(RANDOM_MARKER_KEY) == RANDOM_MARKER_VALUE
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file?): {exc}") from exc
    marked = False
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        marked = obj.get(RANDOM_MARKER_KEY) == RANDOM_MARKER_VALUE
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (expected {{'model': {{name: tensor}}}})")
    return obj, marked


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The `model` state dict of an official `.pt` (loaded with weights_only=True) or a `.safetensors` file."""
    return _read_checkpoint_marked(path)[0]


def is_random_checkpoint(path: str | os.PathLike) -> bool:
    """True when the checkpoint file is marked as random weights; cheap (memory-mapped, tensors not read)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return (handle.metadata() or {}).get(RANDOM_MARKER_KEY) == RANDOM_MARKER_VALUE
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - unreadable files are reported by the load itself
        return False
    return isinstance(obj, dict) and obj.get(RANDOM_MARKER_KEY) == RANDOM_MARKER_VALUE


def mark_random_checkpoint(path: str | os.PathLike) -> None:
    """Mark a `{"model": state_dict}` `.pt` file as random weights, so every model loaded from it says so."""
    path = Path(path)
    state = read_checkpoint(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": state, RANDOM_MARKER_KEY: RANDOM_MARKER_VALUE}, tmp)
    os.replace(tmp, path)


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


def fetch_hint(spec: VariantSpec) -> str:
    """How to supply `spec`'s official weights: the commands that fetch them and the flag that passes a file."""
    return (f"fetch them on a connected machine with `segany weights fetch {spec.name}` (or "
            f"`{hub.fetch_command(spec.hf_id, spec.checkpoint_file)}`), or pass the file with --checkpoint PATH "
            f"(env SEGANY_CHECKPOINT; library: checkpoint=PATH)")


def resolve_checkpoint(spec: VariantSpec) -> Path:
    """Path of the official checkpoint for `spec`, from the Hugging Face cache or by download.

    Offline (HF_HUB_OFFLINE) or with the hub unreachable it fails at once, naming the command that
    fetches the file; a failed download is remembered in the process, so later calls fail at once too.
    """
    try:
        return hub.download_file(spec.hf_id, spec.checkpoint_file, fetch_hint(spec))
    except ModelNotFound as error:
        raise ModelNotFound(f"{spec.name}: weights unavailable: {error}") from None


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 beats float32,
    and torch and oneDNN may use them: ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 (how an AVX2
    machine is emulated, or a kernel bug avoided) leave oneDNN unable to build bf16 linears at all."""
    return onednn_runs_avx512() and bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


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


# The README's GPU section installs a CUDA build with this command.
CUDA_INSTALL_HINT = "pip install torch --index-url https://download.pytorch.org/whl/cu128"


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device for `device` (None: cuda when available, else cpu), or InvalidInput saying how to fix it."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInput(f"device {str(device)!r} is not a torch device (cpu, cuda, cuda:1, mps): {exc}",
                           "device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:
            raise InvalidInput(
                f"device {str(device)!r}: this torch ({torch.__version__}) is a CPU-only build. Install a CUDA "
                f"build into this environment ({CUDA_INSTALL_HINT}; see the README's GPU section), or use "
                "--device cpu", "device")
        raise InvalidInput(
            f"device {str(device)!r}: torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no "
            "GPU (check `nvidia-smi`, the driver and CUDA_VISIBLE_DEVICES), or use --device cpu", "device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidInput(f"device {str(device)!r}: only {torch.cuda.device_count()} GPU(s) visible", "device")
    return dev


def _read_official(
    name_or_path: str | os.PathLike, checkpoint: str | os.PathLike | None
) -> tuple[VariantSpec, dict[str, torch.Tensor], Path, WeightsSource]:
    """(variant, official state dict, the file read, where its weights came from) for a variant name, hub id
    or checkpoint file."""
    spec = get_variant(str(name_or_path))
    official: dict[str, torch.Tensor] | None = None
    marked_random = False
    source: WeightsSource = "file"
    if spec is None:
        path = Path(name_or_path)
        if not path.is_file():
            raise ModelNotFound(
                f"unknown model {str(name_or_path)!r}: expected one of {', '.join(list_variants())}, "
                "a Hugging Face id such as facebook/sam2.1-hiera-tiny, or a checkpoint file"
            )
        checkpoint = checkpoint or path
        official, marked_random = _read_checkpoint_marked(checkpoint)
        spec = infer_variant(official)
        if spec is None:
            raise CheckpointError(f"{checkpoint} does not look like a SAM 2 checkpoint (no known Hiera trunk)")
    if checkpoint is None:
        checkpoint = resolve_checkpoint(spec)
        source = "official"
    if official is None:
        official, marked_random = _read_checkpoint_marked(checkpoint)
        found = infer_variant(official)
        if found is not None and found.hiera != spec.hiera:
            raise CheckpointError(f"{checkpoint} holds a {found.name} checkpoint, not {spec.name}")
    return spec, official, Path(checkpoint), "random" if marked_random else source


def _dtype_for(dev: torch.device, dtype: torch.dtype | str | None) -> torch.dtype:
    if dev.type == "cpu":
        tune_cpu_allocator()
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}.get(dtype.lower())
        if dtype is None:
            raise ValueError("dtype must be one of float32, bfloat16, float16")
    return dtype or default_dtype(dev)


def _cast_image_model(model: SAM2ImageModel, dtype: torch.dtype) -> None:
    if dtype != torch.float32:
        model.trunk.to(dtype)
        model.neck.to(dtype)
        model.mask_decoder.to(dtype)
        model.no_mem_embed.data = model.no_mem_embed.data.to(dtype)
        # The prompt encoder stays float32: its Fourier features take sin/cos of large arguments.


def _record_source(model: SAM2ImageModel, checkpoint: Path, weights: WeightsSource) -> None:
    model.weights = weights
    model.checkpoint_path = str(checkpoint)


def _build(model_class: type, load_strict, name_or_path: str | os.PathLike, checkpoint: str | os.PathLike | None,
           device: str | torch.device | None, dtype: torch.dtype | str | None):
    """`model_class(spec)` with the checkpoint's weights loaded by `load_strict`, on its device in eval mode;
    returns (model, the dtype to cast to, the file read, where its weights came from)."""
    dev = check_device(device)
    spec, official, path, weights = _read_official(name_or_path, checkpoint)
    dtype = _dtype_for(dev, dtype)
    with torch.device("meta"):
        model = model_class(spec)
    model = model.to_empty(device="cpu")
    load_strict(model, official, str(path))
    del official
    return model.to(dev).eval().requires_grad_(False), dtype, path, weights


def load_model(
    name_or_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    encoder_runtime: str | None = None,
) -> SAM2ImageModel:
    """Build a SAM 2 image model and load official weights.

    `name_or_path` is a variant name (`sam2.1_hiera_tiny`, see `list_variants()`), a Hugging Face id
    (`facebook/sam2.1-hiera-tiny`), or a local checkpoint file whose variant is inferred from its
    shapes. `checkpoint` overrides where the weights come from. `dtype` None picks bfloat16 where the
    hardware runs it natively (CUDA, AVX512-BF16/AMX CPUs) and float32 otherwise. The model records
    where its weights came from: `model.weights` is "official", "file" or "random" (`WeightsSource`),
    `model.checkpoint_path` the file read. `encoder_runtime` ("auto", "eager", "openvino"; None reads
    SEGANY_ENCODER_RUNTIME, default auto) says where image embeds run: auto compiles the encoder with OpenVINO,
    when it is installed, for bfloat16 on CPUs where that measured faster (AVX512-BF16 without AMX; see
    `segany.model.encoder_runtime`), caching the result on disk.
    """
    model, dtype, path, weights = _build(SAM2ImageModel, load_state_dict_strict, name_or_path, checkpoint, device,
                                         dtype)
    compiled = None
    if choose_runtime(encoder_runtime, model.device, dtype) == "openvino":
        compiled = load_openvino_encoder(model, dtype)  # from the float32 weights, before the cast
    _cast_image_model(model, dtype)
    if compiled is not None:
        compiled.bind(model)
        model.compiled_encoder = compiled
    _record_source(model, path, weights)
    return model


def load_video_model(
    name_or_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> SAM2VideoModel:
    """Build the SAM 2 video model (the image model plus memory modules) and load every key of the official
    checkpoint; arguments as `load_model`, except that `dtype` None means float32 on every device: tracked
    in bfloat16, masks drift from the official float32 ones frame after frame (mean mask IoU 0.977 over the
    video goldens, 0.945 on a reverse pass; `bench/bf16_accuracy.py --video`). `dtype` applies to the image
    encoder and mask decoder; the memory modules stay float32 (memories are stored in bfloat16 either way,
    as the official does)."""
    model, dtype, path, weights = _build(SAM2VideoModel, load_video_state_dict_strict, name_or_path, checkpoint,
                                         device, torch.float32 if dtype is None else dtype)
    _cast_image_model(model.image, dtype)
    _record_source(model.image, path, weights)
    return model
