"""Automatic mask generation ("segment everything"): the official generator's records, faster.

Same records as the official `SAM2AutomaticMaskGenerator` (point grids, crops, batching, filters,
stability score, crop-edge rejection, NMS, smaller-crop preference, m2m refinement, output order),
computed differently where that is cheaper:

- masks are filtered by predicted IoU before anything touches full resolution;
- stability scores and boxes come from the 256x256 logits exactly (`upsample`), without
  upsampling whole masks; only the final records are upsampled, and only inside their boxes;
- `min_mask_region_area` runs on CPU (OpenCV), where the official code silently skips it.

Frames: point grids are normalized; points sent to `decode` are in the 1024x1024 model frame;
record boxes and points are in full-image pixels.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from segany.errors import InvalidImage
from segany.io.images import load_image
from segany.io.rle import rle_to_coco, rle_to_mask, window_masks_to_rle
from segany.predict.amg.filters import batched_nms, fill_small_regions
from segany.predict.amg.geometry import box_area, box_xyxy_to_xywh, generate_crop_boxes, is_box_near_crop_edge
from segany.predict.amg.params import validated_params
from segany.predict.amg.upsample import UpsamplePlan

MODEL_INPUT_SIZE = 1024  # decode takes points in the model's square input frame
_WINDOW_BUDGET = 1 << 21  # upsampled pixels materialized per step when encoding the final masks
_WINDOW_MASKS = 128  # masks per step (each step also classifies their full low-res maps)

_PLAN_CACHE_SIZE = 8

ProgressCallback = Callable[[int, int], None]


class MaskPredictor(Protocol):
    """What the generator needs from a predictor (segany's `Predictor` is one)."""

    def embed(self, image: np.ndarray) -> Any:
        """Embedding of an (H, W, 3) uint8 RGB image."""

    def decode(
        self,
        embedding: Any,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, 256, 256) float32 unclamped logits and (B, C) float32 IoUs for (B, N, 2) model-frame points."""


@dataclass
class _Candidates:
    """Per-mask facts of masks that passed the filters; boxes and points in their crop's frame.

    Filtering and NMS move these few numbers per mask; the masks themselves are encoded once, when
    their crop is done, and addressed by `row`.
    """

    iou: torch.Tensor  # (N,) float32
    points: torch.Tensor  # (N, 2) float64 crop pixels
    stability: torch.Tensor  # (N,) float32
    boxes: torch.Tensor  # (N, 4) int64 inclusive XYXY, crop frame
    crop: torch.Tensor  # (N,) int64 index of the crop
    row: torch.Tensor  # (N,) int64 the mask's logits row (inside a crop), then its RLE index

    def select(self, index: torch.Tensor | np.ndarray) -> _Candidates:
        index = torch.as_tensor(index).cpu()
        return _Candidates(*(t[index] for t in self._columns()))

    def _columns(self) -> tuple[torch.Tensor, ...]:
        return (self.iou, self.points, self.stability, self.boxes, self.crop, self.row)

    @staticmethod
    def empty() -> _Candidates:
        zeros = torch.zeros(0, dtype=torch.int64)
        points = torch.zeros(0, 2, dtype=torch.float64)
        boxes = torch.zeros(0, 4, dtype=torch.int64)
        return _Candidates(torch.zeros(0), points, torch.zeros(0), boxes, zeros, zeros.clone())

    @staticmethod
    def concat(parts: list[_Candidates]) -> _Candidates:
        return _Candidates(*(torch.cat(list(column)) for column in zip(*(p._columns() for p in parts))))


class MaskGenerator:
    """Masks for a whole image from a grid of single-point prompts.

    Arguments are the official `SAM2AutomaticMaskGenerator`'s (same defaults and meaning), plus
    `max_masks`: keep the best N records by predicted IoU (-1 keeps all, 0 none), in output order.
    """

    def __init__(
        self,
        predictor: MaskPredictor,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: Sequence[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        max_masks: int = -1,
    ) -> None:
        self.predictor = predictor
        self.params, self.point_grids = validated_params(
            point_grids,
            points_per_side=points_per_side, points_per_batch=points_per_batch, pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh, stability_score_offset=stability_score_offset,
            mask_threshold=mask_threshold, box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers,
            crop_nms_thresh=crop_nms_thresh, crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area, output_mode=output_mode, use_m2m=use_m2m,
            multimask_output=multimask_output, max_masks=max_masks,
        )
        self._plans: dict[tuple[int, tuple[int, int], str], UpsamplePlan] = {}
        self._plans_lock = threading.Lock()  # generate() may run in several threads at once
        if output_mode == "coco_rle":
            rle_to_coco({"size": [1, 1], "counts": [1]})  # fail now, not after the model ran, without pycocotools

    @torch.inference_mode()
    def generate(self, image: Any, progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
        """Records of every mask found, in the official order and layout.

        Args:
            image: (H, W, 3) uint8 RGB array, or anything `segany.io.images.load_image` accepts.
            progress: called as progress(done_batches, total_batches) after every point batch;
                an exception raised by it stops the generation (and propagates).

        Returns:
            Dicts with keys segmentation (per `output_mode`), area (int), bbox (XYWH floats),
            predicted_iou, point_coords ([[x, y]]), stability_score, crop_box (XYWH floats).
        """
        rgb = _as_rgb_array(image)
        size_hw = (rgb.shape[0], rgb.shape[1])
        crop_boxes, layers = generate_crop_boxes(size_hw, self.params.crop_n_layers, self.params.crop_overlap_ratio)
        batch = self.params.points_per_batch
        total = sum(math.ceil(len(self.point_grids[layer]) / batch) for layer in layers)
        tracker = _Progress(progress, total)
        rles: list[dict[str, Any]] = []
        per_crop = []
        for crop, (box, layer) in enumerate(zip(crop_boxes, layers)):
            found = self._process_crop(rgb, crop, box, layer, size_hw, tracker, rles)
            per_crop.append(found)
        merged = self._merge_crops(per_crop, crop_boxes)
        merged = merged.select(self._best_by_iou(merged.iou))
        return self._records(merged, rles, crop_boxes)

    def _process_crop(
        self,
        image: np.ndarray,
        crop: int,
        crop_box: list[int],
        layer: int,
        size_hw: tuple[int, int],
        tracker: _Progress,
        rles: list[dict[str, Any]],
    ) -> _Candidates:
        """The crop's masks after the in-crop NMS; their RLEs are appended to `rles` (rows index them)."""
        x0, y0, x1, y1 = crop_box
        points = self.point_grids[layer] * np.array([[x1 - x0, y1 - y0]])
        if x1 <= x0 or y1 <= y0:  # crop layers on images a few pixels wide give empty crops
            for _ in range(0, len(points), self.params.points_per_batch):
                tracker.step()
            return _Candidates.empty()
        pixels = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_hw = (pixels.shape[0], pixels.shape[1])
        embedding = self.predictor.embed(pixels)
        parts, logits = [], []
        for start in range(0, len(points), self.params.points_per_batch):
            batch = points[start : start + self.params.points_per_batch]
            found, batch_logits = self._process_batch(embedding, batch, crop_hw, crop_box, size_hw)
            parts.append(found)
            logits.append(batch_logits)
            tracker.step()
        found = _Candidates.concat(parts)
        keep = torch.from_numpy(
            batched_nms(found.boxes, found.iou, torch.zeros(len(found.iou)), self.params.box_nms_thresh)
        )
        kept = found.select(keep)
        kept.crop.fill_(crop)
        # Encode now and drop the logits: memory stays bounded by one crop's surviving masks.
        kept.row = torch.arange(len(rles), len(rles) + len(keep))
        rles.extend(self._encode(logits, keep, kept.boxes, crop_box, size_hw))
        return kept

    def _process_batch(
        self,
        embedding: Any,
        points: np.ndarray,
        crop_hw: tuple[int, int],
        crop_box: list[int],
        size_hw: tuple[int, int],
    ) -> tuple[_Candidates, torch.Tensor]:
        """Decode one batch of grid points and filter its masks; returns the survivors and their logits."""
        p = self.params
        points_px = torch.from_numpy(points)  # float64, crop pixels
        # The official transform, in float64: divide by the crop size, scale to the model frame.
        model_points = points_px.clone()
        model_points[:, 0] = model_points[:, 0] / crop_hw[1]
        model_points[:, 1] = model_points[:, 1] / crop_hw[0]
        # The model consumes float32 points (the official prompt encoder casts them).
        model_points = (model_points * MODEL_INPUT_SIZE).float()
        labels = torch.ones(len(points), 1, dtype=torch.int32)
        logits, iou = self.predictor.decode(embedding, model_points[:, None, :], labels, None, p.multimask_output)
        per_point = logits.shape[1]
        logits, iou = logits.flatten(0, 1).float(), iou.flatten(0, 1).float()
        points_px = points_px.repeat_interleave(per_point, dim=0)
        if p.use_m2m:
            logits, iou = self._refine(embedding, model_points.repeat_interleave(per_point, dim=0), logits)
        # `slots[i]` is the decoder row that row i of `logits` now holds (the filter below moves rows).
        slots = torch.arange(len(iou), device=iou.device)
        if p.pred_iou_thresh > 0.0:
            slots = _compact_rows(logits, iou > p.pred_iou_thresh)
            logits, iou, points_px = logits[: len(slots)], iou[slots], points_px[slots.cpu()]
        # The decoder's output: this batch's to overwrite.
        logits = fill_small_regions(logits, p.min_mask_region_area, p.mask_threshold, in_place=True)

        plan = self._plan(logits, crop_hw)
        low, high = p.mask_threshold - p.stability_score_offset, p.mask_threshold + p.stability_score_offset
        stats = plan.stats(logits, [low, p.mask_threshold, high], p.mask_threshold)
        # The official ratio of int32 counts (a float32 division); 0/0 stays NaN as there.
        stability = stats.counts[:, 2].to(torch.int32) / stats.counts[:, 0].to(torch.int32)
        boxes = stats.boxes_xyxy
        keep = torch.ones_like(iou, dtype=torch.bool)
        if p.stability_score_thresh > 0.0:
            keep &= stability >= p.stability_score_thresh
        image_box = [0, 0, size_hw[1], size_hw[0]]
        keep &= ~is_box_near_crop_edge(boxes, crop_box, image_box)
        index = keep.nonzero()[:, 0]
        index = index[torch.argsort(slots[index])]  # back in decoder order, as the official keeps them
        n = len(index)
        found = _Candidates(
            iou[index].cpu(), points_px[index.cpu()], stability[index].cpu(), boxes[index].cpu(),
            torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
        )
        return found, logits.index_select(0, index)

    def _refine(
        self, embedding: Any, model_points: torch.Tensor, logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-to-mask pass: each mask's clamped logits prompt a single-mask decode at its point."""
        refined, ious = [], []
        step = self.params.points_per_batch
        for start in range(0, len(model_points), step):
            points = model_points[start : start + step, None, :]
            labels = torch.ones(points.shape[0], 1, dtype=torch.int32)
            # In place: these first-pass logits are the decoder's fresh output and are dropped after this.
            mask_input = logits[start : start + step, None].clamp_(-32.0, 32.0)
            out_logits, out_iou = self.predictor.decode(embedding, points, labels, mask_input, False)
            refined.append(out_logits[:, 0].float())
            ious.append(out_iou[:, 0].float())
        if len(refined) == 1:  # one decoder call: no copy
            return refined[0], ious[0]
        return torch.cat(refined), torch.cat(ious)

    def _plan(self, logits: torch.Tensor, crop_hw: tuple[int, int]) -> UpsamplePlan:
        """The upsampling tables from the logits' grid to `crop_hw`, cached per size and device."""
        key = (int(logits.shape[-1]), crop_hw, str(logits.device))
        with self._plans_lock:
            plan = self._plans.get(key)
            if plan is None:
                plan = UpsamplePlan(key[0], crop_hw, logits.device)
                if len(self._plans) >= _PLAN_CACHE_SIZE:  # crops come in a few sizes per image
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = plan
        return plan

    def _merge_crops(self, per_crop: list[_Candidates], crop_boxes: list[list[int]]) -> _Candidates:
        """All crops' masks, after the smaller-crop-first NMS across crops when there are several."""
        merged = _Candidates.concat(per_crop)
        if len(crop_boxes) == 1:
            return merged
        crops = torch.as_tensor(crop_boxes, dtype=torch.int64)[merged.crop]
        scores = 1 / box_area(crops)  # float32, as the official: smaller crops first, ties by order
        boxes_full = merged.boxes + crops[:, [0, 1, 0, 1]]
        keep = batched_nms(boxes_full, scores, torch.zeros(len(scores)), self.params.crop_nms_thresh)
        return merged.select(keep)

    def _best_by_iou(self, iou: torch.Tensor) -> np.ndarray:
        """Indices of the records kept by max_masks, in their original order."""
        count = len(iou)
        limit = self.params.max_masks
        if limit < 0 or limit >= count:
            return np.arange(count)
        best = np.argsort(-iou.float().cpu().numpy(), kind="stable")[:limit]
        return np.sort(best)

    def _records(
        self, found: _Candidates, all_rles: list[dict[str, Any]], crop_boxes: list[list[int]]
    ) -> list[dict[str, Any]]:
        rles = [all_rles[k] for k in found.row.tolist()]
        crops_xyxy = torch.as_tensor(crop_boxes, dtype=torch.int64)[found.crop].reshape(-1, 4).numpy()
        offsets = crops_xyxy[:, :2]
        # The official records go through float32 (MaskData.to_numpy) before becoming Python floats.
        boxes = (found.boxes.numpy() + np.tile(offsets, 2)).astype(np.float32)
        points = (found.points.numpy() + offsets).astype(np.float32)
        bbox_xywh = box_xyxy_to_xywh(boxes).tolist()
        crop_xywh = box_xyxy_to_xywh(crops_xyxy.astype(np.float32)).tolist()
        iou = found.iou.numpy().tolist()
        stability = found.stability.numpy().tolist()
        records = []
        for k, rle in enumerate(rles):
            records.append(
                {
                    "segmentation": self._segmentation(rle),
                    "area": int(sum(rle["counts"][1::2])),
                    "bbox": bbox_xywh[k],
                    "predicted_iou": iou[k],
                    "point_coords": [points[k].tolist()],
                    "stability_score": stability[k],
                    "crop_box": crop_xywh[k],
                }
            )
        return records

    def _segmentation(self, rle: dict[str, Any]) -> Any:
        mode = self.params.output_mode
        if mode == "coco_rle":
            return rle_to_coco(rle)
        if mode == "binary_mask":
            return rle_to_mask(rle)
        return rle

    def _encode(
        self, logits: list[torch.Tensor], rows: torch.Tensor, boxes: torch.Tensor, crop_box: list[int],
        size_hw: tuple[int, int],
    ) -> list[dict[str, Any]]:
        """Full-image uncompressed RLEs of one crop's masks, upsampled only inside their boxes.

        Args:
            logits: the crop's batches of (n, 256, 256) float32 masks; rows: (N,) int64 the masks' rows
                in their concatenation; boxes: (N, 4) int64 inclusive XYXY, crop frame.
        """
        x0, y0, x1, y1 = crop_box
        plan = self._plan(logits[0], (y1 - y0, x1 - x0))
        rles: list[dict[str, Any]] = [{}] * len(boxes)
        areas = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)).numpy()
        order = np.argsort(areas, kind="stable")  # similar sizes share a padded window
        for chunk in _window_chunks(boxes[order]):
            picked = order[chunk]
            picked = picked[np.argsort(rows[picked].numpy(), kind="stable")]  # each batch's rows in one run
            index = torch.from_numpy(picked)
            chunk_logits = _gather_sorted_rows(logits, rows[index])
            windows = plan.windows(chunk_logits, boxes[index].to(chunk_logits.device), self.params.mask_threshold)
            origins_yx = boxes[index][:, [1, 0]] + torch.tensor([[y0, x0]])
            for k, rle in zip(picked.tolist(), window_masks_to_rle(windows, origins_yx, size_hw)):
                rles[k] = rle
        return rles


