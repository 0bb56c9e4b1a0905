"""Regularizers of an embedding space: global orthogonal regularization (sentence-transformers'
GlobalOrthogonalRegularizationLoss), which spreads the embeddings of each column over the space."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.checks import callable_arg
from jaxst.losses.base import Loss, embedding_columns
from jaxst.similarity import cos_sim


class GlobalOrthogonalRegularizationLoss(Loss):
    """For each column, over its off-diagonal similarities s (``similarity_fct``, cosine by default): the
    squared mean, ``gor_mean`` = mean(s)^2, and the excess second moment, ``gor_second_moment`` =
    max(mean(s^2) - 1/D, 0); each weighted (``mean_weight``, ``second_moment_weight``; None or 0 drops a term)
    and aggregated over the columns by ``aggregation`` ("mean" or "sum"). ``components`` returns the terms by
    name, as sentence-transformers' loss returns its dict; the loss is their sum, as its trainer takes it.
    Labels are not read."""

    def __init__(self, model=None, similarity_fct: Callable = cos_sim, mean_weight: float | None = 1.0,
                 second_moment_weight: float | None = 1.0, aggregation: str = "mean"):
        del model
        callable_arg("similarity_fct", similarity_fct)
        if not mean_weight and not second_moment_weight:
            raise ValueError("At least one of mean_weight or second_moment_weight must be non-zero")
        if aggregation not in ("mean", "sum"):
            raise ValueError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}")
        self.similarity_fct = similarity_fct
        self.mean_weight, self.second_moment_weight = mean_weight, second_moment_weight
        self.aggregation = aggregation

    def _terms(self, embeddings: jax.Array) -> tuple[jax.Array, jax.Array]:
        b, dim = embeddings.shape
        scores = self.similarity_fct(embeddings, embeddings)
        scores = jnp.where(jnp.eye(b, dtype=bool), 0.0, scores)
        off_diagonal = max(b * (b - 1), 1)  # a batch of one: 0 for both terms, not nan
        mean_term = (jnp.sum(scores) / off_diagonal) ** 2
        second_moment = jnp.sum(scores ** 2) / off_diagonal
        return mean_term, jax.nn.relu(second_moment - 1.0 / dim)

    def components(self, embeddings, labels=None, rng=None) -> dict[str, jax.Array]:
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        means, second_moments = zip(*(self._terms(c) for c in columns))
        combine = jnp.sum if self.aggregation == "sum" else jnp.mean
        out = {}
        if self.mean_weight:
            out["gor_mean"] = self.mean_weight * combine(jnp.stack(means))
        if self.second_moment_weight:
            out["gor_second_moment"] = self.second_moment_weight * combine(jnp.stack(second_moments))
        return out

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        return sum(self.components(embeddings, labels, rng).values())
