"""Exact top-k search over embeddings: ``semantic_search`` (dense and sparse), paraphrase mining and
community detection, over the top-k engine in ``jaxst.topk`` (one compiled scan that scores corpus chunks
and reduces them on device; streamed from host memory, split over a mesh, or the native int8 kernel).
The engine's names (``chunked_top_k``, ``streamed_top_k``, ``sharded_top_k``, ``aligned_empty``, ...) are
importable from here too, as before they moved.

Non-finite embeddings are refused, never searched. This one rule holds for ``semantic_search`` (dense and
sparse), ``paraphrase_mining`` / ``community_detection``, ``EmbeddingIndex`` at every precision,
``SparseEmbeddingIndex`` and ``jaxst.maxsim.maxsim_search``:

- a query or corpus embedding holding NaN or +-inf is a ValueError naming the argument and the first such
  row (a sparse embedding's stored values count, its padding slots do not; a multi-vector embedding's
  every token counts, masked or not);
- an index's ``add`` refuses such rows before anything is stored, so an index never holds one and int8 /
  uint8 calibration never sees one; a non-finite ``ranges`` is refused when the index is built;
- a finite corpus whose score overflows float32 to +-inf (or NaN) is refused too: the error says which
  score is not finite.

So every search returns ``min(top_k, rows)`` hits, best first, none dropped and none invented. Why: a NaN
score sorts above every real score in ``top_k``, so a NaN row used to take a slot and then be dropped with
the real hit it displaced; NaN calibration ranges silently emptied every later search of an int8 index.

How, without a second pass over a big corpus: queries are small and checked where they are. The corpus is
checked by the scan that scores it: a non-finite score of a valid row becomes +inf (``flag_nonfinite``),
wins its top-k slot and so comes back with the hits, where ``hits`` raises; only then is the corpus
searched for the offending row. Rows that are not valid (padding, rows already seen) score -inf and can
never reach the result, since ``k`` never exceeds the valid rows. Integer scores (int8, Hamming) are always
finite and skip the flag.
"""

from __future__ import annotations

import heapq

import jax
import jax.numpy as jnp
import numpy as np

from jaxst import topk
from jaxst.checks import positive_int
from jaxst.pooling import normalize
from jaxst.similarity import as_matrix, cos_sim, dot_score
from jaxst.sparse import is_sparse, stored_rows, width_order
from jaxst.topk import (  # noqa: F401  (the engine's names, importable from jaxst.search as before)
    BLOCK,
    HAMMING_BLOCK,
    HOST_ALIGN,
    INTEGER_SCORES,
    SCAN_CHUNK,
    SCAN_CHUNKS,
    SCAN_COMPILER_OPTIONS,
    SPARSE_CHUNK_BYTES,
    STAGE_BYTES,
    aligned_empty,
    chunked_top_k,
    flag_nonfinite,
    hamming_corpus,
    hamming_top_k,
    hamming_words,
    host_view,
    merge_top_k,
    row_sharding,
    scan_chunk,
    scan_words,
    sharded_top_k,
    shares_host_memory,
    sparse_chunk,
    sparse_top_k,
    streamed_top_k,
)

top_k = topk.top_k  # the engine's two-stage top-k, importable from here as before (a parameter name below)
CHECK_ROWS = 65536  # rows per block when a host array is searched for a non-finite row


# ------------------------------------------------------------------ non-finite embeddings (see the module doc)


def nonfinite_row_error(name: str, row: int) -> ValueError:
    return ValueError(f"{name} row {row} holds NaN or inf: non-finite embeddings are refused, never searched")


@jax.jit
def _first_bad_row(x):
    rows = (~jnp.isfinite(x)).reshape(x.shape[0], -1).any(axis=1)
    return jnp.where(rows.any(), jnp.argmax(rows), -1)


