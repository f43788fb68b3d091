"""The Replicate HTTP API with the official `replicate` client against a real server (HTTPS on 127.0.0.1)."""
from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput

from live_jobs import KEYS, TINY_SEED_INPUT, JobServer, receiving, shared_server
from segany.io.images import load_image
from segany.predict.amg.generator import MaskGenerator
from segany.server.dialects.replicate_seed import MODEL_ID, MODEL_VERSION, Input

REF = f"{MODEL_ID}:{MODEL_VERSION}"


@pytest.fixture(scope="module")
def live(request, base_settings, shared_loader) -> JobServer:
    return shared_server(request, base_settings, shared_loader)


def _client(live: JobServer, key: str = KEYS[0]) -> replicate.Client:
    return replicate.Client(api_token=key, base_url=live.url, transport=httpx.HTTPTransport(verify=live.tls))


@pytest.fixture(scope="module")
def client(live: JobServer) -> replicate.Client:
    return _client(live)


@pytest.fixture(scope="module")
def data_uri(image_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes).decode("ascii")


def _png_mask(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode) == ("PNG", "L")
    pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}
    return pixels == 255


def _expected_masks(predictor: Any, image_path: Path, seed_input: dict[str, Any]) -> list[np.ndarray]:
    """The seed's masks computed here with segany.MaskGenerator, sorted by predicted IoU, none dropped."""
    params = Input(image="x", **seed_input).generator_kwargs()
    records = MaskGenerator(predictor, **params).generate(load_image(image_path))
    return [r["segmentation"] for r in sorted(records, key=lambda r: -r["predicted_iou"])]


def test_run_uploads_a_local_file_and_returns_readable_masks(client, live, image_path, tiny_predictor) -> None:
    with image_path.open("rb") as handle:
        output = client.run(REF, input={"image": handle, **TINY_SEED_INPUT})
    assert output and all(isinstance(item, FileOutput) and item.url.startswith(live.url + "/files/")
                          for item in output)
    masks = [_png_mask(item.read()) for item in output]
    expected = _expected_masks(tiny_predictor, image_path, TINY_SEED_INPUT)
    assert len(masks) == len(expected) == 12  # mask_limit -1 keeps every mask, the last one too
    for got, want in zip(masks, expected):
        assert got.shape == want.shape == (300, 451)
        assert (got == want).mean() > 0.999


def test_create_and_wait_with_mask_limit_and_signed_webhooks(client, live, data_uri) -> None:
    with receiving() as receiver:
        prediction = client.models.predictions.create(
            model=MODEL_ID, input={"image": data_uri, **TINY_SEED_INPUT, "mask_limit": 2},
            webhook=receiver.url, webhook_events_filter=["start", "completed"])
        assert prediction.status in ("starting", "processing") and prediction.version == MODEL_VERSION
        assert prediction.urls["get"] == f"{live.url}/v1/predictions/{prediction.id}"
        prediction.wait()
        assert prediction.status == "succeeded" and prediction.error is None
        assert len(prediction.output) == 2 and prediction.metrics["predict_time"] > 0
        assert "masks found, returning 2" in prediction.logs
        # the inline image was kept as a file of this server, and the prediction's input says where
        assert prediction.input["image"].startswith(live.url + "/files/")
        requests = receiver.wait_for(lambda got: any(r.json["status"] == "succeeded" for r in got))
    first, last = requests[0].json, requests[-1].json
    assert (first["id"], first["status"]) == (prediction.id, "processing")
    assert (last["status"], last["output"]) == ("succeeded", prediction.output)
    secret = client.webhooks.default.secret()
    for request in requests:
        client.webhooks.validate(headers=request.headers, body=request.body.decode(), secret=secret)
    with client._client.stream("GET", prediction.output[1]) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_prefer_wait_answers_the_finished_prediction(live, data_uri) -> None:
    with live.client() as http:
        response = http.post("/v1/predictions", headers={"Prefer": "wait=60"},
                             json={"version": MODEL_VERSION, "input": {"image": data_uri, **TINY_SEED_INPUT,
                                                                       "mask_limit": 0}})
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["status"], body["output"]) == ("succeeded", [])  # mask_limit 0: no masks
        assert http.get(f"/v1/predictions/{body['id']}").json()["completed_at"] == body["completed_at"]


def test_cancel_ends_a_prediction_as_canceled(client, data_uri) -> None:
    prediction = client.predictions.create(version=MODEL_VERSION, input={"image": data_uri, **TINY_SEED_INPUT})
    canceled = client.predictions.cancel(prediction.id)
    assert canceled.id == prediction.id
    canceled.wait()
    assert canceled.status == "canceled" and canceled.output is None


def test_predictions_are_private_to_their_api_key(client, live, data_uri) -> None:
    prediction = client.predictions.create(version=MODEL_VERSION, input={"image": data_uri, **TINY_SEED_INPUT,
                                                                         "mask_limit": 1})
    assert prediction.id in [p.id for p in client.predictions.list().results]
    other = _client(live, KEYS[1])
    with pytest.raises(ReplicateError) as caught:
        other.predictions.get(prediction.id)
    assert caught.value.status == 404
    assert prediction.id not in [p.id for p in other.predictions.list().results]
    prediction.wait()


