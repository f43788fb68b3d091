"""Reading the official predictor goldens (../shared/fixtures/goldens) into comparable arrays."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fixture_paths import GOLDENS, IMAGES


def manifest() -> dict:
    return json.loads((GOLDENS / "manifest.json").read_text())["files"]


def golden_masks(npz, prefix: str) -> np.ndarray:
    """Full-resolution masks of a case: unpacked bits, or float logits for return_logits cases."""
    if f"{prefix}/masks" in npz.files:
        return npz[f"{prefix}/masks"]
    shape = tuple(npz[f"{prefix}/masks_shape"])
    return np.unpackbits(npz[f"{prefix}/masks_packbits"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)


def case_kwargs(case: dict, npz, image: str) -> dict:
    """The predictor.predict keyword arguments a manifest case describes."""
    kwargs = {"multimask_output": case["multimask_output"]}
    for key in ("point_coords", "point_labels", "box"):
        if key in case:
            kwargs[key] = np.asarray(case[key], dtype=np.float32 if key != "point_labels" else np.int32)
    for key in ("return_logits", "normalize_coords"):
        if key in case:
            kwargs[key] = case[key]
    mask_input = case.get("mask_input")
    if isinstance(mask_input, str) and mask_input.startswith("best_of:"):
        src = mask_input.split(":", 1)[1]
        logits = npz[f"{image}/{src}/low_res_logits"].astype(np.float32)
        iou = npz[f"{image}/{src}/iou"]
        kwargs["mask_input"] = logits[int(np.argmax(iou))][None]
    return kwargs


def image_path(name: str) -> Path:
    return IMAGES / name
