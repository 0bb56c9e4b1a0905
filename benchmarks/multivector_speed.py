"""Late interaction (MultiVectorEncoder): jaxst vs sentence-transformers, same process.

    python benchmarks/multivector_speed.py [--corpus 50000] [--queries 100] [--doc-tokens 48] [--query-tokens 32]
                                           [--dim 128] [--top-k 10] [--repeats 3] [--encode-texts 1000]
                                           [--encode-repeats 5] [--no-search] [--no-encode]

Search: 100 queries (32 token vectors each, as a [MASK]-expanded ColBERT query) against a synthetic corpus
of documents whose token counts vary around ``--doc-tokens`` (unit-norm random token vectors, 128 wide, as
a ColBERT projection makes them), padded with a mask. sentence-transformers scores with
``util.similarity.maxsim`` on the padded tensors and takes ``torch.topk``; jaxst runs
``jaxst.maxsim.maxsim_search`` (one compiled scan over corpus chunks with a running top-k) on the corpus
put on the device once (as an index holds it) and, for comparison, on the numpy arrays. The hits must
agree.

Encode: a ColBERT model of answerai-colbert-small's shape (a 12-layer, 384-wide BERT with MiniLM's
tokenizer, seeded random weights, a 96-wide projection, punctuation skiplist, queries [MASK]-expanded to
32 tokens), saved by sentence-transformers and loaded by both; STSb test sentences as documents and as
queries, batch 32. Search and encode time the sides in alternation (``--repeats`` / ``--encode-repeats``
rounds, order flipped each round); rates are medians, ratios the median of the rounds' ratios (best over
best in brackets).
"""

from __future__ import annotations

