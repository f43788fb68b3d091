"""Batch inputs (folder, glob, list file, one image) and the --boxes file."""
from __future__ import annotations

import json
import os

import pytest

from segany.batch.boxes import load_box_prompts
from segany.batch.inputs import find_images
from segany.errors import InvalidInput


@pytest.fixture
def tree(tmp_path):
    for name in ("b.jpg", "a.PNG", "sub/c.webp", "sub/deep/d.tif", ".hidden/e.jpg", "sub/.f.jpg", "notes.txt",
                 "other/g.jpg"):
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "data"


def _names(items):
    return [item.file_name for item in items]


def test_folder_is_searched_recursively_skipping_hidden_and_non_images(tree):
    items = find_images(tree)
    assert _names(items) == ["a.PNG", "b.jpg", "other/g.jpg", "sub/c.webp", "sub/deep/d.tif"]
    assert all(os.path.isabs(item.path) and os.path.isfile(item.path) for item in items)


def test_glob_names_are_relative_to_its_fixed_folder(tree):
    assert _names(find_images(f"{tree}/sub/**/*")) == ["c.webp", "deep/d.tif"]
    assert _names(find_images(f"{tree}/*.jpg")) == ["b.jpg"]
    assert _names(find_images(f"{tree}/*/*.jpg")) == ["other/g.jpg"]


def test_list_file_relative_entries_are_relative_to_the_list(tree, tmp_path):
    listing = tree / "list.txt"
    listing.write_text(f"# my images\nb.jpg\n\n  sub/c.webp  # a comment\n{tmp_path / 'elsewhere.jpg'}\nb.jpg\n")
    items = find_images(listing)
    assert _names(items) == sorted(["b.jpg", "sub/c.webp", (tmp_path / "elsewhere.jpg").as_posix()])
    assert {item.path for item in items} >= {str(tree / "b.jpg"), str(tree / "sub" / "c.webp")}


def test_a_single_image(tree):
    assert _names(find_images(tree / "sub" / "c.webp")) == ["c.webp"]


@pytest.mark.parametrize("source", ["missing", "missing/*.jpg", "empty"])
def test_nothing_to_label_is_an_input_error(tmp_path, source):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput) as error:
        find_images(tmp_path / source)
    assert error.value.field == "input"


def test_boxes_file_mapping_layouts(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps({
        "x.jpg": [[1, 2, 3, 4], {"box_xyxy": [0, 0, 5, 5], "label": "dog", "score": 0.7},
                  {"bbox": [10, 10, 4, 6], "class": "cat"}, {"x": 10, "y": 20, "width": 4, "height": 2, "confidence": 1}],
        "sub/y.jpg": [],
    }))
    prompts = load_box_prompts(path)
    boxes = prompts.for_image("x.jpg")
    assert [b.box_xyxy for b in boxes] == [(1, 2, 3, 4), (0, 0, 5, 5), (10, 10, 14, 16), (8, 19, 12, 21)]
    assert [b.label for b in boxes] == [None, "dog", "cat", None]
    assert [b.score for b in boxes] == [None, 0.7, None, 1.0]
    assert prompts.labels() == ["object", "dog", "cat"] and len(prompts) == 4
    assert prompts.for_image("other/x.jpg") == boxes  # a bare base name matches in any folder
    assert prompts.for_image("y.jpg") == [] and prompts.for_image("nothing.jpg") == []


def test_boxes_file_coco_layout(tmp_path):
    path = tmp_path / "det.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a/x.jpg"}, {"id": 8, "file_name": "y.jpg"}],
        "annotations": [{"image_id": 7, "bbox": [1, 2, 10, 20], "category_id": 3, "score": 0.5},
                        {"image_id": 7, "bbox": [0, 0, 1, 1], "category_id": 4}],
        "categories": [{"id": 3, "name": "dog"}, {"id": 4, "name": "cat"}],
    }))
    prompts = load_box_prompts(path)
    assert [(b.box_xyxy, b.label, b.score) for b in prompts.for_image("a/x.jpg")] == [
        ((1, 2, 11, 22), "dog", 0.5), ((0, 0, 1, 1), "cat", None)]
    assert prompts.for_image("b/x.jpg") == []  # "a/x.jpg" is not a bare base name
    assert prompts.for_image("y.jpg") == []


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ('{"x.jpg": [[1, 2, 3]]}', "boxes[x.jpg][0]"),
        ('{"x.jpg": [[5, 5, 1, 1]]}', "boxes[x.jpg][0]"),
        ('{"x.jpg": [{"label": "dog"}]}', "boxes[x.jpg][0]"),
        ('{"x.jpg": [{"box": [0, 0, 1, 1], "score": "high"}]}', "boxes[x.jpg][0].score"),
        ('{"x.jpg": "0,0,1,1"}', "boxes[x.jpg]"),
        ('[1, 2]', "boxes"),
        ("{nope", "boxes"),
        ('{"images": [{"id": 1, "file_name": "x"}], "annotations": [{"image_id": 2, "bbox": [0, 0, 1, 1]}]}',
         "boxes.annotations[0]"),
    ],
)
def test_bad_boxes_files_name_the_entry(tmp_path, content, field):
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(InvalidInput) as error:
        load_box_prompts(path)
    assert error.value.field == field
