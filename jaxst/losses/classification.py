"""SoftmaxLoss: a classifier over a pair's embeddings trained with the model (sentence-transformers' SoftmaxLoss,
the loss of the original SBERT NLI training). Its classifier is the loss's own trainable ``params``."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import positive_int
from jaxst.losses.base import Loss, embedding_columns, example_labels, linear_params


def cross_entropy(logits, labels) -> jax.Array:
    """torch's ``CrossEntropyLoss()``: the mean negative log-softmax of each row's class."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels.astype(jnp.int32)[:, None], axis=1))


class SoftmaxLoss(Loss):
    """Embeddings u, v of the two texts of each pair concatenated as (u, v) (``concatenation_sent_rep``),
    |u - v| (``concatenation_sent_difference``) and u * v (``concatenation_sent_multiplication``), a linear
    classifier over ``num_labels`` classes, and ``loss_fct(logits, labels)`` (cross-entropy). The classifier's
    weights are the loss's ``params`` (``{"classifier": {"kernel", "bias"}}``, initialized as PyTorch's
    ``nn.Linear`` from ``seed``): ``jaxst.training`` trains them with the model (``trainable_params``).
    ``logits(u, v)`` gives the classifier's output, what ``LabelAccuracyEvaluator`` reads."""

    def __init__(self, model=None, embedding_dimension: int | None = None, num_labels: int | None = None,
                 concatenation_sent_rep: bool = True, concatenation_sent_difference: bool = True,
                 concatenation_sent_multiplication: bool = False, loss_fct: Callable = cross_entropy,
                 seed: int = 0, sentence_embedding_dimension: int | None = None):
        if sentence_embedding_dimension is not None:  # sentence-transformers' deprecated name for it
            embedding_dimension = embedding_dimension or sentence_embedding_dimension
        if embedding_dimension is None:
            getter = getattr(model, "get_embedding_dimension", None)
            embedding_dimension = getter() if callable(getter) else None
        positive_int("embedding_dimension", embedding_dimension)
        positive_int("num_labels", num_labels)
        parts = 2 * bool(concatenation_sent_rep) + bool(concatenation_sent_difference) + \
            bool(concatenation_sent_multiplication)
        if parts == 0:
            raise ValueError("At least one of concatenation_sent_rep, concatenation_sent_difference, "
                             "or concatenation_sent_multiplication must be True.")
        self.embedding_dimension, self.num_labels = int(embedding_dimension), int(num_labels)
        self.concatenation_sent_rep = bool(concatenation_sent_rep)
        self.concatenation_sent_difference = bool(concatenation_sent_difference)
        self.concatenation_sent_multiplication = bool(concatenation_sent_multiplication)
        self.loss_fct = loss_fct
        self.params = {"classifier": linear_params(parts * self.embedding_dimension, self.num_labels,
                                                   np.random.default_rng(seed))}

    def logits(self, rep_a, rep_b, params=None) -> jax.Array:
        """(B, num_labels): the classifier over the concatenated features of the pairs (u, v)."""
        params = self.params if params is None else params
        parts = []
        if self.concatenation_sent_rep:
            parts += [rep_a, rep_b]
        if self.concatenation_sent_difference:
            parts.append(jnp.abs(rep_a - rep_b))
        if self.concatenation_sent_multiplication:
            parts.append(rep_a * rep_b)
        classifier = params["classifier"]
        return jnp.concatenate(parts, axis=1) @ classifier["kernel"] + classifier["bias"]

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        if len(columns) != 2:
            raise ValueError(f"SoftmaxLoss takes pairs: 2 embedding columns, got {len(columns)}")
        labels = example_labels(labels, columns[0].shape[0], type(self).__name__)
        return self.loss_fct(self.logits(columns[0], columns[1]), labels)
