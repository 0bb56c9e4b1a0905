"""Distillation from a teacher: its scores (MarginMSE, DistillKLDiv) or its embeddings (EmbedDistill, MSE)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.checks import callable_arg
from jaxst.losses.base import Loss, cosine_distance, embedding_columns, mse
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


# ----------------------------------------------------------- distillation from a teacher's embeddings


def _teacher_embeddings(labels, n_columns: int, name: str) -> list[jax.Array]:
    """The teacher's embeddings, one (B, D) per column: ``labels`` (B, D) is every column's target, (B, C, D)
    one per column, as sentence-transformers' EmbedDistillLoss reads them."""
    if labels is None:
        raise ValueError(f"{name} requires pre-computed teacher embeddings as labels. Compute them once with the "
                         "teacher and add them to each example as its label.")
    labels = jax.lax.stop_gradient(jnp.asarray(labels))
    if labels.ndim == 2:
        return [labels] * n_columns
    if labels.ndim == 3:
        if labels.shape[1] != n_columns:
            raise ValueError(f"Number of label columns ({labels.shape[1]}) does not match number of input text "
                             f"columns ({n_columns}). Either pass 3D labels with shape (batch_size, {n_columns}, "
                             "teacher_dim), or pass 2D labels of shape (batch_size, teacher_dim) to broadcast a "
                             "single label across all columns.")
        return [labels[:, i] for i in range(n_columns)]
    raise ValueError(f"Expected labels to be 2D (batch_size, teacher_dim) or 3D (batch_size, num_columns, "
                     f"teacher_dim); got {labels.ndim}D.")


class EmbedDistillLoss(Loss):
    """The student's embeddings pulled onto the teacher's (given as labels: (B, D) for every column, or
    (B, C, D) one per column), by ``distance_metric``: "mse" (mean squared error), "l2" (mean euclidean
    distance) or "cosine" (mean 1 - cosine, the default); averaged over the columns, as sentence-transformers'
    EmbedDistillLoss. Its learned ``projection_dim`` (a linear map trained with the model) is not supported
    yet: the student and teacher dimensions must be equal."""

    def __init__(self, model=None, distance_metric: str = "cosine", projection_dim: int | None = None):
        del model
        if distance_metric not in ("mse", "l2", "cosine"):
            raise ValueError(f"distance_metric must be one of 'mse', 'l2', 'cosine', but got {distance_metric!r}.")
        if projection_dim is not None:
            raise ValueError("projection_dim (a projection trained with the model) is not supported in jaxst yet; "
                             "distil into a student with the teacher's dimension (or add a Dense module)")
        self.distance_metric, self.projection_dim = distance_metric, projection_dim

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        teachers = _teacher_embeddings(labels, len(columns), type(self).__name__)
        losses = []
        for student, teacher in zip(columns, teachers):
            if student.shape[-1] != teacher.shape[-1]:
                raise ValueError(f"{type(self).__name__}: the student's embeddings have {student.shape[-1]} "
                                 f"dimensions, the teacher's {teacher.shape[-1]}")
            teacher = teacher.astype(student.dtype)
            if self.distance_metric == "mse":
                losses.append(mse(student, teacher))
            elif self.distance_metric == "l2":
                losses.append(jnp.mean(jnp.linalg.norm(student - teacher, axis=-1)))
            else:
                losses.append(jnp.mean(cosine_distance(student, teacher)))
        return jnp.mean(jnp.stack(losses))

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # means over equal-sized shards


class MSELoss(EmbedDistillLoss):
    """Mean squared error between the student's and the teacher's embeddings (sentence-transformers'
    MSELoss, EmbedDistillLoss with "mse"): the multilingual distillation loss, with the teacher's embeddings
    of the source sentence as every column's label."""

    def __init__(self, model=None, projection_dim: int | None = None):
        super().__init__(model, distance_metric="mse", projection_dim=projection_dim)
