"""A job past `job_timeout_s` fails with a message naming the limit, and a running job that is canceled ends
canceled; either way its computation stops at its next batch boundary (between encoder blocks or point
batches): the lane is free for the next request at once."""
from __future__ import annotations

import base64
import time

from segany.server.dialects.replicate_seed import MODEL_VERSION

# 16,384 grid points decoded one at a time: many minutes on the tiny model if nothing stopped it.
ENDLESS_INPUT = {"points_per_side": 128, "points_per_batch": 1, "pred_iou_thresh": 0.0,
                 "stability_score_thresh": 0.0, "crop_n_layers": 0}


def _wait_until_finished(client, url: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := client.get(url).json())["status"] not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def _assert_lane_is_free(client, image_bytes: bytes, why: str) -> None:
    """Another request needing the same lane (an automatic mask generation of 4 points) is served as soon
    as the job's work has stopped, not after the job's remaining grid."""
    started = time.perf_counter()
    cheap = client.post("/v1/auto", json={"image": base64.b64encode(image_bytes).decode(),
                                          "points_per_side": 2, "points_per_batch": 4})
    waited = time.perf_counter() - started
    assert cheap.status_code == 200, cheap.text[:200]
    assert waited < 30, f"the next request waited {waited:.0f} s behind the {why} job"


def test_a_job_past_its_time_limit_fails_and_stops_computing(start_server, image_bytes):
    image = "data:image/png;base64," + base64.b64encode(image_bytes).decode()
    with start_server(job_timeout_s=2.0, job_workers=1) as live, live.client() as client:
        created = client.post("/v1/predictions", json={"version": MODEL_VERSION,
                                                       "input": {"image": image, **ENDLESS_INPUT}})
        assert created.status_code == 201, created.text
        url = f"/v1/predictions/{created.json()['id']}"
        job = _wait_until_finished(client, url, 60)
        assert job["status"] == "failed" and "longer than 2 s" in job["error"], job
        _assert_lane_is_free(client, image_bytes, "stopped")
        deadline = time.monotonic() + 10
        while live.engine.active_requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live.engine.active_requests == 0 and live.metric("segany_queue_depth") == 0


def test_a_canceled_running_job_stops_computing(start_server, image_bytes):
    image = "data:image/png;base64," + base64.b64encode(image_bytes).decode()
    with start_server(job_workers=1) as live, live.client() as client:
        created = client.post("/v1/predictions", json={"version": MODEL_VERSION,
                                                       "input": {"image": image, **ENDLESS_INPUT}})
        url = f"/v1/predictions/{created.json()['id']}"
        deadline = time.monotonic() + 60
        while client.get(url).json()["status"] != "processing":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)  # computing now
        assert client.post(f"{url}/cancel").status_code == 200
        job = _wait_until_finished(client, url, 30)
        assert job["status"] == "canceled", job
        _assert_lane_is_free(client, image_bytes, "canceled")
