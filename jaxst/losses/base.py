"""What every loss shares: the ``Loss`` base (a batch's loss, and a device's share of it on a mesh) and the
checks of its inputs."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import positive_int

MNRL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")


def embedding_columns(embeddings, minimum: int, name: str) -> list[jax.Array]:
    if isinstance(embeddings, (jax.Array, np.ndarray)) or not isinstance(embeddings, Sequence):
        raise TypeError(f"{name} expects a list of (batch, dim) embedding arrays, one per input column, "
                        f"got {type(embeddings).__name__}")
    columns = [jnp.asarray(e) for e in embeddings]
    if len(columns) < minimum:
        raise ValueError(f"{name} expects at least {minimum} embedding columns, got {len(columns)}")
    for i, c in enumerate(columns):
        if c.ndim != 2:
            raise ValueError(f"{name}: embedding column {i} must be (batch, dim), got shape {c.shape}")
        if c.shape[0] != columns[0].shape[0]:
            raise ValueError(f"{name}: column {i} has {c.shape[0]} rows, column 0 has {columns[0].shape[0]}")
    return columns


def example_labels(labels, batch_size: int, name: str) -> jax.Array:
    if labels is None:
        raise ValueError(f"{name} needs labels (one per example)")
    labels = jnp.asarray(labels)
    if labels.size != batch_size:
        raise ValueError(f"{name} expects {batch_size} labels (one per example), "
                         f"but got {labels.size} labels with shape {tuple(labels.shape)}.")
    return labels.reshape(-1)


def gather(x, axis_name):
    """The global batch: every device's rows, in device order (identity off a mesh)."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def mse(pred, target):
    return jnp.mean((pred - target) ** 2)


def cosine_distance(x, y) -> jax.Array:
    """1 - torch's ``cosine_similarity`` of each row pair (each norm at least 1e-8), as the losses that take a
    cosine distance compute it."""
    norms = jnp.maximum(jnp.linalg.norm(x, axis=-1), 1e-8) * jnp.maximum(jnp.linalg.norm(y, axis=-1), 1e-8)
    return 1.0 - jnp.sum(x * y, axis=-1) / norms


def identity(x):
    """The default score transformation and activation of the losses (and of the cross-encoder losses)."""
    return x


class Loss:
    """Base: ``__call__`` is the loss of a batch; ``sharded`` this device's share of it on a mesh."""

    # why the training step refuses this loss on its own (a loss that only goes inside another, as the sparse
    # losses go inside SpladeLoss or CSRLoss); None for a loss that trains by itself
    standalone_error: str | None = None
    # the loss's own trainable arrays (SoftmaxLoss's classifier), a pytree trained with the model's params
    # (``jaxst.training.trainable_params``); None for a loss without any
    params = None

    def with_params(self, params):
        """This loss computing with ``params`` in place of its own (the train step's traced ones)."""
        bound = copy.copy(self)
        bound.params = params
        return bound

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        raise NotImplementedError

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        """Default for losses that couple the whole batch: gather everything, compute the global loss on
        every device, and give each device 1/n of it (so the psum over devices is the global loss)."""
        gathered = jax.tree.map(lambda x: gather(x, axis_name), list(embeddings))
        labels = None if labels is None else gather(jnp.asarray(labels).reshape(-1), axis_name)
        return self(gathered, labels, rng) / jax.lax.axis_size(axis_name)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def cached_rows(mini_batch_size, mini_batch_num_tokens=None) -> int:
    """A cached (GradCache) loss's mini-batch: ``mini_batch_size`` rows. sentence-transformers 6.3's
    ``mini_batch_num_tokens`` (mini-batches by token count) is refused with the reason rather than ignored."""
    if mini_batch_num_tokens is not None:
        raise ValueError("mini_batch_num_tokens is not supported: jaxst's GradCache splits a batch by rows "
                         "(mini_batch_size); collate(..., pack=True, mini_batch_size=...) packs them unpadded")
    return positive_int("mini_batch_size", mini_batch_size)


def linear_params(in_features: int, out_features: int, rng: np.random.Generator) -> dict:
    """A linear layer's ``{"kernel": (in, out), "bias": (out,)}`` drawn as PyTorch's ``nn.Linear`` draws them:
    uniform in +-1/sqrt(in_features)."""
    bound = 1.0 / np.sqrt(in_features)
    return {"kernel": jnp.asarray(rng.uniform(-bound, bound, (in_features, out_features)), jnp.float32),
            "bias": jnp.asarray(rng.uniform(-bound, bound, out_features), jnp.float32)}


def embedding_dim(model) -> int | None:
    getter = getattr(model, "get_embedding_dimension", None)
    return getter() if callable(getter) else None
