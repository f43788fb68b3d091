"""The mask decoder's two-way transformer: prompt tokens and image tokens attend to each other."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.model import fused
from segany.model.common import MLP


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
        b, h, n, d = q.shape
        if k.shape[0] != b:
            # Every prompt's queries meet the same keys: one attention over the B * n queries, the
            # same rows as B attentions over the expanded image. CPU flash attention runs a few long
            # query blocks far better than B blocks of 7-9 rows: 14 -> 6 ms in bfloat16 for 32 box
            # prompts (8 heads of 16 over 4,096 keys), bit-identical.
            out = F.scaled_dot_product_attention(q.transpose(0, 1).reshape(1, h, b * n, d), k, v)
            out = out.view(h, b, n, d).transpose(0, 1)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def tokens_to_image(self, tokens: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
        """`forward(tokens, image_k, image_v)` for a few queries (T prompt tokens) over many keys (HW image tokens).

        tokens (B, T, C); image_k, image_v (B, HW, C). Reassociated so that the image is never projected:
        each head's query is folded into the key projection, and the value projection is applied to the
        attention-pooled image, leaving two (heads*T x C) by (C x HW) products per prompt. That is fewer
        FLOPs than projecting HW keys and values whenever heads*T < internal width (72 against 128 for a box
        prompt), and no (B, HW, internal) tensor is written. The key bias adds the same value to every
        score of a query, which softmax cancels.
        """
        b, t, _ = tokens.shape
        heads = self.num_heads
        internal = self.q_proj.out_features
        d = internal // heads
        q = self.q_proj(tokens).view(b, t, heads, d) * d**-0.5
        fold_k = torch.einsum("bthd,hdc->bhtc", q, self.k_proj.weight.view(heads, d, -1)).reshape(b, heads * t, -1)
        probs = torch.bmm(fold_k, image_k.transpose(1, 2)).softmax(dim=-1)  # (B, heads*T, HW)
        pooled = torch.bmm(probs, image_v).view(b, heads, t, -1)  # (B, heads, T, C): probabilities sum to 1,
        # so the value bias passes through unchanged.
        v = torch.einsum("bhtc,hdc->bthd", pooled, self.v_proj.weight.view(heads, d, -1)) + self.v_proj.bias.view(heads, d)
        return self.out_proj(v.reshape(b, t, internal))

    def folds_tokens_to_image(self, tokens: torch.Tensor, image: torch.Tensor) -> bool:
        """Whether `tokens_to_image` costs fewer FLOPs than `forward` here (per-prompt image, few tokens)."""
        return image.shape[0] == tokens.shape[0] and self.num_heads * tokens.shape[1] < self.q_proj.out_features

    def image_to_tokens(
        self,
        image: torch.Tensor,
        tokens_k: torch.Tensor,
        tokens_v: torch.Tensor,
        residual: torch.Tensor | None = None,
        in_place: bool = False,
    ) -> torch.Tensor:
        """`forward(image, tokens_k, tokens_v)` for many queries (HW image tokens) over a few keys (T prompt tokens).

        image (B or 1, HW, C); tokens (B, T, C). The same result, reassociated so that no (B, HW, internal)
        query or head-output tensor exists: the query projection is folded into the keys and the output
        projection into the values, leaving two (HW x C) by (C x heads*T) products per prompt. Generic
        attention kernels handle a key length of ~7 poorly; these are plain matrix products. With
        `residual` (B or 1, HW, C), returns residual + attention from the last product, without another
        pass over the (B, HW, C) result; with `in_place` too, accumulated into `residual` (B, HW, C).
        """
        b, t, _ = tokens_k.shape
        heads = self.num_heads
        internal = self.q_proj.out_features
        d = internal // heads
        scale = d**-0.5
        k = self.k_proj(tokens_k).view(b, t, heads, d)
        v = self.v_proj(tokens_v).view(b, t, heads, d)
        w_q = self.q_proj.weight.view(heads, d, -1)  # (heads, d, C)
        # scores[n, (h, t)] = (image[n] @ W_q_h^T + b_q_h) . k[t, h] * scale
        # Scores are laid out (B, heads, T, HW), HW innermost: softmax over T then runs vectorised along HW,
        # where with T innermost (a softmax over 7-9 values per row) it took longer than both products.
        fold_q = torch.einsum("hdc,bthd->bhtc", w_q, k).reshape(b, heads * t, -1) * scale  # (B, heads*T, C)
        bias_q = torch.einsum("hd,bthd->bht", self.q_proj.bias.view(heads, d), k).reshape(b, heads * t, 1) * scale
        if image.shape[0] == b:
            scores = torch.baddbmm(bias_q, fold_q, image.transpose(1, 2))
        else:  # one image for every prompt: a single (B*heads*T x C) @ (C x HW) product
            scores = (fold_q.reshape(b * heads * t, -1) @ image[0].transpose(0, 1)).view(b, heads * t, -1) + bias_q
        probs = scores.view(b, heads, t, -1).softmax(dim=2).view(b, heads * t, -1)
        # out[n] = sum_h probs_h[n] @ v_h @ W_out_h^T + b_out
        w_out = self.out_proj.weight.view(-1, heads, d)  # (C, heads, d)
        fold_v = torch.einsum("bthd,chd->bhtc", v, w_out).reshape(b, heads * t, -1)
        if residual is None:
            return torch.baddbmm(self.out_proj.bias.view(1, 1, -1).to(probs.dtype), probs.transpose(1, 2), fold_v)
        # Each head's probabilities sum to 1 over the T tokens, so spreading the output bias over the
        # heads' values adds it exactly once to every pixel.
        fold_v = fold_v + self.out_proj.bias.to(fold_v.dtype) / heads
        if in_place:
            return residual.baddbmm_(probs.transpose(1, 2), fold_v)
        return torch.baddbmm(residual.expand(b, -1, -1), probs.transpose(1, 2), fold_v)


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
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor,
        keys_owned: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, T, C); keys (B, HW, C) or (1, HW, C) when every prompt shares the same image tokens.

        `keys_owned`: `keys` is this call's to overwrite (the previous layer's output), which saves a copy.
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        keys_pe = keys + key_pe
        queries = self.norm2(queries + _token_to_image(self.cross_attn_token_to_image, queries + query_pe, keys_pe, keys))
        queries = self.norm3(queries + self.mlp(queries))

        i2t = self.cross_attn_image_to_token
        if fused.active(keys, keys):
            in_place = keys_owned and keys.shape[0] == queries.shape[0] and keys.is_contiguous()
            keys = i2t.image_to_tokens(keys_pe, queries + query_pe, queries, residual=keys, in_place=in_place)
        else:
            keys = keys + i2t.image_to_tokens(keys_pe, queries + query_pe, queries)
        return queries, self.norm4(keys)


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
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, prompt_tokens, image_pe, keys_owned=i > 0)
        attn = _token_to_image(self.final_attn_token_to_image, queries + prompt_tokens, keys + image_pe, keys)
        return self.norm_final_attn(queries + attn), keys


def _token_to_image(attn: Attention, tokens: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
    """Prompt tokens (B, T, C) attending to image tokens (B or 1, HW, C), by the cheaper of two equal routes.

    When the image is shared (batch 1) its projections are computed once for all prompts; on CPU fast
    paths a per-prompt image is never projected (`Attention.tokens_to_image`). `fused.plain()` keeps
    the official order of operations.
    """
    if fused.active(tokens, attn.q_proj.weight) and attn.folds_tokens_to_image(tokens, image_k):
        return attn.tokens_to_image(tokens, image_k, image_v)
    return attn.attend(attn.q_proj(tokens), attn.k_proj(image_k), attn.v_proj(image_v))
