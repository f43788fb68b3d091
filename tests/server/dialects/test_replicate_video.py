"""Replicate's `meta/sam-2-video` with the official `replicate` client against a real server (HTTPS on 127.0.0.1).

Clicks sit on late frames so that little is tracked (each tracked frame costs seconds on a shared CPU):
the job still runs the whole path: upload, session, prompts, propagation, rendering, files.
"""
from __future__ import annotations

import base64
import io

import av
import httpx
import numpy as np
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError
from replicate.helpers import FileOutput

from live_jobs import KEYS, JobServer, shared_server
from segany.server.dialects.replicate_video_schema import MODEL_VERSION, Input, parse_clicks
from video_clips import clip_frames, write_clip

MODEL = "meta/sam-2-video"


@pytest.fixture(scope="module")
def live(request, base_settings, shared_loader) -> JobServer:
    return shared_server(request, base_settings, shared_loader)


@pytest.fixture(scope="module")
def client(live: JobServer) -> replicate.Client:
    return replicate.Client(api_token=KEYS[0], base_url=live.url, transport=httpx.HTTPTransport(verify=live.tls))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 6)


def _image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_run_uploads_the_video_and_returns_one_binary_png_per_frame(client, live, clip):
    with clip.open("rb") as handle:
        output = client.run(MODEL, input={"input_video": handle, "click_coordinates": "[60,50],[70,55]",
                                          "click_frames": "5", "click_object_ids": "square", "output_format": "png"})
    assert len(output) == 6 and all(isinstance(item, FileOutput) and item.url.startswith(live.url + "/files/")
                                    for item in output)
    frames = [_image(item.read()) for item in output]
    assert all(frame.shape == (120, 160) and set(np.unique(frame)) <= {0, 255} for frame in frames)
    assert not any(frame.any() for frame in frames[:5])  # before the clicked frame: no object
    # The clicked frame's mask is the one the native API gives for the same clicks.
    with live.client() as native:
        sid = native.post("/v1/video/sessions", files={"video": ("c.mp4", clip.read_bytes(), "video/mp4")}
                          ).json()["session_id"]
        try:
            same = native.post(f"/v1/video/sessions/{sid}/prompts", json={"frame": 5, "obj_id": 1,
                                                                          "points": [[60, 50], [70, 55]],
                                                                          "labels": [1, 1]}).json()
        finally:
            native.delete(f"/v1/video/sessions/{sid}")
    from segany.io.rle import coco_decode

    assert np.array_equal(frames[5] == 255, coco_decode(same["masks"][0]))


def test_create_wait_highlighted_video_output_with_a_version(client, live, clip):
    data_uri = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    prediction = client.predictions.create(version=MODEL_VERSION, input={
        "input_video": data_uri, "click_coordinates": "[40,50]", "click_frames": "4", "mask_type": "highlighted",
        "annotation_type": "both", "output_video": True, "video_fps": 5, "output_frame_interval": 2})
    assert prediction.status in ("starting", "processing") and prediction.model == MODEL
    prediction.wait()
    assert prediction.status == "succeeded", prediction.error
    assert prediction.version == MODEL_VERSION and "tracking 1 objects" in prediction.logs
    (url,) = prediction.output
    assert url.endswith(".mp4")
    with httpx.Client(verify=live.tls) as http:
        movie = http.get(url).content
    with av.open(io.BytesIO(movie)) as container:
        stream = container.streams.video[0]
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(pictures) == 3 and pictures[0].shape == (120, 160, 3)  # frames 0, 2, 4
    original = clip_frames(6)[0].astype(int)
    assert np.abs(pictures[0].astype(int) - original).mean() < 12  # untracked frame: the plain frame (lossy codec)


def test_the_version_schema_lists_the_model_inputs(client):
    version = client.models.get(MODEL).latest_version
    assert version.id == MODEL_VERSION
    schema = version.openapi_schema["components"]["schemas"]
    assert list(schema["Input"]["properties"]) == list(Input.model_fields)
    assert schema["Input"]["required"] == ["input_video", "click_coordinates"]
    assert schema["Output"]["x-cog-array-type"] == "iterator"


@pytest.mark.parametrize(("change", "field"), [
    ({"click_coordinates": "[1,2],[3"}, "input.click_coordinates"),
    ({"click_labels": "1,2"}, "input.click_labels"),
    ({"click_frames": "99"}, "input.click_frames"),  # past the end of the 6-frame video
    ({"click_object_ids": "a,b,c"}, "input.click_object_ids"),  # more ids than clicks
    ({"mask_type": "rainbow"}, "input.mask_type"),
    ({"input_video": "data:video/mp4;base64,aGVsbG8gd29ybGQ="}, "input.input_video"),  # not a video
    ({"input_video": "https://127.0.0.1/x.mp4"}, "input.input_video"),  # fetching is off (and not public)
])
def test_bad_input_is_refused_at_submission_naming_the_field(live, clip, change, field):
    data_uri = "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()
    body = {"input": {"input_video": data_uri, "click_coordinates": "[40,50]", **change}}
    with live.client() as http:
        response = http.post(f"/v1/models/{MODEL}/predictions", json=body)
    assert 400 <= response.status_code < 500, response.text
    problem = response.json()
    assert problem["invalid_fields"][0]["field"] == field, problem


def test_click_fields_extend_and_group_objects():
    clicks = parse_clicks(Input(input_video="x", click_coordinates="[1,2],[3,4],[5,6]", click_labels="1,0",
                                click_frames="2", click_object_ids="dog,,dog"), 64)
    assert [(c.obj_id, c.name, c.frame, c.points_xy, c.labels) for c in clicks] == [
        (1, "dog", 2, [[1.0, 2.0], [5.0, 6.0]], [1, 0]), (2, "object_2", 2, [[3.0, 4.0]], [0])]


def test_a_job_failing_inside_leaves_a_clear_error(client, live, tmp_path):
    from video_clips import corrupt_frame

    broken = corrupt_frame(write_clip(tmp_path / "c.mp4", 6), tmp_path / "broken.mp4", 5)
    with broken.open("rb") as handle, pytest.raises(ModelError) as failed:
        client.run(MODEL, input={"input_video": handle, "click_coordinates": "[40,50]", "click_frames": "4"})
    assert "frame 5 of the video could not be decoded" in str(failed.value)  # no server path shown
    with pytest.raises(ReplicateError):
        client.models.get("meta/sam-3-video")
