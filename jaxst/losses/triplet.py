"""Triplet losses: (anchor, positive, negative) columns with a margin, and the batch triplet losses that mine
the triplets inside a batch of labelled texts (batch hard, soft margin, all, semi-hard)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.checks import callable_arg
from jaxst.losses.base import Loss, embedding_columns, example_labels
from jaxst.similarity import cos_sim, pairwise_cos_sim, pairwise_euclidean_sim, pairwise_manhattan_sim


class TripletDistanceMetric:
    """sentence-transformers' triplet distances: 1 - cosine, euclidean, manhattan (pairwise)."""

    COSINE = staticmethod(lambda x, y: 1.0 - pairwise_cos_sim(x, y))
    EUCLIDEAN = staticmethod(lambda x, y: -pairwise_euclidean_sim(x, y))
    MANHATTAN = staticmethod(lambda x, y: -pairwise_manhattan_sim(x, y))


class TripletLoss(Loss):
    """max(d(anchor, positive) - d(anchor, negative) + ``triplet_margin``, 0), averaged; ``embeddings``:
    [anchors, positives, negatives], each (B, D). Euclidean distance and margin 5 by default, as
    sentence-transformers' TripletLoss."""

    def __init__(self, model=None, distance_metric: Callable = TripletDistanceMetric.EUCLIDEAN,
                 triplet_margin: float = 5.0):
        del model
        callable_arg("distance_metric", distance_metric)
        self.distance_metric = distance_metric
        self.triplet_margin = float(triplet_margin)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 3, type(self).__name__)
        if len(columns) != 3:
            raise ValueError(f"TripletLoss expects (anchor, positive, negative) columns, got {len(columns)}")
        anchor, positive, negative = columns
        return jnp.mean(jax.nn.relu(self.distance_metric(anchor, positive) - self.distance_metric(anchor, negative)
                                    + self.triplet_margin))

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # a mean of equal-sized shards


# ------------------------------------------------------------------ batch triplet losses over labelled texts


def _euclidean_distances(embeddings: jax.Array, squared: bool = False) -> jax.Array:
    """Every pair's euclidean distance from the Gram matrix, |a|^2 - 2 a.b + |b|^2 (exactly 0 on the diagonal);
    rounding below 0 clipped to 0, and the square root's gradient kept finite at 0, as sentence-transformers
    computes it."""
    embeddings = jnp.asarray(embeddings)
    if embeddings.dtype in (jnp.float16, jnp.bfloat16):
        embeddings = embeddings.astype(jnp.float32)
    gram = embeddings @ embeddings.T
    norms = jnp.diagonal(gram)
    distances = norms[None, :] - 2.0 * gram + norms[:, None]
    distances = jnp.where(distances < 0, 0.0, distances)
    if squared:
        return distances
    zero = (distances == 0).astype(distances.dtype)
    return (1.0 - zero) * jnp.sqrt(distances + zero * 1e-16)


def _cosine_distances(embeddings: jax.Array) -> jax.Array:
    """1 - cosine of every pair, at least 0, and 0 on the diagonal."""
    distances = jnp.maximum(1.0 - cos_sim(embeddings, embeddings), 0.0)
    return jnp.where(jnp.eye(distances.shape[0], dtype=bool), 0.0, distances)


class BatchHardTripletLossDistanceFunction:
    """The batch triplet losses' distance matrices over one (B, D) batch: ``cosine_distance`` (1 - cosine,
    clipped at 0, zero diagonal) and ``euclidean_distance`` (``squared=False``), as sentence-transformers'."""

    cosine_distance = staticmethod(_cosine_distances)
    euclidean_distance = staticmethod(_euclidean_distances)
    eucledian_distance = euclidean_distance  # sentence-transformers' old spelling, kept as it keeps it


def _label_masks(labels) -> tuple[jax.Array, jax.Array]:
    """(valid positives: same label, another row; valid negatives: another label), each (B, B)."""
    same = labels[:, None] == labels[None, :]
    return same & ~jnp.eye(labels.shape[0], dtype=bool), ~same


class _BatchTripletLoss(Loss):
    """One column of texts with a class label each: triplets are mined inside the batch from the labels.
    ``distance_metric`` maps a (B, D) batch to its (B, B) distances (``BatchHardTripletLossDistanceFunction``'s
    or one's own); the default is euclidean with ``margin`` 5, as in sentence-transformers."""

    def __init__(self, model=None, distance_metric: Callable = BatchHardTripletLossDistanceFunction.euclidean_distance,
                 margin: float = 5.0):
        del model
        callable_arg("distance_metric", distance_metric)
        self.distance_metric = distance_metric
        self.triplet_margin = float(margin)

    def _inputs(self, embeddings, labels) -> tuple[jax.Array, jax.Array]:
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        if len(columns) != 1:
            raise ValueError(f"{type(self).__name__} takes one column of texts (with a class label each), "
                             f"got {len(columns)} columns")
        return self.distance_metric(columns[0]), example_labels(labels, columns[0].shape[0], type(self).__name__)