def first_nonfinite_row(x) -> int | None:
    """The first row (index on axis 0) of ``x`` holding NaN or +-inf, or None. A jax array is reduced where
    it lives, a host array in blocks of ``CHECK_ROWS`` rows (no full-size temporary); integer arrays are
    finite."""
    if not jnp.issubdtype(x.dtype, jnp.inexact) or x.shape[0] == 0:
        return None
    if isinstance(x, jax.Array):
        row = int(_first_bad_row(x))
        return None if row < 0 else row
    for start in range(0, x.shape[0], CHECK_ROWS):
        bad = ~np.isfinite(x[start : start + CHECK_ROWS])
        rows = bad.reshape(bad.shape[0], -1).any(axis=1)
        if rows.any():
            return start + int(rows.argmax())
    return None


def check_finite(x, name: str) -> None:
    """Refuse ``x`` (queries, or rows an index is about to store) if a row holds NaN or +-inf."""
    row = first_nonfinite_row(x)
    if row is not None:
        raise nonfinite_row_error(name, row)


def refuse_nonfinite_scores(scores, ids, locate, name: str = "corpus_embeddings", first_query: int = 0) -> None:
    """Raise if any returned score (host arrays, (Q, k)) is not finite. ``locate()`` gives the first
    non-finite row of the corpus (or None): it runs only here, on the error path; with no such row the
    score itself overflowed float32."""
    bad = ~np.isfinite(scores)
    if not bad.any():
        return
    row = locate() if locate is not None else None
    if row is not None:
        raise nonfinite_row_error(name, row)
    q, j = (int(v) for v in np.argwhere(bad)[0])
    raise ValueError(f"the score of query {first_query + q} and {name} row {int(ids[q, j])} is not finite "
                     f"(float32 overflow): non-finite scores are refused, never ranked")


def hits(scores, ids, locate=None, name: str = "corpus_embeddings", first_query: int = 0) -> list[list[dict]]:
    """Rows of (scores, ids) -> ``[{"corpus_id", "score"}]`` lists, every slot a real hit: a non-finite
    score is refused (``refuse_nonfinite_scores``), never dropped."""
    scores, ids = np.asarray(scores), np.asarray(ids)
    refuse_nonfinite_scores(scores, ids, locate, name, first_query)
    return [[{"corpus_id": int(c), "score": float(s)} for s, c in zip(row_s, row_i)]
            for row_s, row_i in zip(scores.tolist(), ids.tolist())]


def _host_matrix(x) -> np.ndarray | None:
    """A 2-D float32 numpy corpus to stream from host memory, or None for anything already on device."""
    if isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == np.float32:
        return x
    return None


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function=cos_sim,
) -> list[list[dict]]:
    """For each query, the ``top_k`` corpus entries as ``{"corpus_id", "score"}``, best first.

    ``score_function`` is ``cos_sim`` (default), ``dot_score`` or any jittable ``(q, c) -> scores``.
    A jax.Array corpus is searched where it lives by one compiled scan; one split by rows over the
    devices of a mesh (``NamedSharding(mesh, P("data"))``) is scanned shard by shard on each device.
    A float32 numpy corpus stays in host memory and is streamed to the device ``corpus_chunk_size``
    rows at a time; on the CPU backend it is read in place, without a copy, whatever its alignment
    (``topk.host_view``).
    Non-finite embeddings are refused (a ValueError naming the row), never searched: see the module doc."""
    top_k = positive_int("top_k", top_k)
    query_chunk_size = positive_int("query_chunk_size", query_chunk_size)
    corpus_chunk_size = positive_int("corpus_chunk_size", corpus_chunk_size)
    if is_sparse(query_embeddings) or is_sparse(corpus_embeddings):
        return sparse_semantic_search(query_embeddings, corpus_embeddings, query_chunk_size, top_k, score_function)
    queries = as_matrix(query_embeddings)
    host = _host_matrix(corpus_embeddings)
    width = None  # set where the device reads the host array through a flat view of it (topk.host_view)
    if host is not None and shares_host_memory(host):
        corpus, host = jax.device_put(host), None
    elif host is not None and (view := host_view(host)) is not None and shares_host_memory(view[0]):
        (flat, origin), width = view, host.shape[1]
        corpus = jax.device_put(flat)  # aliases ``host``, which this frame holds until the search is done
    else:
        corpus = as_matrix(corpus_embeddings) if host is None else host
    searched = corpus if host is None else host
    n, dim = searched.shape
    if queries.shape[1] != dim:
        raise ValueError(f"query dim {queries.shape[1]} != corpus dim {dim}")
    check_finite(queries, "query_embeddings")
    if n == 0:
        return [[] for _ in range(queries.shape[0])]
    locate = lambda: first_nonfinite_row(searched)  # noqa: E731  (the error path only)
    kind = {cos_sim: "cosine", dot_score: "dot"}.get(score_function, score_function)
    k = min(top_k, n)
    chunk = min(corpus_chunk_size, scan_chunk(kind))
    sharded = row_sharding(corpus) if host is None else None
    results: list[list[dict]] = []
    for q0 in range(0, queries.shape[0], query_chunk_size):
        q = queries[q0 : q0 + query_chunk_size]
        if width is not None:
            scores, ids = chunked_top_k(q, corpus, n, 0, 0, origin, k=k, kind=kind, chunk=chunk, width=width)
        elif host is not None:
            scores, ids = streamed_top_k(q, host, n, k=k, kind=kind, chunk=chunk, piece=corpus_chunk_size)
        elif sharded is not None and n % sharded[0].shape[sharded[1]] == 0:
            scores, ids = sharded_top_k(q, corpus, n, k=k, kind=kind, chunk=chunk, mesh=sharded[0], axis=sharded[1])
        else:
            scores, ids = chunked_top_k(q, corpus, n, k=k, kind=kind, chunk=chunk)
        results.extend(hits(scores, ids, locate, "corpus_embeddings", q0))
    return results


