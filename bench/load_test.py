"""Bounded load test on 127.0.0.1: concurrent clients clicking prompts on a few images.

    python bench/load_test.py [--duration 60] [--clients 16] [--images 4] [--mode id|image]
                              [--url http://127.0.0.1:PORT [--server-pid PID]]
                              [--checkpoint PATH] [--dtype bfloat16] [--max-queue 64] [--image-files A.png,B.png]
                              [--ray-nodes N [--chaos]]
                              [--reliability [--api-keys A,B] [--request-timeout-s 5]]

Without --url it starts `python -m segany.server` (tiny model, random weights unless --checkpoint). Each
client works on image `client % images` and clicks one random positive point per request until the
duration is over (requests in flight then finish). `--mode id` (default) is the web-page flow: the
first click uploads the image, later clicks send its image_id (re-uploading if it was evicted);
`--mode image` uploads the image with every click. A 503 (the queue is full: deliberate backpressure)
makes the client wait for Retry-After and is counted apart; any other failure makes the exit status 1.

With `--ray-nodes N` it starts a Ray cluster on 127.0.0.1 instead (a head without CPUs and N one-CPU worker
nodes, each `ray start`) and `segany serve --ray` with N replicas on it; `--chaos` then kills one replica
at a third of the duration and a worker node (SIGKILL to all its processes) at two thirds, starting a new
node in its place. In chaos mode clients click a fixed set of points whose answers were recorded before the
load, so every answer is checked against that reference; a wrong mask or a client timeout fails the run.

With `--reliability` (bench/reliability_load.py) the clients are careless and hostile instead: cheap and
expensive requests with client timeouts and abandoned requests, while a second key probes the first key's
image ids and aliases. It reports failures by status, p50/p99, the server's RSS before, at peak and after,
and the count of cross-key answers; the exit status is 1 on any cross-key answer, a 500, or an unhealthy
server afterwards. Without --url the server is started with the two keys of --api-keys.

Reports: requests and throughput (answered clicks per second), p50/p99 latency of answered clicks,
status counts, the embedding-cache hit rate (from /metrics, over this run; on Ray, summed over all
replicas by the ingress), and the server's peak RSS (Linux VmHWM; needs the server's pid, known when this
script starts it; not on Ray).
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
from typing import Awaitable, Callable
from urllib.parse import urlsplit

import httpx
import numpy as np

from _common import print_table, random_checkpoint, server_process
from bench_server import encode_png, peak_rss_mib

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


CHAOS_POINTS = 4  # fixed clicks per image in chaos mode, answered once before the load as the reference
CLIENT_TIMEOUT_S = 120.0


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    replicas: Counter = field(default_factory=Counter)  # answers per x-segany-replica (Ray only)


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
    """(hits, misses) of the embedding cache: summed over the replicas behind a Ray ingress, else the server's."""
    found: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("segany_embedding_cache_hits_total", "segany_embedding_cache_misses_total",
                    "segany_cluster_embedding_cache_hits_total", "segany_cluster_embedding_cache_misses_total"):
            found[name] = float(value)
    prefix = "segany_cluster_" if "segany_cluster_embedding_cache_hits_total" in found else "segany_"
    return found.get(prefix + "embedding_cache_hits_total", 0.0), found.get(prefix + "embedding_cache_misses_total", 0.0)


def click_points(image: tuple[bytes, tuple[int, int]], count: int = CHAOS_POINTS) -> list[list[float]]:
    """The fixed clicks of chaos mode, spread over the image."""
    _, (width, height) = image
    return [[(i + 0.5) * width / count, (i + 0.5) * height / count] for i in range(count)]


def mask_signature(answer: dict) -> list:
    return [(m["rle"]["counts"], round(float(m["score"]), 4)) for r in answer["results"] for m in r["masks"]]


def reference_answers(url: str, images: list) -> dict[tuple[int, int], list]:
    """Chaos mode's reference: each fixed click on each image, answered before any failure."""
    reference = {}
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        for index, image in enumerate(images):
            for point, xy in enumerate(click_points(image)):
                response = client.post("/v1/segment", files={"image": ("image.png", image[0], "image/png")},
                                       data={"prompts": json.dumps([{"points": [xy], "labels": [1]}]),
                                             "multimask": "false", "format": "rle"})
                response.raise_for_status()
                reference[index, point] = mask_signature(response.json())
    return reference


