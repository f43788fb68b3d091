"""`predict`'s CPU upsampling of low-res logits to the image size, against the official `F.interpolate`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segany.predict.predictor import _upsample_on_cpu


def _logits(batch: int, count: int, seed: int = 0) -> torch.Tensor:
    """(batch, count, 256, 256) smooth logits with outlines, as a decoder gives, and fine noise on top."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, count, 16, 16, generator=g) * 8
    smooth = F.interpolate(coarse, size=(256, 256), mode="bicubic", align_corners=False)
    return smooth + 0.5 * torch.randn(batch, count, 256, 256, generator=g)


@pytest.mark.parametrize("size_hw", [(768, 1024), (1024, 768), (427, 640), (256, 256), (100, 3000), (37, 5), (1, 1)])
def test_cpu_upsampling_matches_interpolate(size_hw) -> None:
    low_res = _logits(1, 3)
    reference = F.interpolate(low_res, size=size_hw, mode="bilinear", align_corners=False).numpy()

    logits = np.empty((1, 3, *size_hw), dtype=np.float32)
    _upsample_on_cpu(low_res.numpy(), logits, threshold=None)
    np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-3)

    masks = np.empty((1, 3, *size_hw), dtype=np.bool_)
    _upsample_on_cpu(low_res.numpy(), masks, threshold=0.0)
    # A flip needs a logit within ~1e-4 of the threshold; the goldens allow 0.1% of pixels.
    assert np.mean(masks == (reference > 0)) >= 0.9999
    assert masks.any() and not masks.all()


def test_cpu_upsampling_reads_strided_logits() -> None:
    """Masks 1-3 of four, as a multimask cut leaves them: each plane is read where it lies."""
    low_res = _logits(2, 4)[:, 1:]
    assert not low_res.is_contiguous()
    masks = np.empty((2, 3, 300, 200), dtype=np.bool_)
    _upsample_on_cpu(low_res.numpy(), masks, threshold=1.5)
    reference = F.interpolate(low_res, size=(300, 200), mode="bilinear", align_corners=False).numpy() > 1.5
    assert np.mean(masks == reference) >= 0.9999
