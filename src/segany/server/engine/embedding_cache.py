"""Embedding cache: an LRU bounded in bytes, keyed by (model variant, digest of the decoded pixels).

Shared by every dialect, so a Roboflow click on an image first embedded through the native API (or
Livepeer, or the web page) costs a decode only. Image ids are kept per API key (`owner`, a key id) in a
bounded map beside it: a client-chosen id (Roboflow's `image_id`) or a native digest id resolves only for
the key that embedded that image, so one key can neither use nor squat another key's ids. With auth off
(owner None) a digest id resolves for everyone: there is one tenant.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from segany.predict.types import ImageEmbedding

CacheKey = tuple[str, str]  # (variant, pixel digest)


class EmbeddingCache:
    """Thread-safe LRU of `ImageEmbedding`s whose summed `nbytes` never exceeds `max_bytes`.

    `max_bytes == 0` turns caching off: `put` stores nothing and every `get` misses.
    """

    def __init__(self, max_bytes: int, max_aliases: int = 10_000) -> None:
        self.max_bytes = max_bytes
        self.max_aliases = max_aliases
        self._entries: OrderedDict[CacheKey, ImageEmbedding] = OrderedDict()
        self._aliases: OrderedDict[tuple[str | None, str], str] = OrderedDict()  # (owner, image id) -> digest
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, variant: str, digest: str, count: bool = True) -> ImageEmbedding | None:
        """The cached embedding (refreshing its recency), or None. `count` updates the hit/miss tallies."""
        with self._lock:
            embedding = self._entries.get((variant, digest))
            if embedding is not None:
                self._entries.move_to_end((variant, digest))
            if count:
                if embedding is None:
                    self.misses += 1
                else:
                    self.hits += 1
            return embedding

    def variants_of(self, digest: str) -> list[str]:
        """Variants holding an embedding of `digest`, most recently used first."""
        with self._lock:
            return [variant for variant, d in reversed(self._entries) if d == digest]

    def put(self, variant: str, digest: str, embedding: ImageEmbedding) -> bool:
        """Store `embedding`, evicting least recently used entries; False when it cannot fit at all."""
        size = embedding.nbytes
        if size > self.max_bytes:
            return False
        with self._lock:
            key = (variant, digest)
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
            self._entries[key] = embedding
            self._bytes += size
            return True

    def add_alias(self, alias: str, digest: str, owner: str | None = None) -> None:
        """Let `alias` stand for `digest` for the key `owner` (a later call moves it: a resend under the same
        id updates it); the oldest aliases are forgotten first."""
        with self._lock:
            self._aliases.pop((owner, alias), None)
            self._aliases[(owner, alias)] = digest
            while len(self._aliases) > self.max_aliases:
                self._aliases.popitem(last=False)

    def resolve(self, image_id: str, owner: str | None = None) -> str | None:
        """The digest `image_id` stands for, for `owner`; None when that key never named it. With no owner
        (auth off) an unknown id is taken as a digest itself (native ids are digests)."""
        with self._lock:
            digest = self._aliases.get((owner, image_id))
            if digest is not None:
                self._aliases.move_to_end((owner, image_id))
            return image_id if digest is None and owner is None else digest

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._aliases.clear()
            self._bytes = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
