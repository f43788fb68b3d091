"""Abandoned work stops at its next batch boundary and frees its lane: after an automatic mask generation
times out, another client's embed is answered promptly, and the queue depth counts the work until it stops."""
from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest

# A grid far larger than the timeout allows on the tiny model: 4,096 points in batches of 4 (1,024 batches).
BIG_AUTO = {"points_per_side": 64, "points_per_batch": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="module")
def impatient(start_server):
    with start_server(request_timeout_s=8.0) as live:
        yield live


def test_a_timed_out_generation_stops_and_frees_the_lane(impatient, image_b64, image_path):
    other, baseline_image = (base64.b64encode(image_path.with_name(name).read_bytes()).decode()
                             for name in ("coffee.png", "astronaut.png"))
    with impatient.client() as client:
        started = time.perf_counter()
        assert client.post("/v1/embed", json={"image": baseline_image}).status_code == 200
        baseline = time.perf_counter() - started  # one embed on an idle server (this machine's speed)
        started = time.perf_counter()
        timed_out = client.post("/v1/auto", json={"image": image_b64, **BIG_AUTO})
        assert timed_out.status_code == 504, timed_out.text[:200]
        assert time.perf_counter() - started < 15
        # Another client, another image: served as soon as the generation reaches its next batch boundary.
        with impatient.client() as second:
            started = time.perf_counter()
            embedded = second.post("/v1/embed", json={"image": other})
            waited = time.perf_counter() - started
    assert embedded.status_code == 200, embedded.text[:200]
    assert waited < baseline + 1.5, f"the embed took {waited:.1f} s (idle: {baseline:.1f} s) behind abandoned work"
    deadline = time.monotonic() + 10
    while impatient.metric("segany_queue_depth") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert impatient.metric("segany_queue_depth") == 0 and impatient.engine.active_requests == 0


def test_queue_depth_counts_the_work_until_it_stops(impatient, image_b64):
    engine = impatient.engine
    seen: list[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(engine.active_requests)
            time.sleep(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        response = httpx.post(f"{impatient.url}/v1/auto", json={"image": image_b64, **BIG_AUTO}, timeout=60)
    finally:
        done.set()
        watcher.join()
    assert response.status_code == 504
    assert max(seen) >= 1
    deadline = time.monotonic() + 10  # the abandoned generation stops at its next batch: well within this
    while engine.active_requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active_requests == 0 and impatient.metric("segany_queue_depth") == 0
