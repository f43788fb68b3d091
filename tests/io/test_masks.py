"""segany.io.masks: PNG, polygons (with holes), COCO polygons, boxes, overlays and image encoding."""
from __future__ import annotations

import base64
import io
import json
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from segany.errors import InvalidImage, InvalidInput
from segany.io.masks import (
    Polygon,
    encode_image,
    mask_palette,
    mask_to_bbox_xyxy,
    mask_to_png,
    mask_to_png_base64,
    mask_to_polygons,
    masks_to_bboxes_xyxy,
    overlay_masks,
    png_to_mask,
    polygons_to_coco,
    polygons_to_mask,
)

RNG = np.random.default_rng(99)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def disk(size_hw: tuple[int, int], centre_yx: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[: size_hw[0], : size_hw[1]]
    return (rows - centre_yx[0]) ** 2 + (cols - centre_yx[1]) ** 2 < radius**2


def ring_with_island() -> np.ndarray:
    """A disk with a round hole, and a small square island inside the hole."""
    mask = disk((120, 160), (60, 80), 50) & ~disk((120, 160), (58, 78), 22)
    mask[52:64, 72:84] = True
    return mask


def blob_mask(size_hw: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth random blobs (several regions, holes, islands) from thresholded blurred noise."""
    noise = np.random.default_rng(seed).standard_normal(size_hw).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 4.0) > 0.05


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Independent reference: background not 4-reachable from the border is a hole (flood fill)."""
    padded = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, flood, (0, 0), 2, flags=4)
    return (padded[1:-1, 1:-1] != 2)


# ---------------------------------------------------------------- PNG


@pytest.mark.parametrize("size_hw", [(1, 1), (7, 13), (64, 33)])
def test_png_round_trip_and_format(size_hw):
    mask = RNG.random(size_hw) > 0.5
    data = mask_to_png(mask)
    with Image.open(io.BytesIO(data)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "L", size_hw[::-1])
        pixels = np.asarray(img)
    assert set(np.unique(pixels)) <= {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask)
    np.testing.assert_array_equal(png_to_mask(data), mask)


def test_png_base64_and_data_uri():
    mask = RNG.random((9, 11)) > 0.3
    assert base64.b64decode(mask_to_png_base64(mask)) == mask_to_png(mask)
    uri = mask_to_png_base64(mask, data_uri=True)
    assert uri.startswith("data:image/png;base64,")
    np.testing.assert_array_equal(png_to_mask(base64.b64decode(uri.split(",", 1)[1])), mask)


def test_png_to_mask_reads_palette_and_lossy_masks():
    indices = RNG.integers(0, 3, (10, 12), dtype=np.uint8)  # class-index PNG, dark palette colours
    palette_img = Image.frombytes("P", (12, 10), indices.tobytes())
    palette_img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
    buffer = io.BytesIO()
    palette_img.save(buffer, format="PNG")
    np.testing.assert_array_equal(png_to_mask(buffer.getvalue()), indices != 0)

    mask = np.zeros((64, 64), bool)
    mask[16:48, 8:40] = True
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="JPEG", quality=60)
    assert iou(png_to_mask(buffer.getvalue()), mask) > 0.98


def test_png_to_mask_errors_name_the_mask_field():
    with pytest.raises(InvalidImage) as info:
        png_to_mask(mask_to_png(np.ones((8, 8), bool))[:40])
    assert info.value.field == "mask" and str(info.value).startswith("mask:")


@pytest.mark.parametrize(
    ("bad", "field"),
    [(np.zeros((2, 4, 4), bool), "mask"), (np.zeros((4, 4), np.float32), "mask"), (np.zeros(4, bool), "mask")],
)
def test_png_rejects_non_2d_and_float_masks(bad, field):
    with pytest.raises(InvalidInput) as info:
        mask_to_png(bad)
    assert info.value.field == field


# ---------------------------------------------------------------- polygons


def test_polygon_with_hole_and_island_round_trips_exactly():
    mask = ring_with_island()
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 2  # the ring (with one hole) and the island in the hole
    ring, island = polygons
    assert len(ring.holes) == 1 and island.holes == ()
    assert cv2.contourArea(np.array(ring.exterior)) > cv2.contourArea(np.array(island.exterior))  # largest first
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)
    np.testing.assert_array_equal(polygons_to_mask(polygons[::-1], mask.shape), mask)  # order-independent


