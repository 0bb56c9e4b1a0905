"""Exact top-k search as one compiled function: corpus chunks scored and reduced on device.

The corpus is scanned in fixed-size chunks with ``jax.lax.scan``; each chunk's winners are merged
into a running top-k on device, so there is no Python loop over corpus chunks and the score matrix
never exists whole. Three scorers share the scan:

    "dot"      float32/bfloat16 corpus, float query             -> q . c
    "int8"     int8 corpus, int8 (scaled) query, int32 accumulate -> approximate q . dequant(c)
    "hamming"  bits packed in uint16 words, popcount(q ^ c)        -> -Hamming distance

A corpus too large for the device stays in host memory and is streamed through the same scan a
piece at a time (``streamed_top_k``); on the CPU backend an aligned host array is used in place.
An int8 scan of CPU arrays runs as one native AVX-512 VNNI pass where the CPU has it
(``jaxst.native``), with the same hits.

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

import functools
import heapq

import jax
import jax.numpy as jnp
import numpy as np

from jaxst import native
from jaxst.pooling import normalize
from jaxst.similarity import as_matrix, cos_sim, dot_score
from jaxst.sparse import chunk_scores, is_sparse, normalize_rows, rows_to_dense, stored_rows

BLOCK = 64  # rows per block in the two-stage top-k
HAMMING_BLOCK = 16  # integer distances tie a lot: small blocks keep the candidate sort short
INTEGER_SCORES = ("int8", "hamming")  # scorers whose scores are always finite
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


def flag_nonfinite(scores):
    """Non-finite scores as +inf: inside a scan they win the top-k, so they come back with the hits and
    ``refuse_nonfinite_scores`` sees them."""
    return jnp.where(jnp.isfinite(scores), scores, jnp.inf)


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


def top_k(scores, k: int, block: int = BLOCK):
    """Exact ``jax.lax.top_k`` over the last axis, cheaper on long rows.

    The k best values lie in the k blocks with the largest block maxima, so only those
    blocks are sorted. Ties go to the lower index, as in ``jax.lax.top_k``: the chosen blocks
    are taken in index order."""
    q, n = scores.shape
    if n % block or k * block >= n:
        return jax.lax.top_k(scores, k)
    blocks = scores.reshape(q, n // block, block)
    best_blocks = jnp.sort(jax.lax.top_k(blocks.max(axis=-1), k)[1], axis=1)  # (Q, k)
    candidates = jnp.take_along_axis(blocks, best_blocks[:, :, None], axis=1).reshape(q, k * block)
    values, pos = jax.lax.top_k(candidates, k)
    ids = jnp.take_along_axis(best_blocks, pos // block, axis=1) * block + pos % block
    return values, ids


# Rows scored per scan step, by scorer: measured best on a 1M x 384 corpus, 100 queries (2 cores,
# benchmarks/search_speed.py). Float GEMMs like small blocks; int8 and popcount scans longer ones.
SCAN_CHUNKS = {"dot": 8192, "cosine": 8192, "int8": 32768, "hamming": 65536}
SCAN_CHUNK = 32768  # any other score function


def scan_chunk(kind) -> int:
    return SCAN_CHUNKS.get(kind, SCAN_CHUNK) if isinstance(kind, str) else SCAN_CHUNK


# LLVM's default 256-bit vectors leave AVX-512's popcount (VPOPCNTW) unused: the Hamming scan runs
# ~1.5x faster with 512-bit vectors where the CPU has them (a no-op on CPUs without AVX-512). Passed
# only when the arrays live on CPU devices: other backends' compilers need not know the option.
SCAN_COMPILER_OPTIONS = {"xla_cpu_prefer_vector_width": 512}


def _on_cpu(*arrays) -> bool:
    for x in arrays:
        devices = getattr(x, "devices", None)
        if callable(devices):
            return all(d.platform == "cpu" for d in devices())
    return jax.default_backend() == "cpu"


def _per_platform(fn, static_argnames):
    """``fn`` jitted twice, with the scan's CPU compiler options and without; calls pick by where the
    arguments live."""
    on_cpu = jax.jit(fn, static_argnames=static_argnames, compiler_options=SCAN_COMPILER_OPTIONS)
    elsewhere = jax.jit(fn, static_argnames=static_argnames)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (on_cpu if _on_cpu(*args[:2]) else elsewhere)(*args, **kwargs)

    call.clear_cache = lambda: (on_cpu.clear_cache(), elsewhere.clear_cache())
    return call


HOST_ALIGN = 64  # the CPU client aliases (does not copy) host arrays aligned to this many bytes


def _chunk_scores(queries, chunk, kind):
    if kind == "dot":
        return queries @ chunk.astype(jnp.float32).T
    if kind == "cosine":  # the query is normalized once by the caller; corpus norms scale the scores
        chunk = chunk.astype(jnp.float32)
        inv_norm = 1 / jnp.maximum(jnp.sqrt(jnp.sum(chunk * chunk, axis=1)), 1e-12)
        return (queries @ chunk.T) * inv_norm[None, :]
    if kind == "int8":
        dims = (((1,), (1,)), ((), ()))
        return jax.lax.dot_general(queries, chunk, dims, preferred_element_type=jnp.int32).astype(jnp.float32)
    if kind in ("sparse", "sparse_cosine"):  # chunk is fixed-width rows (values, indices); queries dense (Q, V)
        values, indices = chunk
        return chunk_scores(queries, normalize_rows(values) if kind == "sparse_cosine" else values, indices)
    if kind == "hamming":  # chunk is (words, rows) uint16: each word is one contiguous row
        acc = jnp.int16 if queries.shape[1] * 16 < 2**15 else jnp.int32  # 16-bit sums: twice the lanes
        dist = jnp.zeros((queries.shape[0], chunk.shape[1]), acc)
        for w in range(queries.shape[1]):  # unrolled over the words: one fused pass over the chunk
            dist = dist + jax.lax.population_count(queries[:, w][:, None] ^ chunk[w][None, :]).astype(acc)
        return -dist.astype(jnp.float32)
    return jnp.asarray(kind(queries, chunk), jnp.float32)  # any jittable score function


def _chunked_top_k(queries, corpus, n_valid, first=0, offset=0, *, k: int, kind, chunk: int):
    """Best ``k`` (scores, ids) per query over rows ``first <= row < n_valid`` of ``corpus``.

    ``corpus`` (N, W) is read in ``ceil(N / chunk)`` chunks by one ``lax.scan``; the last chunk is
    aligned to the end of the array (nothing is padded or copied) and rows already seen score -inf.
    Each step keeps only its chunk's top k; one ``top_k`` over those winners ends the search. A valid
    row's non-finite score comes back as +inf (``flag_nonfinite``); rows outside the bounds score -inf.
    Returned ids are ``offset + row``. For ``kind="hamming"`` the corpus is words-major, (W, N).
    ``n_valid``, ``first`` and ``offset`` are traced: a growing corpus does not recompile."""
    axis = 1 if kind == "hamming" else 0
    n = jax.tree.leaves(corpus)[0].shape[axis]  # a sparse corpus is a (values, indices) pair of (N, W) arrays
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    kk = min(k, chunk)
    if kind in ("cosine", "sparse_cosine"):
        queries = normalize(queries)

    def step(i):
        start = jnp.minimum(i * chunk, n - chunk)
        block = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=axis), corpus)
        rows = start + jnp.arange(chunk)
        scores = _chunk_scores(queries, block, kind)
        if kind not in INTEGER_SCORES:
            scores = flag_nonfinite(scores)
        scores = jnp.where((rows >= jnp.maximum(i * chunk, first)) & (rows < n_valid), scores, -jnp.inf)
        values, pos = top_k(scores, kk, HAMMING_BLOCK if kind == "hamming" else BLOCK)
        return values, rows[pos]

    if n_chunks == 1:  # the whole corpus is one chunk: no slicing, no scan
        values, rows = step(0)
    else:
        _, (values, rows) = jax.lax.scan(lambda carry, i: (carry, step(i)), None, jnp.arange(n_chunks))
        q = queries.shape[0]
        values = values.transpose(1, 0, 2).reshape(q, n_chunks * kk)  # (Q, chunks * k) winners
        rows = rows.transpose(1, 0, 2).reshape(q, n_chunks * kk)
    values, pos = jax.lax.top_k(values, min(k, values.shape[1]))
    return values, (jnp.take_along_axis(rows, pos, axis=1) + offset).astype(jnp.int32)


# Compiled on its own with the scan's compiler options; inside another jit (sharded_top_k) the raw
# function is traced instead, since only a top-level jit takes compiler options.
_xla_chunked_top_k = _per_platform(_chunked_top_k, ("k", "kind", "chunk"))


def chunked_top_k(queries, corpus, n_valid, first=0, offset=0, *, k: int, kind, chunk: int):
    """``_chunked_top_k``, compiled. An int8 scan of CPU arrays runs as one native AVX-512 VNNI pass
    where the CPU has it (``jaxst.native``: the same hits, about twice as fast as XLA's int8 dot)."""
    if kind == "int8" and native.usable(queries, corpus, n_valid, first, k) and _on_cpu(queries, corpus):
        target = native.int8_kernel()
        if target is not None:
            return native.int8_top_k(queries, corpus, n_valid, first, offset, k=k, target=target)
    return _xla_chunked_top_k(queries, corpus, n_valid, first, offset, k=k, kind=kind, chunk=chunk)


chunked_top_k.clear_cache = _xla_chunked_top_k.clear_cache


@functools.partial(jax.jit, static_argnames=("k",))
def merge_top_k(values, ids, more_values, more_ids, *, k: int):
    """The best ``k`` of two (scores, ids) candidate sets, per query."""
    values = jnp.concatenate([values, more_values], axis=1)
    ids = jnp.concatenate([ids, more_ids], axis=1)
    values, pos = jax.lax.top_k(values, min(k, values.shape[1]))
    return values, jnp.take_along_axis(ids, pos, axis=1)


def hamming_words(packed: np.ndarray) -> np.ndarray:
    """Packed bits (n, bytes) as uint64 words (n, ceil(bytes / 8)), zero-padded: the index's host
    storage (8-byte aligned rows)."""
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def scan_words(words: np.ndarray) -> np.ndarray:
    """uint64 words (n, W) -> the uint16 words (n, 4W) the popcount scan reads: 16-bit lanes
    vectorize best (AVX-512 BITALG counts 32 of them at once; AVX2 code is no slower than 64-bit),
    and no 64-bit types (JAX's x64 mode) are needed."""
    return np.ascontiguousarray(words).view(np.uint16)


def hamming_corpus(words: np.ndarray, device=None) -> jax.Array:
    """uint64 words (n, W) -> the (4W, n) uint16 device array the Hamming scan reads."""
    return jax.device_put(np.ascontiguousarray(scan_words(words).T), device)


def hamming_top_k(packed_queries: np.ndarray, corpus: jax.Array, n_valid: int, *, k: int, chunk: int,
                  first: int = 0, offset: int = 0):
    """Best ``k`` of ``-Hamming distance`` between packed query bits and a ``hamming_corpus``."""
    queries = jax.device_put(scan_words(hamming_words(packed_queries)), corpus.sharding)
    return chunked_top_k(queries, corpus, n_valid, first, offset, k=k, kind="hamming", chunk=chunk)


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised host array whose data starts on a ``HOST_ALIGN`` boundary: on the CPU backend
    ``jax.device_put`` then shares its memory instead of copying it."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + HOST_ALIGN, np.uint8)
    skip = (-buf.ctypes.data) % HOST_ALIGN
    return buf[skip : skip + nbytes].view(dtype).reshape(shape)


def shares_host_memory(array: np.ndarray) -> bool:
    """True where ``jax.device_put(array)`` aliases host memory instead of copying it (CPU backend)."""
    return (jax.default_backend() == "cpu" and array.flags.c_contiguous
            and array.ctypes.data % HOST_ALIGN == 0)


STAGE_BYTES = 1 << 25  # per staging buffer when a host corpus is copied for the CPU backend


def streamed_top_k(queries, host_corpus: np.ndarray, n_valid: int, *, k: int, kind, chunk: int, piece: int,
                   device=None):
    """``chunked_top_k`` over a corpus that stays in host memory: ``piece`` rows at a time are put on
    the device (dispatch is asynchronous, so the next copy overlaps the current scan), scanned, and
    merged into a running top-k on device. Device memory holds one piece, whatever the corpus size.
    Every piece has the same shape (the last is aligned to the end), so it compiles once.

    On the CPU backend a piece is copied into one of two reused, aligned staging buffers that the
    device then reads in place: a fresh device buffer per piece would cost a page fault per 4 KiB."""
    if jax.default_backend() == "cpu" and device is None:
        row_bytes = max(host_corpus.shape[1] * host_corpus.itemsize, 1)
        piece = min(piece, max(1024, STAGE_BYTES // row_bytes // 1024 * 1024))
    piece = min(piece, n_valid)
    staging = None
    if jax.default_backend() == "cpu" and device is None:
        staging = [aligned_empty((piece, host_corpus.shape[1]), host_corpus.dtype) for _ in range(2)]
        pending = [None, None]
    best = None
    for step, start in enumerate(range(0, n_valid, piece)):
        lo = min(start, n_valid - piece)
        rows = host_corpus[lo : lo + piece]
        if staging is not None:
            slot = step % 2
            if pending[slot] is not None:  # the scan that read this buffer must be done before it is reused
                jax.block_until_ready(pending[slot])
            np.copyto(staging[slot], rows)
            block = jax.device_put(staging[slot])
        else:
            block = jax.device_put(np.ascontiguousarray(rows), device)
        found = chunked_top_k(queries, block, piece, start - lo, lo, k=min(k, piece), kind=kind, chunk=chunk)
        if staging is not None:
            pending[slot] = found
        best = found if best is None else merge_top_k(*best, *found, k=k)
    if staging is not None:  # nothing may read the buffers once they are freed
        jax.block_until_ready(best)
    return best


def row_sharding(corpus: jax.Array):
    """``(mesh, axis name)`` when ``corpus`` is split by rows over several devices of a mesh, else None."""
    sharding = getattr(corpus, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding) or len(sharding.device_set) < 2:
        return None
    spec = tuple(sharding.spec) + (None,) * (corpus.ndim - len(sharding.spec))
    rows = spec[0]
    if rows is None or any(s is not None for s in spec[1:]):
        return None
    axis = rows if isinstance(rows, str) else (rows[0] if len(rows) == 1 else None)
    return (sharding.mesh, axis) if axis is not None else None


def _sharded_top_k(queries, corpus, n_valid, *, k: int, kind, chunk: int, mesh, axis: str,
                  words_major: bool = False):
    """``chunked_top_k`` over a corpus split by rows across the devices of ``mesh`` along ``axis``:
    each device scans its own shard and keeps its top ``k``, the winners are all-gathered and one
    ``top_k`` picks the global best. Same scores and ids as one device (ties aside)."""
    from jax.sharding import PartitionSpec as P

    rows_spec = P(None, axis) if words_major else P(axis)

    def local(q, shard, n_valid):
        rows = shard.shape[1 if words_major else 0]
        offset = jax.lax.axis_index(axis) * rows
        mine = jnp.clip(n_valid - offset, 0, rows)
        values, ids = _chunked_top_k(q, shard, mine, 0, offset, k=min(k, rows), kind=kind, chunk=chunk)
        values = jax.lax.all_gather(values, axis, axis=1, tiled=True)  # (Q, devices * k)
        ids = jax.lax.all_gather(ids, axis, axis=1, tiled=True)
        values, pos = jax.lax.top_k(values, k)
        return values, jnp.take_along_axis(ids, pos, axis=1)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows_spec, P()), out_specs=(P(), P()),
                         check_vma=False)(queries, corpus, n_valid)


sharded_top_k = _per_platform(_sharded_top_k, ("k", "kind", "chunk", "mesh", "axis", "words_major"))


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
    rows at a time (on the CPU backend a 64-byte aligned one is used in place, without a copy).
    Non-finite embeddings are refused (a ValueError naming the row), never searched: see the module doc."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    for name, value in (("query_chunk_size", query_chunk_size), ("corpus_chunk_size", corpus_chunk_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if is_sparse(query_embeddings) or is_sparse(corpus_embeddings):
        return sparse_semantic_search(query_embeddings, corpus_embeddings, query_chunk_size, top_k, score_function)
    queries = as_matrix(query_embeddings)
    host = _host_matrix(corpus_embeddings)
    if host is not None and shares_host_memory(host):
        corpus, host = jax.device_put(host), None
    else:
        corpus = as_matrix(corpus_embeddings) if host is None else host
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"query dim {queries.shape[1]} != corpus dim {corpus.shape[1]}")
    check_finite(queries, "query_embeddings")
    n = corpus.shape[0]
    if n == 0:
        return [[] for _ in range(queries.shape[0])]
    searched = corpus if host is None else host
    locate = lambda: first_nonfinite_row(searched)  # noqa: E731  (the error path only)
    kind = {cos_sim: "cosine", dot_score: "dot"}.get(score_function, score_function)
    k = min(top_k, n)
    chunk = min(corpus_chunk_size, scan_chunk(kind))
    sharded = row_sharding(corpus) if host is None else None
    results: list[list[dict]] = []
    for q0 in range(0, queries.shape[0], query_chunk_size):
        q = queries[q0 : q0 + query_chunk_size]
        if host is not None:
            scores, ids = streamed_top_k(q, host, n, k=k, kind=kind, chunk=chunk, piece=corpus_chunk_size)
        elif sharded is not None and n % sharded[0].shape[sharded[1]] == 0:
            scores, ids = sharded_top_k(q, corpus, n, k=k, kind=kind, chunk=chunk, mesh=sharded[0], axis=sharded[1])
        else:
            scores, ids = chunked_top_k(q, corpus, n, k=k, kind=kind, chunk=chunk)
        results.extend(hits(scores, ids, locate, "corpus_embeddings", q0))
    return results


