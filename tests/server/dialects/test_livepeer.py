"""Livepeer dialect: the official `livepeer-ai` SDK unchanged, plus plain HTTP for every error."""
from __future__ import annotations

import json

import numpy as np
import pytest
from livepeer_ai import Livepeer
from livepeer_ai.models import errors as livepeer_errors


def _call(url: str, image_bytes: bytes, token: str = "anything", **fields):
    sdk = Livepeer(http_bearer=token, server_url=url)
    request = {"image": {"file_name": "cat.png", "content": image_bytes}, **fields}
    return sdk.generate.segment_anything2(request=request)


def test_official_sdk_point_prompt(server, image_bytes, tiny_predictor):
    result = _call(server.url, image_bytes, point_coords="[[120, 90]]", point_labels="[1]", return_logits=False)
    masks = np.array(json.loads(result.masks_response.masks))
    scores = np.array(json.loads(result.masks_response.scores))
    logits = np.array(json.loads(result.masks_response.logits))
    assert masks.shape == (3, 300, 451) and set(np.unique(masks)) <= {0.0, 1.0}
    assert logits.shape == (3, 256, 256) and np.abs(logits).max() <= 32.0
    assert list(scores) == sorted(scores, reverse=True)
    expected = tiny_predictor.predict(tiny_predictor.embed(image_bytes), point_coords=[[120, 90]], point_labels=[1])
    order = np.argsort(-expected.scores)
    np.testing.assert_allclose(scores, expected.scores[order], atol=1e-4)
    assert (masks.astype(bool) == expected.masks[order]).mean() > 0.999


def test_official_sdk_defaults_return_logits_and_batched_boxes(server, image_bytes):
    result = _call(server.url, image_bytes, box="[[10, 10, 200, 150], [100, 50, 400, 280]]", multimask_output=True)
    masks = np.array(json.loads(result.masks_response.masks))
    scores = np.array(json.loads(result.masks_response.scores))
    assert masks.shape == (2, 3, 300, 451)
    assert not set(np.unique(masks)) <= {0.0, 1.0}  # return_logits defaults to true: raw logits
    for row in scores:  # sorted within each box, unlike the runner
        assert list(row) == sorted(row, reverse=True)


def test_official_sdk_model_id(server, image_bytes):
    result = _call(server.url, image_bytes, model_id="facebook/sam2.1-hiera-tiny", point_coords="[[5, 5]]",
                   point_labels="[1]", multimask_output=False)
    assert np.array(json.loads(result.masks_response.masks)).shape == (1, 300, 451)


def test_official_sdk_sees_400_with_message(server, image_bytes):
    with pytest.raises(livepeer_errors.HTTPError) as caught:
        _call(server.url, image_bytes, point_coords="[[1, 2]", point_labels="[1]")
    assert "point_coords" in caught.value.data.detail.msg


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"point_coords": "[[1, 2]]", "point_labels": "[1, 1]"}, "point_labels"),
        ({"point_coords": "[[1, 2]]"}, "point_labels"),
        ({"box": "[1, 2, 3]"}, "box"),
        ({"box": "[\"a\", 2, 3, 4]"}, "box"),
        ({"mask_input": "[[1, 2]]"}, "mask_input"),
        ({"point_labels": "{bad"}, "Error parsing JSON for point_labels"),
        ({"point_coords": "[[1e300, 2]]", "point_labels": "[1]"}, "point_coords"),
        ({"point_coords": "[[1, 2]]", "point_labels": "[7]"}, "point_labels"),
    ],
)
def test_bad_prompts_are_400_with_detail_msg(server, image_bytes, fields, needle):
    with server.client() as client:
        response = client.post("/segment-anything-2", files={"image": ("a.png", image_bytes, "image/png")},
                               data=fields)
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]["msg"]


def test_missing_image_is_fastapi_422(server):
    with server.client() as client:
        response = client.post("/segment-anything-2", data={"point_coords": "[[1, 2]]"})
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_unknown_model_is_404_not_500(server, image_bytes):
    with server.client() as client:
        response = client.post("/segment-anything-2", files={"image": ("a.png", image_bytes, "image/png")},
                               data={"model_id": "no/such-model", "point_coords": "[[1, 2]]", "point_labels": "[1]"})
    assert response.status_code == 404
    assert "no/such-model" in response.json()["detail"]["msg"]
