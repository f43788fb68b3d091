"""`segany batch --ray`: Ray Data on a local 2-CPU instance (127.0.0.1) gives the local run's COCO file."""
from __future__ import annotations

import json

import pytest

from segany_cli_helpers import BROKEN_IMAGE, FAST_AUTO, MODEL_FLAGS, run_segany

pytest.importorskip("ray", reason="Ray is the optional extra segany[ray]")
pytest.importorskip("ray.data", reason="Ray Data is part of segany[ray]")


def _content(coco: dict) -> dict:
    """Everything but the creation date and the run's device settings."""
    return {key: coco[key] for key in ("images", "annotations", "categories")} | {
        "skipped": coco["info"]["segany"]["skipped"], "run": coco["info"]["segany"]["run"]}


def test_ray_batch_equals_the_local_batch(tmp_path, image_folder, tiny_checkpoint, resumed_run):
    out = tmp_path / "ray.json"
    result = run_segany("batch", image_folder, "--out", out, "--checkpoint", tiny_checkpoint, *MODEL_FLAGS, *FAST_AUTO,
                        "--ray", "--ray-num-cpus", "2", "--ray-workers", "2", "--no-progress", timeout=900)
    assert result.returncode == 0, result.stderr
    assert f"skipped {BROKEN_IMAGE}" in result.stderr
    distributed = json.loads(out.read_text())
    local = resumed_run.final  # the same images and settings, labelled by three local runs
    assert local["annotations"], "nothing to compare"
    assert _content(distributed) == _content(local)

