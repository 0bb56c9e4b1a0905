"""jaxst's own encode rate on one model and text set, for before/after comparisons of jaxst itself (one tree
per process: ``PYTHONPATH=<tree> python benchmarks/encode_rate.py``; ``engine_ab.sh`` alternates two trees).

    python benchmarks/encode_rate.py [--model all-MiniLM-L6-v2] [--set stsb|long] [--batch-size 32] [--repeats 7]

Prints the CPU, the jaxst it imported (path and git commit), and texts/s as the median and the best of
``--repeats`` timed calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_description  # noqa: E402
from _stsb import unique_sentences  # noqa: E402
from encode_speed import model_folder, paragraphs, stsb_test  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--set", default="stsb", choices=["stsb", "long"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--read-behind", type=int, default=None,
                        help="set jaxst.engine.READ_BEHIND (batches dispatched ahead of the read-back) for this run")
    args = parser.parse_args()

    import jaxst

    if args.read_behind is not None:
        from jaxst import engine

        engine.READ_BEHIND = args.read_behind

    tree = Path(jaxst.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "jaxst"], capture_output=True,
                           text=True).stdout.strip()
    model = jaxst.SentenceTransformer(model_folder(args.model))
    count = lambda text: len(model.tokenizer.encode_ids([text])[0].ids)  # noqa: E731
    texts = stsb_test() if args.set == "stsb" else paragraphs(unique_sentences("stsb-en-test.csv"), count)
    model.encode(texts, batch_size=args.batch_size)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.encode(texts, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    depth = "" if args.read_behind is None else f", READ_BEHIND {args.read_behind}"
    print(f"cpu: {cpu_description()}")
    print(f"jaxst {tree} @ {commit}{' (modified)' if dirty else ''}: {args.model}, {args.set} ({len(texts)} texts), "
          f"batch {args.batch_size}{depth}: median {len(texts) / statistics.median(times):.1f} texts/s, "
          f"best {len(texts) / min(times):.1f} (of {args.repeats})", flush=True)


if __name__ == "__main__":
    main()
