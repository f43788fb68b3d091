"""Starting `segany serve --ray ADDRESS` for a test, and small clients of its native API."""
from __future__ import annotations

import base64
import io
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from segany_cli_helpers import IMAGES, segany_command

READY_LINE = "on Ray Serve with"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayServer:
    url: str
    process: subprocess.Popen
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def ray_server(address: str, port: int, checkpoint: Path, data_dir: Path, *extra: Any,
               ready_timeout_s: float = 240) -> Iterator[RayServer]:
    """`segany serve --ray ADDRESS` on 127.0.0.1:port until the block ends (SIGINT, then SIGKILL if it hangs)."""
    log = data_dir / "serve.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*segany_command(), "serve", "--ray", address, "--checkpoint", str(checkpoint), "--dtype", "float32",
             "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
             "--log-level", "warning", *map(str, extra)],
            stdout=subprocess.DEVNULL, stderr=sink, text=True)
    server = RayServer(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while READY_LINE not in server.stderr():
            if process.poll() is not None:
                raise AssertionError(f"serve exited early: {server.stderr()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"Ray Serve did not come up: {server.stderr()[-4000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def png_b64(name: str, size_wh: tuple[int, int] = (80, 60), box: tuple[int, int, int, int] | None = None) -> str:
    """A fixture photo (optionally cropped to `box`), resized, as base64 PNG."""
    with Image.open(IMAGES / name) as opened:
        rgb = opened.convert("RGB")
    if box is not None:
        rgb = rgb.crop(box)
    buffer = io.BytesIO()
    rgb.resize(size_wh).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def cluster_cache_counts(url: str) -> tuple[float, float]:
    """(hits, misses) summed over the replicas, from the ingress's /metrics."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        if line.startswith("segany_cluster_embedding_cache_"):
            name, value = line.split()
            values[name] = float(value)
    return values["segany_cluster_embedding_cache_hits_total"], values["segany_cluster_embedding_cache_misses_total"]


def click(client: httpx.Client, image_id: str, point_xy: list[float]) -> httpx.Response:
    return client.post("/v1/segment", json={"image_id": image_id, "format": "rle", "multimask": False,
                                            "prompts": [{"points": [point_xy], "labels": [1]}]})


def masks_of(answer: dict[str, Any]) -> list[Any]:
    """The RLE counts and rounded scores of a native segment answer: what must not change across replicas."""
    return [(m["rle"]["counts"], round(float(m["score"]), 4)) for r in answer["results"] for m in r["masks"]]


def finite_scores(answer: dict[str, Any]) -> bool:
    return all(np.isfinite(m["score"]) for r in answer["results"] for m in r["masks"])