class BatchHardTripletLoss(_BatchTripletLoss):
    """For each text, its farthest same-label text and its nearest other-label text form the triplet:
    mean of max(d(a, hardest positive) - d(a, hardest negative) + ``margin``, 0) (sentence-transformers'
    BatchHardTripletLoss; a text with no positive or no negative in the batch counts with distance 0 or its
    largest distance in their place, as there)."""

    def _hardest(self, distances, labels) -> tuple[jax.Array, jax.Array]:
        positive, negative = _label_masks(labels)
        hardest_positive = jnp.max(positive * distances, axis=1)
        row_max = jnp.max(distances, axis=1, keepdims=True)
        hardest_negative = jnp.min(distances + row_max * (1.0 - negative), axis=1)
        return hardest_positive, hardest_negative

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        distances, labels = self._inputs(embeddings, labels)
        hardest_positive, hardest_negative = self._hardest(distances, labels)
        losses = hardest_positive - hardest_negative + self.triplet_margin
        return jnp.mean(jnp.where(losses < 0, 0.0, losses))


class BatchHardSoftMarginTripletLoss(BatchHardTripletLoss):
    """BatchHardTripletLoss with a soft margin: mean of softplus(d(a, hardest positive) - d(a, hardest
    negative)), no margin to choose."""

    def __init__(self, model=None, distance_metric: Callable = BatchHardTripletLossDistanceFunction.euclidean_distance):
        super().__init__(model, distance_metric)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        distances, labels = self._inputs(embeddings, labels)
        hardest_positive, hardest_negative = self._hardest(distances, labels)
        return jnp.mean(jax.nn.softplus(hardest_positive - hardest_negative))


class BatchAllTripletLoss(_BatchTripletLoss):
    """Every valid triplet of the batch (anchor, a same-label positive, an other-label negative): the sum of
    max(d(a, p) - d(a, n) + ``margin``, 0) over the triplets where it is positive, divided by their number.
    Computed one anchor at a time, so memory stays (B, B) however large the batch."""

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        distances, labels = self._inputs(embeddings, labels)
        positive, negative = _label_masks(labels)

        def anchor(i):  # (sum of its triplets' losses, how many are > 0)
            losses = distances[i][:, None] - distances[i][None, :] + self.triplet_margin  # (positive, negative)
            losses = jnp.where(positive[i][:, None] & negative[i][None, :], losses, 0.0)
            losses = jnp.where(losses < 0, 0.0, losses)
            return jnp.sum(losses), jnp.sum(losses > 1e-16)

        total, counted = jax.lax.map(anchor, jnp.arange(distances.shape[0]))
        return jnp.sum(total) / (jnp.sum(counted) + 1e-16)


class BatchSemiHardTripletLoss(_BatchTripletLoss):
    """FaceNet's semi-hard mining: for each (anchor, positive) pair, the nearest other-label text farther from
    the anchor than the positive (or, where there is none, the farthest other-label text); the mean of
    max(d(a, p) - d(a, n) + ``margin``, 0) over the pairs (sentence-transformers' BatchSemiHardTripletLoss)."""

    def __init__(self, model=None, distance_metric: Callable = BatchHardTripletLossDistanceFunction.euclidean_distance,
                 margin: float = 5.0):
        super().__init__(model, distance_metric, margin)
        self.margin = self.triplet_margin  # sentence-transformers names this one's margin so

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        distances, labels = self._inputs(embeddings, labels)
        b = distances.shape[0]
        same = labels[:, None] == labels[None, :]
        sorted_negatives = jnp.sort(jnp.where(same, jnp.inf, distances), axis=1)
        # per pair (a, p): the first negative of a's sorted row strictly farther than d(a, p)
        above = jax.vmap(lambda row, d: jnp.searchsorted(row, d, side="right"))(
            jax.lax.stop_gradient(sorted_negatives), jax.lax.stop_gradient(distances))
        outside = jnp.take_along_axis(sorted_negatives, jnp.minimum(above, b - 1), axis=1)
        row_min = jnp.min(distances, axis=1, keepdims=True)
        farthest = jnp.max((distances - row_min) * ~same, axis=1, keepdims=True) + row_min
        semi_hard = jnp.where(jnp.isfinite(outside), outside, farthest)
        pairs = same.astype(distances.dtype) - jnp.eye(b, dtype=distances.dtype)
        losses = jnp.maximum((distances - semi_hard + self.margin) * pairs, 0.0)
        return jnp.sum(losses) / jnp.maximum(jnp.sum(pairs), 1e-16)
