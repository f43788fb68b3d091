"""A predictor view for the automatic mask generator that reads and fills the embedding cache.

The generator embeds each crop through `embed`; with one crop layer (the default) the crop is the
whole image, so an image already embedded by any dialect costs no second embed, and an image first
seen here is cached for the clicks that often follow.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from segany.io.images import image_digest
from segany.predict.predictor import Predictor
from segany.predict.types import ImageEmbedding
from segany.server.engine.embedding_cache import EmbeddingCache


class CachingPredictor:
    """`embed` through the cache (keyed like the engine's: variant + pixel digest); `decode` as is."""

    def __init__(self, predictor: Predictor, cache: EmbeddingCache,
                 on_lookup: Callable[[bool], None] | None = None) -> None:
        self.predictor = predictor
        self.cache = cache
        self._on_lookup = on_lookup or (lambda hit: None)  # for the server's hit/miss metrics

    def embed(self, image: np.ndarray) -> ImageEmbedding:
        """Embedding of an (H, W, 3) uint8 RGB array (the generator's crops)."""
        digest = image_digest(np.ascontiguousarray(image))
        cached = self.cache.get(self.predictor.variant, digest)
        self._on_lookup(cached is not None)
        if cached is not None:
            return cached
        embedding = self.predictor.embed(image)
        self.cache.put(self.predictor.variant, digest, embedding)
        return embedding

    def decode(self, embedding: ImageEmbedding, point_coords: torch.Tensor, point_labels: torch.Tensor,
               mask_input: torch.Tensor | None = None, multimask_output: bool = True) -> Any:
        return self.predictor.decode(embedding, point_coords, point_labels, mask_input, multimask_output)