async def client_loop(client: httpx.AsyncClient, index: int, image_index: int, image: tuple[bytes, tuple[int, int]],
                      mode: str, deadline: float, tally: Tally, reference: dict | None = None) -> None:
    data, (width, height) = image
    rng = random.Random(index)
    image_id: str | None = None
    fixed = click_points(image)
    while time.monotonic() < deadline:
        point = rng.randrange(len(fixed))
        xy = fixed[point] if reference is not None else [rng.uniform(0, width - 1), rng.uniform(0, height - 1)]
        prompts = [{"points": [xy], "labels": [1]}]
        extra = {"format": "rle"} if reference is not None else {}
        start = time.perf_counter()
        try:
            if image_id is None or mode == "image":
                response = await client.post("/v1/segment", files={"image": ("image.png", data, "image/png")},
                                             data={"prompts": json.dumps(prompts), "multimask": "false", **extra})
            else:
                response = await client.post("/v1/segment", json={"image_id": image_id, "prompts": prompts,
                                                                   "multimask": False, **extra})
        except httpx.HTTPError as error:
            tally.failures.append(f"client {index}: {type(error).__name__}: {error}")
            continue
        elapsed = time.perf_counter() - start
        tally.statuses[response.status_code] += 1
        if response.status_code == 200:
            tally.latencies_s.append(elapsed)
            image_id = response.json()["image_id"]
            if "x-segany-replica" in response.headers:
                tally.replicas[response.headers["x-segany-replica"]] += 1
            if reference is not None and mask_signature(response.json()) != reference[image_index, point]:
                tally.failures.append(f"client {index}: wrong mask for image {image_index} point {point} from "
                                      f"replica {response.headers.get('x-segany-replica')}")
        elif response.status_code == 503:
            if "retry-after" not in response.headers:
                tally.failures.append(f"client {index}: 503 without Retry-After")
            await asyncio.sleep(min(5.0, float(response.headers.get("Retry-After", "1"))))
        elif response.status_code == 404 and image_id is not None:
            image_id = None  # evicted from the cache: upload the image again
        else:
            tally.failures.append(f"client {index}: HTTP {response.status_code}: {response.text[:200]}")


async def run_load(url: str, images: list, clients: int, duration_s: float, mode: str,
                   reference: dict | None = None, chaos: Callable[[], Awaitable[None]] | None = None,
                   ) -> tuple[Tally, float]:
    tally = Tally()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = CLIENT_TIMEOUT_S if reference is not None else 600
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        started = time.monotonic()
        deadline = started + duration_s
        loops = [client_loop(client, i, i % len(images), images[i % len(images)], mode, deadline, tally, reference)
                 for i in range(clients)]
        await asyncio.gather(*loops, *([chaos()] if chaos is not None else []))
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
        ("replicas answering", len(tally.replicas) or 1),
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
    parser.add_argument("--ray-nodes", type=int, default=0,
                        help="serve on a Ray cluster of this many one-CPU worker nodes on 127.0.0.1, one replica each")
    parser.add_argument("--chaos", action="store_true",
                        help="with --ray-nodes: kill a replica, then a worker node, during the load; check every mask")
    parser.add_argument("--reliability", action="store_true",
                        help="careless clients and a second key probing the first key's ids (see above)")
    parser.add_argument("--api-keys", default="bench-key-a,bench-key-b",
                        help="--reliability: the two keys (the server must accept both)")
    parser.add_argument("--request-timeout-s", type=float, default=5.0,
                        help="--reliability: the started server's --request-timeout-s")
    args = parser.parse_args()
    if args.reliability:
        return reliability_main(args)
    if args.chaos and args.ray_nodes < 2:
        parser.error("--chaos needs --ray-nodes 2 or more (a survivor to answer while the others are replaced)")
    if args.duration <= 0 or args.duration > 3600 or args.clients < 1 or args.images < 1:
        parser.error("duration must be in (0, 3600] s; clients and images at least 1")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("--url must point at this machine (127.0.0.1): the load test never leaves it")

    if args.image_files:
        images = file_images(args.image_files.split(","))[: args.images]
    else:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
        images = synthetic_images(args.images, (width, height))

    def run(url: str, pid: int | None, chaos: Callable[[], Awaitable[None]] | None = None) -> int:
        reference = reference_answers(url, images) if chaos is not None else None
        hits_before, misses_before = cache_counts(url)
        tally, elapsed = asyncio.run(run_load(url, images, args.clients, args.duration, args.mode, reference, chaos))
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
    if args.ray_nodes:
        return run_on_ray(args, options, run)
    with server_process(options) as server:
        return run(server.url, server.pid)