def test_single_pixel_hole_and_touching_hole_round_trip():
    mask = np.zeros((10, 12), bool)
    mask[1:9, 1:10] = True
    mask[4:6, 4:7] = False
    mask[2, 2] = False  # a one-pixel hole right next to the outline
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 1 and len(polygons[0].holes) == 2
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), mask)


@pytest.mark.parametrize("kind", ["blobs", "noise"])
@pytest.mark.parametrize("seed", range(4))
def test_random_masks_round_trip_exactly(kind, seed):
    # Blobs: smooth regions, some with holes. Noise: pixel salt-and-pepper, dozens of holes and diagonal
    # (8-connected) contacts, the hard case for contour tracing.
    if kind == "blobs":
        mask = blob_mask((96, 128), seed + 2)
    else:
        mask = np.random.default_rng(seed).random((40, 50)) < 0.5
    polygons = mask_to_polygons(mask, min_points=1)
    assert len(polygons) > 5
    if kind == "noise":
        assert sum(len(p.holes) for p in polygons) > 20
    restored = polygons_to_mask(polygons, mask.shape)
    assert iou(restored, mask) == 1.0
    np.testing.assert_array_equal(restored, mask)


def test_keep_holes_false_fills_holes():
    mask = ring_with_island()
    polygons = mask_to_polygons(mask, keep_holes=False)
    assert len(polygons) == 1 and polygons[0].holes == ()
    filled = fill_holes(mask)
    assert filled.sum() > mask.sum()  # the reference really has a hole to fill
    np.testing.assert_array_equal(polygons_to_mask(polygons, mask.shape), filled)


def test_min_points_drops_specks_and_lines():
    mask = np.zeros((20, 20), bool)
    mask[2, 2] = True  # 1-point contour
    mask[5, 5:12] = True  # 2-point contour
    mask[10:15, 10:15] = True
    assert len(mask_to_polygons(mask)) == 1
    assert len(mask_to_polygons(mask, min_points=1)) == 3
    assert len(mask_to_polygons(mask, min_points=5)) == 0  # a square has 4 vertices


def test_epsilon_simplifies_but_keeps_the_shape():
    mask = disk((200, 200), (100, 100), 80)
    exact = mask_to_polygons(mask)
    simple = mask_to_polygons(mask, epsilon=1.5)
    assert len(simple[0].exterior) < len(exact[0].exterior) / 3
    assert iou(polygons_to_mask(simple, mask.shape), mask) > 0.98


def test_empty_mask_and_bad_parameters():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(InvalidInput, match="epsilon"):
        mask_to_polygons(np.ones((5, 5), bool), epsilon=-1)
    with pytest.raises(InvalidInput, match="min_points"):
        mask_to_polygons(np.ones((5, 5), bool), min_points=0)


def test_polygon_dict_round_trip_is_json_ready():
    polygons = mask_to_polygons(ring_with_island())
    as_json = json.loads(json.dumps([p.to_dict() for p in polygons]))
    assert as_json[0]["exterior"][0] == list(polygons[0].exterior[0])
    assert [Polygon.from_dict(item) for item in as_json] == polygons


# ---------------------------------------------------------------- COCO polygons


def rasterise_even_odd(coco: list[list[float]], size_hw: tuple[int, int]) -> np.ndarray:
    canvas = np.zeros(size_hw, np.uint8)
    cv2.fillPoly(canvas, [np.array(flat).reshape(-1, 2).astype(np.int32) for flat in coco], 1)
    return canvas.astype(bool)


def test_coco_polygons_keep_holes_through_a_keyhole():
    mask = ring_with_island()
    coco = polygons_to_coco(mask_to_polygons(mask))
    assert len(coco) == 2
    for flat in coco:
        assert len(flat) % 2 == 0 and len(flat) >= 6 and all(isinstance(v, float) for v in flat)
    hole_centre = (58, 78 - 16)  # inside the hole, outside the island
    assert not mask[hole_centre]
    cv2_filled = rasterise_even_odd(coco, mask.shape)  # OpenCV's fill
    assert not cv2_filled[hole_centre]
    assert iou(cv2_filled, mask) > 0.99
    pil = Image.new("1", mask.shape[::-1])
    for flat in coco:
        ImageDraw.Draw(pil).polygon(flat, fill=1)
    assert not np.asarray(pil)[hole_centre] and iou(np.asarray(pil), mask) > 0.99


