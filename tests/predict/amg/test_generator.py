"""MaskGenerator: the official records on every AMG golden, and its own knobs and checks."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import segany
from fixture_paths import GOLDENS, IMAGES, SHARED
from segany.errors import InvalidImage, InvalidInput
from segany.io.rle import coco_decode, rle_to_mask
from segany.predict.amg.generator import MaskGenerator

MASK_IOU_MIN = 0.99  # acceptance criteria of the goldens (../shared/fixtures/README.md)
SCORE_ATOL = 1e-4
MATCHED_MIN = 0.99
EXTRA_MAX = 0.01
GOLDEN_FILES = sorted(GOLDENS.glob("amg_*.json"))


def _load_synthetic_decoder():
    spec = importlib.util.spec_from_file_location("synthetic_decoder", SHARED / "tools" / "synthetic_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SyntheticPredictor:
    """The shared stand-in decoder behind the generator's predictor protocol."""

    def __init__(self) -> None:
        self._decoder = _load_synthetic_decoder()
        self.embedded_shapes: list[tuple[int, ...]] = []
        self.decoded_points = 0

    def embed(self, image: np.ndarray) -> tuple[int, ...]:
        self.embedded_shapes.append(image.shape)
        return image.shape  # the synthetic decoder needs nothing from the image

    def decode(self, embedding, point_coords, point_labels, mask_input=None, multimask_output=True):
        self.decoded_points += point_coords.shape[0]
        return self._decoder.decode(point_coords, point_labels, mask_input, multimask_output)


def _image(name: str) -> np.ndarray:
    return np.asarray(Image.open(IMAGES / name).convert("RGB"))


def _key(record: dict) -> tuple:
    return tuple(map(tuple, record["point_coords"])), tuple(record["crop_box"])


def _matches(mine: dict, golden: dict) -> bool:
    iou = mask_utils.iou([_pycoco(mine["segmentation"])], [_pycoco(golden["segmentation"])], [0])[0][0]
    return (
        iou >= MASK_IOU_MIN
        and abs(mine["predicted_iou"] - golden["predicted_iou"]) <= SCORE_ATOL
        and abs(mine["stability_score"] - golden["stability_score"]) <= SCORE_ATOL
    )


def _pycoco(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode()}


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_records_match_official_golden(path: Path):
    golden = json.loads(path.read_text())
    generator = MaskGenerator(SyntheticPredictor(), output_mode="coco_rle", **golden["params"])
    records = generator.generate(_image(golden["image"]))

    by_key: dict[tuple, list[dict]] = {}
    for record in records:
        by_key.setdefault(_key(record), []).append(record)
    matched = sum(any(_matches(m, g) for m in by_key.get(_key(g), [])) for g in golden["records"])
    n_golden = len(golden["records"])
    assert n_golden > 0
    assert matched >= MATCHED_MIN * n_golden, f"{matched}/{n_golden} golden records matched"
    assert len(records) - matched <= EXTRA_MAX * n_golden
    assert list(records[0]) == list(golden["records"][0])  # same fields, same order
    # Records come in the official order (the ones both sides have, should a rare one differ).
    mine, theirs = [_key(r) for r in records], [_key(g) for g in golden["records"]]
    both = set(mine) & set(theirs)
    assert [k for k in mine if k in both] == [k for k in theirs if k in both]
    for record in records:
        assert isinstance(record["area"], int)
        assert record["area"] == int(mask_utils.area(_pycoco(record["segmentation"])))


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return _image("chelsea.png")


SMALL = dict(points_per_side=8, pred_iou_thresh=0.7, stability_score_thresh=0.8)


@pytest.fixture(scope="module")
def small_records(chelsea) -> list[dict]:
    return MaskGenerator(SyntheticPredictor(), output_mode="uncompressed_rle", **SMALL).generate(chelsea)


def test_output_modes_describe_the_same_masks(chelsea, small_records):
    assert len(small_records) > 5
    binary = MaskGenerator(SyntheticPredictor(), output_mode="binary_mask", **SMALL).generate(chelsea)
    coco = MaskGenerator(SyntheticPredictor(), output_mode="coco_rle", **SMALL).generate(chelsea)
    assert len(binary) == len(coco) == len(small_records)
    for as_rle, as_mask, as_coco in zip(small_records, binary, coco):
        mask = as_mask["segmentation"]
        assert mask.dtype == bool and mask.shape == chelsea.shape[:2]
        np.testing.assert_array_equal(rle_to_mask(as_rle["segmentation"]), mask)
        np.testing.assert_array_equal(coco_decode(as_coco["segmentation"]), mask)
        assert as_mask["area"] == int(mask.sum())
        ys, xs = np.nonzero(mask)
        left, top = float(xs.min()), float(ys.min())
        assert as_mask["bbox"] == [left, top, float(xs.max()) - left, float(ys.max()) - top]


