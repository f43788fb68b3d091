"""How close segany runs to this machine's matrix-multiply roofline, stage by stage, beside transformers.

    python bench/roofline.py [--variants tiny,base_plus] [--dtype auto|float32|bfloat16] [--repeats 3]
                             [--skip-hf] [--skip-amg] [--amg-points 32]

One run prints:
  1. the CPU's instruction sets as torch and /proc/cpuinfo see them (AVX2, AVX-512, AVX512-BF16, AMX);
  2. the measured GEMM peak (GFLOP/s) for each dtype timed, on all of torch's threads — the roofline — and
     again right before each stage, against which that stage's share is computed;
  3. per variant, for embed (1024x768 image), batched decode of 64 and 256 boxes (per prompt, upsampling to the
     image size and thresholding included) and automatic mask generation at --amg-points per side: the time,
     the GFLOP counted by torch's `FlopCounterMode` (matmuls, convolutions, attention), the achieved share of
     the roofline, and transformers' `Sam2Model` time and ratio where it does the same work (embed, decode).

`--dtype auto` (the default) times the dtype `segany.load_model` picks on this machine, which is what users
get. Weights are the deterministic random checkpoints of ../shared (real weights are not reachable here);
the network's FLOPs and time do not depend on the values, but with random weights AMG keeps few masks, so its
post-processing share is smaller than on real weights.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

import segany
from segany.model.variants import get_variant
from segany.model.weights import cpu_supports_bf16

from _common import IMAGES, counting_flops, print_table, random_checkpoint, time_interleaved
from bench_predictor import SHORT_NAMES, build_hf_model, preprocess_for_hf, upsample_masks

IMAGE_SIZE_WH = (1024, 768)
DECODE_BATCHES = (64, 256)
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}


def cpu_isa() -> str:
    """torch's dispatch level plus the relevant /proc/cpuinfo flags and the model name."""
    flags: set[str] = set()
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
                elif line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    present = [name for flag, name in ISA_FLAGS.items() if flag in flags]
    return (f"{model}; torch dispatch {torch.backends.cpu.get_cpu_capability()}; "
            f"cpuinfo: {', '.join(present) or 'none of ' + '/'.join(ISA_FLAGS.values())}")


