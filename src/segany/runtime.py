"""Process-level tuning for CPU inference."""
from __future__ import annotations

import ctypes
import os
import sys
import threading

import torch

_lock = threading.Lock()
_done = False

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def onednn_runs_avx512() -> bool:
    """Whether torch dispatches AVX-512 kernels and oneDNN may too.

    `ATEN_CPU_CAPABILITY=avx2` and `ONEDNN_MAX_CPU_ISA=AVX2` cap them below what the CPU has (how an
    AVX2-only machine is emulated, or a kernel bug avoided). Not cached: a microsecond, and tests set
    the variables.
    """
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "ALL")).upper()
    return isa in ("ALL", "DEFAULT") or isa.startswith("AVX512") or "AMX" in isa


def limit_cpu_threads(threads: int) -> None:
    """Run torch's and OpenCV's CPU kernels on at most `threads` threads (the `--threads` options).

    OpenCV keeps its own pool, as large as the machine, for the masks' upsampling and post-processing;
    left alone it would oversubscribe the cores that several single-threaded workers share.
    """
    import cv2  # a core dependency (opencv-python-headless)

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def tune_cpu_allocator() -> bool:
    """Keep freed memory in the heap so large tensors are reused instead of page-faulted in again.

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it on free, so each large
    intermediate (a decoder batch's 64x32x256x256 upscaled features, say) pays page faults on first
    touch: an out-of-place add measured ~8x slower than the same add in place. Turning mmap off and
    raising the trim threshold to 1 GiB lets the heap keep those pages (the role jemalloc/tcmalloc
    play in PyTorch's CPU tuning guides). Idempotent; set SEGANY_MALLOC_TUNING=0 to skip.
    """
    global _done
    with _lock:
        if _done:
            return True
        if os.environ.get("SEGANY_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
        except (OSError, AttributeError):  # not glibc (musl, ...)
            return False
        _done = ok
        return ok


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc `malloc_trim(0)`); False where that is not glibc.

    `tune_cpu_allocator` keeps freed memory in the heap for reuse, which also keeps the peak of a burst
    resident after it is gone. Two callers: the server, when a burst of large request bodies is over; and
    video tracking while its memory bank fills, where each frame's attention temporaries are a little
    larger than the last and cannot reuse the previous frame's holes. glibc trims the top only of the main
    arena: what worker threads freed at the top of their own arenas stays resident (below the 1 GiB trim
    threshold), which is why uploads read in a thread pool return less.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the first processor in /proc/cpuinfo lists them (`avx2`, `avx512_bf16`,
    `amx_bf16`, ...); empty where there is no /proc/cpuinfo. Read on each call: well under a millisecond, and
    callers ask once per model load."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()
