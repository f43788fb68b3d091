"""Roboflow dialect: `inference_sdk.InferenceHTTPClient.sam2_segment_image` unchanged, plus plain HTTP."""
from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
from inference_sdk import InferenceHTTPClient

from segany.io.masks import polygons_to_mask, Polygon
from segany.io.rle import coco_decode


def _client(url: str, key: str | None = None) -> InferenceHTTPClient:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InferenceHTTPClient(api_url=url, api_key=key)


def _polygon_mask(polygons: list, size_hw: tuple[int, int]) -> np.ndarray:
    return polygons_to_mask([Polygon(tuple(map(tuple, ring))) for ring in polygons], size_hw)


def test_official_sdk_points_and_box(server, image_path, tiny_predictor, image_bytes):
    prompts = [{"points": [{"x": 120, "y": 90, "positive": True}]},
               {"box": {"x": 175, "y": 145, "width": 250, "height": 210}}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _client(server.url, "key").sam2_segment_image(str(image_path), prompts=prompts,
                                                                sam2_version_id="hiera_tiny")
    assert isinstance(result["time"], float)
    predictions = result["predictions"]
    assert len(predictions) == 2  # the best mask per prompt
    embedding = tiny_predictor.embed(image_bytes)
    expected = [tiny_predictor.predict(embedding, point_coords=[[120, 90]], point_labels=[1]),
                tiny_predictor.predict(embedding, box=[50, 40, 300, 250])]
    for prediction, reference in zip(predictions, expected):
        assert prediction["format"] == "polygon"
        best = int(np.argmax(reference.scores))
        assert prediction["confidence"] == pytest.approx(float(reference.scores[best]), abs=1e-4)
        drawn = _polygon_mask(prediction["masks"], (300, 451))
        truth = reference.masks[best]
        # Polygons drop specks under 3 vertices; the region must still agree almost everywhere.
        assert (drawn == truth).mean() > 0.97


def test_official_sdk_rle_without_prompts_gives_whole_image_mask(server, image_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = _client(server.url).sam2_segment_image(str(image_path), mask_input_format="rle")
    (prediction,) = result["predictions"]
    assert prediction["format"] == "rle"
    assert coco_decode(prediction["masks"]).shape == (300, 451)


def test_embed_then_segment_by_image_id_only(server, image_b64):
    with server.client() as client:
        embedded = client.post("/sam2/embed_image", json={"image": {"type": "base64", "value": image_b64},
                                                          "image_id": "my-cat", "sam2_version_id": "hiera_tiny"})
        assert embedded.status_code == 200 and embedded.json()["image_id"] == "my-cat"
        segmented = client.post("/sam2/segment_image", json={
            "image_id": "my-cat", "format": "rle", "multimask_output": False,
            "prompts": [{"points": [{"x": 10, "y": 10, "positive": True}]}]})  # a flat list is accepted too
        assert segmented.status_code == 200, segmented.text
        assert segmented.json()["predictions"][0]["format"] == "rle"
        missing = client.post("/sam2/segment_image", json={"image_id": "never-embedded"})
        assert missing.status_code == 404 and "never-embedded" in missing.json()["message"]


def test_binary_format_is_npz(server, image_b64):
    with server.client() as client:
        response = client.post("/sam2/segment_image", json={
            "image": {"type": "base64", "value": image_b64}, "format": "binary",
            "prompts": {"prompts": [{"points": [{"x": 120, "y": 90, "positive": True}]}]}})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    arrays = np.load(io.BytesIO(response.content))
    assert arrays["masks"].shape == (1, 300, 451) and arrays["low_res_masks"].shape == (1, 256, 256)
    assert arrays["masks"].dtype == np.float32  # full-resolution logits, as Roboflow's server sends
    assert not set(np.unique(arrays["masks"])) <= {0.0, 1.0}


def test_logits_cache_refines_the_previous_click(server, image_b64):
    first = {"points": [{"x": 120, "y": 90, "positive": True}]}
    second = {"points": [{"x": 120, "y": 90, "positive": True}, {"x": 300, "y": 200, "positive": False}]}

    def post(prompt, **flags):
        with server.client() as client:
            response = client.post("/sam2/segment_image", json={
                "image": {"type": "base64", "value": image_b64}, "format": "rle", "prompts": {"prompts": [prompt]},
                **flags})
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]

    post(first, save_logits_to_cache=True)
    without = post(second)
    with_cache = post(second, load_logits_from_cache=True)
    assert with_cache["confidence"] != pytest.approx(without["confidence"], abs=1e-6)


def test_numpy_images_without_pickles(server):
    rgb = np.zeros((8, 8, 3), np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, rgb)
    npy = base64.b64encode(buffer.getvalue()).decode()
    pickled = base64.b64encode(b"\x80\x04\x95....").decode()
    with server.client() as client:
        refused = client.post("/sam2/embed_image", json={"image": {"type": "numpy", "value": pickled}})
        assert refused.status_code == 400 and "pickle" in refused.json()["message"]
        pil = client.post("/sam2/embed_image", json={"image": {"type": "pil", "value": pickled}})
        assert pil.status_code == 400
        url = client.post("/sam2/embed_image", json={"image": {"type": "url", "value": "http://127.0.0.1/x.png"}})
        assert url.status_code == 403 and "turned off" in url.json()["message"]
        # The .npy image decodes (a failure would be 400); the unknown model then answers 404.
        bad = client.post("/sam2/segment_image", json={"image": {"type": "numpy", "value": npy},
                                                       "sam2_version_id": "hiera_gigantic"})
        assert bad.status_code == 404 and "hiera_gigantic" in bad.json()["message"]
        invalid = client.post("/sam2/segment_image", json={"image": {"type": "jpeg"}})
        assert invalid.status_code == 422 and invalid.json()["message"]
