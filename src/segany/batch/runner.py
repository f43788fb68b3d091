"""A batch run: images in, one COCO file out, resumable, with a progress bar.

Locally, decoding runs in a thread pool a few images ahead of the model (Pillow and OpenCV release the GIL
while they decode), so the model never waits for the disk. With `ray` options the same images go through
`segany.batch.ray_data` instead; either way results come back in input order and are written by this
process, so both produce the same file.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from segany.batch.annotate import AnnotatorConfig, BoxPrompt
from segany.batch.boxes import BoxPrompts
from segany.batch.coco import CocoWriter
from segany.batch.inputs import ImageItem
from segany.batch.per_image import ImageResult, RayOptions, annotate_decoded, decode_for_batch
from segany.errors import InvalidInput

@dataclass
class BatchSummary:
    total: int  # images in the input
    already_done: int  # found in the output from an earlier run
    labelled: int = 0  # labelled by this run
    annotations: int = 0  # annotations added by this run
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file_name, why) of unreadable images
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.labelled / self.elapsed_s if self.elapsed_s > 0 else 0.0


class BatchRun:
    """A prepared run: settings checked and the output opened (resumed), before any model work.

    Raises InvalidInput for unusable settings or an output that cannot be resumed.
    """

    def __init__(
        self,
        items: Sequence[ImageItem],
        config: AnnotatorConfig,
        out: str | os.PathLike,
        *,
        box_prompts: BoxPrompts | None = None,
        overwrite: bool = False,
        decode_workers: int = 2,
        max_pixels: int | None = None,
        checkpoint_every_s: float = 60.0,
        say: Callable[[str], None] | None = None,
    ) -> None:
        from segany.io.images import DEFAULT_MAX_PIXELS

        self.say = say or _say
        self.config = config
        self.box_prompts = box_prompts
        self.decode_workers = int(decode_workers)
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        if self.decode_workers < 1:
            raise InvalidInput(f"workers must be at least 1, got {decode_workers}", "workers")
        if config.mode == "boxes" and box_prompts is None:
            raise InvalidInput("mode boxes needs --boxes FILE", "boxes")
        categories = config.categories() + (box_prompts.labels() if box_prompts is not None else [])
        run_info = {"mode": config.mode, "model": config.model, "config": _portable(config.to_json())}
        self.writer = CocoWriter.open(out, run_info=run_info, categories=categories, overwrite=overwrite,
                                      checkpoint_every_s=checkpoint_every_s)
        previous = self.writer.previous_run_info
        if previous is not None and previous.get("config") != run_info["config"]:
            self.say(f"note: {out} was started with other settings "
                     f"({_difference(previous.get('config'), run_info['config'])}); images already done are kept")
        self.todo = [item for item in items if not self.writer.is_done(item.file_name)]
        self.summary = BatchSummary(total=len(items), already_done=len(items) - len(self.todo))

    def _boxes_of(self, item: ImageItem) -> list[BoxPrompt]:
        return self.box_prompts.for_image(item.file_name) if self.box_prompts is not None else []

    def run(self, *, progress: bool = True, ray: RayOptions | None = None,
            on_result: Callable[[ImageItem, bool], None] | None = None) -> BatchSummary:
        """Label the images not done yet. Model errors pass through (after saving what finished);
        KeyboardInterrupt stops the run cleanly with `interrupted` set. `on_result(item, labelled)` is called
        after each image is recorded (benchmarks time the run with it)."""
        summary, writer = self.summary, self.writer
        if summary.already_done:
            self.say(f"resuming {writer.path}: {summary.already_done} of {summary.total} images already done")
        if not self.todo:
            writer.close()
            return summary
        start = time.perf_counter()
        bar = _progress_bar(len(self.todo), enabled=progress)
        try:
            if ray is not None:
                from segany.batch.ray_data import ray_results

                results = ray_results(self.todo, self.config, self._boxes_of, ray, self.max_pixels)
            else:
                results = local_results(self.todo, self.config, self._boxes_of, self.decode_workers, self.max_pixels)
            for item, size_hw, outcome in results:
                if size_hw is None:
                    writer.add_skipped(item.file_name, str(outcome))
                    summary.skipped.append((item.file_name, str(outcome)))
                    bar.write(f"skipped {item.file_name}: {outcome}", file=sys.stderr)
                else:
                    summary.annotations += writer.add_image(item.file_name, size_hw, outcome)
                    summary.labelled += 1
                bar.set_postfix(masks=summary.annotations, skipped=len(summary.skipped), refresh=False)
                bar.update(1)
                if on_result is not None:
                    on_result(item, size_hw is not None)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
            summary.elapsed_s = time.perf_counter() - start
            writer.close()  # also after an error: what finished is kept, and the next run resumes from it
        return summary


def run_batch(
    items: Sequence[ImageItem],
    config: AnnotatorConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    ray: RayOptions | None = None,
    **settings: Any,
) -> BatchSummary:
    """Label `items` into the COCO file `out`, skipping images an earlier run already finished.

    `settings` are `BatchRun`'s keyword arguments (box_prompts, overwrite, decode_workers, max_pixels,
    checkpoint_every_s, say).
    """
    return BatchRun(items, config, out, **settings).run(progress=progress, ray=ray)


def local_results(
    items: Sequence[ImageItem], config: AnnotatorConfig, boxes_of: Callable[[ImageItem], list[BoxPrompt]],
    decode_workers: int, max_pixels: int | None,
) -> Iterator[ImageResult]:
    """Label items in this process, in order; decoding runs `decode_workers` threads ahead of the model."""
    from segany.batch.annotate import ImageAnnotator

    annotator = ImageAnnotator(config)
    ahead = 2 * decode_workers  # decoded images waiting: bounds memory, keeps the model fed
    with ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="segany-decode") as pool:
        pending: deque[tuple[ImageItem, Future]] = deque()
        queue = iter(items)
        try:
            for item in queue:
                pending.append((item, pool.submit(decode_for_batch, item.path, max_pixels)))
                if len(pending) >= ahead:
                    yield annotate_decoded(annotator, *_pop(pending), boxes_of)
            while pending:
                yield annotate_decoded(annotator, *_pop(pending), boxes_of)
        finally:
            for _, future in pending:
                future.cancel()


def _pop(pending: deque[tuple[ImageItem, Future]]) -> tuple[ImageItem, np.ndarray | None, str | None]:
    item, future = pending.popleft()
    rgb, error = future.result()
    return item, rgb, error


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **values: Any) -> None: ...
    def close(self) -> None: ...

    def write(self, text: str, file: Any = None) -> None:
        print(text, file=file or sys.stderr)


def _progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr showing done/total, images per second and the time left."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="img", desc="segany batch", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                           "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


def _say(text: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    except ImportError:
        print(text, file=sys.stderr)


def _portable(config: dict[str, Any]) -> dict[str, Any]:
    """The run settings that decide the output (not where the weights sit or which device runs them)."""
    dropped = ("checkpoint", "device", "threads")
    return {key: value for key, value in config.items() if key not in dropped}


def _difference(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unknown"
    changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    return ", ".join(changed) or "none"