def sparse_semantic_search(query_embeddings, corpus_embeddings, query_chunk_size: int = 100, top_k: int = 10,
                           score_function=dot_score) -> list[list[dict]]:
    """``semantic_search`` over sparse embeddings (a BCOO as ``SparseEncoder.encode`` returns, a scipy
    sparse matrix, or dense rows): exact dot (or cosine) scores, one compiled scan over the corpus' fixed-width
    rows per query chunk, each step scoring a block of rows against the dense queries. Non-finite stored
    values are refused (see the module doc); padding slots (index >= dim) hold nothing."""
    kinds = {dot_score: "sparse", cos_sim: "sparse_cosine", "dot": "sparse", "cosine": "sparse_cosine"}
    if score_function not in kinds:
        raise ValueError("sparse semantic_search scores with dot_score or cos_sim")
    kind = kinds[score_function]
    q_values, q_indices, dim = stored_rows(query_embeddings)
    values, indices, corpus_dim = stored_rows(corpus_embeddings)
    if dim != corpus_dim:
        raise ValueError(f"query dim {dim} != corpus dim {corpus_dim}")
    check_finite(q_values, "query_embeddings")
    n = values.shape[0]
    if n == 0:
        return [[] for _ in range(q_values.shape[0])]
    k = min(top_k, n)
    order = width_order(indices, dim=dim)  # blocks of rows of about one width: the scan skips their padding
    results: list[list[dict]] = []
    for q0 in range(0, q_values.shape[0], query_chunk_size):
        scores, ids = sparse_top_k(q_values[q0 : q0 + query_chunk_size], q_indices[q0 : q0 + query_chunk_size],
                                   (values, indices), n, k=k, cosine=kind == "sparse_cosine", dim=dim, order=order)
        results.extend(hits(scores, ids, lambda: first_nonfinite_row(values), "corpus_embeddings", q0))
    return results


