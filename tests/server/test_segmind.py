"""Segmind's sam-v2-image with the official `segmind` SDK against a real server: v1 sync, v2 async,
text prompts winning over coordinates, quotas with 406, and `{"error": ...}` answers to bad input."""
from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.v2 import InferenceFailed

from live_jobs import KEYS, JobServer, shared_server
from segany.errors import InvalidInput
from segany.io.images import load_image
from segany.io.masks import encode_image, overlay_masks
from segany.predict.text.grounding import RawDetections, TextGrounder
from segany.server.http.auth import key_id

POINT = [200, 150]
BOX = [250.0, 90.0, 350.0, 210.0]


class FixedBoxDetector:
    """A stand-in for Grounding DINO (its weights are not reachable offline): one fixed box per call,
    or an error, recording the phrases it was asked for."""

    def __init__(self, boxes: list[list[float]], error: Exception | None = None) -> None:
        self.boxes = boxes
        self.error = error
        self.phrases: list[tuple[str, ...]] = []

    def detect(self, image_rgb: np.ndarray, phrases: Any, *, box_threshold: float,
               text_threshold: float) -> RawDetections:
        self.phrases.append(tuple(phrases))
        if self.error is not None:
            raise self.error
        count = len(self.boxes)
        return RawDetections(np.asarray(self.boxes, float).reshape(-1, 4), np.full(count, 0.9), np.zeros(count, int))


@pytest.fixture(scope="module")
def live(request, base_settings, shared_loader) -> JobServer:
    return shared_server(request, base_settings, shared_loader)


def _client(live: JobServer, key: str = KEYS[0]) -> SegmindClient:
    """The SDK as users configure it; the test server's certificate is trusted through SSL_CERT_FILE."""
    previous = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(live.cert)
    try:
        return SegmindClient(api_key=key, base_url=f"{live.url}/v1", timeout=300)
    finally:
        if previous is None:
            del os.environ["SSL_CERT_FILE"]
        else:
            os.environ["SSL_CERT_FILE"] = previous


@pytest.fixture(scope="module")
def client(live: JobServer) -> SegmindClient:
    return _client(live)


@pytest.fixture(scope="module")
def rgb(image_path) -> np.ndarray:
    return load_image(image_path)


@pytest.fixture(scope="module")
def embedding(tiny_predictor, rgb):
    return tiny_predictor.embed(rgb)


@pytest.fixture()
def detector(live: JobServer) -> Iterator[FixedBoxDetector]:
    found = FixedBoxDetector([BOX])
    live.app.state.engine.detectors.set_default(TextGrounder(detector=found))
    yield found
    live.app.state.engine.detectors.set_default(None)


