"""`segany batch --ray ADDRESS` on a three-node cluster (head without CPUs, two one-CPU workers, 127.0.0.1).

The distributed run writes the local run's COCO images and annotations, spread over both worker nodes; with
a worker node killed mid-run it still writes every image exactly once, and its summary (stderr and
`info.segany.run.ray`) says which node labelled which image and what was started again.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from segany_cli_helpers import FAST_AUTO, MODEL_FLAGS, journal_lines, run_segany, start_segany

pytest.importorskip("ray.data", reason="Ray Data is part of segany[ray]")

RAY_WORKERS = ["--ray-workers", "2", "--ray-cpus-per-worker", "0.9"]


def _content(coco: dict) -> dict:
    """Everything but the creation date, the run's device settings and its spread over the cluster."""
    run = {key: value for key, value in coco["info"]["segany"]["run"].items() if key != "ray"}
    return {key: coco[key] for key in ("images", "annotations", "categories")} | {
        "skipped": coco["info"]["segany"]["skipped"], "run": run}


@pytest.fixture(scope="module")
def local_coco(photo_folder, tiny_checkpoint, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("local") / "local.json"
    result = run_segany("batch", photo_folder, "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS,
                        *FAST_AUTO, "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    coco = json.loads(out.read_text())
    assert len(coco["images"]) == 6 and coco["annotations"], "nothing to compare"
    return coco


def _worker_ids(ray_cluster) -> set[str]:
    return {node.node_id for node in ray_cluster.workers}


@pytest.mark.timeout(240)
def test_batch_across_worker_nodes_equals_the_local_run(ray_cluster, photo_folder, tiny_checkpoint, local_coco,
                                                        tmp_path):
    out = tmp_path / "ray.json"
    result = run_segany("batch", photo_folder, "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS,
                        *FAST_AUTO, "--ray", ray_cluster.address, *RAY_WORKERS, "--no-progress", timeout=200)
    assert result.returncode == 0, result.stderr
    distributed = json.loads(out.read_text())
    assert _content(distributed) == _content(local_coco)
    spread = distributed["info"]["segany"]["run"]["ray"]
    assert set(spread["nodes"]) == _worker_ids(ray_cluster), "both worker nodes labelled, the head none"
    labelled = sorted(name for entry in spread["nodes"].values() for name in entry["images"])
    assert labelled == sorted(image["file_name"] for image in local_coco["images"]) + ["99_broken.jpg"]
    assert spread["retried"] == [] and "ray retried nothing" in result.stderr
    for node, entry in spread["nodes"].items():
        assert f"ray node {node[:12]} (127.0.0.1): {len(entry['images'])} image(s)" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_node_lost_mid_batch_loses_and_duplicates_nothing(ray_cluster, photo_folder, tiny_checkpoint,
                                                                 local_coco, tmp_path):
    out = tmp_path / "lost.json"
    victim = ray_cluster.workers[0]
    process = start_segany("batch", photo_folder, "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS,
                           *FAST_AUTO, "--ray", ray_cluster.address, *RAY_WORKERS, "--no-progress")
    try:
        deadline = time.monotonic() + 150
        while not any("image" in entry for entry in journal_lines(out)):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.1)
        ray_cluster.remove_worker(victim)  # mid-run: one image written, the others queued or in work
        stdout, stderr = process.communicate(timeout=200)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        ray_cluster.add_worker()  # later tests in this module get two workers again
    assert process.returncode == 0, stderr[-4000:]
    coco = json.loads(Path(out).read_text())
    assert _content(coco) == _content(local_coco), "an image lost, duplicated or changed"
    names = [image["file_name"] for image in coco["images"]]
    assert len(names) == len(set(names)) == 6
    spread = coco["info"]["segany"]["run"]["ray"]
    done = sorted(name for entry in spread["nodes"].values() for name in entry["images"])
    assert done == sorted([*names, "99_broken.jpg"]), "every image reported done exactly once"
    # Whether the removed node had started an image it had not finished depends on the moment: it may be
    # between rows (seen on a 2-core AMD EPYC: nothing needed starting again). Whatever it had started and not
    # finished was started again and written once (the checks above); the retries, if any, are reported.
    if not spread["retried"]:
        assert "ray retried nothing" in stderr
    for retry in spread["retried"]:
        # The lost node may have finished an image that Ray started again anyway (its row had reached this
        # process before the node went; seen in CI), and the second row is dropped. So the row that was
        # written may come from either start, but it comes from one of them.
        assert victim.node_id in retry["started_on"] and retry["done_on"] in retry["started_on"]
        assert f"ray retried {retry['file_name']}: started on" in stderr
