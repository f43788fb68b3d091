"""segany's image encoder on OpenVINO (`encoder_runtime="openvino"`) beside the eager one, in one process.

    pip install 'segany[openvino]'
    python bench/openvino_encoder.py [--variants sam2.1_hiera_tiny] [--dtype auto|float32|bfloat16] [--repeats 6]

Loads each variant three times with `segany.load_model`: eagerly, then with OpenVINO into an empty cache folder
(a first start: trace, convert, save, compile), then again (a later start: from the cache), and prints the
three load times. Then it prints the CPU's ISA and GEMM peak, both encoders' embed times alternated call by
call, the share of the roofline each reaches, and each output's mean relative error against eager float32.
This is how `encoder_runtime="auto"` was chosen (segany/model/encoder_runtime.py); it is not named `bench_*`
so that `segany bench` leaves it out.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import numpy as np
import torch

import segany
from _common import counting_flops, format_table, random_checkpoint, time_interleaved
from roofline import IMAGE_SIZE_WH, cpu_isa, gemm_peak_gflops
from segany.errors import MissingExtra
from segany.model.encoder_runtime import import_openvino, openvino_installed
from segany.model.weights import default_dtype


def relative_error(a: torch.Tensor, reference: torch.Tensor) -> float:
    return ((a.float() - reference).abs().mean() / reference.abs().mean()).item()


def timed_load(variant: str, checkpoint, dtype: torch.dtype, runtime: str) -> tuple[torch.nn.Module, float]:
    start = time.perf_counter()
    model = segany.load_model(variant, checkpoint=checkpoint, device="cpu", dtype=dtype, encoder_runtime=runtime)
    return model, time.perf_counter() - start


def run(variant: str, dtype: torch.dtype, repeats: int) -> None:
    checkpoint = random_checkpoint(variant)
    eager, eager_load_s = timed_load(variant, checkpoint, dtype, "eager")
    previous = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory(prefix="segany-openvino-bench-") as cache_home:
        os.environ["XDG_CACHE_HOME"] = cache_home  # an empty cache: the first start is a real one
        _, first_load_s = timed_load(variant, checkpoint, dtype, "openvino")
        compiled, cached_load_s = timed_load(variant, checkpoint, dtype, "openvino")
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = previous
    if compiled.compiled_encoder is None:
        raise SystemExit("OpenVINO could not build the encoder (see the warning above)")
    reference = copy.deepcopy(eager).float() if dtype != torch.float32 else eager
    w, h = IMAGE_SIZE_WH
    images = reference.preprocess((np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8))

    def embed_with(model):
        def embed() -> tuple[torch.Tensor, ...]:
            with torch.inference_mode():
                return model.encode_image(images)
        return embed

    with torch.inference_mode(), counting_flops() as counter:
        expected = reference.encode_image(images)  # the float32 outputs both runtimes are compared with
    gflop = counter.get_total_flops() / 1e9
    calls = {"eager": embed_with(eager), "openvino": embed_with(compiled)}
    peak = gemm_peak_gflops(dtype, seconds=1.0)
    timings = time_interleaved(calls, repeats=repeats)
    errors = {name: [relative_error(out, ref) for out, ref in zip(call(), expected)] for name, call in calls.items()}

    print(f"\n{variant}, {dtype}: load {eager_load_s:.1f} s eager, {first_load_s:.1f} s with OpenVINO at a first "
          f"start (converted and cached), {cached_load_s:.1f} s at a later start (from the cache); "
          f"{gflop:.1f} GFLOP an embed; GEMM peak right before timing {peak:.0f} GFLOP/s")
    rows = [(name, t.median_ms, 1000 * min(t.seconds), 100.0 * gflop / t.median_s / peak,
             ", ".join(f"{e:.2e}" for e in errors[name])) for name, t in timings.items()]
    print(format_table(("encoder", "median ms", "min ms", "% roofline",
                        "mean relative error (image_embed, high_res_0, high_res_1)"), rows, decimals=1))
    print(f"eager / openvino: {timings['eager'].median_s / timings['openvino'].median_s:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="sam2.1_hiera_tiny", help="comma list of full variant names")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: what segany.load_model picks on this machine")
    parser.add_argument("--repeats", type=int, default=6, help="timed calls per runtime, alternated")
    args = parser.parse_args(argv)
    if not openvino_installed():
        raise SystemExit(str(MissingExtra("openvino", "openvino", "This benchmark")))
    openvino = import_openvino()
    variants = args.variants.split(",")
    dtype = default_dtype(torch.device("cpu")) if args.dtype == "auto" else getattr(torch, args.dtype)
    print(f"CPU: {cpu_isa()}")
    print(f"torch {torch.__version__}, OpenVINO {openvino.__version__}, {torch.get_num_threads()} threads; "
          f"image {IMAGE_SIZE_WH[0]}x{IMAGE_SIZE_WH[1]}")
    for variant in variants:
        run(variant, dtype, args.repeats)


if __name__ == "__main__":
    main()
