"""Prompt encoder: points and box corners to sparse tokens, a low-res mask to a dense embedding."""
from __future__ import annotations

import torch
from torch import nn

from segany.model.common import LayerNorm2d
from segany.model.position import PositionEmbeddingRandom

# Point labels as the official encoder numbers them.
LABEL_PAD, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3


class PromptEncoder(nn.Module):
    """Parameter names follow `sam_prompt_encoder.` in the official checkpoints."""

    def __init__(self, embed_dim: int = 256, image_embedding_hw: tuple[int, int] = (64, 64),
                 input_image_hw: tuple[int, int] = (1024, 1024), mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_hw = image_embedding_hw
        self.input_image_hw = input_image_hw
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0: negative point, 1: positive point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe_cache: torch.Tensor | None = None

    @property
    def mask_input_hw(self) -> tuple[int, int]:
        return (4 * self.image_embedding_hw[0], 4 * self.image_embedding_hw[1])

    def dense_pe(self) -> torch.Tensor:
        """Position encoding of the image embedding grid, (1, C, 64, 64).

        A pure function of frozen weights, so it is computed once (per device) and reused by every decode.
        """
        device = self.pe_layer.positional_encoding_gaussian_matrix.device
        cached = self._dense_pe_cache
        if cached is None or cached.device != device or self.training:
            cached = self.pe_layer.dense(self.image_embedding_hw).unsqueeze(0)
            self._dense_pe_cache = cached
        return cached

    def embed_points(self, coords_xy: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) coordinates in the 1024 input frame and (B, N) labels -> (B, N + 1, C) tokens.

        A not-a-point token is always appended: the official image predictor sends box corners as
        points, so its encoder pads every prompt.
        """
        b = coords_xy.shape[0]
        coords = torch.cat([coords_xy.float() + 0.5, coords_xy.new_zeros((b, 1, 2), dtype=torch.float32)], dim=1)
        labels = torch.cat([labels, labels.new_full((b, 1), LABEL_PAD)], dim=1)
        emb = self.pe_layer.points(coords, self.input_image_hw)
        table = torch.cat([self.not_a_point_embed.weight] + [e.weight for e in self.point_embeddings], dim=0).float()
        # Padding tokens are the not-a-point embedding alone; others add their label's embedding to the position.
        is_pad = (labels == LABEL_PAD).unsqueeze(-1)
        type_emb = table[(labels.clamp(LABEL_PAD, LABEL_BOX_BOTTOM_RIGHT) + 1).long()]
        return torch.where(is_pad, type_emb, emb + type_emb)

    def embed_masks(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) mask logits -> (B, C, 64, 64)."""
        return self.mask_downscaling(mask_logits)

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        h, w = self.image_embedding_hw
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
