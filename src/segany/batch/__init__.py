"""Batch labelling of image collections to COCO, locally or on a Ray cluster; the CLI's working parts.

- `inputs`: a folder, glob or list file -> the images to label, each with its COCO `file_name`.
- `annotate`: one image -> annotation records (automatic masks, text prompts or given boxes).
- `coco`: the COCO instances file, written atomically and resumable through an append-only journal.
- `runner`: the local run (images decoded in threads while the model works) with a progress bar.
- `ray_data`: the same run on Ray Data (decoding tasks, model actors); `segany[ray]`.
- `outputs`: single-image results (`segany segment`, `segany auto`) in png/rle/polygon/overlay/json.
"""
from __future__ import annotations

from segany.batch.annotate import AnnotatorConfig, ImageAnnotator
from segany.batch.coco import CocoWriter
from segany.batch.inputs import ImageItem, find_images
from segany.batch.runner import BatchSummary, run_batch

__all__ = ["AnnotatorConfig", "BatchSummary", "CocoWriter", "ImageAnnotator", "ImageItem", "find_images", "run_batch"]
