"""GradCache fine-tuning, jaxst vs sentence-transformers, same run: retrieval quality, epoch time, peak memory.

    python benchmarks/finetune_speed.py [--seed 0] [--runs 2] [--limit N] [--no-dropout]

The recipe (issue #20): all-MiniLM-L6-v2 fine-tuned with CachedMultipleNegativesRankingLoss (batch 256,
mini-batch 32, scale 20, cosine) for one epoch over the stsb-en-train pairs scoring at least 4.0 (1,406
pairs: 6 steps), AdamW at 5e-5 with weight decay 0.01 except biases and LayerNorm, no warmup, linear decay,
gradients clipped to norm 1, dropout on. Both sides take the same batches in the same seeded order.
Evaluated before and after by InformationRetrievalEvaluator on the STSb-derived task of
tests/test_evaluation.py (stsb-en-test pairs scoring at least 4.0: first sentence the query, second its
relevant document; every unique second sentence the corpus), each library with its own evaluator.

Each side runs in its own subprocess, so neither's imports or caches weigh on the other's memory.
Memory: the process's resident set sampled every 5 ms during the epoch (its peak, and its growth over the
resident set just before the epoch: what training itself adds), and the process's lifetime peak
(``ru_maxrss``). The sentence-transformers side is its CachedMultipleNegativesRankingLoss in the loop its
trainer runs (written out: the Trainer needs ``accelerate``). jaxst runs ``jaxst.training.fit``. Its
compilation cache starts empty: run 1 compiles every batch shape inside the epoch, run 2 (a new process)
finds them in the persistent cache, as a user's second fine-tuning run would.

``--no-dropout`` trains both sides without dropout (the recipe's only random part): their NDCG@10 after
should then agree to rounding, which checks the rest of the recipe end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from _machine import cpu_description
from _stsb import read_stsb  # benchmarks/ is on sys.path when a script here runs
from _torch_recipe import torch_epoch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH, MINI_BATCH, LR, WEIGHT_DECAY, SCALE = 256, 32, 5e-5, 0.01, 20.0


def train_pairs(limit: int | None) -> list[tuple[str, str]]:
    return [(a, b) for a, b, score in read_stsb("stsb-en-train.csv") if score >= 4.0][:limit]


def retrieval_task():
    rows = read_stsb("stsb-en-test.csv")
    corpus_texts = list(dict.fromkeys(b for _, b, _ in rows))
    cid = {text: f"c{i}" for i, text in enumerate(corpus_texts)}
    queries, relevant = {}, {}
    for i, (a, b, score) in enumerate(rows):
        if score >= 4.0:
            queries[f"q{i}"] = a
            relevant[f"q{i}"] = {cid[b]}
    return queries, {c: t for t, c in cid.items()}, relevant


def batches(n: int, seed: int):
    import numpy as np

    order = np.random.default_rng([seed, 0]).permutation(n)  # jaxst.training.batch_order's epoch-0 order
    return [order[i:i + BATCH] for i in range(0, n, BATCH)]


class PeakRSS:
    """The process's resident set, sampled every 5 ms in a thread while the block runs."""

    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_torch(folder, pairs, seed: int, dropout: bool) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(str(folder), device="cpu")
    evaluator = InformationRetrievalEvaluator(*retrieval_task(), name="stsb")
    before = evaluator(model)["stsb_cosine_ndcg@10"]
    loss = CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=MINI_BATCH)
    order = batches(len(pairs), seed)
    with PeakRSS() as memory:
        seconds = torch_epoch(model, loss, [[pairs[i] for i in idx] for idx in order], LR, 0, WEIGHT_DECAY, dropout)
    return result(seconds, before, evaluator(model)["stsb_cosine_ndcg@10"], memory, len(order))


def run_jaxst(folder, pairs, seed: int, dropout: bool) -> dict:
    import jaxst
    from jaxst import losses, training
    from jaxst.evaluation import InformationRetrievalEvaluator

    model = jaxst.SentenceTransformer(folder)
    evaluator = InformationRetrievalEvaluator(*retrieval_task(), name="stsb")
    before = evaluator(model)["stsb_cosine_ndcg@10"]
    loss = losses.CachedMultipleNegativesRankingLoss(scale=SCALE, mini_batch_size=MINI_BATCH)
    with PeakRSS() as memory:
        start = time.perf_counter()
        history = training.fit(model, pairs, loss, epochs=1, batch_size=BATCH, learning_rate=LR, warmup_steps=0,
                               weight_decay=WEIGHT_DECAY, seed=seed, show_progress_bar=False, dropout=dropout)
        seconds = time.perf_counter() - start
    return result(seconds, before, evaluator(model)["stsb_cosine_ndcg@10"], memory, len(history["loss"]))


def result(seconds: float, before: float, after: float, memory: PeakRSS, steps: int) -> dict:
    """One side's figures, as the parent reads them."""
    return {"seconds": seconds, "before": before, "after": after, "rss_start": memory.start,
            "rss_peak": memory.peak, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "steps": steps}


def child(side: str, seed: int, limit: int | None, dropout: bool) -> None:
    from jaxst.io.hub import packaged_model_folder

    folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    result = (run_jaxst if side == "jaxst" else run_torch)(folder, train_pairs(limit), seed, dropout)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, seed: int, limit: int | None, env: dict, dropout: bool) -> dict:
    command = [sys.executable, __file__, "--child", side, "--seed", str(seed),
               "--dropout" if dropout else "--no-dropout"]
    if limit is not None:
        command += ["--limit", str(limit)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"{side} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2, help="jaxst runs (run 1 compiles, later runs hit the cache)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only (a quick check)")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True,
                        help="train with dropout (the recipe); --no-dropout checks the rest of it deterministically")
    parser.add_argument("--child", choices=["jaxst", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seed, args.limit, args.dropout)
        return
    print(f"cpu: {cpu_description()}", flush=True)
    n = len(train_pairs(args.limit))
    print(f"{n} training pairs (stsb-en-train, score >= 4.0), batch {BATCH}, mini-batch {MINI_BATCH}, lr {LR}, "
          f"seed {args.seed}{'' if args.dropout else ', no dropout'}", flush=True)
    env = dict(os.environ, JAXST_COMPILATION_CACHE=tempfile.mkdtemp(prefix="jaxst-finetune-bench-"))
    ref = spawn("torch", args.seed, args.limit, env, args.dropout)

    def line(name, r):
        return (f"{name:<22} epoch {r['seconds']:6.1f} s ({r['steps']} steps), NDCG@10 {100 * r['before']:.2f} -> "
                f"{100 * r['after']:.2f}; memory during the epoch: peak {mb(r['rss_peak'])} "
                f"(+{mb(r['rss_peak'] - r['rss_start'])} over its start), process peak {mb(r['maxrss'])}")

    print(line("sentence-transformers", ref), flush=True)
    for run in range(1, args.runs + 1):
        ours = spawn("jaxst", args.seed, args.limit, env, args.dropout)
        label = "cold compile" if run == 1 else "warm cache"
        print(line(f"jaxst run {run}", ours), f"[{label}]", flush=True)
        print(f"  jaxst/sentence-transformers: epoch {ref['seconds'] / ours['seconds']:.2f}x faster; NDCG@10 after "
              f"{100 * (ours['after'] - ref['after']):+.3f} points; epoch memory growth "
              f"{(ours['rss_peak'] - ours['rss_start']) / max(ref['rss_peak'] - ref['rss_start'], 1):.2f}x, "
              f"peak {ours['rss_peak'] / ref['rss_peak']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
