"""The native API over real HTTP: embed, segment (every format, JSON and multipart), auto, health, errors."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from segany.io.images import image_digest, load_image
from segany.io.masks import polygons_to_mask, Polygon
from segany.io.rle import coco_decode


def test_embed_returns_pixel_digest_and_size(embedded, image_bytes):
    rgb = load_image(image_bytes)
    assert embedded["image_id"] == image_digest(rgb)
    assert (embedded["height"], embedded["width"]) == rgb.shape[:2]
    assert embedded["model"] == "sam2.1_hiera_tiny"
    assert set(embedded["timing_ms"]) >= {"embed", "total"}


def test_second_embed_is_a_cache_hit(server, embedded, image_bytes):
    hits = server.metric("segany_embedding_cache_hits_total")
    with server.client() as client:
        # Multipart upload of the same pixels: same digest, no new embed.
        response = client.post("/v1/embed", files={"image": ("cat.png", image_bytes, "image/png")})
    assert response.status_code == 200
    assert response.json()["cached"] is True
    assert response.json()["image_id"] == embedded["image_id"]
    assert server.metric("segany_embedding_cache_hits_total") == hits + 1


def _segment(server, **body):
    with server.client() as client:
        return client.post("/v1/segment", json=body)


def test_segment_by_image_id_rle_sorted_with_box_and_area(server, embedded):
    response = _segment(server, image_id=embedded["image_id"],
                        prompts=[{"points": [[120, 90]], "labels": [1]}, {"box": [50, 40, 300, 250]}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_id"] == embedded["image_id"]
    assert "embed" not in body["timing_ms"]  # a click on an embedded image costs a decode only
    assert len(body["results"]) == 2
    for result in body["results"]:
        masks = result["masks"]
        assert len(masks) == 3
        scores = [m["score"] for m in masks]
        assert scores == sorted(scores, reverse=True)
        for entry in masks:
            mask = coco_decode(entry["rle"])
            assert mask.shape == (embedded["height"], embedded["width"])
            assert entry["area"] == int(mask.sum())
            if mask.any():
                rows, cols = np.nonzero(mask)
                assert entry["box_xyxy"] == [cols.min(), rows.min(), cols.max(), rows.max()]


def test_segment_matches_the_library(server, embedded, image_bytes, tiny_predictor):
    response = _segment(server, image_id=embedded["image_id"], prompts=[{"points": [[200, 150]]}], multimask=False)
    entry = response.json()["results"][0]["masks"][0]
    expected = tiny_predictor.predict(tiny_predictor.embed(image_bytes), point_coords=[[200, 150]],
                                      point_labels=[1], multimask_output=False)
    assert abs(entry["score"] - float(expected.scores[0])) < 1e-4
    agreement = (coco_decode(entry["rle"]) == expected.masks[0]).mean()
    assert agreement > 0.999


@pytest.mark.parametrize("fmt", ["png", "polygon", "logits"])
def test_segment_formats(server, embedded, fmt):
    response = _segment(server, image_id=embedded["image_id"], prompts=[{"points": [[120, 90]]}], format=fmt,
                        multimask=False)
    assert response.status_code == 200, response.text
    entry = response.json()["results"][0]["masks"][0]
    size_hw = (embedded["height"], embedded["width"])
    if fmt == "png":
        image = Image.open(io.BytesIO(base64.b64decode(entry["png"])))
        assert image.mode == "L" and image.size == (size_hw[1], size_hw[0])
        assert set(np.unique(np.array(image))) <= {0, 255}
        assert int((np.array(image) == 255).sum()) == entry["area"]
    elif fmt == "polygon":
        polygons = [Polygon.from_dict(p) for p in entry["polygons"]]
        redrawn = polygons_to_mask(polygons, size_hw)
        assert abs(int(redrawn.sum()) - entry["area"]) <= 0.1 * max(entry["area"], 100)
    else:
        logits = entry["logits"]
        assert logits["size"] == [256, 256] and logits["dtype"] == "float32"
        array = np.frombuffer(base64.b64decode(logits["data"]), dtype="<f4")
        assert array.shape == (256 * 256,) and np.abs(array).max() <= 32.0


def test_logits_round_trip_as_mask_input(server, embedded):
    first = _segment(server, image_id=embedded["image_id"], prompts=[{"points": [[120, 90]]}], format="logits",
                     multimask=False).json()
    logits = first["results"][0]["masks"][0]["logits"]
    refined = _segment(server, image_id=embedded["image_id"], multimask=False,
                       prompts=[{"points": [[120, 90], [300, 200]], "labels": [1, 0], "mask_input": logits}])
    assert refined.status_code == 200, refined.text
    nested = np.frombuffer(base64.b64decode(logits["data"]), dtype="<f4").reshape(256, 256).tolist()
    as_list = _segment(server, image_id=embedded["image_id"], multimask=False,
                       prompts=[{"points": [[120, 90], [300, 200]], "labels": [1, 0], "mask_input": nested}])
    assert as_list.json()["results"][0]["masks"][0]["score"] == pytest.approx(
        refined.json()["results"][0]["masks"][0]["score"], abs=1e-5)


def test_segment_multipart_with_image_file(server, embedded, image_bytes):
    with server.client() as client:
        response = client.post("/v1/segment", files={"image": ("cat.png", image_bytes, "image/png")},
                               data={"prompts": json.dumps([{"points": [[120, 90]]}]), "multimask": "false",
                                     "format": "rle"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_id"] == embedded["image_id"]
    assert len(body["results"][0]["masks"]) == 1


def test_auto_records_have_official_fields(server, embedded, image_b64):
    with server.client() as client:
        response = client.post("/v1/auto", json={"image": image_b64, "points_per_side": 2, "format": "rle",
                                                 "max_masks": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_id"] == embedded["image_id"]
    assert 0 < len(body["records"]) <= 3
    for record in body["records"]:
        assert {"area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box", "rle"} <= set(record)
        assert record["area"] == int(coco_decode(record["rle"]).sum())


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"image": "not base64!!", "prompts": [{"points": [[1, 1]]}]}, 400, "image"),
        ({"image_id": "0" * 64, "prompts": [{"points": [[1, 1]]}]}, 404, "image_id"),
        ({"prompts": [{"points": [[1, 1]]}]}, 400, "image"),
        ({"image_id": "x", "prompts": []}, 400, "prompts"),  # no prompts, text or detections
        ({"image_id": "x", "prompts": [{"points": [[1, 1]]}], "format": "gif"}, 422, "format"),
        ({"image_id": "x", "prompts": [{"lables": [1]}]}, 422, "prompts.0.lables"),
        ({"image_id": "x", "prompts": [{"points": [[1, 1]], "labels": [1, 0]}]}, 400, "prompts[0].labels"),
        ({"image_id": "x", "prompts": [{"points": [[1e300, 1]]}]}, 400, "prompts[0].points"),
        ({"image_id": "x", "prompts": [{"box": [10, 10, 5, 5]}]}, 400, "prompts[0].box"),
        ({"image_id": "x", "prompts": [{"points": [[1, 1]]}] * 65}, 400, "prompts"),
        ({"image_id": "x", "prompts": [{"points": [[1, 1]]}], "model": "sam3_huge"}, 404, None),
    ],
)
def test_segment_errors_name_the_field(server, body, status, field):
    response = _segment(server, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field


def test_malformed_bodies(server):
    with server.client() as client:
        assert client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"}
                           ).status_code == 400
        assert client.post("/v1/embed", json=[1, 2]).json()["error"]["field"] == "body"
        response = client.post("/v1/embed", json={"image": base64.b64encode(b"%PDF-1.4 hello").decode()})
        assert response.status_code == 400 and "PDF" in response.json()["error"]["message"]


def test_auto_rejects_oversized_grids(server, image_b64):
    with server.client() as client:
        response = client.post("/v1/auto", json={"image": image_b64, "points_per_side": 1000})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "points_per_side"


def test_health_ready_metrics_and_docs(server):
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz").json()
        assert ready["ready"] is True and "sam2.1_hiera_tiny" in ready["loaded_models"]
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        for name in ("segany_requests_total", "segany_request_duration_seconds_bucket", "segany_queue_depth",
                     "segany_embedding_cache_hits_total", "segany_embed_seconds_count", "segany_decode_seconds_count"):
            assert name in metrics.text
        spec = client.get("/openapi.json").json()
        for path in ("/v1/embed", "/v1/segment", "/v1/auto", "/segment-anything-2", "/models/{model_id}",
                     "/sam2/segment_image", "/sam2/embed_image"):
            assert path in spec["paths"]
        assert "SegmentIn" in spec["components"]["schemas"]
        assert client.get("/docs").status_code == 200


def test_image_and_body_limits(start_server, image_b64):
    with start_server(max_image_pixels=10_000, max_body_mb=1.0, preload=False) as small:
        with small.client() as client:
            too_many_pixels = client.post("/v1/embed", json={"image": image_b64})
            assert too_many_pixels.status_code == 413
            assert too_many_pixels.json()["error"]["code"] == "image_too_large"
            too_big = client.post("/v1/embed", json={"image": "A" * 1_100_000})
            assert too_big.status_code == 413
            assert too_big.json()["error"]["code"] == "payload_too_large"
        assert small.loads == []  # refused before any model was needed
