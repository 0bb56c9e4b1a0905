"""Late-interaction (ColBERT) scoring and search: MaxSim over padded multi-vector embeddings.

Multi-vector embeddings are held padded: ``embeddings`` (n, T, H) and ``mask`` (n, T) (bool, or float
weights on the query side); a list of per-text (T_i, H) arrays is padded by ``pad_multi_vectors``.
The numbers are sentence-transformers' (``util.maxsim`` and friends): per query token the max over the
document's unmasked tokens (masked ones sit at the dtype minimum), times the query token's mask, summed
in float32; a document with no unmasked token scores ``EMPTY_DOCUMENT_SCORE``; ``length_normalize``
divides by the query's real token count (MeanMaxSim). A pre-padded array without a mask treats all-zero
token rows as padding.

    maxsim(queries, docs)                       # (Qa, Qb) scores, one compiled loop over blocks
    maxsim_search(queries, corpus, top_k=10)    # semantic_search's hits, exact
    maxsim_search(queries, corpus, top_k=10, candidates=200)   # mean-vector first stage, exact rerank
    maxsim_recall(queries, corpus, top_k=10, candidates=200)   # recall@10 of the two-stage hits

Every path bounds the (queries, documents, query tokens, document tokens) intermediate by an element
budget (``chunk_elements``, default ``MAXSIM_CHUNK_ELEMENTS``). ``maxsim_search`` reuses the dense
top-k scan (``jaxst.topk``): corpus chunks are scored and merged into a running top-k inside one
compiled ``lax.scan``; a numpy corpus is streamed to the device a piece at a time; a corpus split by
rows over a mesh is scanned shard by shard on each device, with one global merge. The search follows
``jaxst.search``'s rule for non-finite embeddings: a query or document holding NaN or inf in any token
(masked or not) is refused with the row named, never searched. A document's tokens are checked by the
scan that scores them (a document holding one scores NaN), so no separate pass reads the corpus.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxst.checks import positive_int
from jaxst.pooling import normalize
from jaxst.search import check_finite, first_nonfinite_row, hits, refuse_nonfinite_scores
from jaxst.topk import (
    chunked_top_k,
    flag_nonfinite,
    merge_top_k,
    on_cpu,
    per_platform,
    row_sharding,
    scan_chunk,
    scan_top_k,
    sharded_top_k,
    shares_host_memory,
    streamed_top_k,
)

__all__ = [
    "EMPTY_DOCUMENT_SCORE",
    "MAXSIM_CHUNK_ELEMENTS",
    "maxsim",
    "maxsim_pairwise",
    "maxsim_recall",
    "maxsim_scores",
    "maxsim_search",
    "mean_maxsim",
    "mean_maxsim_pairwise",
    "mean_vectors",
    "pad_multi_vectors",
    "recall_at_k",
]

# sentence-transformers' _EMPTY_DOCUMENT_SCORE: ranks below any real MaxSim score.
EMPTY_DOCUMENT_SCORE = -1e9
# Elements of the (queries, documents, query tokens, document tokens) token-score block one step holds
# (128 MiB in float32); the stage-two rerank also counts its gathered (tokens, dim) documents.
MAXSIM_CHUNK_ELEMENTS = 1 << 25
# maxsim_search's scan on the CPU backend: a step's (queries, query tokens, documents, document tokens)
# scores stay in cache. 100 x 32-token queries over 5,000 48-token documents (2 AMD EPYC cores): 2^25
# elements 2,179 ms, 2^23 2,005 ms, 2^21 1,849 ms, 2^19 2,020 ms (sentence-transformers: 4,392 ms); over
# 50,000 documents: 2^22 21.6 s, 2^21 22.1 s, 2^20 17.4 s, 2^19 19.9 s (sentence-transformers: 44.8 s).
CPU_SCAN_ELEMENTS = 1 << 20
# A numpy corpus larger than this is streamed to the device in pieces of about this size.
HOST_PIECE_BYTES = 1 << 30


# ------------------------------------------------------------------------------------------- inputs


def _float_dtype(dtype) -> np.dtype:
    """Integer (quantized) embeddings are scored as float32, as sentence-transformers upcasts them."""
    dtype = np.dtype(dtype)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else np.dtype(np.float32)


def pad_multi_vectors(items) -> tuple:
    """A list of per-text (T_i, H) arrays -> padded ``(embeddings (n, T, H), mask (n, T) bool)``.

    T is the longest item; padding rows are zero and masked. Numpy (or list) items pad on the host into
    numpy arrays; if every item is a ``jax.Array`` the padding runs on their device (one concatenation
    and one scatter, not one copy per item). An empty item may be shaped (0, H) or (0,)."""
    items = list(items)
    on_device = bool(items) and all(isinstance(x, jax.Array) for x in items)
    arrays = items if on_device else [np.asarray(x) for x in items]
    dim = None
    for i, x in enumerate(arrays):
        if x.ndim == 2:
            if dim is None:
                dim = x.shape[1]
            elif x.shape[1] != dim:
                raise ValueError(f"multi-vector item {i} has dim {x.shape[1]}, but item 0 has {dim}")
        elif not (x.ndim == 1 and x.shape[0] == 0):
            raise ValueError(f"multi-vector item {i} has shape {tuple(x.shape)}, expected (tokens, dim)")
    dim = 0 if dim is None else dim
    lengths = np.array([x.shape[0] if x.ndim == 2 else 0 for x in arrays], dtype=np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    dtype = _float_dtype(np.result_type(*[x.dtype for x in arrays]) if arrays else np.float32)
    mask = np.arange(width)[None, :] < lengths[:, None]
    if on_device:
        full = [x.reshape(-1, dim).astype(dtype) for x in arrays if x.shape[0]]
        padded = jnp.zeros((len(arrays) * width, dim), dtype)
        if full:
            rows = np.repeat(np.arange(len(arrays)), lengths) * width
            positions = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            padded = padded.at[rows + positions].set(jnp.concatenate(full))
        return padded.reshape(len(arrays), width, dim), jnp.asarray(mask)
    padded = np.zeros((len(arrays), width, dim), dtype)
    for i, x in enumerate(arrays):
        if lengths[i]:
            padded[i, : lengths[i]] = x
    return padded, mask


@jax.jit
def _zero_row_mask(embeddings):
    return jnp.any(embeddings != 0, axis=-1)


def _as_mask(mask, name: str):
    if isinstance(mask, (list, tuple)):  # per-item 1-D masks, padded with False / 0
        rows = [np.asarray(m) for m in mask]
        if any(m.ndim != 1 for m in rows):
            raise ValueError(f"`{name}` as a list must hold one 1-D mask per item")
        width = max((len(m) for m in rows), default=0)
        dtype = np.result_type(*[m.dtype for m in rows]) if rows else np.bool_
        out = np.zeros((len(rows), width), dtype)
        for i, m in enumerate(rows):
            out[i, : len(m)] = m
        return out
    if isinstance(mask, jax.Array):
        return mask
    mask = np.asarray(mask)
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.number)):
        raise ValueError(f"`{name}` must be boolean or numeric, got dtype {mask.dtype}")
    return mask


def _canonical(embeddings, mask, name: str) -> tuple:
    """One side of a scoring call -> padded ``(embeddings (n, T, H), mask (n, T))``: numpy stays numpy
    (a host corpus can be streamed), jax arrays stay where they are."""
    if isinstance(embeddings, (list, tuple)):
        embeddings, own_mask = pad_multi_vectors(embeddings)
    else:
        if not isinstance(embeddings, jax.Array):
            embeddings = np.asarray(embeddings)
        if embeddings.ndim == 2:  # one multi-vector embedding: a batch of one
            embeddings = embeddings[None]
        if embeddings.ndim != 3:
            raise ValueError(f"multi-vector embeddings must be (n, tokens, dim), (tokens, dim) or a list of "
                             f"(tokens_i, dim) arrays, got shape {tuple(embeddings.shape)}")
        dtype = _float_dtype(embeddings.dtype)
        if embeddings.dtype != dtype:
            embeddings = embeddings.astype(dtype)
        own_mask = None
    n, width = embeddings.shape[:2]
    if mask is None:
        if own_mask is not None:
            return embeddings, own_mask
        if isinstance(embeddings, jax.Array):
            return embeddings, _zero_row_mask(embeddings)
        return embeddings, np.any(embeddings != 0, axis=-1)
    mask = _as_mask(mask, name)
    if mask.ndim == 1:
        mask = mask[None]
    if mask.ndim != 2:
        raise ValueError(f"`{name}` must be (n, tokens), got shape {tuple(mask.shape)}")
    if mask.shape[1] != width:
        raise ValueError(f"`{name}` covers {mask.shape[1]} tokens, but the padded embeddings have {width}.")
    if mask.shape[0] == 1 and n != 1:  # one mask for every item, as sentence-transformers expands it
        mask = (jnp if isinstance(mask, jax.Array) else np).broadcast_to(mask, (n, width))
    if mask.shape[0] != n:
        raise ValueError(f"`{name}` has {mask.shape[0]} rows, but there are {n} multi-vector embeddings")
    return embeddings, mask


def _check_dims(queries, documents, what: str = "document") -> None:
    if queries.shape[1] and documents.shape[1] and queries.shape[2] != documents.shape[2]:
        raise ValueError(f"query dim {queries.shape[2]} != {what} dim {documents.shape[2]}")


def _compute_dtype(a, b) -> str:
    return str(jnp.result_type(a.dtype, b.dtype))


def _budget(chunk_elements) -> int:
    return MAXSIM_CHUNK_ELEMENTS if chunk_elements is None else positive_int("chunk_elements", chunk_elements)


def _on_device(x, device):
    if device is None:
        return x
    if isinstance(device, str):
        platform, _, index = device.partition(":")
        device = jax.devices(platform)[int(index or 0)]
    return jax.device_put(x, device)


# ------------------------------------------------------------------------------------------ scoring


def _reduce(scores, keep, weights, dtype):
    """Token scores ``(A, S, C, T)`` -> MaxSim ``(A, C)`` float32. ``keep`` (X, 1, C, T) marks the
    documents' real tokens (X is A or 1), ``weights`` (A, S) the query mask."""
    scores = jnp.where(keep, scores, jnp.finfo(dtype).min)  # padding never wins the max
    best = scores.max(axis=-1).astype(jnp.float32)  # (A, S, C): float32 ahead of the sum
    total = (best * weights[:, :, None]).sum(axis=1)
    return jnp.where(keep.any(axis=-1)[:, 0, :], total, EMPTY_DOCUMENT_SCORE)


