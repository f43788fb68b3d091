"""Text and detection prompts on the native /v1/segment: labelled masks from a real server."""
from __future__ import annotations

import base64

import numpy as np
import pytest


from segany.io.rle import coco_decode
from tiny_detectors import build_tiny_grounding_dino


@pytest.fixture(scope="module")
def text_server(start_server, tmp_path_factory):
    pytest.importorskip("transformers")
    detector = build_tiny_grounding_dino(tmp_path_factory.mktemp("gd") / "tiny-gd")
    with start_server(text_model=str(detector)) as live:
        yield live


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def test_detections_become_labelled_masks(server, image_path, tiny_predictor):
    detections = [
        {"x": 150, "y": 160, "width": 200, "height": 180, "class": "dog", "class_id": 3, "confidence": 0.9,
         "detection_id": "det-1"},
        {"x": 380, "y": 300, "width": 120, "height": 100, "class": "ball", "class_id": 7, "confidence": 0.6},
    ]
    with server.client() as client:
        answer = client.post("/v1/segment", json={"image": _b64(image_path), "detections": detections})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [(r["class"], r["class_id"], r["confidence"]) for r in results] == [("dog", 3, 0.9), ("ball", 7, 0.6)]
    assert results[0]["parent_id"] == "det-1" and "parent_id" not in results[1]
    # Each mask is the single-mask answer for the detection's box.
    emb = tiny_predictor.embed(image_path)
    expected = tiny_predictor.predict(emb, box=[50, 70, 250, 250], multimask_output=False)
    assert len(results[0]["masks"]) == 1
    np.testing.assert_allclose(results[0]["masks"][0]["score"], expected.scores[0], atol=1e-5)
    assert np.array_equal(coco_decode(results[0]["masks"][0]["rle"]), expected.masks[0])


def test_min_score_drops_masks(server, image_path):
    detections = [{"x": 150, "y": 160, "width": 200, "height": 180, "class": "dog"}]
    with server.client() as client:
        answer = client.post("/v1/segment", json={"image": _b64(image_path), "detections": detections,
                                                  "min_score": 1.0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"] == []


def test_bad_detection_names_the_field(server, image_path):
    with server.client() as client:
        answer = client.post("/v1/segment", json={"image": _b64(image_path), "detections": [{"x": 1, "y": 2}]})
    assert answer.status_code == 400
    assert "detections[0]" in answer.json()["error"]["message"] + str(answer.json()["error"]["field"])


def test_empty_request_says_what_is_missing(server, image_path):
    with server.client() as client:
        answer = client.post("/v1/segment", json={"image": _b64(image_path)})
    assert answer.status_code == 400
    assert answer.json()["error"]["field"] == "prompts"


def test_text_prompt_after_embed_uses_the_image_id(text_server, image_path):
    with text_server.client() as client:
        image_id = client.post("/v1/embed", json={"image": _b64(image_path)}).json()["image_id"]
        answer = client.post("/v1/segment", json={"image_id": image_id, "text": "red dog. ball.",
                                                  "box_threshold": 0.0, "text_threshold": 0.0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["results"], "the tiny detector with zero thresholds finds boxes"
    for result in body["results"]:
        assert result["label"] in ("red dog", "ball")
        assert 0.0 <= result["detector_score"] <= 1.0
        assert len(result["masks"]) == 1
    assert "detect" in body["timing_ms"]


def test_text_prompt_without_pixels_is_a_clear_400(text_server):
    with text_server.client() as client:
        answer = client.post("/v1/segment", json={"image_id": "0" * 64, "text": "dog"})
    assert answer.status_code in (400, 404)
    assert "image" in answer.json()["error"]["message"]


def test_unreachable_detector_is_a_4xx(start_server, image_path, monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with start_server(text_model="IDEA-Research/not-cached-here") as live, live.client() as client:
        answer = client.post("/v1/segment", json={"image": _b64(image_path), "text": "dog"})
        assert answer.status_code == 404, answer.text
        assert client.get("/healthz").status_code == 200

