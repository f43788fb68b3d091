"""What one image of a batch run goes through, locally or on Ray: decode, label, one result tuple."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from segany.batch.annotate import BoxPrompt
from segany.batch.inputs import ImageItem
from segany.errors import InvalidInput

# What a run yields per image: the item, and either its (height, width) and records, or None and an error.
ImageResult = tuple[ImageItem, "tuple[int, int] | None", "list[dict[str, Any]] | str"]


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is; see `segany.batch.ray_data`."""

    address: str | None = None  # None: start a local Ray instance for this run
    workers: int | None = None  # model actors; None: one per GPU, or one per 4 CPUs
    cpus_per_worker: float | None = None  # None: the cluster's CPUs shared among the workers
    gpus_per_worker: float | None = None  # None: 1 when the device is cuda, else 0
    num_cpus: int | None = None  # CPUs of a local instance (None: all)


def decode_for_batch(path: str, max_pixels: int | None) -> tuple[np.ndarray | None, str | None]:
    """(RGB array, None), or (None, why) for an image that cannot be read; never raises for bad files."""
    from segany.io.images import load_image

    try:
        return load_image(path, max_pixels=max_pixels), None
    except InvalidInput as error:
        return None, str(error)
    except OSError as error:  # unreadable file: permissions, vanished, I/O error
        return None, f"{type(error).__name__}: {error}"


def annotate_decoded(annotator: Any, item: ImageItem, rgb: np.ndarray | None, error: str | None,
                     boxes_of: Callable[[ImageItem], list[BoxPrompt]]) -> ImageResult:
    """Label one decoded image; unreadable images (and images the model rejects) become skips."""
    if rgb is None:
        return item, None, error or "unreadable image"
    try:
        records = annotator.annotate(rgb, boxes_of(item))
    except InvalidInput as rejected:  # e.g. a box outside the image: this image's problem, not the run's
        return item, None, str(rejected)
    return item, (int(rgb.shape[0]), int(rgb.shape[1])), records
