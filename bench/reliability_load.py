"""The `--reliability` mode of bench/load_test.py: careless and hostile clients, bounded in time.

Clients (key A) mix cheap requests (an embed, then clicks by image_id, Roboflow clicks by alias) with
expensive ones (automatic mask generation with a short client timeout, so the client gives up and
disconnects) and requests abandoned right after they are sent. Meanwhile a prober with key B asks for
every image id and alias key A was given; any answer other than "not found" is a cross-key answer
(must be 0). Reports requests, failures by status, p50/p99, the server's peak and final RSS.
"""
from __future__ import annotations

import asyncio
import base64
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

EXPENSIVE_AUTO = {"points_per_side": 16, "points_per_batch": 16, "pred_iou_thresh": 0.0,
                  "stability_score_thresh": 0.0}
EXPENSIVE_CLIENT_TIMEOUT_S = 2.0  # the client gives up (and disconnects) long before the generation ends
ABANDON_AFTER_S = 0.05


@dataclass
class Reliability:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    client_gave_up: int = 0
    abandoned: int = 0
    ids: list[str] = field(default_factory=list)  # key A's image ids
    aliases: list[str] = field(default_factory=list)  # key A's Roboflow aliases
    probes: int = 0
    cross_key: int = 0


def rss_mib(pid: int, field_name: str = "VmRSS:") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _timed(tally: Reliability, request) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = await request
    except httpx.TimeoutException:
        tally.client_gave_up += 1
        return None
    tally.statuses[response.status_code] += 1
    if response.status_code == 200:
        tally.latencies_s.append(time.monotonic() - started)
    return response


async def _client(client: httpx.AsyncClient, index: int, image: bytes, deadline: float, tally: Reliability) -> None:
    rng = random.Random(index)
    b64 = base64.b64encode(image).decode()
    embedded = await _timed(tally, client.post("/v1/embed", json={"image": b64}))
    image_id = embedded.json()["image_id"] if embedded is not None and embedded.status_code == 200 else None
    if image_id:
        tally.ids.append(image_id)
    alias = f"client-{index}"
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.15:  # expensive, and the client stops waiting
            await _timed(tally, client.post("/v1/auto", json={"image": b64, **EXPENSIVE_AUTO},
                                            timeout=EXPENSIVE_CLIENT_TIMEOUT_S))
        elif roll < 0.25:  # sent, then abandoned (the connection closes)
            task = asyncio.ensure_future(client.post("/v1/segment", json={
                "image": b64, "prompts": [{"points": [[rng.uniform(0, 100), rng.uniform(0, 100)]]}]}))
            await asyncio.sleep(ABANDON_AFTER_S)
            task.cancel()
            tally.abandoned += 1
        elif roll < 0.4:  # Roboflow by alias (embedding under the alias first)
            response = await _timed(tally, client.post("/sam2/embed_image", json={
                "image": {"type": "base64", "value": b64}, "image_id": alias}))
            if response is not None and response.status_code == 200 and alias not in tally.aliases:
                tally.aliases.append(alias)
        elif image_id:  # cheap: a click by image id
            await _timed(tally, client.post("/v1/segment", json={
                "image_id": image_id, "prompts": [{"points": [[rng.uniform(0, 100), rng.uniform(0, 100)]]}]}))


async def _prober(client: httpx.AsyncClient, deadline: float, tally: Reliability) -> None:
    """Key B asks for key A's ids and aliases; only 404 is a right answer. One last pass after the load."""
    while True:
        last = time.monotonic() >= deadline
        for image_id in list(tally.ids):
            response = await client.post("/v1/segment", json={"image_id": image_id, "prompts": [{"points": [[1, 1]]}]})
            tally.probes += 1
            tally.cross_key += response.status_code != 404
        for alias in list(tally.aliases):
            response = await client.post("/sam2/segment_image", json={
                "image_id": alias, "prompts": {"prompts": [{"points": [{"x": 1, "y": 1, "positive": True}]}]}})
            tally.probes += 1
            tally.cross_key += response.status_code != 404
        if last:
            return
        await asyncio.sleep(0.2)


async def run_reliability(url: str, images: list[bytes], clients: int, duration_s: float,
                          keys: tuple[str, str]) -> tuple[Reliability, float]:
    tally = Reliability()
    limits = httpx.Limits(max_connections=clients + 2)
    started = time.monotonic()
    deadline = started + duration_s
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {keys[0]}"}) as owner, \
            httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {keys[1]}"}) as other:
        await asyncio.gather(*(_client(owner, i, images[i % len(images)], deadline, tally) for i in range(clients)),
                             _prober(other, deadline, tally))
        await _prober(other, 0.0, tally)  # one last pass over every id the clients got, in flight or not
    return tally, time.monotonic() - started


def report_rows(tally: Reliability, elapsed_s: float, peak: float | None, final: float | None,
                baseline: float | None) -> list[tuple[str, str]]:
    latencies = np.array(tally.latencies_s) * 1000 if tally.latencies_s else np.array([np.nan])
    failures = {status: n for status, n in sorted(tally.statuses.items()) if status != 200}
    return [(name, str(value)) for name, value in (
        ("requests", sum(tally.statuses.values()) + tally.client_gave_up + tally.abandoned),
        ("answered (200)", tally.statuses.get(200, 0)),
        ("failures by status", ", ".join(f"{s}: {n}" for s, n in failures.items()) or "none"),
        ("client timeouts (gave up)", tally.client_gave_up),
        ("abandoned requests", tally.abandoned),
        ("elapsed s", round(elapsed_s, 1)),
        ("p50 ms", round(float(np.percentile(latencies, 50)), 1)),
        ("p99 ms", round(float(np.percentile(latencies, 99)), 1)),
        ("server RSS before MiB", "n/a" if baseline is None else round(baseline, 1)),
        ("server peak RSS MiB", "n/a" if peak is None else round(peak, 1)),
        ("server final RSS MiB", "n/a" if final is None else round(final, 1)),
        ("cross-key probes", tally.probes),
        ("cross-key answers", tally.cross_key),
    )]


def healthy_after(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    except httpx.HTTPError:
        return False