def test_coco_polygons_with_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    mask = ring_with_island()
    coco = polygons_to_coco(mask_to_polygons(mask))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2 __array__ signature
        rles = mask_utils.frPyObjects(coco, *mask.shape)
        decoded = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    assert not decoded[58, 62]  # the hole stays empty
    assert decoded[58, 78]  # the island is there
    # pixel-centre vertices under COCO's pixel-edge rasteriser: about half a pixel thinner along outlines
    assert iou(decoded, mask) > 0.95


def test_holes_wound_like_the_exterior_are_reversed():
    outer = ((0, 0), (0, 20), (20, 20), (20, 0))
    hole = ((5, 5), (5, 15), (15, 15), (15, 5))  # same winding as the exterior
    (flat,) = polygons_to_coco([Polygon(outer, (hole,))])
    points = np.array(flat).reshape(-1, 2)
    x, y = points[:, 0], points[:, 1]
    signed_area = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert abs(signed_area) == pytest.approx(400 - 100)  # hole subtracted, not added


# ---------------------------------------------------------------- boxes


def slow_bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return [0, 0, 0, 0]
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


def test_bboxes_match_a_slow_reference_on_random_masks():
    masks = np.zeros((40, 23, 31), bool)
    for index in range(36):
        density = RNG.choice([0.001, 0.01, 0.2])
        masks[index] = RNG.random((23, 31)) < density
    masks[36] = True
    masks[37][22, 30] = True  # bottom-right corner pixel
    masks[38][0, 0] = True
    # masks[39] stays empty
    boxes = masks_to_bboxes_xyxy(masks)
    assert boxes.shape == (40, 4) and boxes.dtype == np.int64
    assert boxes.tolist() == [slow_bbox(m) for m in masks]
    assert boxes[39].tolist() == [0, 0, 0, 0]
    for index in (0, 36, 37, 39):
        assert mask_to_bbox_xyxy(masks[index]).tolist() == slow_bbox(masks[index])


def test_bboxes_batch_dims_and_integer_masks():
    masks = RNG.random((2, 3, 9, 7)) < 0.05
    boxes = masks_to_bboxes_xyxy(masks.astype(np.uint8))
    assert boxes.shape == (2, 3, 4)
    assert boxes.reshape(-1, 4).tolist() == [slow_bbox(m) for m in masks.reshape(-1, 9, 7)]
    assert masks_to_bboxes_xyxy(np.zeros((0, 5, 5), bool)).shape == (0, 4)
    with pytest.raises(InvalidInput) as info:
        masks_to_bboxes_xyxy(np.zeros((2, 5, 5), np.float32))
    assert info.value.field == "masks"


# ---------------------------------------------------------------- overlay


def overlay_scene() -> tuple[np.ndarray, np.ndarray]:
    image = RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    masks = np.zeros((3, 60, 80), bool)
    masks[0, 5:55, 5:75] = True  # large
    masks[1, 20:30, 20:32] = True  # small, on top of the large one
    masks[2, 40:58, 60:79] = True  # overlaps the large one's corner
    return image, masks


def test_overlay_changes_pixels_only_inside_masks():
    image, masks = overlay_scene()
    before = image.copy()
    result = overlay_masks(image, masks)
    np.testing.assert_array_equal(image, before)  # input untouched
    assert result.shape == image.shape and result.dtype == np.uint8
    union = masks.any(axis=0)
    np.testing.assert_array_equal(result[~union], image[~union])
    assert (result[union] != image[union]).any(axis=-1).mean() > 0.95


def test_overlay_small_masks_stay_on_top_with_exact_colours():
    image, masks = overlay_scene()
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    result = overlay_masks(image, masks, alpha=0.4, colors=colours, outline_px=2)

    def blend(pixel, colour):
        return np.rint(0.6 * pixel.astype(np.float64) + 0.4 * colour).astype(np.uint8)

    np.testing.assert_array_equal(result[25, 26], blend(image[25, 26], colours[1]))  # inside the small mask
    np.testing.assert_array_equal(result[20, 26], colours[1])  # the small mask's outline, over the large fill
    np.testing.assert_array_equal(result[21, 26], colours[1])  # outline is 2 px wide
    np.testing.assert_array_equal(result[22, 26], blend(image[22, 26], colours[1]))
    np.testing.assert_array_equal(result[5, 40], colours[0])  # the large mask's outline
    np.testing.assert_array_equal(result[10, 40], blend(image[10, 40], colours[0]))