def _jpeg(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.asarray(image)


def _agreement(jpeg_mask: np.ndarray, mask: np.ndarray) -> float:
    return float(((jpeg_mask > 127) == mask).mean())


def test_point_gives_the_best_of_three_masks(client, image_b64, tiny_predictor, embedding) -> None:
    response = client.run_sync("sam-v2-image", image=image_b64, coordinates=f"[{POINT[0]},{POINT[1]}]",
                               overlay_mask=False)
    assert response.headers["content-type"] == "image/jpeg"
    got = _jpeg(response.content)
    out = tiny_predictor.predict(embedding, point_coords=np.array([POINT], float), point_labels=np.array([1]))
    expected = out.masks[int(np.argmax(out.scores))]
    assert got.shape == expected.shape == (300, 451)
    assert _agreement(got, expected) > 0.97


def test_points_and_negative_points_make_one_mask(client, image_b64, tiny_predictor, embedding) -> None:
    response = client.run_sync("sam-v2-image", image=image_b64, coordinates="[[200,150],[300,100]]",
                               remove_coordinates="[[50,50]]", overlay_mask=False)
    out = tiny_predictor.predict(embedding, point_coords=np.array([[200, 150], [300, 100], [50, 50]], float),
                                 point_labels=np.array([1, 1, 0]), multimask_output=False)
    assert _agreement(_jpeg(response.content), out.masks[0]) > 0.97


def test_overlay_and_base64(client, image_b64, rgb, tiny_predictor, embedding) -> None:
    answer = client.run_sync("sam-v2-image", image=image_b64, coordinates=str(POINT), base64=True).json()
    overlay = _jpeg(base64.b64decode(answer["image"])).astype(float)
    out = tiny_predictor.predict(embedding, point_coords=np.array([POINT], float), point_labels=np.array([1]))
    mask = out.masks[int(np.argmax(out.scores))]
    expected = _jpeg(encode_image(overlay_masks(rgb, mask[None]), "jpeg", quality=90)).astype(float)
    assert overlay.shape == (300, 451, 3)
    assert np.abs(overlay - expected).mean() < 2.0
    changed = np.abs(overlay - rgb).mean(axis=2) > 20  # the mask is drawn (outside it only JPEG noise differs)
    assert changed[mask].mean() > 0.5 and changed[~mask].mean() < 0.5 * changed[mask].mean()


def test_text_prompt_wins_over_coordinates(client, image_b64, tiny_predictor, embedding, detector) -> None:
    response = client.run_sync("sam-v2-image", image=image_b64, prompt="the cat", coordinates="[10,10]",
                               overlay_mask=False)
    assert detector.phrases == [("the cat",)]
    out = tiny_predictor.predict(embedding, box=np.array(BOX), multimask_output=False)
    assert _agreement(_jpeg(response.content), out.masks[0]) > 0.97


def test_text_prompt_without_a_detection_gives_an_empty_mask(client, image_b64, detector) -> None:
    detector.boxes = []
    response = client.run_sync("sam-v2-image", image=image_b64, prompt="a unicorn", overlay_mask=False)
    assert (_jpeg(response.content) < 16).all()


def test_v2_run_polls_to_completion(client, live, image_b64, tiny_predictor, embedding) -> None:
    result = client.run("sam-v2-image", image=image_b64, coordinates=str(POINT), overlay_mask=False)
    assert result["status"] == "COMPLETED" and result["metrics"]["inference_time"] > 0
    assert result["output"].startswith(live.url + "/files/")
    with live.client() as http:
        image = http.get(result["output"])
    out = tiny_predictor.predict(embedding, point_coords=np.array([POINT], float), point_labels=np.array([1]))
    assert _agreement(_jpeg(image.content), out.masks[int(np.argmax(out.scores))]) > 0.97


def test_v2_submit_status_and_privacy(client, live, image_b64) -> None:
    job = client.submit_async("sam-v2-image", image=image_b64, coordinates=str(POINT), base64=True)
    assert job.status_url == f"{live.url}/v2/requests/{job.request_id}/status"
    assert job.status()["status"] in ("QUEUED", "PROCESSING", "COMPLETED")
    result = job.wait(timeout=300, interval=0.2)
    assert _jpeg(base64.b64decode(result["output"])).shape == (300, 451, 3)
    other = _client(live, KEYS[1])
    assert other._client.get(job.status_url).status_code == 404  # another key's request is not visible


def test_v2_failure_reaches_the_sdk_as_inference_failed(client, image_b64, detector) -> None:
    detector.error = InvalidInput("the detector refused this prompt", "prompt")
    with pytest.raises(InferenceFailed) as caught:
        client.run("sam-v2-image", image=image_b64, prompt="anything")
    assert "refused" in caught.value.detail and caught.value.status_body["status"] == "FAILED"


def test_quota_counts_down_then_406(live, image_b64) -> None:
    quotas = live.services.quotas
    bob = _client(live, KEYS[1])
    quotas.set(key_id(KEYS[1]), 2)
    try:
        first = bob.run_sync("sam-v2-image", image=image_b64, coordinates=str(POINT))
        assert first.headers["x-remaining-credits"] == "1"
        submitted = bob.submit_async("sam-v2-image", image=image_b64, coordinates=str(POINT))
        assert submitted.submit_response["request_id"] == submitted.request_id
        with pytest.raises(SegmindError) as caught:
            bob.run_sync("sam-v2-image", image=image_b64, coordinates=str(POINT))
        assert (caught.value.status, caught.value.detail) == (406, "Not enough credits")
        with live.client(key=None) as http:
            refused = http.post("/v1/sam-v2-image", headers={"x-api-key": KEYS[1]},
                                json={"image": image_b64, "coordinates": str(POINT)})
        assert refused.headers["x-remaining-credits"] == "0"
        # a request the server cannot serve costs nothing
        quotas.set(key_id(KEYS[1]), 1)
        with pytest.raises(SegmindError):
            bob.run_sync("sam-v2-image", image="bm90IGFuIGltYWdl", coordinates=str(POINT))
        assert quotas.get(key_id(KEYS[1])) == 1
        submitted.wait(timeout=300, interval=0.2)
    finally:
        quotas.remove(key_id(KEYS[1]))


@pytest.mark.parametrize("changes, field", [
    ({"coordinates": "[1,2"}, "coordinates"),
    ({"coordinates": "[[1,2],[3]]"}, "coordinates"),
    ({"coordinates": "[a,b]"}, "coordinates"),
    ({"coordinates": "[true,2]"}, "coordinates"),
    ({"coordinates": "[1e999,2]"}, "coordinates"),
    ({"coordinates": "[5000,10]"}, "coordinates"),
    ({"remove_coordinates": "[-1,10]"}, "remove_coordinates"),
    ({"coordinates": str([[1, 1]] * 65)}, "coordinates"),
    ({"coordinates": None}, "prompt"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"overlay_mask": "maybe"}, "overlay_mask"),
    ({"mask_colour": "red"}, "mask_colour"),
    ({"image": "bm90IGFuIGltYWdl"}, "image"),
    ({"image": "%%%"}, "image"),
    ({"image": None}, "image"),
])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_bad_input_is_a_400_naming_the_field(live, image_b64, changes, field, version) -> None:
    body = {"image": image_b64, "coordinates": "[10,10]", **changes}
    body = {key: value for key, value in body.items() if value is not None}
    with live.client() as http:
        response = http.post(f"/{version}/sam-v2-image", json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and field in response.json()["error"]


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/sam-v2-image", 405),
    ("GET", "/v2/requests/unknown/status", 404),
    ("GET", "/v2/requests/unknown", 404),
    ("POST", "/v2/not-a-model", 404),
])
def test_unknown_routes_and_methods(live, method, path, status) -> None:
    with live.client() as http:
        response = http.request(method, path)
    assert response.status_code == status and isinstance(response.json()["error"], str)


def test_missing_key_is_401(live, image_b64) -> None:
    with live.client(key=None) as http:
        response = http.post("/v1/sam-v2-image", json={"image": image_b64, "coordinates": "[1,1]"})
    assert response.status_code == 401 and "error" in response.json()