def test_model_and_version_describe_the_seed_inputs(client) -> None:
    model = client.models.get(MODEL_ID)
    assert model.latest_version.id == MODEL_VERSION
    version = model.versions.get(MODEL_VERSION)
    schema = version.openapi_schema["components"]["schemas"]
    properties = schema["Input"]["properties"]
    assert list(properties) == ["image", "mask_limit", "points_per_side", "points_per_batch", "pred_iou_thresh",
                                "stability_score_thresh", "stability_score_offset", "crop_n_layers",
                                "box_nms_thresh", "crop_n_points_downscale_factor", "min_mask_region_area",
                                "mask_2_mask", "multimask_output"]
    defaults = {name: prop.get("default") for name, prop in properties.items()}
    assert defaults == {"image": None, "mask_limit": -1, "points_per_side": 64, "points_per_batch": 128,
                        "pred_iou_thresh": 0.7, "stability_score_thresh": 0.92, "stability_score_offset": 0.7,
                        "crop_n_layers": 1, "box_nms_thresh": 0.7, "crop_n_points_downscale_factor": 2,
                        "min_mask_region_area": 25.0, "mask_2_mask": True, "multimask_output": False}
    assert [prop["x-order"] for prop in properties.values()] == list(range(13))
    assert schema["Output"] == {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}


def test_files_api_round_trip(client, live, image_path, image_bytes) -> None:
    uploaded = client.files.create(image_path, metadata={"purpose": "test"})
    assert (uploaded.name, uploaded.size, uploaded.content_type) == ("chelsea.png", len(image_bytes), "image/png")
    assert uploaded.metadata == {"purpose": "test"} and uploaded.checksums["sha256"]
    assert client.files.get(uploaded.id).etag == uploaded.etag
    with pytest.raises(ReplicateError) as caught:
        _client(live, KEYS[1]).files.get(uploaded.id)
    assert caught.value.status == 404
    assert client.files.delete(uploaded.id) is True
    with pytest.raises(ReplicateError) as caught:
        client.files.get(uploaded.id)
    assert caught.value.status == 404


def _problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    assert body["status"] == response.status_code and body["title"] and body["detail"]
    return body


@pytest.mark.parametrize("path, body, headers, status, field", [
    ("/v1/predictions", {"version": "0" * 64, "input": {}}, {}, 404, None),
    ("/v1/predictions", {"input": {}}, {}, 422, "version"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG", "colour": 1}}, {}, 422, "input.colour"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG", "mask_limit": -2}}, {}, 422,
     "input.mask_limit"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG", "points_per_side": "many"}}, {}, 422,
     "input.points_per_side"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG", "points_per_side": 5000}}, {}, 400,
     "points_per_side"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG", "points_per_batch": 10**6}}, {}, 422,
     "input.points_per_batch"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "data:image/png;base64,iVBORw0KGgoAAAA"}},
     {}, 400, "input.image"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "not a uri"}}, {}, 400, "input.image"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "https://127.0.0.1/x.png"}}, {}, 403,
     "input.image"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG"}, "webhook": "ftp://x"}, {}, 403,
     "webhook"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG"}, "webhook_events_filter": ["done"]},
     {}, 400, "webhook_events_filter"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG"}}, {"Prefer": "wait=600"}, 400,
     "Prefer"),
    ("/v1/predictions", {"version": MODEL_VERSION, "input": {"image": "IMG"}, "extra": 1}, {}, 422, "extra"),
    ("/v1/models/someone/else/predictions", {"input": {"image": "IMG"}}, {}, 404, None),
])
def test_bad_requests_get_problem_json(live, data_uri, path, body, headers, status, field) -> None:
    if isinstance(body.get("input"), dict) and body["input"].get("image") == "IMG":
        body = {**body, "input": {**body["input"], "image": data_uri}}
    with live.client() as http:
        response = http.post(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    problem = _problem(response)
    if field is not None:
        assert field in problem["detail"]
        assert problem["invalid_fields"][0]["field"] == field


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v1/predictions/nope", 404),
    ("POST", "/v1/predictions/nope/cancel", 404),
    ("GET", "/v1/predictions?cursor=yesterday", 400),
    ("GET", "/v1/models/lucataco/segment-anything-2/versions/abc", 404),
    ("GET", "/v1/files/nope", 404),
    ("DELETE", "/v1/files/..%2F..%2Fsegany.db", 404),
    ("POST", "/v1/files", 400),
    ("PATCH", "/v1/predictions", 405),
])
def test_bad_routes_get_problem_json(live, method, path, status) -> None:
    with live.client() as http:
        response = http.request(method, path, content=b"{}" if method == "POST" else None)
    assert response.status_code == status, response.text
    _problem(response)


def test_corrupt_body_and_missing_key(live) -> None:
    with live.client() as http:
        response = http.post("/v1/predictions", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400 and "not valid JSON" in _problem(response)["detail"]
    with live.client(key=None) as http:
        assert http.get("/v1/predictions").status_code == 401


def test_list_is_newest_first(client) -> None:
    page = client.predictions.list()
    created = [p.created_at for p in page.results]
    assert created == sorted(created, reverse=True) and page.next is None


def test_waiting_client_polls_until_done(client, data_uri) -> None:
    started = time.monotonic()
    output = client.run(MODEL_ID, input={"image": data_uri, **TINY_SEED_INPUT, "mask_limit": 3}, wait=1)
    assert len(output) == 3 and time.monotonic() - started < 300