def run_on_ray(args: argparse.Namespace, options: list[str], run: Callable[..., int]) -> int:
    """The same load against `segany serve --ray` on a local cluster of `--ray-nodes` worker nodes."""
    import os

    from _ray_cluster import LOOPBACK_ENV, local_cluster, ray_serve_process

    os.environ.update(LOOPBACK_ENV)  # before ray is imported (for --chaos's driver)
    with local_cluster(args.ray_nodes) as cluster, \
            ray_serve_process(cluster, args.ray_nodes, [*options, "--request-timeout-s", "60"]) as url:
        print(f"Ray: head {cluster.address} and {args.ray_nodes} worker node(s), one replica each", flush=True)
        if not args.chaos:
            return run(url, None)
        import ray

        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        try:
            async def chaos() -> None:
                await asyncio.sleep(args.duration / 3)
                replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                               if "#SeganyBackend#" in a["name"])
                ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
                print(f"chaos: killed replica {replica['name'].rsplit('#', 1)[-1]}", flush=True)
                await asyncio.sleep(args.duration / 3)
                await asyncio.to_thread(cluster.kill_node, cluster.workers[0])
                print("chaos: killed a worker node (SIGKILL to all its processes)", flush=True)
                await asyncio.to_thread(cluster.start_node)
                print("chaos: a new worker node joined", flush=True)

            return run(url, None, chaos)
        finally:
            ray.shutdown()


def reliability_main(args: argparse.Namespace) -> int:
    """`--reliability`: bench/reliability_load.py's clients against --url or a server started with two keys."""
    import time as clock

    from reliability_load import healthy_after, report_rows, rss_mib, run_reliability

    keys = tuple(args.api_keys.split(",")[:2])
    if len(keys) != 2 or keys[0] == keys[1]:
        raise SystemExit("--api-keys needs two different keys")
    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        raise SystemExit("--url must point at this machine (127.0.0.1): the load test never leaves it")
    if args.image_files:
        images = [data for data, _ in file_images(args.image_files.split(","))[: args.images]]
    else:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
        images = [data for data, _ in synthetic_images(args.images, (width, height))]

    def run(url: str, pid: int | None) -> int:
        baseline = rss_mib(pid) if pid else None
        tally, elapsed = asyncio.run(run_reliability(url, images, args.clients, args.duration, keys))  # type: ignore[arg-type]
        clock.sleep(2)  # let abandoned work reach its batch boundary before reading the final RSS
        peak, final = (peak_rss_mib(pid), rss_mib(pid)) if pid else (None, None)
        print_table(["metric", "value"], report_rows(tally, elapsed, peak, final, baseline))
        healthy = healthy_after(url)
        print("server healthy after the run:", healthy, flush=True)
        return 1 if tally.cross_key or tally.statuses.get(500, 0) or not healthy else 0

    print(f"reliability: {args.clients} clients, {len(images)} images, {args.duration:g} s", flush=True)
    if args.url:
        return run(args.url, args.server_pid)
    checkpoint = args.checkpoint or str(random_checkpoint("sam2.1_hiera_tiny"))
    options = ["--checkpoint", checkpoint, "--dtype", args.dtype, "--device", args.device,
               "--max-queue", str(args.max_queue), "--request-timeout-s", str(args.request_timeout_s),
               "--api-key", keys[0], "--api-key", keys[1]]
    with server_process(options) as server:
        return run(server.url, server.pid)


if __name__ == "__main__":
    sys.exit(main())
