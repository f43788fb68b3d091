"""Single-image results of `segany segment` and `segany auto`, in the formats of `--format`.

- png: one 0/255 grey PNG per mask (OUT when there is one mask, else OUT's stem + `_0`, `_1`, ...).
- overlay: one PNG (or JPEG, by OUT's suffix) of the image with coloured, outlined masks and the prompts.
- rle / polygon / json: one JSON document (stdout when OUT is `-`): image size, model and per mask its score,
  bbox [x, y, w, h], area, label and mode-specific fields, plus `rle` (COCO compressed RLE), `polygons`
  ([{exterior, holes}] pixel-centre rings), or both for json.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FORMATS = ("png", "rle", "polygon", "overlay", "json")
JSON_FORMATS = ("rle", "polygon", "json")


@dataclass
class MaskSet:
    """Masks of one image, best first, with what is known about each."""

    masks: np.ndarray  # (N, H, W) bool
    scores: np.ndarray  # (N,) float
    labels: list[str | None] = field(default_factory=list)  # per mask, or empty
    extras: list[dict[str, Any]] = field(default_factory=list)  # per mask JSON-ready fields, or empty
    points_xy: np.ndarray | None = None  # (P, 2) prompt clicks, pixels, for the overlay
    point_labels: np.ndarray | None = None  # (P,) 1 positive / 0 negative
    boxes_xyxy: np.ndarray | None = None  # (B, 4) prompt boxes, pixels, for the overlay

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def default_out(fmt: str, image: str) -> str:
    """OUT when --out is not given: JSON to stdout, images next to the working directory."""
    if fmt in JSON_FORMATS:
        return "-"
    return f"{Path(image).stem}.{'overlay' if fmt == 'overlay' else 'mask'}.png"


def write_result(fmt: str, out: str, image: str, rgb: np.ndarray, found: MaskSet, model: str) -> list[str]:
    """Write `found` as `fmt` to `out`; returns the paths written ("-" for stdout)."""
    if fmt == "png":
        return _write_pngs(out, found)
    if fmt == "overlay":
        return _write_overlay(out, rgb, found)
    document = mask_document(fmt, image, rgb.shape[:2], found, model)
    text = json.dumps(document, allow_nan=False)
    if out == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        Path(out).write_text(text + "\n", encoding="utf-8")
    return [out]


def mask_document(fmt: str, image: str, size_hw: Sequence[int], found: MaskSet, model: str) -> dict[str, Any]:
    from segany.batch.annotate import rle_bbox_xywh
    from segany.io.masks import mask_to_polygons
    from segany.io.rle import coco_encode

    entries = []
    for i in range(len(found)):
        mask = found.masks[i]
        rle = coco_encode(mask)
        entry: dict[str, Any] = {"score": float(found.scores[i]), "bbox": rle_bbox_xywh(rle), "area": int(mask.sum())}
        if found.labels and found.labels[i] is not None:
            entry["label"] = found.labels[i]
        if found.extras:
            entry.update(found.extras[i])
        if fmt in ("rle", "json"):
            entry["rle"] = rle
        if fmt in ("polygon", "json"):
            entry["polygons"] = [polygon.to_dict() for polygon in mask_to_polygons(mask)]
        entries.append(entry)
    return {"image": image, "height": int(size_hw[0]), "width": int(size_hw[1]), "model": model, "masks": entries}


def numbered(path: Path, index: int) -> Path:
    return path.with_name(f"{path.stem}_{index}{path.suffix}")


def _write_pngs(out: str, found: MaskSet) -> list[str]:
    from segany.io.masks import mask_to_png

    if out == "-":
        if len(found) != 1:
            raise ValueError("--format png to stdout needs exactly one mask")
        sys.stdout.buffer.write(mask_to_png(found.masks[0]))
        sys.stdout.flush()
        return ["-"]
    path = Path(out)
    paths = [path] if len(found) == 1 else [numbered(path, i) for i in range(len(found))]
    for target, mask in zip(paths, found.masks):
        target.write_bytes(mask_to_png(mask))
    return [str(p) for p in paths]


def _write_overlay(out: str, rgb: np.ndarray, found: MaskSet) -> list[str]:
    from segany.io.masks import encode_image, overlay_masks

    picture = overlay_masks(rgb, found.masks) if len(found) else rgb.copy()
    picture = _draw_prompts(picture, found)
    suffix = Path(out).suffix.lower().lstrip(".") if out != "-" else "png"
    data = encode_image(picture, suffix if suffix in ("png", "jpg", "jpeg", "webp") else "png")
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(out).write_bytes(data)
    return [out]


def _draw_prompts(picture: np.ndarray, found: MaskSet) -> np.ndarray:
    """Boxes as white rectangles; clicks as dots, green for positive, red for negative."""
    from PIL import Image, ImageDraw

    if found.points_xy is None and found.boxes_xyxy is None:
        return picture
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    side = max(8, min(picture.shape[:2]) // 100)
    for box in [] if found.boxes_xyxy is None else found.boxes_xyxy:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=max(2, side // 4))
    labels = found.point_labels if found.point_labels is not None else np.ones(0)
    for (x, y), label in zip([] if found.points_xy is None else found.points_xy, labels):
        colour = (40, 220, 40) if int(label) == 1 else (230, 40, 40)
        r = side / 2
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255), width=max(1, side // 6))
    return np.asarray(image)
