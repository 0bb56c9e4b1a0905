"""GradCache: a batch's embeddings computed a mini-batch at a time, with the memory of a mini-batch under
differentiation and the gradients of the one big forward (the cached losses' path)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.pipeline import is_packed


def cached_embeddings(graphdef: nnx.GraphDef, params, batch: dict, mini_batch_size: int, dropout_rng=None,
                      output: str | None = "sentence_embedding"):
    """(rows, D) sentence embeddings (``output``: the module's output under that key; None: the output itself,
    a cross-encoder's (rows, labels) logits or a MultiVectorEncoder's dict of per-token outputs, each entry (rows,
    ...)) of a tokenized batch, computed ``mini_batch_size`` rows at a time, with
    GradCache's memory bound under differentiation: the forward keeps no activations (``lax.map`` over the
    mini-batches), and the backward gets the loss's gradient for every embedding, then re-runs each
    mini-batch under ``jax.vjp`` with its slice of it and adds up the parameter gradients. The result and
    its gradients are those of the one big forward; memory grows with the mini-batch, not the batch. Each
    mini-batch draws its dropout from ``fold_in(dropout_rng, index)``, in both passes.

    A batch from ``pack_chunks`` (``collate(..., pack=True, mini_batch_size=)``) is already cut into packed
    mini-batches: each one's texts lie end to end in a few rows; the result is in the columns' order, (columns,
    B, D)."""
    arrays = {k: v for k, v in batch.items() if np.ndim(v) >= 1 and k != "order"}
    scalars = {k: v for k, v in batch.items() if np.ndim(v) == 0}
    if is_packed(batch) and "order" in batch:
        out = _cached_map(graphdef, params, arrays, scalars, dropout_rng, output)
        return out.reshape(-1, out.shape[-1])[batch["order"]]
    rows = batch["input_ids"].shape[0]
    steps = -(-rows // mini_batch_size)
    pad = steps * mini_batch_size - rows

    def chunked(x):  # padding rows repeat the first row (real tokens: no fully masked attention row)
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape(steps, mini_batch_size, *x.shape[1:])

    out = _cached_map(graphdef, params, {k: chunked(v) for k, v in arrays.items()}, scalars, dropout_rng, output)
    return jax.tree.map(lambda x: x.reshape(steps * mini_batch_size, *x.shape[2:])[:rows], out)


def _cached_map(graphdef: nnx.GraphDef, params, chunks: dict, scalars: dict, dropout_rng, output):
    """The module over each mini-batch of ``chunks`` (arrays with a leading mini-batch axis) -> (steps, rows,
    ...), differentiable with GradCache's memory bound (see ``cached_embeddings``)."""
    index = jnp.arange(jax.tree.leaves(chunks)[0].shape[0])

    def apply(p, chunk, i):
        key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
        out = nnx.merge(graphdef, p)({**chunk, **scalars}, dropout_rng=key)
        return out if output is None else out[output]

    @jax.custom_vjp
    def embed(p, chunks):
        return jax.lax.map(lambda xs: apply(p, *xs), (chunks, index))

    def embed_fwd(p, chunks):
        return embed(p, chunks), (p, chunks)

    def embed_bwd(residual, cotangent):
        p, chunks = residual

        def step(total, xs):
            chunk, i, g = xs
            _, vjp = jax.vjp(lambda q: _differentiable(apply(q, chunk, i)), p)
            return jax.tree.map(jnp.add, total, vjp(g)[0]), None

        grads, _ = jax.lax.scan(step, jax.tree.map(jnp.zeros_like, p), (chunks, index, _differentiable(cotangent)))
        return grads, jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), chunks)

    embed.defvjp(embed_fwd, embed_bwd)
    return embed(params, chunks)


def _differentiable(tree) -> list:
    """The floating leaves of an output (or of its cotangent): a mask or other integer output has no gradient
    (its cotangent is float0) and stays out of the backward."""
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
