"""Sparse retrieval: jaxst vs sentence-transformers' SparseEncoder, same process.

    python benchmarks/sparse_speed.py [--corpus 100000] [--queries 100] [--top-k 10] [--repeats 3]
                                      [--encode-texts 1000] [--no-search] [--no-encode]

Search: a synthetic SPLADE-like corpus, every document ~150 active dimensions and every query ~30 of a
30,522-entry vocabulary, drawn with a Zipf-like preference for frequent tokens (as learned sparse
vectors are), positive weights. sentence-transformers searches its sparse COO tensors with
`util.semantic_search` (dot score); jaxst searches the same vectors as the BCOO `SparseEncoder.encode`
returns. Both run once to warm up, then the best of `--repeats`; the hits must agree.

Encode: a SPLADE model of naver/splade-v3's shape (BERT-base masked LM, hidden 768, 12 layers) with
seeded random weights and the decoder bias lowered so that, as for a trained SPLADE model, a few hundred
dimensions are active per text; STSb sentences and ~200-token paragraphs, batch 32, both libraries on
the same saved folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _machine import best_time, cpu_description
from _stsb import unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB = 30522


def synthetic_rows(rng, n: int, active: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) (n, active): distinct Zipf-preferred token ids per row, positive weights."""
    ranks = np.arange(1, VOCAB + 1)
    p = 1.0 / ranks**0.8
    p /= p.sum()
    perm = rng.permutation(VOCAB)  # frequent tokens anywhere in the vocabulary
    indices = np.empty((n, active), np.int32)
    for r in range(n):
        indices[r] = np.sort(perm[rng.choice(VOCAB, active, replace=False, p=p)])
    values = rng.gamma(2.0, 0.5, (n, active)).astype(np.float32)
    return indices, values


def search_benchmark(args) -> None:
    import torch
    from sentence_transformers import util as st_util

    from jaxst import util
    from jaxst.sparse import to_bcoo

    rng = np.random.default_rng(0)
    c_idx, c_val = synthetic_rows(rng, args.corpus, 150)
    q_idx, q_val = synthetic_rows(rng, args.queries, 30)

    def torch_coo(idx, val):
        rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
        return torch.sparse_coo_tensor(np.stack([rows, idx.ravel()]), val.ravel(), (idx.shape[0], VOCAB)).coalesce()

    t_corpus, t_queries = torch_coo(c_idx, c_val), torch_coo(q_idx, q_val)
    j_corpus, j_queries = to_bcoo(c_val, c_idx, VOCAB), to_bcoo(q_val, q_idx, VOCAB)
    k = args.top_k
    st_hits = st_util.semantic_search(t_queries, t_corpus, top_k=k, score_function=st_util.dot_score)
    ours = util.semantic_search(j_queries, j_corpus, top_k=k, score_function=util.dot_score)
    same = np.mean([[h["corpus_id"] for h in a] == [h["corpus_id"] for h in b] for a, b in zip(ours, st_hits)])
    st_s = best_time(lambda: st_util.semantic_search(t_queries, t_corpus, top_k=k, score_function=st_util.dot_score),
                     args.repeats, warmup=True)
    jx_s = best_time(lambda: util.semantic_search(j_queries, j_corpus, top_k=k, score_function=util.dot_score),
                     args.repeats, warmup=True)
    print(f"search: {args.corpus} documents x 150 active, {args.queries} queries x 30 active, vocab {VOCAB}, "
          f"top-{k}, dot, best of {args.repeats}")
    print(f"  sentence-transformers util.semantic_search (sparse COO)  {1000 * st_s:9.1f} ms")
    print(f"  jaxst util.semantic_search (BCOO rows)                   {1000 * jx_s:9.1f} ms   "
          f"{st_s / jx_s:.2f}x; queries with identical top-{k} ids: {same:.3f}", flush=True)


def build_splade(folder: Path) -> Path:
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForMaskedLM

    from jaxst.io.hub import packaged_model_folder

    base = folder / "base"
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB)).eval()  # bert-base: 768 wide, 12 layers
    with torch.no_grad():
        model.cls.predictions.bias.fill_(-2.0)  # few positive logits: about a trained SPLADE model's sparsity
    model.save_pretrained(base)
    tokenizer = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, base / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SparseEncoder(modules=[Transformer(str(base), transformer_task="fill-mask", max_seq_length=256),
                                    SpladePooling("max")], device="cpu")
        st.save(str(folder / "splade"))
    return folder / "splade"


def encode_benchmark(args) -> None:
    import torch
    from sentence_transformers import SparseEncoder as STSparseEncoder

    from jaxst import SparseEncoder

    sentences = unique_sentences("stsb-en-test.csv")[: args.encode_texts]
    pool = unique_sentences("stsb-en-dev.csv", "stsb-en-train.csv")
    paragraphs = [" ".join(pool[i : i + 12]) for i in range(0, 12 * (args.encode_texts // 8), 12)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_splade(Path(tmp))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = STSparseEncoder(str(folder), device="cpu")
        ours = SparseEncoder(str(folder))
        for name, texts in (("STSb sentences", sentences), ("~200-token paragraphs", paragraphs)):
            start = time.perf_counter()
            ours.encode(texts, batch_size=32)
            first = time.perf_counter() - start
            st_s = best_time(lambda texts=texts: st.encode(texts, batch_size=32), args.repeats, warmup=True)
            jx_s = best_time(lambda texts=texts: ours.encode(texts, batch_size=32), args.repeats, warmup=True)
            emb = ours.encode(texts[:64], batch_size=32)
            ref = st.encode(texts[:64], batch_size=32).to_dense().numpy()
            gap = float(np.max(np.abs(np.asarray(emb.todense()) - ref)))
            print(f"encode {name} ({len(texts)} texts, batch 32): sentence-transformers {len(texts) / st_s:7.1f}/s  "
                  f"jaxst {len(texts) / jx_s:7.1f}/s  {st_s / jx_s:.2f}x  (jaxst first run incl. compiling "
                  f"{first:.1f} s; active dims {ours.sparsity(emb)['active_dims']:.0f}; max |diff| {gap:.1e})",
                  flush=True)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--encode-texts", type=int, default=1000)
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--encode", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}", flush=True)
    import jax

    print(f"machine: {platform.machine()}, jax {jax.__version__} ({jax.default_backend()})", flush=True)
    if args.search:
        search_benchmark(args)
    if args.encode:
        encode_benchmark(args)


if __name__ == "__main__":
    main()
