"""Distillation from a teacher's scores: MarginMSE, DistillKLDiv."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.checks import callable_arg
from jaxst.losses.base import Loss, embedding_columns
from jaxst.similarity import pairwise_dot_score


def _teacher_scores(labels, batch: int, n_candidates: int, name: str) -> jax.Array:
    if labels is None:
        raise ValueError(f"{name} needs labels: the teacher's scores")
    labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
    if labels.shape != (batch, n_candidates):
        raise ValueError(f"{name} expects teacher scores of shape (batch_size, N) = ({batch}, {n_candidates}) "
                         f"for N candidate columns, but got {tuple(labels.shape)}.")
    return labels


class MarginMSELoss(Loss):
    """MSE between the student's margins sim(query, positive) - sim(query, negative_i) and the gold margins
    (sentence-transformers' MarginMSELoss). ``embeddings``: [queries, positives, negatives...]; ``labels``:
    the margins, (B,) or (B, n_negatives), or the teacher's scores (B, n_negatives + 1) whose margins are
    taken. ``similarity_fct``: a pairwise score, dot product by default."""

    def __init__(self, model=None, similarity_fct: Callable = pairwise_dot_score):
        del model
        callable_arg("similarity_fct", similarity_fct)
        self.similarity_fct = similarity_fct

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 3, type(self).__name__)
        queries, positives, negatives = columns[0], columns[1], columns[2:]
        b, n = queries.shape[0], len(negatives)
        if labels is None:
            raise ValueError("MarginMSELoss needs labels: gold margins or the teacher's scores")
        labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
        if labels.shape == (b, n + 1):
            labels = labels[:, :1] - labels[:, 1:]
        if labels.shape == (b,):
            labels = labels[:, None]
        if labels.shape != (b, n):
            raise ValueError(f"Labels shape {tuple(labels.shape)} does not match expected shape {(b, n)}: margins "
                             "(length num_negatives) or positive and negative scores (length num_negatives + 1)")
        positive = self.similarity_fct(queries, positives)
        margins = jnp.stack([positive - self.similarity_fct(queries, neg) for neg in negatives], axis=1)
        return jnp.mean((margins - labels) ** 2)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)


class DistillKLDivLoss(Loss):
    """KL divergence from the teacher's softmax over the candidates (``labels`` (B, N): its scores for the
    positive and each negative) to the student's log-softmax over sim(query, candidate), batch mean, times
    the student temperature squared (sentence-transformers' DistillKLDivLoss; ``temperature`` for both
    sides unless ``student_temperature`` / ``teacher_temperature`` override it)."""

    def __init__(self, model=None, similarity_fct: Callable = pairwise_dot_score, temperature: float = 1.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None):
        del model
        self.similarity_fct = similarity_fct
        self.student_temperature = float(student_temperature if student_temperature is not None else temperature)
        self.teacher_temperature = float(teacher_temperature if teacher_temperature is not None else temperature)
        if not (self.student_temperature > 0 and self.teacher_temperature > 0):
            raise ValueError("temperatures must be positive")

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 3, type(self).__name__)
        queries = columns[0]
        teacher = _teacher_scores(labels, queries.shape[0], len(columns) - 1, type(self).__name__)
        student = jnp.stack([self.similarity_fct(queries, c) for c in columns[1:]], axis=1)
        log_p = jax.nn.log_softmax(student / self.student_temperature, axis=1)
        target = jax.nn.softmax(teacher / self.teacher_temperature, axis=1)
        # torch's KLDivLoss: target * (log target - input), 0 where the target is 0; "batchmean"
        kl = jnp.where(target > 0, target * (jnp.log(jnp.where(target > 0, target, 1.0)) - log_p), 0.0)
        return jnp.sum(kl) / queries.shape[0] * self.student_temperature ** 2

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)