def gemm_peak_gflops(dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best sustained GFLOP/s of square matmuls (1024..4096) in `dtype` on all threads."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.matmul(a, b, out=out)  # warm-up: packing buffers, thread pool
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3 or calls < 2:
            torch.matmul(a, b, out=out)
            calls += 1
        best = max(best, 2 * n**3 * calls / (time.perf_counter() - start) / 1e9)
    return best


def counted_gflop(fn: Callable[[], object], model: torch.nn.Module) -> float:
    """GFLOP torch counts in `fn`, run on `model`'s eager modules: torch sees nothing inside an OpenVINO encoder,
    whose graph is traced from those modules (the same work)."""
    compiled, model.compiled_encoder = model.compiled_encoder, None
    try:
        with counting_flops() as counter:
            fn()
    finally:
        model.compiled_encoder = compiled
    return counter.get_total_flops() / 1e9


def random_boxes(count: int, size_wh: tuple[int, int], seed: int = 0) -> np.ndarray:
    """`count` seeded boxes (10-30% of each side) inside the image, xyxy pixels."""
    w, h = size_wh
    rng = np.random.default_rng(seed)
    x0, y0 = rng.uniform(0, 0.7 * w, count), rng.uniform(0, 0.7 * h, count)
    return np.stack([x0, y0, x0 + rng.uniform(0.1, 0.3, count) * w,
                     y0 + rng.uniform(0.1, 0.3, count) * h], axis=1).astype(np.float32)


@dataclass(frozen=True)
class Stage:
    name: str
    prompts: int  # times are reported per prompt when > 1
    model: torch.nn.Module  # segany's, whose FLOPs are counted
    ours: Callable[[], object]
    theirs: Callable[[], object] | None


def stages(variant: str, dtype: torch.dtype, rgb: np.ndarray, skip_hf: bool, skip_amg: bool,
           amg_points: int) -> list[Stage]:
    checkpoint = random_checkpoint(variant)
    predictor = segany.Predictor(segany.load_model(variant, checkpoint=checkpoint, device="cpu", dtype=dtype))
    emb = predictor.embed(rgb)
    size_hw = rgb.shape[:2]
    hf = None if skip_hf else build_hf_model(get_variant(variant), checkpoint, dtype)
    hf_embeddings = None
    if hf is not None:
        def hf_embed():
            with torch.inference_mode():
                return hf.get_image_embeddings(preprocess_for_hf(rgb, predictor.model.image_size, dtype))
        hf_embeddings = hf_embed()

    model = predictor.model
    encoder = "openvino" if model.compiled_encoder is not None else "eager"
    print(f"{variant}: encoder runtime {encoder} (load_model's encoder_runtime, env SEGANY_ENCODER_RUNTIME)",
          flush=True)
    result = [Stage("embed", 1, model, lambda: predictor.embed(rgb), hf_embed if hf is not None else None)]
    for count in DECODE_BATCHES:
        boxes = random_boxes(count, (rgb.shape[1], rgb.shape[0]))

        def ours(boxes=boxes):
            return predictor.predict(emb, box=boxes, multimask_output=True)

        theirs = None
        if hf is not None:
            scale = np.array([predictor.model.image_size / rgb.shape[1], predictor.model.image_size / rgb.shape[0]] * 2,
                             dtype=np.float32)
            hf_boxes = torch.from_numpy(boxes * scale)[None]

            def theirs(hf_boxes=hf_boxes):
                with torch.inference_mode():
                    out = hf(image_embeddings=hf_embeddings, input_boxes=hf_boxes, multimask_output=True)
                    return upsample_masks(out.pred_masks[0], size_hw)
        result.append(Stage(f"decode-{count}", count, model, ours, theirs))
    if not skip_amg:
        generator = segany.MaskGenerator(predictor, points_per_side=amg_points)
        result.append(Stage(f"amg-{amg_points}", 1, model, lambda: generator.generate(rgb), None))
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="tiny,base_plus", help="comma list: tiny, small, base_plus, large")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                    help="auto: what segany.load_model picks on this machine")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per stage (median reported)")
    ap.add_argument("--amg-points", type=int, default=32, help="points per side of the AMG stage")
    ap.add_argument("--skip-hf", action="store_true", help="time segany only")
    ap.add_argument("--skip-amg", action="store_true", help="leave out automatic mask generation")
    args = ap.parse_args(argv)

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
        args.dtype, torch.bfloat16 if cpu_supports_bf16() else torch.float32)
    rgb = np.array(Image.open(IMAGES / "astronaut.png").convert("RGB").resize(IMAGE_SIZE_WH, Image.BILINEAR))
    print(f"CPU: {cpu_isa()}", flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; timing {str(dtype)[6:]} "
          f"({'chosen by load_model' if args.dtype == 'auto' else 'forced'}); image {IMAGE_SIZE_WH[0]}x"
          f"{IMAGE_SIZE_WH[1]}; median of {args.repeats} after 1 warm-up", flush=True)
    peaks = {torch.float32: gemm_peak_gflops(torch.float32)}
    if dtype != torch.float32:
        peaks[dtype] = gemm_peak_gflops(dtype)
    for peak_dtype, gflops in peaks.items():
        print(f"GEMM peak {str(peak_dtype)[6:]}: {gflops:.0f} GFLOP/s", flush=True)

    rows = []
    for short in args.variants.split(","):
        variant = SHORT_NAMES.get(short.strip(), short.strip())
        for stage in stages(variant, dtype, rgb, args.skip_hf, args.skip_amg, args.amg_points):
            gflop = counted_gflop(stage.ours, stage.model) / stage.prompts
            contenders = {"segany": stage.ours} if stage.theirs is None else {"segany": stage.ours,
                                                                               "hf": stage.theirs}
            # On a shared VM the machine's speed drifts by 20% within minutes (the same embed read 1.2 and 1.6 s
            # a few minutes apart), so each stage is held against the peak measured right before it.
            roofline = gemm_peak_gflops(dtype, seconds=1.0)
            timings = time_interleaved(contenders, args.repeats)
            seconds = timings["segany"].median_s / stage.prompts
            hf_seconds = timings["hf"].median_s / stage.prompts if "hf" in timings else None
            rows.append([variant.replace("sam2.1_hiera_", ""), stage.name + (" /prompt" if stage.prompts > 1 else ""),
                         1000 * seconds, gflop, roofline, 100 * gflop / seconds / roofline,
                         None if hf_seconds is None else 1000 * hf_seconds,
                         None if hf_seconds is None else hf_seconds / seconds])
            print(f"  {rows[-1][0]} {rows[-1][1]}: {rows[-1][2]:.1f} ms", flush=True)
    print()
    print_table(["variant", "stage", "segany ms", "GFLOP", "peak GFLOP/s", "% roofline", "HF ms", "HF/segany"], rows)


if __name__ == "__main__":
    main()
