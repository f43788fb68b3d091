"""Label Studio ML-backend dialect: the contract of `label-studio-ml-backend`, then the real Label Studio.

The fast tests send the bodies Label Studio's `ml/api_connector.py` sends, with the task image behind a
stand-in Label Studio file server on 127.0.0.1 that checks the token the way Label Studio does. The
end-to-end test (`slow`) starts the real `label-studio` server (its own virtualenv, `.venv-label-studio/`)
and connects segany to a project through `label-studio-sdk`.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from label_studio_helpers import CONFIG, HEIGHT, POLYGON_CONFIG, WIDTH, best_mask, keypoint, pixels, rectangle
from live_server import free_port, serve_in_thread
from segany.io.masks import mask_to_polygons

brush = pytest.importorskip("label_studio_sdk.converter.brush")
ROOT = Path(__file__).resolve().parents[3]
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"  # shaped like a personal token


@pytest.fixture(scope="module")
def file_server(image_bytes):
    """Serves /data/upload/1/chelsea.png to `Token <legacy>` or to the access token a PAT refreshes into."""
    app = FastAPI()

    @app.post("/api/token/refresh")
    async def refresh(request: Request) -> JSONResponse:
        ok = (await request.json()).get("refresh") == PAT
        return JSONResponse({"access": "short-lived"} if ok else {"detail": "bad"}, status_code=200 if ok else 401)

    @app.get("/data/upload/1/chelsea.png")
    async def image(request: Request) -> Response:
        if request.headers.get("authorization") not in (f"Token {LEGACY_TOKEN}", "Bearer short-lived"):
            return JSONResponse({"detail": "Authentication credentials were not provided."}, status_code=401)
        return Response(image_bytes, media_type="image/png")

    port = free_port()
    with serve_in_thread(app, port, wait_ready=False) as url:
        yield url


def _predict_body(context_result, config=CONFIG, image="/data/upload/1/chelsea.png", project="7.1700000000"):
    return {"tasks": [{"id": 1, "data": {"image": image}}], "project": project, "label_config": config,
            "params": {"login": None, "password": None, "context": {"result": context_result}}}


@pytest.fixture(scope="module")
def ls_backend(start_server, file_server):
    with start_server(api_keys=("ls-key",), label_studio_url=file_server, label_studio_api_key=PAT) as live:
        yield live


def _client(live):
    return live.client(auth=("label-studio", "ls-key"))  # Label Studio's "basic auth" user and password


def test_health_setup_webhook(ls_backend):
    with _client(ls_backend) as client:
        for path in ("/label-studio/health", "/label-studio/"):
            assert client.get(path).json()["status"] == "UP"
        setup = client.post("/label-studio/setup", json={"project": "7.1", "schema": CONFIG, "hostname": "",
                                                         "access_token": "", "extra_params": None})
        assert setup.status_code == 200 and setup.json()["model_version"].startswith("segany-")
        assert client.post("/label-studio/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 201
    unauthorised = httpx.post(ls_backend.url + "/label-studio/predict", json=_predict_body([keypoint(1, 1)]),
                              auth=("label-studio", "wrong"))
    assert unauthorised.status_code == 401 and unauthorised.json()["status"] == 401


def test_click_becomes_a_brush_region_and_the_second_click_reuses_the_embedding(ls_backend, image_bytes,
                                                                                tiny_predictor):
    with _client(ls_backend) as client:
        first = client.post("/label-studio/predict", json=_predict_body([keypoint(120, 90)]))
        assert first.status_code == 200, first.text
        misses = ls_backend.metric("segany_embedding_cache_misses_total")
        clicks = [keypoint(120, 90), keypoint(300, 200, positive=False)]
        second = client.post("/label-studio/predict", json=_predict_body(clicks))
    assert ls_backend.metric("segany_embedding_cache_misses_total") == misses  # no second embed
    (prediction,) = first.json()["results"]
    (region,) = prediction["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["cat"] and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (WIDTH, HEIGHT)
    decoded = brush.decode_rle(region["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0
    np.testing.assert_array_equal(decoded, best_mask(tiny_predictor, image_bytes, point_coords=[pixels(120, 90)],
                                                     point_labels=[1]))
    (region2,) = second.json()["results"][0]["result"]
    expected2 = best_mask(tiny_predictor, image_bytes, point_coords=[pixels(120, 90), pixels(300, 200)],
                          point_labels=[1, 0])
    np.testing.assert_array_equal(brush.decode_rle(region2["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0,
                                  expected2)


def test_rectangle_and_polygon_config(ls_backend, image_bytes, tiny_predictor):
    with _client(ls_backend) as client:
        answer = client.post("/label-studio/predict", json=_predict_body([rectangle(100, 50, 400, 280)],
                                                                         config=POLYGON_CONFIG))
    assert answer.status_code == 200, answer.text
    regions = {region["type"]: region for region in answer.json()["results"][0]["result"]}
    assert set(regions) == {"brushlabels", "polygonlabels"}
    box = [pixels(100, 50)[0], pixels(100, 50)[1], pixels(400, 280)[0], pixels(400, 280)[1]]
    expected = best_mask(tiny_predictor, image_bytes, box=box)
    brush_mask = brush.decode_rle(regions["brushlabels"]["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0
    np.testing.assert_array_equal(brush_mask, expected)
    points = np.asarray(regions["polygonlabels"]["value"]["points"]) / 100 * [WIDTH, HEIGHT]
    assert regions["polygonlabels"]["value"]["polygonlabels"] == ["cat"]
    largest = mask_to_polygons(expected, keep_holes=False, epsilon=1.0)[0]  # the largest part, simplified
    np.testing.assert_allclose(points, np.asarray(largest.exterior, float), atol=1e-9)


def test_no_clicks_is_no_prediction(ls_backend):
    with _client(ls_backend) as client:
        answer = client.post("/label-studio/predict", json=_predict_body([]))
    assert answer.status_code == 200 and answer.json()["results"] == []


@pytest.mark.parametrize("case, status, words", [
    ("no_base", 400, "label-studio-url"), ("no_image_tag", 400, "<Image"), ("bad_percent", 400, "value.x"),
    ("bad_token", 400, "HTTP 401"),
])
def test_errors_in_the_backend_shape(start_server, file_server, case, status, words):
    changes = {"label_studio_url": file_server, "label_studio_api_key": LEGACY_TOKEN}
    body = _predict_body([keypoint(120, 90)])
    if case == "no_base":
        changes = {}
    elif case == "no_image_tag":
        body["label_config"] = "<View><BrushLabels name='b' toName='x'/></View>"
    elif case == "bad_percent":
        body["params"]["context"]["result"][0]["value"]["x"] = "left"
    elif case == "bad_token":
        changes["label_studio_api_key"] = "not-the-token"
    with start_server(**changes) as live, live.client() as client:
        answer = client.post("/label-studio/predict", json=body)
        assert client.get("/label-studio/health").status_code == 200
    assert answer.status_code == status, answer.text
    assert answer.json()["status"] == status and words in answer.json()["detail"]


# ---- the real Label Studio -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A fresh Label Studio (SQLite, 127.0.0.1) with one user whose legacy token is LEGACY_TOKEN."""
    python = ROOT / ".venv-label-studio" / "bin" / "python"
    if not python.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "label_studio_venv.sh")], check=True, timeout=1200)
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_USERNAME": "test@segany.local",
           "LABEL_STUDIO_PASSWORD": "segany-test-password", "LABEL_STUDIO_USER_TOKEN": LEGACY_TOKEN,
           "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_HOST": url,
           # Its ML backend (segany) and the webhook Label Studio adds for it are on 127.0.0.1 too.
           "ML_BLOCK_LOCAL_IP": "false", "USE_DEFAULT_BANNED_SUBNETS": "false"}
    log = (data / "server.log").open("wb")
    process = subprocess.Popen([str(python), "-m", "label_studio.server", "start", "--no-browser",
                                "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Label Studio did not start: {(data / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_real_label_studio_click_to_brush(label_studio, start_server, image_path, image_bytes, tiny_predictor):
    from label_studio_sdk import LabelStudio

    sdk = LabelStudio(base_url=label_studio, api_key=LEGACY_TOKEN)
    project = sdk.projects.create(title="segany end-to-end", label_config=CONFIG)
    upload = httpx.post(f"{label_studio}/api/projects/{project.id}/import", timeout=60,
                        headers={"Authorization": f"Token {LEGACY_TOKEN}"},
                        files={"file": ("chelsea.png", image_bytes, "image/png")})
    assert upload.status_code == 201, upload.text
    (task,) = list(sdk.tasks.list(project=project.id))
    assert task.data["image"].startswith("/data/upload/")  # a Label Studio path: segany must fetch it
    # No Label Studio address in segany's settings: it learns the hostname and token from /setup.
    with start_server(api_keys=("ls-key",)) as segany_server:
        backend = sdk.ml.create(project=project.id, url=segany_server.url + "/label-studio", title="segany",
                                is_interactive=True, auth_method="BASIC_AUTH", basic_auth_user="segany",
                                basic_auth_pass="ls-key")

        def click(*points):
            answer = sdk.ml.with_raw_response.predict_interactive(id=backend.id, task=task.id,
                                                                  context={"result": list(points)})
            body = answer.response.json()
            assert "errors" not in body, body
            return body["data"]

        first = click(keypoint(120, 90))
        misses = segany_server.metric("segany_embedding_cache_misses_total")
        second = click(keypoint(120, 90), keypoint(300, 200, positive=False))
        assert segany_server.metric("segany_embedding_cache_misses_total") == misses
    (region,) = first["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["cat"]
    expected = best_mask(tiny_predictor, image_bytes, point_coords=[pixels(120, 90)], point_labels=[1])
    np.testing.assert_array_equal(brush.decode_rle(region["value"]["rle"]).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0,
                                  expected)
    # Stored as a prediction and read back through Label Studio, the brush decodes to the same mask.
    sdk.predictions.create(task=task.id, result=second["result"], score=second["score"],
                           model_version=second["model_version"])
    (stored,) = list(sdk.predictions.list(task=task.id))
    stored_rle = stored.result[0]["value"]["rle"]
    expected2 = best_mask(tiny_predictor, image_bytes, point_coords=[pixels(120, 90), pixels(300, 200)],
                          point_labels=[1, 0])
    np.testing.assert_array_equal(brush.decode_rle(stored_rle).reshape(HEIGHT, WIDTH, 4)[:, :, 3] > 0, expected2)
