"""The `--boxes` file of `segany batch --mode boxes`: boxes (with labels) to segment, per image.

Two layouts are read:

- a COCO file (`images`, `annotations` with `bbox` [x, y, w, h], `categories`), e.g. a detector's output
  converted to COCO: each annotation becomes a box labelled with its category name;
- a JSON object mapping an image's file_name to its boxes, each either `[x0, y0, x1, y1]` or an object with
  one of `box_xyxy` ([x0, y0, x1, y1]), `bbox` ([x, y, w, h], COCO) or `x`, `y`, `width`, `height` (centre,
  Roboflow), and optionally `label` (or `class`) and `score` (or `confidence`).

Images are matched by file_name as the batch names them; a key that is only a base name matches the one image
with that base name.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from segany.batch.annotate import BoxPrompt
from segany.errors import InvalidInput


class BoxPrompts:
    """Boxes per image; `for_image(file_name)` gives the boxes of one image (empty when none are listed)."""

    def __init__(self, by_name: Mapping[str, list[BoxPrompt]]) -> None:
        self.by_name = dict(by_name)
        by_base: dict[str, list[str]] = {}
        for name in self.by_name:
            by_base.setdefault(Path(name).name, []).append(name)
        self._by_base = {base: names[0] for base, names in by_base.items() if len(names) == 1}

    def for_image(self, file_name: str) -> list[BoxPrompt]:
        if file_name in self.by_name:
            return self.by_name[file_name]
        key = self._by_base.get(Path(file_name).name)
        # Only a bare base name may match by base name: "a/x.jpg" must not pick up boxes of "b/x.jpg".
        if key is not None and "/" not in key:
            return self.by_name[key]
        return []

    def labels(self) -> list[str]:
        """Every label, in first-seen order (the COCO categories of the run)."""
        seen: dict[str, None] = {}
        for boxes in self.by_name.values():
            for box in boxes:
                seen.setdefault(box.label or "object", None)
        return list(seen)

    def __len__(self) -> int:
        return sum(len(boxes) for boxes in self.by_name.values())


def load_box_prompts(path: str | os.PathLike) -> BoxPrompts:
    """Read a `--boxes` file. Raises InvalidInput naming the offending entry (field "boxes...")."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise InvalidInput(f"boxes: cannot read {os.fspath(path)!r} ({error.strerror})", "boxes") from None
    except ValueError as error:
        raise InvalidInput(f"boxes: {os.fspath(path)!r} is not JSON ({error})", "boxes") from None
    if isinstance(data, Mapping) and "images" in data and "annotations" in data:
        return BoxPrompts(_from_coco(data))
    if not isinstance(data, Mapping):
        raise InvalidInput("boxes: expected a COCO file or an object mapping file names to boxes", "boxes")
    by_name = {}
    for name, entries in data.items():
        if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
            raise InvalidInput(f"expected a list of boxes, got {type(entries).__name__}", f"boxes[{name}]")
        by_name[str(name)] = [_entry(entry, f"boxes[{name}][{i}]") for i, entry in enumerate(entries)]
    return BoxPrompts(by_name)


def _from_coco(data: Mapping[str, Any]) -> dict[str, list[BoxPrompt]]:
    try:
        names = {image["id"]: str(image["file_name"]) for image in data["images"]}
        categories = {c["id"]: str(c["name"]) for c in data.get("categories", [])}
    except (KeyError, TypeError) as error:
        raise InvalidInput(f"boxes: COCO images need id and file_name, categories id and name ({error})",
                           "boxes") from None
    by_name: dict[str, list[BoxPrompt]] = {name: [] for name in names.values()}
    for i, annotation in enumerate(data["annotations"]):
        where = f"boxes.annotations[{i}]"
        if not isinstance(annotation, Mapping) or annotation.get("image_id") not in names:
            raise InvalidInput("annotation without a known image_id", where)
        x, y, w, h = _numbers(annotation.get("bbox"), 4, f"{where}.bbox")
        label = categories.get(annotation.get("category_id"))
        score = annotation.get("score")
        by_name[names[annotation["image_id"]]].append(
            _box((x, y, x + w, y + h), label, None if score is None else _number(score, f"{where}.score"), where))
    return by_name


def _entry(entry: Any, where: str) -> BoxPrompt:
    if isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)):
        return _box(tuple(_numbers(entry, 4, where)), None, None, where)
    if not isinstance(entry, Mapping):
        raise InvalidInput(f"expected [x0, y0, x1, y1] or an object, got {type(entry).__name__}", where)
    if "box_xyxy" in entry or "box" in entry:
        key = "box_xyxy" if "box_xyxy" in entry else "box"
        box = tuple(_numbers(entry[key], 4, f"{where}.{key}"))
    elif "bbox" in entry:
        x, y, w, h = _numbers(entry["bbox"], 4, f"{where}.bbox")
        box = (x, y, x + w, y + h)
    elif all(k in entry for k in ("x", "y", "width", "height")):
        cx, cy, w, h = (_number(entry[k], f"{where}.{k}") for k in ("x", "y", "width", "height"))
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        raise InvalidInput("a box object needs box_xyxy, bbox (x, y, w, h) or x, y, width, height", where)
    label = entry.get("label", entry.get("class"))
    score = entry.get("score", entry.get("confidence"))
    return _box(box, None if label is None else str(label),
                None if score is None else _number(score, f"{where}.score"), where)


def _box(box: tuple[float, ...], label: str | None, score: float | None, where: str) -> BoxPrompt:
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise InvalidInput(f"box {list(box)} has x1 < x0 or y1 < y0", where)
    return BoxPrompt((x0, y0, x1, y1), label, score)


def _numbers(values: Any, count: int, where: str) -> list[float]:
    if not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or len(values) != count:
        raise InvalidInput(f"expected {count} numbers, got {values!r}", where)
    return [_number(v, where) for v in values]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"expected a finite number, got {value!r}", where)
    return float(value)
