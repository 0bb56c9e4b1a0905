"""What every benchmark shares: the CPU line it prints first (model and vector extensions), and timing."""

from __future__ import annotations

import os
import platform
import time

# The /proc/cpuinfo flags that matter for these kernels, in the order printed.
VECTOR_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"]


def cpu_description() -> str:
    """``"AMD EPYC (2 cores): avx2 fma avx512f ... avx512_vnni"``, from /proc/cpuinfo where it exists."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    found = " ".join(f for f in VECTOR_FLAGS if f in flags) or "no AVX2/AVX-512"
    return f"{model} ({os.cpu_count()} cores): {found}"


def best_time(fn, repeats: int, warmup: bool = False) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, in seconds (one untimed call first with ``warmup``)."""
    return min(alternating_times([fn], repeats, warmup)[0])


def alternating_times(fns, repeats: int, warmup: bool = True) -> list[list[float]]:
    """Each of ``fns`` timed ``repeats`` times in alternation (a, b, a, b, ... with the order flipped every
    round), in seconds per call: a slow minute on a shared VM then lands on both sides instead of on
    whichever ran during it. One untimed call of each first with ``warmup``."""
    if warmup:
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return times
