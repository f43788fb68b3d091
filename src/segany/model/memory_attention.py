"""Memory attention: a frame's 64x64 image tokens attend to themselves and to the memory bank, with 2D RoPE.

Tensors are batch-first, (B, N, C). Parameter names follow `memory_attention.` in the official checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def axial_rope_tables(head_dim: int, grid_hw: tuple[int, int], theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """2D rotary tables for the tokens of an H x W grid (row-major): (cos, signed sin), each (H*W, head_dim).

    Channel pairs (2i, 2i+1) rotate together by one angle: the first head_dim // 4 pairs by the token's
    column, the last head_dim // 4 by its row, each times theta^(-4k / head_dim). The tables are laid out
    per channel (each angle twice; sin negated on even channels) so a rotation is two products and a sum.
    """
    h, w = grid_hw
    quarter = head_dim // 4
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 4)[:quarter].float() / head_dim))
    index = torch.arange(h * w, dtype=torch.float32)
    col = index % w
    row = torch.div(index, w, rounding_mode="floor")
    angles = torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)  # (HW, head_dim // 2)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = torch.stack((-angles.sin(), angles.sin()), dim=-1).flatten(-2)
    return cos, sin


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, heads, N, D) float32 in place by the tables (L, D) of `axial_rope_tables`; returns x.

    N may be a multiple of L (several memories of one grid each): every block of L tokens reuses the tables.
    """
    b, h, n, d = x.shape
    blocks = x.view(b, h, n // cos.shape[0], cos.shape[0], d)
    # Pair partners side by side: (x1, x0, x3, x2, ...), so that x * cos + partner * sin is the rotation.
    partner = blocks.view(*blocks.shape[:-1], d // 2, 2).flip(-1).view(blocks.shape)
    blocks.mul_(cos).add_(partner.mul_(sin))
    return x


class RoPEAttention(nn.Module):
    """Multi-head attention whose queries and (the first `N - num_k_exclude_rope`) keys carry 2D RoPE.

    Keys and values may come in with `kv_dim` channels (the 64-channel memories).
    """

    def __init__(self, dim: int, num_heads: int, grid_hw: tuple[int, int], theta: float, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = kv_dim or dim
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kv_dim, dim)
        self.v_proj = nn.Linear(kv_dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.grid_hw = grid_hw
        self.theta = theta
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) of the grid, made on first use: they follow from the config, not the weights."""
        if self._rope is None or self._rope[0].device != device:
            cos, sin = axial_rope_tables(self.q_proj.out_features // self.num_heads, self.grid_hw, self.theta)
            self._rope = (cos.to(device), sin.to(device))
        return self._rope

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2).contiguous()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0) -> torch.Tensor:
        """q (B, Nq, dim) with Nq the grid's token count; k, v (B, Nk, kv_dim) -> (B, Nq, dim)."""
        cos, sin = self.rope_tables(q.device)
        q = apply_rope_(self._heads(self.q_proj(q).float()), cos, sin)
        k = self._heads(self.k_proj(k).float())
        v = self._heads(self.v_proj(v))
        # Object-pointer tokens (the last num_k_exclude_rope keys) have no spatial position: not rotated.
        apply_rope_(k[:, :, : k.shape[-2] - num_k_exclude_rope], cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))


class MemoryAttentionLayer(nn.Module):
    """Pre-norm self-attention, cross-attention to the memories (keys carry their position), ReLU MLP."""

    def __init__(self, dim: int, mem_dim: int, ffn_dim: int, grid_hw: tuple[int, int], theta: float) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(dim, 1, grid_hw, theta)
        self.cross_attn_image = RoPEAttention(dim, 1, grid_hw, theta, kv_dim=mem_dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor, num_ptr_tokens: int) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        y = self.norm2(x)
        x = x + self.cross_attn_image(y, memory + memory_pos, memory, num_k_exclude_rope=num_ptr_tokens)
        return x + self.linear2(F.relu(self.linear1(self.norm3(x))))


class MemoryAttention(nn.Module):
    """Conditions a frame's image tokens on the memory bank; `num_layers` layers then a final LayerNorm."""

    def __init__(self, dim: int = 256, mem_dim: int = 64, num_layers: int = 4, ffn_dim: int = 2048,
                 grid_hw: tuple[int, int] = (64, 64), theta: float = 10000.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(MemoryAttentionLayer(dim, mem_dim, ffn_dim, grid_hw, theta) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, tokens_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                num_ptr_tokens: int = 0) -> torch.Tensor:
        """tokens, tokens_pos (B, HW, dim); memory, memory_pos (B, M, mem_dim) whose last `num_ptr_tokens` are
        object-pointer tokens -> (B, HW, dim)."""
        x = tokens + 0.1 * tokens_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_ptr_tokens)
        return self.norm(x)
