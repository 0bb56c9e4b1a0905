"""The shared attention blocks: long inputs attend a block of queries at a time with the same result."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxst.models import layers


@pytest.mark.parametrize("causal, window, heads, kv_heads", [(False, None, 4, 4), (True, 5, 4, 2), (False, 7, 6, 3)])
def test_blocked_attention_equals_one_pass(causal, window, heads, kv_heads):
    """Past 2 x QUERY_BLOCK tokens the queries go through in blocks (the last one padded): the same outputs as
    one pass over all queries, for a key-only mask, a causal + windowed one and a symmetric window, with
    padding in one row and grouped-query heads."""
    rng = np.random.default_rng(0)
    t = 2 * layers.QUERY_BLOCK + 300  # three blocks, the last one partly padding
    q = jnp.asarray(rng.standard_normal((2, heads, t, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((2, kv_heads, t, 8)), jnp.float32) for _ in range(2))
    padding = np.ones((2, t), np.int32)
    padding[1, 2000:] = 0
    mask = layers.attention_mask(jnp.asarray(padding), causal=causal, window=window)
    blocked = np.asarray(layers.grouped_query_attention(q, k, v, mask, 0.3))
    whole = np.asarray(layers._attend(q, k, v, mask, 0.3))
    assert blocked.shape == whole.shape == (2, heads, t, 8)
    assert np.abs(blocked - whole).max() < 1e-5
    assert np.abs(whole[0, :, -1] - whole[0, :, 0]).max() > 1e-2  # control: the rows differ