import argparse
import os
import shutil
import string
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _machine import alternating_times, header, ratios, row
from _stsb import unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic_corpus(rng, n: int, tokens: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, T, dim) unit-norm token vectors and the (n, T) mask of ragged lengths in [tokens/2, 3 tokens/2]."""
    lengths = rng.integers(max(1, tokens // 2), tokens + tokens // 2 + 1, n)
    width = int(lengths.max())
    emb = rng.standard_normal((n, width, dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    mask = np.arange(width)[None, :] < lengths[:, None]
    emb[~mask] = 0.0
    return emb, mask


def search_benchmark(args) -> None:
    import jax
    import torch
    from sentence_transformers.util.similarity import maxsim as st_maxsim

    from jaxst.maxsim import maxsim_search

    rng = np.random.default_rng(0)
    docs, doc_mask = synthetic_corpus(rng, args.corpus, args.doc_tokens, args.dim)
    queries = rng.standard_normal((args.queries, args.query_tokens, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=-1, keepdims=True)
    query_mask = np.ones(queries.shape[:2], bool)
    t_docs, t_mask, t_queries = torch.from_numpy(docs), torch.from_numpy(doc_mask), torch.from_numpy(queries)
    k = args.top_k

    def reference():
        return torch.topk(st_maxsim(t_queries, t_docs, b_mask=t_mask), k, dim=1)

    device_docs, device_mask = jax.device_put(docs), jax.device_put(doc_mask)  # as an index holds a corpus

    def ours():
        return maxsim_search(queries, device_docs, query_mask=query_mask, corpus_mask=device_mask, top_k=k)

    def ours_numpy():
        return maxsim_search(queries, docs, query_mask=query_mask, corpus_mask=doc_mask, top_k=k)

    ref, hits = reference(), ours()
    same = np.mean([[h["corpus_id"] for h in a] == list(b) for a, b in zip(hits, ref.indices.numpy())])
    st_t, jx_t, np_t = alternating_times([reference, ours, ours_numpy], args.repeats)
    st_s, jx_s, np_s = (float(np.median(t)) for t in (st_t, jx_t, np_t))
    (jx_med, jx_best), (np_med, np_best) = ratios(st_t, jx_t), ratios(st_t, np_t)
    tokens = int(doc_mask.sum())
    print(f"search: {args.corpus} documents ({tokens / args.corpus:.1f} tokens on average, padded to "
          f"{docs.shape[1]}), {args.queries} queries x {args.query_tokens} tokens, dim {args.dim}, top-{k}, "
          f"medians of {args.repeats} alternating rounds")
    print(f"  sentence-transformers util.similarity.maxsim + torch.topk   {1000 * st_s:9.1f} ms")
    print(f"  jaxst maxsim_search, corpus as jax.Array                     {1000 * jx_s:9.1f} ms   "
          f"{jx_med:.2f}x ({jx_best:.2f}x); queries with identical top-{k} ids: {same:.3f}")
    print(f"  jaxst maxsim_search, corpus as numpy (put per call)          {1000 * np_s:9.1f} ms   "
          f"{np_med:.2f}x ({np_best:.2f}x)", flush=True)
    row("maxsim search", f"{args.corpus:,} documents, corpus as jax.Array", jx_med, jx_best,
        f"identical top-{k}: {same:.3f}")
    row("maxsim search", f"{args.corpus:,} documents, corpus as numpy", np_med, np_best)


def build_colbert(folder: Path, layers: int = 12) -> Path:
    import torch
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask
    from transformers import BertConfig, BertModel

    from jaxst.io.hub import packaged_model_folder

    base = folder / "base"
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=384, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=1536),
              add_pooling_layer=False).eval().save_pretrained(base)
    tokenizer = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tokenizer / name, base / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer = Transformer(str(base), max_seq_length=512, document_length=300,
                                  query_expansion={"strategy": "fixed", "length": 32})
        dense = Dense(384, 96, bias=False, activation_function=torch.nn.Identity(),
                      module_input_name="token_embeddings", module_output_name="token_embeddings")
        model = MultiVectorEncoder(
            modules=[transformer, dense, MultiVectorMask(skiplist_words=list(string.punctuation)),
                     Normalize(module_input_name="token_embeddings")],
            device="cpu", prompts={"query": "[unused0] ", "document": "[unused1] "})
        model.save(str(folder / "colbert"))
    return folder / "colbert"


def encode_benchmark(args) -> None:
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    from jaxst import MultiVectorEncoder

    sentences = unique_sentences("stsb-en-test.csv")[: args.encode_texts]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_colbert(Path(tmp), args.layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = STMultiVectorEncoder(str(folder), device="cpu")
        ours = MultiVectorEncoder(str(folder))
        for side in ("document", "query"):
            st_fn = getattr(st, f"encode_{side}")
            jx_fn = getattr(ours, f"encode_{side}")
            start = time.perf_counter()
            jx_fn(sentences, batch_size=32)
            first = time.perf_counter() - start
            st_t, jx_t = alternating_times([lambda fn=st_fn: fn(sentences, batch_size=32),
                                            lambda fn=jx_fn: fn(sentences, batch_size=32)], args.encode_repeats)
            st_s, jx_s = float(np.median(st_t)), float(np.median(jx_t))
            med, best = ratios(st_t, jx_t)
            gap = max(float(np.abs(np.asarray(a) - b.numpy()).max())
                      for a, b in zip(jx_fn(sentences[:64]), st_fn(sentences[:64])))
            print(f"encode_{side} STSb sentences ({len(sentences)} texts, batch 32): sentence-transformers "
                  f"{len(sentences) / st_s:7.1f}/s  jaxst {len(sentences) / jx_s:7.1f}/s  {med:.2f}x (best {best:.2f}x)"
                  f"  (jaxst first run incl. compiling {first:.1f} s; max |diff| {gap:.1e})",
                  flush=True)
            row("multi-vector encode", f"encode_{side}, {len(sentences)} STSb sentences, batch 32", med, best)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--doc-tokens", type=int, default=48)
    parser.add_argument("--query-tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--encode-texts", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=12, help="the ColBERT model's layers (12: its size)")
    parser.add_argument("--encode-repeats", type=int, default=5, help="timed encodes per side, alternating")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--encode", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(header(), flush=True)
    if args.search:
        search_benchmark(args)
    if args.encode:
        encode_benchmark(args)


if __name__ == "__main__":
    main()
