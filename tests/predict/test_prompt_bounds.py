"""The one out-of-image policy (segany.predict.prompts): coordinates are clipped to the image."""
from __future__ import annotations

import numpy as np
import pytest

from segany.predict.prompts import clip_to_image, prepare_prompts

HW = (300, 451)  # chelsea.png


@pytest.mark.parametrize("coords, expected", [
    ([[-5.0, 10.0]], [[0.0, 10.0]]),
    ([[500.0, 400.0]], [[451.0, 300.0]]),
    ([[451.0, 300.0]], [[451.0, 300.0]]),  # the far edges are inside
    ([[12.5, 7.25]], [[12.5, 7.25]]),
])
def test_clip_to_image_pixels(coords, expected):
    assert clip_to_image(np.asarray(coords), HW).tolist() == expected


def test_clip_to_image_normalised():
    assert clip_to_image(np.asarray([[-0.5, 1.5], [0.25, 0.75]]), HW, normalized=True).tolist() == [[0, 1],
                                                                                                    [0.25, 0.75]]


def test_prepared_box_is_the_clipped_box():
    args = dict(orig_hw=HW, image_size=1024, mask_hw=(256, 256))
    outside = prepare_prompts(None, None, [-20, -20, 600, 150], None, **args)
    inside = prepare_prompts(None, None, [0, 0, 451, 150], None, **args)
    assert np.array_equal(outside.coords_xy.numpy(), inside.coords_xy.numpy())


def test_predictions_for_a_box_past_the_edges_equal_the_clipped_box(tiny_predictor, chelsea_embedding):
    outside = tiny_predictor.predict(chelsea_embedding, box=[-40, 50, 900, 250], multimask_output=False)
    clipped = tiny_predictor.predict(chelsea_embedding, box=[0, 50, 451, 250], multimask_output=False)
    assert np.array_equal(outside.masks, clipped.masks)
    np.testing.assert_allclose(outside.scores, clipped.scores, atol=1e-6)
