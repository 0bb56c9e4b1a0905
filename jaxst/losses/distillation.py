"""Distillation from a teacher: its scores (MarginMSE, DistillKLDiv) or its embeddings (EmbedDistill, MSE)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import callable_arg, positive_int
from jaxst.losses.base import Loss, cosine_distance, embedding_columns, embedding_dim, linear_params, mse
from jaxst.similarity import pairwise_dot_score


def teacher_scores(labels, batch: int, n_candidates: int, name: str) -> jax.Array:
    """The teacher's scores ``labels`` as (B, N) float32 for N candidate columns (stopped gradient), else a
    ValueError naming the loss ``name`` (DistillKLDivLoss and its multi-vector and sparse variants)."""
    if labels is None:
        raise ValueError(f"{name} needs labels: the teacher's scores")
    labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
    if labels.shape != (batch, n_candidates):
        raise ValueError(f"{name} expects teacher scores of shape (batch_size, N) = ({batch}, {n_candidates}) "
                         f"for N candidate columns, but got {tuple(labels.shape)}.")
    return labels


def teacher_margins(labels, batch: int, n_negatives: int, name: str) -> jax.Array:
    """MarginMSE's gold margins (B, n_negatives) from ``labels``: the margins themselves, (B,) (one negative) or
    (B, n_negatives), or the teacher's scores (B, n_negatives + 1) whose margins positive - negative_i are taken;
    else a ValueError naming the loss ``name``."""
    if labels is None:
        raise ValueError(f"{name} needs labels: gold margins or the teacher's scores")
    labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
    if labels.shape == (batch, n_negatives + 1):
        labels = labels[:, :1] - labels[:, 1:]
    if labels.shape == (batch,):
        labels = labels[:, None]
    if labels.shape != (batch, n_negatives):
        raise ValueError(f"{name}: labels shape {tuple(labels.shape)} does not match expected shape "
                         f"{(batch, n_negatives)}: margins (length num_negatives) or positive and negative scores "
                         "(length num_negatives + 1)")
    return labels


def distill_temperatures(temperature: float, student_temperature: float | None,
                         teacher_temperature: float | None) -> tuple[float, float]:
    """(student, teacher) temperatures: ``temperature`` for a side without its own override; each of the three
    must be a positive finite number (sentence-transformers 6.3 checks all three, an overridden one too)."""
    student = student_temperature if student_temperature is not None else temperature
    teacher = teacher_temperature if teacher_temperature is not None else temperature
    for label, value in (("temperature", temperature), ("student_temperature", student),
                         ("teacher_temperature", teacher)):
        if not 0 < value < math.inf:
            raise ValueError(f"{label} must be a positive finite number, got {value}.")
    return float(student), float(teacher)


def distill_kl_div(student, teacher, student_temperature: float, teacher_temperature: float) -> jax.Array:
    """KL divergence from the teacher's softmax over the candidates to the student's log-softmax, both (B, N)
    scores over their temperatures: torch's ``KLDivLoss(reduction="batchmean")``, times the student
    temperature squared. A candidate whose teacher probability is 0 (a -inf score) adds 0."""
    log_p = jax.nn.log_softmax(student / student_temperature, axis=1)
    target = jax.nn.softmax(teacher / teacher_temperature, axis=1)
    kl = jnp.where(target > 0, target * (jnp.log(jnp.where(target > 0, target, 1.0)) - log_p), 0.0)
    return jnp.sum(kl) / student.shape[0] * student_temperature ** 2


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
        labels = teacher_margins(labels, queries.shape[0], len(negatives), type(self).__name__)
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
        self.student_temperature, self.teacher_temperature = distill_temperatures(
            temperature, student_temperature, teacher_temperature)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 3, type(self).__name__)
        queries = columns[0]
        teacher = teacher_scores(labels, queries.shape[0], len(columns) - 1, type(self).__name__)
        student = jnp.stack([self.similarity_fct(queries, c) for c in columns[1:]], axis=1)
        return distill_kl_div(student, teacher, self.student_temperature, self.teacher_temperature)

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
    EmbedDistillLoss. ``projection_dim``: a linear map from the student's dimension (the model's) to the
    teacher's, learned with the model: the loss's own ``params`` (``{"projection": {"kernel", "bias"}}``, drawn
    as PyTorch's ``nn.Linear`` from ``seed``; ``jaxst.training`` trains them, ``save_projection`` /
    ``load_projection`` keep them in PyTorch's safetensors layout)."""

    def __init__(self, model=None, distance_metric: str = "cosine", projection_dim: int | None = None,
                 seed: int = 0):
        if distance_metric not in ("mse", "l2", "cosine"):
            raise ValueError(f"distance_metric must be one of 'mse', 'l2', 'cosine', but got {distance_metric!r}.")
        self.distance_metric, self.projection_dim = distance_metric, projection_dim
        self.student_dim = embedding_dim(model)
        if projection_dim is not None:
            positive_int("projection_dim", projection_dim)
            if self.student_dim is None:
                raise ValueError(f"{type(self).__name__} with projection_dim needs the model (its embedding "
                                 "dimension is the projection's input)")
            self.params = {"projection": linear_params(self.student_dim, projection_dim, np.random.default_rng(seed))}

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        teachers = _teacher_embeddings(labels, len(columns), type(self).__name__)
        losses = []
        for student, teacher in zip(columns, teachers):
            if self.params is not None:
                student = student @ self.params["projection"]["kernel"] + self.params["projection"]["bias"]
            if student.shape[-1] != teacher.shape[-1]:
                raise ValueError(f"{type(self).__name__}: the student's embeddings have {student.shape[-1]} "
                                 f"dimensions, the teacher's {teacher.shape[-1]}"
                                 + ("" if self.params is not None else " (projection_dim maps one onto the other)"))
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

    def save_projection(self, path) -> None:
        """The projection as PyTorch's ``nn.Linear`` saves it (safetensors ``weight`` (out, in), ``bias``)."""
        from safetensors.numpy import save_file

        if self.params is None:
            raise ValueError("No projection layer to save. Construct EmbedDistillLoss with projection_dim=<int> if "
                             "you want a learnable projection.")
        projection = self.params["projection"]
        save_file({"weight": np.ascontiguousarray(np.asarray(projection["kernel"], np.float32).T),
                   "bias": np.asarray(projection["bias"], np.float32)}, str(path))

    def load_projection(self, path) -> None:
        """A projection saved by ``save_projection`` (or by sentence-transformers' ``save_projection``)."""
        from safetensors.numpy import load_file

        state = load_file(str(path))
        out_features, in_features = state["weight"].shape
        if self.student_dim is not None and in_features != self.student_dim:
            raise ValueError(f"Saved projection expects student embeddings of dim {in_features}, but the current "
                             f"student model outputs {self.student_dim}-dim embeddings.")
        if self.projection_dim is not None and out_features != self.projection_dim:
            raise ValueError(f"Saved projection shape ({in_features} -> {out_features}) does not match the "
                             f"configured projection shape ({in_features} -> {self.projection_dim}).")
        self.projection_dim = out_features
        self.params = {"projection": {"kernel": jnp.asarray(state["weight"].T, jnp.float32),
                                      "bias": jnp.asarray(state["bias"], jnp.float32)}}


class MSELoss(EmbedDistillLoss):
    """Mean squared error between the student's and the teacher's embeddings (sentence-transformers'
    MSELoss, EmbedDistillLoss with "mse"): the multilingual distillation loss, with the teacher's embeddings
    of the source sentence as every column's label."""

    def __init__(self, model=None, projection_dim: int | None = None, seed: int = 0):
        super().__init__(model, distance_metric="mse", projection_dim=projection_dim, seed=seed)
