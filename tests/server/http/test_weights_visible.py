"""Random weights are impossible to miss over HTTP; a weightless server fails fast; `/docs` is self-served."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from huggingface_hub import constants as hf_constants

from segany.model import hub
from segany.model.weights import mark_random_checkpoint
from segany.server.http.docs_assets import ASSETS, asset_bytes


@pytest.fixture(scope="module")
def random_checkpoint(tiny_checkpoint: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("random") / "sam2.1_hiera_tiny-random.pt"
    shutil.copyfile(tiny_checkpoint, path)
    mark_random_checkpoint(path)
    return path


def test_random_weights_are_said_by_readyz_info_and_every_answer(start_server, random_checkpoint, image_bytes):
    with start_server(checkpoint=str(random_checkpoint)) as live, live.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["weights"] == "random"
        info = client.get("/v1/info").json()
        assert info["weights"] == "random" and info["default_model"] == "sam2.1_hiera_tiny"
        default = next(model for model in info["models"] if model["default"])
        assert default == {"id": "sam2.1_hiera_tiny", "hf_id": "facebook/sam2.1-hiera-tiny", "default": True,
                           "loaded": True, "weights": "random"}
        answers = [client.get("/healthz"), client.get("/"), client.get("/docs"), client.get("/no/such/route"),
                   client.post("/v1/segment", json={"image_id": "nope", "prompts": [{"points": [[1, 1]]}]}),
                   client.post("/v1/embed", files={"image": ("x.png", image_bytes, "image/png")})]
        assert [a.status_code for a in answers] == [200, 200, 200, 404, 404, 200]
        assert all(a.headers["x-segany-weights"] == "random" for a in answers)


def test_a_given_file_is_labelled_file(server):
    answer = httpx.get(server.url + "/readyz", timeout=30)
    assert answer.json()["weights"] == "file" and answer.headers["x-segany-weights"] == "file"


def test_weightless_server_answers_fast_with_the_fetch_command(start_server, monkeypatch, tmp_path, image_bytes):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    hub.forget_failures()
    with start_server(checkpoint=None, preload=False) as live, live.client() as client:
        for _ in range(2):
            started = time.perf_counter()
            answer = client.post("/v1/embed", files={"image": ("x.png", image_bytes, "image/png")})
            assert time.perf_counter() - started < 3.0
            assert answer.status_code == 404, answer.text
            assert "hf download facebook/sam2.1-hiera-tiny sam2.1_hiera_tiny.pt" in answer.text
            assert "--checkpoint PATH" in answer.text
        ready = client.get("/readyz").json()
        assert ready["ready"] is False and ready["weights"] is None
        assert "x-segany-weights" not in answer.headers  # nothing loaded: nothing to claim


def test_docs_pages_load_their_assets_from_this_server(start_server):
    with start_server(api_keys=("k1",)) as live, live.client() as client:  # the docs stay public under keys
        docs, redoc = client.get("/docs"), client.get("/redoc")
        assert docs.status_code == 200 and redoc.status_code == 200
        assert "/docs/assets/swagger-ui-bundle.js" in docs.text and "/docs/assets/swagger-ui.css" in docs.text
        assert "/docs/assets/redoc.standalone.js" in redoc.text
        for page in (docs.text, redoc.text):
            assert "cdn.jsdelivr" not in page and "fonts.googleapis" not in page
        for name, media_type in ASSETS.items():
            asset = client.get(f"/docs/assets/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"] == media_type and asset.content == asset_bytes(name)
        assert client.get("/docs/assets/../openapi.json").status_code in (401, 404)
        assert client.get("/docs/assets/secret.txt").status_code == 404


def test_out_of_image_prompts_are_clipped_on_every_route(server, embedded, image_b64):
    """One policy (segany.predict.prompts): a box past the edges answers as its visible part does."""
    width, height = embedded["width"], embedded["height"]
    with server.client() as client:
        def score(box):
            answer = client.post("/v1/segment", json={"image_id": embedded["image_id"], "prompts": [{"box": box}],
                                                      "multimask": False})
            assert answer.status_code == 200, answer.text
            return answer.json()["results"][0]["masks"][0]["score"]

        assert score([-50, -40, width + 100, height // 2]) == pytest.approx(score([0, 0, width, height // 2]),
                                                                            abs=1e-5)
        outside = client.post("/v1/sam-v2-image", json={"image": image_b64,
                                                        "coordinates": f"[{width + 500}, 10]"})
        assert outside.status_code == 200, outside.text
