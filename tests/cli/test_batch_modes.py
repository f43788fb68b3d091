"""`segany batch --mode boxes` and `--mode text` through the console script."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from segany_cli_helpers import IMAGES, MODEL_FLAGS, build_tiny_owlv2, run_segany


@pytest.fixture(scope="module")
def two_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    Image.open(IMAGES / "chelsea.png").convert("RGB").resize((96, 64)).save(folder / "cat.png")
    Image.open(IMAGES / "coffee.png").convert("RGB").resize((60, 40)).save(folder / "mug.png")
    return folder


def test_boxes_mode_labels_masks_with_the_box_labels(tmp_path, two_images, tiny_checkpoint):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"cat.png": [{"box_xyxy": [10, 5, 60, 50], "label": "cat", "score": 0.75},
                                             [0, 0, 20, 20]]}))
    listing = two_images / "list.txt"
    listing.write_text("cat.png\nmug.png\n")
    out = tmp_path / "boxes_out.json"
    result = run_segany("batch", listing, "--out", out, "--mode", "boxes", "--boxes", boxes,
                        "--checkpoint", tiny_checkpoint, *MODEL_FLAGS, "--no-progress")
    assert result.returncode == 0, result.stderr
    coco = json.loads(out.read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "object"]
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [("cat.png", 96, 64), ("mug.png", 60, 40)]
    first, second = coco["annotations"]  # mug.png has no boxes: listed, with no annotation
    assert (first["image_id"], first["category_id"], first["score"]) == (1, 1, 0.75)
    assert first["box_xyxy"] == [10.0, 5.0, 60.0, 50.0] and 0.0 <= first["mask_score"] <= 1.5
    assert (second["category_id"], second["score"]) == (2, second["mask_score"])  # no given score: the mask's
    loaded = COCO(str(out))
    assert loaded.annToMask(first).shape == (64, 96)


def test_text_mode_categories_are_the_phrases(tmp_path, two_images, tiny_checkpoint):
    detector = build_tiny_owlv2(tmp_path / "owl")
    out = tmp_path / "text_out.json"
    result = run_segany("batch", two_images / "cat.png", "--out", out, "--mode", "text", "--text", "Cat. mug.",
                        "--detector", detector, "--box-threshold", "0", "--checkpoint", tiny_checkpoint, *MODEL_FLAGS,
                        "--no-progress")
    assert result.returncode == 0, result.stderr
    coco = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "Cat"), (2, "mug")]
    annotations = coco["annotations"]
    assert len(annotations) == 4  # a 32x32 input with 16x16 patches: 4 boxes, all above threshold 0
    scores = [a["score"] for a in annotations]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)  # detector confidences
    assert {a["category_id"] for a in annotations} <= {1, 2}
    for annotation in annotations:
        x0, y0, x1, y1 = annotation["box_xyxy"]
        assert 0 <= x0 <= x1 <= 96 and 0 <= y0 <= y1 <= 64
    assert coco["info"]["segany"]["run"]["config"]["text"] == "Cat. mug."
