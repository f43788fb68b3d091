"""Jobs survive a killed server: a real server process gets SIGKILL mid-job and is started again on the same
data directory; every accepted job then ends succeeded (recovery "retry") or failed with a reason ("fail").
Also: finished jobs, their files and uploads expire."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from live_jobs import TINY_SEED_INPUT, free_port, receiving, serve
from segany.server.jobs.store import JobStatus, JobStore
from segany.server.jobs.service import DB_FILE

REPO = Path(__file__).resolve().parents[2]
# Caught running: a fresh server process loads the model and embeds the image first (seconds), then
# decodes the grid points one at a time.
SLOW_INPUT = {**TINY_SEED_INPUT, "points_per_batch": 1, "mask_limit": 2}

_CHILD = """
import json, sys
import uvicorn
from segany.server.app import create_app
from segany.server.settings import ServerSettings

config = json.loads(sys.argv[1])
settings = ServerSettings(checkpoint=config["checkpoint"], device="cpu", dtype="float32", preload=False,
                          host="127.0.0.1", port=config["port"], **config["jobs"])
app = create_app(settings)
uvicorn.run(app, host="127.0.0.1", port=config["port"], log_level="warning")
"""


@contextmanager
def server_process(checkpoint: Path, data_dir: Path, log: Path, port: int,
                   **job_options: Any) -> Iterator[tuple[str, Any]]:
    """A server in its own process (so it can be SIGKILLed); yields (url, process). A restart uses the same
    port, as a real deployment does: the URLs recorded in jobs (outputs, status) stay valid."""
    jobs = {"data_dir": str(data_dir), "job_workers": 1, "webhook_allow_private": True, "webhook_backoff_s": 0.05,
            **job_options}
    config = json.dumps({"checkpoint": str(checkpoint), "port": port, "jobs": jobs})
    with log.open("ab") as output:
        process = subprocess.Popen([sys.executable, "-c", _CHILD, config], cwd=REPO, stdout=output, stderr=output,
                                   env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(url: str, path: str, done: Any, timeout_s: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body = httpx.get(url + path, timeout=30).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def _create(url: str, image: str, seed_input: dict[str, Any], **extra: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/predictions", timeout=60,
                          json={"version": "lucataco/segment-anything-2", "input": {"image": image, **seed_input},
                                **extra})
    assert response.status_code == 201, response.text
    return response.json()


def _kill_while_running(url: str, process: Any, prediction_id: str) -> None:
    _wait_for(url, f"/v1/predictions/{prediction_id}", lambda body: body["status"] == "processing")
    process.send_signal(signal.SIGKILL)
    process.wait()


def _finished(body: dict[str, Any]) -> bool:
    return body["status"] in ("succeeded", "failed", "canceled")


def test_killed_server_reruns_its_jobs_after_restart(tmp_path, tiny_checkpoint, image_b64) -> None:
    data_dir, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    image = "data:image/png;base64," + image_b64
    with receiving() as receiver:
        with server_process(tiny_checkpoint, data_dir, log, port) as (url, process):
            running = _create(url, image, SLOW_INPUT)
            queued = _create(url, image, TINY_SEED_INPUT | {"mask_limit": 1}, webhook=receiver.url,
                             webhook_events_filter=["completed"])
            _kill_while_running(url, process, running["id"])
        store = JobStore(data_dir / DB_FILE)
        assert [store.get(job["id"]).status for job in (running, queued)] == [JobStatus.PROCESSING,
                                                                                JobStatus.STARTING]
        store.close()
        with server_process(tiny_checkpoint, data_dir, log, port) as (url, _):
            first = _wait_for(url, f"/v1/predictions/{running['id']}", _finished)
            second = _wait_for(url, f"/v1/predictions/{queued['id']}", _finished)
            assert (first["status"], len(first["output"])) == ("succeeded", 2), first
            assert (second["status"], len(second["output"])) == ("succeeded", 1), second
            mask = httpx.get(first["output"][0], timeout=30)
            assert set(np.unique(np.asarray(Image.open(io.BytesIO(mask.content))))) <= {0, 255}
            [delivery] = receiver.wait_for(lambda got: len(got) >= 1)
            assert (delivery.json["id"], delivery.json["output"]) == (queued["id"], second["output"])
    store = JobStore(data_dir / DB_FILE)
    assert (store.get(running["id"]).attempts, store.get(queued["id"]).attempts) == (2, 1)
    store.close()


def test_recovery_policy_fail_ends_interrupted_jobs_with_a_reason(tmp_path, tiny_checkpoint, image_b64) -> None:
    data_dir, log, port = tmp_path / "data", tmp_path / "server.log", free_port()
    with server_process(tiny_checkpoint, data_dir, log, port) as (url, process):
        running = _create(url, "data:image/png;base64," + image_b64, SLOW_INPUT)
        queued = httpx.post(f"{url}/v2/sam-v2-image", json={"image": image_b64, "coordinates": "[10,10]"},
                            timeout=60).json()
        _kill_while_running(url, process, running["id"])
    with server_process(tiny_checkpoint, data_dir, log, port, job_recovery="fail") as (url, _):
        first = httpx.get(f"{url}/v1/predictions/{running['id']}", timeout=30).json()
        assert first["status"] == "failed" and "server stopped while this prediction was running" in first["error"]
        status = httpx.get(f"{url}/v2/requests/{queued['request_id']}/status", timeout=30)
        assert status.status_code == 422
        assert status.json()["status"] == "FAILED" and "restarted before" in status.json()["error"]


def test_finished_jobs_files_and_uploads_expire(tmp_path, base_settings, shared_loader, image_b64) -> None:
    files = tmp_path / "data" / "files"
    settings = base_settings.with_(data_dir=str(tmp_path / "data"), job_ttl_s=4.0, expire_every_s=0.25)
    request = {"image": image_b64, "coordinates": "[10,10]"}
    with serve(settings, shared_loader) as live, live.client(key=None) as http:
        assert http.post("/v1/sam-v2-image", json=request).status_code == 200  # embeds the image: the job is quick
        submitted = http.post("/v2/sam-v2-image", json=request).json()
        deadline = time.monotonic() + 120
        while (body := http.get(submitted["response_url"]).json())["status"] != "COMPLETED":
            assert time.monotonic() < deadline, body
            time.sleep(0.1)
        assert http.get(body["output"]).status_code == 200
        upload = http.post("/v1/files", files={"content": ("a.png", b"\x89PNG fake", "image/png")}).json()
        assert http.get(f"/v1/files/{upload['id']}").status_code == 200
        kept = sorted(path.suffix for path in files.rglob("*") if path.is_file() and not path.name.startswith("."))
        assert kept == [".jpg", ".png", ".png"]  # the job's input and output, and the upload
        deadline = time.monotonic() + 60
        while http.get(submitted["response_url"]).status_code != 404:
            assert time.monotonic() < deadline, "the finished job never expired"
            time.sleep(0.1)
        assert http.get(body["output"]).status_code == 404
        while http.get(f"/v1/files/{upload['id']}").status_code != 404:
            assert time.monotonic() < deadline, "the upload never expired"
            time.sleep(0.1)
    assert [path for path in files.rglob("*") if path.is_file()] == []
