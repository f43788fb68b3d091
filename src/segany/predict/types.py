"""Frozen result types of the predictor."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """Everything the mask decoder needs from one image; computed once, then shared read-only.

    Never mutated after creation, so one instance can be cached and used by many threads at once.
    """

    image_embed: torch.Tensor  # (1, 256, 64, 64), no_mem_embed already added
    high_res_feats: tuple[torch.Tensor, torch.Tensor]  # (1, 32, 256, 256), (1, 64, 128, 128)
    orig_hw: tuple[int, int]  # size of the original image, (height, width)
    variant: str  # the model that produced it; an embedding only fits that model's decoder

    @property
    def nbytes(self) -> int:
        tensors = (self.image_embed, *self.high_res_feats)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Output of `Predictor.predict`, shaped like the official `SAM2ImagePredictor.predict`.

    For one prompt (or a batch of one) the leading batch axis is dropped: masks (C, H, W); for B
    prompts masks are (B, C, H, W). C is 3 with multimask output, else 1.
    """

    masks: np.ndarray  # bool, or float32 logits when return_logits
    scores: np.ndarray  # float32 predicted IoU, (C,) or (B, C)
    low_res_logits: np.ndarray  # float32, (C, 256, 256) or (B, C, 256, 256), clamped to +-32
