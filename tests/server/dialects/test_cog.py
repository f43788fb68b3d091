"""Cog's local HTTP API against a real server: sync and async predictions, idempotent PUT, cancel,
health check, the `Input`/`Output` OpenAPI components, webhooks and FastAPI-shaped validation errors."""
from __future__ import annotations

import base64
import io
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from live_jobs import KEYS, TINY_SEED_INPUT, JobServer, receiving, shared_server
from segany.server.dialects.cog import stored_prediction_id
from segany.server.http.auth import key_id
from segany.server.dialects.replicate_seed import MODEL_VERSION


@pytest.fixture(scope="module")
def live(request, base_settings, shared_loader) -> JobServer:
    return shared_server(request, base_settings, shared_loader)


@pytest.fixture(scope="module")
def data_uri(image_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes).decode("ascii")


def _mask(http: Any, url: str) -> np.ndarray:
    response = http.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(response.content)))
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels


def test_sync_prediction_returns_mask_files(live, data_uri) -> None:
    with live.client() as http:
        response = http.post("/predictions", json={"input": {"image": data_uri, **TINY_SEED_INPUT,
                                                              "mask_limit": 3}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["error"], body["version"]) == ("succeeded", None, MODEL_VERSION)
        assert len(body["output"]) == 3 and body["metrics"]["predict_time"] > 0
        assert body["started_at"] <= body["completed_at"]
        masks = [_mask(http, url) for url in body["output"]]
    assert all(mask.shape == (300, 451) for mask in masks)
    assert len({mask.tobytes() for mask in masks}) == 3


def test_async_put_is_idempotent_and_reports_by_webhook(live, data_uri) -> None:
    prediction_id = "cog-" + uuid.uuid4().hex
    request = {"input": {"image": data_uri, **TINY_SEED_INPUT, "mask_limit": 1},
               "webhook_events_filter": ["completed"]}
    with receiving() as receiver, live.client() as http:
        request["webhook"] = receiver.url
        first = http.put(f"/predictions/{prediction_id}", json=request, headers={"Prefer": "respond-async"})
        assert first.status_code == 202, first.text
        assert (first.json()["id"], first.json()["status"]) == (prediction_id, "starting")
        again = http.put(f"/predictions/{prediction_id}", json=request, headers={"Prefer": "respond-async"})
        assert again.status_code == 202 and again.json()["id"] == prediction_id
        [delivery] = receiver.wait_for(lambda got: len(got) >= 1)
        assert delivery.json["id"] == prediction_id and delivery.json["status"] == "succeeded"
        assert len(delivery.json["output"]) == 1
        # the same request once more, synchronously: the finished prediction, not a second run
        done = http.put(f"/predictions/{prediction_id}", json=request)
        assert done.status_code == 200 and done.json()["output"] == delivery.json["output"]
        other = {**request, "input": {**request["input"], "mask_limit": 2}}
        conflict = http.put(f"/predictions/{prediction_id}", json=other, headers={"Prefer": "respond-async"})
        assert conflict.status_code == 409 and "already used" in conflict.json()["detail"]
    assert len(receiver.requests) == 1


def test_identical_puts_at_once_share_one_prediction(live, data_uri) -> None:
    prediction_id = "twins-" + uuid.uuid4().hex
    request = {"input": {"image": data_uri, **TINY_SEED_INPUT, "mask_limit": 1}}

    def put(_: int) -> Any:
        with live.client() as http:
            return http.put(f"/predictions/{prediction_id}", json=request, headers={"Prefer": "respond-async"})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(put, range(4)))
    assert [(r.status_code, r.json()["id"]) for r in responses] == [(202, prediction_id)] * 4
    inputs = {r.json()["input"]["image"] for r in responses}
    assert len(inputs) == 1  # one job, one stored copy of the image
    # The store keeps a client-chosen id per API key (another key's PUT of it is that key's own prediction).
    stored = stored_prediction_id(prediction_id, key_id(KEYS[0]))
    assert live.services.runner.wait(stored, 300).status.value == "succeeded"


