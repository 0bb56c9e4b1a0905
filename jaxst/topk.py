"""The top-k engine: exact top-k over a corpus as one compiled scan, corpus chunks scored and reduced on device.

The corpus is scanned in fixed-size chunks with ``jax.lax.scan``; each chunk's winners are merged
into a running top-k on device, so there is no Python loop over corpus chunks and the score matrix
never exists whole. The scorers share the scan:

    "dot"      float32/bfloat16 corpus, float query             -> q . c
    "cosine"   as "dot", the query normalized once, the scores scaled by the corpus rows' norms
    "int8"     int8 corpus, int8 (scaled) query, int32 accumulate -> approximate q . dequant(c)
    "hamming"  bits packed in uint16 words, popcount(q ^ c)        -> -Hamming distance
    "sparse"   fixed-width sparse rows (values, indices) against dense queries ("sparse_cosine": unit rows)
    any jittable ``(queries, chunk) -> scores``

A corpus too large for the device stays in host memory and is streamed through the same scan a
piece at a time (``streamed_top_k``); on the CPU backend an aligned host array is used in place.
A corpus split by rows over a mesh is scanned shard by shard (``sharded_top_k``). An int8 scan of
CPU arrays runs as one native AVX-512 VNNI pass where the CPU has it (``jaxst.native``), with the
same hits.

``jaxst.search`` (``semantic_search``, paraphrase mining), ``jaxst.maxsim`` (late interaction) and
``jaxst.index`` (``EmbeddingIndex``, ``SparseEmbeddingIndex``) all search through it. A valid row's
non-finite score comes back as +inf (``flag_nonfinite``) so that the caller can refuse it (the rule is
in ``jaxst.search``'s module doc).
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxst import native
from jaxst.pooling import normalize
from jaxst.sparse import chunk_scores, gathers, query_table, rows_to_dense

BLOCK = 64  # rows per block in the two-stage top-k
HAMMING_BLOCK = 16  # integer distances tie a lot: small blocks keep the candidate sort short
INTEGER_SCORES = ("int8", "hamming")  # scorers whose scores are always finite


def flag_nonfinite(scores):
    """Non-finite scores as +inf: inside a scan they win the top-k, so they come back with the hits and
    ``refuse_nonfinite_scores`` sees them."""
    return jnp.where(jnp.isfinite(scores), scores, jnp.inf)


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


def on_cpu(*arrays) -> bool:
    """Whether the first of ``arrays`` that has devices lives on CPU devices only (no such array: whether
    the default backend is the CPU)."""
    for x in arrays:
        devices = getattr(x, "devices", None)
        if callable(devices):
            return all(d.platform == "cpu" for d in devices())
    return jax.default_backend() == "cpu"


def per_platform(fn, static_argnames):
    """``fn`` jitted twice, with the scan's CPU compiler options and without; calls pick by where the
    arguments live."""
    for_cpu = jax.jit(fn, static_argnames=static_argnames, compiler_options=SCAN_COMPILER_OPTIONS)
    elsewhere = jax.jit(fn, static_argnames=static_argnames)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (for_cpu if on_cpu(*args[:2]) else elsewhere)(*args, **kwargs)

    call.clear_cache = lambda: (for_cpu.clear_cache(), elsewhere.clear_cache())
    return call


HOST_ALIGN = 64  # the CPU client aliases (does not copy) host arrays aligned to this many bytes


def _chunk_scores(queries, chunk, kind, table=None):
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
        return chunk_scores(queries, normalize(values) if kind == "sparse_cosine" else values, indices, table)
    if kind == "hamming":  # chunk is (words, rows) uint16: each word is one contiguous row
        acc = jnp.int16 if queries.shape[1] * 16 < 2**15 else jnp.int32  # 16-bit sums: twice the lanes
        dist = jnp.zeros((queries.shape[0], chunk.shape[1]), acc)
        for w in range(queries.shape[1]):  # unrolled over the words: one fused pass over the chunk
            dist = dist + jax.lax.population_count(queries[:, w][:, None] ^ chunk[w][None, :]).astype(acc)
        return -dist.astype(jnp.float32)
    return jnp.asarray(kind(queries, chunk), jnp.float32)  # any jittable score function


def scan_top_k(queries, corpus, n_valid, first=0, offset=0, origin=0, order=None, *, k: int, kind, chunk: int,
               width: int | None = None):
    """Best ``k`` (scores, ids) per query over rows ``first <= row < n_valid`` of ``corpus``.

    ``corpus`` (N, W) is read in ``ceil(N / chunk)`` chunks by one ``lax.scan``; the last chunk is
    aligned to the end of the array (nothing is padded or copied) and rows already seen score -inf.
    Each step keeps only its chunk's top k; one ``top_k`` over those winners ends the search. A valid
    row's non-finite score comes back as +inf (``flag_nonfinite``); rows outside the bounds score -inf.
    Returned ids are ``offset + row``. For ``kind="hamming"`` the corpus is words-major, (W, N).
    With ``width``, ``corpus`` is flat: rows of ``width`` values from element ``origin`` (< ``width``) on, as
    ``host_view`` lays out a host array that is not aligned for the device to read in place.
    With ``order`` (N,), a permutation of the rows, the scan reads its blocks in that order (a sparse corpus
    by ``width_order``); ids stay the rows' own.
    ``n_valid``, ``first``, ``offset`` and ``origin`` are traced: a growing corpus does not recompile."""
    axis = 1 if kind == "hamming" else 0
    n = jax.tree.leaves(corpus)[0].shape[axis]  # a sparse corpus is a (values, indices) pair of (N, W) arrays
    if width is not None:
        n = n // width  # origin < width: the whole rows after it
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    kk = min(k, chunk)
    if kind in ("cosine", "sparse_cosine"):
        queries = normalize(queries)
    table = None  # a sparse scan that gathers reads the queries' table, built once here, not per step
    if kind in ("sparse", "sparse_cosine") and gathers(corpus[0].shape[1], queries.shape[1]):
        table = query_table(queries)

    def step(i):
        start = jnp.minimum(i * chunk, n - chunk)
        rows = start + jnp.arange(chunk)
        ids = rows
        if order is not None:
            ids = jax.lax.dynamic_slice_in_dim(order, start, chunk)
            block = jax.tree.map(lambda a: a[ids], corpus)
        elif width is None:
            block = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk, axis=axis), corpus)
        else:
            block = jax.lax.dynamic_slice_in_dim(corpus, origin + start * width, chunk * width).reshape(chunk, width)
        scores = _chunk_scores(queries, block, kind, table)
        if kind not in INTEGER_SCORES:
            scores = flag_nonfinite(scores)
        scores = jnp.where((rows >= jnp.maximum(i * chunk, first)) & (rows < n_valid), scores, -jnp.inf)
        values, pos = top_k(scores, kk, HAMMING_BLOCK if kind == "hamming" else BLOCK)
        return values, ids[pos]

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
xla_chunked_top_k = per_platform(scan_top_k, ("k", "kind", "chunk", "width"))


def chunked_top_k(queries, corpus, n_valid, first=0, offset=0, origin=0, *, k: int, kind, chunk: int,
                  width: int | None = None):
    """``scan_top_k``, compiled. An int8 scan of CPU arrays runs as one native AVX-512 VNNI pass
    where the CPU has it (``jaxst.native``: the same hits, about twice as fast as XLA's int8 dot)."""
    if (kind == "int8" and width is None and native.usable(queries, corpus, n_valid, first, k)
            and on_cpu(queries, corpus)):
        target = native.int8_kernel()
        if target is not None:
            return native.int8_top_k(queries, corpus, n_valid, first, offset, k=k, target=target)
    return xla_chunked_top_k(queries, corpus, n_valid, first, offset, origin, k=k, kind=kind, chunk=chunk,
                             width=width)


chunked_top_k.clear_cache = xla_chunked_top_k.clear_cache


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


def host_view(array: np.ndarray) -> tuple[np.ndarray, int] | None:
    """For a C-contiguous 2-D host array the CPU backend cannot read in place (its data does not start on a
    ``HOST_ALIGN`` boundary, as after ``np.load`` without mmap, a slice, most allocations): ``(flat, origin)``,
    a 1-D view of the same memory that starts at the boundary just before the data, and the element where
    row 0 starts in it. The device reads ``flat`` in place (``scan_top_k(..., width=, origin=)``); the up to
    63 bytes before the data lie in the same (mapped) page and are never scored. None where that does not
    apply (aligned already, strided, misaligned to the element, or rows narrower than the gap). The view does
    not keep ``array`` alive: the caller holds it until the search is done."""
    if array.ndim != 2 or not array.flags.c_contiguous or array.size == 0:
        return None
    gap = array.ctypes.data % HOST_ALIGN
    if gap == 0 or gap % array.itemsize or gap // array.itemsize >= array.shape[1]:
        return None
    memory = (ctypes.c_char * (gap + array.nbytes)).from_address(array.ctypes.data - gap)
    return np.frombuffer(memory, array.dtype), gap // array.itemsize


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
        values, ids = scan_top_k(q, shard, mine, 0, offset, k=min(k, rows), kind=kind, chunk=chunk)
        values = jax.lax.all_gather(values, axis, axis=1, tiled=True)  # (Q, devices * k)
        ids = jax.lax.all_gather(ids, axis, axis=1, tiled=True)
        values, pos = jax.lax.top_k(values, k)
        return values, jnp.take_along_axis(ids, pos, axis=1)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows_spec, P()), out_specs=(P(), P()),
                         check_vma=False)(queries, corpus, n_valid)


