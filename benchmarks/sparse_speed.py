"""Sparse retrieval: jaxst vs sentence-transformers' SparseEncoder, same process, alternating.

    python benchmarks/sparse_speed.py [--corpus 100000] [--queries 100] [--top-k 10] [--repeats 5] [--uniform]
                                      [--encode-texts 1000] [--no-search] [--no-encode]

Search: a synthetic SPLADE-like corpus over a 30,522-entry vocabulary whose active-dimension counts vary
per row as real SPLADE output does (skewed, long right tail): log-normal, documents median 120 (sigma 0.6,
clipped to 10..600), queries median 25 (sigma 0.5, clipped to 3..150); token ids drawn with a Zipf-like
preference for frequent tokens (as learned sparse vectors are), positive weights. ``--uniform`` gives every
document exactly 150 and every query 30 (the old, best case for fixed-width rows: no padding).
sentence-transformers searches its sparse COO tensors with `util.semantic_search` (dot score); jaxst
searches the same vectors as the BCOO `SparseEncoder.encode` returns (rows as wide as the widest, padded).
Both run once to warm up, then ``--repeats`` alternating rounds (medians; best in brackets); the hits must
agree.

Search over real SPLADE output (``--model-search N``, default 5,000): STSb sentences encoded by a 1-layer
SPLADE model of that shape (active dimensions as the model makes them), 100 test sentences as queries.

Encode: a SPLADE model of naver/splade-v3's shape (BERT-base masked LM, hidden 768, 12 layers) with
seeded random weights and the decoder bias lowered so that, as for a trained SPLADE model, a few hundred
dimensions are active per text; STSb sentences and ~200-token paragraphs, batch 32, both libraries on
the same saved folder, alternating rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from _machine import alternating_times, header, ratios, row
from _stsb import unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB = 30522


# Active dimensions per row, (median, sigma of the log, low, high): log-normal, clipped
DOC_ACTIVE = (120, 0.6, 10, 600)
QUERY_ACTIVE = (25, 0.5, 3, 150)


def active_counts(rng, n: int, spec, uniform: int | None) -> np.ndarray:
    if uniform is not None:
        return np.full(n, uniform, np.int64)
    median, sigma, low, high = spec
    return np.clip(np.rint(median * np.exp(sigma * rng.standard_normal(n))), low, high).astype(np.int64)


def synthetic_rows(rng, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) (n, max count): per row ``counts[r]`` distinct Zipf-preferred token ids, positive
    weights; the unused slots point past the vocabulary with weight 0 (what BCOO rows ignore)."""
    ranks = np.arange(1, VOCAB + 1)
    p = 1.0 / ranks**0.8
    p /= p.sum()
    perm = rng.permutation(VOCAB)  # frequent tokens anywhere in the vocabulary
    width = int(counts.max())
    indices = np.full((len(counts), width), VOCAB, np.int32)
    values = np.zeros((len(counts), width), np.float32)
    for r, c in enumerate(counts):
        indices[r, :c] = np.sort(perm[rng.choice(VOCAB, c, replace=False, p=p)])
        values[r, :c] = rng.gamma(2.0, 0.5, c)
    return indices, values


def torch_coo(idx, val):
    """The same fixed-width rows as a coalesced torch sparse COO tensor (what sentence-transformers searches)."""
    import torch

    rows = np.repeat(np.arange(idx.shape[0]), idx.shape[1])
    keep = idx.ravel() < VOCAB  # the padding slots are not entries
    return torch.sparse_coo_tensor(np.stack([rows[keep], idx.ravel()[keep]]), val.ravel()[keep],
                                   (idx.shape[0], VOCAB)).coalesce()


def compare_search(label: str, work: str, args, c_idx, c_val, q_idx, q_val) -> None:
    """sentence-transformers' sparse ``semantic_search`` on COO tensors against jaxst's on the BCOO rows of the
    same vectors: alternating rounds, the hits compared, one ``ROW``."""
    from sentence_transformers import util as st_util

    from jaxst import util
    from jaxst.sparse import to_bcoo

    t_corpus, t_queries = torch_coo(c_idx, c_val), torch_coo(q_idx, q_val)
    j_corpus, j_queries = to_bcoo(c_val, c_idx, VOCAB), to_bcoo(q_val, q_idx, VOCAB)
    k = args.top_k
    st_hits = st_util.semantic_search(t_queries, t_corpus, top_k=k, score_function=st_util.dot_score)
    ours = util.semantic_search(j_queries, j_corpus, top_k=k, score_function=util.dot_score)
    same = np.mean([[h["corpus_id"] for h in a] == [h["corpus_id"] for h in b] for a, b in zip(ours, st_hits)])
    st_t, jx_t = alternating_times(
        [lambda: st_util.semantic_search(t_queries, t_corpus, top_k=k, score_function=st_util.dot_score),
         lambda: util.semantic_search(j_queries, j_corpus, top_k=k, score_function=util.dot_score)], args.repeats)
    med, best = ratios(st_t, jx_t)
    print(label)
    print(f"  sentence-transformers util.semantic_search (sparse COO)  {1000 * np.median(st_t):9.1f} ms")
    print(f"  jaxst util.semantic_search (BCOO rows)                   {1000 * np.median(jx_t):9.1f} ms   "
          f"{med:.2f}x ({best:.2f}x); queries with identical top-{k} ids: {same:.3f}", flush=True)
    row("sparse search", work, med, best, f"identical top-{k}: {same:.3f}")


