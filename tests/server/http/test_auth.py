"""API keys in every dialect's convention, on a live server; 401s rendered in each dialect's shape.

Authorised requests here carry a broken image, so a 400 proves the key was accepted without running
the model (the server does not even load it).
"""
from __future__ import annotations

import base64
import warnings

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from inference_sdk import InferenceHTTPClient
from inference_sdk.http.errors import HTTPCallErrorError
from livepeer_ai import Livepeer
from livepeer_ai.models import errors as livepeer_errors

from segany.server.http.auth import check_request, is_valid_key, key_from_headers, key_from_json_body, key_from_query
from segany.server.http.errors import Unauthorized

KEYS = ("key-one", "key-two")
NOT_AN_IMAGE = b"definitely not an image"


@pytest.fixture(scope="module")
def secured(start_server):
    with start_server(api_keys=KEYS, preload=False) as live:
        yield live


def test_key_extraction():
    assert key_from_headers({"authorization": "Bearer abc"}) == "abc"
    assert key_from_headers({"authorization": "bearer  abc "}) == "abc"
    assert key_from_headers({"authorization": "Basic abc"}) is None
    assert key_from_headers({"x-api-key": "xyz"}) == "xyz"
    assert key_from_query("a=1&api_key=q") == "q"
    assert key_from_query("api_key=") is None
    assert key_from_json_body(b'{"api_key": "b"}') == "b"
    assert key_from_json_body(b'["api_key"]') is None and key_from_json_body(b"{bad") is None
    assert is_valid_key("key-two", KEYS) and not is_valid_key("key-three", KEYS) and not is_valid_key(None, KEYS)


def test_check_request_rules():
    check_request("/v1/embed", {}, "", None, ())  # no keys configured: open
    check_request("/healthz", {}, "", None, KEYS)  # health is public
    check_request("/sam2/embed_image", {}, "", b'{"api_key": "key-one"}', KEYS)
    with pytest.raises(Unauthorized):
        check_request("/v1/embed", {}, "", b'{"api_key": "key-one"}', KEYS)  # body keys only on Roboflow routes
    with pytest.raises(Unauthorized):
        check_request("/metrics", {"authorization": "Bearer nope"}, "", None, KEYS)


def test_public_routes_need_no_key(secured):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert httpx.get(f"{secured.url}{path}").status_code in (200, 503)  # readyz: 503 until a model loads


@pytest.mark.parametrize(
    ("path", "kwargs", "shape"),
    [
        ("/v1/embed", {"json": {"image": "AAAA"}}, lambda body: body["error"]["code"] == "unauthorized"),
        ("/segment-anything-2", {"files": {"image": ("a.png", NOT_AN_IMAGE)}}, lambda body: body["detail"]["msg"]),
        ("/models/sam2.1_hiera_tiny", {"content": NOT_AN_IMAGE}, lambda body: isinstance(body["error"], str)),
        ("/", {"content": NOT_AN_IMAGE}, lambda body: isinstance(body["error"], str)),
        ("/sam2/segment_image", {"json": {"image_id": "x"}}, lambda body: isinstance(body["message"], str)),
        ("/metrics", {}, lambda body: body["error"]["code"] == "unauthorized"),
    ],
)
def test_missing_or_wrong_key_is_401_in_the_dialect_shape(secured, path, kwargs, shape):
    method = "GET" if path == "/metrics" else "POST"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        response = httpx.request(method, f"{secured.url}{path}", headers=headers, **kwargs)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert shape(response.json())


@pytest.mark.parametrize(
    "credentials",
    [{"headers": {"Authorization": "Bearer key-one"}}, {"headers": {"x-api-key": "key-two"}},
     {"params": {"api_key": "key-one"}}],
)
def test_each_key_convention_is_accepted(secured, credentials):
    response = httpx.post(f"{secured.url}/v1/embed", json={"image": base64.b64encode(NOT_AN_IMAGE).decode()},
                          **credentials)
    assert response.status_code == 400  # past auth, stopped by the broken image
    assert httpx.get(f"{secured.url}/metrics", **credentials).status_code == 200


def test_livepeer_sdk_bearer(secured):
    request = {"image": {"file_name": "a.png", "content": NOT_AN_IMAGE}, "point_coords": "[[1, 2]"}
    # Keep each SDK object referenced: it closes its HTTP client when garbage-collected.
    wrong_sdk = Livepeer(http_bearer="wrong", server_url=secured.url)
    with pytest.raises(livepeer_errors.HTTPError) as wrong:
        wrong_sdk.generate.segment_anything2(request=request)
    assert "API key" in wrong.value.data.detail.msg
    sdk = Livepeer(http_bearer="key-one", server_url=secured.url)
    with pytest.raises(livepeer_errors.HTTPError) as accepted:
        sdk.generate.segment_anything2(request=request)
    assert "Error parsing JSON for point_coords" in accepted.value.data.detail.msg


def test_huggingface_client_token(secured):
    with pytest.raises(HfHubHTTPError) as wrong:
        InferenceClient(model=f"{secured.url}/models/sam2.1_hiera_tiny", token="wrong").image_segmentation(
            NOT_AN_IMAGE)
    assert wrong.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as accepted:
        InferenceClient(model=f"{secured.url}/models/sam2.1_hiera_tiny", token="key-two").image_segmentation(
            NOT_AN_IMAGE)
    assert accepted.value.response.status_code == 400


def test_roboflow_sdk_key_in_body(secured, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(NOT_AN_IMAGE)
    for key, status in (("wrong", 401), ("key-one", 400)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = InferenceHTTPClient(api_url=secured.url, api_key=key)
            with pytest.raises(HTTPCallErrorError) as caught:
                client.sam2_segment_image(str(broken))
        assert caught.value.status_code == status
    assert secured.loads == []
