"""Label Studio brush RLE: segany's encoder against the label-studio-sdk's own decoder, and back."""
from __future__ import annotations

import numpy as np
import pytest

from segany.errors import InvalidInput
from segany.io.ls_brush import brush_rle_to_mask, decode_rle, encode_rle, mask_to_brush_rle

brush = pytest.importorskip("label_studio_sdk.converter.brush")


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    blob = np.zeros((97, 130), bool)
    blob[20:70, 30:111] = True
    full = np.ones((300, 300), bool)  # one run of 360,000 bytes: longer than a 16-bit count field
    return [blob, rng.random((31, 17)) > 0.5, np.zeros((5, 7), bool), full, blob.T.copy()]


@pytest.mark.parametrize("index", range(5))
def test_sdk_decoder_reads_segany_brush_rle(index: int) -> None:
    mask = _masks()[index]
    rle = mask_to_brush_rle(mask)
    decoded = brush.decode_rle(rle)  # the SDK's decoder: flat RGBA bytes
    height, width = mask.shape
    assert decoded.size == height * width * 4
    np.testing.assert_array_equal(decoded.reshape(height, width, 4)[:, :, 3] > 0, mask)
    assert set(np.unique(decoded)) <= {0, 255}


def test_segany_decodes_the_sdk_encoder_output() -> None:
    mask = _masks()[1]
    sdk_rle = brush.mask2rle(mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(brush_rle_to_mask(sdk_rle, *mask.shape), mask)


def test_literal_blocks_and_arbitrary_bytes_round_trip() -> None:
    values = np.random.default_rng(1).integers(0, 256, 999).astype(np.uint8)
    sdk_rle = brush.encode_rle(values)  # the SDK writes literal (single-value) blocks here
    np.testing.assert_array_equal(decode_rle(sdk_rle), values)
    np.testing.assert_array_equal(brush.decode_rle(encode_rle(values)), values)


def test_bad_input_names_the_field() -> None:
    with pytest.raises(InvalidInput, match="rle"):
        brush_rle_to_mask(mask_to_brush_rle(np.ones((4, 4), bool)), 5, 4)
    with pytest.raises(InvalidInput, match="ends early"):
        decode_rle(mask_to_brush_rle(np.ones((4, 4), bool))[:5])
    with pytest.raises(InvalidInput, match="2-D"):
        mask_to_brush_rle(np.ones((2, 2, 2), bool))
