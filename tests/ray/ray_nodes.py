"""`ray start ... --block` as a test's own process: one Ray node on 127.0.0.1, ended by its process group.

Ray 2.60's `ray start --address 127.0.0.1:PORT` cannot join a head that listens on loopback only: it
replaces 127.0.0.1 with the machine's network address, and the switch that stops that
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) also forbids starting a worker node. A worker's `ray start` therefore
runs the same `ray` command-line entry point with one lookup patched: "this machine's address" is 127.0.0.1.
On real machines none of this is needed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from serve_helpers import free_port

STARTED_LINE = "Ray runtime started"
LOOPBACK_WORKER = (
    "import os, sys; os.environ['RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'] = '1'; "
    "import ray._private.services as services; services.get_node_ip_address = lambda address=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def _ray_command(head: bool) -> list[str]:
    """`ray` for the head; for a worker, the same entry point keeping 127.0.0.1 (see the module docstring)."""
    script = Path(sys.executable).with_name("ray")
    if head and script.is_file():
        return [str(script)]
    return [sys.executable, "-c", LOOPBACK_WORKER]


def ray_node(args: list[str], log: Path, timeout_s: float = 120) -> subprocess.Popen:
    """Start `ray start ARGS` in the foreground on 127.0.0.1 with free ports for its agents; returns once up."""
    loopback = ["--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", str(free_port()),
                "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--min-worker-port", "0", "--max-worker-port", "0"]
    if "--head" in args:
        loopback += ["--include-dashboard", "false", "--ray-client-server-port", str(free_port())]
    with log.open("w") as sink:
        process = subprocess.Popen([*_ray_command("--head" in args), "start", *args, *loopback, "--block"], stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while STARTED_LINE not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_node(process)
            raise AssertionError(f"ray start {' '.join(args)} failed: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return process


def stop_node(process: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM the node's process group (ray start --block then stops what it started), SIGKILL what remains."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
