"""Reranking speed: jaxst vs sentence-transformers' CrossEncoder.rank, same process, same weights.

    python benchmarks/rerank_speed.py [--candidates 100] [--queries 8] [--batch-size 32] [--repeats 5]

The reranker has the shape of cross-encoder/ms-marco-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads,
one label) with seeded random weights, saved by sentence-transformers and loaded by both libraries. Each
query reranks `--candidates` passages of realistic length: STSb sentences joined until a (query, passage)
pair holds about 60-120 tokens. Both libraries rank every query once to warm up (jaxst compiles its shape
buckets there; the time is reported separately), then `--repeats` rounds, each one pass of each library over
all queries, back to back, the order flipped every round. Prints median queries/s and pairs/s for both and the
ratio jaxst / sentence-transformers (median of the rounds' ratios; best over best in brackets).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from _machine import alternating_times, header, ratios, row
from _stsb import unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")



def stsb_sentences() -> list[str]:
    return unique_sentences("stsb-en-test.csv", "stsb-en-dev.csv")


def passages(query: str, sentences: list[str], count_tokens, n: int, rng: random.Random) -> list[str]:
    """`n` passages of STSb sentences joined until the (query, passage) pair holds about 60-120 tokens."""
    out, budget = [], count_tokens(query) + 3  # [CLS] query [SEP] passage [SEP]
    while len(out) < n:
        target, parts = rng.randint(60, 120), [rng.choice(sentences)]
        while budget + count_tokens(" ".join(parts)) < target:
            parts.append(rng.choice(sentences))
        if budget + count_tokens(" ".join(parts)) > 130:  # overshot by a long sentence: drop the last one
            parts = parts[:-1] or parts
        out.append(" ".join(parts))
    return out


def build_reranker(folder: Path) -> Path:
    """A random cross-encoder of ms-marco-MiniLM-L6-v2's shape, saved by sentence-transformers."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    from jaxst.io.hub import packaged_model_folder

    base = folder / "base"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, num_labels=1)
    BertForSequenceClassification(config).eval().save_pretrained(base)
    tokenizer = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, base / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CrossEncoder(str(base), num_labels=1, max_length=512, device="cpu").save(str(folder / "reranker"))
    return folder / "reranker"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=100, help="passages reranked per query")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(header(), flush=True)

    import numpy as np
    from sentence_transformers import CrossEncoder as Reference

    from jaxst.cross_encoder import CrossEncoder

    rng = random.Random(0)
    sentences = stsb_sentences()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_reranker(Path(tmp))
        ours = CrossEncoder(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = Reference(str(folder), device="cpu")

    count = lambda text: len(ours.tokenizer.backend.encode(text, add_special_tokens=False).ids)
    queries = rng.sample(sentences, args.queries)
    docs = [passages(q, sentences, count, args.candidates, rng) for q in queries]
    pair_lengths = [len(e.ids) for q, d in zip(queries, docs) for e in ours._encode([(q, p) for p in d], None)]

    def run(model):
        return [model.rank(q, d, batch_size=args.batch_size) for q, d in zip(queries, docs)]

    start = time.perf_counter()
    a = run(ours)
    warm = time.perf_counter() - start
    b = run(reference)
    for ra, rb in zip(a, b):
        assert [r["corpus_id"] for r in ra] == [r["corpus_id"] for r in rb]
        assert np.abs(np.array([r["score"] for r in ra]) - np.array([r["score"] for r in rb])).max() < 1e-5

    ref_times, our_times = alternating_times([lambda: run(reference), lambda: run(ours)], args.repeats)
    med, best = ratios(ref_times, our_times)
    t_ref, t_ours = float(np.median(ref_times)), float(np.median(our_times))
    n, pairs = len(queries), len(queries) * args.candidates
    print(f"reranker: ms-marco-MiniLM-L6-v2 shape (BERT 6x384, random weights); {n} queries x {args.candidates} "
          f"candidates; pair lengths {min(pair_lengths)}-{max(pair_lengths)} tokens "
          f"(mean {np.mean(pair_lengths):.0f}); batch {args.batch_size}; medians of {args.repeats} alternating rounds")
    print(f"sentence-transformers: {n / t_ref:6.2f} queries/s  {pairs / t_ref:7.1f} pairs/s")
    print(f"jaxst:                 {n / t_ours:6.2f} queries/s  {pairs / t_ours:7.1f} pairs/s  "
          f"(first pass incl. compiling: {warm:.1f} s)")
    print(f"ratio jaxst / sentence-transformers: {med:.2f}x (best {best:.2f}x)")
    row("rerank", f"CrossEncoder.rank, {n} queries x {args.candidates} candidates, batch {args.batch_size}", med, best)


if __name__ == "__main__":
    main()