@pytest.mark.parametrize("limit", [0, 1, 4, -1, 10_000])
def test_max_masks_keeps_the_best_by_predicted_iou_in_order(chelsea, small_records, limit):
    records = MaskGenerator(SyntheticPredictor(), output_mode="uncompressed_rle", max_masks=limit, **SMALL).generate(chelsea)
    expected_count = len(small_records) if limit < 0 else min(limit, len(small_records))
    assert len(records) == expected_count
    best = sorted(small_records, key=lambda r: -r["predicted_iou"])[:expected_count]
    assert {_key(r) for r in records} == {_key(r) for r in best}
    positions = [small_records.index(r) for r in records]
    assert positions == sorted(positions)  # the official output order is kept


def test_progress_reports_every_batch(chelsea):
    calls: list[tuple[int, int]] = []
    predictor = SyntheticPredictor()
    generator = MaskGenerator(
        predictor, points_per_side=6, points_per_batch=10, crop_n_layers=1, crop_n_points_downscale_factor=2
    )
    generator.generate(chelsea, progress=lambda done, total: calls.append((done, total)))
    # 36 points -> 4 batches on the full image; 9 points -> 1 batch on each of 4 crops
    assert calls == [(k, 8) for k in range(1, 9)]
    assert len(predictor.embedded_shapes) == 5  # one embedding per crop, not per batch


def test_crops_embed_each_crop_and_prefer_smaller_crops(chelsea):
    predictor = SyntheticPredictor()
    records = MaskGenerator(
        predictor, points_per_side=8, crop_n_layers=1, pred_iou_thresh=0.7, stability_score_thresh=0.8
    ).generate(chelsea)
    height, width = chelsea.shape[:2]
    assert predictor.embedded_shapes[0] == (height, width, 3)
    assert all(shape[0] < height and shape[1] < width for shape in predictor.embedded_shapes[1:])
    crop_areas = [r["crop_box"][2] * r["crop_box"][3] for r in records]
    assert crop_areas == sorted(crop_areas)  # the cross-crop NMS ranks smaller crops first


def test_m2m_decodes_every_mask_again(chelsea):
    predictor = SyntheticPredictor()
    MaskGenerator(predictor, points_per_side=4, use_m2m=True).generate(chelsea)
    assert predictor.decoded_points == 16 + 16 * 3  # first pass, then one refinement per mask


def test_accepts_pil_images(chelsea, small_records):
    records = MaskGenerator(SyntheticPredictor(), output_mode="uncompressed_rle", **SMALL).generate(
        Image.fromarray(chelsea)
    )
    assert [r["segmentation"] for r in records] == [r["segmentation"] for r in small_records]


BAD_PARAMS = [
    ("points_per_side", {"points_per_side": 0}),
    ("points_per_side", {"points_per_side": 2.5}),
    ("point_grids", {"points_per_side": None}),
    ("point_grids", {"point_grids": [np.array([[0.5, 0.5]])]}),
    ("point_grids", {"points_per_side": None, "point_grids": [np.array([[0.5, 1.5]])]}),
    ("point_grids", {"points_per_side": None, "point_grids": [np.array([[0.5, 0.5]])], "crop_n_layers": 1}),
    ("points_per_batch", {"points_per_batch": 0}),
    ("pred_iou_thresh", {"pred_iou_thresh": 1.5}),
    ("pred_iou_thresh", {"pred_iou_thresh": float("nan")}),
    ("stability_score_thresh", {"stability_score_thresh": -0.1}),
    ("stability_score_offset", {"stability_score_offset": -1.0}),
    ("mask_threshold", {"mask_threshold": float("inf")}),
    ("box_nms_thresh", {"box_nms_thresh": 2}),
    ("crop_n_layers", {"crop_n_layers": -1}),
    ("crop_nms_thresh", {"crop_nms_thresh": "high"}),
    ("crop_overlap_ratio", {"crop_overlap_ratio": 1.0}),
    ("crop_n_points_downscale_factor", {"crop_n_points_downscale_factor": 0}),
    ("crop_n_points_downscale_factor", {"points_per_side": 4, "crop_n_layers": 3, "crop_n_points_downscale_factor": 2}),
    ("min_mask_region_area", {"min_mask_region_area": -5}),
    ("output_mode", {"output_mode": "png"}),
    ("use_m2m", {"use_m2m": "yes"}),
    ("multimask_output", {"multimask_output": 1}),
    ("max_masks", {"max_masks": -2}),
    ("max_masks", {"max_masks": True}),
]


