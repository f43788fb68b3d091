"""Batch labelling throughput (images per second) on a folder of images: local, and Ray Data with N workers.

    python bench/bench_batch.py [--images 32] [--mode auto|boxes] [--points-per-side 8] [--ray-workers 2]
                                [--skip-ray] [--device cpu] [--dtype float32] [--threads N] [--checkpoint PATH]
                                [--json]
    segany bench batch -- --images 8

Both runs label the same folder into a fresh COCO file through `segany.batch` (the code behind `segany batch`
and `segany batch --ray`), with the same model and settings. The model defaults to the deterministic random
sam2.1_hiera_tiny checkpoint (../shared/tools), or SEGANY_MODEL / SEGANY_CHECKPOINT / SEGANY_DEVICE /
SEGANY_DTYPE from the environment (`segany bench` sets them from its options).

The images are the three fixture photographs cut into --images different crops and flips of --size.

Reported per run: wall time from start to the last image (model loading and, for Ray, starting the local
instance and its actors included), images/s over that wall time, the time until the first image was recorded
(start-up), and images/s after it (images after the first / time from the first to the last). Ray returns
rows in input order, so its images arrive in bursts and its after-start-up rate is only meaningful for many
images. Ratio = Ray images/s / local images/s, both end to end (> 1: Ray is faster). The local run uses all
of this machine's cores in one process; the Ray run starts a local instance with the same cores and splits
them among --ray-workers actors (one torch thread per CPU each).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import IMAGES, print_table, random_checkpoint


def make_images(folder: Path, count: int, size_wh: tuple[int, int]) -> None:
    """`count` distinct images of `size_wh`: crops (varying position and zoom) and flips of the fixtures."""
    sources = [Image.open(path).convert("RGB") for path in sorted(IMAGES.glob("*.png"))]
    rng = np.random.default_rng(0)
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = source.size
        zoom = rng.uniform(0.5, 1.0)
        crop_w, crop_h = int(width * zoom), int(height * zoom)
        x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        image = source.crop((x0, y0, x0 + crop_w, y0 + crop_h)).resize(size_wh)
        if index % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"image_{index:03d}.jpg", quality=92)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images in the folder")
    parser.add_argument("--size", default="640x480", help="image size WIDTHxHEIGHT")
    parser.add_argument("--mode", choices=("auto", "boxes"), default="auto")
    parser.add_argument("--points-per-side", type=int, default=8, help="auto mode grid (32 is the library default)")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--skip-ray", action="store_true", help="local run only")
    parser.add_argument("--model", default=os.environ.get("SEGANY_MODEL", "sam2.1_hiera_tiny"))
    parser.add_argument("--checkpoint", default=os.environ.get("SEGANY_CHECKPOINT"),
                        help="default: deterministic random weights for --model")
    parser.add_argument("--device", default=os.environ.get("SEGANY_DEVICE"))
    parser.add_argument("--dtype", default=os.environ.get("SEGANY_DTYPE"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SEGANY_THREADS", "0")) or None,
                        help="torch threads of the local run (default: torch's choice, one per core); Ray workers "
                             "always get one per CPU of their share")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    import torch

    from segany.batch.annotate import AnnotatorConfig
    from segany.batch.boxes import BoxPrompts
    from segany.batch.inputs import find_images
    from segany.batch.runner import RayOptions

    width, height = (int(v) for v in args.size.lower().split("x"))
    checkpoint = args.checkpoint
    if checkpoint is None and args.model.startswith("sam2"):
        checkpoint = str(random_checkpoint(args.model))
    amg = {"points_per_side": args.points_per_side, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0} \
        if args.mode == "auto" else {}
    config = AnnotatorConfig(mode=args.mode, model=args.model, checkpoint=checkpoint, device=args.device,
                             dtype=args.dtype, amg=amg, threads=args.threads)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        make_images(folder, args.images, (width, height))
        items = find_images(folder)
        if args.mode == "boxes":  # two boxes per image: the left and right halves
            from segany.batch.annotate import BoxPrompt

            halves = [BoxPrompt((0, 0, width / 2, height)), BoxPrompt((width / 2, 0, width, height))]
            boxes = BoxPrompts({item.file_name: halves for item in items})
            config_boxes = {"box_prompts": boxes}
        else:
            config_boxes = {}
        from segany.batch.runner import BatchRun

        def run(name: str, ray, config: AnnotatorConfig) -> None:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            done_at: list[float] = []
            start = time.perf_counter()
            job = BatchRun(items, config, Path(tmp) / f"{name}.json", overwrite=True, say=lambda text: None,
                           **config_boxes)
            summary = job.run(progress=False, ray=ray, on_result=lambda item, ok: done_at.append(time.perf_counter()))
            wall = done_at[-1] - start
            results[name] = {
                "images": summary.labelled, "annotations": summary.annotations, "wall_s": wall,
                "images_per_s": summary.labelled / wall, "first_image_s": done_at[0] - start,
                "after_first_images_per_s": (len(done_at) - 1) / (done_at[-1] - done_at[0])
                if len(done_at) > 1 and done_at[-1] > done_at[0] else None,
            }

        run("local", None, config)
        if not args.skip_ray:  # Ray workers: one torch thread per CPU of their share
            run(f"ray x{args.ray_workers}", RayOptions(workers=args.ray_workers, num_cpus=os.cpu_count()),
                dataclasses.replace(config, threads=None))
        outputs = {name: json.loads((Path(tmp) / f"{name}.json").read_text()) for name in results}

    local_rate = results["local"]["images_per_s"]
    for name, result in results.items():
        rate = result["images_per_s"]
        result["ratio_vs_local"] = rate / local_rate if rate and local_rate else None
        same = sum(a == b for a, b in zip(_per_image(outputs[name]), _per_image(outputs["local"])))
        result["images_identical_to_local"] = same
    report = {"device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"), "cpus": os.cpu_count(),
              "model": args.model, "mode": args.mode, "points_per_side": args.points_per_side if args.mode == "auto" else None,
              "images": args.images, "size": f"{width}x{height}", "runs": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"batch throughput: {args.images} images {width}x{height}, {args.model}, mode {args.mode}"
          f"{f' ({args.points_per_side} points per side)' if args.mode == 'auto' else ''}, {report['device']}, "
          f"{os.cpu_count()} CPUs")
    print_table(
        ["run", "images", "annotations", "wall s", "img/s", "start-up s", "img/s after", "ratio", "same as local"],
        [[name, r["images"], r["annotations"], r["wall_s"], r["images_per_s"], r["first_image_s"],
          r["after_first_images_per_s"], r["ratio_vs_local"], r["images_identical_to_local"]]
         for name, r in results.items()],
    )
    return 0


def _per_image(coco: dict) -> list[list]:
    """Each image's annotations without ids, in file order (for comparing two runs)."""
    by_image: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append({k: v for k, v in annotation.items() if k not in ("id", "image_id")})
    return [by_image[image["id"]] for image in sorted(coco["images"], key=lambda image: image["file_name"])]


if __name__ == "__main__":
    raise SystemExit(main())
