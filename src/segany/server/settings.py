"""Every server option in one frozen dataclass; each is also a CLI flag and a `SEGANY_<NAME>` variable.

Precedence: command-line flag, then environment variable, then the default below. The CLI flag is the
field name with dashes (`max_queue` -> `--max-queue`), the variable its upper-case form
(`SEGANY_MAX_QUEUE`). `api_keys` is the exception: `--api-key K` (repeatable) and `SEGANY_API_KEY`
(comma-separated).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from segany.errors import InvalidInput

# A server decodes for many clients at once: an 8000x8000 PNG of a few hundred KB (the library's 64 Mi
# pixel default lets it through) takes ~3 GB to decode and embed. 36 MP still admits 24 MP camera photos.
SERVER_MAX_PIXELS = 6000 * 6000

ENV_PREFIX = "SEGANY_"
DTYPES = ("float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
# segany.model.encoder_runtime.RUNTIMES, repeated so that settings load without torch (a test holds them equal).
RUNTIMES = ("auto", "eager", "openvino")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_data_dir() -> Path:
    """The per-user data folder: $XDG_DATA_HOME/segany (~/.local/share/segany), macOS Application Support,
    or %LOCALAPPDATA%\\segany on Windows."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / "segany"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "segany"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "segany"


def _opt(default: Any, help: str, *, flag: str | None = None, env: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag, "env": env})


