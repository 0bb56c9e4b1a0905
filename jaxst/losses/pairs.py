"""Losses over scored pairs: CoSENT, AnglE, CosineSimilarity, binary cross-entropy (a cross-encoder's logits), and
the siamese contrastive losses over distances (Contrastive, OnlineContrastive)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import callable_arg
from jaxst.losses.base import Loss, cosine_distance, embedding_columns, example_labels, identity, mse
from jaxst.similarity import pairwise_angle_sim, pairwise_cos_sim


class CoSENTLoss(Loss):
    """log(1 + sum over pairs (i, j) with label_i > label_j of exp(scale * (sim_j - sim_i))).

    ``embeddings``: [a, b], (B, D) each; ``labels``: (B,) gold similarity scores (any scale: only their
    order counts). ``similarity_fct`` is pairwise (default pairwise_cos_sim), ``scale`` 20."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = pairwise_cos_sim):
        del model
        callable_arg("similarity_fct", similarity_fct)
        self.scale = float(scale)
        self.similarity_fct = similarity_fct

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        labels = example_labels(labels, columns[0].shape[0], type(self).__name__)
        return self._from_pairs(columns[0], columns[1], labels)

    def _from_pairs(self, a, b, labels) -> jax.Array:
        scores = self.similarity_fct(a, b).astype(jnp.float32) * self.scale  # (B,)
        labels = labels.astype(jnp.float32)
        higher = labels[:, None] > labels[None, :]  # (i, j): pair i should outscore pair j
        diffs = jnp.where(higher, scores[None, :] - scores[:, None], -jnp.inf)  # (B, B)
        return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1), diffs.reshape(-1)]))  # the 0 is e^0 = 1


class AnglELoss(CoSENTLoss):
    """CoSENT with the AnglE similarity (pairwise_angle_sim), ``scale`` 20.

    With more than two columns [anchor, positive, negative...], each (anchor, positive) pair gets its
    label (1 when labels is None) and each (anchor, negative) pair 1 - label, as the original does."""

    def __init__(self, model=None, scale: float = 20.0):
        super().__init__(model, scale=scale, similarity_fct=pairwise_angle_sim)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        b = columns[0].shape[0]
        if len(columns) == 2:
            if labels is None:
                raise ValueError("AnglELoss requires labels for datasets with pairs.")
            return self._from_pairs(columns[0], columns[1], example_labels(labels, b, type(self).__name__))
        labels = jnp.ones(b) if labels is None else example_labels(labels, b, type(self).__name__)
        n_other = len(columns) - 1
        anchors = jnp.tile(columns[0], (n_other, 1))
        others = jnp.concatenate(columns[1:], axis=0)
        combined = jnp.concatenate([labels, jnp.tile(1 - labels, n_other - 1)])
        return self._from_pairs(anchors, others, combined)


class CosineSimilarityLoss(Loss):
    """loss_fct(cos_score_transformation(cos(a, b)), labels): the MSE between cosine and gold score by
    default. ``loss_fct(pred, target)`` and ``cos_score_transformation(x)`` are callables on jax arrays."""

    def __init__(self, model=None, loss_fct: Callable = mse, cos_score_transformation: Callable = identity):
        del model
        for name, fn in (("loss_fct", loss_fct), ("cos_score_transformation", cos_score_transformation)):
            callable_arg(name, fn)
        self.loss_fct = loss_fct
        self.cos_score_transformation = cos_score_transformation

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        labels = example_labels(labels, columns[0].shape[0], type(self).__name__).astype(jnp.float32)
        a, b = columns[0], columns[1]
        # torch.cosine_similarity: a.b / sqrt(max(|a|^2 |b|^2, eps^2)), eps 1e-8
        norms = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
        cos = jnp.sum(a * b, axis=-1) / jnp.sqrt(jnp.maximum(norms, 1e-16))
        return self.loss_fct(self.cos_score_transformation(cos), labels)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        if self.loss_fct is not mse:  # a custom loss_fct may not be a per-example mean
            return super().sharded(embeddings, labels, axis_name, rng)
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # mean of equal-sized shards


class BinaryCrossEntropyLoss(Loss):
    """Binary cross-entropy with logits, for a one-label cross-encoder: ``embeddings`` are its raw
    logits (B,) or (B, 1), ``labels`` (B,) targets in [0, 1]. ``pos_weight`` weighs the positive term,
    ``activation_fn`` is applied to the logits first (identity by default), as in the original."""

    def __init__(self, model=None, activation_fn: Callable = identity, pos_weight: float | None = None):
        num_labels = getattr(model, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"BinaryCrossEntropyLoss expects a model with 1 output label, "
                             f"but got a model with {num_labels} output labels.")
        callable_arg("activation_fn", activation_fn)
        self.activation_fn = activation_fn
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits = jnp.asarray(embeddings[0] if isinstance(embeddings, (list, tuple)) else embeddings)
        if logits.ndim == 2 and logits.shape[1] != 1:
            raise ValueError(f"BinaryCrossEntropyLoss expects one logit per pair, got shape {logits.shape}")
        logits = self.activation_fn(logits.reshape(-1))
        labels = example_labels(labels, logits.shape[0], type(self).__name__).astype(jnp.float32)
        # -[w y log(sigmoid(x)) + (1 - y) log(1 - sigmoid(x))], with log(sigmoid(x)) = -softplus(-x)
        w = 1.0 if self.pos_weight is None else self.pos_weight
        return jnp.mean(w * labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits))

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # mean of equal-sized shards


