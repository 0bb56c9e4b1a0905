"""Top-k semantic search over an embedding matrix with ``jax.lax.top_k``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.similarity import as_matrix, cos_sim


@functools.partial(jax.jit, static_argnames=("k",))
def merge_top_k(scores_a, ids_a, scores_b, ids_b, k: int):
    """Keep the best ``k`` of two candidate sets (per row)."""
    scores = jnp.concatenate([scores_a, scores_b], axis=1)
    ids = jnp.concatenate([ids_a, ids_b], axis=1)
    best, pos = jax.lax.top_k(scores, k)
    return best, jnp.take_along_axis(ids, pos, axis=1)


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function=cos_sim,
) -> list[list[dict]]:
    """For each query, the ``top_k`` corpus entries as ``{"corpus_id", "score"}``, best first."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    queries, corpus = as_matrix(query_embeddings), as_matrix(corpus_embeddings)
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != corpus dim {corpus.shape[1]}")
    n_corpus = corpus.shape[0]
    k = min(top_k, n_corpus)
    results: list[list[dict]] = []
    for q0 in range(0, queries.shape[0], query_chunk_size):
        q = queries[q0 : q0 + query_chunk_size]
        best = ids = None
        for c0 in range(0, n_corpus, corpus_chunk_size):
            scores = jnp.asarray(score_function(q, corpus[c0 : c0 + corpus_chunk_size]), jnp.float32)
            s, i = jax.lax.top_k(scores, min(k, scores.shape[1]))
            i = i + c0
            best, ids = (s, i) if best is None else merge_top_k(best, ids, s, i, k=k)
        if best is None:
            results.extend([] for _ in range(q.shape[0]))
            continue
        best, ids = np.asarray(best), np.asarray(ids)
        for row_s, row_i in zip(best, ids):
            results.append([{"corpus_id": int(c), "score": float(s)} for s, c in zip(row_s, row_i)])
    return results
