"""Two API keys on one live server: neither sees, uses nor squats the other's image ids, aliases or uploads;
stored files are served only as the media types segany writes, never sniffed; auth comes before the body."""
from __future__ import annotations

import base64
import logging

import httpx
import pytest

from segany.server.launch import redact_access_log

KEYS = ("key-alice", "key-bob")


@pytest.fixture(scope="module")
def two_keys(start_server):
    with start_server(api_keys=KEYS) as live:
        yield live


def _client(live, key: str | None) -> httpx.Client:
    return live.client(headers={"Authorization": f"Bearer {key}"} if key else {})


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def other_image(image_path):
    return image_path.with_name("coffee.png")


def _roboflow_segment(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/sam2/segment_image", json={"format": "rle", "multimask_output": False,
                                                    "prompts": [{"points": [{"x": 5, "y": 5, "positive": True}]}],
                                                    **body})


def _size(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]["masks"]["size"]


def test_roboflow_aliases_are_per_key(two_keys, image_path, other_image):
    cat = {"type": "base64", "value": _b64(image_path)}  # 451 x 300
    coffee = {"type": "base64", "value": _b64(other_image)}  # 600 x 400
    with _client(two_keys, KEYS[0]) as alice, _client(two_keys, KEYS[1]) as bob:
        assert alice.post("/sam2/embed_image", json={"image": cat, "image_id": "pet"}).status_code == 200
        assert _roboflow_segment(bob, image_id="pet").status_code == 404  # B cannot use A's alias
        assert bob.post("/sam2/embed_image", json={"image": coffee, "image_id": "pet"}).status_code == 200  # squat
        assert _size(_roboflow_segment(alice, image_id="pet")) == [300, 451]  # A still gets A's image
        # A resends another image under the alias: the alias follows it (for A only).
        assert _size(_roboflow_segment(alice, image_id="pet", image=coffee)) == [400, 600]
        assert _size(_roboflow_segment(alice, image_id="pet")) == [400, 600]
        # The key in the body (inference_sdk's way) is the same tenant as the header key.
        body_key = httpx.post(f"{two_keys.url}/sam2/segment_image", timeout=300, json={
            "api_key": KEYS[0], "image_id": "pet", "format": "rle", "multimask_output": False,
            "prompts": [{"points": [{"x": 5, "y": 5, "positive": True}]}]})
        assert _size(body_key) == [400, 600]


def test_native_image_ids_are_per_key(two_keys, image_path):
    with _client(two_keys, KEYS[0]) as alice, _client(two_keys, KEYS[1]) as bob:
        embedded = alice.post("/v1/embed", json={"image": _b64(image_path)})
        image_id = embedded.json()["image_id"]
        prompts = [{"points": [[120, 90]]}]
        assert alice.post("/v1/segment", json={"image_id": image_id, "prompts": prompts}).status_code == 200
        refused = bob.post("/v1/segment", json={"image_id": image_id, "prompts": prompts})
        assert refused.status_code == 404 and "image_id" in refused.text


def _upload(client: httpx.Client, data: bytes, content_type: str, name: str = "page.html") -> httpx.Response:
    return client.post("/v1/files", files={"content": (name, data, content_type)})


def test_uploads_are_private_and_never_served_as_pages(two_keys):
    html = b"<script>alert(sessionStorage.length)</script>"
    with _client(two_keys, KEYS[0]) as alice, _client(two_keys, KEYS[1]) as bob:
        uploaded = _upload(alice, html, "text/html")
        assert uploaded.status_code == 201, uploaded.text
        file_id = uploaded.json()["id"]
        assert bob.get(f"/v1/files/{file_id}").status_code == 404
        assert httpx.get(f"{two_keys.url}/files/{file_id}", timeout=30).status_code == 404  # no key: absent
        assert bob.get(f"/files/{file_id}").status_code == 404
        own = alice.get(f"/files/{file_id}")
        assert own.status_code == 200 and own.content == html
        assert own.headers["content-type"] == "application/octet-stream"
        assert own.headers["content-disposition"] == "attachment"
        assert own.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("content_type", ["text/html\r\nx-evil: 1", "image/pngé", "not a type"])
