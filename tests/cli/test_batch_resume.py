"""`segany batch` through the console script: interrupted twice (Ctrl-C, then killed), resumed, valid COCO."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segany_cli_helpers import BROKEN_IMAGE, GOOD_IMAGES


def _by_name(coco: dict) -> dict[str, dict]:
    return {image["file_name"]: image for image in coco["images"]}


def _annotations_of(coco: dict, file_name: str) -> list[dict]:
    image_id = _by_name(coco)[file_name]["id"]
    return [a for a in coco["annotations"] if a["image_id"] == image_id]


def test_ctrl_c_saves_finished_images_and_exits_130(resumed_run):
    first = resumed_run.first
    assert first.returncode == 130, first.stderr
    assert "rerun the same command to continue" in first.stderr
    done = set(_by_name(resumed_run.after_first))
    assert done and done < set(GOOD_IMAGES)
    assert not resumed_run.out.with_name(resumed_run.out.name + ".journal").exists()


def test_killed_run_leaves_its_finished_images_in_the_journal(resumed_run):
    journalled = [entry["image"]["file_name"] for entry in resumed_run.killed_journal if "image" in entry]
    assert journalled, "the killed run finished no image"
    assert not set(journalled) & set(_by_name(resumed_run.after_first)), "a done image was labelled again"


def test_resumed_run_skips_done_images_and_keeps_earlier_results(resumed_run):
    last, final = resumed_run.last, resumed_run.final
    assert last.returncode == 0, last.stderr
    assert "already done" in last.stderr and "resuming" in last.stderr
    assert sorted(_by_name(final)) == sorted(GOOD_IMAGES)
    for name in _by_name(resumed_run.after_first):  # identical entries, ids included
        assert _by_name(final)[name] == _by_name(resumed_run.after_first)[name]
        assert _annotations_of(final, name) == _annotations_of(resumed_run.after_first, name)
    for entry in resumed_run.killed_journal:
        if "image" in entry:
            assert _by_name(final)[entry["image"]["file_name"]] == entry["image"]
            assert _annotations_of(final, entry["image"]["file_name"]) == entry["annotations"]
    ids = [a["id"] for a in final["annotations"]]
    assert len(ids) == len(set(ids)) and len({i["id"] for i in final["images"]}) == len(final["images"])
    assert not resumed_run.out.with_name(resumed_run.out.name + ".journal").exists()


def test_corrupt_image_is_reported_and_skipped_not_fatal(resumed_run):
    final, last = resumed_run.final, resumed_run.last
    assert f"skipped {BROKEN_IMAGE}" in last.stderr
    assert BROKEN_IMAGE not in _by_name(final)
    assert "corrupt" in final["info"]["segany"]["skipped"][BROKEN_IMAGE]
    assert "notes.txt" not in final["info"]["segany"]["skipped"]  # not an image suffix: never listed


def test_progress_bar_shows_rate_and_time_left(resumed_run):
    err = resumed_run.last.stderr
    assert "segany batch:" in err
    assert "img/s" in err or "s/img" in err  # the rate
    assert "2/2 [" in err and "<" in err  # done/total of this run (the broken image and one left), [elapsed<left


def test_output_is_coco_that_pycocotools_loads(resumed_run):
    coco = COCO(str(resumed_run.out))
    final = resumed_run.final
    assert final["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert len(coco.getImgIds()) == len(GOOD_IMAGES)
    assert len(final["annotations"]) >= len(GOOD_IMAGES)  # random weights still leave a mask per image here
    for annotation in final["annotations"]:
        image = coco.imgs[annotation["image_id"]]
        mask = coco.annToMask(annotation)
        assert mask.shape == (image["height"], image["width"])
        assert int(mask.sum()) == annotation["area"]
        assert annotation["iscrowd"] == 0 and 0.0 <= annotation["score"] <= 1.5
        ys, xs = np.nonzero(mask)
        if len(xs):
            expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert annotation["bbox"] == pytest.approx(expected)
        assert mask_utils.area(annotation["segmentation"] | {"counts": annotation["segmentation"]["counts"].encode()}) \
            == annotation["area"]
        assert {"stability_score", "point_coords", "crop_box"} <= set(annotation)
    # Also valid as a detection-results file (loadRes rewrites the dicts it gets: give it a copy).
    results = coco.loadRes(copy.deepcopy(final["annotations"]))
    assert len(results.getAnnIds()) == len(final["annotations"])
