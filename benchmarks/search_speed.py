"""Exact and quantized top-k search: jaxst vs sentence-transformers (and FAISS), same process, alternating.

    python benchmarks/search_speed.py [--corpus 1000000] [--dim 384] [--queries 100] [--top-k 10] [--repeats 5]

A random normalized float32 corpus and queries. Each method runs once to warm up (jaxst compiles there).
A row with a reference is timed in ``--repeats`` rounds alternating with that reference (order flipped each
round): its time is the median, its ratio the median of the per-round ratios, best over best in brackets.
Like for like: ``EmbeddingIndex`` normalizes rows when they are added, so its search is a dot scan, compared
with sentence-transformers' ``dot_score`` over the (already normalized) corpus; its row against cosine search,
which normalizes the corpus on every call, is a second row. jaxst searching numpy corpora is timed from
``encode``'s 64-byte-aligned arrays, from plain numpy arrays, ``np.load`` of a saved ``.npy`` (with and
without ``mmap_mode="r"``) and a slice of a larger array. Recall@k is measured against exact float search.
Memory: the bytes each corpus representation holds, and the process's peak RSS at the end.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile

import numpy as np
from _machine import alternating_times, header, ratios, row  # benchmarks/ is on sys.path when a script here runs


def recall(hits, exact) -> float:
    return float(np.mean([len({h["corpus_id"] for h in a} & {h["corpus_id"] for h in b}) / len(b)
                          for a, b in zip(hits, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(header("faiss-cpu"), flush=True)

    import faiss
    import jax
    import torch
    from sentence_transformers import util as st_util

    from jaxst import native, util
    from jaxst.index import EmbeddingIndex
    from jaxst.search import aligned_empty

    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((args.corpus, args.dim), dtype=np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[rng.choice(args.corpus, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, args.dim), dtype=np.float32)
    k = args.top_k
    t_corpus, t_queries = torch.from_numpy(corpus), torch.from_numpy(queries)
    j_corpus, j_queries = jax.device_put(corpus), jax.device_put(queries)
    exact = st_util.semantic_search(t_queries, t_corpus, top_k=k, score_function=st_util.dot_score)

    rows, fns = [], {}

    def run(name, fn, nbytes, reference=None):
        """Time ``fn`` (alternating with ``reference``'s function when there is one) and record its row."""
        if reference is None:
            times, ratio = alternating_times([fn], args.repeats)[0], None
        else:
            ref_times, times = alternating_times([fns[reference], fn], args.repeats)
            ratio = ratios(ref_times, times)
        fns[name] = fn
        rows.append((name, 1000 * float(np.median(times)), recall(fn(), exact), nbytes / 2**20, reference, ratio))

    f32 = corpus.nbytes
    run("sentence-transformers semantic_search cos_sim",
        lambda: st_util.semantic_search(t_queries, t_corpus, top_k=k), f32)
    run("sentence-transformers semantic_search dot_score",
        lambda: st_util.semantic_search(t_queries, t_corpus, top_k=k, score_function=st_util.dot_score), f32)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(corpus)
    run("FAISS IndexFlatIP", lambda: [[{"corpus_id": int(i)} for i in row] for row in flat.search(queries, k)[1]],
        f32)
    packed = util.quantize_embeddings(corpus, "ubinary")
    binary_flat = faiss.IndexBinaryFlat(args.dim)
    binary_flat.add(packed)
    q_packed = util.quantize_embeddings(queries, "ubinary")
    run("FAISS IndexBinaryFlat (no rescore)",
        lambda: [[{"corpus_id": int(i)} for i in row] for row in binary_flat.search(q_packed, k)[1]], packed.nbytes)

    run("jaxst util.semantic_search cos_sim", lambda: util.semantic_search(j_queries, j_corpus, top_k=k), f32,
        "sentence-transformers semantic_search cos_sim")
    run("jaxst util.semantic_search dot_score",
        lambda: util.semantic_search(j_queries, j_corpus, top_k=k, score_function=util.dot_score), f32,
        "sentence-transformers semantic_search dot_score")
    # numpy corpora: encode() returns 64-byte aligned arrays, which the CPU backend reads in place; an array
    # from elsewhere (numpy's own allocation, np.load without mmap, a slice: 16-byte aligned at best) is read
    # in place through a flat view from the 64-byte boundary before it (jaxst.topk.host_view)
    encoded = aligned_empty(corpus.shape, np.float32)
    encoded[:] = corpus
    print(f"numpy corpus alignment: encode()-style {encoded.ctypes.data % 64} mod 64, "
          f"plain numpy {corpus.ctypes.data % 64} mod 64", flush=True)
    saved = os.path.join(tempfile.mkdtemp(prefix="jaxst-search-"), "corpus.npy")
    np.save(saved, corpus)
    mapped = np.load(saved, mmap_mode="r")
    loaded = np.load(saved)
    larger = np.empty((args.corpus + 1, args.dim), np.float32)
    larger[1:] = corpus
    sliced = larger[1:]
    print(f"corpus alignment mod 64: np.load(mmap_mode='r') {mapped.ctypes.data % 64}, "
          f"np.load {loaded.ctypes.data % 64}, slice {sliced.ctypes.data % 64}", flush=True)
    for form, array in (("numpy corpus from encode()", encoded), ("other numpy corpus", corpus),
                        ("np.load corpus", loaded), ("sliced corpus", sliced), ("np.load mmap corpus", mapped)):
        for name, fn in (("cos_sim", util.cos_sim), ("dot_score", util.dot_score)):
            run(f"jaxst util.semantic_search {name}, {form}",
                lambda array=array, fn=fn: util.semantic_search(queries, array, top_k=k, score_function=fn), f32,
                f"sentence-transformers semantic_search {name}")
    indexes = {}
    for precision in ("float32", "int8", "ubinary"):
        index = EmbeddingIndex(args.dim, precision=precision, similarity="cosine")
        index.add(corpus)
        indexes[precision] = index
    nbytes = {p: ix.embeddings.nbytes for p, ix in indexes.items()}
    run("jaxst EmbeddingIndex float32 (cosine)", lambda: indexes["float32"].search(queries, top_k=k),
        nbytes["float32"], "sentence-transformers semantic_search dot_score")  # like for like: a dot scan
    run("jaxst EmbeddingIndex float32 (cosine), vs cos_sim", lambda: indexes["float32"].search(queries, top_k=k),
        nbytes["float32"], "sentence-transformers semantic_search cos_sim")
    run("jaxst EmbeddingIndex int8, rescore x2",
        lambda: indexes["int8"].search(queries, top_k=k, rescore_multiplier=2), nbytes["int8"],
        "jaxst EmbeddingIndex float32 (cosine)")
    if native.int8_kernel() is not None:  # the same search on XLA's int8 dot, for comparison
        os.environ[native.ENV] = "0"
        native.int8_kernel.cache_clear()
        run("jaxst EmbeddingIndex int8, rescore x2, XLA dot",
            lambda: indexes["int8"].search(queries, top_k=k, rescore_multiplier=2), nbytes["int8"],
            "jaxst EmbeddingIndex float32 (cosine)")
        del os.environ[native.ENV]
        native.int8_kernel.cache_clear()
    run("jaxst EmbeddingIndex ubinary, rescore x4",
        lambda: indexes["ubinary"].search(queries, top_k=k, rescore_multiplier=4), nbytes["ubinary"],
        "FAISS IndexBinaryFlat (no rescore)")
    run("jaxst EmbeddingIndex ubinary, no rescore",
        lambda: indexes["ubinary"].search(queries, top_k=k, rescore_multiplier=None), nbytes["ubinary"],
        "FAISS IndexBinaryFlat (no rescore)")

    os.remove(saved)
    print(f"corpus {args.corpus} x {args.dim} float32 (normalized), {args.queries} queries, top-{k}, "
          f"median of {args.repeats} alternating rounds; jax {jax.__version__} ({jax.default_backend()}), torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), faiss {faiss.__version__}; native int8 kernel: "
          f"{native.int8_kernel() or 'not available'}")
    print(f"{'method':58} {'ms':>9} {'recall@k':>9} {'corpus MiB':>11}  speed-up: median of rounds (best)")
    for name, ms, rec, mib, reference, ratio in rows:
        text = f"{ratio[0]:5.2f}x ({ratio[1]:.2f}x) vs {reference}" if reference else ""
        print(f"{name:58} {ms:9.1f} {rec:9.3f} {mib:11.1f}  {text}")
        if reference and name.startswith("jaxst"):
            row("search", f"{name} vs {reference}, {args.corpus:,} x {args.dim}", *ratio, f"recall@{k} {rec:.3f}")
    print(f"peak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