@pytest.mark.parametrize("field,kwargs", BAD_PARAMS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_PARAMS)])
def test_bad_parameters_name_the_field(field, kwargs):
    with pytest.raises(InvalidInput) as excinfo:
        MaskGenerator(SyntheticPredictor(), **kwargs)
    assert excinfo.value.field == field
    assert field in str(excinfo.value)


def test_explicit_point_grids_replace_points_per_side(chelsea):
    grid = np.array([[0.25, 0.5], [0.75, 0.5]])
    predictor = SyntheticPredictor()
    records = MaskGenerator(predictor, points_per_side=None, point_grids=[grid], pred_iou_thresh=0.0,
                            stability_score_thresh=0.0).generate(chelsea)
    assert predictor.decoded_points == 2
    height, width = chelsea.shape[:2]
    expected = {(float(np.float32(x * width)), float(np.float32(y * height))) for x, y in grid}
    assert {tuple(r["point_coords"][0]) for r in records} <= expected


def test_rejects_a_non_image():
    with pytest.raises(InvalidImage):
        MaskGenerator(SyntheticPredictor()).generate(np.zeros((4, 4), dtype=np.float32))


class CachedEmbedding:
    """A real predictor whose one image is embedded once, for the generator and the reference alike."""

    def __init__(self, predictor) -> None:
        self.predictor, self.embedding = predictor, None

    def embed(self, image):
        if self.embedding is None:
            self.embedding = self.predictor.embed(image)
        return self.embedding

    def decode(self, *args, **kwargs):
        return self.predictor.decode(*args, **kwargs)


def _dense_reference(predictor, image: np.ndarray, per_side: int, min_area: int, nms_thresh: float) -> list[dict]:
    """Official-style single-crop generation: every mask upsampled to full size, no thresholds on scores."""
    from segany.predict.amg.filters import batched_nms, fill_small_regions
    from segany.predict.amg.geometry import build_point_grid

    height, width = image.shape[:2]
    points = torch.from_numpy(build_point_grid(per_side) * np.array([[width, height]]))
    model_points = (points / torch.tensor([width, height]) * 1024).float()
    logits, iou = predictor.decode(predictor.embed(image), model_points[:, None], torch.ones(len(points), 1, dtype=torch.int32))
    logits, iou = logits.flatten(0, 1), iou.flatten(0, 1)
    points = points.repeat_interleave(3, dim=0)
    logits = fill_small_regions(logits, min_area, 0.0)
    up = torch.nn.functional.interpolate(logits[:, None], (height, width), mode="bilinear", align_corners=False)[:, 0]
    stability = (up > 1.0).flatten(1).sum(1).int() / (up > -1.0).flatten(1).sum(1).int()
    masks = up > 0.0
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask.numpy())
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()] if len(ys) else [0, 0, 0, 0])
    boxes = torch.tensor(boxes, dtype=torch.float32)
    keep = batched_nms(boxes, iou, torch.zeros(len(iou)), nms_thresh)
    return [
        {
            "segmentation": masks[k].numpy(),
            "bbox": [float(boxes[k, 0]), float(boxes[k, 1]), float(boxes[k, 2] - boxes[k, 0]), float(boxes[k, 3] - boxes[k, 1])],
            "predicted_iou": float(iou[k]),
            "point_coords": [[float(np.float32(v)) for v in points[k].tolist()]],
            "stability_score": float(stability[k]),
        }
        for k in keep
    ]


def test_real_predictor_matches_a_dense_reference(tiny_predictor):
    """The tiny model (random weights: noisy masks with ragged outlines) through the same door."""
    image = _image("coffee.png")[:160, :200]
    predictor = CachedEmbedding(tiny_predictor)
    params = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=6,
                  box_nms_thresh=1.0)  # random-weight masks all span the image: keep them all
    records = MaskGenerator(predictor, output_mode="binary_mask", **params).generate(image)
    expected = _dense_reference(predictor, image, 4, 6, 1.0)
    assert len(records) == len(expected) > 1
    for got, want in zip(records, expected):
        np.testing.assert_array_equal(got["segmentation"], want["segmentation"])
        assert got["area"] == int(want["segmentation"].sum())
        for key in ("bbox", "point_coords", "predicted_iou"):
            assert got[key] == want[key], key
        assert got["stability_score"] == want["stability_score"] or np.isnan(want["stability_score"])
    assert segany.MaskGenerator is MaskGenerator