def _compact_rows(rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Move the rows where `keep` (N,) is set to the front of `rows`, in place; return where each came from.

    Kept rows already among the first K stay put and the rest fill the gaps there, so only rows
    behind the front move: a few of a batch most of whose masks pass, where gathering the kept
    rows into a new tensor copies them all. The front's order is no longer the decoder's.
    """
    count = int(keep.sum())
    slots = torch.arange(count, device=keep.device)
    gaps = (~keep[:count]).nonzero()[:, 0]
    movers = keep[count:].nonzero()[:, 0] + count
    for gap, mover in zip(gaps.tolist(), movers.tolist()):  # row by row: one copy, no temporary
        rows[gap].copy_(rows[mover])
    slots[gaps] = movers
    return slots


def _gather_sorted_rows(parts: list[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Rows (ascending) of the concatenation of `parts`, without building the concatenation.

    Ascending rows take each part's share as one contiguous run of the output, which index_select
    writes directly: one copy per row (indexing, then assigning, copies twice).
    """
    ends = torch.cumsum(torch.tensor([len(p) for p in parts]), 0)
    owner = torch.searchsorted(ends, rows, right=True)
    bounds = torch.searchsorted(owner, torch.arange(len(parts) + 1)).tolist()
    out = parts[0].new_empty((len(rows), *parts[0].shape[1:]))
    for part, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        if last > first:
            local = rows[first:last] - (ends[part] - len(parts[part]))
            torch.index_select(parts[part], 0, local.to(out.device), out=out[first:last])
    return out


def _window_chunks(boxes: torch.Tensor) -> list[np.ndarray]:
    """Split boxes (sorted by area) into index chunks whose padded windows stay within the budget."""
    heights = (boxes[:, 3] - boxes[:, 1] + 1).numpy()
    widths = (boxes[:, 2] - boxes[:, 0] + 1).numpy()
    chunks, start, max_h, max_w = [], 0, 0, 0
    for k in range(len(boxes)):  # a scan over sizes only; the work per chunk is vectorized
        max_h, max_w = max(max_h, heights[k]), max(max_w, widths[k])
        if k > start and ((k - start + 1) * max_h * max_w > _WINDOW_BUDGET or k - start >= _WINDOW_MASKS):
            chunks.append(np.arange(start, k))
            start, max_h, max_w = k, heights[k], widths[k]
    if start < len(boxes):
        chunks.append(np.arange(start, len(boxes)))
    return chunks


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _as_rgb_array(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an array, or from anything the image loader decodes."""
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidImage("image has no pixels")
        return image
    return load_image(image)
