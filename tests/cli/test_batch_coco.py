"""The COCO writer: ids, categories, journal replay after a crash, atomic rewrites, skipped images."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
from pycocotools.coco import COCO

from segany.batch.annotate import rle_bbox_xywh
from segany.batch.coco import CocoWriter, journal_path, write_json_atomic
from segany.errors import InvalidInput
from segany.io.rle import coco_encode

RUN = {"mode": "auto", "model": "sam2.1_hiera_tiny", "config": {"amg": {"points_per_side": 4}}}


def _record(mask: np.ndarray, category: str = "object", score: float = 0.5) -> dict:
    rle = coco_encode(mask)
    return {"segmentation": rle, "area": int(mask.sum()), "bbox": rle_bbox_xywh(rle), "score": score,
            "category": category, "stability_score": 0.9}


def _square(size_hw=(20, 30), box=(2, 3, 10, 12)) -> np.ndarray:
    mask = np.zeros(size_hw, dtype=bool)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_images_annotations_and_categories_get_sequential_ids(tmp_path):
    out = tmp_path / "a.json"
    writer = CocoWriter.open(out, run_info=RUN, categories=["dog", "cat"])
    assert writer.add_image("x.jpg", (20, 30), [_record(_square(), "cat"), _record(_square(), "bird")]) == 2
    assert writer.add_image("y.jpg", (20, 30), []) == 0
    writer.add_image("z.jpg", (20, 30), [_record(_square(), "dog")])
    writer.close()
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["dog", "cat", "bird"]
    assert [(i["id"], i["file_name"]) for i in coco["images"]] == [(1, "x.jpg"), (2, "y.jpg"), (3, "z.jpg")]
    assert [(a["id"], a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(1, 1, 2), (2, 1, 3), (3, 3, 1)]
    assert coco["annotations"][0]["bbox"] == [2.0, 3.0, 8.0, 9.0] and coco["annotations"][0]["stability_score"] == 0.9
    loaded = COCO(str(out))
    assert (loaded.annToMask(coco["annotations"][0]) == _square()).all()
    assert not journal_path(out).exists()


def test_a_crash_keeps_journalled_images_and_ignores_a_torn_line(tmp_path):
    out = tmp_path / "a.json"
    writer = CocoWriter.open(out, run_info=RUN, checkpoint_every_s=3600)
    writer.add_image("x.jpg", (20, 30), [_record(_square())])
    writer.checkpoint()  # x is in the file
    writer.add_image("y.jpg", (20, 30), [_record(_square()), _record(_square(box=(0, 0, 5, 5)))])
    writer.add_skipped("bad.jpg", "corrupt")
    # The process dies here: y and the skip are only in the journal, and a line was half written.
    with open(journal_path(out), "a") as journal:
        journal.write('{"image": {"id": 9, "file_na')
    assert [i["file_name"] for i in json.loads(out.read_text())["images"]] == ["x.jpg"]

    resumed = CocoWriter.open(out, run_info=RUN)
    assert resumed.is_done("x.jpg") and resumed.is_done("y.jpg") and not resumed.is_done("bad.jpg")
    assert resumed.skipped == {"bad.jpg": "corrupt"}
    resumed.add_image("bad.jpg", (20, 30), [_record(_square())])  # readable now: no longer skipped
    resumed.close()
    coco = json.loads(out.read_text())
    assert [i["id"] for i in coco["images"]] == [1, 2, 3]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3, 4]
    assert coco["info"]["segany"]["skipped"] == {}
    assert coco["info"]["segany"]["run"] == RUN


def test_replayed_entries_already_in_the_file_are_not_duplicated(tmp_path):
    out = tmp_path / "a.json"
    writer = CocoWriter.open(out, run_info=RUN, checkpoint_every_s=3600)
    writer.add_image("x.jpg", (20, 30), [_record(_square())])
    journal = journal_path(out).read_text()
    writer.close()
    journal_path(out).write_text(journal)  # a crash between the rename and the journal's removal
    resumed = CocoWriter.open(out, run_info=RUN)
    assert len(resumed.images) == 1 and len(resumed.annotations) == 1


def test_checkpoints_happen_while_running(tmp_path):
    out = tmp_path / "a.json"
    writer = CocoWriter.open(out, run_info=RUN, checkpoint_every_s=0)
    writer.add_image("x.jpg", (20, 30), [_record(_square())])
    assert json.loads(out.read_text())["images"][0]["file_name"] == "x.jpg"
    writer.close()


def test_overwrite_starts_over(tmp_path):
    out = tmp_path / "a.json"
    writer = CocoWriter.open(out, run_info=RUN)
    writer.add_image("x.jpg", (20, 30), [])
    writer.close()
    fresh = CocoWriter.open(out, run_info=RUN, overwrite=True)
    assert not fresh.is_done("x.jpg") and not out.exists()


def test_adding_a_done_image_again_is_an_error(tmp_path):
    writer = CocoWriter.open(tmp_path / "a.json", run_info=RUN)
    writer.add_image("x.jpg", (2, 2), [])
    with pytest.raises(ValueError):
        writer.add_image("x.jpg", (2, 2), [])


@pytest.mark.parametrize("content", ["{not json", '{"images": []}', "[1, 2]"])
def test_an_output_that_is_not_coco_is_not_overwritten_silently(tmp_path, content):
    out = tmp_path / "a.json"
    out.write_text(content)
    with pytest.raises(InvalidInput) as error:
        CocoWriter.open(out, run_info=RUN)
    assert error.value.field == "out" and "--overwrite" in str(error.value)
    assert out.read_text() == content


def test_readers_never_see_a_partial_file(tmp_path):
    out = tmp_path / "big.json"
    small, big = {"n": 0, "data": []}, {"n": 1, "data": list(range(300_000))}
    write_json_atomic(out, small)
    seen, stop = [], threading.Event()

    def read_forever() -> None:
        while not stop.is_set():
            seen.append(json.loads(out.read_text())["n"])  # raises if a half-written file were visible

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for _ in range(5):
            write_json_atomic(out, big)
            write_json_atomic(out, small)
    finally:
        stop.set()
        reader.join()
    assert set(seen) <= {0, 1} and len(seen) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["big.json"]  # no temporary files left behind


def test_a_failed_write_leaves_the_old_file(tmp_path):
    out = tmp_path / "a.json"
    write_json_atomic(out, {"ok": True})
    with pytest.raises(ValueError):
        write_json_atomic(out, {"bad": float("nan")})  # JSON has no NaN
    assert json.loads(out.read_text()) == {"ok": True}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_rle_bbox_is_the_pixel_extent():
    mask = _square(box=(4, 1, 9, 7))
    assert rle_bbox_xywh(coco_encode(mask)) == [4.0, 1.0, 5.0, 6.0]
    assert rle_bbox_xywh(coco_encode(np.zeros((5, 5), dtype=bool))) == [0.0, 0.0, 0.0, 0.0]


def test_a_run_that_adds_nothing_writes_nothing(tmp_path):
    out = tmp_path / "a.json"
    CocoWriter.open(out, run_info=RUN).close()  # e.g. the model failed to load before the first image
    assert not out.exists()
    writer = CocoWriter.open(out, run_info=RUN)
    writer.add_image("x.jpg", (2, 2), [])
    writer.close()
    before = out.stat().st_mtime_ns, out.read_text()
    time.sleep(0.01)
    CocoWriter.open(out, run_info=RUN).close()  # a rerun with everything done
    assert (out.stat().st_mtime_ns, out.read_text()) == before
