"""The commands of docs/scale-out.md, run on one machine: `ray start` head and two workers, then `segany serve`.

Each `ray start` runs as its own process (with `--block`, in its own process group) on 127.0.0.1; the test
adds only what one machine needs in place of three (`--node-ip-address 127.0.0.1`, free ports). It ends
each node by its process group instead of `ray stop`, which would stop every Ray process on the machine,
including other test runs'.
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest

from ray_nodes import ray_node, stop_node
from serve_helpers import click, free_port, png_b64, ray_server

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra segany[ray]")

DOC = Path(__file__).resolve().parents[2] / "docs" / "scale-out.md"
# The commands as the document writes them for machines A (head), B and C (workers).
HEAD = "ray start --head --port 6379 --num-cpus 0"
WORKER = "ray start --address A:6379 --num-cpus 4"
SERVE = "segany serve --ray A:6379 --replicas 2 --replica-cpus 4"
STOP = "ray stop"


def test_the_document_states_these_commands():
    text = DOC.read_text()
    for command in (HEAD, WORKER, SERVE, STOP):
        assert command in text, command


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_documented_commands_bring_up_a_two_node_segany(tiny_checkpoint, tmp_path, monkeypatch):
    # One token for every node and the driver, as docs/scale-out.md asks (Ray may turn token auth on itself).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = []
    try:
        nodes.append(ray_node(HEAD.replace("6379", str(port)).split()[2:], tmp_path / "head.log"))
        for index in range(2):
            worker = WORKER.replace("A:6379", address).replace("--num-cpus 4", "--num-cpus 1").split()[2:]
            nodes.append(ray_node(worker, tmp_path / f"worker{index}.log"))
        serve_flags = SERVE.replace("A:6379", address).replace("--replica-cpus 4", "--replica-cpus 1").split()[4:]
        assert serve_flags == ["--replicas", "2", "--replica-cpus", "1"]
        with ray_server(address, free_port(), tiny_checkpoint, tmp_path / "serve", *serve_flags) as server, \
                httpx.Client(base_url=server.url, timeout=120) as client:
            nodes_seen = set()
            for box in ((0, 0, 225, 150), (225, 150, 451, 300)):
                embedded = client.post("/v1/embed", json={"image": png_b64("chelsea.png", box=box)})
                assert embedded.status_code == 200, embedded.text
                answer = click(client, embedded.json()["image_id"], [20.0, 20.0])
                assert answer.status_code == 200, answer.text
                nodes_seen.add(answer.headers["x-segany-node"])
                time.sleep(1.5)
            assert len(nodes_seen) == 2, "one replica on each worker node"
        assert "on Ray Serve with 2 replica(s)" in server.stderr()
    finally:
        for node in reversed(nodes):
            stop_node(node)
