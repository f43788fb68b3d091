"""Encoders from boolean masks to the output formats the API dialects return (RLE lives in `segany.io.rle`).

Masks are numpy bool arrays (H, W) or (N, H, W) in image pixels; integer 0/1 arrays are accepted (nonzero ->
True) but float arrays are rejected, since they are usually logits or probabilities that need a threshold first.
Polygon vertices are OpenCV contour points: (x, y) = (column, row) of the *centres* of boundary pixels, the
convention of OpenCV, supervision and Roboflow.
"""
from __future__ import annotations

import base64
import colorsys
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from segany.errors import InvalidInput, MissingExtra
from segany.io.images import DEFAULT_MAX_PIXELS, open_image

Ring = tuple[tuple[int, int], ...]

_ENCODE_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class Polygon:
    """One connected region: `exterior` ring and the rings of its `holes`, each ((x, y), ...) pixel centres."""

    exterior: Ring
    holes: tuple[Ring, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """{"exterior": [[x, y], ...], "holes": [[[x, y], ...], ...]}: plain lists, JSON-ready."""
        return {
            "exterior": [list(point) for point in self.exterior],
            "holes": [[list(point) for point in ring] for ring in self.holes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Polygon:
        return cls(_as_ring(data["exterior"]), tuple(_as_ring(ring) for ring in data.get("holes", ())))


def mask_to_png(mask: np.ndarray) -> bytes:
    """Encode an (H, W) mask as a greyscale ("L") PNG of the same size: 255 inside, 0 outside."""
    pixels = _as_mask(mask).astype(np.uint8) * np.uint8(255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_to_png_base64(mask: np.ndarray, *, data_uri: bool = False) -> str:
    """`mask_to_png` as base64 text, optionally as a `data:image/png;base64,` URI."""
    text = base64.b64encode(mask_to_png(mask)).decode("ascii")
    return f"data:image/png;base64,{text}" if data_uri else text


def png_to_mask(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, field: str = "mask") -> np.ndarray:
    """Decode a mask image (PNG or any format `load_image` reads) to an (H, W) bool array.

    Palette images: True where the palette index is nonzero (class-index PNGs). Others: True where the grey
    level is >= 128, which also survives JPEG ringing. Errors raise `InvalidImage` naming `field`.
    """
    with open_image(data, max_pixels=max_pixels, field=field) as img:
        if img.mode == "P":
            return np.array(img) != 0
        grey = img if img.mode == "L" else img.convert("L")
        return np.array(grey) >= 128


def mask_to_polygons(
    mask: np.ndarray, *, keep_holes: bool = True, min_points: int = 3, epsilon: float = 0.0
) -> list[Polygon]:
    """Outline each connected region of an (H, W) mask, largest exterior area first.

    Regions are 8-connected (OpenCV `findContours`, `RETR_CCOMP`); a region inside a hole is a polygon of its
    own. `epsilon` > 0 simplifies each ring with Douglas-Peucker (`approxPolyDP`, max deviation in pixels).
    Rings with fewer than `min_points` vertices are dropped (a dropped exterior takes its holes with it), so
    isolated pixels and one-pixel-wide lines vanish at the default of 3.
    """
    if min_points < 1:
        raise InvalidInput(f"min_points must be >= 1, got {min_points}", "min_points")
    if not epsilon >= 0.0:
        raise InvalidInput(f"epsilon must be >= 0, got {epsilon}", "epsilon")
    cv2 = _import_cv2()
    pixels = np.ascontiguousarray(_as_mask(mask), dtype=np.uint8)
    retrieval = cv2.RETR_CCOMP if keep_holes else cv2.RETR_EXTERNAL
    contours, hierarchy = cv2.findContours(pixels, retrieval, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    links = hierarchy[0]  # per contour: next sibling, previous sibling, first child, parent

    def ring_of(index: int) -> np.ndarray:
        points = contours[index]
        if epsilon > 0:
            points = cv2.approxPolyDP(points, float(epsilon), True)
        return points.reshape(-1, 2)

    found: list[tuple[float, Polygon]] = []
    for index in range(len(contours)):
        if links[index][3] != -1:  # a hole: collected with its parent below
            continue
        exterior = ring_of(index)
        if len(exterior) < min_points:
            continue
        holes = []
        child = links[index][2]
        while child != -1:
            hole = ring_of(child)
            if len(hole) >= min_points:
                holes.append(_as_ring(hole))
            child = links[child][0]
        area = abs(float(cv2.contourArea(exterior.reshape(-1, 1, 2))))
        found.append((area, Polygon(_as_ring(exterior), tuple(holes))))
    found.sort(key=lambda item: -item[0])  # stable: equal areas keep OpenCV's order
    return [polygon for _, polygon in found]


def polygons_to_coco(polygons: Sequence[Polygon]) -> list[list[float]]:
    """COCO `segmentation` polygons: one flat [x0, y0, x1, y1, ...] list per polygon.

    COCO polygons cannot have holes, and listing a hole as an extra polygon would fill it (COCO unions a
    segmentation's polygons). Each hole is therefore spliced into its exterior through a zero-width "keyhole"
    bridge, traversed once each way so that even-odd and non-zero fills (pycocotools, OpenCV, PIL) leave the
    hole empty. Coordinates stay pixel centres, so COCO's pixel-edge rasteriser draws the outline about half a
    pixel inside the mask's border.
    """
    segmentation = []
    for polygon in polygons:
        ring = np.asarray(polygon.exterior, dtype=np.float64).reshape(-1, 2)
        if len(ring) < 3:
            continue
        exterior_sign = np.sign(_signed_area(ring))
        for hole in polygon.holes:
            hole_ring = np.asarray(hole, dtype=np.float64).reshape(-1, 2)
            if len(hole_ring) < 3:
                continue
            if np.sign(_signed_area(hole_ring)) == exterior_sign:
                hole_ring = hole_ring[::-1]  # holes wind against the exterior for non-zero fills
            ring = _splice_hole(ring, hole_ring)
        segmentation.append([float(value) for value in ring.ravel()])
    return segmentation


def polygons_to_mask(polygons: Sequence[Polygon], size_hw: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons from `mask_to_polygons` back to an (H, W) bool mask.

    Exteriors are filled including their outline; hole interiors are cleared but their outline kept, since hole
    rings run through foreground pixels. Each polygon is drawn on its own canvas and the results are unioned,
    so the order of the polygons does not matter.
    """
    cv2 = _import_cv2()
    height, width = int(size_hw[0]), int(size_hw[1])
    mask = np.zeros((height, width), dtype=bool)
    for polygon in polygons:
        exterior = np.rint(np.asarray(polygon.exterior, dtype=np.float64)).astype(np.int32).reshape(-1, 2)
        if len(exterior) == 0:
            continue
        left, top = max(int(exterior[:, 0].min()), 0), max(int(exterior[:, 1].min()), 0)
        right, bottom = min(int(exterior[:, 0].max()), width - 1), min(int(exterior[:, 1].max()), height - 1)
        if right < left or bottom < top:
            continue  # entirely outside the image
        origin = np.array([left, top], dtype=np.int32)
        canvas = np.zeros((bottom - top + 1, right - left + 1), dtype=np.uint8)
        cv2.fillPoly(canvas, [exterior - origin], 1)
        for hole in polygon.holes:
            hole_points = np.rint(np.asarray(hole, dtype=np.float64)).astype(np.int32).reshape(-1, 2) - origin
            cv2.fillPoly(canvas, [hole_points], 0)
            cv2.polylines(canvas, [hole_points], True, 1, thickness=1, lineType=cv2.LINE_8)
        mask[top : bottom + 1, left : right + 1] |= canvas.astype(bool)
    return mask


def mask_to_bbox_xyxy(mask: np.ndarray) -> np.ndarray:
    """(4,) int64 [x0, y0, x1, y1] of an (H, W) mask; x1/y1 are inclusive (the last True column/row), as in
    the official SAM `batched_mask_to_box`. An empty mask gives [0, 0, 0, 0]."""
    return masks_to_bboxes_xyxy(_as_mask(mask))


def masks_to_bboxes_xyxy(masks: np.ndarray) -> np.ndarray:
    """(..., H, W) masks -> (..., 4) int64 inclusive [x0, y0, x1, y1] boxes, empty masks -> zeros; vectorised."""
    masks = _as_bool(masks, "masks")
    if masks.ndim < 2:
        raise InvalidInput(f"masks must be (..., H, W), got shape {masks.shape}", "masks")
    height, width = masks.shape[-2:]
    boxes = np.zeros(masks.shape[:-2] + (4,), dtype=np.int64)
    if masks.size == 0:
        return boxes
    rows = masks.any(axis=-1)  # (..., H)
    cols = masks.any(axis=-2)  # (..., W)
    boxes[..., 0] = cols.argmax(axis=-1)
    boxes[..., 1] = rows.argmax(axis=-1)
    boxes[..., 2] = width - 1 - cols[..., ::-1].argmax(axis=-1)
    boxes[..., 3] = height - 1 - rows[..., ::-1].argmax(axis=-1)
    boxes[~rows.any(axis=-1)] = 0
    return boxes


def mask_palette(count: int) -> np.ndarray:
    """(count, 3) uint8 RGB colours, deterministic; hues step by the golden ratio so neighbours differ."""
    colours = [colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.75, 0.95) for index in range(count)]
    return np.rint(np.asarray(colours, dtype=np.float64).reshape(count, 3) * 255).astype(np.uint8)


def overlay_masks(
    image_rgb: np.ndarray,
    masks: np.ndarray,
    *,
    alpha: float = 0.5,
    colors: Sequence[Sequence[int]] | np.ndarray | None = None,
    outline: bool = True,
    outline_px: int = 2,
) -> np.ndarray:
    """Draw masks over an (H, W, 3) uint8 RGB image; returns a new (H, W, 3) uint8 array.

    Each mask gets a translucent fill (`alpha` = colour weight) and, with `outline`, an opaque border
    `outline_px` wide drawn just inside the mask, so pixels outside every mask are left untouched. Masks are
    painted largest first so small ones stay visible on top. `colors`: RGB triples per mask (cycled when
    fewer than masks) or `mask_palette` colours by mask index when None.
    """
    image = _as_rgb(image_rgb, "image_rgb")
    masks = _as_bool(masks, "masks")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise InvalidInput(f"masks shape {masks.shape} does not match image size {image.shape[:2]}", "masks")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidInput(f"alpha must be in [0, 1], got {alpha}", "alpha")
    if outline and int(outline_px) < 1:
        raise InvalidInput(f"outline_px must be >= 1, got {outline_px}", "outline_px")
    count = len(masks)
    palette = mask_palette(count) if colors is None else _cycle_colours(colors, count)

    colour_layer = np.zeros_like(image)
    covered = np.zeros(image.shape[:2], dtype=bool)
    on_outline = np.zeros(image.shape[:2], dtype=bool)
    boxes = masks_to_bboxes_xyxy(masks)
    areas = masks.sum(axis=(1, 2))
    for index in np.argsort(-areas, kind="stable"):
        if areas[index] == 0:
            continue
        x0, y0, x1, y1 = (int(v) for v in boxes[index])
        window = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        region = masks[index][window]  # all of this mask lies inside its box
        colour_layer[window][region] = palette[index]
        covered[window] |= region
        on_outline[window][region] = False  # a smaller mask on top hides outlines beneath it
        if outline:
            on_outline[window] |= _inner_border(region, int(outline_px))

    result = image.copy()
    fill = covered & ~on_outline
    blended = (1.0 - alpha) * image[fill].astype(np.float32) + alpha * colour_layer[fill].astype(np.float32)
    result[fill] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    result[on_outline] = colour_layer[on_outline]
    return result


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """Encode an (H, W, 3) uint8 RGB (or (H, W) grey) array as PNG, JPEG or WebP; `quality` 1..100 applies to
    the lossy formats."""
    pil_format = _ENCODE_FORMATS.get(str(fmt).lower())
    if pil_format is None:
        raise InvalidInput(f"fmt must be one of {sorted(_ENCODE_FORMATS)}, got {fmt!r}", "fmt")
    if not 1 <= int(quality) <= 100:
        raise InvalidInput(f"quality must be in 1..100, got {quality}", "quality")
    if isinstance(rgb, np.ndarray) and rgb.ndim == 2:
        pixels = _as_mask(rgb).astype(np.uint8) * np.uint8(255) if rgb.dtype == np.bool_ else rgb
        if pixels.dtype != np.uint8:
            raise InvalidInput(f"rgb must be uint8, got {pixels.dtype}", "rgb")
    else:
        pixels = _as_rgb(rgb, "rgb")
    buffer = io.BytesIO()
    options = {} if pil_format == "PNG" else {"quality": int(quality)}
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def _inner_border(region: np.ndarray, width_px: int) -> np.ndarray:
    """Pixels of `region` within `width_px` (chessboard distance) of its background or the crop's edge."""
    eroded = region
    for _ in range(width_px):
        padded = np.pad(eroded, 1, constant_values=False)
        height, width = eroded.shape
        eroded = np.ones_like(eroded)
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[dy : dy + height, dx : dx + width]
    return region & ~eroded


def _cycle_colours(colors: Sequence[Sequence[int]] | np.ndarray, count: int) -> np.ndarray:
    table = np.asarray(colors)
    if table.ndim == 1:
        table = table[None]
    if table.ndim != 2 or table.shape[1] != 3 or len(table) == 0:
        raise InvalidInput(f"colors must be RGB triples, got shape {table.shape}", "colors")
    if not np.issubdtype(table.dtype, np.number) or table.min() < 0 or table.max() > 255:
        raise InvalidInput("colors must hold numbers in 0..255", "colors")
    return np.rint(table).astype(np.uint8)[np.arange(count) % len(table)]


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _splice_hole(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Walk `ring` to its vertex nearest the hole's leftmost vertex, around the hole, and back (keyhole)."""
    hole_start = int(np.argmin(hole[:, 0] * 1e6 + hole[:, 1]))  # leftmost, then topmost: deterministic
    ring_at = int(np.argmin(((ring - hole[hole_start]) ** 2).sum(axis=1)))
    hole_loop = np.concatenate([hole[hole_start:], hole[: hole_start + 1]])
    return np.concatenate([ring[: ring_at + 1], hole_loop, ring[ring_at:]])


def _as_ring(points: Any) -> Ring:
    array = np.asarray(points).reshape(-1, 2)
    return tuple((int(x), int(y)) for x, y in np.rint(array).astype(np.int64))


def _as_bool(masks: Any, name: str) -> np.ndarray:
    array = np.asarray(masks)
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer):
        return array != 0
    raise InvalidInput(
        f"{name} must be bool (or integer 0/1), got {array.dtype}; threshold logits/probabilities first", name
    )


def _as_mask(mask: Any) -> np.ndarray:
    array = _as_bool(mask, "mask")
    if array.ndim != 2:
        raise InvalidInput(f"mask must be (H, W), got shape {array.shape}", "mask")
    return array


def _as_rgb(image: Any, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInput(f"{name} must be an (H, W, 3) uint8 array, got {array.dtype} {array.shape}", name)
    return array


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise MissingExtra("opencv", "opencv-python-headless", "Mask polygons") from exc
    return cv2
