"""The encoder's fast paths compute what the plain ops compute: fused linear epilogues and strip-wise blocks."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segany
from segany.model import fused, hiera
from segany.model.hiera import MultiScaleBlock


@pytest.fixture
def layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(32, 64)


@pytest.mark.parametrize("gelu_in_epilogue", [True, False], ids=["gelu-epilogue", "gelu-after"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_fused_linear_matches_plain_ops(layer, dtype, atol, gelu_in_epilogue, monkeypatch):
    """Both GELU routes (oneDNN's epilogue with AVX-512, a separate pass on AVX2) are the plain ops."""
    monkeypatch.setattr(fused, "_gelu_in_epilogue", lambda: gelu_in_epilogue)
    layer = layer.to(dtype)
    x = torch.randn(4, 32, 32, 32, dtype=dtype)  # 4096 rows: the fused path
    residual = torch.randn(4, 32, 32, 64, dtype=dtype)
    with torch.inference_mode():
        plain = layer(x)
        cases = [
            (fused.linear(x, layer), plain),
            (fused.linear(x, layer, "gelu"), F.gelu(plain)),
            (fused.linear(x, layer, "relu"), F.relu(plain)),
            (fused.linear(x, layer, residual=residual), plain + residual),
            (fused.linear(x.transpose(1, 2), layer), layer(x.transpose(1, 2))),  # a strided input
        ]
    for got, want in cases:
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=atol)


def test_fused_linear_keeps_autograd_and_refuses_two_epilogues(layer):
    x = torch.randn(4096, 32, requires_grad=True)
    fused.linear(x, layer, "gelu").sum().backward()  # the plain path: gradients flow
    assert x.grad is not None and layer.weight.grad is not None
    with pytest.raises(ValueError, match="not both"):
        fused.linear(x, layer, "gelu", residual=torch.zeros(4096, 64))


def test_plain_context_bypasses_the_fused_kernels(layer):
    x = torch.randn(4096, 32)
    with torch.inference_mode(), fused.plain():
        assert not fused.active(x, layer.weight)
    with torch.inference_mode():
        assert fused.active(x, layer.weight) == fused._ONEDNN


@pytest.mark.parametrize("q_stride, window, size", [(None, 8, 64), ((2, 2), 8, 64), (None, 14, 64), (None, 7, 32)])
def test_windowed_block_in_strips_equals_whole(monkeypatch, q_stride, window, size):
    torch.manual_seed(0)
    dim_out = 32 if q_stride is None else 64
    block = MultiScaleBlock(32, dim_out, 2, 4.0, q_stride, window).eval()
    x = torch.randn(2, size, size, 32)
    with torch.inference_mode():
        monkeypatch.setattr(hiera, "STRIP_TOKENS", 10**9)
        whole = block(x)
        monkeypatch.setattr(hiera, "STRIP_TOKENS", 2 * size * window)  # one window row per strip
        assert block._strip_rows(x) == window
        strips = block(x)
    torch.testing.assert_close(strips, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stride", [(2, 2), (1, 2), (3, 2)])
def test_channels_last_max_pool_is_max_pool2d(dtype, stride):
    """The trunk's pooling (elementwise maxima of strided views) is `F.max_pool2d`, floor, NaN and all."""
    torch.manual_seed(0)
    qkv = torch.randn(3, 7, 9, 3, 8, dtype=dtype)
    x = qkv[:, :, :, 0]  # a strided view, as the pooled queries are
    x[1, 2, 3, 4] = float("nan")
    want = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride).permute(0, 2, 3, 1)
    got = hiera.max_pool_channels_last(x, stride)
    assert got.shape == want.shape and got.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan()) and bool(want.isnan().any())
    assert torch.equal(got.nan_to_num(0.0), want.nan_to_num(0.0))


def test_position_embedding_cache_follows_the_weights():
    trunk = hiera.Hiera(hiera.HieraConfig(embed_dim=16, num_heads=1, stages=(1, 1), global_att_blocks=(), window_spec=(8, 4), q_pool=1))
    with torch.inference_mode():
        first = trunk.position_embedding((16, 16))
        assert trunk.position_embedding((16, 16)) is first
        state = {k: v + 1.0 if k == "pos_embed" else v for k, v in trunk.state_dict().items()}
    trunk.load_state_dict(state)
    with torch.inference_mode():
        again = trunk.position_embedding((16, 16))
    torch.testing.assert_close(again, first + 1.0)


class _FixedStages(nn.Module):
    """A trunk stand-in that returns given stage features, so both routes start from the same ones."""

    def __init__(self, stages: list[torch.Tensor]) -> None:
        super().__init__()
        self.stages = stages

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.stages


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.05)])
def test_composed_high_res_maps_equal_neck_then_projection(tiny_checkpoint, dtype, atol):
    """On CPU fast paths levels 0 and 1 skip the neck: its 1x1 lateral and the decoder's projection as one map."""
    model = segany.load_model("sam2.1_hiera_tiny", checkpoint=tiny_checkpoint, device="cpu", dtype=dtype)
    torch.manual_seed(0)
    images = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        model.trunk = _FixedStages(model.trunk(images.to(dtype)))
        fast = model.encode_levels(images)
        with fused.plain():
            official = model.encode_levels(images)
    assert bool(model._high_res_maps) == fused._ONEDNN  # the composed route ran where it can
    for got, want in zip(fast, official):
        assert got.shape == want.shape and got.dtype == want.dtype
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=atol)
