"""Pooling: token states (B, T, H) and a mask (B, T) -> sentence embeddings, as pure functions.

Semantics follow sentence-transformers' ``Pooling`` module exactly (right-padded batches).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# Legacy boolean keys of 1_Pooling/config.json, in the order their outputs are concatenated.
LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def pooling_modes_from_config(config: dict) -> tuple[str, ...]:
    """The pooling modes of a ``1_Pooling/config.json``, in either the legacy or the current form."""
    mode = config.get("pooling_mode")
    if mode is None:
        mode = tuple(m for key, m in LEGACY_POOLING_KEYS.items() if config.get(key, False)) or ("mean",)
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    for m in modes:
        if m not in POOLING_MODES:
            raise ValueError(f"unknown pooling mode {m!r}; valid modes: {POOLING_MODES}")
    return modes


def exclude_prompt(mask, prompt_length):
    """Zero the first ``prompt_length`` positions of a right-padded mask (``include_prompt=False``)."""
    positions = jnp.arange(mask.shape[1])[None, :]
    return jnp.where(positions < prompt_length, 0, mask)


def cls_pool(h, mask):
    first = jnp.argmax(mask, axis=1)  # first real token
    return jnp.take_along_axis(h, first[:, None, None], axis=1)[:, 0]


def max_pool(h, mask):
    return jnp.max(jnp.where(mask[..., None] > 0, h, -jnp.inf), axis=1)


def mean_pool(h, mask):
    m = mask[..., None].astype(h.dtype)
    return jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)


def mean_sqrt_len_pool(h, mask):
    m = mask[..., None].astype(h.dtype)
    return jnp.sum(h * m, axis=1) / jnp.sqrt(jnp.maximum(jnp.sum(m, axis=1), 1e-9))


def weighted_mean_pool(h, mask):
    weights = jnp.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]  # positions 1..T
    w = mask[..., None].astype(h.dtype) * weights
    return jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1e-9)


def last_token_pool(h, mask):
    t = mask.shape[1]
    flipped = mask[:, ::-1]
    last = t - 1 - jnp.argmax(flipped, axis=1)
    last = jnp.where(jnp.max(flipped, axis=1) == 0, 0, last)  # no real token: the original gathers index 0
    h = h * mask[..., None].astype(h.dtype)
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]


POOL_FNS = {
    "cls": cls_pool,
    "max": max_pool,
    "mean": mean_pool,
    "mean_sqrt_len_tokens": mean_sqrt_len_pool,
    "weightedmean": weighted_mean_pool,
    "lasttoken": last_token_pool,
}


def pool(h, mask, modes: Sequence[str] = ("mean",), prompt_length=None):
    """Concatenate the poolings named in ``modes`` (in the canonical order of the config)."""
    if isinstance(modes, str):
        modes = (modes,)
    if prompt_length is not None:
        mask = exclude_prompt(mask, prompt_length)
    return jnp.concatenate([POOL_FNS[m](h, mask) for m in modes], axis=-1)


def l2_normalize(x, eps: float = 1e-12):
    """L2-normalize the last axis: x / max(||x||, eps), as ``torch.nn.functional.normalize`` and
    sentence-transformers' Normalize module. The one normalization of the package: a numpy array is
    normalized on the host by numpy (numpy in, numpy out, its dtype kept: the facades' float32 rows),
    anything else (a jax array, a tracer inside jit) by jax.numpy.

    Written as sqrt(max(||x||^2, eps^2)) so the gradient at a zero vector (a text with no tokens) is
    finite, as torch's is, instead of the NaN that the derivative of ||x|| at 0 gives. For every row whose
    norm is not within rounding of ``eps`` this is bit for bit x / max(||x||, eps)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    x = xp.asarray(x)
    return x / xp.sqrt(xp.maximum(xp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def normalize(x, eps: float = 1e-12):
    """``l2_normalize`` as a jax array whatever comes in (a numpy array or a list is put on the device
    first): the jitted paths, the similarity functions and ``jaxst.util.normalize_embeddings``."""
    return l2_normalize(jnp.asarray(x), eps)


def truncate(x, dim: int | None):
    """Matryoshka truncation to the first ``dim`` dimensions."""
    return x if dim is None else x[..., :dim]