def paraphrase_mining_embeddings(
    embeddings,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function=cos_sim,
) -> list[list]:
    """``[score, i, j]`` for the most similar pairs (i < j), best first; see sentence-transformers.
    Non-finite embeddings are refused (see the module doc)."""
    embeddings = as_matrix(embeddings)
    check_finite(embeddings, "embeddings")
    n = embeddings.shape[0]
    kind = {cos_sim: "cosine", dot_score: "dot"}.get(score_function, score_function)
    pairs: list = []  # min-heap of (score, i, j), at most max_pairs
    queued = set()
    min_score = float("-inf")
    k = min(top_k + 1, n)
    for q0 in range(0, n, query_chunk_size):
        scores, ids = chunked_top_k(embeddings[q0 : q0 + query_chunk_size], embeddings, n, k=k, kind=kind,
                                    chunk=corpus_chunk_size)
        refuse_nonfinite_scores(np.asarray(scores), np.asarray(ids), None, "embeddings", q0)
        for row, (row_s, row_i) in enumerate(zip(np.asarray(scores).tolist(), np.asarray(ids).tolist())):
            i = q0 + row
            for j, score in [(j, s) for j, s in zip(row_i, row_s) if j != i][:top_k]:
                if score <= min_score:
                    continue
                pair = (i, j) if i < j else (j, i)
                if pair in queued:
                    continue
                queued.add(pair)
                if len(pairs) < max_pairs:
                    heapq.heappush(pairs, (score, *pair))
                else:
                    evicted = heapq.heappushpop(pairs, (score, *pair))
                    queued.discard(evicted[1:])
                    min_score = evicted[0]
    return sorted(([s, i, j] for s, i, j in pairs), key=lambda x: x[0], reverse=True)


def paraphrase_mining(model, sentences: list[str], show_progress_bar: bool = False, batch_size: int = 32,
                      query_chunk_size: int = 5000, corpus_chunk_size: int = 100000, max_pairs: int = 500000,
                      top_k: int = 100, score_function=cos_sim, truncate_dim: int | None = None,
                      prompt_name: str | None = None, prompt: str | None = None) -> list[list]:
    """Embed ``sentences`` with ``model`` and mine the most similar pairs."""
    embeddings = model.encode(sentences, show_progress_bar=show_progress_bar, batch_size=batch_size,
                              convert_to_tensor=True, truncate_dim=truncate_dim, prompt_name=prompt_name,
                              prompt=prompt)
    return paraphrase_mining_embeddings(embeddings, query_chunk_size, corpus_chunk_size, max_pairs, top_k,
                                        score_function)


def community_detection(embeddings, threshold: float = 0.75, min_community_size: int = 10,
                        batch_size: int = 1024, show_progress_bar: bool = False) -> list[list[int]]:
    """Communities whose members have cosine similarity >= ``threshold`` to a centre, largest first;
    the first id of each is its centre. Same algorithm and result as sentence-transformers'."""
    from tqdm.auto import tqdm

    embeddings = as_matrix(embeddings) if len(embeddings) else None
    if embeddings is not None:
        check_finite(embeddings, "embeddings")  # a NaN row scores NaN against all: refused (see the module doc)
    if embeddings is None or embeddings.shape[0] < min_community_size:
        return []
    embeddings = normalize(embeddings)
    n = embeddings.shape[0]
    sort_max_size = min(max(2 * min_community_size, 50), n)
    extracted = []
    for start in tqdm(range(0, n, batch_size), desc="Finding clusters", disable=not show_progress_bar):
        scores = np.asarray(embeddings[start : start + batch_size] @ embeddings.T)
        kth = -np.partition(-scores, min_community_size - 1, axis=1)[:, min_community_size - 1]
        for i in np.nonzero(kth >= threshold)[0]:
            row = scores[i]
            order = np.argsort(-row, kind="stable")
            size = sort_max_size
            while row[order[size - 1]] >= threshold and size < n:
                size = min(2 * size, n)
            sort_max_size = max(sort_max_size, size)
            top = order[:size]
            extracted.append((start + int(i), top[row[top] >= threshold].astype(np.uint32)))
    extracted.sort(key=lambda x: len(x[1]), reverse=True)
    communities, used = [], np.zeros(n, dtype=bool)
    for centre, members in extracted:
        if used[centre]:
            continue
        fresh = members[~used[members]]
        if len(fresh) >= min_community_size:
            community = [centre] + fresh[fresh != centre].tolist()
            communities.append(community)
            used[community] = True
    return sorted(communities, key=len, reverse=True)
