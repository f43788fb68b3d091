"""`segany serve --ray --replicas N`: Ray Serve on a local 2-CPU instance answers the native API."""
from __future__ import annotations

import argparse
import base64
import io
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from segany.errors import InvalidInput
from segany.server.ray_serve import add_ray_serve_arguments, deployment_options
from segany.server.settings import ServerSettings, add_settings_arguments
from segany_cli_helpers import IMAGES, start_segany

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early: {process.communicate()[1][-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("Ray Serve did not become ready")


def _segment(url: str, png: str, point: list[float]) -> dict:
    body = {"image": png, "prompts": [{"points": [point], "labels": [1]}], "multimask": True, "format": "rle"}
    response = httpx.post(f"{url}/v1/segment", json=body, timeout=600)
    assert response.status_code == 200, response.text
    return response.json()


def test_ray_serve_replicas_answer_the_native_api(tiny_checkpoint):
    pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra segany[ray]")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_segany("serve", "--ray", "--replicas", "2", "--ray-num-cpus", "2", "--checkpoint", tiny_checkpoint,
                           "--dtype", "float32", "--device", "cpu", "--host", "127.0.0.1", "--port", port,
                           "--log-level", "warning")
    try:
        _wait_ready(url, process)
        assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
        buffer = io.BytesIO()
        Image.open(IMAGES / "coffee.png").convert("RGB").resize((80, 60)).save(buffer, format="PNG")
        png = base64.b64encode(buffer.getvalue()).decode()
        with ThreadPoolExecutor(2) as pool:  # two requests at once: one per replica if the proxy spreads them
            answers = list(pool.map(lambda point: _segment(url, png, point), ([20.0, 30.0], [60.0, 10.0])))
        for answer in answers:
            assert answer["model"] == "sam2.1_hiera_tiny" and (answer["width"], answer["height"]) == (80, 60)
            masks = answer["results"][0]["masks"]
            assert len(masks) == 3
            scores = [m["score"] for m in masks]
            assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
            assert all(m["rle"]["size"] == [60, 80] for m in masks)
        bad = httpx.post(f"{url}/v1/segment", json={"prompts": [{"points": [[1, 2]]}]}, timeout=60)
        assert bad.status_code in (400, 422) and bad.json()["error"]["field"] == "image"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    assert "on Ray Serve with 2 replica(s)" in stderr
    assert process.returncode == 0, stderr[-3000:]


def _options(*argv: str) -> tuple[argparse.Namespace, ServerSettings]:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    add_ray_serve_arguments(parser)
    args = parser.parse_args(["--ray", *argv])
    return args, ServerSettings(device=args.device)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), {"num_replicas": 1}),
        (("--replicas", "3", "--replica-cpus", "2"), {"num_replicas": 3, "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.0}}),
        (("--device", "cuda"), {"ray_actor_options": {"num_cpus": 1.0, "num_gpus": 1.0}}),
        (("--min-replicas", "1", "--max-replicas", "4", "--replicas", "2"),
         {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                 "target_ongoing_requests": 2.0}}),
    ],
)
def test_deployment_options(argv, expected):
    args, settings = _options(*argv)
    options = deployment_options(args, settings)
    for key, value in expected.items():
        assert options[key] == value
    assert ("num_replicas" in options) != ("autoscaling_config" in options)


@pytest.mark.parametrize("argv", [("--replicas", "0"), ("--min-replicas", "3", "--max-replicas", "2")])
def test_bad_replica_counts_name_the_option(argv):
    args, settings = _options(*argv)
    with pytest.raises(InvalidInput) as error:
        deployment_options(args, settings)
    assert error.value.field in ("replicas", "min_replicas")