sharded_top_k = per_platform(_sharded_top_k, ("k", "kind", "chunk", "mesh", "axis", "words_major"))


SPARSE_CHUNK_BYTES = 1 << 26  # per scan step of a sparse search: its (rows, W, Q) products or dense (rows, V) block


def sparse_chunk(queries: int, width: int, dim: int) -> int:
    """Corpus rows per scan step of a sparse search, a power of two between 256 and 65,536."""
    per_row = 4 * max(width * queries, dim)
    rows = max(256, min(65536, SPARSE_CHUNK_BYTES // per_row))
    return 1 << (rows.bit_length() - 1)


def sparse_top_k(q_values, q_indices, corpus: tuple, n_valid: int, *, k: int, dim: int, cosine: bool = False,
                 order=None):
    """Best ``k`` (scores, ids) of sparse queries (fixed-width rows) over a corpus of fixed-width rows
    ``(values, indices)`` over ``dim`` dimensions whose first ``n_valid`` rows count, by dot (or cosine) score;
    ``order``: the corpus' ``width_order``, the order its blocks are read in (all rows valid)."""
    values = corpus[0]
    q = rows_to_dense(jnp.asarray(q_values), jnp.asarray(q_indices), dim)
    chunk = sparse_chunk(q.shape[0], values.shape[1], dim)
    return xla_chunked_top_k(q, corpus, n_valid, order=order, k=k, kind="sparse_cosine" if cosine else "sparse",
                             chunk=chunk)
