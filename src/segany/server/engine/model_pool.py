"""The loaded models: the default one plus others loaded on request, kept in a bounded LRU.

Requests name models by variant (`sam2.1_hiera_tiny`) or Hugging Face id (`facebook/sam2.1-hiera-tiny`);
anything else is `ModelNotFound` (a 404), never a file path, so a client cannot make the server read
arbitrary files. Weights come from `--checkpoint` (default model), `--checkpoint-dir/<variant>.pt`
(or `.safetensors`), or else the Hugging Face cache / hub as `segany.load_model` resolves them.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from segany.errors import CheckpointError, ModelNotFound
from segany.model.sam2 import SAM2ImageModel
from segany.model.variants import get_variant, list_variants
from segany.model.video import SAM2VideoModel
from segany.model.weights import load_video_model, map_official_keys, read_checkpoint, resolve_checkpoint
from segany.predict.predictor import Predictor
from segany.server.engine.cancellation import hook_image_encoder
from segany.server.settings import ServerSettings

log = logging.getLogger("segany.server")

ModelLoader = Callable[..., Any]  # segany.load_model's signature


def canonical_variant(name: str | None, default: str) -> str:
    """Variant name for a request's model field; None or "" means the default model."""
    if name is None or not str(name).strip():
        return default
    spec = get_variant(str(name).strip())
    if spec is None:
        raise ModelNotFound(
            f"unknown model {str(name)[:200]!r}: expected one of {', '.join(list_variants())} "
            "or a Hugging Face id such as facebook/sam2.1-hiera-tiny"
        )
    return spec.name


def compose_video_model(image: SAM2ImageModel, checkpoint: str | Path) -> SAM2VideoModel:
    """The video model around an already loaded image model (its weights shared, not copied): only the
    checkpoint's video-only keys are loaded, and every one of them must fit."""
    official = read_checkpoint(checkpoint)
    _, video_keys = map_official_keys(official)
    model = SAM2VideoModel(image.spec, image=image)
    result = model.load_state_dict({key: official[key] for key in video_keys}, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith("image.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{checkpoint} does not fit the {image.variant} video model: missing {missing[:5]}, "
                              f"unexpected {list(result.unexpected_keys)[:5]}")
    return model.to(image.device).eval().requires_grad_(False)


class ModelPool:
    """Loads predictors on first use (one load at a time per variant) and drops the least recently used."""

    def __init__(self, settings: ServerSettings, loader: ModelLoader | None = None,
                 on_change: Callable[[int], None] | None = None) -> None:
        if loader is None:
            from segany.model import load_model as loader
        self.settings = settings
        self._loader = loader
        self._on_change = on_change
        # The default model must be named too (its weights may still come from --checkpoint FILE).
        self.default_variant = canonical_variant(settings.model, settings.model)
        self._loaded: OrderedDict[str, Predictor] = OrderedDict()
        # variant -> (the image model it was built for, the video model)
        self._video: dict[str, tuple[SAM2ImageModel, SAM2VideoModel]] = {}
        self.ever_loaded: set[str] = set()
        # variant -> "official" | "file" | "random" (segany.load_model's `model.weights`), once loaded.
        self.weights: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def resolve(self, name: str | None) -> str:
        return canonical_variant(name, self.default_variant)

    @property
    def loaded_variants(self) -> list[str]:
        return list(self._loaded)

    def is_loaded(self, variant: str) -> bool:
        return variant in self._loaded

    def checkpoint_for(self, variant: str) -> str | None:
        """Where `variant`'s weights come from; None lets `load_model` use the Hugging Face cache."""
        if variant == self.default_variant and self.settings.checkpoint:
            return self.settings.checkpoint
        if self.settings.checkpoint_dir:
            for suffix in (".pt", ".safetensors"):
                candidate = Path(self.settings.checkpoint_dir) / f"{variant}{suffix}"
                if candidate.is_file():
                    return str(candidate)
        return None

    def _load(self, variant: str) -> Predictor:
        checkpoint = self.checkpoint_for(variant)
        log.info("loading model %s (checkpoint %s)", variant, checkpoint or "from the Hugging Face cache")
        model = self._loader(variant, checkpoint=checkpoint, device=self.settings.device, dtype=self.settings.dtype,
                             encoder_runtime=self.settings.encoder_runtime)
        self.weights[variant] = str(getattr(model, "weights", "file"))
        if self.weights[variant] == "random":
            log.warning("model %s has RANDOM weights (%s): its masks are noise; see README 'Weights' to get the "
                        "official ones", variant, checkpoint)
        hook_image_encoder(model)  # so that abandoned embeds stop between encoder blocks
        return Predictor(model)

    def default_weights(self) -> str | None:
        """Where the default model's weights came from ("official", "file", "random"); None until loaded."""
        return self.weights.get(self.default_variant)

    async def get(self, variant: str) -> Predictor:
        """The predictor for a canonical variant name (from `resolve`), loading it off the event loop."""
        predictor = self._loaded.get(variant)
        if predictor is not None:
            self._loaded.move_to_end(variant)
            return predictor
        lock = self._locks.setdefault(variant, asyncio.Lock())
        async with lock:
            predictor = self._loaded.get(variant)
            if predictor is None:
                predictor = await asyncio.to_thread(self._load, variant)
                self._loaded[variant] = predictor
                self.ever_loaded.add(variant)
                while len(self._loaded) > self.settings.max_models:
                    dropped, _ = self._loaded.popitem(last=False)
                    self._video.pop(dropped, None)  # sessions holding it keep it alive until they close
                    log.info("unloaded model %s (max_models=%d)", dropped, self.settings.max_models)
                if self._on_change is not None:
                    self._on_change(len(self._loaded))
            self._loaded.move_to_end(variant)
            return predictor

    async def get_default(self) -> Predictor:
        return await self.get(self.default_variant)

    async def get_video(self, variant: str) -> SAM2VideoModel:
        """The video model of a canonical variant, built once per loaded image model.

        Tracking runs in float32: in bfloat16 its masks drift from the official ones frame after frame
        (mean mask IoU 0.977 on the video goldens, under the 0.98 bar; see `load_video_model`). Where the
        loaded image model is float32 the video model composes it, sharing the weights image requests use;
        where it is bfloat16 (the default on CPUs with AMX or AVX512-BF16) the video model is a float32
        build of the same checkpoint.
        """
        image = (await self.get(variant)).model
        built = self._video.get(variant)
        if built is not None and built[0] is image:
            return built[1]
        async with self._locks.setdefault(variant, asyncio.Lock()):
            built = self._video.get(variant)
            if built is None or built[0] is not image:
                spec = get_variant(variant)
                checkpoint = self.checkpoint_for(variant) or await asyncio.to_thread(resolve_checkpoint, spec)
                if image.dtype == torch.float32:
                    log.info("adding the video modules of %s (checkpoint %s)", variant, checkpoint)
                    video = await asyncio.to_thread(compose_video_model, image, checkpoint)
                else:
                    log.info("loading a float32 video model of %s beside its %s image model (checkpoint %s)",
                             variant, str(image.dtype).removeprefix("torch."), checkpoint)
                    video = await asyncio.to_thread(load_video_model, variant, checkpoint, image.device, torch.float32)
                built = (image, video)
                self._video[variant] = built
            return built[1]
