"""Bounded load test on 127.0.0.1: concurrent clients clicking prompts on a few images.

    python bench/load_test.py [--duration 60] [--clients 16] [--images 4] [--mode id|image]
                              [--url http://127.0.0.1:PORT [--server-pid PID]]
                              [--checkpoint PATH] [--dtype bfloat16] [--max-queue 64] [--image-files A.png,B.png]

Without --url it starts `python -m segany.server` (tiny model, random weights unless --checkpoint). Each
client works on image `client % images` and clicks one random positive point per request until the
duration is over (requests in flight then finish). `--mode id` (default) is the web-page flow: the
first click uploads the image, later clicks send its image_id (re-uploading if it was evicted);
`--mode image` uploads the image with every click. A 503 (the queue is full: deliberate backpressure)
makes the client wait for Retry-After and is counted apart; any other failure makes the exit status 1.

Reports: requests and throughput (answered clicks per second), p50/p99 latency of answered clicks,
status counts, the embedding-cache hit rate (from /metrics, over this run), and the server's peak RSS
(Linux VmHWM; needs the server's pid, known when this script starts it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from _common import print_table, random_checkpoint, server_process
from bench_server import encode_png, peak_rss_mib

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def synthetic_images(count: int, size_wh: tuple[int, int]) -> list[tuple[bytes, tuple[int, int]]]:
    """Distinct smooth test images (PNG), deterministic per index."""
    width, height = size_wh
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for index in range(count):
        rng = np.random.default_rng(index)
        channels = [np.sin(x / rng.uniform(8, 40) + rng.uniform(0, 6)) + np.cos(y / rng.uniform(8, 40)) for _ in "rgb"]
        rgb = ((np.stack(channels, axis=-1) + 2) * 63.75).astype(np.uint8)
        images.append((encode_png(rgb), size_wh))
    return images


def file_images(paths: list[str]) -> list[tuple[bytes, tuple[int, int]]]:
    from PIL import Image

    images = []
    for path in paths:
        with Image.open(path) as opened:
            images.append((Path(path).read_bytes(), opened.size))
    return images


def cache_counts(url: str) -> tuple[float, float]:
    hits = misses = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        if line.startswith("segany_embedding_cache_hits_total "):
            hits = float(line.split()[1])
        elif line.startswith("segany_embedding_cache_misses_total "):
            misses = float(line.split()[1])
    return hits, misses


async def client_loop(client: httpx.AsyncClient, index: int, image: tuple[bytes, tuple[int, int]], mode: str,
                      deadline: float, tally: Tally) -> None:
    data, (width, height) = image
    rng = random.Random(index)
    image_id: str | None = None
    while time.monotonic() < deadline:
        prompts = [{"points": [[rng.uniform(0, width - 1), rng.uniform(0, height - 1)]], "labels": [1]}]
        start = time.perf_counter()
        try:
            if image_id is None or mode == "image":
                response = await client.post("/v1/segment", files={"image": ("image.png", data, "image/png")},
                                             data={"prompts": json.dumps(prompts), "multimask": "false"})
            else:
                response = await client.post("/v1/segment", json={"image_id": image_id, "prompts": prompts,
                                                                   "multimask": False})
        except httpx.HTTPError as error:
            tally.failures.append(f"client {index}: {type(error).__name__}: {error}")
            continue
        elapsed = time.perf_counter() - start
        tally.statuses[response.status_code] += 1
        if response.status_code == 200:
            tally.latencies_s.append(elapsed)
            image_id = response.json()["image_id"]
        elif response.status_code == 503:
            await asyncio.sleep(min(5.0, float(response.headers.get("Retry-After", "1"))))
        elif response.status_code == 404 and image_id is not None:
            image_id = None  # evicted from the cache: upload the image again
        else:
            tally.failures.append(f"client {index}: HTTP {response.status_code}: {response.text[:200]}")


async def run_load(url: str, images: list, clients: int, duration_s: float, mode: str) -> tuple[Tally, float]:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.monotonic()
        deadline = started + duration_s
        await asyncio.gather(*(client_loop(client, i, images[i % len(images)], mode, deadline, tally)
                               for i in range(clients)))
        return tally, time.monotonic() - started


def report(tally: Tally, elapsed_s: float, hit_rate: float | None, rss_mib: float | None) -> None:
    answered = len(tally.latencies_s)
    latencies = np.array(tally.latencies_s) * 1000 if answered else np.array([np.nan])
    rows = [
        ("requests", sum(tally.statuses.values()) + len(tally.failures)),
        ("answered (200)", answered),
        ("refused, queue full (503)", tally.statuses.get(503, 0)),
        ("failed", len(tally.failures) + sum(n for s, n in tally.statuses.items() if s not in (200, 503, 404))),
        ("elapsed s", round(elapsed_s, 1)),
        ("throughput clicks/s", round(answered / elapsed_s, 2)),
        ("p50 ms", round(float(np.percentile(latencies, 50)), 1)),
        ("p99 ms", round(float(np.percentile(latencies, 99)), 1)),
        ("cache hit rate", "n/a" if hit_rate is None else f"{hit_rate:.3f}"),
        ("server peak RSS MiB", "n/a" if rss_mib is None else round(rss_mib, 1)),
    ]
    print_table(["metric", "value"], [(name, str(value)) for name, value in rows])
    for failure in tally.failures[:10]:
        print("failure:", failure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--image-size", default="640x480", help="WxH of the synthetic images")
    parser.add_argument("--image-files", help="comma-separated image files to use instead of synthetic ones")
    parser.add_argument("--mode", choices=("id", "image"), default="id")
    parser.add_argument("--url", help="an already running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--server-pid", type=int, help="pid of --url's server, for its peak RSS")
    parser.add_argument("--checkpoint")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-queue", type=int, default=64)
    args = parser.parse_args()
    if args.duration <= 0 or args.duration > 3600 or args.clients < 1 or args.images < 1:
        parser.error("duration must be in (0, 3600] s; clients and images at least 1")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must point at this machine (127.0.0.1): the load test never leaves it")

    if args.image_files:
        images = file_images(args.image_files.split(","))[: args.images]
    else:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
        images = synthetic_images(args.images, (width, height))

    def run(url: str, pid: int | None) -> int:
        hits_before, misses_before = cache_counts(url)
        tally, elapsed = asyncio.run(run_load(url, images, args.clients, args.duration, args.mode))
        hits, misses = cache_counts(url)
        lookups = (hits - hits_before) + (misses - misses_before)
        report(tally, elapsed, (hits - hits_before) / lookups if lookups else None,
               peak_rss_mib(pid) if pid else None)
        bad = len(tally.failures) + sum(n for s, n in tally.statuses.items() if s not in (200, 503, 404))
        return 1 if bad else 0

    print(f"{args.clients} clients, {len(images)} images, {args.duration:g} s, mode {args.mode}", flush=True)
    if args.url:
        return run(args.url, args.server_pid)
    checkpoint = args.checkpoint or str(random_checkpoint("sam2.1_hiera_tiny"))
    options = ["--checkpoint", checkpoint, "--dtype", args.dtype, "--device", args.device,
               "--max-queue", str(args.max_queue)]
    with server_process(options) as server:
        return run(server.url, server.pid)


if __name__ == "__main__":
    sys.exit(main())
