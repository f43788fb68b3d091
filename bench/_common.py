"""Small helpers shared by the benchmarks: random checkpoints, timing, tables.

Benchmarks run as scripts (`python bench/NAME.py`), so this module is imported as `_common`.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import httpx

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGANY_SHARED", REPO.parent / "shared"))
IMAGES = SHARED / "fixtures" / "images"
GOLDENS = SHARED / "fixtures" / "goldens"
CHECKPOINT_TOOL = SHARED / "tools" / "random_sam2_checkpoint.py"


def checkpoint_cache_dir() -> Path:
    """Where random checkpoints are kept between runs: $SEGANY_BENCH_CACHE or a folder in the temp dir."""
    folder = Path(os.environ.get("SEGANY_BENCH_CACHE", Path(tempfile.gettempdir()) / "segany-bench-checkpoints"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def random_checkpoint(variant: str, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Path of `variant`'s deterministic random checkpoint (official layout), written once and then reused.

    Seed 0 gives the weights the goldens were computed from.
    """
    folder = cache_dir or checkpoint_cache_dir()
    path = folder / f"{variant}-seed{seed}.pt"
    if not path.is_file():
        # Write to a private name first so a concurrent run never reads a half-written file.
        partial = folder / f".{path.name}.{os.getpid()}.partial"
        subprocess.run(
            [sys.executable, str(CHECKPOINT_TOOL), variant, str(partial), "--seed", str(seed)],
            check=True, capture_output=True,
        )
        partial.replace(path)
    return path


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of the timed repeats (warm-up calls excluded)."""

    seconds: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_ms(self) -> float:
        return 1000.0 * self.median_s

    @property
    def min_ms(self) -> float:
        return 1000.0 * min(self.seconds)


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; returns every timed duration."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def time_interleaved(calls: Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, Timing]:
    """Time several callables that are to be compared, alternating between them on every repeat.

    On a shared machine the load drifts; alternating spreads the drift over all contenders instead of
    penalising whichever ran during a busy spell.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(max(1, repeats)):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in seconds.items()}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], decimals: int = 2) -> str:
    """A plain-text table: text left-aligned, numbers right-aligned, None as '-'.

    Floats get `decimals` decimals, or 1 significant digit in exponent form when smaller than that shows.
    """

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{decimals}f}" if value == 0 or abs(value) >= 10**-decimals else f"{value:.1e}"
        return str(value)

    texts = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in texts)) if texts else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(r) for r in texts)
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], decimals: int = 2) -> None:
    print(format_table(headers, rows, decimals), flush=True)


# ---- a segany server in its own process -------------------------------------------------------------


@dataclass
class ServerProcess:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, deadline: float, process: subprocess.Popen | None = None,
                     probe_timeout_s: float = 5.0) -> None:
    """Poll `url`/readyz until it answers 200; RuntimeError when `process` exits or `deadline` (monotonic) passes."""
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=probe_timeout_s).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not become ready")
        time.sleep(0.2)


@contextmanager
def server_process(options: list[str], ready_timeout_s: float = 600) -> Iterator[ServerProcess]:
    """`python -m segany.server OPTIONS` on 127.0.0.1 and a free port, until the block exits."""
    port = free_port()
    command = [sys.executable, "-m", "segany.server", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", *options]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, time.monotonic() + ready_timeout_s, process)
        yield ServerProcess(url, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """torch's `FlopCounterMode` (2 FLOPs per multiply-add) over what runs inside, with its two gaps filled.

    Its formula table lists the CUDA attention kernels only, while on CPU SDPA lowers to
    `_scaled_dot_product_flash_attention_for_cpu` (uncounted, a third of an embed's FLOPs went missing);
    and it has no formula for oneDNN's fused linears, so `segany.model.fused` runs the plain ops they fuse.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from segany.model import fused

    def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with fused.plain(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        yield counter