def search_benchmark(args) -> None:
    rng = np.random.default_rng(0)
    c_counts = active_counts(rng, args.corpus, DOC_ACTIVE, 150 if args.uniform else None)
    q_counts = active_counts(rng, args.queries, QUERY_ACTIVE, 30 if args.uniform else None)
    c_idx, c_val = synthetic_rows(rng, c_counts)
    q_idx, q_val = synthetic_rows(rng, q_counts)
    shape = "uniform" if args.uniform else f"log-normal documents {DOC_ACTIVE}, queries {QUERY_ACTIVE}"
    compare_search(
        f"search: {args.corpus} documents, active dims per row {shape}: documents mean {c_counts.mean():.0f} "
        f"(max {c_counts.max()}), queries mean {q_counts.mean():.0f} (max {q_counts.max()}); vocab {VOCAB}, "
        f"top-{args.top_k}, dot, median of {args.repeats} alternating rounds",
        f"{args.corpus:,} documents, {'uniform' if args.uniform else 'skewed'} active dims, top-{args.top_k}",
        args, c_idx, c_val, q_idx, q_val)


def model_search_benchmark(args) -> None:
    """Search over real SPLADE output: ``--model-search`` STSb train/dev/test sentences encoded by a 1-layer
    SPLADE model of naver/splade-v3's width and vocabulary (its active dimensions per row are the model's,
    not drawn), 100 test sentences as queries; both libraries search the same vectors."""
    from jaxst import SparseEncoder
    from jaxst.sparse import as_rows

    texts = unique_sentences("stsb-en-train.csv", "stsb-en-dev.csv", "stsb-en-test.csv")[: args.model_search]
    queries = unique_sentences("stsb-en-test.csv")[-args.queries:]
    with tempfile.TemporaryDirectory() as tmp:
        model = SparseEncoder(str(build_splade(Path(tmp), 1)))
        start = time.perf_counter()
        corpus = as_rows(model.encode_document(texts, batch_size=32))
        q = as_rows(model.encode_query(queries, batch_size=32))
        seconds = time.perf_counter() - start
    (c_val, c_idx, _), (q_val, q_idx, _) = corpus, q
    c_val, c_idx, q_val, q_idx = (np.asarray(a) for a in (c_val, c_idx, q_val, q_idx))
    c_counts, q_counts = (c_val != 0).sum(1), (q_val != 0).sum(1)
    compare_search(
        f"search over SPLADE output: {len(texts)} STSb sentences encoded by a 1-layer SPLADE model (jaxst, "
        f"{seconds:.1f} s), active dims documents mean {c_counts.mean():.0f} (median {np.median(c_counts):.0f}, "
        f"max {c_counts.max()}), queries mean {q_counts.mean():.0f}; top-{args.top_k}, dot, median of "
        f"{args.repeats} alternating rounds",
        f"{len(texts):,} STSb sentences as a 1-layer SPLADE model encodes them, top-{args.top_k}",
        args, c_idx, c_val, q_idx, q_val)


def build_splade(folder: Path, layers: int = 12) -> Path:
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertConfig, BertForMaskedLM

    from jaxst.io.hub import packaged_model_folder

    base = folder / "base"
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB, num_hidden_layers=layers)).eval()  # bert-base: 768 wide
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
    from sentence_transformers import SparseEncoder as STSparseEncoder

    from jaxst import SparseEncoder

    sentences = unique_sentences("stsb-en-test.csv")[: args.encode_texts]
    pool = unique_sentences("stsb-en-dev.csv", "stsb-en-train.csv")
    paragraphs = [" ".join(pool[i : i + 12]) for i in range(0, 12 * (args.encode_texts // 8), 12)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_splade(Path(tmp), args.layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = STSparseEncoder(str(folder), device="cpu")
        ours = SparseEncoder(str(folder))
        for name, texts in (("STSb sentences", sentences), ("~200-token paragraphs", paragraphs)):
            start = time.perf_counter()
            ours.encode(texts, batch_size=32)
            first = time.perf_counter() - start
            st_t, jx_t = alternating_times([lambda texts=texts: st.encode(texts, batch_size=32),
                                            lambda texts=texts: ours.encode(texts, batch_size=32)], args.repeats)
            med, best = ratios(st_t, jx_t)
            st_s, jx_s = float(np.median(st_t)), float(np.median(jx_t))
            emb = ours.encode(texts[:64], batch_size=32)
            ref = st.encode(texts[:64], batch_size=32).to_dense().numpy()
            gap = float(np.max(np.abs(np.asarray(emb.todense()) - ref)))
            print(f"encode {name} ({len(texts)} texts, batch 32): sentence-transformers {len(texts) / st_s:7.1f}/s  "
                  f"jaxst {len(texts) / jx_s:7.1f}/s  {med:.2f}x ({best:.2f}x)  (jaxst first run incl. compiling "
                  f"{first:.1f} s; active dims {ours.sparsity(emb)['active_dims']:.0f}; max |diff| {gap:.1e})",
                  flush=True)
            row("sparse encode", f"SPLADE ({args.layers} layers) {name}, {len(texts)} texts, batch 32", med, best)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--uniform", action="store_true", help="every document 150 active dims, every query 30")
    parser.add_argument("--encode-texts", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=12, help="the SPLADE model's layers (12: bert-base)")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model-search", type=int, default=5000,
                        help="also search N sentences as a 1-layer SPLADE model encodes them (0: not)")
    parser.add_argument("--encode", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    print(header(), flush=True)
    if args.search:
        search_benchmark(args)
        if args.model_search:
            model_search_benchmark(args)
    if args.encode:
        encode_benchmark(args)


if __name__ == "__main__":
    main()
