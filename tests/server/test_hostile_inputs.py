"""One table of hostile inputs sent through every dialect of one live server: each answers a 4xx naming
what was wrong (never a 5xx, never an out-of-memory), and the server keeps serving afterwards.

Rows: too many boxes (Livepeer's OOM was 2,000 boxes in a 36 KB form), too many points (12,000), an
automatic-mask-generation grid far over the limit, an 8000x8000 PNG of a few hundred KB (a decompression
bomb: refused from its header), a `.npy` whose header declares a 28 GiB array, JSON nested 100,000 deep,
and a header value that is not latin-1 text.
"""
from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from segany.server.dialects import DIALECTS
from segany.server.dialects.replicate_seed import MODEL_VERSION

BOXES = [[10.0, 10.0, 60.0, 60.0]] * 2000
POINTS = [[20.0, 20.0]] * 12000
NESTED = b"[" * 100_000 + b"]" * 100_000
Request = tuple[str, str, dict[str, Any]]  # (method, path, httpx keyword arguments)


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """8000 x 8000 black pixels: 64 M pixels in well under a megabyte."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG", optimize=False)
    data = buffer.getvalue()
    assert len(data) < 1_000_000
    return data


def huge_npy() -> str:
    """Base64 of an `.npy` whose header declares (100000, 100000, 3) uint8 and holds no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (100_000, 100_000, 3)})
    return base64.b64encode(np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue()[8:]).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _uri(data: bytes) -> str:
    return "data:image/png;base64," + _b64(data)


def _json(method: str, path: str, body: Any) -> Request:
    return method, path, {"json": body}


# For each dialect: kind -> the request carrying that hostile input (kinds a dialect has no field for are absent).
# `image` is a good PNG, `bomb` the decompression bomb; both bytes.
Builder = Callable[[bytes, bytes], dict[str, Request]]


