"""Time automatic mask generation per image, split into encoder, decoder and post-processing.

    python bench/bench_amg.py [--cases synthetic,tiny-fp32,tiny-bf16,replicate-synthetic,replicate-bf16,issue16-fp32]
                              [--variant tiny] [--device cpu] [--repeats 1] [--quick] [--no-peer]

Cases (image: ../shared/fixtures/images/coffee.png resized to 1024x768):
  synthetic            32 points per side, multimask; decoder = ../shared/tools/synthetic_decoder.py (no encoder);
                       pred_iou 0.7 and stability 0.85 (as the grid32 golden) so that its soft blobs give records
  tiny-fp32, tiny-bf16 32 points per side, official defaults, with the real-size model (--variant, random
                       weights: noise masks, so few or no records), float32 / bfloat16
  replicate-*          the Replicate preset: 64 points per side, one crop layer, downscale factor 2, m2m,
                       single-mask output (pred_iou 0.7, stability 0.92 offset 0.7, min region area 25, batch 128),
                       with the synthetic decoder or the model in bfloat16
  issue16-fp32         the issue's yardstick: 16 points per side, no filters (pred_iou and stability 0), the
                       real-size model in float32, on coffee.png resized to 640x427

The predictor is wrapped so that every `embed` and `decode` call is timed (CUDA synchronized);
post-processing is the rest of `generate`. The `dense peer` line times, in the same run and on the same
decoded batches, the official generator's way of post-processing (every mask upsampled to the crop size,
stability and boxes on the full-resolution masks, RLE of the survivors) against segany's, for the
single-crop synthetic case. `official s / this` divides an official-generator time the issues measured on a
2-core AVX2 EPYC (110 s for tiny-fp32's setting, 46.6 s for issue16-fp32's) by this run's: a yardstick
from another machine, not something this script measures.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import segany
from segany import runtime
from segany.io.rle import masks_to_rle
from segany.predict.amg.generator import MaskGenerator
from segany.predict.amg.geometry import build_point_grid

from _common import IMAGES, SHARED, print_table, random_checkpoint

SHORT_NAMES = {"tiny": "sam2.1_hiera_tiny", "small": "sam2.1_hiera_small",
               "base_plus": "sam2.1_hiera_base_plus", "large": "sam2.1_hiera_large"}
IMAGE_WH = (1024, 768)
ISSUE_IMAGE_WH = (640, 427)
GRID = dict(points_per_side=32)
ISSUE_GRID = dict(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0)
# Official-generator seconds per image measured in the issues (tiny, float32, 2-core AVX2 EPYC).
OFFICIAL_SECONDS = {"tiny-fp32": 110.0, "issue16-fp32": 46.6}
SYNTHETIC_GRID = dict(points_per_side=32, pred_iou_thresh=0.7, stability_score_thresh=0.85)
REPLICATE = dict(
    points_per_side=64, points_per_batch=128, pred_iou_thresh=0.7, stability_score_thresh=0.92,
    stability_score_offset=0.7, crop_n_layers=1, box_nms_thresh=0.7, crop_n_points_downscale_factor=2,
    min_mask_region_area=25, use_m2m=True, multimask_output=False,
)
CASES = ("synthetic", "tiny-fp32", "tiny-bf16", "replicate-synthetic", "replicate-bf16", "issue16-fp32")


@dataclass
class TimedPredictor:
    """Forwards the predictor protocol and adds up the time spent in each call."""

    inner: Any
    device: torch.device
    embed_s: float = 0.0
    decode_s: float = 0.0
    decode_calls: int = 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def embed(self, image: np.ndarray) -> Any:
        self._sync()
        start = time.perf_counter()
        out = self.inner.embed(image)
        self._sync()
        self.embed_s += time.perf_counter() - start
        return out

    def decode(self, embedding, point_coords, point_labels, mask_input=None, multimask_output=True):
        self._sync()
        start = time.perf_counter()
        out = self.inner.decode(embedding, point_coords, point_labels, mask_input, multimask_output)
        self._sync()
        self.decode_s += time.perf_counter() - start
        self.decode_calls += 1
        return out


class SyntheticPredictor:
    """The shared synthetic decoder behind the predictor protocol (no image encoder)."""

    def __init__(self, device: torch.device) -> None:
        spec = importlib.util.spec_from_file_location("synthetic_decoder", SHARED / "tools" / "synthetic_decoder.py")
        self._module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self._module)
        self.device = device

    def embed(self, image: np.ndarray) -> tuple[int, ...]:
        return image.shape

    def decode(self, embedding, point_coords, point_labels, mask_input=None, multimask_output=True):
        logits, iou = self._module.decode(point_coords.cpu(), point_labels, None if mask_input is None else mask_input.cpu(),
                                          multimask_output)
        return logits.to(self.device), iou.to(self.device)


@dataclass
class Result:
    case: str
    records: int
    seconds: list[float] = field(default_factory=list)
    embed_s: float = 0.0
    decode_s: float = 0.0


def run_case(name: str, predictor: Any, device: torch.device, image: np.ndarray, params: dict, repeats: int) -> Result:
    result = Result(name, 0)
    for _ in range(repeats):
        timed = TimedPredictor(predictor, device)
        generator = MaskGenerator(timed, output_mode="uncompressed_rle", **params)
        start = time.perf_counter()
        records = generator.generate(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result.seconds.append(time.perf_counter() - start)
        result.embed_s += timed.embed_s / repeats
        result.decode_s += timed.decode_s / repeats
        result.records = len(records)
    return result


def dense_peer(predictor: Any, image: np.ndarray, params: dict, device: torch.device) -> tuple[float, float]:
    """Post-processing seconds of (official-style dense, segany) on the same decoded batches of one crop."""
    generator = MaskGenerator(predictor, output_mode="uncompressed_rle", **params)
    p = generator.params
    height, width = image.shape[:2]
    grid = build_point_grid(p.points_per_side) * np.array([[width, height]])
    embedding = predictor.embed(image)
    dense_s = 0.0
    for start in range(0, len(grid), p.points_per_batch):
        points = torch.from_numpy(grid[start : start + p.points_per_batch])
        model_points = (points / torch.tensor([width, height]) * 1024).float()[:, None, :]
        labels = torch.ones(len(points), 1, dtype=torch.int32)
        logits, iou = predictor.decode(embedding, model_points, labels, None, p.multimask_output)
        t0 = time.perf_counter()
        _official_style_batch(logits.flatten(0, 1), iou.flatten(0, 1), (height, width), p)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dense_s += time.perf_counter() - t0
    timed = TimedPredictor(predictor, device)
    generator.predictor = timed
    start = time.perf_counter()
    generator.generate(image)
    ours = time.perf_counter() - start - timed.embed_s - timed.decode_s
    return dense_s, ours


def _official_style_batch(logits: torch.Tensor, iou: torch.Tensor, size_hw: tuple[int, int], p: Any) -> list:
    """What the official generator does per batch: upsample all, filter, threshold, box, RLE."""
    masks = F.interpolate(logits[:, None].float(), size_hw, mode="bilinear", align_corners=False)[:, 0]
    keep = iou > p.pred_iou_thresh
    masks = masks[keep]
    high = (masks > p.mask_threshold + p.stability_score_offset).sum((-1, -2))
    low = (masks > p.mask_threshold - p.stability_score_offset).sum((-1, -2))
    masks = masks[(high / low) >= p.stability_score_thresh] > p.mask_threshold
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    _ = rows.float().argmax(dim=1), cols.float().argmax(dim=1)  # box edges, as batched_mask_to_box does
    return masks_to_rle(masks)


def load_predictor(variant: str, dtype: torch.dtype, device: torch.device) -> segany.Predictor:
    name = SHORT_NAMES.get(variant, variant)
    model = segany.load_model(name, checkpoint=random_checkpoint(name), device=device, dtype=dtype)
    return segany.Predictor(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)}")
    parser.add_argument("--variant", default="tiny", help="model for the real-model cases (tiny, small, ...)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per case (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 points per side (16 for the preset)")
    parser.add_argument("--no-peer", action="store_true", help="skip the dense post-processing comparison")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    # The state every segany process runs in (`load_model` and the server call it): without it the synthetic
    # cases, which never call `load_model`, page-fault every large temporary in afresh.
    runtime.tune_cpu_allocator()
    device = torch.device(args.device)
    grid, synthetic_grid, replicate, issue_grid = dict(GRID), dict(SYNTHETIC_GRID), dict(REPLICATE), dict(ISSUE_GRID)
    if args.quick:
        grid["points_per_side"] = synthetic_grid["points_per_side"] = issue_grid["points_per_side"] = 8
        replicate["points_per_side"] = 16
    photo = Image.open(IMAGES / "coffee.png").convert("RGB")
    image = np.asarray(photo.resize(IMAGE_WH, Image.BILINEAR))
    issue_image = np.asarray(photo.resize(ISSUE_IMAGE_WH, Image.BILINEAR))
    print(f"# image {IMAGE_WH[0]}x{IMAGE_WH[1]}, device {device}, torch threads {torch.get_num_threads()}, "
          f"grid {grid['points_per_side']}/side, preset {replicate['points_per_side']}/side", flush=True)

    synthetic = SyntheticPredictor(device)
    predictors: dict[str, Any] = {}

    def real(dtype: torch.dtype) -> Any:
        key = str(dtype)
        if key not in predictors:
            predictors.clear()  # one model in memory at a time
            predictors[key] = load_predictor(args.variant, dtype, device)
            predictors[key].embed(image)  # warm-up: first-call allocations and kernel selection
        return predictors[key]

    plan = {
        "synthetic": (lambda: synthetic, synthetic_grid, image),
        "tiny-fp32": (lambda: real(torch.float32), grid, image),
        "tiny-bf16": (lambda: real(torch.bfloat16), grid, image),
        "replicate-synthetic": (lambda: synthetic, replicate, image),
        "replicate-bf16": (lambda: real(torch.bfloat16), replicate, image),
        "issue16-fp32": (lambda: real(torch.float32), issue_grid, issue_image),
    }
    header = ["case", "records", "s/image", "encoder %", "decoder %", "post %", "post s", "official s / this"]
    rows = []
    for case in cases:
        make, params, case_image = plan[case]
        result = run_case(case.replace("tiny", args.variant), make(), device, case_image, params, args.repeats)
        total = float(np.median(result.seconds))
        post = max(total - result.embed_s - result.decode_s, 0.0)
        official = OFFICIAL_SECONDS.get(case) if args.variant == "tiny" and not args.quick else None
        rows.append([result.case, result.records, total, 100 * result.embed_s / total, 100 * result.decode_s / total,
                     100 * post / total, post, official / total if official else None])
        print_table(header, rows[-1:])
    print()
    print_table(header, rows)
    if not args.no_peer:
        dense_s, ours_s = dense_peer(synthetic, image, synthetic_grid, device)
        print()
        print_table(["dense peer (synthetic, 1 crop)", "official-style post s", "segany post s", "ratio"],
                    [["post-processing", dense_s, ours_s, dense_s / max(ours_s, 1e-9)]])


if __name__ == "__main__":
    main()
