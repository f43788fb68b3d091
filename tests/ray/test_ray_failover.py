"""Losing a replica and a worker node while clients click: no wrong answer, no hung request, jobs finish.

Two model replicas on two one-CPU worker nodes. Clients click fixed points on two images (the answers were
recorded before any failure) while one replica is killed and then the other replica's node is removed
without warning (a new node joins for its replacement). Every answer must equal the reference; a client
sees only answers, 404 for an image id the new replica never saw (the web page's flow re-uploads, as
`bench/load_test.py` does) or a deliberate 503 with Retry-After; nothing runs into the client timeout.
Replicate jobs accepted before the failures all succeed (the job store is one SQLite file all replicas share).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from segany.server.dialects.replicate_seed import MODEL_VERSION
from serve_helpers import click, free_port, masks_of, png_b64, ray_server

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra segany[ray]")

IMAGES = [("chelsea.png", (0, 0, 225, 150)), ("coffee.png", (200, 150, 400, 300))]
POINTS = [[10.0, 12.0], [40.0, 30.0], [70.0, 50.0]]
CLIENT_TIMEOUT_S = 190.0  # the ingress answers (or 503s) within request_timeout_s + 10 s: 160 s here


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    replicas: dict[str, str] = field(default_factory=dict)  # replica id -> node id, of every 200
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client_loop(url: str, index: int, images: list[str], reference: dict, stop: threading.Event,
                 tally: Tally) -> None:
    image_ids = [None] * len(images)
    step = index
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S) as client:
        while not stop.is_set():
            image, point = step % len(images), (step // len(images)) % len(POINTS)
            step += 1
            try:
                if image_ids[image] is None:
                    response = client.post("/v1/embed", json={"image": images[image]})
                    if response.status_code == 200:
                        image_ids[image] = response.json()["image_id"]
                else:
                    response = click(client, image_ids[image], POINTS[point])
            except httpx.TimeoutException:
                with tally.lock:
                    tally.hung.append(f"client {index}: no answer in {CLIENT_TIMEOUT_S} s")
                continue
            with tally.lock:
                tally.statuses[response.status_code] += 1
                if response.status_code == 200:
                    tally.replicas[response.headers["x-segany-replica"]] = response.headers["x-segany-node"]
                    if "results" in response.json() and masks_of(response.json()) != reference[image, point]:
                        tally.wrong.append(f"image {image} point {point} from {response.headers['x-segany-replica']}")
                elif response.status_code == 404:
                    image_ids[image] = None  # a replacement replica never saw this image: upload it again
                elif response.status_code == 503:
                    if "retry-after" not in response.headers:
                        tally.other.append("503 without Retry-After")
                else:
                    tally.other.append(f"HTTP {response.status_code}: {response.text[:200]}")
            if response.status_code == 503:
                time.sleep(float(response.headers.get("retry-after", "1")))


def _replica_actor(ray, replica_id: str):
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].endswith(f"#SeganyBackend#{replica_id}"):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise AssertionError(f"no actor for replica {replica_id}")


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1.0)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_replica_and_node_death_under_load(ray_cluster, tiny_checkpoint, tmp_path):
    import ray

    with ray_server(ray_cluster.address, free_port(), tiny_checkpoint, tmp_path / "serve",
                    "--replicas", "2", "--replica-cpus", "1", "--request-timeout-s", "150",
                    "--job-max-attempts", "4", "--job-workers", "1") as server, httpx.Client(base_url=server.url, timeout=120) as http:
        images = [png_b64(name, box=box) for name, box in IMAGES]
        reference: dict[tuple[int, int], list] = {}
        home: dict[int, tuple[str, str]] = {}  # image -> (replica, node) before the failures
        for image, data in enumerate(images):
            embedded = http.post("/v1/embed", json={"image": data})
            assert embedded.status_code == 200, embedded.text
            home[image] = (embedded.headers["x-segany-replica"], embedded.headers["x-segany-node"])
            for point, xy in enumerate(POINTS):
                answer = click(http, embedded.json()["image_id"], xy)
                assert answer.status_code == 200, answer.text
                reference[image, point] = masks_of(answer.json())
            time.sleep(1.5)  # the second image goes to the other replica once the router knows the first
        originals = {replica: node for replica, node in home.values()}
        assert len(originals) == 2, "the two images should live on the two replicas"
        jobs = []
        for data in images * 2:  # accepted before any failure; some will be running on the replica that dies
            created = http.post("/v1/predictions", json={"version": MODEL_VERSION, "input": {
                "image": f"data:image/png;base64,{data}", "points_per_side": 2, "points_per_batch": 1,
                "mask_limit": 2}})
            assert created.status_code == 201, created.text
            jobs.append(created.json()["id"])

        stop, tally = threading.Event(), Tally()
        clients = [threading.Thread(target=_client_loop, args=(server.url, i, images, reference, stop, tally))
                   for i in range(3)]
        ray.init(address=ray_cluster.address, log_to_driver=False, configure_logging=False)
        try:
            for client in clients:
                client.start()
            time.sleep(3)
            started = time.monotonic()
            (killed, killed_node), (_, lost_node) = sorted(originals.items())[0], sorted(originals.items())[1]
            ray.kill(_replica_actor(ray, killed), no_restart=True)
            # While a replica is down its images' keys move to the survivor; a new image goes to the replica
            # holding the fewest keys, which is the replacement once it runs. Probe with new images until one
            # is answered from the replacement's node.
            probes = iter(range(0, 240, 2))

            def replacement_answers_on(node_id: str) -> Callable[[], bool]:
                def probe() -> bool:
                    offset = next(probes)
                    image = png_b64("astronaut.png", box=(offset, 0, offset + 256, 256))
                    answer = http.post("/v1/embed", json={"image": image})
                    assert answer.status_code in (200, 503), answer.text
                    return answer.status_code == 200 and answer.headers["x-segany-replica"] not in originals \
                        and answer.headers["x-segany-node"] == node_id
                return probe

            _wait_for(replacement_answers_on(killed_node), 150, "the killed replica's replacement to answer")
            replaced_after_s = time.monotonic() - started
            victim = next(node for node in ray_cluster.workers if node.node_id == lost_node)
            ray_cluster.remove_worker(victim)
            fresh_node = ray_cluster.add_worker().node_id
            _wait_for(replacement_answers_on(fresh_node), 150, "the lost node's replacement to answer on the new node")
            recovered_after_s = time.monotonic() - started
            time.sleep(2)
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=CLIENT_TIMEOUT_S + 10)
            ray.shutdown()
        assert not tally.hung and not tally.wrong and not tally.other, (tally.hung, tally.wrong, tally.other)
        assert tally.statuses[200] > 20, tally.statuses
        assert set(tally.statuses) <= {200, 404, 503}, tally.statuses

        def finished() -> bool:
            return all(http.get(f"/v1/predictions/{job}").json()["status"] in ("succeeded", "failed", "canceled")
                       for job in jobs)

        _wait_for(finished, 150, "the jobs accepted before the failures to finish")
        outcomes = [http.get(f"/v1/predictions/{job}").json() for job in jobs]
        assert [o["status"] for o in outcomes] == ["succeeded"] * len(jobs), [o.get("error") for o in outcomes]
        metrics = http.get("/metrics").text
        print(f"statuses {dict(tally.statuses)}; killed replica replaced in {replaced_after_s:.0f} s, lost node's "
              f"replica in {recovered_after_s - replaced_after_s:.0f} s;",
              [line for line in metrics.splitlines() if line.startswith("segany_ingress_")])
