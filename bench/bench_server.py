"""Latency of one click through HTTP: on an already-embedded image, and the same click with the cache off.

    python bench/bench_server.py [--dtype bfloat16] [--clicks 30] [--uncached-clicks 5] [--image PATH]
                                 [--checkpoint PATH] [--device cpu]

Starts `python -m segany.server` twice on 127.0.0.1 (tiny model, random weights unless --checkpoint):
once with the embedding cache on and once with `--embedding-cache-mb 0`. Each click is one
`POST /v1/segment` with one positive point at a random place and three masks as COCO RLE, timed at the
client (keep-alive connection, so no connect time). Cases:

  image_id, cache on     the web-page flow: the image was embedded once, clicks send only its image_id
  image bytes, cache on  every click uploads the image; it is decoded and hashed, the embedding is reused
  image bytes, cache off every click uploads the image and pays a full embed

`p50 ms` is the median client latency; `server decode ms` the median decoder time the server reports
(`timing_ms.decode`); `x faster` compares each p50 with the cache-off p50. The issue's aim is a p50 of at
most 50 ms for the first case with tiny in bfloat16.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from _common import IMAGES, print_table, random_checkpoint, server_process



def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set size (Linux VmHWM), or None where /proc is not available."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def click(client: httpx.Client, size_wh: tuple[int, int], rng: random.Random, image: bytes | None = None,
          image_id: str | None = None) -> tuple[float, dict]:
    """One single-point click; returns (client seconds, response body)."""
    prompts = [{"points": [[rng.uniform(0, size_wh[0] - 1), rng.uniform(0, size_wh[1] - 1)]], "labels": [1]}]
    start = time.perf_counter()
    if image is not None:
        response = client.post("/v1/segment", files={"image": ("image.png", image, "image/png")},
                               data={"prompts": json.dumps(prompts), "format": "rle"})
    else:
        response = client.post("/v1/segment", json={"image_id": image_id, "prompts": prompts, "format": "rle"})
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return elapsed, response.json()


def time_clicks(url: str, image: bytes, size_wh: tuple[int, int], clicks: int, by_id: bool) -> tuple[list, list]:
    rng = random.Random(0)
    with httpx.Client(base_url=url, timeout=600) as client:
        _, first = click(client, size_wh, rng, image=image)  # warm-up; embeds the image
        seconds, decode_ms = [], []
        for _ in range(clicks):
            elapsed, body = click(client, size_wh, rng, image=None if by_id else image,
                                  image_id=first["image_id"] if by_id else None)
            seconds.append(elapsed)
            decode_ms.append(body["timing_ms"]["decode"])
    return seconds, decode_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", help="tiny checkpoint (default: the deterministic random one)")
    parser.add_argument("--image", type=Path, default=IMAGES / "astronaut.png")
    parser.add_argument("--clicks", type=int, default=30, help="timed clicks per cached case")
    parser.add_argument("--uncached-clicks", type=int, default=5, help="timed clicks with the cache off")
    args = parser.parse_args()

    checkpoint = args.checkpoint or str(random_checkpoint("sam2.1_hiera_tiny"))
    image = args.image.read_bytes()
    with Image.open(io.BytesIO(image)) as opened:
        size_wh = opened.size
    common = ["--checkpoint", checkpoint, "--dtype", args.dtype, "--device", args.device]
    import torch

    print(f"tiny, {args.dtype} on {args.device}, image {args.image.name} {size_wh[0]}x{size_wh[1]}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    cases = []
    with server_process(common) as server:
        cases.append(("image_id, cache on", *time_clicks(server.url, image, size_wh, args.clicks, by_id=True)))
        cases.append(("image bytes, cache on", *time_clicks(server.url, image, size_wh, args.clicks, by_id=False)))
    with server_process([*common, "--embedding-cache-mb", "0"]) as server:
        cases.append(("image bytes, cache off",
                      *time_clicks(server.url, image, size_wh, args.uncached_clicks, by_id=False)))
    uncached_p50 = statistics.median(cases[-1][1])
    rows = []
    for name, seconds, decode_ms in cases:
        p50 = statistics.median(seconds)
        rows.append((name, len(seconds), 1000 * p50, 1000 * float(np.percentile(seconds, 90)),
                     statistics.median(decode_ms), uncached_p50 / p50))
    print_table(["case", "clicks", "p50 ms", "p90 ms", "server decode ms", "x faster"], rows, decimals=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
