"""The mask decoder's two-way transformer: prompt tokens and image tokens attend to each other."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal = embedding_dim // downsample_rate
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over already projected q, k, v of shape (B, N, internal); k/v may have batch 1."""
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if k.shape[0] != q.shape[0]:
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))


class TwoWayAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, num_layers=2, activation=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, T, C); keys (B, HW, C) or (1, HW, C) when every prompt shares the same image tokens."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        keys_pe = keys + key_pe
        # When keys are shared (batch 1), their projections are computed once for all prompts.
        ca = self.cross_attn_token_to_image
        queries = queries + ca.attend(ca.q_proj(queries + query_pe), ca.k_proj(keys_pe), ca.v_proj(keys))
        queries = self.norm2(queries)
        queries = self.norm3(queries + self.mlp(queries))

        ia = self.cross_attn_image_to_token
        q_img = ia.q_proj(keys_pe)
        k_tok, v_tok = ia.k_proj(queries + query_pe), ia.v_proj(queries)
        if q_img.shape[0] != k_tok.shape[0]:
            q_img = q_img.expand(k_tok.shape[0], -1, -1)
        keys = self.norm4(keys + ia.attend(q_img, k_tok, v_tok))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Parameter names follow `sam_mask_decoder.transformer.` in the official checkpoints."""

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_tokens: torch.Tensor, image_pe: torch.Tensor, prompt_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens (B|1, HW, C), image_pe (1, HW, C), prompt_tokens (B, T, C) -> (queries, keys)."""
        queries, keys = prompt_tokens, image_tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, prompt_tokens, image_pe)
        fa = self.final_attn_token_to_image
        k = fa.k_proj(keys + image_pe)
        queries = queries + fa.attend(fa.q_proj(queries + prompt_tokens), k, fa.v_proj(keys))
        return self.norm_final_attn(queries), keys
