"""Hugging Face dialect: `huggingface_hub.InferenceClient.image_segmentation` unchanged, plus plain HTTP."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image


def _masks(answer: list[dict]) -> list[np.ndarray]:
    return [np.array(Image.open(io.BytesIO(base64.b64decode(item["mask"])))) for item in answer]


def test_official_client_with_model_url(server, image_path):
    client = InferenceClient(model=f"{server.url}/models/facebook/sam2.1-hiera-tiny")
    result = client.image_segmentation(image_path)
    assert len(result) > 0
    scores = [item.score for item in result]
    assert scores == sorted(scores, reverse=True)
    for item in result:
        assert item.label.startswith("object_")
        assert item.mask.mode == "L" and item.mask.size == (451, 300)
        assert set(np.unique(np.array(item.mask))) <= {0, 255}


def test_official_client_parameters_go_through_json(server, image_path):
    client = InferenceClient(model=f"{server.url}/models/sam2.1_hiera_tiny")
    everything = client.image_segmentation(image_path, threshold=0.0)
    strict = client.image_segmentation(image_path, threshold=0.99)
    assert all(item.score >= 0.99 for item in strict)
    assert len(strict) <= len(everything)
    panoptic = client.image_segmentation(image_path, threshold=0.0, subtask="panoptic")
    owners = np.stack([np.array(item.mask) > 0 for item in panoptic])
    assert owners.sum(axis=0).max() <= 1  # disjoint


def test_endpoint_root_raw_bytes(server, image_bytes):
    with server.client() as client:
        response = client.post("/", content=image_bytes, headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {"label", "mask", "score"} <= set(answer[0])


def test_overlap_filter_and_mask_threshold(server, image_b64):
    def post(parameters):
        with server.client() as client:
            response = client.post("/models/sam2.1_hiera_tiny", json={"inputs": image_b64, "parameters": parameters})
        assert response.status_code == 200, response.text
        return response.json()

    base = post({"threshold": 0.0})
    filtered = post({"threshold": 0.0, "overlap_mask_area_threshold": 0.9})
    masks = _masks(filtered)
    for later in range(1, len(masks)):  # each kept mask is mostly new area relative to the better ones
        covered = np.any([m > 0 for m in masks[:later]], axis=0)
        area = (masks[later] > 0).sum()
        assert ((masks[later] > 0) & ~covered).sum() >= 0.9 * area
    assert len(filtered) <= len(base)
    # A high probability threshold (logit > 2.2) gives smaller masks than the default 0.5 (logit > 0).
    tight = post({"threshold": 0.0, "mask_threshold": 0.9})
    assert sum((m > 0).sum() for m in _masks(tight)) < sum((m > 0).sum() for m in _masks(base))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (json.dumps({"inputs": "###"}).encode(), 400),
        (json.dumps({"inputs": "aGVsbG8=", "parameters": {"subtask": "everything"}}).encode(), 400),
        (json.dumps({"inputs": "aGVsbG8=", "parameters": {"mask_threshold": 2}}).encode(), 422),
        (json.dumps({"image": "aGVsbG8="}).encode(), 422),
        (b"not an image", 400),
        (b"", 400),
    ],
)
def test_errors_are_error_objects(server, body, status):
    content_type = "application/json" if body.startswith(b"{") else "application/octet-stream"
    with server.client() as client:
        response = client.post("/models/facebook/sam2.1-hiera-tiny", content=body,
                               headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert isinstance(response.json()["error"], str) and response.json()["error"]


def test_unknown_model_is_404_for_the_client(server, image_path):
    client = InferenceClient(model=f"{server.url}/models/acme/not-a-sam")
    with pytest.raises(HfHubHTTPError) as caught:
        client.image_segmentation(image_path)
    assert caught.value.response.status_code == 404
