"""Fine-tuning speed and quality: all-MiniLM-L6-v2 with CoSENT on STSb train, jaxst vs PyTorch, same run.

    python benchmarks/train_speed.py [--seeds 0 1 2] [--torch-seeds 0] [--limit N]

The recipe (issue #7): one epoch over stsb-en-train.csv (5,749 pairs, scores / 5 as labels), batch 16,
learning rate 2e-5, 100 warmup steps then linear decay, AdamW with weight decay 0.01 except biases
and LayerNorm, gradients clipped to norm 1, dropout on; evaluated with Spearman of cosine against the
gold scores on stsb-en-test.csv before and after.

The PyTorch side is sentence-transformers' model and CoSENTLoss in the loop its ``fit`` runs (the same
param groups, ``get_linear_schedule_with_warmup``, ``clip_grad_norm_``), written out here because the
Trainer needs the ``datasets`` package. Batches come in a seeded shuffled order on both sides. jaxst
runs ``jaxst.training.fit`` with the same settings; its epoch time includes compiling each batch shape.
The persistent compilation cache starts empty (a fresh temporary folder), so the first jaxst seed is
a cold start and the later seeds find the shapes compiled. Prints the epoch time of each side, the
ratio, and the test Spearman before/after for every seed (jaxst's spread over seeds is the noise).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time

from _machine import cpu_description
from _stsb import read_stsb  # benchmarks/ is on sys.path when a script here runs
from _torch_recipe import torch_epoch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAXST_COMPILATION_CACHE", tempfile.mkdtemp(prefix="jaxst-train-bench-"))

BATCH, LR, WARMUP = 16, 2e-5, 100


def read(name: str) -> list[tuple[str, str, float]]:
    """Pairs with their gold score scaled to 0-1, CoSENT's labels."""
    return [(a, b, score / 5.0) for a, b, score in read_stsb(name)]


def torch_run(folder, train, test, seed: int) -> tuple[float, float, float]:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(str(folder), device="cpu")
    evaluator = EmbeddingSimilarityEvaluator(*map(list, zip(*test)), batch_size=32)
    before = evaluator(model)["spearman_cosine"]
    loss = CoSENTLoss(model)
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    batches = [[train[i] for i in order[i:i + BATCH]] for i in range(0, len(order), BATCH)]
    seconds = torch_epoch(model, loss, batches, LR, WARMUP)
    return seconds, before, evaluator(model)["spearman_cosine"]


def jaxst_epoch(folder, train, test, seed: int) -> tuple[float, float, float]:
    import jaxst
    from jaxst import losses, training

    model = jaxst.SentenceTransformer(folder)
    evaluator = training.EmbeddingSimilarityEvaluator(*map(list, zip(*test)), batch_size=32)
    before = evaluator(model)["spearman_cosine"]
    start = time.perf_counter()
    training.fit(model, train, losses.CoSENTLoss(), epochs=1, batch_size=BATCH, learning_rate=LR,
                 warmup_steps=WARMUP, seed=seed, show_progress_bar=False)
    seconds = time.perf_counter() - start
    return seconds, before, evaluator(model)["spearman_cosine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--limit", type=int, default=None, help="train on the first N pairs only (a quick check)")
    parser.add_argument("--torch-seeds", type=int, nargs="*", default=[0], help="seeds to run PyTorch for")
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}", flush=True)

    from jaxst.io.hub import packaged_model_folder

    folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    train, test = read("stsb-en-train.csv")[: args.limit], read("stsb-en-test.csv")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {len(train)} training pairs, "
          f"{len(test)} test pairs, batch {BATCH}, lr {LR}, warmup {WARMUP}")
    jaxst_times, scores = {}, []
    for seed in args.seeds:
        seconds, before, after = jaxst_epoch(folder, train, test, seed)
        jaxst_times[seed] = seconds
        scores.append(after)
        cache = "cold compile" if seed == args.seeds[0] else "warm cache"
        print(f"seed {seed} jaxst:   epoch {seconds:7.1f} s ({cache}), test Spearman {100 * before:.2f} -> "
              f"{100 * after:.2f}", flush=True)
    if len(scores) > 1:
        import statistics

        print(f"jaxst test Spearman over {len(scores)} seeds: mean {100 * statistics.mean(scores):.2f}, "
              f"min {100 * min(scores):.2f}, max {100 * max(scores):.2f}", flush=True)
    for seed in args.torch_seeds:
        seconds, before, after = torch_run(folder, train, test, seed)
        ratios = ", ".join(f"{seconds / t:.2f}x vs jaxst seed {s}" for s, t in jaxst_times.items())
        print(f"seed {seed} PyTorch: epoch {seconds:7.1f} s, test Spearman {100 * before:.2f} -> {100 * after:.2f}; "
              f"jaxst speed-up {ratios}", flush=True)


if __name__ == "__main__":
    main()