def test_cancel(live, data_uri) -> None:
    with live.client() as http:
        created = http.post("/predictions", headers={"Prefer": "respond-async"},
                            json={"input": {"image": data_uri, **TINY_SEED_INPUT}})
        assert created.status_code == 202
        response = http.post(f"/predictions/{created.json()['id']}/cancel")
        assert (response.status_code, response.json()) == (200, {})
        missing = http.post("/predictions/no-such-prediction/cancel")
        assert missing.status_code == 404 and "no prediction" in missing.json()["detail"]


def test_health_check(live) -> None:
    with live.client() as http:
        body = http.get("/health-check").json()
    assert body["status"] == "READY" and body["setup"]["status"] == "succeeded"


def test_openapi_has_cogs_components(live) -> None:
    with live.client() as http:
        schemas = http.get("/openapi.json").json()["components"]["schemas"]
    properties = schemas["Input"]["properties"]
    assert schemas["Input"]["required"] == ["image"] and len(properties) == 13
    assert properties["image"]["format"] == "uri"
    assert (properties["mask_limit"]["default"], properties["mask_limit"]["type"]) == (-1, "integer")
    assert (properties["min_mask_region_area"]["default"], properties["min_mask_region_area"]["type"]) == (
        25.0, "number")
    assert properties["mask_2_mask"] == {**properties["mask_2_mask"], "type": "boolean", "default": True,
                                         "x-order": 11}
    assert schemas["Output"] == {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}
    assert {"PredictionRequest", "PredictionResponse"} <= set(schemas)


@pytest.mark.parametrize("body, loc", [
    ({"input": {"image": "IMG", "colour": "red"}}, ["body", "input", "colour"]),
    ({"input": {"image": "IMG", "crop_n_layers": 9}}, ["body", "input", "crop_n_layers"]),
    ({"input": {"image": "IMG", "pred_iou_thresh": "high"}}, ["body", "input", "pred_iou_thresh"]),
    ({"input": {"mask_limit": 2}}, ["body", "input", "image"]),
    ({"input": {"image": "IMG"}, "webhook_events_filter": ["finished"]}, ["body", "webhook_events_filter", "0"]),
    ({"input": {"image": "IMG"}, "surprise": True}, ["body", "surprise"]),
    ({}, ["body", "input"]),
])
def test_validation_errors_have_fastapis_shape(live, data_uri, body, loc) -> None:
    if isinstance(body.get("input"), dict) and body["input"].get("image") == "IMG":
        body = {**body, "input": {**body["input"], "image": data_uri}}
    with live.client() as http:
        response = http.post("/predictions", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert [str(part) for part in error["loc"]] == loc and error["msg"]


@pytest.mark.parametrize("method, path, body, status, words", [
    ("POST", "/predictions", {"input": {"image": "data:image/png;base64,AAAA"}}, 400, "input.image"),
    ("POST", "/predictions", {"input": {"image": "file:///etc/passwd"}}, 400, "input.image"),
    ("POST", "/predictions", {"input": {"image": "IMG", "points_per_side": 1000}}, 400, "points_per_side"),
    ("POST", "/predictions", {"input": {"image": "IMG"}, "webhook": "http://"}, 403, "webhook"),
    ("PUT", "/predictions/bad id!", {"input": {"image": "IMG"}}, 400, "id"),
    ("PUT", "/predictions/abc", {"id": "xyz", "input": {"image": "IMG"}}, 400, "differs"),
    ("GET", "/predictions", None, 405, "Method Not Allowed"),
])
def test_bad_input_gets_a_detail_message(live, data_uri, method, path, body, status, words) -> None:
    if body and body["input"].get("image") == "IMG":
        body = {**body, "input": {**body["input"], "image": data_uri}}
    with live.client() as http:
        response = http.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]
