"""Post-processing of tracked masks: small-hole filling on the low-res logits, resizing to the video."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# The score a filled hole gets: just above the threshold, so it turns foreground without looking confident.
_HOLE_FILL_SCORE = 0.1


def fill_holes(logits: torch.Tensor, max_area: int) -> torch.Tensor:
    """(N, 1, h, w) logits with every 8-connected background region (logit <= 0) of at most `max_area` pixels
    raised to 0.1. The official predictor does this with a CUDA kernel (and skips it without one); this is
    its CPU equivalent, run on any device's tensors."""
    if max_area <= 0:
        return logits
    import cv2  # a core dependency (opencv-python-headless)

    background = (logits <= 0).cpu().numpy()
    n, _, h, w = background.shape
    # One labelling call for all N maps: stacked with an empty row between them, no region spans two maps.
    stacked = np.zeros((n, h + 1, w), dtype=np.uint8)
    stacked[:, :h] = background[:, 0]
    _, labels, stats, _ = cv2.connectedComponentsWithStats(stacked.reshape(n * (h + 1), w), connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is the foreground (and the separator rows)
    holes = small[labels].reshape(n, h + 1, w)[:, :h]
    if not holes.any():
        return logits
    holes_t = torch.from_numpy(holes).to(logits.device).unsqueeze(1)
    return torch.where(holes_t, torch.tensor(_HOLE_FILL_SCORE, dtype=logits.dtype, device=logits.device), logits)


def to_video_size(logits: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) logits -> (N, 1, H, W), bilinear (align_corners=False), as the official output resize."""
    if tuple(logits.shape[-2:]) == tuple(size_hw):
        return logits
    return F.interpolate(logits, size=size_hw, mode="bilinear", align_corners=False)
