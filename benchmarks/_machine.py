"""What every benchmark shares: the header it prints first (CPU model and vector extensions, cores, library
versions, the git commit), alternating timing, and the ratios it reports (median of rounds, and best)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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


def commit() -> str:
    """The checkout's commit (short), with "+changes" when jaxst/ or benchmarks/ differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--", "jaxst", "benchmarks") else "")


def versions(*packages: str) -> str:
    """``"jax 0.10.2, torch 2.13.0+cpu, ..."`` for the installed ones among ``packages``."""
    found = []
    for name in packages:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def header(*packages: str) -> str:
    """The lines a benchmark prints first: the CPU (model, vector extensions, cores), the commit, the
    libraries' versions (jax and sentence-transformers always, then ``packages``), torch's thread count."""
    lines = [f"cpu: {cpu_description()}", f"commit: {commit()}",
             "versions: " + versions("jax", "jaxlib", "flax", "sentence-transformers", "torch", *packages)]
    try:
        import torch

        lines.append(f"torch threads: {torch.get_num_threads()}")
    except ImportError:
        pass
    return "\n".join(lines)


def ratios(reference: list[float], ours: list[float]) -> tuple[float, float]:
    """``(median, best)`` speed ratio of ours over reference from alternating times (seconds per call): the
    median of the per-round ratios (each round timed both sides back to back), and best time over best time."""
    per_round = [r / o for r, o in zip(reference, ours)]
    return statistics.median(per_round), min(reference) / min(ours)


def compare(reference, ours, repeats: int, warmup: bool = True) -> tuple[float, float, list[float], list[float]]:
    """Both callables timed in alternation (``alternating_times``): ``(median ratio, best ratio, reference
    times, our times)``, ratios as ``ratios`` (above 1: ours is faster)."""
    ref_times, our_times = alternating_times([reference, ours], repeats, warmup)
    return (*ratios(ref_times, our_times), ref_times, our_times)


def gemm_peaks(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This CPU's large-GEMM rates in GFLOP/s, measured now (best of ``repeats``, n x n x n): torch's and XLA's
    float32 matmul, and the int8 x int8 -> int32 products jaxst's int8 mode can use (XLA's int8 dot; the native
    VNNI kernel where it builds). The best float32 and the best int8 are the "peaks" the encode rates are
    measured against."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    rates = {}
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rates["torch float32"] = flops / best_time(lambda: torch.mm(ta, tb), repeats, warmup=True) / 1e9
    except ImportError:
        pass
    ja, jb = jax.device_put(a), jax.device_put(b)
    dot = jax.jit(jnp.dot)
    rates["XLA float32"] = flops / best_time(lambda: dot(ja, jb).block_until_ready(), repeats, warmup=True) / 1e9
    qa = jax.device_put(rng.integers(-128, 128, (n, n), dtype=np.int8))
    qb = rng.integers(-127, 128, (n, n), dtype=np.int8)
    idot = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.int32))
    jqb = jax.device_put(qb)
    rates["XLA int8"] = flops / best_time(lambda: idot(qa, jqb).block_until_ready(), repeats, warmup=True) / 1e9
    from jaxst import native

    if native.int8_matmul_kernel() is not None:
        packed, correction = (jax.device_put(x) for x in native.pack_int8_weights(qb))
        kernel = jax.jit(lambda x, p, c: native.int8_matmul(x, p, c, n))
        rates["native VNNI int8"] = flops / best_time(
            lambda: kernel(qa, packed, correction).block_until_ready(), repeats, warmup=True) / 1e9
    return rates


def encoder_flops(config: dict, lengths) -> float:
    """The useful floating-point work of a BERT-style encoder over texts of ``lengths`` real tokens (no
    padding): per layer and token, the dense layers (2 x (4 H^2 + 2 H I): q, k, v, output, and the MLP) and
    attention over the text's own tokens (2 x 2 x T x H: scores and the weighted sum)."""
    h = config.get("hidden_size") or config.get("dim")
    inter = config.get("intermediate_size") or config.get("hidden_dim")
    layers = config.get("num_hidden_layers") or config.get("n_layers")
    total = 0.0
    for t in lengths:
        total += layers * (2.0 * (4 * h * h + 2 * h * inter) * t + 4.0 * t * t * h)
    return total


def row(benchmark: str, work: str, median: float | None, best: float | None = None, note: str = "") -> None:
    """One result for ``run_all.py``'s table, printed as a ``ROW {json}`` line beside the script's own output:
    what ran, and jaxst's speed over the reference (median of alternating rounds, best over best)."""
    import json

    print("ROW " + json.dumps({"benchmark": benchmark, "work": work, "median": median, "best": best, "note": note}),
          flush=True)


def paired_scores(ours: list[float], theirs: list[float]) -> tuple[float, str]:
    """``(mean difference, verdict)`` of two libraries' scores over the same seeds: a paired t-test (scipy's
    ``ttest_rel``) says "same score" unless p < 0.05."""
    import statistics

    from scipy.stats import ttest_rel

    diff = statistics.mean(o - t for o, t in zip(ours, theirs))
    if len(ours) < 2 or all(o == t for o, t in zip(ours, theirs)):
        return diff, "no paired test (one seed, or identical scores)"
    p = float(ttest_rel(ours, theirs).pvalue)
    verdict = "same score" if p >= 0.05 else ("jaxst higher" if diff > 0 else "jaxst lower")
    return diff, f"paired t-test over {len(ours)} seeds: p = {p:.2f} -> {verdict}"