def _empty_scores(queries, keep):
    """Scores without a token product: no document tokens (all empty) or no query tokens (0 or empty)."""
    shape = (queries.shape[0], keep.shape[-2])
    if keep.shape[-1] == 0:
        return jnp.full(shape, EMPTY_DOCUMENT_SCORE, jnp.float32)
    nonempty = keep.any(axis=-1)
    return jnp.broadcast_to(jnp.where(nonempty, 0.0, EMPTY_DOCUMENT_SCORE), shape).astype(jnp.float32)


def _token_products(spec, a, b, dtype):
    # Accumulated in float32 and rounded to the inputs' dtype, as torch's matmul does for half inputs;
    # HIGHEST keeps float32 products float32 on GPUs too (torch's default; XLA's may round to TF32).
    out = jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32,
                     precision=jax.lax.Precision.HIGHEST)
    return out.astype(dtype)


def _block_scores(queries, weights, documents, keep, dtype):
    """Every query (A, S, H) against every document (B, T, H) -> (A, B) float32."""
    if queries.shape[1] == 0 or documents.shape[1] == 0:
        return _empty_scores(queries, keep)
    scores = _token_products("ash,bth->asbt", queries, documents, dtype)
    return _reduce(scores, keep[None, None], weights, dtype)


def _candidate_scores(queries, weights, documents, keep, dtype):
    """Each query (A, S, H) against its own documents (A, C, T, H) -> (A, C) float32."""
    if queries.shape[1] == 0 or documents.shape[2] == 0:
        return _empty_scores(queries, keep)
    scores = _token_products("ash,acth->asct", queries, documents, dtype)
    return _reduce(scores, keep[:, None], weights, dtype)


