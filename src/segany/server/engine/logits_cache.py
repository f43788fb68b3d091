"""Roboflow-style low-res logits cache for click refinement without sending `mask_input`.

After a prompt is decoded with `save_logits_to_cache`, its best mask's 256x256 logits are kept under
(model, image digest, box, set of points). A later prompt with `load_logits_from_cache` on the same
image uses the logits of a cached prompt with the same box whose points are a strict subset of its
own, preferring the one with the most points (the previous click). Bounded LRU by entry count.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

PointKey = tuple[float, float, int]


@dataclass(frozen=True)
class PromptKey:
    box: tuple[float, float, float, float] | None
    points: frozenset[PointKey]

    @classmethod
    def of(cls, points_xy: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None) -> PromptKey:
        box_key = None if box is None else tuple(float(v) for v in box)
        if points_xy is None or labels is None:
            return cls(box_key, frozenset())  # type: ignore[arg-type]
        points = frozenset((float(x), float(y), int(label)) for (x, y), label in zip(points_xy, labels))
        return cls(box_key, points)  # type: ignore[arg-type]


class LogitsCache:
    def __init__(self, max_entries: int = 1000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str, PromptKey], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, variant: str, digest: str, prompt: PromptKey, logits: np.ndarray) -> None:
        """Keep (256, 256) logits for `prompt` on this image."""
        if self.max_entries <= 0:
            return
        key = (variant, digest, prompt)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = np.asarray(logits, dtype=np.float32).reshape(1, 256, 256)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def find_prior(self, variant: str, digest: str, prompt: PromptKey) -> np.ndarray | None:
        """(1, 256, 256) logits of the best cached strict sub-prompt of `prompt`, or None."""
        best: tuple[int, np.ndarray] | None = None
        with self._lock:
            for (v, d, cached), logits in reversed(self._entries.items()):  # most recent first
                if v != variant or d != digest or cached.box != prompt.box:
                    continue
                if not cached.points < prompt.points:
                    continue
                size = len(cached.points)
                if size == len(prompt.points) - 1:
                    return logits
                if best is None or size > best[0]:
                    best = (size, logits)
        return None if best is None else best[1]
