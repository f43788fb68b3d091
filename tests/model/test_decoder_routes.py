"""The mask decoder's reassociated CPU routes compute what the official order of operations computes."""
from __future__ import annotations

import pytest
import torch

from segany.model import fused
from segany.model.mask_decoder import MaskDecoder
from segany.model.transformer import Attention, TwoWayTransformer


@pytest.fixture
def attention() -> Attention:
    torch.manual_seed(0)
    return Attention(64, num_heads=4, downsample_rate=2).eval()


def test_tokens_to_image_equals_projected_attention(attention):
    tokens, image_k, image_v = torch.randn(3, 5, 64), torch.randn(3, 100, 64), torch.randn(3, 100, 64)
    with torch.inference_mode():
        want = attention(tokens, image_k, image_v)
        got = attention.tokens_to_image(tokens, image_k, image_v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_folding_is_chosen_only_where_it_saves_work(attention):
    image = torch.randn(3, 100, 64)
    assert attention.folds_tokens_to_image(torch.randn(3, 5, 64), image)  # 4 heads * 5 tokens < 32
    assert not attention.folds_tokens_to_image(torch.randn(3, 9, 64), image)  # 36 >= 32: projecting is cheaper
    assert not attention.folds_tokens_to_image(torch.randn(3, 5, 64), image[:1])  # a shared image is projected once


def test_a_shared_image_is_attended_as_each_prompt_attends_its_own_copy(attention):
    """Batch-1 keys and values serve every prompt's queries, each prompt getting its own rows back."""
    tokens, image = torch.randn(3, 7, 64), torch.randn(1, 100, 64)
    tokens[1] += 2.0  # prompts that differ, so that a mix-up of rows would show
    with torch.inference_mode():
        want = attention(tokens, image.repeat(3, 1, 1), image.repeat(3, 1, 1))
        got = attention(tokens, image, image)
        one = attention(tokens[2:], image, image)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(one, want[2:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("residual_batch, in_place", [(3, False), (1, False), (3, True)])
def test_image_to_tokens_adds_its_residual(attention, residual_batch, in_place):
    image, tokens = torch.randn(3, 100, 64), torch.randn(3, 6, 64)
    residual = torch.randn(residual_batch, 100, 64)
    with torch.inference_mode():
        want = residual + attention.image_to_tokens(image, tokens, tokens)
        got = attention.image_to_tokens(image, tokens, tokens, residual=residual, in_place=in_place)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got.data_ptr() == residual.data_ptr()) == in_place


def test_two_way_transformer_fast_routes_match_the_official_order():
    torch.manual_seed(0)
    transformer = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=4, mlp_dim=128).eval()
    image, pe, prompts = torch.randn(1, 256, 64), torch.randn(1, 256, 64), torch.randn(4, 5, 64)
    with torch.inference_mode():
        fast_q, fast_k = transformer(image, pe, prompts)
        with fused.plain():
            plain_q, plain_k = transformer(image, pe, prompts)
    torch.testing.assert_close(fast_q, plain_q, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast_k, plain_k, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.25)])
def test_masks_by_pixel_equal_the_transposed_convolutions(dtype, atol):
    """Full size (64x64 tokens of 256 channels), so that the fused oneDNN epilogues run too."""
    torch.manual_seed(0)
    decoder = MaskDecoder().eval().to(dtype)
    keys = torch.randn(2, 64 * 64, 256, dtype=dtype)
    hyper_in = torch.randn(2, 4, 32, dtype=dtype)
    feats = (torch.randn(1, 32, 256, 256, dtype=dtype), torch.randn(1, 64, 128, 128, dtype=dtype))
    with torch.inference_mode():
        want = decoder._masks_by_conv(keys, hyper_in, feats, (64, 64))
        got = decoder._masks_by_pixel(keys, hyper_in, feats, (64, 64))
    assert got.shape == want.shape == (2, 4, 256, 256) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=atol, rtol=atol)


def test_large_batches_decode_in_chunks_with_the_same_result():
    torch.manual_seed(0)
    decoder = MaskDecoder().eval()
    embed, pe = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
    sparse, dense = torch.randn(20, 3, 256), torch.randn(20, 256, 64, 64)  # past one 16-prompt chunk
    feats = (torch.randn(1, 32, 256, 256), torch.randn(1, 64, 128, 128))
    with torch.inference_mode():
        whole = decoder(embed, pe, sparse, dense, feats, multimask_output=False)
        one_by_one = [decoder(embed, pe, sparse[i : i + 1], dense[i : i + 1], feats, multimask_output=False)
                      for i in range(20)]
    for name in ("low_res_logits", "iou", "object_score_logits", "mask_tokens"):
        torch.testing.assert_close(getattr(whole, name), torch.cat([getattr(o, name) for o in one_by_one]),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("multimask_output, masks", [(True, 3), (False, 1)])
def test_the_fast_route_returns_the_masks_the_official_order_returns(multimask_output, masks):
    """Multimask output keeps masks 1-3, and the by-pixel route computes only those; single-mask output
    needs all four (the stability fallback picks among them)."""
    torch.manual_seed(0)
    decoder = MaskDecoder().eval()
    embed, pe = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
    sparse, dense = torch.randn(2, 3, 256), torch.randn(1, 256, 64, 64)
    feats = (torch.randn(1, 32, 256, 256), torch.randn(1, 64, 128, 128))
    with torch.inference_mode():
        fast = decoder(embed, pe, sparse, dense, feats, multimask_output=multimask_output)
        with fused.plain():
            plain = decoder(embed, pe, sparse, dense, feats, multimask_output=multimask_output)
    assert fast.low_res_logits.shape == plain.low_res_logits.shape == (2, masks, 256, 256)
    torch.testing.assert_close(fast.low_res_logits, plain.low_res_logits, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fast.iou, plain.iou, atol=1e-5, rtol=1e-5)
