"""The last few decoded images by digest, so a text prompt can follow `/v1/embed` with only an image_id."""
from __future__ import annotations

import threading
from collections import OrderedDict

from segany.server.engine.types import DecodedImage


class RecentImages:
    """The last few decoded images by digest, so a text prompt can follow `/v1/embed` with only an image_id.

    The embedding cache holds features, not pixels, and the detector needs pixels.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._images: OrderedDict[str, DecodedImage] = OrderedDict()
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, image: DecodedImage) -> None:
        if image.rgb.nbytes > self._max_bytes:
            return
        with self._lock:
            if image.digest not in self._images:
                self._bytes += image.rgb.nbytes
            self._images[image.digest] = image
            self._images.move_to_end(image.digest)
            while self._bytes > self._max_bytes:
                _, dropped = self._images.popitem(last=False)
                self._bytes -= dropped.rgb.nbytes

    def get(self, digest: str) -> DecodedImage | None:
        with self._lock:
            image = self._images.get(digest)
            if image is not None:
                self._images.move_to_end(digest)
            return image
