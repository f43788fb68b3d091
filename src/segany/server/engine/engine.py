"""The inference engine every dialect shares: models, embedding cache, micro-batching, backpressure.

- Image decoding runs in worker threads; embeds run in the embed lane (micro-batched per model, at
  most `embed_batch_size` images, waiting at most `embed_batch_wait_ms`); prompt decodes run in the
  decode lane, where prompts of the same shape on the same embedding (also from concurrent requests)
  are decoded in one batch. Automatic mask generation runs in the embed lane, one at a time.
- Embeddings are cached by (variant, pixel digest); concurrent requests for one image share one embed.
- Work whose requests have all gone stops at its next batch boundary (`cancellation`): an embed between
  the image encoder's blocks, a mask generation between point batches.
- `run(work)` admits at most `max_queue` requests into inference at once (others get `ServerBusy`,
  a 503 with Retry-After) and bounds each by `request_timeout_s` (`RequestTimeout`, a 504).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from segany.errors import InvalidPrompt
from segany.io.images import image_digest, load_image
from segany.predict.amg.params import MaskGeneratorParams
from segany.predict.predictor import Predictor
from segany.predict.types import Detections, ImageEmbedding, Prediction
from segany.server.engine.batching import BatchLane
from segany.server.engine.embedding_cache import EmbeddingCache
from segany.server.engine.caching_predictor import CachingPredictor
from segany.server.engine.cancellation import LaneWork, Orphans, all_stopped, check_now, stop_checks
from segany.server.engine.detector_pool import DetectorPool
from segany.server.engine.logits_cache import LogitsCache
from segany.server.engine.recent_images import RecentImages
from segany.server.engine.types import DecodedImage, EmbedResult, Prompt, PromptOutput
from segany.server.http.errors import ImageIdNotFound, RequestTimeout, ServerBusy
from segany.server.http.limits import Limits
from segany.server.http.metrics import ServerMetrics
from segany.server.engine.model_pool import ModelLoader, ModelPool
from segany.server.engine.video_sessions import VideoSessions
from segany.server.settings import ServerSettings

log = logging.getLogger("segany.server")
T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class _DecodeJob:
    predictor: Predictor
    embedding: ImageEmbedding
    prompts: list[Prompt]
    multimask: bool
    return_logits: bool


def _stack(prompts: list[Prompt]) -> dict[str, np.ndarray | None]:
    """Same-signature prompts -> predictor.predict keyword arrays with a leading batch axis B."""
    first = prompts[0]
    return {
        "point_coords": None if first.points_xy is None else np.stack([p.points_xy for p in prompts]),
        "point_labels": None if first.labels is None else np.stack([p.labels for p in prompts]),
        "box": None if first.box_xyxy is None else np.stack([p.box_xyxy for p in prompts]),
        "mask_input": None if first.mask_input is None else np.stack([p.mask_input for p in prompts]),
    }


def _run_decode_batch(key: Hashable, jobs: list[_DecodeJob]) -> list[list[PromptOutput]]:
    """Decode every prompt of `jobs` (same embedding, same signature) in one predictor call."""
    prompts = [prompt for job in jobs for prompt in job.prompts]
    first = jobs[0]
    batch = len(prompts)
    signature = prompts[0].signature()
    if signature == (0, False, False):  # nothing to stack: the model sees no prompt at all
        predictions = [first.predictor.predict(first.embedding, multimask_output=first.multimask,
                                               return_logits=first.return_logits) for _ in prompts]
        masks = np.stack([p.masks for p in predictions])
        scores = np.stack([p.scores for p in predictions])
        low_res = np.stack([p.low_res_logits for p in predictions])
    else:
        out: Prediction = first.predictor.predict(first.embedding, multimask_output=first.multimask,
                                                  return_logits=first.return_logits, **_stack(prompts))
        channels = out.scores.shape[-1]
        masks = out.masks.reshape(batch, channels, *out.masks.shape[-2:])
        scores = out.scores.reshape(batch, channels)
        low_res = out.low_res_logits.reshape(batch, channels, *out.low_res_logits.shape[-2:])
    results: list[list[PromptOutput]] = []
    start = 0
    for job in jobs:
        stop = start + len(job.prompts)
        results.append([PromptOutput(masks[i], scores[i], low_res[i]) for i in range(start, stop)])
        start = stop
    return results


@dataclass(frozen=True, eq=False)
class _EmbedJob:
    predictor: Predictor
    rgb: np.ndarray  # (H, W, 3) uint8
    work: LaneWork  # stopped when every request waiting for this image has gone


class Engine:
    """One per server process; create it in the app, `await start()` in the lifespan."""

    def __init__(self, settings: ServerSettings, metrics: ServerMetrics | None = None,
                 loader: ModelLoader | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or ServerMetrics()
        self.pool = ModelPool(settings, loader, on_change=self.metrics.models_loaded.set)
        self.cache = EmbeddingCache(settings.embedding_cache_bytes)
        self.metrics.cache_bytes.set_source(lambda: self.cache.nbytes)
        self.embed_lane = BatchLane("embed", self._run_embed_batch, settings.embed_batch_size,
                                    settings.embed_batch_wait_ms / 1000, self._on_embed_batch)
        self.decode_lane = BatchLane("decode", self._run_decode, settings.decode_batch_size,
                                    settings.decode_batch_wait_ms / 1000, weight=lambda job: len(job.prompts))
        self._inflight: dict[tuple[str, str], tuple[asyncio.Future, LaneWork]] = {}
        self._active = 0
        # Work whose requests have gone (timed out, cancelled) but whose thread has not reached its next batch
        # boundary yet: it still holds a lane, so it counts in the queue depth and against `max_queue`.
        self.orphans = Orphans(lambda: self.metrics.queue_depth.set(self.active_requests))
        self._seconds_per_request = 0.5  # running average, for Retry-After
        self.load_error: str | None = None
        self._preload_task: asyncio.Task | None = None
        self.limits = Limits.from_settings(settings)
        self.detectors = DetectorPool(settings)
        self.recent_images = RecentImages()  # pixels for text prompts that follow an embed by image_id
        self.logits_cache = LogitsCache()  # low-res logits of earlier prompts (Roboflow's multi-step prompting)
        self.video = VideoSessions(settings, self.pool)  # tracking sessions on the same models

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self.embed_lane.start()
        self.decode_lane.start()
        self.video.start()
        if self.settings.preload:
            self._preload_task = asyncio.get_running_loop().create_task(self._preload())

    async def _preload(self) -> None:
        try:
            await self.pool.get_default()
            self.load_error = None
        except Exception as error:  # noqa: BLE001 - reported by /readyz, retried by the next request
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("could not load the default model: %s", self.load_error)

    async def stop(self) -> None:
        if self._preload_task is not None and not self._preload_task.done():
            self._preload_task.cancel()
        await self.video.stop()
        await self.embed_lane.stop()
        await self.decode_lane.stop()

    @property
    def ready(self) -> bool:
        """True once the default model has loaded (it may since have been unloaded by the LRU)."""
        return self.pool.default_variant in self.pool.ever_loaded

    # ---- admission -----------------------------------------------------------------------------
    @property
    def active_requests(self) -> int:
        """Requests in inference, plus abandoned work still running to its next batch boundary."""
        return self._active + len(self.orphans)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run one request's inference under the queue bound and the per-request timeout."""
        if self.active_requests >= self.settings.max_queue:
            self.metrics.rejected.inc(reason="queue_full")
            retry = math.ceil(self._seconds_per_request * self._active / max(1, self.settings.embed_batch_size))
            raise ServerBusy(f"the server is busy ({self._active} requests in progress); retry later",
                             retry_after_s=max(1, min(retry, 60)))
        self._active += 1
        self.metrics.queue_depth.set(self.active_requests)
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(work(), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            self.metrics.rejected.inc(reason="timeout")
            raise RequestTimeout(f"the request took longer than {self.settings.request_timeout_s:g} s") from None
        finally:
            self._active -= 1
            self.metrics.queue_depth.set(self.active_requests)
            elapsed = time.perf_counter() - started
            self._seconds_per_request = 0.9 * self._seconds_per_request + 0.1 * elapsed

    # ---- images and embeddings -----------------------------------------------------------------
    def _decode_sync(self, data: bytes | np.ndarray, field: str) -> DecodedImage:
        rgb = load_image(data, max_pixels=self.settings.max_image_pixels, field=field)
        return DecodedImage(rgb, image_digest(rgb))

    async def decode_image(self, data: bytes | np.ndarray, field: str = "image") -> DecodedImage:
        """Decode encoded bytes (or an array) to RGB off the event loop; raises InvalidImage/ImageTooLarge."""
        return await asyncio.to_thread(self._decode_sync, data, field)

    async def embed(self, image: DecodedImage, model: str | None = None) -> EmbedResult:
        """The embedding of `image` for `model` (None: the default), from the cache when possible."""
        variant = self.pool.resolve(model)
        key = (variant, image.digest)
        embedding = self.cache.get(variant, image.digest)
        if embedding is not None:
            self._count_lookup(True)
            return EmbedResult(embedding, image.digest, variant, True, 0.0)
        started = time.perf_counter()
        inflight = self._inflight.get(key)
        if inflight is None:
            predictor = await self.pool.get(variant)
            inflight = self._inflight.get(key)  # another request may have started it while the model loaded
        joined = inflight is not None
        if inflight is None:
            work = LaneWork()
            pending = self.embed_lane.submit(variant, _EmbedJob(predictor, image.rgb, work))
            inflight = self._inflight[key] = (pending, work)
            pending.add_done_callback(lambda future: self._embed_done(key, future))
        self._count_lookup(joined)
        pending, work = inflight
        # Shielded: a request that times out must not cancel an embed other requests are waiting for; only
        # when the last of them has gone is the embed withdrawn (queued) or stopped at its next block.
        embedding = await self.orphans.wait(asyncio.shield(pending), work,
                                            on_abandon=lambda: self._withdraw_embed(key, pending))
        return EmbedResult(embedding, image.digest, variant, joined, (time.perf_counter() - started) * 1000)

    def _withdraw_embed(self, key: tuple[str, str], pending: asyncio.Future) -> None:
        if self._inflight.get(key, (None,))[0] is pending:
            del self._inflight[key]  # at once: a new request for this image starts a fresh embed
        pending.cancel()  # a queued embed is dropped by the lane; a running one stops at its stop check

    def _embed_done(self, key: tuple[str, str], future: asyncio.Future) -> None:
        if self._inflight.get(key, (None,))[0] is future:
            del self._inflight[key]
        if not future.cancelled() and future.exception() is None:
            self.cache.put(key[0], key[1], future.result())

    def _run_embed_batch(self, key: Hashable, jobs: list[_EmbedJob]) -> list[ImageEmbedding]:
        """Embed the images of `jobs` (one model) in one forward pass, stoppable between encoder blocks."""
        works = [job.work for job in jobs]
        for work in works:
            self.orphans.begin(work)
        try:
            with stop_checks(all_stopped(works, f"the embed of {len(jobs)} image(s)")):
                check_now()  # abandoned while it waited for the lane: never start
                return jobs[0].predictor.embed_batch([job.rgb for job in jobs])
        finally:
            for work in works:
                self.orphans.finish(work)

    def _count_lookup(self, hit: bool) -> None:
        (self.metrics.cache_hits if hit else self.metrics.cache_misses).inc()

    def _on_embed_batch(self, key: Hashable, count: int, seconds: float) -> None:
        self.metrics.embed_seconds.observe(seconds)
        self.metrics.embed_batch.observe(count)

    def name_image(self, image_id: str, digest: str, owner: str | None) -> None:
        """Let the key `owner` refer to the image `digest` as `image_id` (its digest, or an alias it chose)."""
        self.cache.add_alias(image_id, digest, owner)

    def lookup(self, image_id: str, model: str | None = None, owner: str | None = None) -> EmbedResult:
        """A cached embedding by image id (a digest or a client alias) named by the key `owner` (see
        `name_image`); `ImageIdNotFound` if absent, or named only by another key (which looks the same)."""
        digest = self.cache.resolve(image_id, owner)
        variants = [] if digest is None else [self.pool.resolve(model)] if model else self.cache.variants_of(digest)
        if not model and self.pool.default_variant in variants:
            variants = [self.pool.default_variant]
        for variant in variants:
            embedding = self.cache.get(variant, digest)  # type: ignore[arg-type]
            if embedding is not None:
                self._count_lookup(True)
                return EmbedResult(embedding, digest, variant, True, 0.0)  # type: ignore[arg-type]
        self._count_lookup(False)
        raise ImageIdNotFound(f"image_id {image_id[:100]!r} is not in the embedding cache (never embedded, "
                              "evicted, or embedded with another model); send the image again")

    # ---- decoding ------------------------------------------------------------------------------
    def _run_decode(self, key: Hashable, jobs: list[_DecodeJob]) -> list[list[PromptOutput]]:
        started = time.perf_counter()
        results = _run_decode_batch(key, jobs)
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        self.metrics.decode_batch.observe(sum(len(job.prompts) for job in jobs))
        return results

    async def predict(self, embedded: EmbedResult, prompts: list[Prompt], multimask: bool = True,
                      return_logits: bool = False) -> list[PromptOutput]:
        """Decode `prompts` (in order) on one embedding; same-shaped prompts share a decoder batch."""
        if not prompts:
            raise InvalidPrompt("prompts: give at least one prompt", "prompts")
        self.limits.check_prompts(prompts)  # every dialect's prompts, whatever it checked itself
        predictor = await self.pool.get(embedded.variant)
        groups: dict[tuple, list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault(prompt.signature(), []).append(index)
        futures: list[tuple[list[int], asyncio.Future]] = []
        size = self.settings.decode_batch_size
        for signature, indices in groups.items():
            for start in range(0, len(indices), size):
                chunk = indices[start:start + size]
                job = _DecodeJob(predictor, embedded.embedding, [prompts[i] for i in chunk], multimask, return_logits)
                # Prompts on the same embedding with the same shape may merge with other requests' prompts.
                key = (id(embedded.embedding), signature, multimask, return_logits)
                if signature == (0, False, False):
                    key = object()
                futures.append((chunk, self.decode_lane.submit(key, job)))
        outputs: list[PromptOutput | None] = [None] * len(prompts)
        results = await asyncio.gather(*(future for _, future in futures))
        for (chunk, _), result in zip(futures, results):
            for index, output in zip(chunk, result):
                outputs[index] = output
        return outputs  # type: ignore[return-value]

    async def predict_raw(self, embedded: EmbedResult, **arrays: Any) -> Prediction:
        """One official-style `Predictor.predict` call (Livepeer's arrays as given), in the decode lane."""
        self.limits.check_raw_arrays(arrays.get("point_coords"), arrays.get("box"))
        predictor = await self.pool.get(embedded.variant)
        return await self.decode_lane.run_in_thread(lambda: predictor.predict(embedded.embedding, **arrays))

    # ---- boxes from text, and masks from boxes ------------------------------------------------------
    async def ground(self, image: DecodedImage, text: str | Sequence[str], *, detector: str | None = None,
                     box_threshold: float | None = None, text_threshold: float | None = None) -> Detections:
        """Labelled boxes (pixels of `image`, best first) for the phrases of `text`, from the detector
        `detector` (None: `settings.text_model`): class_name is the phrase, class_id its index, confidence
        the detector score; thresholds default to the detector family's."""
        from segany.predict.text.segment import ground_boxes  # transformers (segany[text]) loads on first use

        def work() -> Detections:
            grounder = self.detectors.get(detector)
            found = ground_boxes(grounder, image.rgb, text, box_threshold=box_threshold, text_threshold=text_threshold)
            return found.to_detections()

        return await asyncio.to_thread(work)

    async def segment_boxes(self, embedded: EmbedResult, detections: Detections) -> Detections:
        """`detections` with one mask per box (box prompts, single-mask output); no boxes -> no decode."""
        if len(detections) == 0:
            height, width = embedded.embedding.orig_hw
            return detections.with_masks(np.zeros((0, height, width), bool), np.zeros(0, np.float32))
        prompts = [Prompt(box_xyxy=np.asarray(box, np.float64)) for box in detections.xyxy]
        outputs = await self.predict(embedded, prompts, multimask=False)
        return detections.with_masks(np.stack([out.masks[0] for out in outputs]),
                                     np.asarray([out.scores[0] for out in outputs], np.float32))

    async def segment_text(self, image: DecodedImage, text: str | Sequence[str], *, model: str | None = None,
                           detector: str | None = None, box_threshold: float | None = None,
                           text_threshold: float | None = None, max_boxes: int | None = None) -> Detections:
        """Text -> detector boxes (at most `max_boxes`, best first) -> one mask each. No box: no embed, and
        the result has no masks (`mask` None)."""
        found = await self.ground(image, text, detector=detector, box_threshold=box_threshold,
                                  text_threshold=text_threshold)
        if max_boxes is not None and len(found) > max_boxes:
            found = found.select(np.arange(max_boxes))
        if len(found) == 0:
            return found
        return await self.segment_boxes(await self.embed(image, model), found)

    # ---- automatic mask generation -------------------------------------------------------------
    def check_generate(self, params: Mapping[str, Any]) -> None:
        """Refuse automatic mask generation the server does not run (InvalidInput, a 400 naming the field):
        a grid side over `max_points_per_side`, or more than `max_auto_points` points over all crop layers.
        Dialects call it before queuing work; `generate` checks again."""
        defaults = MaskGeneratorParams()
        grids = params.get("point_grids")
        grid_points = max((len(grid) for grid in grids), default=0) if grids else None
        side = params.get("points_per_side", defaults.points_per_side) if grid_points is None else None
        self.limits.check_auto_grid(side, params.get("crop_n_layers", defaults.crop_n_layers),
                                    params.get("crop_n_points_downscale_factor", defaults.crop_n_points_downscale_factor),
                                    grid_points)

    async def generate(self, image: DecodedImage, model: str | None, params: dict[str, Any]) -> list[dict[str, Any]]:
        """`MaskGenerator(predictor, **params).generate(image)` records, run in the embed lane."""
        from segany.predict.amg.generator import MaskGenerator  # imported on first use, like segany.MaskGenerator

        self.check_generate(params)
        variant = self.pool.resolve(model)
        predictor = await self.pool.get(variant)
        generator = MaskGenerator(CachingPredictor(predictor, self.cache, self._count_lookup), **params)

        lane_work = LaneWork()
        stop = all_stopped([lane_work], "automatic mask generation")

        def work() -> list[dict[str, Any]]:
            self.orphans.begin(lane_work)
            started = time.perf_counter()
            try:
                # Checked between point batches and, while a crop is embedded, between encoder blocks.
                with stop_checks(stop):
                    stop()  # abandoned while it waited for the lane: never start
                    records = generator.generate(image.rgb, progress=lambda done, total: stop())
            finally:
                self.orphans.finish(lane_work)
            self.metrics.auto_seconds.observe(time.perf_counter() - started)
            return records

        return await self.orphans.wait(self.embed_lane.run_in_thread(work), lane_work)
