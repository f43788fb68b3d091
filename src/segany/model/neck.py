"""FPN neck: 1x1 lateral convolutions with nearest-neighbour top-down fusion on the configured levels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segany.model.position import sine_position_encoding


class FpnNeck(nn.Module):
    """Maps the trunk's stage outputs to `d_model` channels.

    `backbone_channel_list` is lowest resolution first (the official order), so `convs[0]` is the
    lateral of the last stage. Parameter names follow `image_encoder.neck.` in the checkpoints.
    """

    def __init__(self, d_model: int, backbone_channel_list: list[int], fpn_top_down_levels: list[int]) -> None:
        super().__init__()
        self.d_model = d_model
        self.convs = nn.ModuleList()
        for dim in backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.fpn_top_down_levels = set(fpn_top_down_levels)

    def lateral(self, level: int) -> nn.Conv2d:
        """The 1x1 convolution of stage `level` (0 = highest resolution)."""
        return self.convs[len(self.convs) - 1 - level].conv

    def forward(self, stage_features: list[torch.Tensor], scalp: int = 1, first_level: int = 0) -> list[torch.Tensor]:
        """Stage features (highest resolution first) -> fused levels `first_level`.., highest resolution first.

        The `scalp` lowest-resolution levels are dropped from the result (the official encoder
        drops one); they still feed the top-down path. Levels below `first_level` are not computed.
        """
        n = len(self.convs) - 1
        out: list[torch.Tensor | None] = [None] * len(self.convs)
        above = None
        for level in range(n, first_level - 1, -1):
            lateral = self.convs[n - level](stage_features[level])
            if level in self.fpn_top_down_levels and above is not None:
                above = lateral + F.interpolate(above, scale_factor=2.0, mode="nearest")
            else:
                above = lateral
            out[level] = above
        return out[first_level : len(out) - scalp]  # type: ignore[return-value]

    def position_encodings(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The sine encoding of each level (the official `vision_pos_enc`); not used by the image path."""
        return [
            sine_position_encoding(x.shape[0], x.shape[-2:], self.d_model, device=x.device, dtype=x.dtype) for x in levels
        ]
