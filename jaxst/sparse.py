"""Sparse (lexical) embeddings on device: SPLADE pooling, a fixed-width sparse layout, scores.

A batch of sparse embeddings over a vocabulary of V dimensions is held as fixed-width rows: ``values``
(n, W) float32 and ``indices`` (n, W) int32, at most W active dimensions per row; unused slots hold
index V (out of range) and value 0. That is exactly a ``jax.experimental.sparse.BCOO`` with one batch
dimension (``data`` (n, W), ``indices`` (n, W, 1)), whose operations treat out-of-range indices as
padding, so the same arrays are a BCOO to users and plain arrays to jitted code (``as_rows``/``to_bcoo``).

SPLADE pooling (``splade_pool``) runs the masked-LM decoder inside one ``lax.scan``, a block of
vocabulary entries for all tokens at a time (or, when the model's SpladePooling sets a ``chunk_size``, a
chunk of tokens over the whole vocabulary, as sentence-transformers does): the (B, T, V) logits are never
materialized, only (B, T, block) or (B, chunk, V) at a time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

from jaxst.pooling import normalize

SPLADE_STRATEGIES = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
# Vocabulary entries per scan step of ``splade_pool`` (when the model's SpladePooling sets no chunk_size):
# 1,024 decoder rows (3 MiB of a BERT table) and their (B, T, 1,024) logits stay in cache while the
# batch's tokens stream through them. On 2 AMD EPYC cores this pooled a 32 x 16 batch in 128 ms against
# 174 ms for 16-token chunks over the whole vocabulary (a 62 MB slab per step). The block shrinks (to 128
# at least) so that a block's logits stay within SPLADE_BLOCK_BYTES for very large batches.
SPLADE_VOCAB_BLOCK = 1024
SPLADE_BLOCK_BYTES = 1 << 26
# A sparse chunk is scored by gathering the queries' weights at its indices when its rows are narrow,
# by scattering it into dense rows and one matmul when they are wide (``gathers``): a gathered product
# costs about this many matmul products.
GATHER_COST = 8
# Slots of a fixed-width row gathered per step of ``gather_scores``.
SLOT_GROUP = 16


def splade_block(rows: int, vocab: int) -> int:
    """Vocabulary entries per scan step for ``rows`` token rows: SPLADE_VOCAB_BLOCK, fewer (a multiple of
    128, at least 128) when that block's float32 logits would pass SPLADE_BLOCK_BYTES."""
    fit = SPLADE_BLOCK_BYTES // max(1, rows * 4)
    return max(1, min(vocab, SPLADE_VOCAB_BLOCK, max(128, fit // 128 * 128)))


def splade_activate(logits, activation: str):
    """log(1 + relu(x)), applied twice for ``log1p_relu`` (OpenSearch's models), as SpladePooling does."""
    x = jnp.log1p(jax.nn.relu(logits))
    return jnp.log1p(x) if activation == "log1p_relu" else x


def check_splade_pooling(strategy: str, activation: str) -> None:
    if strategy not in SPLADE_STRATEGIES:
        raise ValueError(f"pooling_strategy must be one of {SPLADE_STRATEGIES}, got {strategy!r}")
    if activation not in SPLADE_ACTIVATIONS:
        raise ValueError(f"activation_function must be one of {SPLADE_ACTIVATIONS}, got {activation!r}")


def splade_pool(states, mask, table, bias, strategy: str = "max", activation: str = "relu", chunk: int | None = None):
    """SPLADE's sparse embedding (B, V) from the masked-LM head's transformed token states ``states``
    (B, T, H), the decoder weight ``table`` (V, H) and ``bias`` (V,): per vocabulary entry, the max (or
    sum) over real tokens of ``activate(logit * mask)``.

    ``chunk`` (SpladePooling's ``chunk_size``): the decoder runs ``chunk`` tokens at a time over the whole
    vocabulary. None: it runs a block of vocabulary entries at a time over all tokens (``splade_block``),
    which is faster on CPU. For max pooling the (monotone) activation is applied to the max, which is the
    max of the activations: one log1p per vocabulary entry instead of one per token."""
    check_splade_pooling(strategy, activation)
    mask = mask.astype(jnp.float32)
    table = table.astype(states.dtype)
    if chunk is not None and chunk > 0:
        pooled = _pool_token_chunks(states, mask, table, bias, strategy, activation, min(chunk, states.shape[1]))
    else:
        pooled = _pool_vocab_blocks(states, mask, table, bias, strategy, activation)
    return splade_activate(pooled, activation) if strategy == "max" else pooled


def _pool_block(logits, mask, strategy: str, activation: str):
    """(B, tokens, entries) logits -> (B, entries): the max of the masked logits (activated by the caller)
    or the sum of their activations; padding tokens give 0, which adds nothing to either."""
    logits = logits.astype(jnp.float32) * mask[:, :, None]
    return logits.max(axis=1) if strategy == "max" else splade_activate(logits, activation).sum(axis=1)


def _pool_token_chunks(states, mask, table, bias, strategy: str, activation: str, chunk: int):
    b, t, h = states.shape
    steps = -(-t // chunk)
    pad = steps * chunk - t
    if pad:  # padded token slots carry a zero mask
        states = jnp.pad(states, ((0, 0), (0, pad), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
    states = states.reshape(b, steps, chunk, h).transpose(1, 0, 2, 3)  # (steps, B, chunk, H)
    mask = mask.reshape(b, steps, chunk).transpose(1, 0, 2)

    def step(acc, xs):
        x, m = xs
        pooled = _pool_block(x @ table.T + bias, m, strategy, activation)
        return (jnp.maximum(acc, pooled) if strategy == "max" else acc + pooled), None

    pooled, _ = jax.lax.scan(step, jnp.zeros((b, table.shape[0]), jnp.float32), (states, mask))
    return pooled


def _pool_vocab_blocks(states, mask, table, bias, strategy: str, activation: str):
    b, t, h = states.shape
    v = table.shape[0]
    block = splade_block(b * t, v)
    steps = -(-v // block)
    x = states.reshape(b * t, h)

    def step(_, start):
        # the last block starts at v - block (dynamic_slice clamps it) and repeats a few entries of the one
        # before it; the assembly below keeps each entry once
        rows = jax.lax.dynamic_slice_in_dim(table, start, block)
        logits = (x @ rows.T + jax.lax.dynamic_slice_in_dim(bias, start, block)).reshape(b, t, block)
        return None, _pool_block(logits, mask, strategy, activation)

    _, pooled = jax.lax.scan(step, None, jnp.arange(steps, dtype=jnp.int32) * block)  # (steps, B, block)
    full = pooled[: steps - 1].transpose(1, 0, 2).reshape(b, (steps - 1) * block)
    tail = pooled[steps - 1][:, (steps * block - v) :]  # the last block's entries not in the blocks before
    return jnp.concatenate([full, tail], axis=1)


def sae_top_k(latents, k: int):
    """SparseAutoEncoder's sparse code: the ``k`` largest pre-activation latents kept (others zero), then
    relu, as sentence-transformers' ``SparseAutoEncoder.top_k``."""
    values, idx = jax.lax.top_k(latents, min(k, latents.shape[-1]))
    rows = jnp.arange(latents.shape[0])[:, None]
    return jax.nn.relu(jnp.zeros_like(latents).at[rows, idx].set(values))


def sae_normalize(x, eps: float = 1e-5):
    """SparseAutoEncoder's input LayerNorm (``normalize=True``): (x - mean) / (unbiased std + eps), with the
    mean and std to undo it."""
    mu = x.mean(axis=-1, keepdims=True)
    x = x - mu
    std = jnp.std(x, axis=-1, keepdims=True, ddof=1)
    return x / (std + eps), mu, std


def static_embedding(input_ids, attention_mask, weight):
    """SparseStaticEmbedding: ``weight[token]`` for every token present in the text (once, however often it
    occurs), 0 elsewhere: (B, V)."""
    b = input_ids.shape[0]
    presence = jnp.zeros((b, weight.shape[0]), jnp.float32)
    presence = presence.at[jnp.arange(b)[:, None], input_ids].max(attention_mask.astype(jnp.float32))
    return presence * weight[None, :]


@functools.partial(jax.jit, static_argnames=("width",))
def dense_to_rows(dense, *, width: int):
    """(B, V) dense -> fixed-width rows ``(values, indices)`` (B, width): the ``width`` largest magnitudes
    of each row, largest first; zero entries become padding (index V)."""
    v = dense.shape[1]
    _, idx = jax.lax.top_k(jnp.abs(dense), min(width, v))
    values = jnp.take_along_axis(dense, idx, axis=1)
    idx = jnp.where(values != 0, idx, v).astype(jnp.int32)
    if width > v:
        values = jnp.pad(values, ((0, 0), (0, width - v)))
        idx = jnp.pad(idx, ((0, 0), (0, width - v)), constant_values=v)
    return values, idx


@jax.jit
def active_counts(dense):
    """Non-zero entries per row of (B, V)."""
    return jnp.count_nonzero(dense, axis=1)


def row_width(active: int) -> int:
    """The fixed row width that holds ``active`` entries: the next multiple of 16 (fewer compiled shapes)."""
    return max(16, -(-int(active) // 16) * 16)


def to_bcoo(values, indices, dim: int) -> jsparse.BCOO:
    """Fixed-width rows -> a BCOO (n, dim) with one batch dimension (padding slots stay padding)."""
    return jsparse.BCOO((jnp.asarray(values), jnp.asarray(indices)[..., None]), shape=(values.shape[0], dim))


def is_sparse(x) -> bool:
    return isinstance(x, jsparse.BCOO) or _is_scipy_sparse(x)


def _is_scipy_sparse(x) -> bool:
    return type(x).__module__.startswith("scipy.sparse")


def as_rows(x) -> tuple[jax.Array, jax.Array, int]:
    """``(values (n, W), indices (n, W), dim)`` from a BCOO (batched rows, or an unbatched 1-D/2-D COO), a
    scipy sparse matrix, or a dense array (1-D: one row)."""
    if isinstance(x, jsparse.BCOO):
        if x.ndim == 1:
            x = jsparse.BCOO((x.data[None], x.indices[None]), shape=(1, x.shape[0]))
        if x.ndim != 2:
            raise ValueError(f"sparse embeddings must be 1-D or 2-D, got shape {x.shape}")
        if x.n_batch == 1 and x.n_sparse == 1 and x.n_dense == 0:
            return x.data, x.indices[..., 0], x.shape[1]
        x = x.todense()
    elif _is_scipy_sparse(x):
        csr = x.tocsr()
        csr.sum_duplicates()
        n, dim = csr.shape
        counts = np.diff(csr.indptr)
        width = row_width(max(counts.max(initial=0), 1))
        values = np.zeros((n, width), np.float32)
        indices = np.full((n, width), dim, np.int32)
        rows = np.repeat(np.arange(n), counts)
        slots = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], counts)  # each entry's place in its row
        values[rows, slots] = csr.data
        indices[rows, slots] = csr.indices
        return jnp.asarray(values), jnp.asarray(indices), dim
    dense = jnp.asarray(x, jnp.float32)
    if dense.ndim == 1:
        dense = dense[None]
    if dense.ndim != 2:
        raise ValueError(f"sparse embeddings must be 1-D or 2-D, got shape {dense.shape}")
    width = row_width(max(int(active_counts(dense).max(initial=0)), 1)) if dense.shape[0] else 16
    values, indices = dense_to_rows(dense, width=width)
    return values, indices, dense.shape[1]


def stored_rows(x) -> tuple[jax.Array, jax.Array, int]:
    """``as_rows`` with every padding slot's value zero: what a search reads. A value a BCOO keeps at an
    index outside the vocabulary is not part of the embedding (``todense`` drops it), so it neither scores
    nor counts in the non-finite check (``jaxst.search``'s rule)."""
    values, indices, dim = as_rows(x)
    return jnp.where(indices < dim, values, 0), indices, dim


def rows_to_dense(values, indices, dim: int):
    """Fixed-width rows -> dense (n, dim); padding slots (index dim) are dropped."""
    n = values.shape[0]
    return jnp.zeros((n, dim), values.dtype).at[jnp.arange(n)[:, None], indices].add(values, mode="drop")


def to_dense(x):
    """Dense (n, dim) jax.Array of any sparse form ``as_rows`` reads."""
    values, indices, dim = as_rows(x)
    return rows_to_dense(values, indices, dim)


def to_scipy(x):
    """A ``scipy.sparse.csr_matrix`` of a BCOO, fixed-width rows or dense array."""
    import scipy.sparse

    values, indices, dim = (np.asarray(a) if i < 2 else a for i, a in enumerate(as_rows(x)))
    keep = indices < dim
    rows = np.broadcast_to(np.arange(values.shape[0])[:, None], values.shape)
    return scipy.sparse.csr_matrix((values[keep], (rows[keep], indices[keep])), shape=(values.shape[0], dim))


def from_scipy(matrix) -> jsparse.BCOO:
    """A scipy sparse matrix as a row-batched BCOO (the layout ``SparseEncoder.encode`` returns)."""
    values, indices, dim = as_rows(matrix)
    return to_bcoo(values, indices, dim)


normalize_rows = normalize  # fixed-width rows' values scaled to unit L2 norm: jaxst.pooling's one normalization


def query_table(queries):
    """(Q, V) dense queries -> the (V + 1, Q) table ``gather_scores`` reads: one row of weights per vocabulary
    entry, and a zero row at index V that padding slots read. Built once per search, not per corpus block."""
    return jnp.concatenate([queries.T, jnp.zeros((1, queries.shape[0]), queries.dtype)])


def gathers(width: int, dim: int) -> bool:
    """Whether rows ``width`` slots wide are scored by gathering (narrow rows) or as dense rows (wide ones):
    a gathered product costs about ``GATHER_COST`` matmul products."""
    return width * GATHER_COST < dim


def gather_scores(table, values, indices):
    """Scores (Q, n) of the queries in ``table`` (``query_table``) against fixed-width rows (n, W), by
    gathering each query's weight at every row's indices. The slots are read ``SLOT_GROUP`` at a time, up to
    the last slot any of these rows uses: the gathered (n, SLOT_GROUP, Q) block stays in cache, and a block
    of short rows (``width_order``) skips its padding."""
    dim, q = table.shape[0] - 1, table.shape[1]
    n, w = values.shape
    pad = -w % SLOT_GROUP
    if pad:
        values = jnp.pad(values, ((0, 0), (0, pad)))
        indices = jnp.pad(indices, ((0, 0), (0, pad)), constant_values=dim)
    groups = (used_width(indices, dim).max(initial=0) + SLOT_GROUP - 1) // SLOT_GROUP

    def group(g, acc):
        v = jax.lax.dynamic_slice_in_dim(values, g * SLOT_GROUP, SLOT_GROUP, axis=1)
        ix = jax.lax.dynamic_slice_in_dim(indices, g * SLOT_GROUP, SLOT_GROUP, axis=1)
        return acc + jnp.einsum("nwq,nw->qn", table[jnp.minimum(ix, dim)], v, preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, groups, group, jnp.zeros((q, n), jnp.float32))


def used_width(indices, dim: int):
    """Per row of fixed-width rows: one past its last active slot (0 for an empty row)."""
    slots = jnp.arange(1, indices.shape[1] + 1, dtype=jnp.int32)
    return jnp.max(jnp.where(indices < dim, slots[None, :], 0), axis=1, initial=0)


@functools.partial(jax.jit, static_argnames=("dim",))
def width_order(indices, *, dim: int):
    """Fixed-width rows' order by ``used_width``, widest first (stable): a scan that reads its blocks in this
    order (``scan_top_k(order=)``) meets rows of about one width per block, and ``gather_scores`` skips
    their padding. About a quarter off a search of real SPLADE rows (widths 16 to 222, mean 72)."""
    return jnp.argsort(-used_width(indices, dim), stable=True).astype(jnp.int32)


def chunk_scores(queries, values, indices, table=None):
    """(Q, V) dense queries against fixed-width rows (n, W): gathered for narrow rows (from ``table``, the
    queries' ``query_table`` when the caller has built it), a scatter into dense rows and one matmul for
    wide ones."""
    if gathers(indices.shape[1], queries.shape[1]):
        return gather_scores(query_table(queries) if table is None else table, values, indices)
    return queries @ rows_to_dense(values, indices, queries.shape[1]).T


@functools.partial(jax.jit, static_argnames=("dim", "cosine"))
def sparse_similarity(a_values, a_indices, b_values, b_indices, *, dim: int, cosine: bool = False):
    """(n, m) dot (or cosine) scores between two sets of fixed-width rows over ``dim`` dimensions."""
    if cosine:
        a_values, b_values = normalize(a_values), normalize(b_values)
    return chunk_scores(rows_to_dense(a_values, a_indices, dim), b_values, b_indices)


__all__ = [
    "as_rows",
    "dense_to_rows",
    "from_scipy",
    "is_sparse",
    "splade_pool",
    "static_embedding",
    "to_bcoo",
    "to_dense",
    "to_scipy",
]
