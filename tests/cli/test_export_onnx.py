"""`segany export onnx-decoder`: the exported decoder in onnxruntime against segany's torch decoder.

The clicks are fed the way CVAT's SAM 2.1 plugin feeds them (pixels x 1024 / max(H, W), box corners as
labels 2 and 3 first, float labels), and compared with `Predictor.predict` on the same embedding.
"""
from __future__ import annotations

import numpy as np
import pytest

from segany_cli_helpers import IMAGES, run_segany

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def session(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("onnx") / "tiny.decoder.onnx"
    done = run_segany("export", "onnx-decoder", "--model", "sam2.1_hiera_tiny", "--checkpoint", tiny_checkpoint,
                      "--out", out)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr and out.stat().st_size > 100_000
    return ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def embedding(tiny_predictor):
    return tiny_predictor.embed(str(IMAGES / "chelsea.png"))  # 451 x 300


def _feeds(embedding, coords_px, labels, mask_input=None):
    height, width = embedding.orig_hw
    scale = 1024 / max(height, width)
    return {
        "image_embed": embedding.image_embed.float().numpy(),
        "high_res_feats_0": embedding.high_res_feats[0].float().numpy(),
        "high_res_feats_1": embedding.high_res_feats[1].float().numpy(),
        "point_coords": (np.asarray(coords_px, np.float32) * scale)[None].astype(np.float32),
        "point_labels": np.asarray(labels, np.float32)[None],
        "mask_input": (np.zeros((1, 1, 256, 256), np.float32) if mask_input is None
                       else mask_input.reshape(1, 1, 256, 256).astype(np.float32)),
        "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
        "orig_im_size": np.array([height, width], np.int32),
    }


def _check(session, embedding, torch_out, feeds):
    masks, low_res, iou, xtl, ytl, xbr, ybr = session.run(None, feeds)
    np.testing.assert_allclose(iou[0], torch_out.scores, atol=1e-4)
    best = int(np.argmax(torch_out.scores))
    expected = torch_out.masks[best] > 0
    assert masks.shape == (1, 1, *embedding.orig_hw) and low_res.shape == (1, 1, 256, 256)
    assert ((masks[0, 0] > 0) == expected).mean() >= 0.999
    rows, cols = np.nonzero(masks[0, 0] > 0)
    assert (int(xtl), int(ytl), int(xbr), int(ybr)) == (cols.min(), rows.min(), cols.max(), rows.max())
    return low_res


def test_points_box_and_mask_input_match_the_torch_decoder(session, embedding, tiny_predictor):
    clicks = [[120.0, 90.0], [300.0, 200.0]]
    points = tiny_predictor.predict(embedding, point_coords=clicks, point_labels=[1, 0], return_logits=True)
    low_res = _check(session, embedding, points, _feeds(embedding, clicks, [1, 0]))

    box = [100.0, 50.0, 400.0, 280.0]
    boxed = tiny_predictor.predict(embedding, box=box, return_logits=True)
    _check(session, embedding, boxed, _feeds(embedding, [box[:2], box[2:]], [2, 3]))

    # The plugin's next click: the previous low-res mask goes back in as mask_input.
    more = clicks + [[200.0, 150.0]]
    refined = tiny_predictor.predict(embedding, point_coords=more, point_labels=[1, 0, 1], mask_input=low_res[0],
                                     return_logits=True)
    _check(session, embedding, refined, _feeds(embedding, more, [1, 0, 1], mask_input=low_res[0]))


def test_io_names_are_the_plugins(session):
    assert [i.name for i in session.get_inputs()] == ["image_embed", "high_res_feats_0", "high_res_feats_1",
                                                      "point_coords", "point_labels", "mask_input", "has_mask_input",
                                                      "orig_im_size"]
    assert [o.name for o in session.get_outputs()][:2] == ["masks", "low_res_masks"]
    assert {"xtl", "ytl", "xbr", "ybr"} <= {o.name for o in session.get_outputs()}