@dataclass(frozen=True)
class ServerSettings:
    """Server configuration. Sizes in MiB, times in seconds unless the name says `_ms`."""

    model: str = _opt("sam2.1_hiera_tiny", "default model: variant name or Hugging Face id")
    checkpoint: str | None = _opt(None, "checkpoint file for the default model (else the Hugging Face cache)")
    checkpoint_dir: str | None = _opt(None, "folder of <variant>.pt checkpoints for models loaded on request")
    device: str | None = _opt(None, "torch device (default: cuda if available, else cpu)")
    dtype: str | None = _opt(None, "float32, bfloat16 or float16 (default: the library's choice for the device)")
    encoder_runtime: str | None = _opt(None, "where image embeds run: auto, eager or openvino (default: auto, "
                                       "OpenVINO for bfloat16 on AVX512-BF16 CPUs without AMX when installed)")
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8000, "port to listen on")
    api_keys: tuple[str, ...] = _opt(
        (), "API key clients must send (repeatable); none means auth is off", flag="--api-key", env="SEGANY_API_KEY"
    )
    max_models: int = _opt(2, "models kept loaded at once (least recently used is dropped)")
    preload: bool = _opt(True, "load the default model at startup (/readyz waits for it)")
    embedding_cache_mb: float = _opt(1024.0, "embedding cache size in MiB; 0 turns the cache off")
    embed_batch_size: int = _opt(4, "most images embedded together in one micro-batch")
    embed_batch_wait_ms: float = _opt(5.0, "longest wait for more images to join an embed micro-batch")
    decode_batch_size: int = _opt(32, "most prompts decoded together in one batch")
    decode_batch_wait_ms: float = _opt(1.0, "longest wait for more prompts to join a decode batch")
    max_queue: int = _opt(64, "inference jobs waiting at once; more get 503 with Retry-After")
    request_timeout_s: float = _opt(120.0, "per-request time limit for inference")
    max_body_mb: float = _opt(32.0, "largest request body")
    body_timeout_s: float = _opt(60.0, "longest time to receive one request body (a trickled body gets 408)")
    keep_alive_s: float = _opt(5.0, "idle time after which a kept-alive connection is closed")
    max_buffered_mb: float = _opt(256.0, "request bodies held in memory at once, all requests together; past it "
                                  "503 with Retry-After (one body alone is always let in)")
    max_image_pixels: int = _opt(SERVER_MAX_PIXELS, "largest decoded image (width x height)")
    max_prompts: int = _opt(64, "most prompts in one request")
    max_points_per_prompt: int = _opt(64, "most points in one prompt")
    max_points_per_side: int = _opt(128, "largest points_per_side for automatic mask generation")
    max_auto_points: int = _opt(32768, "largest number of AMG points (grid points over all crops)")
    text_model: str = _opt("IDEA-Research/grounding-dino-tiny",
                           "open-vocabulary detector for text prompts (Hugging Face id or local folder; needs segany[text])")
    data_dir: str | None = _opt(None, "folder of the job database and output files (default: a per-user data folder, "
                                "e.g. ~/.local/share/segany)")
    job_ttl_s: float = _opt(86400.0, "finished jobs, their files and uploads are deleted this long after")
    job_recovery: str = _opt("retry", "jobs left unfinished by a stopped server: 'retry' runs them again, "
                             "'fail' fails them with a reason")
    job_max_attempts: int = _opt(2, "runs a job may get across restarts")
    job_workers: int = _opt(2, "prediction jobs running at once")
    job_timeout_s: float = _opt(900.0, "time limit of one inference step of a job")
    max_pending_jobs: int = _opt(256, "jobs queued or running at once; another submission gets 503 with Retry-After")
    max_upload_mb_per_key: float = _opt(1024.0, "uploads (POST /v1/files) one API key keeps stored at once "
                                        "(until deleted or expired); past it 429")
    max_waiting: int = _opt(64, "requests held open by 'Prefer: wait' at once; more answer at once, unfinished")
    webhook_allow_private: bool = _opt(False, "allow webhook targets on loopback/private networks")
    webhook_signing_secret: str | None = _opt(None, "whsec_... key webhooks are signed with (default: generated, "
                                              "kept in the data dir)")
    public_url: str | None = _opt(None, "base URL for file and status links (default: the request's)")
    expire_every_s: float = _opt(300.0, "how often expired jobs, files and uploads are deleted")
    webhook_attempts: int = _opt(4, "deliveries tried per webhook event")
    webhook_timeout_s: float = _opt(10.0, "time limit of one webhook delivery")
    webhook_backoff_s: float = _opt(1.0, "wait before the first webhook retry (doubling after each)")
    auto_defaults: str | None = _opt(
        None, 'JSON object of MaskGenerator defaults for /v1/auto and Hugging Face, e.g. {"points_per_side": 16}'
    )
    allow_url_fetch: bool = _opt(False, "allow images given by http(s) URL (public addresses only)")
    fetch_max_mb: float = _opt(20.0, "largest image fetched by URL")
    fetch_timeout_s: float = _opt(10.0, "time limit for fetching one image URL")
    label_studio_url: str | None = _opt(None, "Label Studio's address, for images its ML backend requests name by "
                                        "path (/data/upload/...); default: the hostname Label Studio sends to /setup")
    label_studio_api_key: str | None = _opt(None, "Label Studio access token (personal or legacy) used to fetch those "
                                            "images; default: the token Label Studio sends to /setup")
    max_video_sessions: int = _opt(4, "video tracking sessions open at once; another gets 503 with Retry-After")
    video_session_idle_s: float = _opt(600.0, "a video session unused this long is closed and its memory freed")
    max_video_frames: int = _opt(2000, "most frames of a video a session or a job may track")
    max_video_pixels: int = _opt(1920 * 1080, "largest video frame (width x height)")
    max_video_mb: float = _opt(200.0, "largest video file (uploads are also bounded by max_body_mb)")
    log_level: str = _opt("info", "log level")

    def __post_init__(self) -> None:
        positive = ("port", "max_models", "embed_batch_size", "decode_batch_size", "max_queue", "max_prompts",
                    "max_points_per_prompt", "max_points_per_side", "max_image_pixels", "max_auto_points",
                    "job_max_attempts", "job_workers", "max_pending_jobs", "max_waiting", "webhook_attempts", "max_video_sessions", "max_video_frames",
                    "max_video_pixels")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}", name)
        for name in ("embedding_cache_mb", "embed_batch_wait_ms", "decode_batch_wait_ms"):
            if float(getattr(self, name)) < 0:
                raise InvalidInput(f"{name} must be >= 0, got {getattr(self, name)}", name)
        if self.dtype is not None and self.dtype.lower() not in DTYPES:
            raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}", "dtype")
        if self.encoder_runtime is not None and self.encoder_runtime.lower() not in RUNTIMES:
            raise InvalidInput(f"encoder_runtime must be one of {', '.join(RUNTIMES)}, got {self.encoder_runtime!r}",
                               "encoder_runtime")
        if self.job_recovery not in ("retry", "fail"):
            raise InvalidInput(f"job_recovery must be 'retry' or 'fail', got {self.job_recovery!r}", "job_recovery")
        for name in ("request_timeout_s", "max_body_mb", "body_timeout_s", "keep_alive_s", "max_buffered_mb",
                     "max_upload_mb_per_key", "fetch_max_mb", "fetch_timeout_s", "job_ttl_s",
                     "job_timeout_s", "expire_every_s", "webhook_timeout_s", "video_session_idle_s", "max_video_mb"):
            if float(getattr(self, name)) <= 0:
                raise InvalidInput(f"{name} must be > 0, got {getattr(self, name)}", name)

    @property
    def embedding_cache_bytes(self) -> int:
        return int(self.embedding_cache_mb * 2**20)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def max_buffered_bytes(self) -> int:
        return int(self.max_buffered_mb * 2**20)

    @property
    def max_upload_bytes_per_key(self) -> int:
        return int(self.max_upload_mb_per_key * 2**20)

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * 2**20)

    @property
    def fetch_max_bytes(self) -> int:
        return int(self.fetch_max_mb * 2**20)

    @property
    def data_path(self) -> Path:
        """The folder of the job database and stored files: `data_dir`, else `default_data_dir()`."""
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()

    def with_(self, **changes: Any) -> ServerSettings:
        """A copy with some options changed (validated again)."""
        return replace(self, **changes)