SPARSE_CHUNK_BYTES = 1 << 26  # per scan step of a sparse search: the gathered (rows, W, Q) or dense (rows, V) block


def sparse_chunk(queries: int, width: int, dim: int) -> int:
    """Corpus rows per scan step of a sparse search, a power of two between 256 and 65,536."""
    per_row = 4 * max(width * queries, dim)
    rows = max(256, min(65536, SPARSE_CHUNK_BYTES // per_row))
    return 1 << (rows.bit_length() - 1)


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
    results: list[list[dict]] = []
    for q0 in range(0, q_values.shape[0], query_chunk_size):
        scores, ids = sparse_top_k(q_values[q0 : q0 + query_chunk_size], q_indices[q0 : q0 + query_chunk_size],
                                   (values, indices), n, k=k, cosine=kind == "sparse_cosine", dim=dim)
        results.extend(hits(scores, ids, lambda: first_nonfinite_row(values), "corpus_embeddings", q0))
    return results


def sparse_top_k(q_values, q_indices, corpus: tuple, n_valid: int, *, k: int, dim: int, cosine: bool = False):
    """Best ``k`` (scores, ids) of sparse queries (fixed-width rows) over a corpus of fixed-width rows
    ``(values, indices)`` over ``dim`` dimensions whose first ``n_valid`` rows count, by dot (or cosine) score."""
    values = corpus[0]
    q = rows_to_dense(jnp.asarray(q_values), jnp.asarray(q_indices), dim)
    chunk = sparse_chunk(q.shape[0], values.shape[1], dim)
    return _xla_chunked_top_k(q, corpus, n_valid, k=k, kind="sparse_cosine" if cosine else "sparse", chunk=chunk)


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
