"""GradCache fine-tuning, jaxst vs sentence-transformers, same run: retrieval quality, epoch time, peak memory.

    python benchmarks/finetune_speed.py [--seeds 0 1 2 3 4] [--limit N] [--eval-limit N] [--no-dropout]

The recipe (issue #20): all-MiniLM-L6-v2 fine-tuned with CachedMultipleNegativesRankingLoss (batch 256,
mini-batch 32, scale 20, cosine) for one epoch over the stsb-en-train pairs scoring at least 4.0 (1,406
pairs: 6 steps), AdamW at 5e-5 with weight decay 0.01 except biases and LayerNorm, no warmup, linear decay,
gradients clipped to norm 1, dropout on. Both sides take the same batches in the same seeded order.
Evaluated before and after by InformationRetrievalEvaluator on the STSb-derived task of
tests/test_evaluation.py (stsb-en-test pairs scoring at least 4.0: first sentence the query, second its
relevant document; every unique second sentence the corpus), each library with its own evaluator.

Each side runs in its own subprocess per seed, so neither's imports or caches weigh on the other's memory;
every seed runs both sides, the order flipped from seed to seed. Memory, labelled: the growth during the
epoch (the resident set sampled every 5 ms, its peak minus the resident set just before the epoch: what
training itself adds) and the whole-process peak (``ru_maxrss``, imports and evaluation included). The
scores after are compared over the seeds by a paired t-test (scipy's ``ttest_rel``): "same score" unless
p < 0.05. The sentence-transformers side is its CachedMultipleNegativesRankingLoss in the loop its
trainer runs (written out: the Trainer needs ``accelerate``). jaxst runs ``jaxst.training.fit``. Its
compilation cache starts empty: the first seed compiles every batch shape inside the epoch, the later seeds
(new processes) find them in the persistent cache, as a user's second fine-tuning run would; the speed
ratio is the median over those warm seeds.

``--no-dropout`` trains both sides without dropout (the recipe's only random part): their NDCG@10 after
should then agree to rounding, which checks the rest of the recipe end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from _machine import header, paired_scores, row
from _stsb import read_stsb  # benchmarks/ is on sys.path when a script here runs
from _torch_recipe import torch_epoch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BATCH, MINI_BATCH, LR, WEIGHT_DECAY, SCALE = 256, 32, 5e-5, 0.01, 20.0


def train_pairs(limit: int | None) -> list[tuple[str, str]]:
    return [(a, b) for a, b, score in read_stsb("stsb-en-train.csv") if score >= 4.0][:limit]


def retrieval_task(limit: int | None = None):
    rows = read_stsb("stsb-en-test.csv")[:limit]
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


def run_torch(folder, pairs, seed: int, dropout: bool, eval_limit: int | None) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(str(folder), device="cpu")
    evaluator = InformationRetrievalEvaluator(*retrieval_task(eval_limit), name="stsb")
    before = evaluator(model)["stsb_cosine_ndcg@10"]
    loss = CachedMultipleNegativesRankingLoss(model, scale=SCALE, mini_batch_size=MINI_BATCH)
    order = batches(len(pairs), seed)
    with PeakRSS() as memory:
        seconds = torch_epoch(model, loss, [[pairs[i] for i in idx] for idx in order], LR, 0, WEIGHT_DECAY, dropout)
    return result(seconds, before, evaluator(model)["stsb_cosine_ndcg@10"], memory, len(order))


def run_jaxst(folder, pairs, seed: int, dropout: bool, eval_limit: int | None) -> dict:
    import jaxst
    from jaxst import losses, training
    from jaxst.evaluation import InformationRetrievalEvaluator

    model = jaxst.SentenceTransformer(folder)
    evaluator = InformationRetrievalEvaluator(*retrieval_task(eval_limit), name="stsb")
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


def child(side: str, seed: int, limit: int | None, dropout: bool, eval_limit: int | None) -> None:
    from jaxst.io.hub import packaged_model_folder

    folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    result = (run_jaxst if side == "jaxst" else run_torch)(folder, train_pairs(limit), seed, dropout, eval_limit)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, seed: int, limit: int | None, env: dict, dropout: bool, eval_limit: int | None) -> dict:
    command = [sys.executable, __file__, "--child", side, "--seed", str(seed),
               "--dropout" if dropout else "--no-dropout"]
    if limit is not None:
        command += ["--limit", str(limit)]
    if eval_limit is not None:
        command += ["--eval-limit", str(eval_limit)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"{side} run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # a child's seed
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only (a quick check)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="build the retrieval task from the first N stsb-en-test pairs only (a quick check)")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True,
                        help="train with dropout (the recipe); --no-dropout checks the rest of it deterministically")
    parser.add_argument("--child", choices=["jaxst", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.seed, args.limit, args.dropout, args.eval_limit)
        return
    print(header(), flush=True)
    n = len(train_pairs(args.limit))
    print(f"{n} training pairs (stsb-en-train, score >= 4.0), batch {BATCH}, mini-batch {MINI_BATCH}, lr {LR}, "
          f"seeds {args.seeds}{'' if args.dropout else ', no dropout'}", flush=True)
    env = dict(os.environ, JAXST_COMPILATION_CACHE=tempfile.mkdtemp(prefix="jaxst-finetune-bench-"))

    def line(name, r):
        return (f"{name:<22} epoch {r['seconds']:6.1f} s ({r['steps']} steps), NDCG@10 {100 * r['before']:.2f} -> "
                f"{100 * r['after']:.2f}; memory growth during the epoch +{mb(r['rss_peak'] - r['rss_start'])} "
                f"(peak {mb(r['rss_peak'])}); whole-process peak {mb(r['maxrss'])}")

    runs = []
    for i, seed in enumerate(args.seeds):
        sides = ["torch", "jaxst"] if i % 2 == 0 else ["jaxst", "torch"]
        result = {side: spawn(side, seed, args.limit, env, args.dropout, args.eval_limit) for side in sides}
        runs.append(result)
        print(f"seed {seed}:", flush=True)
        print("  " + line("sentence-transformers", result["torch"]), flush=True)
        print("  " + line("jaxst", result["jaxst"]), "[cold compile]" if i == 0 else "[warm cache]", flush=True)
    warm = runs[1:] or runs
    growth = lambda r: r["rss_peak"] - r["rss_start"]  # noqa: E731
    speed = statistics.median(r["torch"]["seconds"] / r["jaxst"]["seconds"] for r in warm)
    grow = statistics.median(growth(r["jaxst"]) / max(growth(r["torch"]), 1) for r in warm)
    whole = statistics.median(r["jaxst"]["maxrss"] / r["torch"]["maxrss"] for r in warm)
    ours, theirs = [100 * r["jaxst"]["after"] for r in runs], [100 * r["torch"]["after"] for r in runs]
    diff, test = paired_scores(ours, theirs)
    print(f"jaxst / sentence-transformers (median over {'warm seeds' if runs[1:] else 'the seed'}): epoch "
          f"{speed:.2f}x faster; memory growth during the epoch {grow:.2f}x; whole-process peak {whole:.2f}x. "
          f"NDCG@10 after: jaxst mean {statistics.mean(ours):.2f}, sentence-transformers mean "
          f"{statistics.mean(theirs):.2f}, mean difference {diff:+.3f}; {test}", flush=True)
    row("fine-tune", f"GradCache MNRL epoch, {n} pairs, seeds {args.seeds}, same batches", speed, None,
        f"NDCG@10 after: {test}; memory growth during the epoch {grow:.2f}x, whole-process peak {whole:.2f}x")


if __name__ == "__main__":
    main()
