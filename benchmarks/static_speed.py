"""Static embedding speed: jaxst vs sentence-transformers' StaticEmbedding, same process, same weights.

    python benchmarks/static_speed.py [--dim 256] [--texts 20000] [--batch-size 32] [--repeats 7]

The model has the shape of static-retrieval-mrl-en-v1 / a model2vec potion model built on all-MiniLM-L6-v2's
tokenizer: a (30,522 x ``--dim``) token table (seeded random values: the speed depends on shapes, not values)
and Normalize, saved by sentence-transformers and loaded by both libraries. The texts are STSb sentences
(train, dev and test, each once), ``--texts`` of them. Both libraries encode them once to warm up (jaxst
compiles its length buckets there; the time is reported separately) and must give the same embeddings
(1e-6); then ``--repeats`` rounds, each one pass of each library over all texts, back to back, the order
flipped every round. Prints median sentences/s for both and the ratio jaxst / sentence-transformers (median of
the rounds' ratios; best over best in brackets), for the default batch size and for batches of 1,024 (a static
model has no activations to bound, so large batches are how it is run on a corpus).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

from _machine import alternating_times, header, ratios, row
from _stsb import unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_static(folder: Path, dim: int) -> Path:
    """A static model over all-MiniLM-L6-v2's tokenizer (30,522 tokens x ``dim``) + Normalize, saved by
    sentence-transformers."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    from jaxst.io.hub import packaged_model_folder

    tokenizer = Tokenizer.from_file(str(packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
                                        / "tokenizer.json"))
    tokenizer.no_truncation()  # static models keep every token
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=dim), Normalize()],
                                    device="cpu")
    model.save(str(folder))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--texts", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--large-batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(header(), flush=True)

    import numpy as np
    from sentence_transformers import SentenceTransformer as Reference

    from jaxst import SentenceTransformer

    sentences = unique_sentences("stsb-en-train.csv", "stsb-en-dev.csv", "stsb-en-test.csv")
    texts = (sentences * (args.texts // len(sentences) + 1))[: args.texts]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_static(Path(tmp) / "static", args.dim)
        ours = SentenceTransformer(folder)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = Reference(str(folder), device="cpu")
    tokens = [len(e.ids) for e in ours.tokenizer.encode_ids(texts)]
    print(f"model: StaticEmbedding 30522 x {args.dim} + Normalize (all-MiniLM-L6-v2's tokenizer, random table); "
          f"{len(texts)} STSb sentences, {np.mean(tokens):.1f} tokens on average (max {max(tokens)}); "
          f"medians of {args.repeats} alternating rounds")

    for batch_size in (args.batch_size, args.large_batch):
        start = time.perf_counter()
        a = ours.encode(texts, batch_size=batch_size)
        warm = time.perf_counter() - start
        b = reference.encode(texts, batch_size=batch_size)
        assert float(np.abs(a - b).max()) < 1e-6, float(np.abs(a - b).max())
        ref_times, our_times = alternating_times(
            [lambda b=batch_size: reference.encode(texts, batch_size=b),
             lambda b=batch_size: ours.encode(texts, batch_size=b)],
            args.repeats, warmup=False)
        med, best = ratios(ref_times, our_times)
        t_ref, t_ours = float(np.median(ref_times)), float(np.median(our_times))
        print(f"batch {batch_size}: sentence-transformers {len(texts) / t_ref:9.0f} sentences/s; "
              f"jaxst {len(texts) / t_ours:9.0f} sentences/s (first pass incl. compiling: {warm:.1f} s); "
              f"ratio {med:.2f}x (best {best:.2f}x)", flush=True)
        row("static", f"StaticEmbedding 30522 x {args.dim} encode, {len(texts)} STSb sentences, batch {batch_size}",
            med, best, f"{len(texts) / t_ours:.0f} vs {len(texts) / t_ref:.0f} sentences/s")


if __name__ == "__main__":
    main()
