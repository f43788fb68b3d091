"""The image encoder run by OpenVINO beside segany's eager encoder, in one process: is a compiled runtime worth it here?

    pip install openvino    # not a segany dependency: this benchmark is how one would decide to make it one
    python bench/openvino_encoder.py [--variants sam2.1_hiera_tiny] [--dtype auto|float32|bfloat16] [--repeats 6]

The OpenVINO graph is converted from segany's own `SAM2ImageModel.encode_image` (float32 weights; `fused.py`
steps aside while the model is traced), then compiled with `INFERENCE_PRECISION_HINT` set to the dtype
`load_model` picks here (or `--dtype`). Prints the CPU's ISA and GEMM peak, the convert and compile seconds
(what a first start would pay before an artefact cache), both runtimes' embed times alternated call by call,
the share of the roofline each reaches, and each output's mean relative error against eager float32.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import segany
from _common import counting_flops, format_table, random_checkpoint, time_interleaved
from roofline import IMAGE_SIZE_WH, cpu_isa, gemm_peak_gflops
from segany.model.weights import default_dtype


class _Encoder(torch.nn.Module):
    """`encode_image` as a module's forward, which is what converters trace."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.encode_image(images)


def relative_error(a: torch.Tensor, reference: torch.Tensor) -> float:
    return ((a.float() - reference).abs().mean() / reference.abs().mean()).item()


def run(variant: str, dtype: torch.dtype, repeats: int) -> None:
    import openvino as ov

    checkpoint = random_checkpoint(variant)
    eager = segany.load_model(variant, checkpoint=checkpoint, device="cpu", dtype=dtype).eval()
    reference = copy.deepcopy(eager).float() if dtype != torch.float32 else eager
    w, h = IMAGE_SIZE_WH
    rgb = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    images = reference.preprocess(rgb)

    start = time.perf_counter()
    with torch.no_grad():
        graph = ov.convert_model(_Encoder(reference), example_input=images)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    hint = {torch.float32: "f32", torch.bfloat16: "bf16"}[dtype]
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    compile_s = time.perf_counter() - start
    request = compiled.create_infer_request()
    pixels = images.numpy()

    def openvino_embed() -> list[torch.Tensor]:
        return [torch.from_numpy(out.copy()) for out in request.infer([pixels]).values()]

    def eager_embed() -> tuple[torch.Tensor, ...]:
        with torch.inference_mode():
            return eager.encode_image(images)

    with torch.inference_mode(), counting_flops() as counter:
        expected = reference.encode_image(images)  # the float32 outputs both runtimes are compared with
    gflop = counter.get_total_flops() / 1e9
    calls = {"eager": eager_embed, "openvino": openvino_embed}
    peak = gemm_peak_gflops(dtype, seconds=1.0)
    timings = time_interleaved(calls, repeats=repeats)
    errors = {name: [relative_error(out, ref) for out, ref in zip(call(), expected)] for name, call in calls.items()}

    print(f"\n{variant}, {dtype}: convert {convert_s:.1f} s, compile {compile_s:.1f} s; {gflop:.1f} GFLOP an embed; "
          f"GEMM peak right before timing {peak:.0f} GFLOP/s")
    rows = [(name, t.median_ms, 1000 * min(t.seconds), 100.0 * gflop / t.median_s / peak,
             ", ".join(f"{e:.2e}" for e in errors[name])) for name, t in timings.items()]
    print(format_table(("runtime", "median ms", "min ms", "% roofline",
                        "mean relative error (image_embed, high_res_0, high_res_1)"), rows, decimals=1))
    print(f"eager / openvino: {timings['eager'].median_s / timings['openvino'].median_s:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="sam2.1_hiera_tiny", help="comma list of full variant names")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: what segany.load_model picks on this machine")
    parser.add_argument("--repeats", type=int, default=6, help="timed calls per runtime, alternated")
    args = parser.parse_args(argv)
    try:
        import openvino
    except ImportError:
        raise SystemExit("this benchmark needs OpenVINO: pip install openvino") from None
    variants = args.variants.split(",")
    dtype = default_dtype(torch.device("cpu")) if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"CPU: {cpu_isa()}")
    print(f"torch {torch.__version__}, OpenVINO {openvino.__version__}, {torch.get_num_threads()} threads; "
          f"image {IMAGE_SIZE_WH[0]}x{IMAGE_SIZE_WH[1]}")
    for variant in variants:
        run(variant, dtype, args.repeats)


if __name__ == "__main__":
    main()
