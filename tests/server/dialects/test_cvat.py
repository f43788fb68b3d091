"""CVAT dialect: segany as the nuclio dashboard CVAT's lambda manager lists and invokes functions through.

CVAT itself (Django, PostgreSQL, Redis, the UI) cannot start here, so these tests replay the exact requests
of `cvat/apps/lambda_manager/views.py` (`LambdaGateway._http` headers, `/api/functions`,
`/api/function_invocations` with `x-nuclio-function-name`, the interactor payload) and parse the answers the
way its `LambdaFunction` does. The SAM 2.1 plugin's path is checked by decoding the served embedding with
the decoder `segany export onnx-decoder` writes, as the plugin does in the browser.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from label_studio_helpers import best_mask

KEY = "cvat-key"
GATEWAY_HEADERS = {"x-nuclio-project-name": "cvat", "x-nuclio-function-namespace": "nuclio",
                   "x-nuclio-invoke-via": "domain-name"}


@pytest.fixture(scope="module")
def cvat_server(start_server):
    with start_server(api_keys=(KEY,)) as live:
        yield live


def _client(live):
    return live.client(auth=("cvat", KEY))  # CVAT_NUCLIO_HOST=cvat:KEY@host puts the key in basic auth


def _invoke(client, function, payload):
    headers = {**GATEWAY_HEADERS, "x-nuclio-function-name": function, "x-nuclio-path": "/"}
    return client.post("/api/function_invocations", json=payload, headers=headers)


def _payload(image_bytes, pos, neg=(), bbox=None):
    return {"image": base64.b64encode(image_bytes).decode(), "pos_points": [list(p) for p in pos],
            "neg_points": [list(p) for p in neg], "obj_bbox": bbox}


def _gateway_url(live) -> str:
    """LambdaGateway's '{scheme}://{host}:{port}' with CVAT_NUCLIO_HOST=cvat:KEY@127.0.0.1."""
    port = live.url.rsplit(":", 1)[1]
    return f"http://cvat:{KEY}@127.0.0.1:{port}"


def test_cvat_lists_the_functions_as_interactors(cvat_server):
    import requests  # what CVAT's LambdaGateway uses: it turns the URL's user:password into basic auth

    with requests.Session() as session:
        listed = session.request("get", _gateway_url(cvat_server) + "/api/functions", headers=GATEWAY_HEADERS,
                                 timeout=60, json=None)
        one = session.request("get", _gateway_url(cvat_server) + "/api/functions/segany-sam2",
                              headers=GATEWAY_HEADERS, timeout=60, json=None)
    assert listed.status_code == 200 and one.status_code == 200
    for data in listed.json().values():  # what LambdaFunction.__init__ reads
        annotations = data["metadata"]["annotations"]
        assert annotations["type"] == "interactor"
        assert [item["name"] for item in json.loads(annotations.get("spec") or "[]")] == []
        assert int(annotations.get("min_pos_points", 1)) == 1 and int(annotations.get("min_neg_points", -1)) == 0
        assert not bool(annotations.get("startswith_box", False))  # any non-empty string would mean True
        assert data["spec"]["description"] and data["status"]["state"] == "ready"
        assert int(annotations.get("version", "1")) == 2
    assert set(listed.json()) == {"segany-sam2", "pth-facebookresearch-sam2-hiera-large"}
    assert one.json()["metadata"]["name"] == "segany-sam2"


def test_interactor_mask_and_no_second_embed(cvat_server, image_bytes, tiny_predictor):
    with _client(cvat_server) as client:
        first = _invoke(client, "segany-sam2", _payload(image_bytes, [(120, 90)]))
        assert first.status_code == 200, first.text
        misses = cvat_server.metric("segany_embedding_cache_misses_total")
        second = _invoke(client, "segany-sam2", _payload(image_bytes, [(120, 90)], [(300, 200)],
                                                         bbox=[[400, 280], [100, 50]]))
        direct = client.post("/cvat/functions/segany-sam2", json=_payload(image_bytes, [(120, 90)]))
    assert cvat_server.metric("segany_embedding_cache_misses_total") == misses
    mask = np.asarray(first.json()["mask"])
    assert mask.shape == (300, 451) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, best_mask(tiny_predictor, image_bytes, point_coords=[[120, 90]],
                                                      point_labels=[1]))
    expected = best_mask(tiny_predictor, image_bytes, point_coords=[[120, 90], [300, 200]], point_labels=[1, 0],
                         box=[100, 50, 400, 280])
    np.testing.assert_array_equal(np.asarray(second.json()["mask"]) > 0, expected)
    assert direct.json() == first.json()