def _native(image: bytes, bomb: bytes) -> dict[str, Request]:
    return {
        "boxes": _json("POST", "/v1/segment", {"image": _b64(image), "prompts": [{"box": b} for b in BOXES]}),
        "points": _json("POST", "/v1/segment", {"image": _b64(image), "prompts": [{"points": POINTS}]}),
        "grid": _json("POST", "/v1/auto", {"image": _b64(image), "points_per_side": 100_000}),
        "bomb": _json("POST", "/v1/segment", {"image": _b64(bomb), "prompts": [{"points": [[1, 1]]}]}),
        "nested": ("POST", "/v1/segment", {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _native_video(image: bytes, bomb: bytes) -> dict[str, Request]:
    path = "/v1/video/sessions/no-such-session/prompts"
    return {
        "points": _json("POST", path, {"frame": 0, "obj_id": 1, "points": POINTS}),
        "nested": ("POST", path, {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _livepeer(image: bytes, bomb: bytes) -> dict[str, Request]:
    def form(data: dict[str, str], picture: bytes = image) -> Request:
        return "POST", "/segment-anything-2", {"files": {"image": ("a.png", picture, "image/png")}, "data": data}

    return {
        "boxes": form({"box": json.dumps(BOXES)}),
        "points": form({"point_coords": json.dumps(POINTS), "point_labels": json.dumps([1] * len(POINTS))}),
        "bomb": form({"point_coords": "[[1, 1]]", "point_labels": "[1]"}, bomb),
        "nested": form({"box": "[" * 100_000 + "]" * 100_000}),
    }


def _huggingface(image: bytes, bomb: bytes) -> dict[str, Request]:
    path = "/models/sam2.1_hiera_tiny"
    return {
        "grid": _json("POST", path, {"inputs": _b64(image), "parameters": {"points_per_side": 100_000}}),
        "bomb": ("POST", "/", {"content": bomb, "headers": {"content-type": "image/png"}}),
        "nested": ("POST", path, {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _roboflow(image: bytes, bomb: bytes) -> dict[str, Request]:
    def segment(prompts: list[dict[str, Any]], picture: dict[str, str] | None = None) -> Request:
        return _json("POST", "/sam2/segment_image", {"image": picture or {"type": "base64", "value": _b64(image)},
                                                     "prompts": {"prompts": prompts}})

    box = {"box": {"x": 30, "y": 30, "width": 20, "height": 20}}
    return {
        "boxes": segment([box] * 2000),
        "points": segment([{"points": [{"x": 20, "y": 20, "positive": True}] * 12000}]),
        "bomb": segment([box], {"type": "base64", "value": _b64(bomb)}),
        "npy": segment([box], {"type": "numpy", "value": huge_npy()}),
        "nested": ("POST", "/sam2/segment_image", {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _replicate(image: bytes, bomb: bytes) -> dict[str, Request]:
    def predict(**fields: Any) -> Request:
        return _json("POST", "/v1/predictions", {"version": MODEL_VERSION, "input": {"image": _uri(image), **fields}})

    return {
        "grid": predict(points_per_side=100_000),
        "bomb": _json("POST", "/v1/predictions", {"version": MODEL_VERSION, "input": {"image": _uri(bomb)}}),
        "nested": ("POST", "/v1/predictions", {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _cog(image: bytes, bomb: bytes) -> dict[str, Request]:
    return {
        "grid": _json("POST", "/predictions", {"input": {"image": _uri(image), "points_per_side": 100_000}}),
        "bomb": _json("POST", "/predictions", {"input": {"image": _uri(bomb)}}),
        "nested": ("PUT", "/predictions/p1", {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _segmind(image: bytes, bomb: bytes) -> dict[str, Request]:
    return {
        "points": _json("POST", "/v1/sam-v2-image", {"image": _b64(image), "coordinates": json.dumps(POINTS)}),
        "bomb": _json("POST", "/v1/sam-v2-image", {"image": _b64(bomb), "coordinates": "[1, 1]"}),
        "nested": ("POST", "/v1/sam-v2-image", {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _cvat(image: bytes, bomb: bytes) -> dict[str, Request]:
    path = "/cvat/functions/segany-sam2"
    return {
        "points": _json("POST", path, {"image": _b64(image), "pos_points": POINTS, "neg_points": []}),
        "bomb": _json("POST", path, {"image": _b64(bomb), "pos_points": [[1, 1]], "neg_points": []}),
        "nested": ("POST", path, {"content": NESTED, "headers": {"content-type": "application/json"}}),
    }


def _xanylabeling(image: bytes, bomb: bytes) -> dict[str, Request]:
    def predict(picture: bytes, marks: list[dict[str, Any]]) -> Request:
        return _json("POST", "/xanylabeling/v1/predict", {"model": "sam2.1_hiera_tiny", "image": _uri(picture),
                                                          "params": {"marks": marks}})

    return {
        "boxes": predict(image, [{"type": "rectangle", "data": b, "label": 1} for b in BOXES]),
        "points": predict(image, [{"type": "point", "data": p, "label": 1} for p in POINTS]),
        "bomb": predict(bomb, [{"type": "point", "data": [1, 1], "label": 1}]),
        "nested": ("POST", "/xanylabeling/v1/predict", {"content": NESTED,
                                                       "headers": {"content-type": "application/json"}}),
    }


def _label_studio(image: bytes, bomb: bytes) -> dict[str, Request]:
    return {"nested": ("POST", "/label-studio/predict", {"content": NESTED,
                                                        "headers": {"content-type": "application/json"}})}


BUILDERS: dict[str, Builder] = {
    "native": _native, "native_video": _native_video, "livepeer": _livepeer, "huggingface": _huggingface,
    "roboflow": _roboflow, "replicate": _replicate, "cog": _cog, "segmind": _segmind, "cvat": _cvat,
    "xanylabeling": _xanylabeling, "label_studio": _label_studio,
}
# What the answer must name, by kind (the field, or the limit that was hit).
NAMES = {"boxes": ("prompt", "box", "rectangle", "marks"), "points": ("point", "coordinates", "marks"),
         "grid": ("points_per_side",), "bomb": ("pixel", "image", "large"), "npy": ("shape", "pixel"),
         "nested": ("nested", "deep", "recursion")}
CASES = [(name, kind) for name, build in BUILDERS.items() for kind in build(b"", b"")]


def test_every_dialect_is_in_the_table():
    assert {dialect.name for dialect in DIALECTS} == set(BUILDERS)
    assert {kind for _, kind in CASES} == set(NAMES)


@pytest.mark.parametrize(("dialect", "kind"), CASES, ids=[f"{d}-{k}" for d, k in CASES])
def test_hostile_input_gets_a_4xx_naming_it(server, image_bytes, bomb_png, dialect, kind):
    method, path, kwargs = BUILDERS[dialect](image_bytes, bomb_png)[kind]
    started = time.perf_counter()
    with server.client() as client:
        response = client.request(method, path, **kwargs)
    elapsed = time.perf_counter() - started
    if dialect == "xanylabeling" and response.status_code == 200:  # its protocol: errors are 200 + success false
        assert response.json()["success"] is False, response.text[:300]
    else:
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    text = response.text.lower()
    assert any(name in text for name in NAMES[kind]), response.text[:300]
    assert elapsed < 20, f"refused only after {elapsed:.1f} s: the work ran first"


def test_header_values_that_are_not_latin1_or_break_lines(server, image_bytes):
    with server.client() as client:
        odd = client.post("/v1/embed", files={"image": ("a.png", image_bytes, "image/png")},
                          headers={"x-api-key": "ключ".encode("utf-8"), "x-request-id": "é\u00ff".encode("latin-1")})
        assert odd.status_code == 200, odd.text  # a header the server does not use must not matter
    with pytest.raises((httpx.LocalProtocolError, ValueError)):  # the client itself refuses CRLF in a header
        httpx.post(f"{server.url}/v1/embed", headers={"x-evil": "a\r\nb"}, content=b"")


def test_the_server_still_serves_after_the_table(server, image_b64):
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        answer = client.post("/v1/segment", json={"image": image_b64, "prompts": [{"points": [[120, 90]]}]})
    assert answer.status_code == 200, answer.text
    errors = [line for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines()
              if line.startswith("segany_requests_total") and 'status="5' in line and "/readyz" not in line]
    assert errors == []