def _flag(f: Any) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _env(f: Any) -> str:
    return f.metadata.get("env") or ENV_PREFIX + f.name.upper()


def _base_type(f: Any) -> str:
    """'bool' | 'int' | 'float' | 'str' | 'keys' from the annotation (a string under postponed evaluation)."""
    annotation = str(f.type)
    for name in ("bool", "int", "float"):
        if annotation.startswith(name):
            return name
    return "keys" if annotation.startswith("tuple") else "str"


def _parse_bool(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidInput(f"{name} must be true or false, got {text!r}", name)


def _convert(f: Any, raw: str) -> Any:
    """Convert an environment string to the field's type, naming the variable on failure."""
    kind = _base_type(f)
    name = _env(f)
    try:
        if kind == "bool":
            return _parse_bool(raw, name)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as error:
        raise InvalidInput(f"{name}: {error}", name) from None
    if kind == "keys":
        return tuple(key.strip() for key in raw.split(",") if key.strip())
    if f.default is None and not raw:
        return None  # an empty variable unsets an optional path
    return raw


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per option; defaults stay None so the environment can fill what the user left out."""
    for f in fields(ServerSettings):
        kind = _base_type(f)
        default = f.default if f.default is not MISSING else None
        env_help = f"{f.metadata['help']} (env {_env(f)}; default {default!r})"
        if kind == "bool":
            parser.add_argument(_flag(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=env_help)
        elif kind == "keys":
            parser.add_argument(_flag(f), dest=f.name, action="append", default=None, metavar="KEY", help=env_help)
        else:
            converter = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(_flag(f), dest=f.name, type=converter, default=None, help=env_help)


def settings_from(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> ServerSettings:
    """Build settings from parsed flags, then `environ` (default `os.environ`), then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(ServerSettings):
        cli_value = getattr(args, f.name, None) if args is not None else None
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif cli_value is not None:
            values[f.name] = tuple(cli_value) if _base_type(f) == "keys" else cli_value
        elif _env(f) in environ:
            values[f.name] = _convert(f, environ[_env(f)])
    return ServerSettings(**values)
