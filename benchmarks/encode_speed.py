"""Encoding throughput: jaxst vs sentence-transformers on the STSb test sentences, same process.

    python benchmarks/encode_speed.py [--model all-MiniLM-L6-v2] [--batch-size 32] [--repeats 3]

Each library encodes the unique sentences of stsb-en-test.csv once to warm up (jaxst compiles its
shape buckets there; the compile time is reported separately), then `--repeats` timed runs; the best
run counts. Prints sentences/s for both and the ratio jaxst / sentence-transformers.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "stsb-en-test.csv"


def sentences() -> list[str]:
    with open(STSB, encoding="utf-8", newline="") as f:
        return list(dict.fromkeys(s for a, b, _ in csv.reader(f) for s in (a, b)))


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer as Reference

    import jaxst

    texts = sentences()
    ours = jaxst.SentenceTransformer(args.model)
    reference = Reference(str(ours.model_folder), device="cpu")

    start = time.perf_counter()
    a = ours.encode(texts, batch_size=args.batch_size)
    warm = time.perf_counter() - start
    b = reference.encode(texts, batch_size=args.batch_size)
    assert np.abs(a - b).max() < 1e-5

    t_ours = best_time(lambda: ours.encode(texts, batch_size=args.batch_size), args.repeats)
    t_ref = best_time(lambda: reference.encode(texts, batch_size=args.batch_size), args.repeats)
    n = len(texts)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()}), "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"model {args.model}, {n} STSb test sentences, batch {args.batch_size}, best of {args.repeats}")
    print(f"sentence-transformers: {n / t_ref:8.1f} sentences/s")
    print(f"jaxst:                 {n / t_ours:8.1f} sentences/s  (first run incl. compiling: {warm:.1f} s)")
    print(f"ratio jaxst / sentence-transformers: {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