def _rows(x, start, size):
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def _blocked(block, rows: int, row_chunk: int, cols: int, col_chunk: int):
    """The (rows, cols) float32 matrix whose blocks ``block(r0, c0)`` -> (row_chunk, col_chunk) are
    computed one at a time by one ``fori_loop``; the last block of each axis is aligned to its end (its
    overlap is recomputed, nothing is padded)."""
    n_rows, n_cols = -(-rows // row_chunk), -(-cols // col_chunk)
    if n_rows * n_cols == 1:
        return block(0, 0)

    def body(i, out):
        r0 = jnp.minimum((i // n_cols) * row_chunk, rows - row_chunk)
        c0 = jnp.minimum((i % n_cols) * col_chunk, cols - col_chunk)
        return jax.lax.dynamic_update_slice(out, block(r0, c0), (r0, c0))

    return jax.lax.fori_loop(0, n_rows * n_cols, body, jnp.zeros((rows, cols), jnp.float32))


def _token_counts(mask):
    """Real (nonzero) query tokens per item, at least 1: MeanMaxSim's divisor."""
    return jnp.maximum(jnp.sum(mask != 0, axis=-1), 1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("q_chunk", "d_chunk", "dtype", "length_normalize"))
def _maxsim_matrix(queries, query_mask, documents, document_mask, *, q_chunk, d_chunk, dtype, length_normalize):
    weights = query_mask.astype(jnp.float32)
    keep = document_mask != 0

    def block(r0, c0):
        return _block_scores(_rows(queries, r0, q_chunk), _rows(weights, r0, q_chunk),
                             _rows(documents, c0, d_chunk), _rows(keep, c0, d_chunk), dtype)

    scores = _blocked(block, queries.shape[0], q_chunk, documents.shape[0], d_chunk)
    return scores / _token_counts(query_mask)[:, None] if length_normalize else scores


@functools.partial(jax.jit, static_argnames=("chunk", "dtype", "length_normalize"))
def _maxsim_pairs(queries, query_mask, documents, document_mask, *, chunk, dtype, length_normalize):
    weights = query_mask.astype(jnp.float32)
    keep = document_mask != 0

    def block(_, c0):
        scores = _candidate_scores(_rows(queries, c0, chunk), _rows(weights, c0, chunk),
                                   _rows(documents, c0, chunk)[:, None], _rows(keep, c0, chunk)[:, None], dtype)
        return scores.T  # (1, chunk)

    scores = _blocked(block, 1, 1, queries.shape[0], chunk)[0]
    return scores / _token_counts(query_mask) if length_normalize else scores


def _matrix_chunks(n_queries: int, n_documents: int, per_pair: int, budget: int) -> tuple[int, int]:
    """(query rows, document rows) per block so that a block's ``q * d * per_pair`` elements fit the budget,
    preferring long document chunks."""
    per_pair = max(per_pair, 1)
    q_chunk = min(n_queries, max(1, budget // (per_pair * min(n_documents, 256))))
    d_chunk = min(n_documents, max(1, budget // (per_pair * q_chunk)))
    return q_chunk, d_chunk


def maxsim_scores(queries, query_mask, documents, document_mask, length_normalize: bool = False):
    """Pure and differentiable, for losses inside ``jit``: every query (A, S, H) against every document
    (B, T, H) with their masks -> (A, B) float32 MaxSim (MeanMaxSim with ``length_normalize``), the same
    numbers as ``maxsim``, in one product (no chunking: a training batch is small)."""
    scores = _block_scores(queries, query_mask.astype(jnp.float32), documents, document_mask != 0,
                           jnp.result_type(queries.dtype, documents.dtype))
    return scores / _token_counts(query_mask)[:, None] if length_normalize else scores


def maxsim(a, b, a_mask=None, b_mask=None, chunk_elements: int | None = None, length_normalize: bool = False,
           device=None) -> jax.Array:
    """MaxSim of every query in ``a`` with every document in ``b``: ``sum_i max_j a_i . b_j`` -> (Qa, Qb).

    ``a`` / ``b``: padded (n, T, H) arrays, lists of (T_i, H) arrays, or one (T, H) array. Masks: (n, T)
    (a (T,) mask applies to every item), bool or float, or a list of per-item 1-D masks; without one a
    list's lengths, or a padded array's nonzero token rows, count. Blocks of queries x documents are
    scored by one compiled loop, each holding at most ``chunk_elements`` token scores (default
    ``MAXSIM_CHUNK_ELEMENTS``). ``length_normalize`` divides by each query's real token count.
    ``device`` (a ``jax.Device`` or a name like "cpu" / "gpu:0") moves the inputs there first."""
    a, a_mask = _canonical(a, a_mask, "a_mask")
    b, b_mask = _canonical(b, b_mask, "b_mask")
    if len(a) == 0 or len(b) == 0:
        return jnp.zeros((len(a), len(b)), jnp.float32)
    _check_dims(a, b)
    a, a_mask, b, b_mask = (_on_device(x, device) for x in (a, a_mask, b, b_mask))
    q_chunk, d_chunk = _matrix_chunks(len(a), len(b), a.shape[1] * b.shape[1], _budget(chunk_elements))
    return _maxsim_matrix(a, a_mask, b, b_mask, q_chunk=q_chunk, d_chunk=d_chunk, dtype=_compute_dtype(a, b),
                          length_normalize=bool(length_normalize))


def maxsim_pairwise(a, b, a_mask=None, b_mask=None, chunk_elements: int | None = None,
                    length_normalize: bool = False, device=None) -> jax.Array:
    """MaxSim of each pair ``(a[i], b[i])`` -> (n,); inputs and options as in ``maxsim``."""
    a, a_mask = _canonical(a, a_mask, "a_mask")
    b, b_mask = _canonical(b, b_mask, "b_mask")
    if len(a) != len(b):
        raise ValueError(f"`a` and `b` must hold the same number of items to score as pairs, got {len(a)} "
                         f"and {len(b)}.")
    if len(a) == 0:
        return jnp.zeros((0,), jnp.float32)
    _check_dims(a, b)
    a, a_mask, b, b_mask = (_on_device(x, device) for x in (a, a_mask, b, b_mask))
    chunk = min(len(a), max(1, _budget(chunk_elements) // max(a.shape[1] * b.shape[1], 1)))
    return _maxsim_pairs(a, a_mask, b, b_mask, chunk=chunk, dtype=_compute_dtype(a, b),
                         length_normalize=bool(length_normalize))


def mean_maxsim(a, b, a_mask=None, b_mask=None, chunk_elements: int | None = None, length_normalize: bool = True,
                device=None) -> jax.Array:
    """MeanMaxSim: ``maxsim`` divided by each query's real token count (``length_normalize=False`` is
    plain ``maxsim``)."""
    return maxsim(a, b, a_mask, b_mask, chunk_elements, length_normalize, device)


def mean_maxsim_pairwise(a, b, a_mask=None, b_mask=None, chunk_elements: int | None = None,
                         length_normalize: bool = True, device=None) -> jax.Array:
    """Pairwise MeanMaxSim: ``maxsim_pairwise`` divided by each query's real token count."""
    return maxsim_pairwise(a, b, a_mask, b_mask, chunk_elements, length_normalize, device)


# ------------------------------------------------------------------------------------------- search


@dataclasses.dataclass(frozen=True)
class _MaxSimKind:
    """The dense scan's score function (``jaxst.topk.scan_top_k``'s ``kind``) for MaxSim: the
    queries come packed as (Q, S, H + 1), the last column the query mask; a corpus chunk is the pair
    (embeddings, mask). Hashable by value, so one compiled scan serves every call."""

    dtype: str

    def __call__(self, packed, chunk):
        documents, mask = chunk
        scores = _block_scores(packed[..., :-1], packed[..., -1], documents, mask != 0, self.dtype)
        return _refuse_nonfinite_documents(scores, documents, (1, 2))  # documents (C, T, H), scores (Q, C)


def _refuse_nonfinite_documents(scores, documents, axes):
    """NaN scores for documents holding NaN or inf in any token: padded tokens are masked out of the max, so
    their values would otherwise go unseen (the scan then refuses the NaN, ``jaxst.search``'s rule)."""
    finite = jnp.isfinite(documents).all(axis=axes)
    return jnp.where(finite, scores, jnp.nan)


@jax.jit
def _pack_queries(queries, mask):
    return jnp.concatenate([queries.astype(jnp.float32), mask.astype(jnp.float32)[..., None]], axis=-1)


@jax.jit
def _mean_vectors(embeddings, mask):
    weights = (mask != 0).astype(jnp.float32)
    total = jnp.einsum("nth,nt->nh", embeddings.astype(jnp.float32), weights)
    return normalize(total / jnp.maximum(weights.sum(axis=1), 1.0)[:, None])


def _sharded_maxsim_top_k(packed, corpus, n_valid, *, k: int, kind, chunk: int, mesh, axis: str):
    """``topk.sharded_top_k`` for a (embeddings, mask) corpus split by rows over ``mesh``: each device
    scans its own shard and keeps its top ``k``; the winners are all-gathered and one ``top_k`` picks the
    global best."""

    def local(q, shard, n_valid):
        rows = shard[0].shape[0]
        offset = jax.lax.axis_index(axis) * rows
        mine = jnp.clip(n_valid - offset, 0, rows)
        values, ids = scan_top_k(q, shard, mine, 0, offset, k=min(k, rows), kind=kind, chunk=min(chunk, rows))
        values = jax.lax.all_gather(values, axis, axis=1, tiled=True)  # (Q, devices * k)
        ids = jax.lax.all_gather(ids, axis, axis=1, tiled=True)
        values, pos = jax.lax.top_k(values, k)
        return values, jnp.take_along_axis(ids, pos, axis=1)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=(P(), P()),
                         check_vma=False)(packed, corpus, n_valid)


_sharded_maxsim = per_platform(_sharded_maxsim_top_k, ("k", "kind", "chunk", "mesh", "axis"))


def _rerank_scores(packed, documents, keep, ids, *, q_chunk: int, c_chunk: int, dtype):
    """Exact MaxSim of each query with its candidates ``ids`` (Q, N) -> (Q, N), in blocks of
    (q_chunk, c_chunk) candidates whose documents are gathered one block at a time."""

    def block(r0, c0):
        q = _rows(packed, r0, q_chunk)
        block_ids = jax.lax.dynamic_slice(ids, (r0, c0), (q_chunk, c_chunk))
        gathered = documents[block_ids]  # (q_chunk, c_chunk, T, H)
        scores = _candidate_scores(q[..., :-1], q[..., -1], gathered, keep[block_ids], dtype)
        return _refuse_nonfinite_documents(scores, gathered, (2, 3))  # scores (q_chunk, c_chunk)

    return _blocked(block, ids.shape[0], q_chunk, ids.shape[1], c_chunk)


@functools.partial(jax.jit, static_argnames=("k", "q_chunk", "c_chunk", "dtype"))
def _rerank(packed, documents, mask, ids, *, k: int, q_chunk: int, c_chunk: int, dtype):
    scores = _rerank_scores(packed, documents, mask != 0, ids, q_chunk=q_chunk, c_chunk=c_chunk, dtype=dtype)
    values, pos = jax.lax.top_k(flag_nonfinite(scores), k)
    return values, jnp.take_along_axis(ids, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "q_chunk", "c_chunk", "dtype", "mesh", "axis"))
def _sharded_rerank(packed, corpus, ids, *, k: int, q_chunk: int, c_chunk: int, dtype, mesh, axis: str):
    """``_rerank`` over a row-sharded corpus: each device scores the candidates it holds (the others'
    slots read -inf) and a ``pmax`` across devices assembles every candidate's score."""

    def local(q, shard, ids):
        documents, mask = shard
        rows = documents.shape[0]
        mine = ids - jax.lax.axis_index(axis) * rows
        owned = (mine >= 0) & (mine < rows)
        scores = _rerank_scores(q, documents, mask != 0, jnp.where(owned, mine, 0), q_chunk=q_chunk,
                                c_chunk=c_chunk, dtype=dtype)
        return jax.lax.pmax(jnp.where(owned, flag_nonfinite(scores), -jnp.inf), axis)

    scores = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=P(),
                           check_vma=False)(packed, corpus, ids)
    values, pos = jax.lax.top_k(scores, k)
    return values, jnp.take_along_axis(ids, pos, axis=1)


class _Corpus:
    """Where a padded multi-vector corpus lives, and its top-k and rerank on that placement: "host"
    (numpy, streamed in ``piece``-row pieces), "sharded" (rows split over a mesh axis) or "device"."""

    def __init__(self, embeddings, mask, piece: int | None):
        self.n = embeddings.shape[0]
        self.width = embeddings.shape[1]
        self.dim = embeddings.shape[2]
        self.mesh = self.axis = None
        if isinstance(embeddings, np.ndarray):
            row_bytes = max(embeddings[:1].nbytes + np.asarray(mask[:1]).nbytes, 1)
            explicit = piece is not None
            piece = piece if explicit else max(1, HOST_PIECE_BYTES // row_bytes)
            if self.n > piece and (explicit or not shares_host_memory(embeddings)):
                self.kind, self.piece = "host", piece
                self.embeddings, self.mask = embeddings, np.asarray(mask)
                return
            embeddings = jax.device_put(embeddings)
        self.kind = "device"
        sharded = row_sharding(embeddings)
        if sharded is not None and self.n % sharded[0].shape[sharded[1]] == 0:
            self.kind, (self.mesh, self.axis) = "sharded", sharded
            rows = NamedSharding(self.mesh, P(self.axis))
            if not (isinstance(mask, jax.Array) and mask.sharding.is_equivalent_to(rows, 2)):
                mask = jax.device_put(mask, rows)
        elif isinstance(embeddings.sharding, (jax.sharding.SingleDeviceSharding, NamedSharding)):
            mask = jax.device_put(mask, embeddings.sharding)  # a no-op where it already is
        self.embeddings, self.mask = embeddings, mask

    def top_k(self, packed, *, k: int, kind, chunk: int):
        if self.kind == "sharded":
            return _sharded_maxsim(packed, (self.embeddings, self.mask), self.n, k=k, kind=kind, chunk=chunk,
                                   mesh=self.mesh, axis=self.axis)
        if self.kind == "device":
            return chunked_top_k(packed, (self.embeddings, self.mask), self.n, k=k, kind=kind, chunk=chunk)
        best = None
        piece = min(self.piece, self.n)
        for start in range(0, self.n, piece):  # dispatch is asynchronous: the next copy overlaps this scan
            lo = min(start, self.n - piece)
            block = (jax.device_put(self.embeddings[lo : lo + piece]), jax.device_put(self.mask[lo : lo + piece]))
            found = chunked_top_k(packed, block, piece, start - lo, lo, k=min(k, piece), kind=kind, chunk=chunk)
            best = found if best is None else merge_top_k(*best, *found, k=k)
        return best

    def rerank(self, packed, ids, *, k: int, dtype: str, budget: int):
        """The best ``k`` of each query's candidate ``ids`` (Q, N) by exact MaxSim."""
        per = packed.shape[1] * self.width + self.width * self.dim  # token scores + gathered documents
        q_chunk, c_chunk = _matrix_chunks(ids.shape[0], ids.shape[1], per, budget)
        kw = dict(k=k, q_chunk=q_chunk, c_chunk=c_chunk, dtype=dtype)
        if self.kind == "sharded":
            return _sharded_rerank(packed, (self.embeddings, self.mask), ids, mesh=self.mesh, axis=self.axis, **kw)
        if self.kind == "device":
            return _rerank(packed, self.embeddings, self.mask, ids, **kw)
        ids = np.asarray(ids)  # host: only the candidates go to the device
        unique = np.unique(ids)
        values, local = _rerank(packed, jax.device_put(self.embeddings[unique]), jax.device_put(self.mask[unique]),
                                jnp.asarray(np.searchsorted(unique, ids).astype(np.int32)), **kw)
        return values, unique[np.asarray(local)]

    def vectors(self):
        """``mean_vectors`` of the corpus, where it lives (numpy for a host corpus)."""
        if self.kind != "host":
            vectors = _mean_vectors(self.embeddings, self.mask)
            return jax.device_put(vectors, NamedSharding(self.mesh, P(self.axis))) if self.mesh else vectors
        out = np.empty((self.n, self.dim), np.float32)
        for start in range(0, self.n, self.piece):
            stop = start + self.piece
            out[start:stop] = np.asarray(_mean_vectors(self.embeddings[start:stop], self.mask[start:stop]))
        return out


def mean_vectors(embeddings, mask=None):
    """Each multi-vector embedding's first-stage vector: the L2-normalized mean of its real tokens, (n, H)
    float32 (zero for an empty one). Computed once per corpus, it can be passed to ``maxsim_search`` as
    ``corpus_vectors``. A numpy input gives numpy (computed in device-sized pieces), a jax one jax."""
    embeddings, mask = _canonical(embeddings, mask, "mask")
    vectors = _Corpus(embeddings, mask, None).vectors()
    return np.asarray(vectors) if isinstance(embeddings, np.ndarray) else vectors


def _dense_top_k(queries, vectors, k: int):
    """Best ``k`` rows of (n, H) ``vectors`` by dot product with (Q, H) queries, where the vectors live."""
    n = vectors.shape[0]
    chunk = scan_chunk("dot")
    if isinstance(vectors, np.ndarray):
        piece = max(1, HOST_PIECE_BYTES // max(vectors[:1].nbytes, 1))
        vectors = np.ascontiguousarray(vectors, np.float32)
        if n > piece and not shares_host_memory(vectors):
            return streamed_top_k(queries, vectors, n, k=k, kind="dot", chunk=chunk, piece=piece)
        vectors = jax.device_put(vectors)
    vectors = vectors.astype(jnp.float32)
    sharded = row_sharding(vectors)
    if sharded is not None and n % sharded[0].shape[sharded[1]] == 0:
        return sharded_top_k(queries, vectors, n, k=k, kind="dot", chunk=chunk, mesh=sharded[0], axis=sharded[1])
    return chunked_top_k(queries, vectors, n, k=k, kind="dot", chunk=chunk)


def maxsim_search(
    query_embeddings,
    corpus_embeddings,
    query_mask=None,
    corpus_mask=None,
    top_k: int = 10,
    length_normalize: bool = False,
    query_chunk_size: int = 100,
    corpus_chunk_size: int | None = None,
    chunk_elements: int | None = None,
    candidates: int | None = None,
    corpus_vectors=None,
) -> list[list[dict]]:
    """For each query, the ``top_k`` corpus entries by MaxSim as ``{"corpus_id", "score"}``, best first
    (``semantic_search``'s format; the scores are ``maxsim``'s, MeanMaxSim with ``length_normalize``).

    Inputs as in ``maxsim``. Exact by default: corpus chunks (sized so a step holds at most
    ``chunk_elements`` token scores) are scored and merged into a running top-k inside one compiled scan.
    A jax.Array corpus is searched where it lives; one whose embeddings are split by rows over a mesh
    (``NamedSharding(mesh, P("data"))``) is scanned shard by shard on each device, with one global merge.
    A numpy corpus (or a list, padded on the host) is streamed to the device ``corpus_chunk_size``
    documents at a time (default: pieces of about 1 GiB; on the CPU backend an aligned array that fits is
    used in place).

    ``candidates=N`` searches in two stages: the N corpus entries whose ``mean_vectors`` best match the
    query's mean vector, then exact MaxSim over those N only (at least ``top_k`` of them; ``N >=
    len(corpus)`` gives the exact hits). Pass ``corpus_vectors`` (``mean_vectors(corpus)``) to skip
    recomputing them per call; ``maxsim_recall`` measures what the first stage loses. Non-finite embeddings
    (or ``corpus_vectors``) are refused with the row named, never searched (``jaxst.search``'s rule)."""
    top_k = positive_int("top_k", top_k)
    query_chunk_size = positive_int("query_chunk_size", query_chunk_size)
    corpus_chunk_size = positive_int("corpus_chunk_size", corpus_chunk_size, optional=True)
    candidates = positive_int("candidates", candidates, optional=True)
    queries, query_mask = _canonical(query_embeddings, query_mask, "query_mask")
    embeddings, corpus_mask = _canonical(corpus_embeddings, corpus_mask, "corpus_mask")
    if chunk_elements is None and on_cpu(embeddings, queries):
        chunk_elements = CPU_SCAN_ELEMENTS
    budget = _budget(chunk_elements)
    _check_dims(queries, embeddings, "corpus")
    check_finite(queries, "query_embeddings")
    check_finite(query_mask, "query_mask")
    n = embeddings.shape[0]
    if n == 0 or len(queries) == 0:
        return [[] for _ in range(len(queries))]
    corpus = _Corpus(embeddings, corpus_mask, corpus_chunk_size)
    locate = lambda: first_nonfinite_row(embeddings)  # noqa: E731  (the error path only)
    dtype = _compute_dtype(queries, embeddings)
    kind = _MaxSimKind(dtype)
    packed = _pack_queries(jnp.asarray(queries), jnp.asarray(query_mask))
    counts = _token_counts(jnp.asarray(query_mask)) if length_normalize else None
    k = min(top_k, n)
    step_queries = min(len(queries), query_chunk_size)
    chunk = max(1, budget // (step_queries * max(queries.shape[1] * embeddings.shape[1], 1)))
    if candidates is not None:
        candidates = min(max(candidates, k), n)
        vectors_name, locate_vectors = "corpus_embeddings", locate  # a NaN document has a NaN mean vector
        if corpus_vectors is None:
            corpus_vectors = corpus.vectors()
        elif tuple(corpus_vectors.shape) != (n, corpus.dim):
            raise ValueError(f"corpus_vectors has shape {tuple(corpus_vectors.shape)}, expected ({n}, {corpus.dim})")
        else:
            vectors = corpus_vectors
            vectors_name, locate_vectors = "corpus_vectors", lambda: first_nonfinite_row(vectors)
        query_vectors = _mean_vectors(jnp.asarray(queries), jnp.asarray(query_mask))
    results: list[list[dict]] = []
    for q0 in range(0, len(queries), query_chunk_size):
        q = packed[q0 : q0 + query_chunk_size]
        if candidates is None:
            scores, ids = corpus.top_k(q, k=k, kind=kind, chunk=chunk)
        else:
            first, found = _dense_top_k(query_vectors[q0 : q0 + query_chunk_size], corpus_vectors, candidates)
            refuse_nonfinite_scores(np.asarray(first), np.asarray(found), locate_vectors, vectors_name, q0)
            scores, ids = corpus.rerank(q, found, k=k, dtype=dtype, budget=budget)
        if counts is not None:  # one divisor per query: the order is unchanged
            scores = scores / counts[q0 : q0 + query_chunk_size, None]
        results.extend(hits(scores, ids, locate, "corpus_embeddings", q0))
    return results


def recall_at_k(found: list[list[dict]], exact: list[list[dict]], k: int | None = None) -> float:
    """Mean over queries of the share of the exact top ``k`` ids (all of ``exact``'s hits when None) that
    ``found``'s top ``k`` holds: 1.0 when every query's exact hits were found. In [0, 1]."""
    if len(found) != len(exact):
        raise ValueError(f"{len(found)} result lists for {len(exact)} exact ones")
    if k is not None:
        positive_int("k", k)
    shares = []
    for row, ref in zip(found, exact):
        ref_ids = {h["corpus_id"] for h in ref[:k]}
        if ref_ids:
            shares.append(len(ref_ids & {h["corpus_id"] for h in row[:k]}) / len(ref_ids))
    return float(np.mean(shares)) if shares else 1.0


def maxsim_recall(query_embeddings, corpus_embeddings, query_mask=None, corpus_mask=None, top_k: int = 10,
                  candidates: int = 100, **kwargs) -> float:
    """Recall@``top_k`` of the two-stage ``maxsim_search(..., candidates=candidates)`` against exact search
    over the same inputs (``kwargs``: ``maxsim_search``'s other options)."""
    args = (query_embeddings, corpus_embeddings, query_mask, corpus_mask, top_k)
    positive_int("candidates", candidates)
    exact = maxsim_search(*args, **{key: v for key, v in kwargs.items() if key != "corpus_vectors"})
    return recall_at_k(maxsim_search(*args, candidates=candidates, **kwargs), exact, top_k)