def test_bad_upload_content_types_are_4xx(two_keys, content_type):
    with _client(two_keys, KEYS[0]) as alice:
        response = alice.post("/v1/files", files={"content": ("a.bin", b"abc", "image/png")},
                              data={"type": content_type})
    assert response.status_code == 400 and "type" in response.text, response.text


def test_segmind_refuses_another_keys_upload(two_keys, image_path):
    with _client(two_keys, KEYS[0]) as alice:
        uploaded = _upload(alice, image_path.read_bytes(), "image/png", "cat.png").json()
    url = uploaded["urls"]["get"]
    with two_keys.client(headers={"x-api-key": KEYS[1]}) as bob:
        refused = bob.post("/v1/sam-v2-image", json={"image": url, "coordinates": "[120, 90]"})
    assert 400 <= refused.status_code < 500 and refused.status_code != 401, refused.text
    with two_keys.client(headers={"x-api-key": KEYS[0]}) as alice:
        own = alice.post("/v1/sam-v2-image", json={"image": url, "coordinates": "[120, 90]"})
    assert own.status_code == 200, own.text


def test_every_answer_says_nosniff(two_keys):
    for response in (httpx.get(f"{two_keys.url}/healthz", timeout=30), httpx.post(f"{two_keys.url}/v1/embed")):
        assert response.headers["x-content-type-options"] == "nosniff"
    page = httpx.get(f"{two_keys.url}/", timeout=30)
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_keyless_requests_are_refused_before_the_body(two_keys):
    nested = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/embed", "/sam2/segment_image"):
        response = httpx.post(f"{two_keys.url}{path}", content=nested, timeout=30,
                              headers={"content-type": "application/json"})
        assert response.status_code == 401, (path, response.text)
    # A body key placed past the scanned start is not looked for: the body is not parsed unauthenticated.
    late = b'{"image": "' + b"A" * 200_000 + b'", "api_key": "key-alice"}'
    response = httpx.post(f"{two_keys.url}/sam2/segment_image", content=late, timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 401


def test_token_scheme_and_unknown_schemes(two_keys, image_path):
    files = {"image": ("cat.png", image_path.read_bytes(), "image/png")}
    token = httpx.post(f"{two_keys.url}/v1/embed", files=files, headers={"Authorization": f"Token {KEYS[0]}"},
                       timeout=300)
    assert token.status_code == 200, token.text
    odd = httpx.post(f"{two_keys.url}/v1/embed", files=files, headers={"Authorization": f"Key {KEYS[0]}"},
                     timeout=30)
    assert odd.status_code == 401 and "Bearer" in odd.text and "'Key'" in odd.text


def test_api_key_is_redacted_from_the_access_log():
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", "/sam2/embed_image?x=1&api_key=sekrit&y=2", "1.1", 200), None)
    assert redact_access_log(record)
    assert "sekrit" not in record.getMessage() and "api_key=***&y=2" in record.getMessage()


def test_cog_prediction_ids_are_per_key(two_keys, image_path):
    request = {"input": {"image": "data:image/png;base64," + _b64(image_path), "points_per_side": 2,
                         "points_per_batch": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}}
    async_headers = {"Prefer": "respond-async"}
    with _client(two_keys, KEYS[0]) as alice, _client(two_keys, KEYS[1]) as bob:
        mine = alice.put("/predictions/shared-name", json=request, headers=async_headers)
        assert mine.status_code == 202 and mine.json()["id"] == "shared-name", mine.text
        # B's PUT of the same id is B's own prediction: no conflict, no hint that A's exists.
        theirs = bob.put("/predictions/shared-name", json={"input": {**request["input"], "points_per_side": 3}},
                         headers=async_headers)
        assert theirs.status_code == 202 and theirs.json()["id"] == "shared-name", theirs.text
        assert theirs.json()["input"]["points_per_side"] == 3
        again = alice.put("/predictions/shared-name", json=request, headers=async_headers)  # idempotent for A
        assert again.status_code == 202 and again.json()["input"]["points_per_side"] == 2
        assert alice.post("/predictions/shared-name/cancel").status_code == 200
        assert bob.post("/predictions/shared-name/cancel").status_code == 200
