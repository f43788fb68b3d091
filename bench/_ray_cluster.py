"""A Ray cluster of `ray start` nodes on 127.0.0.1 and `segany serve --ray` on it, for the load benchmark.

The head has no CPUs for work; each worker node is its own `ray start --block` process group with one
CPU, so `kill_node` (SIGKILL to the group) loses a machine without warning. Only the nodes started here are
ever stopped (never `ray stop`, which would stop every Ray process on the machine).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from _common import REPO, free_port, wait_until_ready

# Keep 127.0.0.1 as the nodes' address instead of this machine's network address (Ray reads it at import).
# One authentication token for every node and driver of the run.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(REPO / "src"),
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
# A worker's `ray start --address 127.0.0.1:PORT` would swap in the network address, and the variable above
# forbids worker nodes: run the `ray` entry point with "this machine's address" patched to 127.0.0.1.
LOOPBACK_WORKER = (
    "import os, sys; os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '1'; "
    "import ray._private.services as services; services.get_node_ip_address = lambda address=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def _environment() -> dict[str, str]:
    return {**os.environ, **LOOPBACK_ENV}


@dataclass
class LocalCluster:
    address: str
    logs: Path
    head: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_node(self, head: bool = False) -> subprocess.Popen:
        ports = ["--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", str(free_port()),
                 "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
                 "--runtime-env-agent-port", str(free_port()), "--min-worker-port", "0", "--max-worker-port", "0"]
        if head:
            role = ["--head", "--port", self.address.rsplit(":", 1)[1], "--num-cpus", "0", "--include-dashboard",
                    "false", "--ray-client-server-port", str(free_port())]
        else:
            role = ["--address", self.address, "--num-cpus", "1"]
        log = self.logs / f"node-{len(self.workers) + (0 if head else 1)}-{time.monotonic_ns()}.log"
        with log.open("w") as sink:
            ray = [str(Path(sys.executable).with_name("ray"))] if head else [sys.executable, "-c", LOOPBACK_WORKER]
            process = subprocess.Popen([*ray, "start", *role, *ports, "--block"],
                                       stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                       env=_environment())
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        if head:
            self.head = process
        else:
            self.workers.append(process)
        return process

    def kill_node(self, process: subprocess.Popen) -> None:
        """SIGKILL a worker node's whole process group: a machine gone without warning."""
        self.workers.remove(process)
        _kill_group(process, signal.SIGKILL)


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def local_cluster(workers: int) -> Iterator[LocalCluster]:
    """A head and `workers` one-CPU worker nodes on 127.0.0.1, stopped (by process group) at the end."""
    cluster = LocalCluster(f"127.0.0.1:{free_port()}", Path(tempfile.mkdtemp(prefix="segany-ray-bench-")))
    try:
        cluster.start_node(head=True)
        for _ in range(workers):
            cluster.start_node()
        yield cluster
    finally:
        for process in [*cluster.workers, *([cluster.head] if cluster.head else [])]:
            _kill_group(process, signal.SIGTERM)


@contextmanager
def ray_serve_process(cluster: LocalCluster, replicas: int, options: list[str]) -> Iterator[str]:
    """`segany serve --ray ADDRESS --replicas N OPTIONS` on a free port; yields its URL once all replicas run."""
    port = free_port()
    log = cluster.logs / "serve.log"
    data_dir = cluster.logs / "data"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "segany", "serve", "--ray", cluster.address, "--replicas", str(replicas),
             "--replica-cpus", "1", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning", *options], stdout=subprocess.DEVNULL, stderr=sink, env=_environment())
    try:
        deadline = time.monotonic() + 600
        while "on Ray Serve with" not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"segany serve --ray failed: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        # The proxy learns the new route a moment after the application is up.
        wait_until_ready(f"http://127.0.0.1:{port}", deadline, probe_timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
