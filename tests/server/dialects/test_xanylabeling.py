"""X-AnyLabeling remote-server dialect, driven with the exact requests of X-AnyLabeling's `remote_server.py`.

The client module imports PyQt6 at the top, so it cannot run headless here: these tests replay its request
shapes (headers `Content-Type` + `Token`, body `{model, image: data URI, params: {conf_threshold,
iou_threshold, epsilon_factor, marks, ...}}`) with httpx and read the answers the way it does.
"""
from __future__ import annotations

import base64

import numpy as np
import pytest

from segany.io.masks import mask_to_polygons
from segany.server.dialects.xanylabeling import error_response
from segany.server.http.errors import ErrorInfo
from tiny_detectors import build_tiny_grounding_dino

PREFIX = "/xanylabeling"


def _headers(key: str = "") -> dict[str, str]:
    return {"Content-Type": "application/json", "Token": key}  # the client always sends Token, maybe empty


def _payload(image_bytes: bytes, model: str, **params) -> dict:
    data_uri = "data:image/png;base64," + base64.b64encode(image_bytes).decode("utf-8")
    return {"model": model, "image": data_uri,
            "params": {"conf_threshold": 0.0, "iou_threshold": 0.0, "epsilon_factor": 0.0, **params}}


def _best_polygon(prediction) -> list[list[float]]:
    best = int(np.argmax(prediction.scores))
    ring = [list(map(float, p)) for p in mask_to_polygons(prediction.masks[best], keep_holes=False)[0].exterior]
    return ring + [ring[0]]


@pytest.fixture(scope="module")
def keyed(start_server):
    with start_server(api_keys=("xal-key",)) as live:
        yield live


def test_health_models_and_a_click(keyed, image_bytes, tiny_predictor):
    with keyed.client() as client:
        health = client.get(PREFIX + "/health")  # no key: exempt, as in X-AnyLabeling-Server
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        models = client.get(PREFIX + "/v1/models", headers=_headers("xal-key")).json()
        assert models["success"] is True
        model_id = next(iter(models["data"]))
        assert model_id == keyed.engine.pool.default_variant
        assert {w["name"] for w in models["data"][model_id]["widgets"]} >= {"button_add_point", "button_add_rect"}
        info = client.get(f"{PREFIX}/v1/models/{model_id}/info", headers=_headers("xal-key")).json()
        assert info["success"] and info["data"]["model_id"] == model_id
        missing = client.get(f"{PREFIX}/v1/models/nope/info", headers=_headers("xal-key"))
        assert missing.status_code == 200 and missing.json()["error"]["code"] == "MODEL_NOT_FOUND"
        marks = [{"type": "point", "data": [120, 90], "label": 1}, {"type": "point", "data": [300, 200], "label": 0}]
        answer = client.post(PREFIX + "/v1/predict", json=_payload(image_bytes, model_id, marks=marks),
                             headers=_headers("xal-key"))
    assert answer.status_code == 200, answer.text
    shapes = answer.json()["data"]["shapes"]
    expected = tiny_predictor.predict(tiny_predictor.embed(image_bytes), point_coords=[[120, 90], [300, 200]],
                                      point_labels=[1, 0])
    assert len(shapes) == 1
    assert shapes[0]["shape_type"] == "polygon" and shapes[0]["label"] == "AUTOLABEL_OBJECT"
    assert shapes[0]["points"] == _best_polygon(expected)
    assert shapes[0]["score"] == pytest.approx(float(np.clip(expected.scores.max(), 0, 1)), abs=1e-4)


def test_rectangles_are_one_object_each_and_reuse_the_embedding(keyed, image_bytes, tiny_predictor):
    model_id = keyed.engine.pool.default_variant
    marks = [{"type": "rectangle", "data": [200, 150, 10, 10], "label": 1},  # dragged up-left
             {"type": "rectangle", "data": [100, 50, 400, 280], "label": 1}]
    with keyed.client() as client:
        client.post(PREFIX + "/v1/predict", json=_payload(image_bytes, model_id, marks=marks[:1]),
                    headers=_headers("xal-key"))
        misses = keyed.metric("segany_embedding_cache_misses_total")
        hits = keyed.metric("segany_embedding_cache_hits_total")
        answer = client.post(PREFIX + "/v1/predict", json=_payload(image_bytes, model_id, marks=marks),
                             headers=_headers("xal-key"))
    assert answer.status_code == 200 and answer.json()["success"], answer.text
    assert keyed.metric("segany_embedding_cache_misses_total") == misses  # the second click did not re-embed
    assert keyed.metric("segany_embedding_cache_hits_total") == hits + 1
    shapes = answer.json()["data"]["shapes"]
    embedding = tiny_predictor.embed(image_bytes)
    for shape, box in zip(shapes, ([10, 10, 200, 150], [100, 50, 400, 280]), strict=True):
        assert shape["points"] == _best_polygon(tiny_predictor.predict(embedding, box=box))


@pytest.mark.parametrize("case, code", [("model", "MODEL_NOT_FOUND"), ("image", "INVALID_IMAGE"),
                                        ("key", "UNAUTHORIZED"), ("marks", "VALIDATION_ERROR"),
                                        ("empty", "INVALID_INPUT")])
def test_errors_are_http_200_with_success_false(keyed, image_bytes, case, code):
    model_id = keyed.engine.pool.default_variant
    body = _payload(image_bytes, model_id, marks=[{"type": "point", "data": [5, 5], "label": 1}])
    key = "xal-key"
    if case == "model":
        body["model"] = "no-such-model"
    elif case == "image":
        body["image"] = "data:image/png;base64,bm90IGFuIGltYWdl"
    elif case == "key":
        key = "wrong"
    elif case == "marks":
        body["params"]["marks"] = [{"type": "rectangle", "data": [1, 2, 3], "label": 1}]
    else:
        body["params"].pop("marks")
    with keyed.client() as client:
        answer = client.post(PREFIX + "/v1/predict", json=body, headers=_headers(key))
        assert client.get(PREFIX + "/health").status_code == 200  # still serving
    assert answer.status_code == 200
    assert answer.json()["success"] is False
    assert answer.json()["error"]["code"] == code and answer.json()["error"]["message"]


def test_full_queue_is_the_one_503():
    answer = error_response(ErrorInfo(503, "server_busy", "the server is busy", headers={"Retry-After": "2"}))
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "2"
    assert answer.body == b'{"detail":"the server is busy"}'


def test_text_prompt_labels_each_object(start_server, tmp_path_factory, image_bytes):
    pytest.importorskip("transformers")
    detector = build_tiny_grounding_dino(tmp_path_factory.mktemp("gd") / "tiny-gd")
    with start_server(text_model=str(detector)) as live, live.client() as client:
        model_id = live.engine.pool.default_variant
        # What the client sends for a text prompt ("ball." loses its dot), plus both detector thresholds.
        body = _payload(image_bytes, model_id, text_prompt="red dog. ball", box_threshold=0.0, text_threshold=0.0)
        answer = client.post(PREFIX + "/v1/predict", json=body, headers=_headers())
    assert answer.status_code == 200 and answer.json()["success"], answer.text
    shapes = answer.json()["data"]["shapes"]
    assert shapes and all(shape["label"] in ("red dog", "ball") for shape in shapes)
    assert all(shape["points"][0] == shape["points"][-1] for shape in shapes)
