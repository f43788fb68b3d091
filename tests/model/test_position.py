"""The neck's sine position encoding (the official `vision_pos_enc`)."""
from __future__ import annotations

import math

import torch

from segany.model.neck import FpnNeck
from segany.model.position import sine_position_encoding


def test_sine_encoding_layout_and_values():
    h, w = 4, 6
    pos = sine_position_encoding(2, (h, w), num_pos_feats=8)
    assert pos.shape == (2, 8, h, w)
    # First half encodes y (constant along a row), second half x (constant along a column).
    assert torch.allclose(pos[:, :4], pos[:, :4, :, :1].expand(-1, -1, -1, w))
    assert torch.allclose(pos[:, 4:], pos[:, 4:, :1, :].expand(-1, -1, h, -1))
    # Channel 0 is sin of the normalised 1-based row position; channel 1 its cosine (same frequency).
    rows = torch.arange(1, h + 1) / (h + 1e-6) * 2 * math.pi
    assert torch.allclose(pos[0, 0, :, 0], torch.sin(rows), atol=1e-6)
    assert torch.allclose(pos[0, 1, :, 0], torch.cos(rows), atol=1e-6)


def test_neck_encodes_each_level():
    neck = FpnNeck(16, [64, 32, 16, 8], fpn_top_down_levels=[2, 3])
    levels = [torch.zeros(1, 16, s, s) for s in (32, 16, 8)]
    assert [p.shape for p in neck.position_encodings(levels)] == [(1, 16, s, s) for s in (32, 16, 8)]
