"""Where the image encoder runs: segany's torch modules eagerly, or the same modules exported to OpenVINO.

Chosen by measurement (`bench/openvino_encoder.py`, tables in bench/README.md): on a 2-core AMD EPYC with
AVX512-BF16 and no AMX, OpenVINO's bfloat16 encoder ran 1.21-1.34x faster than eager bfloat16 (69-72% of the
bf16 GEMM roofline against eager's 55-58%), nearly all of it in attention, where its kernel took 92 ms against
torch's 197 ms on the global blocks' shape. On an AMX Xeon it was 10% slower than eager, and in float32 it was
slower on both. So `auto` picks OpenVINO only for bfloat16 on CPUs with AVX512-BF16 and without AMX; `eager`
and `openvino` force either (`load_model(encoder_runtime=...)`, env SEGANY_ENCODER_RUNTIME, CLI
--encoder-runtime).

There is one model definition: the OpenVINO graph is traced from the torch modules (`fused.py` steps aside
under tracing), from the float32 weights; the precision is a compile option. Converting takes tens of seconds
(18 s for tiny, 33 s for base_plus), so the converted graph is kept under `cache_root()`, one entry per
(OpenVINO, torch and segany versions, CPU features, variant, input size, weights), written to a temporary
folder and renamed into place so that processes starting together never read half an entry. OpenVINO's own
CACHE_DIR keeps the compiled blob in the entry's `compiled/<precision>` folder (keyed by thread count inside); a
later start loads both in a few seconds. A cache entry that does not load is converted again, and a
conversion or compile that fails leaves the model eager; each says so in one warning. Entries for other
versions, weights or sizes are never read again once superseded, so the cache is held to a size budget
(`SEGANY_OPENVINO_CACHE_GB`, default 10) by removing the least recently loaded entries first.

The compiled encoder serves whole-image embeds only: video tracking runs `encode_levels` under `fused.plain()`,
for the official order of operations, and stays eager.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from segany.errors import InvalidInput, MissingExtra
from segany.model import fused
from segany.runtime import cpu_flags, onednn_runs_avx512

if TYPE_CHECKING:
    from segany.model.sam2 import SAM2ImageModel

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "eager", "openvino")
ENV_VAR = "SEGANY_ENCODER_RUNTIME"
# Bumped when the exported graph changes for the same weights (a new output, a different trace).
GRAPH_VERSION = 1
# CPU features that change what OpenVINO compiles; part of the cache key, because a cache folder can outlive
# the machine (a home directory on a network share, a VM that moves between hosts).
_KEY_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
_PRECISION = {torch.float32: "f32", torch.bfloat16: "bf16"}
# An entry holds the float32 graph and a compiled blob per precision: ~0.4 GB for tiny, ~2.5 GB for large.
CACHE_BUDGET_ENV = "SEGANY_OPENVINO_CACHE_GB"
DEFAULT_CACHE_BUDGET_GB = 10.0
# A staging folder this old belongs to a conversion that died; a live one is renamed within minutes.
_STALE_STAGING_S = 24 * 3600


class EncoderRuntimeWarning(UserWarning):
    """The OpenVINO encoder could not be used as asked (the model runs eagerly), or its cache was rebuilt."""


def import_openvino() -> Any:
    """The `openvino` module, with its usage telemetry off.

    `import openvino` sends an event to Google Analytics (the model converter's import hook) unless a
    consent file in ~/intel says no; segany is self-hosted and sends nothing off the machine, so it hides the
    `openvino_telemetry` module and OpenVINO falls back to its own no-op stand-in. Where openvino was already
    imported, or the telemetry module was, that choice was someone else's and stays.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def choose_runtime(requested: str | None, device: torch.device, dtype: torch.dtype) -> Literal["eager", "openvino"]:
    """The runtime the image encoder gets: `requested` ("auto", "eager", "openvino"; None reads SEGANY_ENCODER_RUNTIME,
    default auto) resolved for the model's device and dtype. Raises InvalidInput when OpenVINO is asked for where it
    cannot run, MissingExtra where it is not installed."""
    name = (requested or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if name not in RUNTIMES:
        raise InvalidInput(f"encoder runtime {name!r} is not one of {', '.join(RUNTIMES)} (argument encoder_runtime, "
                           f"--encoder-runtime or {ENV_VAR})", "encoder_runtime")
    if name == "eager":
        return "eager"
    if name == "openvino":
        if device.type != "cpu":
            raise InvalidInput(f"encoder runtime openvino runs on the CPU, not on {device}: use --device cpu or "
                               "--encoder-runtime eager", "encoder_runtime")
        if dtype not in _PRECISION:
            raise InvalidInput(f"encoder runtime openvino runs float32 or bfloat16, not {dtype}", "encoder_runtime")
        if not openvino_installed():
            raise MissingExtra("openvino", "openvino", "The encoder runtime openvino")
        return "openvino"
    flags = cpu_flags()
    measured_faster = (device.type == "cpu" and dtype == torch.bfloat16 and onednn_runs_avx512()
                       and "avx512_bf16" in flags and "amx_bf16" not in flags)
    return "openvino" if measured_faster and openvino_installed() else "eager"


def cache_root() -> Path:
    """$XDG_CACHE_HOME/segany/openvino, or ~/.cache/segany/openvino."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "segany" / "openvino"


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of every parameter and buffer's name, dtype, shape and bytes (0.2 s for tiny, ~1 s for large)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def cache_key(model: SAM2ImageModel, openvino_version: str) -> dict[str, Any]:
    """What invalidates a converted encoder, as the fields written beside it in key.json."""
    import segany

    flags = cpu_flags()
    return {
        "graph_version": GRAPH_VERSION,
        "openvino": openvino_version,
        "torch": torch.__version__,
        "segany": segany.__version__,
        "isa": [torch.backends.cpu.get_cpu_capability(), *(f for f in _KEY_FLAGS if f in flags)],
        "variant": model.variant,
        "image_size": model.image_size,
        "weights": weights_digest(model),
    }


def _entry_name(key: dict[str, Any]) -> str:
    fields = json.dumps(key, sort_keys=True).encode()
    return f"{key['variant']}-{hashlib.blake2b(fields, digest_size=8).hexdigest()}"


def _weights_identity(model: torch.nn.Module) -> tuple:
    """Changes when any weight is replaced or written in place (a new state dict, `.to()`, a copy), or is made
    to want gradients (training: the compiled graph has no backward)."""
    return tuple((p.data_ptr(), p._version, p.dtype, p.requires_grad) for p in model.parameters())


class _TracedEncoder(torch.nn.Module):
    """`encode_image` as a forward, which is what converters trace."""

    def __init__(self, model: SAM2ImageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images)


class OpenVinoEncoder:
    """A compiled encoder bound to one model's weights; `model.encode_image` hands its whole-image embeds here.

    Calls are serialised on one infer request: on a CPU one embed already uses every core, and the request's
    output buffers are reused instead of faulted in again each call.
    """

    def __init__(self, compiled: Any, dtype: torch.dtype, image_size: int) -> None:
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self.dtype = dtype
        self.image_size = image_size
        self._weights: tuple | None = None

    def bind(self, model: SAM2ImageModel) -> None:
        """Serve `model` as its weights are now (after the cast to the compute dtype)."""
        self._weights = _weights_identity(model)

    def serves(self, model: SAM2ImageModel, images: torch.Tensor) -> bool:
        """Whether this call is one the compiled graph computes as the eager modules would: CPU images of the
        compiled size through the same, unchanged weights, outside `fused.plain()`, tracing and autograd."""
        s = self.image_size
        return (
            images.device.type == "cpu"
            and images.dim() == 4 and tuple(images.shape[1:]) == (3, s, s)
            and not fused.in_plain()
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not (torch.is_grad_enabled() and images.requires_grad)
            and _weights_identity(model) == self._weights  # also each weight's dtype, as bound after the cast
        )

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, S, S) normalised images -> `encode_image`'s three outputs, in the model's dtype and in the eager
        encoder's channels-last layout, one image at a time."""
        per_image = []
        for image in images.float().contiguous().numpy():
            with self._lock:
                outputs = self._request.infer([image[None]])
                # One copy out of the request's buffers, which its next call overwrites, into the layout the
                # decoder reads fastest: the eager neck's channels-last (a 64-box decode took 9% longer on
                # contiguous NCHW features, 2-core EPYC, bfloat16).
                per_image.append([torch.from_numpy(out).to(self.dtype, memory_format=torch.channels_last)
                                  for out in outputs.values()])
        return tuple(torch.cat(parts) if len(parts) > 1 else parts[0]  # type: ignore[return-value]
                     for parts in zip(*per_image))

    # A model holding a compiled encoder can still be copied and pickled (torch.save, Ray): a copy has other
    # weights, so `serves` turns it away anyway, and the unpickled model runs eagerly.
    def __deepcopy__(self, memo: dict) -> OpenVinoEncoder:
        return self

    def __reduce__(self) -> tuple:
        return (_unpickled, ())


def _unpickled() -> None:
    return None


def _convert(model: SAM2ImageModel, ov: Any) -> Any:
    example = torch.zeros(1, 3, model.image_size, model.image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns where Python control flow reads a shape; every shape is fixed by the input size,
        # which is in the cache key. torch 2.13 also calls `jit.trace` deprecated; it is what OpenVINO's own
        # converter runs on a module, and `torch.export` cannot trace the encoder's weight-keyed caches yet.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning)
        # check_trace would run the encoder once more only to compare the trace with itself.
        traced = torch.jit.trace(_TracedEncoder(model), example, check_trace=False)
        return ov.convert_model(traced, example_input=example)


def _save_entry(graph: Any, key: dict[str, Any], entry: Path, ov: Any) -> None:
    """Write the converted graph to a temporary folder beside `entry`, then rename it into place; where another
    process got there first, keep theirs."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = entry.parent / f".{entry.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        ov.save_model(graph, str(staging / "encoder.xml"), compress_to_fp16=False)
        (staging / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(staging, entry)
        except OSError:
            if not (entry / "encoder.xml").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _compile(ov: Any, entry: Path, dtype: torch.dtype) -> Any:
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION[dtype],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        # One blob folder per precision: on an AMX Xeon, OpenVINO 2026.4 crashed running a bf16 model compiled
        # into the folder that already held the same graph's f32 blob.
        "CACHE_DIR": str(entry / "compiled" / _PRECISION[dtype]),
    }
    return ov.Core().compile_model(str(entry / "encoder.xml"), "CPU", config)


def cache_budget_bytes() -> int:
    """The cache's size budget from SEGANY_OPENVINO_CACHE_GB (default 10); InvalidInput for a value that is not
    a non-negative number."""
    raw = os.environ.get(CACHE_BUDGET_ENV, "").strip()
    try:
        gigabytes = float(raw) if raw else DEFAULT_CACHE_BUDGET_GB
    except ValueError:
        gigabytes = -1.0
    if not gigabytes >= 0:  # also NaN
        raise InvalidInput(f"{CACHE_BUDGET_ENV}={raw!r} is not a size in GB (a number >= 0)", CACHE_BUDGET_ENV)
    return int(gigabytes * 1e9)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _last_used(entry: Path) -> float:
    """When the entry was last loaded: its key.json's mtime, which every load touches."""
    try:
        return (entry / "key.json").stat().st_mtime
    except OSError:
        return entry.stat().st_mtime


def evict(root: Path, keep: Path, budget_bytes: int) -> list[Path]:
    """Remove the least recently loaded entries under `root` until the rest fit in `budget_bytes`; `keep` (the
    entry in use) stays whatever its size. Staging folders of conversions that died are removed too. Returns
    what was removed."""
    removed = []
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        if not path.is_dir() or path == keep:
            continue
        if path.name.startswith("."):
            if time.time() - path.stat().st_mtime > _STALE_STAGING_S:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            continue
        entries.append(path)
    used = _folder_bytes(keep) if keep.is_dir() else 0
    for last_used, entry in sorted(((_last_used(e), e) for e in entries), reverse=True):
        size = _folder_bytes(entry)
        if used + size <= budget_bytes:
            used += size
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info("removed the OpenVINO cache entry %s (%.2f GB, last loaded %s) to keep the cache under %.1f GB "
                 "(%s)", entry.name, size / 1e9, time.strftime("%Y-%m-%d", time.localtime(last_used)),
                 budget_bytes / 1e9, CACHE_BUDGET_ENV)
    return removed


def _mark_used(entry: Path, root: Path, budget_bytes: int) -> None:
    """Record this load for the eviction order, then hold the cache to its budget."""
    try:
        os.utime(entry / "key.json")
        evict(root, entry, budget_bytes)
    except OSError as error:  # a read-only or shared cache still serves its entries
        log.info("could not update the OpenVINO cache at %s (%s)", root, error)


def load_openvino_encoder(model: SAM2ImageModel, dtype: torch.dtype,
                          root: Path | None = None) -> OpenVinoEncoder | None:
    """The OpenVINO encoder of `model` (float32, before its cast to `dtype`), from the cache under `root`
    (default `cache_root()`) or converted and cached now; None, after one EncoderRuntimeWarning, where it
    cannot be built. Bind the result to the model once it is cast."""
    ov = import_openvino()
    what = f"the {model.variant} image encoder ({_PRECISION[dtype]}, {model.image_size}x{model.image_size})"
    budget = cache_budget_bytes()  # a malformed budget fails here, before minutes of conversion
    key = cache_key(model, ov.__version__)
    root = root or cache_root()
    entry = root / _entry_name(key)
    rebuilt = None
    started = time.perf_counter()
    if (entry / "encoder.xml").is_file():
        try:
            compiled = _compile(ov, entry, dtype)
            log.info("loaded %s for OpenVINO from %s in %.1f s", what, entry, time.perf_counter() - started)
            _mark_used(entry, root, budget)
            return OpenVinoEncoder(compiled, dtype, model.image_size)
        except Exception as error:  # noqa: BLE001 - whatever a damaged entry raises, the answer is a new one
            rebuilt = f"the cached OpenVINO graph at {entry} did not load ({error}); converted it again"
            shutil.rmtree(entry, ignore_errors=True)
    log.info("converting %s to OpenVINO, once per model, CPU and version (cached in %s) ...", what, entry)
    try:
        _save_entry(_convert(model, ov), key, entry, ov)
        converted = time.perf_counter() - started
        compiled = _compile(ov, entry, dtype)
    except Exception as error:  # noqa: BLE001 - any failure here leaves a working eager model
        message = f"OpenVINO could not build {what} ({type(error).__name__}: {error}); it runs eagerly in torch"
        warnings.warn(f"{rebuilt}; then {message}" if rebuilt else message, EncoderRuntimeWarning, stacklevel=3)
        return None
    if rebuilt:
        warnings.warn(rebuilt, EncoderRuntimeWarning, stacklevel=3)
    log.info("compiled %s for OpenVINO in %.1f s (converted in %.1f s); later starts load it from the cache", what,
             time.perf_counter() - started, converted)
    _mark_used(entry, root, budget)
    return OpenVinoEncoder(compiled, dtype, model.image_size)
