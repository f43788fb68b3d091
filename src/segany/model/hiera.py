"""Hiera trunk of the SAM 2 image encoder (hierarchical ViT with windowed attention and query pooling).

Tensors inside the trunk are channels-last, (B, H, W, C). Parameter names follow the official
checkpoints under `image_encoder.trunk.`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segany.model import fused
from segany.model.common import MLP


@dataclass(frozen=True)
class HieraConfig:
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    q_pool: int = 3  # number of stage transitions that pool queries
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    mlp_ratio: float = 4.0

    @property
    def stage_ends(self) -> list[int]:
        """Index of the last block of each stage."""
        return [sum(self.stages[: i + 1]) - 1 for i in range(len(self.stages))]

    @property
    def channels(self) -> list[int]:
        """Output channels of each stage, highest resolution first."""
        return [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * num_windows, window, window, C), zero-padding H and W up to multiples of `window`."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`, dropping the padding."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def max_pool_channels_last(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """2D max pooling (kernel = stride, floor) of a (B, H, W, C) tensor, as `F.max_pool2d` computes it.

    Written as elementwise maxima of the strided views, which read whole channel rows: `F.max_pool2d` on the
    permuted view copied its input to NCHW and back. Bit-identical and 2-6x faster per call on an AMX Xeon, in
    both dtypes; a whole tiny embed gained up to 3% there when memory was slow, nothing measurable when it was
    fast (bench/README.md). Exporters trace the single pooling op, which they map to one node of their own.
    """
    if torch.jit.is_tracing():
        return F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)
    sh, sw = stride
    h, w = x.shape[1] // sh * sh, x.shape[2] // sw * sw
    x = x[:, :h, :w]
    x = functools.reduce(torch.maximum, [x[:, i::sh] for i in range(sh)])
    return functools.reduce(torch.maximum, [x[:, :, j::sw] for j in range(sw)])


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be max-pooled (the first block of a new stage)."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', C_out); `residual` (the output's shape) is added in the projection."""
        b, h, w, _ = x.shape
        qkv = fused.linear(x, self.qkv).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each (B, HW, heads, head_dim)
        if self.q_stride is not None:
            q = max_pool_channels_last(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return fused.linear(out.transpose(1, 2).reshape(b, h, w, -1), self.proj, residual=residual)


# A windowed block touches only its own windows (and pools inside them), so it can run on horizontal strips of
# whole windows, one after the other, with identical results. A strip of ~8k tokens keeps the block's
# intermediates (qkv, the 4x MLP hidden layer: ~12 MB in float32) in the last-level cache, where on the whole
# 256x256 first stage every op streams 25-150 MB through memory. Measured on a 2-core Xeon, trunk of tiny at
# 1024x1024: float32 within noise at 4k, 8k or all tokens a strip (~1050 ms), bfloat16 342, 320 and 331 ms (its
# smaller tensors leave per-op overhead to dominate small strips).
STRIP_TOKENS = 8192


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block with optional windowing and query pooling."""

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, q_stride: tuple[int, int] | None, window_size: int
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, num_layers=2, activation=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H', W', C_out). A windowed block runs strip by strip (see STRIP_TOKENS)."""
        rows = self._strip_rows(x)
        if rows >= x.shape[1]:
            return self._forward(x)
        return torch.cat([self._forward(x[:, top:top + rows]) for top in range(0, x.shape[1], rows)], dim=1)

    def _strip_rows(self, x: torch.Tensor) -> int:
        """Rows per strip: whole windows, about STRIP_TOKENS tokens; all rows for a global block."""
        if self.window_size == 0:
            return x.shape[1]
        tokens_per_window_row = int(x.shape[0]) * int(x.shape[2]) * self.window_size  # int(): shapes trace as tensors
        windows_high = max(1, round(STRIP_TOKENS / tokens_per_window_row))
        return windows_high * self.window_size

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The residual path changes width (and resolution, when pooling) with the block.
            shortcut = fused.linear(x, self.proj)
            if self.q_stride is not None:
                shortcut = max_pool_channels_last(shortcut, self.q_stride)

        window = self.window_size
        if window > 0:
            x, padded_hw = window_partition(x, window)
            x = self.attn(x)
            if self.q_stride is not None:
                # Pooled queries shrink each window; recompute the padded grid at the new resolution.
                window = window // self.q_stride[0]
                h, w = shortcut.shape[1:3]
                padded_hw = (h + (window - h % window) % window, w + (window - w % window) % window)
            x = shortcut + window_unpartition(x, window, padded_hw, shortcut.shape[1:3])
        else:
            x = self.attn(x, residual=shortcut)
        return self.mlp(self.norm2(x), residual=x)


class PatchEmbed(nn.Module):
    """7x7 stride-4 convolution, output (B, H, W, C) contiguous."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A channels-last input makes the convolution write channels-last, so the permute below is free
        # and the first stage reads contiguous rows: on the permuted NCHW output every LayerNorm and
        # window partition of the 256x256 stage copied it first (30 -> 9 ms for conv + position add).
        return self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """Returns one feature map per stage, (B, C_i, H_i, W_i), highest resolution first."""

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size))
        first_window = cfg.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, cfg.embed_dim, first_window, first_window))

        stage_ends = cfg.stage_ends
        q_pool_blocks = [end + 1 for end in stage_ends[:-1]][: cfg.q_pool]
        dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
        blocks = []
        for i in range(sum(cfg.stages)):
            dim_out = dim
            # The first block of a stage still uses the previous stage's window: it pools inside it.
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            if i - 1 in stage_ends:
                dim_out = int(dim * cfg.dim_mul)
                heads = int(heads * cfg.head_mul)
                stage += 1
            q_stride = cfg.q_stride if i in q_pool_blocks else None
            blocks.append(MultiScaleBlock(dim, dim_out, heads, cfg.mlp_ratio, q_stride, window))
            dim = dim_out
        self.blocks = nn.ModuleList(blocks)
        self._stage_ends = set(stage_ends)
        self._pos_cache: tuple[tuple, torch.Tensor] | None = None

    def position_embedding(self, size_hw: tuple[int, int]) -> torch.Tensor:
        """Background table interpolated to the feature size plus the tiled window table, (1, H, W, C).

        The bicubic resize costs ~2% of a tiny embed, so in inference the result is kept per size until
        the tables change (a new state dict bumps their version; `.to()` gives new storage).
        """
        if (torch.is_grad_enabled() and self.pos_embed.requires_grad) or torch.jit.is_tracing():
            return self._position_embedding(size_hw)
        key = (tuple(size_hw), *((p.data_ptr(), p._version, p.dtype) for p in (self.pos_embed, self.pos_embed_window)))
        if self._pos_cache is None or self._pos_cache[0] != key:
            self._pos_cache = (key, self._position_embedding(size_hw))
        return self._pos_cache[1]

    def _position_embedding(self, size_hw: tuple[int, int]) -> torch.Tensor:
        pos = F.interpolate(self.pos_embed, size=size_hw, mode="bicubic")
        win = self.pos_embed_window
        reps = [p // w for p, w in zip(pos.shape, win.shape)]
        return (pos + win.tile(reps)).permute(0, 2, 3, 1).contiguous()  # the trunk's layout

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)
        x = x + self.position_embedding(x.shape[1:3]).to(x.dtype)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
