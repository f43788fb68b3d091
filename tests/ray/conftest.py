"""Fixtures of the multi-node tests: a Ray cluster on 127.0.0.1 (one per test module) and small images.

`ray_cluster` is `ray.cluster_utils.Cluster`: a head node with no CPUs for work (it runs Ray's own services,
the Serve controller and proxy, segany's ingress and the drivers) and two one-CPU worker nodes, each its own
raylet and object store, so losing one behaves like losing a machine. Every process it starts is stopped at
the end of the module, also when a test fails. Ports are chosen free, so parallel runs do not collide.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))  # segany_cli_helpers, shared with tests/cli

from segany_cli_helpers import IMAGES  # noqa: E402
from serve_helpers import free_port  # noqa: E402

# Before ray is imported: a driver in this process joins the loopback cluster at 127.0.0.1, not at this
# machine's network address (see segany.batch.ray_data.import_ray).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
pytest.importorskip("ray", reason="Ray is the optional extra segany[ray]")

WORKER_CPUS = 1


@dataclass
class SimulatedCluster:
    """The cluster, its GCS address (what `--ray ADDRESS` takes) and its live worker nodes."""

    cluster: Any
    address: str
    workers: list[Any] = field(default_factory=list)

    def add_worker(self) -> Any:
        node = self.cluster.add_node(num_cpus=WORKER_CPUS, node_ip_address="127.0.0.1")
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def remove_worker(self, node: Any) -> None:
        """Kill the node's processes at once (SIGKILL, no draining): a machine that vanished."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[SimulatedCluster]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "gcs_server_port": free_port(), "include_dashboard": False,
        "object_store_memory": 100 * 2**20})
    simulated = SimulatedCluster(cluster, cluster.address)
    try:
        for _ in range(2):
            simulated.add_worker()
        yield simulated
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Six small photos (crops of the three fixtures) and one corrupt file."""
    folder = tmp_path_factory.mktemp("photos")
    index = 0
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        with Image.open(IMAGES / name) as opened:
            rgb = opened.convert("RGB")
        width, height = rgb.size
        for box in ((0, 0, width // 2, height // 2), (width // 2, height // 2, width, height)):
            rgb.crop(box).resize((64, 48)).save(folder / f"{index:02d}_{Path(name).stem}.png")
            index += 1
    (folder / "99_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder
