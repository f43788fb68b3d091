"""The shared engine through real servers: backpressure, timeouts, batching, model LRU, unavailable models."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from segany.io.images import load_image


def _png(seed: int, size: int = 48) -> bytes:
    """A small noise image no other test embeds (a fresh embedding costs one encoder pass)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _wait_for(predicate, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_full_queue_answers_503_with_retry_after(start_server):
    with start_server(max_queue=1) as live:
        results: dict[str, httpx.Response] = {}

        def slow() -> None:
            with live.client() as client:
                results["first"] = client.post("/v1/embed", files={"image": ("a.png", _png(1), "image/png")})

        worker = threading.Thread(target=slow)
        worker.start()
        _wait_for(lambda: live.metric("segany_queue_depth") == 1)
        with live.client() as client:
            busy = client.post("/v1/embed", files={"image": ("b.png", _png(2), "image/png")})
            busy_livepeer = client.post("/segment-anything-2", files={"image": ("b.png", _png(2), "image/png")})
        worker.join()
        assert busy.status_code == 503
        assert int(busy.headers["Retry-After"]) >= 1
        assert busy.json()["error"]["code"] == "server_busy"
        assert busy_livepeer.status_code == 503 and "busy" in busy_livepeer.json()["detail"]["msg"]
        assert results["first"].status_code == 200  # the admitted request was not disturbed
        assert live.metric('segany_rejected_total{reason="queue_full"}') == 2
        assert httpx.get(f"{live.url}/healthz").status_code == 200


def test_request_timeout_is_504_and_the_server_recovers(start_server, image_b64):
    with start_server(request_timeout_s=0.05) as live:
        with live.client() as client:
            response = client.post("/v1/embed", files={"image": ("c.png", _png(3), "image/png")})
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "timeout"
            assert client.get("/healthz").status_code == 200
        assert live.metric('segany_rejected_total{reason="timeout"}') == 1


def test_concurrent_clicks_on_one_image_share_decoder_batches(server, embedded_id, tiny_predictor, image_bytes):
    points = [[40 + 50 * i, 60 + 20 * i] for i in range(6)]
    count_before = server.metric("segany_decode_batch_size_count")
    sum_before = server.metric("segany_decode_batch_size_sum")

    def click(point):
        with server.client() as client:
            return client.post("/v1/segment", json={"image_id": embedded_id, "prompts": [{"points": [point]}],
                                                    "multimask": False})

    with ThreadPoolExecutor(len(points)) as pool:
        responses = list(pool.map(click, points))
    batches = server.metric("segany_decode_batch_size_count") - count_before
    prompts = server.metric("segany_decode_batch_size_sum") - sum_before
    assert prompts == len(points)
    assert batches < len(points)  # at least two requests were decoded together
    embedding = tiny_predictor.embed(image_bytes)
    for point, response in zip(points, responses):  # batching does not change any answer
        expected = tiny_predictor.predict(embedding, point_coords=[point], point_labels=[1], multimask_output=False)
        assert response.json()["results"][0]["masks"][0]["score"] == pytest.approx(float(expected.scores[0]),
                                                                                   abs=1e-4)


def test_concurrent_new_images_are_embedded_in_one_batch(start_server, tiny_predictor):
    images = [_png(10), _png(11)]
    with start_server(embed_batch_wait_ms=3000, embed_batch_size=4) as live:
        def embed(data):
            with live.client() as client:
                return client.post("/v1/embed", files={"image": ("x.png", data, "image/png")})

        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(embed, images))
        assert [r.status_code for r in responses] == [200, 200]
        assert live.metric("segany_embed_batch_size_count") == 1
        assert live.metric("segany_embed_batch_size_sum") == 2
        for data, response in zip(images, responses):
            with live.client() as client:
                answer = client.post("/v1/segment", json={"image_id": response.json()["image_id"],
                                                          "prompts": [{"points": [[10, 10]]}], "multimask": False})
            expected = tiny_predictor.predict(tiny_predictor.embed(load_image(data)), point_coords=[[10, 10]],
                                              point_labels=[1], multimask_output=False)
            assert answer.json()["results"][0]["masks"][0]["score"] == pytest.approx(float(expected.scores[0]),
                                                                                     abs=1e-4)


def test_other_variants_load_lazily_in_a_bounded_lru(start_server, make_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a variant without local weights must fail fast, not download
    (tmp_path / "sam2_hiera_tiny.pt").symlink_to(make_checkpoint("sam2_hiera_tiny"))
    image = _png(20)
    with start_server(checkpoint_dir=str(tmp_path), max_models=1) as live:
        assert live.loads == ["sam2.1_hiera_tiny"]
        with live.client() as client:
            other = client.post("/v1/embed", files={"image": ("x.png", image, "image/png")},
                                data={"model": "facebook/sam2-hiera-tiny"})
            assert other.status_code == 200, other.text
            assert other.json()["model"] == "sam2_hiera_tiny"
            ready = client.get("/readyz").json()
            assert ready["ready"] is True and ready["loaded_models"] == ["sam2_hiera_tiny"]
            # No model named: the cached embedding's own model answers.
            click = client.post("/v1/segment", json={"image_id": other.json()["image_id"],
                                                     "prompts": [{"points": [[5, 5]]}]})
            assert click.status_code == 200 and click.json()["model"] == "sam2_hiera_tiny"
            default = client.post("/v1/embed", files={"image": ("x.png", image, "image/png")})
            assert default.json()["model"] == "sam2.1_hiera_tiny" and default.json()["cached"] is False
            assert client.get("/readyz").json()["loaded_models"] == ["sam2.1_hiera_tiny"]
            missing = client.post("/v1/embed", files={"image": ("x.png", image, "image/png")},
                                  data={"model": "sam2.1_hiera_large"})
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"
            assert "sam2.1_hiera_large" in missing.json()["error"]["message"]
        assert live.loads == ["sam2.1_hiera_tiny", "sam2_hiera_tiny", "sam2.1_hiera_tiny", "sam2.1_hiera_large"]
        assert live.metric("segany_models_loaded") == 1