def test_overlay_draws_by_area_not_by_index():
    image = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 2:12, 2:12] = True  # small, listed first, overlapping the large mask's outline
    masks[1, 5:35, 5:35] = True
    colours = np.array([[0, 255, 0], [255, 0, 0]], np.uint8)
    result = overlay_masks(image, masks, alpha=0.5, colors=colours, outline_px=2)
    small_fill = np.rint(0.5 * image[5, 8].astype(np.float64) + 0.5 * colours[0]).astype(np.uint8)
    np.testing.assert_array_equal(result[5, 8], small_fill)  # on the large outline, under the small fill
    np.testing.assert_array_equal(result[7, 7], np.rint(0.5 * image[7, 7] + 0.5 * colours[0]).astype(np.uint8))
    np.testing.assert_array_equal(result[5, 20], colours[1])  # the large outline elsewhere


def test_overlay_without_outline_is_a_pure_blend():
    image, masks = overlay_scene()
    result = overlay_masks(image, masks[:1], alpha=0.5, outline=False, colors=[(10, 200, 30)])
    inside = masks[0]
    expected = np.rint(0.5 * image[inside].astype(np.float64) + 0.5 * np.array([10, 200, 30])).astype(np.uint8)
    np.testing.assert_array_equal(result[inside], expected)
    np.testing.assert_array_equal(overlay_masks(image, masks, alpha=0.0, outline=False), image)
    np.testing.assert_array_equal(overlay_masks(image, np.zeros((0, 60, 80), bool)), image)


def test_overlay_outline_follows_image_edges_and_default_palette():
    image = np.zeros((20, 30, 3), np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[:, :10] = True  # touches the top, bottom and left image edges
    result = overlay_masks(image, mask, alpha=0.5, outline_px=1)
    colour = mask_palette(1)[0]
    np.testing.assert_array_equal(result[0, 5], colour)
    np.testing.assert_array_equal(result[10, 0], colour)
    np.testing.assert_array_equal(result[10, 9], colour)
    np.testing.assert_array_equal(result[10, 5], np.rint(colour * 0.5).astype(np.uint8))


def test_palette_is_deterministic_and_distinct():
    palette = mask_palette(32)
    assert palette.shape == (32, 3) and palette.dtype == np.uint8
    np.testing.assert_array_equal(palette, mask_palette(32))
    assert len({tuple(colour) for colour in palette}) == 32
    distances = np.abs(palette[1:].astype(int) - palette[:-1].astype(int)).sum(axis=1)
    assert distances.min() > 60  # neighbours are far apart


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"masks": np.zeros((1, 5, 5), bool)}, "masks"), ({"alpha": 1.5}, "alpha"), ({"outline_px": 0}, "outline_px"),
     ({"colors": [(1, 2)]}, "colors"), ({"image_rgb": np.zeros((60, 80), np.uint8)}, "image_rgb")],
)
def test_overlay_rejects_bad_arguments(kwargs, field):
    image, masks = overlay_scene()
    arguments = {"image_rgb": image, "masks": masks, **kwargs}
    with pytest.raises(InvalidInput) as info:
        overlay_masks(arguments.pop("image_rgb"), arguments.pop("masks"), **arguments)
    assert info.value.field == field


# ---------------------------------------------------------------- encode_image


def test_encode_image_formats(image_paths):
    with Image.open(image_paths["astronaut.png"]) as img:
        rgb = np.asarray(img.convert("RGB"))
    png = encode_image(rgb, "png")
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(decoded), rgb)
    high, low = encode_image(rgb, "jpeg", quality=95), encode_image(rgb, "JPG", quality=20)
    assert len(low) < len(high)
    with Image.open(io.BytesIO(high)) as decoded:
        assert decoded.format == "JPEG"
        assert np.abs(np.asarray(decoded).astype(int) - rgb).mean() < 4
    with Image.open(io.BytesIO(encode_image(rgb[:, :, 0], "png"))) as grey:
        assert grey.mode == "L"


@pytest.mark.parametrize(("kwargs", "field"), [({"fmt": "gif"}, "fmt"), ({"quality": 0}, "quality")])
def test_encode_image_rejects_bad_options(kwargs, field):
    with pytest.raises(InvalidInput) as info:
        encode_image(np.zeros((4, 4, 3), np.uint8), **kwargs)
    assert info.value.field == field
