"""Abandoned work stops at its next batch boundary and frees its lane: after an automatic mask generation
or an embed times out, another client's request is answered promptly, and the queue depth counts the work
until it stops."""
from __future__ import annotations

import asyncio
import base64
import threading
import time

import httpx
import pytest

from segany.io.images import image_digest, load_image
from segany.predict.predictor import Predictor

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


def _wait_idle(live, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (live.engine.active_requests or live.metric("segany_queue_depth")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.engine.active_requests == 0 and live.metric("segany_queue_depth") == 0


def test_a_timed_out_embed_stops_between_encoder_blocks(start_server, base_settings, shared_loader, image_path):
    """One embed is one encoder pass (no batch boundary of its own): stopped between the encoder's blocks, a
    timed-out embed frees the lane long before it would have finished."""
    cheap_image, slow_image = (image_path.with_name(name).read_bytes() for name in ("coffee.png", "astronaut.png"))
    predictor = Predictor(shared_loader(base_settings.model, checkpoint=base_settings.checkpoint))
    rgb = load_image(cheap_image)
    started = time.perf_counter()
    embedding = predictor.embed(rgb)
    embed_s = time.perf_counter() - started  # one full encoder pass on this machine, now
    # Without the stop, the next request waits ~60% of an embed and times out itself; with it, one block.
    timeout_s = max(1.0, 0.4 * embed_s)
    with start_server(request_timeout_s=timeout_s, embed_batch_wait_ms=0.0) as live:
        # The other client's image is already embedded (as after an earlier request): its automatic mask
        # generation needs the embed lane for a few decodes only.
        live.engine.cache.put(embedding.variant, image_digest(rgb), embedding)
        with live.client() as first:
            timed_out = first.post("/v1/embed", json={"image": base64.b64encode(slow_image).decode()})
        assert timed_out.status_code == 504, timed_out.text[:200]
        with live.client() as second:
            started = time.perf_counter()
            cheap = second.post("/v1/auto", json={"image": base64.b64encode(cheap_image).decode(),
                                                   "points_per_side": 2, "points_per_batch": 4})
            waited = time.perf_counter() - started
        assert cheap.status_code == 200, (f"after {waited:.1f} s (one embed: {embed_s:.1f} s, "
                                          f"limit {timeout_s:.1f} s): {cheap.text[:200]}")
        assert live.metric("segany_embedding_cache_misses_total") == 1  # the generation used the cached embedding
        _wait_idle(live)


def test_an_embed_another_request_still_waits_for_runs_on(base_settings, shared_loader, image_path):
    """Requests share one embed of an image: one of them leaving does not stop it for the others."""
    from segany.server.engine.engine import Engine

    async def scenario() -> None:
        engine = Engine(base_settings.with_(embed_batch_wait_ms=0.0), loader=shared_loader)
        await engine.start()
        try:
            image = await engine.decode_image(image_path.with_name("astronaut.png").read_bytes())
            leaving, staying = asyncio.create_task(engine.embed(image)), asyncio.create_task(engine.embed(image))
            await asyncio.sleep(0.3)  # both now wait for the one embed (the model is loaded, the embed runs)
            leaving.cancel()
            result = await staying
            with pytest.raises(asyncio.CancelledError):
                await leaving
            assert engine.cache.get(result.variant, image.digest) is result.embedding
            assert engine.active_requests == 0
        finally:
            await engine.stop()

    asyncio.run(scenario())
