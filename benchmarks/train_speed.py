"""Fine-tuning speed and quality: all-MiniLM-L6-v2 with CoSENT on STSb train, jaxst vs PyTorch, same run.

    python benchmarks/train_speed.py [--seeds 0 1 2 3 4] [--limit N]

The recipe (issue #7): one epoch over stsb-en-train.csv (5,749 pairs, scores / 5 as labels), batch 16,
learning rate 2e-5, 100 warmup steps (the same share of a ``--limit`` run's steps) then linear decay, AdamW
with weight decay 0.01 except biases and LayerNorm, gradients clipped to norm 1, dropout on; evaluated with
Spearman of cosine against the gold scores on stsb-en-test.csv before and after.

The PyTorch side is sentence-transformers' model and CoSENTLoss in the loop its ``fit`` runs (the same
param groups, ``get_linear_schedule_with_warmup``, ``clip_grad_norm_``), written out here because the
Trainer needs the ``datasets`` package. Both sides take the same batches in the same order for a seed
(``jaxst.training.collation.batch_order``, what ``fit`` uses); dropout masks are each library's own, the one
random part left. jaxst runs ``jaxst.training.fit`` with the same settings; its epoch time includes compiling
each batch shape. The persistent compilation cache starts empty (a fresh temporary folder), so the first
jaxst seed is a cold start and the later seeds find the shapes compiled. Every seed runs both sides, the
order flipped from seed to seed. Prints, per seed, both epoch times and test Spearman before/after; then
the median speed ratio over the warm seeds, and the scores compared by a paired t-test over the seeds
(scipy's ``ttest_rel``): "same score" unless p < 0.05.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _machine import header, paired_scores, row
from _stsb import read_stsb  # benchmarks/ is on sys.path when a script here runs
from _torch_recipe import torch_epoch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAXST_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jaxst-train-bench-"))

BATCH, LR, WARMUP = 16, 2e-5, 100


def read(name: str) -> list[tuple[str, str, float]]:
    """Pairs with their gold score scaled to 0-1, CoSENT's labels."""
    return [(a, b, score / 5.0) for a, b, score in read_stsb(name)]


def torch_run(folder, train, test, seed: int, warmup: int) -> tuple[float, float, float]:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(str(folder), device="cpu")
    evaluator = EmbeddingSimilarityEvaluator(*map(list, zip(*test)), batch_size=32)
    before = evaluator(model)["spearman_cosine"]
    loss = CoSENTLoss(model)
    from jaxst.training.collation import batch_order

    batches = [[train[i] for i in idx] for idx in batch_order(len(train), BATCH, seed, 0)]  # fit's epoch 0
    seconds = torch_epoch(model, loss, batches, LR, warmup)
    return seconds, before, evaluator(model)["spearman_cosine"]


def jaxst_epoch(folder, train, test, seed: int, warmup: int) -> tuple[float, float, float]:
    import jaxst
    from jaxst import losses, training

    model = jaxst.SentenceTransformer(folder)
    evaluator = training.EmbeddingSimilarityEvaluator(*map(list, zip(*test)), batch_size=32)
    before = evaluator(model)["spearman_cosine"]
    start = time.perf_counter()
    training.fit(model, train, losses.CoSENTLoss(), epochs=1, batch_size=BATCH, learning_rate=LR,
                 warmup_steps=warmup, seed=seed, show_progress_bar=False)
    seconds = time.perf_counter() - start
    return seconds, before, evaluator(model)["spearman_cosine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only (a quick check)")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test pairs only")
    args = parser.parse_args()
    print(header(), flush=True)

    from jaxst.io.hub import packaged_model_folder

    folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    full = read("stsb-en-train.csv")
    train, test = full[: args.limit], read("stsb-en-test.csv")[: args.test_limit]
    # a shortened run keeps the recipe's share of warmup steps (100 of 360), so that it trains at full rate too
    steps = -(-len(train) // BATCH)
    warmup = WARMUP if len(train) == len(full) else max(1, round(WARMUP * steps / -(-len(full) // BATCH)))
    print(f"{len(train)} training pairs, {len(test)} test pairs, batch {BATCH}, lr {LR}, warmup {warmup} of "
          f"{steps} steps; "
          f"seeds {args.seeds}, both sides per seed on the same batches", flush=True)
    rows = []
    for i, seed in enumerate(args.seeds):
        sides = [("jaxst", jaxst_epoch), ("PyTorch", torch_run)]
        result = {}
        for name, run in sides if i % 2 == 0 else reversed(sides):
            result[name] = run(folder, train, test, seed, warmup)
        rows.append(result)
        (jt, jb, ja), (tt, tb, ta) = result["jaxst"], result["PyTorch"]
        cache = "cold compile" if i == 0 else "warm cache"
        print(f"seed {seed}: jaxst epoch {jt:6.1f} s ({cache}), test Spearman {100 * jb:.2f} -> {100 * ja:.2f}; "
              f"PyTorch epoch {tt:6.1f} s, {100 * tb:.2f} -> {100 * ta:.2f}; speed-up {tt / jt:.2f}x", flush=True)
    warm = rows[1:] or rows
    speed = statistics.median(r["PyTorch"][0] / r["jaxst"][0] for r in warm)
    ours, theirs = [100 * r["jaxst"][2] for r in rows], [100 * r["PyTorch"][2] for r in rows]
    diff, test = paired_scores(ours, theirs)
    print(f"epoch speed-up jaxst / PyTorch, median over {'warm seeds' if rows[1:] else 'the seed'}: {speed:.2f}x; "
          f"test Spearman after: jaxst mean {statistics.mean(ours):.2f} (min {min(ours):.2f}, max {max(ours):.2f}), "
          f"PyTorch mean {statistics.mean(theirs):.2f} (min {min(theirs):.2f}, max {max(theirs):.2f}), "
          f"mean difference {diff:+.2f}; {test}", flush=True)
    row("fine-tune", f"CoSENT epoch, {len(train)} STSb pairs, seeds {args.seeds}, same batches", speed, None,
        f"STSb Spearman after: {test}, mean difference {diff:+.2f}")


if __name__ == "__main__":
    main()
