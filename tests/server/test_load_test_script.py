"""bench/load_test.py against the shared live server: a short, small run finishes cleanly and reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_short_load_run_reports_and_never_fails(server, embedded, image_path):
    command = [sys.executable, str(BENCH / "load_test.py"), "--url", server.url, "--server-pid", str(os.getpid()),
               "--duration", "3", "--clients", "4", "--images", "1", "--image-files", str(image_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    values = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition("  ")
        values[name.strip()] = value.strip()
    assert int(values["answered (200)"]) >= 4
    assert values["failed"] == "0"
    assert float(values["cache hit rate"]) == 1.0  # the image was embedded before the run
    assert float(values["server peak RSS MiB"]) > 0
    assert float(values["p99 ms"]) >= float(values["p50 ms"]) > 0


def test_refuses_remote_targets():
    result = subprocess.run([sys.executable, str(BENCH / "load_test.py"), "--url", "http://example.com:80"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "127.0.0.1" in result.stderr


def test_reliability_mode_reports_no_cross_key_answers(start_server, image_path):
    keys = ("rel-key-a", "rel-key-b")
    with start_server(api_keys=keys, request_timeout_s=5.0) as live:
        command = [sys.executable, str(BENCH / "load_test.py"), "--reliability", "--url", live.url,
                   "--server-pid", str(os.getpid()), "--api-keys", ",".join(keys), "--duration", "4",
                   "--clients", "4", "--images", "1", "--image-files", str(image_path)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    values = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition("  ")
        values[name.strip()] = value.strip()
    assert int(values["cross-key probes"]) > 0 and values["cross-key answers"] == "0"
    assert int(values["answered (200)"]) > 0 and float(values["server final RSS MiB"]) > 0
    assert "server healthy after the run: True" in result.stdout
