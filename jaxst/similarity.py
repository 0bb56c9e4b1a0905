"""Similarity functions: (N, D) x (M, D) -> (N, M) scores, and their pairwise forms -> (N,).

Inputs may be numpy arrays, jax Arrays or (nested) lists; a 1-D input is one row. Scores are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxst.pooling import normalize


def as_matrix(x) -> jax.Array:
    """Float32 2-D view of embeddings given as an array, a list of vectors or one vector. Sparse embeddings
    (``jax.experimental.sparse.BCOO``, scipy) are made dense first: ``jnp.asarray`` would read them element by
    element (minutes for a few hundred SPLADE rows)."""
    if hasattr(x, "todense") and not isinstance(x, jax.Array):
        x = x.todense()
    if isinstance(x, (list, tuple)) and x and not isinstance(x[0], (int, float)):
        x = jnp.stack([jnp.asarray(row) for row in x])
    x = jnp.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape (n, dim) or (dim,), got shape {x.shape}")
    return x.astype(jnp.float32)


@jax.jit
def _cos_sim(a, b):
    return normalize(a) @ normalize(b).T


@jax.jit
def _dot(a, b):
    return a @ b.T


@jax.jit
def _euclidean(a, b):
    return -jnp.sqrt(jnp.maximum(jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1), 0.0))


@jax.jit
def _manhattan(a, b):
    return -jnp.sum(jnp.abs(a[:, None, :] - b[None, :, :]), axis=-1)


def cos_sim(a, b) -> jax.Array:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    return _cos_sim(as_matrix(a), as_matrix(b))


pytorch_cos_sim = cos_sim  # legacy alias kept by sentence-transformers


def dot_score(a, b) -> jax.Array:
    return _dot(as_matrix(a), as_matrix(b))


def euclidean_sim(a, b) -> jax.Array:
    """Negative Euclidean distance (higher is more similar)."""
    return _euclidean(as_matrix(a), as_matrix(b))


def manhattan_sim(a, b) -> jax.Array:
    """Negative Manhattan (L1) distance (higher is more similar)."""
    return _manhattan(as_matrix(a), as_matrix(b))


def _pairwise_inputs(a, b):
    a, b = as_matrix(a), as_matrix(b)
    if a.shape != b.shape:
        raise ValueError(f"pairwise scores need inputs of one shape, got {a.shape} and {b.shape}")
    return a, b


def pairwise_cos_sim(a, b) -> jax.Array:
    a, b = _pairwise_inputs(a, b)
    return jnp.sum(normalize(a) * normalize(b), axis=-1)


def pairwise_dot_score(a, b) -> jax.Array:
    a, b = _pairwise_inputs(a, b)
    return jnp.sum(a * b, axis=-1)


def pairwise_euclidean_sim(a, b) -> jax.Array:
    a, b = _pairwise_inputs(a, b)
    return -jnp.linalg.norm(a - b, axis=-1)


def pairwise_manhattan_sim(a, b) -> jax.Array:
    a, b = _pairwise_inputs(a, b)
    return -jnp.sum(jnp.abs(a - b), axis=-1)


def pairwise_angle_sim(a, b) -> jax.Array:
    """AnglE similarity |cos + sin| after L2 normalization; dimension i pairs with i + D/2."""
    a, b = _pairwise_inputs(a, b)
    if a.shape[1] % 2:
        a, b = jnp.pad(a, ((0, 0), (0, 1))), jnp.pad(b, ((0, 0), (0, 1)))
    a, b = normalize(a), normalize(b)
    half = a.shape[1] // 2
    cosines = jnp.sum(a * b, axis=-1)
    sines = jnp.sum(a[:, half:] * b[:, :half] - a[:, :half] * b[:, half:], axis=-1)
    return jnp.abs(cosines + sines)


SIMILARITY_FUNCTIONS = {
    "cosine": (cos_sim, pairwise_cos_sim),
    "dot": (dot_score, pairwise_dot_score),
    "euclidean": (euclidean_sim, pairwise_euclidean_sim),
    "manhattan": (manhattan_sim, pairwise_manhattan_sim),
}


def similarity_functions(name: str):
    """``(similarity, similarity_pairwise)`` for a ``similarity_fn_name``."""
    if hasattr(name, "value"):  # sentence_transformers.SimilarityFunction
        name = name.value
    if name == "dot_product":
        name = "dot"
    try:
        return SIMILARITY_FUNCTIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown similarity_fn_name {name!r}; expected one of {sorted(SIMILARITY_FUNCTIONS)}"
        ) from None
