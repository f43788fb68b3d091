"""The COCO instances file of a batch run: atomic writes, and resuming where an interrupted run stopped.

Two files live side by side:

- `annotations.json`: a complete, valid COCO file at all times. It is rewritten (to a temporary file in the
  same folder, fsynced, then renamed over the old one) every `checkpoint_every_s` seconds and at the end, so
  a reader never sees half a file.
- `annotations.json.journal`: one JSON line per image finished since the last rewrite, appended and flushed
  as each image completes. A run killed at any moment loses at most the image in flight; the next run
  replays the journal (a torn last line is ignored) and skips every image already present.

Images that could not be read are listed in `info["segany"]["skipped"]` and tried again on the next run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from segany.errors import InvalidInput
from segany.io.files import write_bytes_atomic

JOURNAL_SUFFIX = ".journal"
# Record keys that become COCO annotation fields of their own; other record keys are copied as they are.
_RECORD_KEYS = ("segmentation", "area", "bbox", "score", "category")


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + JOURNAL_SUFFIX)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write `value` as compact JSON to `path` so that `path` is always either the old or the new file."""
    write_bytes_atomic(path, json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8"))


class CocoWriter:
    """Accumulates images and their annotations and keeps the COCO file and its journal up to date.

    Not thread-safe: one thread (the run's main loop) adds results.
    """

    def __init__(self, path: str | os.PathLike, *, run_info: Mapping[str, Any], categories: Sequence[str] = (),
                 checkpoint_every_s: float = 60.0) -> None:
        self.path = Path(path)
        self.run_info = dict(run_info)
        self.checkpoint_every_s = float(checkpoint_every_s)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.categories: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.previous_run_info: dict[str, Any] | None = None
        self._category_ids: dict[str, int] = {}
        self._done: set[str] = set()
        self._max_image_id = 0
        self._max_annotation_id = 0
        self._journal = None
        self._dirty = False  # results added since the file was last written
        self._last_checkpoint = time.monotonic()
        for name in categories:
            self._category_id(name)

    # ---- opening and resuming --------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, run_info: Mapping[str, Any], categories: Sequence[str] = (),
             overwrite: bool = False, checkpoint_every_s: float = 60.0) -> CocoWriter:
        """A writer that continues `path` (and its journal) when they exist, unless `overwrite`.

        Raises InvalidInput (field "out") when `path` exists but is not a COCO file this writer can continue.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise InvalidInput(f"out {str(path)!r}: folder {str(path.parent)!r} does not exist", "out")
        writer = cls(path, run_info=run_info, checkpoint_every_s=checkpoint_every_s)
        if overwrite:
            path.unlink(missing_ok=True)
            journal_path(path).unlink(missing_ok=True)
        elif path.exists():
            writer._load(path)
        for name in categories:
            writer._category_id(name)
        if not overwrite:
            writer._replay(journal_path(path))
        return writer

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            images, annotations, categories = data["images"], data["annotations"], data["categories"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InvalidInput(f"out {str(path)!r} exists but is not a COCO file to resume ({error}); "
                               "pass --overwrite to replace it", "out") from None
        for category in categories:
            self.categories.append(category)
            self._category_ids[str(category["name"])] = int(category["id"])
        for image in images:
            self._take(image, [])
        self.annotations.extend(annotations)
        self._max_annotation_id = max((int(a["id"]) for a in annotations), default=0)
        segany_info = data.get("info", {}).get("segany", {}) if isinstance(data.get("info"), dict) else {}
        self.previous_run_info = segany_info.get("run")
        self.skipped.update({str(k): str(v) for k, v in segany_info.get("skipped", {}).items()})

    def _replay(self, journal: Path) -> None:
        if not journal.exists():
            return
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # the line a killed run was writing
                continue
            for category in entry.get("categories", []):
                if category["name"] not in self._category_ids:
                    self.categories.append(category)
                    self._category_ids[category["name"]] = int(category["id"])
            if "image" in entry and entry["image"]["file_name"] not in self._done:
                self._take(entry["image"], entry["annotations"])
            elif "skipped" in entry:
                self.skipped[entry["skipped"]["file_name"]] = entry["skipped"]["error"]

    def _take(self, image: dict[str, Any], annotations: list[dict[str, Any]]) -> None:
        self.images.append(image)
        self.annotations.extend(annotations)
        self._done.add(str(image["file_name"]))
        self.skipped.pop(str(image["file_name"]), None)
        self._max_image_id = max(self._max_image_id, int(image["id"]))
        self._max_annotation_id = max([self._max_annotation_id, *(int(a["id"]) for a in annotations)])

    # ---- adding results --------------------------------------------------------------------------
    def is_done(self, file_name: str) -> bool:
        return file_name in self._done

    @property
    def done_count(self) -> int:
        return len(self._done)

    def add_image(self, file_name: str, size_hw: tuple[int, int], records: Iterable[Mapping[str, Any]]) -> int:
        """Add one labelled image; `records` from `ImageAnnotator`. Returns the number of annotations added."""
        if file_name in self._done:
            raise ValueError(f"{file_name} is already in {self.path}")
        known = len(self.categories)
        image_id = 1 + self._max_image_id
        image = {"id": image_id, "file_name": file_name, "height": int(size_hw[0]), "width": int(size_hw[1])}
        next_id = 1 + self._max_annotation_id
        annotations = []
        for offset, record in enumerate(records):
            annotation = {
                "id": next_id + offset, "image_id": image_id, "category_id": self._category_id(record["category"]),
                "segmentation": record["segmentation"], "area": int(record["area"]),
                "bbox": [float(v) for v in record["bbox"]], "iscrowd": 0, "score": float(record["score"]),
            }
            annotation.update({k: v for k, v in record.items() if k not in _RECORD_KEYS})
            annotations.append(annotation)
        self._take(image, annotations)
        self._append({"image": image, "annotations": annotations, "categories": self.categories[known:]})
        return len(annotations)

    def add_skipped(self, file_name: str, error: str) -> None:
        """Record an image that could not be read (it is tried again by the next run)."""
        self.skipped[file_name] = error
        self._append({"skipped": {"file_name": file_name, "error": error}})

    def _category_id(self, name: str) -> int:
        name = str(name)
        if name not in self._category_ids:
            new_id = 1 + max((int(c["id"]) for c in self.categories), default=0)
            self.categories.append({"id": new_id, "name": name, "supercategory": "object"})
            self._category_ids[name] = new_id
        return self._category_ids[name]

    def _append(self, entry: Mapping[str, Any]) -> None:
        self._dirty = True
        if self._journal is None:
            self._journal = open(journal_path(self.path), "a", encoding="utf-8")
        self._journal.write(json.dumps(entry, separators=(",", ":"), allow_nan=False) + "\n")
        self._journal.flush()  # in the OS's hands now: survives the process being killed
        if time.monotonic() - self._last_checkpoint >= self.checkpoint_every_s:
            self.checkpoint()

    # ---- writing ---------------------------------------------------------------------------------
    def to_coco(self) -> dict[str, Any]:
        import segany

        info = {
            "description": "segany batch", "version": segany.__version__,
            "date_created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "segany": {"run": self.run_info, "skipped": dict(sorted(self.skipped.items()))},
        }
        return {"info": info, "licenses": [], "images": self.images, "annotations": self.annotations,
                "categories": self.categories}

    def checkpoint(self) -> None:
        """Rewrite the COCO file atomically, then empty the journal (whose entries it now holds)."""
        write_json_atomic(self.path, self.to_coco())
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        # A crash between the rename and this truncation only leaves entries that replay skips as done.
        journal_path(self.path).unlink(missing_ok=True)
        self._last_checkpoint = time.monotonic()
        self._dirty = False

    def close(self) -> None:
        """Final write (when anything changed, or a journal from an earlier run is pending); the journal is removed.

        A run that added nothing leaves an existing file untouched and creates none.
        """
        if self._dirty or journal_path(self.path).exists():
            self.checkpoint()
