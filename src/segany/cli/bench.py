"""`segany bench`: find the benchmark scripts (bench/bench_*.py of the source tree) and run them.

Each benchmark runs as its own process (`python bench/bench_NAME.py ARGS...`), one after another, so their
timings never overlap. The model options reach them as SEGANY_MODEL, SEGANY_CHECKPOINT, SEGANY_DEVICE,
SEGANY_DTYPE, SEGANY_ENCODER_RUNTIME (and SEGANY_THREADS) in the environment.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from segany.errors import InvalidInput

PREFIX = "bench_"


def default_bench_dir() -> Path:
    """$SEGANY_BENCH_DIR, else bench/ next to the segany package (a source checkout or editable install)."""
    configured = os.environ.get("SEGANY_BENCH_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "bench"


def discover(folder: Path) -> dict[str, Path]:
    """Benchmark name (file name without `bench_` and `.py`) -> script, sorted by name."""
    if not folder.is_dir():
        return {}
    return {path.stem[len(PREFIX):]: path for path in sorted(folder.glob(f"{PREFIX}*.py"))}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="benchmarks to run, e.g. batch predictor (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--bench-dir", default=None,
                        help="folder of bench_*.py scripts (default: $SEGANY_BENCH_DIR, else bench/ of the source tree)")


def select(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """The folder and the benchmarks to run; InvalidInput for unknown names or a folder without benchmarks."""
    folder = Path(args.bench_dir) if args.bench_dir else default_bench_dir()
    found = discover(folder)
    if not found:
        raise InvalidInput(f"no bench_*.py scripts in {str(folder)!r}: the benchmarks ship with the source tree; "
                           "pass --bench-dir or set SEGANY_BENCH_DIR", "bench_dir")
    names = [name[len(PREFIX):] if name.startswith(PREFIX) else name.removesuffix(".py") for name in args.names]
    unknown = [name for name in names if name not in found]
    if unknown:
        raise InvalidInput(f"unknown benchmark {', '.join(unknown)}; available: {', '.join(found)}", "names")
    return folder, {name: found[name] for name in names} if names else found


def benchmark_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("model", "checkpoint", "device", "dtype", "threads", "encoder_runtime"):
        value = getattr(args, name, None)
        if value is not None:
            env[f"SEGANY_{name.upper()}"] = str(value)
    return env


def run_benchmarks(args: argparse.Namespace, chosen: dict[str, Path]) -> int:
    """Run `chosen` one at a time with the pass-through arguments; 0 when all succeed, else 1."""
    if args.list:
        for name, path in chosen.items():
            print(f"{name}\t{path}")
        return 0
    env = benchmark_env(args)
    failed = []
    for name, path in chosen.items():
        print(f"== {name} ({path}) ==", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(path), *args.passthrough], env=env).returncode
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.1f} s ==", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
