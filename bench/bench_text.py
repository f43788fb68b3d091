"""Benchmark a text prompt end to end on sam2.1_hiera_tiny: detector + embed + decode, stage by stage.

    python bench/bench_text.py                       # Grounding DINO tiny if cached, else a random tiny one
    python bench/bench_text.py --detector DIR_OR_ID --checkpoint sam2.1_hiera_tiny.pt --repeats 5

Each stage is timed alone (median and min of --repeats runs after one warm-up), then the whole
`segment_text` call; the last line compares the end-to-end time with the sum of the stages, i.e. what
the glue between them (image decoding, box handling, result assembly) costs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGANY_SHARED", REPO.parent / "shared"))


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def load_sam(checkpoint: str | None, device: str, workdir: Path):
    import subprocess

    import torch

    import segany

    if checkpoint is None:  # deterministic random weights: same compute as the real checkpoint
        checkpoint = str(workdir / "sam2.1_hiera_tiny.pt")
        subprocess.run([sys.executable, str(SHARED / "tools" / "random_sam2_checkpoint.py"), "sam2.1_hiera_tiny",
                        checkpoint], check=True, capture_output=True)
    model = segany.load_model("sam2.1_hiera_tiny", checkpoint=checkpoint, device=device, dtype=torch.float32)
    return segany.Predictor(model)


def load_grounder(detector: str, device: str, workdir: Path):
    from segany.errors import ModelNotFound
    from segany.predict.text.grounding import TextGrounder

    try:
        return TextGrounder(model_id=detector, device=device), detector
    except ModelNotFound as exc:
        print(f"note: {exc}\nnote: using a random tiny Grounding DINO; its stage time is NOT representative",
              file=sys.stderr)
    sys.path.insert(0, str(REPO / "tests" / "predict"))
    from test_grounding import build_tiny_grounding_dino

    folder = build_tiny_grounding_dino(workdir / "tiny-grounding-dino")
    return TextGrounder(model_id=folder, device=device, box_threshold=0.5), "random tiny Grounding DINO"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="IDEA-Research/grounding-dino-tiny", help="hub id or local directory")
    parser.add_argument("--checkpoint", help="sam2.1_hiera_tiny.pt (default: deterministic random weights)")
    parser.add_argument("--image", default=str(SHARED / "fixtures" / "images" / "astronaut.png"))
    parser.add_argument("--text", default="a person. a flag. a helmet.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)

    import torch

    from segany.io.images import load_image
    from segany.predict.detections import masks_for_boxes
    from segany.predict.text.segment import segment_text

    with tempfile.TemporaryDirectory() as tmp:
        predictor = load_sam(args.checkpoint, args.device, Path(tmp))
        grounder, detector_name = load_grounder(args.detector, args.device, Path(tmp))
        source = Path(args.image).read_bytes()
        image = load_image(source)

        stages: dict[str, list[float]] = {}
        stages["decode image"], _ = timed(lambda: load_image(source), args.repeats)
        stages["detector"], found = timed(lambda: grounder.ground(image, args.text), args.repeats)
        stages["embed"], embedding = timed(lambda: predictor.embed(image), args.repeats)
        if len(found):
            stages["decode masks"], _ = timed(
                lambda: masks_for_boxes(predictor, embedding, found.boxes_xyxy, False), args.repeats)
        end_to_end, result = timed(lambda: segment_text(predictor, source, args.text, grounder=grounder), args.repeats)

    total_stages = sum(statistics.median(t) for t in stages.values())
    e2e = statistics.median(end_to_end)
    report = {
        "device": args.device, "torch_threads": torch.get_num_threads(), "detector": detector_name,
        "image_hw": list(image.shape[:2]), "text": args.text, "boxes": len(found), "masks": len(result),
        "stages_ms": {name: {"median": 1e3 * statistics.median(t), "min": 1e3 * min(t)} for name, t in stages.items()},
        "end_to_end_ms": {"median": 1e3 * e2e, "min": 1e3 * min(end_to_end)},
        "end_to_end_over_sum_of_stages": e2e / total_stages,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"text prompt on sam2.1_hiera_tiny, {args.device} ({report['torch_threads']} threads), detector: "
          f"{detector_name}, image {image.shape[1]}x{image.shape[0]}, {len(found)} boxes -> {len(result)} masks")
    print(f"{'stage':<14}{'median ms':>11}{'min ms':>10}{'share':>8}")
    for name, t in stages.items():
        median = statistics.median(t)
        print(f"{name:<14}{1e3 * median:>11.1f}{1e3 * min(t):>10.1f}{median / e2e:>8.0%}")
    print(f"{'end to end':<14}{1e3 * e2e:>11.1f}{1e3 * min(end_to_end):>10.1f}{1:>8.0%}")
    print(f"end to end / sum of stages: {report['end_to_end_over_sum_of_stages']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
