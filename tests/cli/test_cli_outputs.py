"""Single-image output formats of `segany segment` / `segany auto` (png, overlay, rle, polygon, json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segany.cli.outputs import MaskSet, default_out, numbered, write_result
from segany.io.masks import Polygon, polygons_to_mask


def _masks() -> MaskSet:
    masks = np.zeros((2, 30, 40), dtype=bool)
    masks[0, 5:15, 10:30] = True
    masks[1, 20:28, 2:8] = True
    masks[1, 22:24, 4:6] = False  # a hole
    return MaskSet(masks=masks, scores=np.array([0.9, 0.4], dtype=np.float32), labels=["dog", None],
                   extras=[{"prompt": 0}, {"prompt": 1}], boxes_xyxy=np.array([[9, 4, 31, 16]], dtype=np.float32))


@pytest.fixture
def rgb() -> np.ndarray:
    return np.full((30, 40, 3), 100, dtype=np.uint8)


def test_png_writes_one_file_per_mask(tmp_path, rgb):
    found = _masks()
    written = write_result("png", str(tmp_path / "m.png"), "img.jpg", rgb, found, "tiny")
    assert written == [str(tmp_path / "m_0.png"), str(tmp_path / "m_1.png")]
    for path, mask in zip(written, found.masks):
        pixels = np.asarray(Image.open(path))
        assert pixels.dtype == np.uint8 and set(np.unique(pixels)) <= {0, 255}
        assert ((pixels == 255) == mask).all()
    one = MaskSet(masks=found.masks[:1], scores=found.scores[:1])
    assert write_result("png", str(tmp_path / "single.png"), "img.jpg", rgb, one, "tiny") == [str(tmp_path / "single.png")]


@pytest.mark.parametrize("fmt", ["rle", "polygon", "json"])
def test_json_formats(tmp_path, rgb, fmt):
    found = _masks()
    out = tmp_path / "m.json"
    write_result(fmt, str(out), "img.jpg", rgb, found, "sam2.1_hiera_tiny")
    document = json.loads(out.read_text())
    assert (document["image"], document["height"], document["width"]) == ("img.jpg", 30, 40)
    first, second = document["masks"]
    assert first["label"] == "dog" and "label" not in second
    assert [first["prompt"], second["prompt"]] == [0, 1]
    assert first["score"] == pytest.approx(0.9) and first["bbox"] == [10.0, 5.0, 20.0, 10.0]
    assert [first["area"], second["area"]] == [200, 44]
    assert ("rle" in first) == (fmt in ("rle", "json")) and ("polygons" in first) == (fmt in ("polygon", "json"))
    for entry, mask in zip(document["masks"], found.masks):
        if "rle" in entry:
            decoded = mask_utils.decode(entry["rle"] | {"counts": entry["rle"]["counts"].encode()})
            assert (decoded.astype(bool) == mask).all()
        if "polygons" in entry:
            polygons = [Polygon(tuple(map(tuple, p["exterior"])), tuple(tuple(map(tuple, h)) for h in p["holes"]))
                        for p in entry["polygons"]]
            assert (polygons_to_mask(polygons, (30, 40)) == mask).all()


def test_json_to_stdout(rgb, capsys):
    write_result("rle", "-", "img.jpg", rgb, _masks(), "tiny")
    assert len(json.loads(capsys.readouterr().out)["masks"]) == 2


def test_overlay_colours_masks_and_draws_the_prompt_box(tmp_path, rgb):
    out = tmp_path / "o.png"
    write_result("overlay", str(out), "img.jpg", rgb, _masks(), "tiny")
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape == rgb.shape
    changed = (picture != rgb).any(axis=2)
    assert changed[10, 20] and changed[25, 3]  # inside each mask
    assert not changed[0, 39] and not changed[29, 39]  # outside masks and box
    assert tuple(picture[4, 20]) == (255, 255, 255)  # the box's top edge


def test_overlay_as_jpeg_by_suffix(tmp_path, rgb):
    out = tmp_path / "o.jpg"
    write_result("overlay", str(out), "img.jpg", rgb, _masks(), "tiny")
    assert Image.open(out).format == "JPEG"


def test_default_outputs():
    assert default_out("json", "dir/cat.jpg") == "-"
    assert default_out("png", "dir/cat.jpg") == "cat.mask.png"
    assert default_out("overlay", "dir/cat.jpg") == "cat.overlay.png"
    assert numbered(Path("a/m.png"), 3).as_posix() == "a/m_3.png"
