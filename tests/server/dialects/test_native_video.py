"""The native video-session API over real HTTP (uvicorn on 127.0.0.1): sessions, streaming, bounds, bad input.

Tracking a frame costs seconds on the tiny model on a shared CPU, so every test tracks at most one frame
beyond a prompted one; the rest exercise what needs no tracking.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segany.io.rle import coco_decode, coco_encode
from video_clips import corrupt_frame, write_clip

SESSIONS = "/v1/video/sessions"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    ok = write_clip(folder / "ok.mp4", 8)
    return {"ok": ok, "long": write_clip(folder / "long.mp4", 12), "big": write_clip(folder / "big.mp4", 6, (150, 200)),
            "corrupt": corrupt_frame(ok, folder / "corrupt.mp4", 3)}


@pytest.fixture(scope="module")
def live(start_server):
    # 8 frames of 160x120 fit; 12 frames, or 200x150 pixels, or 64 KiB do not.
    with start_server(max_video_sessions=2, video_session_idle_s=120.0, max_video_frames=10,
                      max_video_pixels=160 * 120, max_video_mb=0.0625) as server:
        yield server


def _create(client, path: Path):
    return client.post(SESSIONS, files={"video": (path.name, path.read_bytes(), "video/mp4")})


def _error(response, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["field"] == field, error
    return error


def _stream(client, session_id: str, on_first=None, **body) -> list[tuple[float, dict]]:
    """Lines of a propagation with the time each arrived; `on_first()` runs once the first line is in."""
    lines = []
    with client.stream("POST", f"{SESSIONS}/{session_id}/propagate", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if line:
                lines.append((time.monotonic(), json.loads(line)))
                if len(lines) == 1 and on_first is not None:
                    on_first()
    return lines


def test_create_prompt_stream_results_remove_delete(live, clips):
    with live.client() as client:
        created = _create(client, clips["ok"])
        assert created.status_code == 201, created.text
        session = created.json()
        assert (session["num_frames"], session["width"], session["height"]) == (8, 160, 120)
        assert session["model"] == "sam2.1_hiera_tiny" and session["obj_ids"] == []
        sid = session["session_id"]
        try:
            first = client.post(f"{SESSIONS}/{sid}/prompts", json={"frame": 0, "obj_id": 1, "points": [[40, 50]],
                                                                   "labels": [1]})
            assert first.status_code == 200, first.text
            assert first.json()["frame"] == 0 and first.json()["obj_ids"] == [1]
            boxed = client.post(f"{SESSIONS}/{sid}/prompts", json={"frame": 0, "obj_id": 2, "box": [10, 10, 60, 40]})
            assert boxed.json()["obj_ids"] == [1, 2]
            assert coco_decode(boxed.json()["masks"][1]).shape == (120, 160)

            def while_propagating() -> None:  # the next frame is being tracked now
                with live.client() as other:
                    for response in (other.post(f"{SESSIONS}/{sid}/prompts", json={"frame": 3, "obj_id": 1,
                                                                                  "points": [[5, 5]], "labels": [1]}),
                                     other.post(f"{SESSIONS}/{sid}/propagate", json={}),
                                     other.delete(f"{SESSIONS}/{sid}")):
                        assert response.status_code == 409 and response.json()["error"]["code"] == "session_busy"

            lines = _stream(client, sid, on_first=while_propagating, max_frames=2)
            frames = [body for _, body in lines if "frame" in body]
            assert [f["frame"] for f in frames] == [0, 1]
            assert lines[-1][1] == {"done": True, "frames": 2}
            # Streamed as computed: the prompted frame arrives well before the tracked one is done.
            assert lines[-1][0] - lines[0][0] > 0.2
            for frame in frames:
                assert frame["obj_ids"] == [1, 2] and len(frame["object_scores"]) == 2
                assert all(coco_decode(rle).shape == (120, 160) for rle in frame["masks"])

            stored = client.get(f"{SESSIONS}/{sid}/results").json()["frames"]
            assert stored == frames
            assert client.get(f"{SESSIONS}/{sid}/results", params={"start": 1}).json()["frames"] == frames[1:]
            assert client.get(f"{SESSIONS}/{sid}").json()["computed_frames"] == 2

            assert client.delete(f"{SESSIONS}/{sid}/objects/2").json() == {"obj_ids": [1]}
            assert all(f["obj_ids"] == [1] and len(f["masks"]) == 1
                       for f in client.get(f"{SESSIONS}/{sid}/results").json()["frames"])
            assert client.post(f"{SESSIONS}/{sid}/reset").json() == {"obj_ids": []}
            assert client.get(f"{SESSIONS}/{sid}/results").json()["frames"] == []
        finally:
            assert client.delete(f"{SESSIONS}/{sid}").status_code == 204
        _error(client.get(f"{SESSIONS}/{sid}"), 404, "session_id")


def test_bad_input_names_the_field_and_everything_keeps_working(live, clips, image_b64):
    with live.client() as client:
        _error(client.post(SESSIONS, content=b"this is not a video" * 20, headers={"content-type": "video/mp4"}),
               400, "video")
        assert "the video" in _error(_create(client, clips["long"]), 400, "video")["message"]  # 12 > 10 frames
        assert "limit" in _error(_create(client, clips["big"]), 400, "video")["message"]  # 200x150 > 160x120
        _error(client.post(SESSIONS, content=bytes(70_000), headers={"content-type": "application/octet-stream"}),
               413, "video")
        _error(client.post(SESSIONS, json={"url": "http://127.0.0.1/clip.mp4"}), 403, "url")  # fetching is off
        _error(client.post(SESSIONS, files={"other": ("x", b"x")}), 400, "video")

        raw = client.post(SESSIONS, content=clips["ok"].read_bytes(), headers={"content-type": "video/mp4"})
        assert raw.status_code == 201, raw.text
        sid = raw.json()["session_id"]
        try:
            prompts = f"{SESSIONS}/{sid}/prompts"
            _error(client.post(prompts, json={"frame": 8, "obj_id": 1, "points": [[5, 5]], "labels": [1]}), 400,
                   "frame")
            _error(client.post(prompts, json={"frame": -1, "obj_id": 1, "points": [[5, 5]], "labels": [1]}), 422,
                   "frame")
            _error(client.post(prompts, json={"frame": 0, "obj_id": 1, "points": [[5, 5]], "labels": [3]}), 400,
                   "labels")
            _error(client.post(prompts, json={"frame": 0, "obj_id": 1, "mask": coco_encode(np.ones((10, 10), bool))}),
                   400, "mask")
            _error(client.delete(f"{SESSIONS}/{sid}/objects/7"), 400, "obj_id")
            _error(client.post(f"{SESSIONS}/{sid}/propagate", json={}), 400, "obj_id")  # nothing prompted yet
            _error(client.post(f"{SESSIONS}/nope/prompts", json={"frame": 0, "obj_id": 1}), 404, "session_id")

            mask = np.zeros((120, 160), bool)
            mask[30:70, 20:60] = True
            added = client.post(prompts, json={"frame": 5, "obj_id": 3, "mask": coco_encode(mask)})
            assert added.status_code == 200, added.text
            assert (coco_decode(added.json()["masks"][0]) == mask).mean() > 0.98  # a mask prompt is the output
            _error(client.post(f"{SESSIONS}/{sid}/propagate", json={"start": 99}), 400, "start")
            # Image requests are served alongside.
            assert client.post("/v1/segment", json={"image": image_b64, "prompts": [{"box": [50, 40, 300, 250]}]}
                               ).status_code == 200
        finally:
            client.delete(f"{SESSIONS}/{sid}")


def test_a_corrupt_frame_ends_the_stream_with_an_error_line_and_the_session_lives_on(live, clips):
    with live.client() as client:
        created = _create(client, clips["corrupt"])  # frame 3 of 8 is junk; the container is fine
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        try:
            assert client.post(f"{SESSIONS}/{sid}/prompts", json={"frame": 2, "obj_id": 1, "points": [[60, 50]],
                                                                  "labels": [1]}).status_code == 200
            lines = [body for _, body in _stream(client, sid, start=2)]
            assert lines[0]["frame"] == 2
            error = lines[-1]["error"]
            assert error["field"] == "video" and "frame 3" in error["message"] and error["status"] == 400
            assert "frame 3 of the video is corrupt" in error["message"]  # no server path shown
            # The session keeps its results and takes prompts on readable frames.
            assert [f["frame"] for f in client.get(f"{SESSIONS}/{sid}/results").json()["frames"]] == [2]
            again = client.post(f"{SESSIONS}/{sid}/prompts", json={"frame": 0, "obj_id": 2, "box": [10, 10, 60, 50]})
            assert again.status_code == 200 and again.json()["obj_ids"] == [1, 2]
        finally:
            client.delete(f"{SESSIONS}/{sid}")
        assert client.get("/healthz").status_code == 200


def test_the_session_limit_answers_503_with_retry_after(live, clips):
    with live.client() as client:
        opened = [_create(client, clips["ok"]).json()["session_id"] for _ in range(2)]
        try:
            refused = client.post(SESSIONS, content=clips["ok"].read_bytes(), headers={"content-type": "video/mp4"})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_busy"
            assert 1 <= int(refused.headers["retry-after"]) <= 120
            client.delete(f"{SESSIONS}/{opened.pop()}")
            reopened = _create(client, clips["ok"])
            assert reopened.status_code == 201
            opened.append(reopened.json()["session_id"])
        finally:
            for sid in opened:
                client.delete(f"{SESSIONS}/{sid}")
        assert live.engine.video.count == 0


def test_idle_sessions_expire_and_free_their_slot(start_server, clips):
    with start_server(max_video_sessions=1, video_session_idle_s=0.5) as live, live.client() as client:
        sid = _create(client, clips["ok"]).json()["session_id"]
        folder = live.engine.video.get(sid).folder
        assert folder.is_dir()
        deadline = time.monotonic() + 10
        while live.engine.video.count and time.monotonic() < deadline:
            time.sleep(0.1)
        _error(client.get(f"{SESSIONS}/{sid}"), 404, "session_id")
        assert not folder.exists()  # the uploaded video is deleted with the session
        assert _create(client, clips["ok"]).status_code == 201  # the slot is free again


def test_sessions_share_the_image_model_weights(live, clips, image_b64):
    with live.client() as client:
        sid = _create(client, clips["ok"]).json()["session_id"]
        try:
            assert client.post("/v1/segment", json={"image": image_b64, "prompts": [{"points": [[100, 100]],
                                                                                      "labels": [1]}]}
                               ).status_code == 200
            variant = live.engine.pool.default_variant
            assert live.engine.pool.loaded_variants == [variant] and live.loads == [variant]  # one model load
            predictor = asyncio.run(live.engine.pool.get(variant))  # loaded: returns at once
            video_model = live.engine.video.get(sid).session.model
            assert video_model.image.dtype == torch.float32  # tracking is float32 (bf16 misses the accuracy bar)
            if predictor.model.dtype == torch.float32:  # then the weights are shared, not copied
                assert video_model.image is predictor.model
                image_params = {id(p) for p in predictor.model.parameters()}
                assert {id(p) for p in video_model.image.parameters()} == image_params
            else:  # a bfloat16 image model (CPUs with AMX / AVX512-BF16): a float32 build of the same checkpoint
                assert video_model.image is not predictor.model and video_model.variant == predictor.model.variant
            assert asyncio.run(live.engine.pool.get_video(variant)) is video_model  # built once per image model
        finally:
            client.delete(f"{SESSIONS}/{sid}")


def test_prompt_mask_as_base64_png(live, clips):
    from segany.io.masks import mask_to_png

    mask = np.zeros((120, 160), bool)
    mask[40:80, 60:100] = True
    with live.client() as client:
        sid = _create(client, clips["ok"]).json()["session_id"]
        try:
            png = base64.b64encode(mask_to_png(mask)).decode()
            added = client.post(f"{SESSIONS}/{sid}/prompts", json={"frame": 1, "obj_id": 4, "mask": png})
            assert added.status_code == 200, added.text
            assert (coco_decode(added.json()["masks"][0]) == mask).mean() > 0.98
        finally:
            client.delete(f"{SESSIONS}/{sid}")


def test_video_urls_go_through_the_fetch_rules(start_server):
    with start_server(allow_url_fetch=True, preload=False) as live, live.client() as client:
        for response in (client.post(SESSIONS, json={"url": "http://127.0.0.1:9/clip.mp4"}),
                         client.post(SESSIONS, files={"url": (None, "http://10.0.0.1/clip.mp4")})):
            assert "non-public" in _error(response, 403, "url")["message"]
        _error(client.post(SESSIONS, json={"url": "file:///etc/passwd"}), 400, "url")
        assert live.engine.video.count == 0


def test_a_session_is_visible_only_to_the_key_that_made_it(start_server, clips):
    with start_server(api_keys=("key-a", "key-b")) as live:
        with live.client(headers={"Authorization": "Bearer key-a"}) as alice, \
                live.client(headers={"Authorization": "Bearer key-b"}) as bob:
            sid = _create(alice, clips["ok"]).json()["session_id"]
            _error(bob.get(f"{SESSIONS}/{sid}"), 404, "session_id")
            _error(bob.delete(f"{SESSIONS}/{sid}"), 404, "session_id")
            assert alice.get(f"{SESSIONS}/{sid}").status_code == 200
            assert alice.delete(f"{SESSIONS}/{sid}").status_code == 204
        with live.client() as anonymous:
            assert anonymous.post(SESSIONS, content=b"x").status_code == 401