# ------------------------------------------------------------------------------- siamese (contrastive) losses


def _pairwise_distance(x, y, p: int) -> jax.Array:
    """torch's ``pairwise_distance``: the p-norm of x - y + 1e-6."""
    diff = x - y + 1e-6
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1)) if p == 2 else jnp.sum(jnp.abs(diff), axis=-1)


class SiameseDistanceMetric:
    """The contrastive losses' distances between the two texts of each pair, as sentence-transformers'."""

    EUCLIDEAN = staticmethod(lambda x, y: _pairwise_distance(x, y, 2))
    MANHATTAN = staticmethod(lambda x, y: _pairwise_distance(x, y, 1))
    COSINE_DISTANCE = staticmethod(cosine_distance)


def _warn_unless_binary(loss, labels, consequence: str) -> None:
    """Once per loss, where the labels are concrete (not inside a compiled step): labels other than 0 and 1."""
    if loss._checked_labels or isinstance(labels, jax.core.Tracer):
        return
    loss._checked_labels = True
    values = np.asarray(labels)
    if np.any((values != 0) & (values != 1)):
        warnings.warn(f"{type(loss).__name__} expects binary labels (0 or 1). {consequence}", UserWarning,
                      stacklevel=3)


class ContrastiveLoss(Loss):
    """Pairs labelled 1 (similar) pulled together, pairs labelled 0 pushed at least ``margin`` apart:
    0.5 (y d^2 + (1 - y) max(margin - d, 0)^2), averaged (``size_average``) or summed; d is
    ``distance_metric`` (cosine distance by default, margin 0.5), as sentence-transformers' ContrastiveLoss."""

    def __init__(self, model=None, distance_metric: Callable = SiameseDistanceMetric.COSINE_DISTANCE,
                 margin: float = 0.5, size_average: bool = True):
        del model
        callable_arg("distance_metric", distance_metric)
        self.distance_metric, self.margin, self.size_average = distance_metric, float(margin), bool(size_average)
        self._checked_labels = False

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        if len(columns) != 2:
            raise ValueError(f"{type(self).__name__} takes pairs: 2 embedding columns, got {len(columns)}")
        labels = example_labels(labels, columns[0].shape[0], type(self).__name__)
        _warn_unless_binary(self, labels, "Non-binary labels are accepted but are used directly to weight the "
                                          "positive term, with 1 - label weighting the negative term.")
        labels = labels.astype(jnp.float32)
        distances = self.distance_metric(columns[0], columns[1])
        losses = 0.5 * (labels * distances ** 2 + (1 - labels) * jax.nn.relu(self.margin - distances) ** 2)
        return jnp.mean(losses) if self.size_average else jnp.sum(losses)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        if self.size_average:  # a mean of equal-sized shards
            return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)
        return self(embeddings, labels, rng)  # a sum: each device's part of it


class OnlineContrastiveLoss(Loss):
    """ContrastiveLoss on the batch's hard pairs only: negatives (label 0) closer than the farthest positive,
    positives (label 1) farther than the nearest negative; summed, as sentence-transformers'
    OnlineContrastiveLoss (pairs with any other label take no part)."""

    def __init__(self, model=None, distance_metric: Callable = SiameseDistanceMetric.COSINE_DISTANCE,
                 margin: float = 0.5):
        del model
        callable_arg("distance_metric", distance_metric)
        self.distance_metric, self.margin = distance_metric, float(margin)
        self._checked_labels = False

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        labels = example_labels(labels, columns[0].shape[0], type(self).__name__)
        _warn_unless_binary(self, labels, "Pairs with any other label are ignored, since they match neither the "
                                          "positive nor the negative set.")
        distances = self.distance_metric(columns[0], columns[1])
        positive, negative = labels == 1, labels == 0
        d = jax.lax.stop_gradient(distances)  # the thresholds only choose pairs

        def mean(mask):
            return jnp.sum(jnp.where(mask, d, 0.0)) / jnp.sum(mask)

        farthest_positive = jnp.where(jnp.any(positive), jnp.max(jnp.where(positive, d, -jnp.inf)), mean(negative))
        nearest_negative = jnp.where(jnp.any(negative), jnp.min(jnp.where(negative, d, jnp.inf)), mean(positive))
        hard_negative = negative & (d < farthest_positive)
        hard_positive = positive & (d > nearest_negative)
        return (jnp.sum(jnp.where(hard_positive, distances ** 2, 0.0))
                + jnp.sum(jnp.where(hard_negative, jax.nn.relu(self.margin - distances) ** 2, 0.0)))
