"""Mask agreement of segany in reduced precision with the official float32 goldens.

    python bench/bf16_accuracy.py [--variants tiny,...] [--dtype auto|bfloat16|float32]
                                  [--encoder-runtime auto|eager|openvino] [--min-iou 0.98] [--video]

Runs every case of ../shared/fixtures/goldens/manifest.json (every variant, image and prompt case) with the
model loaded in `--dtype` (`auto`: what `segany.load_model` picks, bfloat16 on CPUs with AVX512-BF16 or AMX)
and its encoder on `--encoder-runtime` (`auto`: what `load_model` picks, OpenVINO for bfloat16 on AVX512-BF16
CPUs without AMX when it is installed) from the same random checkpoint the goldens were computed from, and
reports the mean mask IoU against the golden full-resolution masks (return_logits cases thresholded at 0), per
case, per variant and overall. Exits with status 1 when the overall mean is below --min-iou.

`--video` does the same for video tracking instead: it replays every scripted session of
../shared/fixtures/goldens/video_manifest.json (clicks, a box, corrections, a mask, forward and reverse
propagation; float32 goldens of the official video predictor) with `segany.load_video_model` in `--dtype`,
and reports the mean mask IoU over every (output, object) against the golden logits thresholded at 0.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

import segany

from _common import GOLDENS, REPO, print_table, random_checkpoint

# tests/golden_cases.py reads the manifest and npz files; it imports tests/conftest.py by module name.
sys.path.insert(0, str(REPO / "tests"))
from golden_cases import case_kwargs, golden_masks, image_path, manifest  # noqa: E402
from video_support import golden_key, replay_script, video_checkpoint, video_manifest  # noqa: E402

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def mask_ious(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """IoU of each mask: bool (..., H, W) arrays -> (...,) float; two empty masks count as 1."""
    inter = np.logical_and(pred, gold).sum(axis=(-2, -1))
    union = np.logical_or(pred, gold).sum(axis=(-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def as_bool(masks: np.ndarray) -> np.ndarray:
    """Masks as returned (bool, or float logits for return_logits cases) -> bool."""
    return masks if masks.dtype == bool else masks > 0


def run_variant(file_name: str, entry: dict, dtype: torch.dtype | None, runtime: str) -> tuple[str, str, list[list]]:
    """(dtype, encoder runtime, rows [variant, image, case, masks, mean IoU, min IoU, mean |Δscore|]) for one
    golden file."""
    variant = entry["variant"]
    model = segany.load_model(variant, checkpoint=random_checkpoint(variant, seed=entry.get("seed", 0)),
                              device="cpu", dtype=dtype, encoder_runtime=runtime)
    predictor = segany.Predictor(model)
    npz = np.load(GOLDENS / file_name)
    embeddings = {image: predictor.embed(image_path(image)) for image in entry["images"]}
    rows = []
    for case in entry["cases"]:
        image = case["image"]
        prefix = f"{image}/{case['name']}"
        out = predictor.predict(embeddings[image], **case_kwargs(case, npz, image))
        ious = mask_ious(as_bool(out.masks), as_bool(golden_masks(npz, prefix)))
        score_gap = float(np.abs(out.scores - npz[f"{prefix}/iou"]).mean())
        rows.append([variant, image, case["name"], int(ious.size), float(ious.mean()), float(ious.min()), score_gap])
    return str(model.dtype).replace("torch.", ""), "openvino" if model.compiled_encoder else "eager", rows


def run_video(name: str, spec: dict, dtype: torch.dtype | None) -> tuple[str, list[list]]:
    """Rows [video, step, outputs, mean IoU, min IoU] of one replayed video script (every output, every object)."""
    model = segany.load_video_model(spec["variant"], checkpoint=video_checkpoint(spec["variant"]), device="cpu",
                                    dtype=dtype)
    npz = np.load(GOLDENS / spec["arrays"])
    session = segany.VideoPredictor(model, feature_cache=spec["frames"]).start(GOLDENS / spec["frames_dir"])
    ious: dict[int, list[float]] = {}
    for k, step, result in replay_script(session, spec, npz):
        gold = npz[golden_key(k, step, result)].astype(np.float32) > 0
        ious.setdefault(k, []).extend(mask_ious(result.masks, gold).tolist())
    rows = []
    for k, values in ious.items():
        step = spec["steps"][k]
        rows.append([name, f"{k} {step.get('name', step['op'])}", len(values), float(np.mean(values)),
                     float(np.min(values))])
    return str(model.image.dtype).replace("torch.", ""), rows


def main_video(dtype: torch.dtype | None, min_iou: float) -> int:
    rows, dtype_name = [], ""
    for name, spec in video_manifest().items():
        dtype_name, video_rows = run_video(name, spec, dtype)
        rows.extend(video_rows)
        print(f"{name} ({spec['variant']}, {dtype_name}): mean mask IoU "
              f"{np.average([r[3] for r in video_rows], weights=[r[2] for r in video_rows]):.4f}", flush=True)
    print()
    print_table(["video", "step", "masks", "mean IoU", "min IoU"], rows, decimals=4)
    overall = float(np.average([r[3] for r in rows], weights=[r[2] for r in rows]))
    print(f"\noverall mean mask IoU of video tracking in {dtype_name} (over {sum(r[2] for r in rows)} masks): "
          f"{overall:.4f} (aim >= {min_iou})")
    return 0 if overall >= min_iou else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="", help="comma list of variant names (or tiny, small, base_plus, large "
                    "for sam2.1_hiera_*); default: every variant with goldens")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="auto")
    ap.add_argument("--encoder-runtime", choices=("auto", "eager", "openvino"), default="auto",
                    help="where image embeds run (segany.load_model's encoder_runtime; not used with --video)")
    ap.add_argument("--min-iou", type=float, default=0.98, help="exit 1 when the overall mean mask IoU is below this")
    ap.add_argument("--video", action="store_true", help="replay the video goldens instead of the image ones")
    args = ap.parse_args(argv)
    if args.video:
        return main_video(DTYPES[args.dtype], args.min_iou)

    files = manifest()
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    wanted = [v if v.startswith("sam2") else f"sam2.1_hiera_{v}" for v in wanted]
    known = {entry["variant"] for entry in files.values()}
    for v in wanted:
        if v not in known:
            ap.error(f"--variants: no goldens for {v!r} (have {', '.join(sorted(known))})")

    rows, per_variant = [], []
    for file_name, entry in files.items():
        if wanted and entry["variant"] not in wanted:
            continue
        dtype_name, runtime, variant_rows = run_variant(file_name, entry, DTYPES[args.dtype], args.encoder_runtime)
        rows.extend(variant_rows)
        ious = [r[4] for r in variant_rows]
        per_variant.append([entry["variant"], dtype_name, runtime, len(ious), float(np.mean(ious)),
                            float(np.min(ious))])
        print(f"{entry['variant']} ({dtype_name}, encoder {runtime}): mean mask IoU {np.mean(ious):.4f} over "
              f"{len(ious)} cases", flush=True)

    print()
    print_table(["variant", "image", "case", "masks", "mean IoU", "min IoU", "mean |Δscore|"], rows, decimals=4)
    print()
    print_table(["variant", "dtype", "encoder", "cases", "mean IoU", "worst case"], per_variant, decimals=4)
    overall = float(np.mean([r[4] for r in rows]))
    print(f"\noverall mean mask IoU (mean over {len(rows)} cases): {overall:.4f} (aim >= {args.min_iou})")
    return 0 if overall >= args.min_iou else 1


if __name__ == "__main__":
    sys.exit(main())