def test_plugin_embeddings_decode_in_the_exported_onnx_decoder(cvat_server, image_bytes, tiny_predictor, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from segany.cli.export import export_onnx_decoder

    with _client(cvat_server) as client:
        answer = _invoke(client, "pth-facebookresearch-sam2-hiera-large", _payload(image_bytes, [(120, 90)]))
    assert answer.status_code == 200, answer.text
    shapes = {"image_embed": (1, 256, 64, 64), "high_res_feats_0": (1, 32, 256, 256),
              "high_res_feats_1": (1, 64, 128, 128)}
    # The plugin: atob -> bytes -> Float32Array (little-endian) -> Tensor of the fixed shape.
    feeds = {name: np.frombuffer(base64.b64decode(answer.json()[name]), "<f4").reshape(shape)
             for name, shape in shapes.items()}
    embedding = tiny_predictor.embed(image_bytes)
    np.testing.assert_allclose(feeds["image_embed"], embedding.image_embed.numpy(), atol=1e-5)
    session = ort.InferenceSession(str(export_onnx_decoder(tiny_predictor.model, tmp_path / "d.onnx")))
    scale = 1024 / 451
    feeds.update(point_coords=np.array([[[120 * scale, 90 * scale]]], np.float32),
                 point_labels=np.array([[1]], np.float32), mask_input=np.zeros((1, 1, 256, 256), np.float32),
                 has_mask_input=np.zeros(1, np.float32), orig_im_size=np.array([300, 451], np.int32))
    masks = session.run(["masks"], feeds)[0]
    expected = best_mask(tiny_predictor, image_bytes, point_coords=[[120, 90]], point_labels=[1])
    assert ((masks[0, 0] > 0) == expected).mean() >= 0.999


@pytest.mark.parametrize("case, status, words", [
    ("no_header", 400, "x-nuclio-function-name"), ("unknown", 404, "does not exist"),
    ("no_points", 400, "pos_points"), ("bad_image", 400, "image"), ("no_key", 401, "API key"),
])
def test_errors_are_json_with_an_error_field(cvat_server, image_bytes, case, status, words):
    with _client(cvat_server) as client:
        if case == "no_header":
            answer = client.post("/api/function_invocations", json=_payload(image_bytes, [(1, 1)]))
        elif case == "unknown":
            answer = _invoke(client, "no-such-function", _payload(image_bytes, [(1, 1)]))
        elif case == "no_points":
            answer = _invoke(client, "segany-sam2", _payload(image_bytes, []))
        elif case == "bad_image":
            answer = _invoke(client, "segany-sam2", {"image": "bm90IGFuIGltYWdl", "pos_points": [[1, 1]],
                                                     "neg_points": []})
        else:
            answer = cvat_server.client().get("/api/functions")
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


def test_the_three_tools_share_one_embedding(cvat_server):
    """A click from X-AnyLabeling, Label Studio and CVAT on one new image: one embed, then two cache hits."""
    from fixture_paths import IMAGES
    from label_studio_helpers import CONFIG, keypoint

    image = (IMAGES / "coffee.png").read_bytes()
    data_uri = "data:image/png;base64," + base64.b64encode(image).decode()
    misses = cvat_server.metric("segany_embedding_cache_misses_total")
    hits = cvat_server.metric("segany_embedding_cache_hits_total")
    model = cvat_server.engine.pool.default_variant
    with _client(cvat_server) as client:
        xal = client.post("/xanylabeling/v1/predict", headers={"Token": KEY},
                          json={"model": model, "image": data_uri,
                                "params": {"marks": [{"type": "point", "data": [50, 40], "label": 1}]}})
        ls = client.post("/label-studio/predict", json={
            "tasks": [{"id": 1, "data": {"image": data_uri}}], "project": "1.1", "label_config": CONFIG,
            "params": {"context": {"result": [keypoint(50, 40)]}}})
        cvat = _invoke(client, "segany-sam2", _payload(image, [(50, 40)]))
    assert xal.json()["success"] and ls.status_code == 200 and cvat.status_code == 200, (xal.text, ls.text)
    assert cvat_server.metric("segany_embedding_cache_misses_total") == misses + 1
    assert cvat_server.metric("segany_embedding_cache_hits_total") == hits + 2
