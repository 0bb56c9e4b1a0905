"""Matryoshka: a loss over the leading dimensions of the embeddings, several sizes at once."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxst.losses.base import Loss, embedding_columns, embedding_dim
from jaxst.pooling import normalize


def shrink(embeddings: jax.Array, dim: int) -> jax.Array:
    """The first ``dim`` dimensions, L2-normalized (half precision in float32, then cast back): a Matryoshka
    sub-embedding."""
    if dim > embeddings.shape[-1]:
        raise ValueError(f"Dimension {dim} in matryoshka_dims cannot be greater than the model's embedding "
                         f"dimension: {embeddings.shape[-1]}")
    x = embeddings[..., :dim]
    if x.dtype in (jnp.float16, jnp.bfloat16):  # normalized in float32, as sentence-transformers 6.3 does
        return normalize(x.astype(jnp.float32)).astype(x.dtype)
    return normalize(x)


class MatryoshkaLoss(Loss):
    """sum_i weight_i * loss(first dim_i dimensions of every column, L2-normalized, labels).

    ``matryoshka_dims`` are sorted largest first with their weights (default 1 each), as in the
    original. ``n_dims_per_step`` > 0 uses a random subset of that many dims per step, drawn from the
    ``rng`` key the train step passes (the original draws with Python's ``random``)."""

    def __init__(self, model=None, loss: Loss | None = None, matryoshka_dims: Sequence[int] = (),
                 matryoshka_weights: Sequence[float] | None = None, n_dims_per_step: int = -1):
        if not isinstance(loss, Loss):
            raise TypeError(f"MatryoshkaLoss wraps a jaxst loss, got {type(loss).__name__}")
        dims = [int(d) for d in matryoshka_dims]
        if not dims:
            raise ValueError("You must provide at least one dimension in matryoshka_dims.")
        if any(d <= 0 for d in dims):
            raise ValueError("All dimensions passed to a matryoshka loss must be > 0.")
        if matryoshka_weights is None:
            matryoshka_weights = [1] * len(dims)
        elif len(matryoshka_weights) != len(dims):
            raise ValueError("matryoshka_weights must be the same length as matryoshka_dims.")
        model_dim = embedding_dim(model)
        if model_dim is not None and any(d > model_dim for d in dims):
            raise ValueError(f"Dimensions in matryoshka_dims cannot exceed the model's embedding dimension "
                             f"of {model_dim}.")
        pairs = sorted(zip(dims, matryoshka_weights), key=lambda p: p[0], reverse=True)
        self.loss = loss
        self.matryoshka_dims = tuple(d for d, _ in pairs)
        self.matryoshka_weights = tuple(w for _, w in pairs)
        self.n_dims_per_step = int(n_dims_per_step)

    def _chosen(self, rng) -> list[jax.Array | float]:
        """One multiplier per dim: 1 for every dim, or 1 for a random n_dims_per_step of them and 0 else."""
        n = len(self.matryoshka_dims)
        if not 0 < self.n_dims_per_step < n:
            return [1.0] * n
        if rng is None:
            raise ValueError("MatryoshkaLoss with n_dims_per_step > 0 needs an rng key to choose the dims")
        picked = jax.random.choice(rng, n, (self.n_dims_per_step,), replace=False)
        mask = jnp.zeros(n).at[picked].set(1.0)
        return [mask[i] for i in range(n)]

    def _inner_rng(self, rng):
        return None if rng is None else jax.random.fold_in(rng, 1)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        total = 0.0
        for dim, weight, on in zip(self.matryoshka_dims, self.matryoshka_weights, self._chosen(rng)):
            total = total + on * weight * self.loss([shrink(c, dim) for c in columns], labels, self._inner_rng(rng))
        return total

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        total = 0.0
        for dim, weight, on in zip(self.matryoshka_dims, self.matryoshka_weights, self._chosen(rng)):
            shrunk = [shrink(c, dim) for c in columns]
            total = total + on * weight * self.loss.sharded(shrunk, labels, axis_name, self._inner_rng(rng))
        return total
