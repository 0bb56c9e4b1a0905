"""Building blocks of the decoder-style models: RMSNorm, rotary position embeddings, attention masks
(padding, causal, sliding window) and grouped-query attention.

Numerics follow transformers' eager implementations: RMSNorm statistics in float32, RoPE angles and
tables in float32 ("rotate half" layout: the two halves of each head are the pairs), attention scores
and softmax in float32 whatever the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxst.models.bert import dropout


class RMSNorm(nnx.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis, as Qwen3's (and Llama's) RMSNorm: the
    statistics in float32, the result cast back to the input dtype before the gain."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))  # <-> torch "weight"
        self.eps = eps

    def __call__(self, x):
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        return self.scale[...] * h.astype(x.dtype)


def rope_tables(positions, head_dim: int, theta: float):
    """(cos, sin), each (B, T, head_dim) float32, for integer ``positions`` (B, T): angle ``p * theta^(-2i/d)``,
    the frequencies repeated for both halves of a head."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # (D/2,)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate (B, N, T, D) queries or keys by the (B, T, D) tables: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, None].astype(x.dtype), sin[:, None].astype(x.dtype)
    return x * cos + rotated * sin


def positions_from_mask(mask):
    """Each real token's index within its text (0, 1, ...), for left- or right-padded (B, T) masks."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def attention_mask(mask, *, causal: bool, window: int | None = None):
    """(B, 1, T, T) booleans: which key each query may see. ``mask`` is the (B, T) padding mask, or a
    (B, T, T) per-query mask (packed batches: each token sees only its own text). ``causal``: keys at or
    before the query; ``window``: keys fewer than ``window`` positions back (sliding-window layers)."""
    t = mask.shape[-1]
    allowed = mask.astype(bool)[:, None, :] if mask.ndim == 2 else mask.astype(bool)  # (B, 1 or T, T)
    q = jnp.arange(t)[:, None]
    k = jnp.arange(t)[None, :]
    if causal:
        allowed = allowed & (k <= q)
    if window is not None:
        allowed = allowed & (q - k < window) & (k - q < window)
    return allowed[:, None]


def grouped_query_attention(q, k, v, mask, scale: float, dropout_rate: float = 0.0, dropout_rng=None):
    """softmax(q k^T * scale) v with ``N`` query heads sharing ``KV`` key/value heads (N a multiple of KV).

    q (B, N, T, D), k and v (B, KV, T, D), mask (B, 1, T, T) booleans -> (B, N, T, D). Scores and softmax
    in float32; dropout on the probabilities in training (a ``dropout_rng``)."""
    b, n, t, d = q.shape
    kv = k.shape[1]
    q = q.reshape(b, kv, n // kv, t, d)  # query heads grouped by the key/value head they read
    scores = jnp.einsum("bkgqd,bksd->bkgqs", q, k, preferred_element_type=jnp.float32) * scale
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1), dropout_rate, dropout_rng).astype(v.dtype)
    return jnp.einsum("bkgqs,bksd->bkgqd", probs, v).reshape(b, n, t, d)


__all__ = [
    "RMSNorm",
    "apply_rope",
    "attention_mask",
    "grouped_query_attention",
    "positions_from_mask",
    "rope_tables",
]
