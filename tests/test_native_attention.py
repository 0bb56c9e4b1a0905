"""The fused native attention kernel (jaxst/native/attention.cc) against XLA's attention (``xla_attention``,
which runs on accelerators and in training): the same outputs within float32 rounding for every mask the
model families use, for each vector build this CPU can run; gradients from XLA's ops; clean fallbacks.

The model families' own tests compare whole models with the kernel in place against sentence-transformers."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxst import native
from jaxst.models import layers

# (B, N heads, KV heads, T queries, S keys, D, per-query masks, causal, window, bias shape or None)
CASES = [
    (2, 4, 4, 37, 37, 16, False, False, None, None),  # BERT-like, a partial key vector
    (3, 4, 2, 70, 70, 24, False, True, None, None),  # grouped heads, causal, a head dim past whole vectors
    (2, 6, 2, 130, 130, 64, False, False, 9, None),  # sliding window (ModernBERT / Gemma local layers)
    (1, 2, 1, 300, 300, 128, False, True, 17, None),  # causal and windowed, several query blocks
    (2, 3, 3, 50, 50, 32, True, False, None, None),  # packed batches: one key mask per query
    (2, 4, 4, 1, 45, 32, False, False, None, (1, 4, 1, 45)),  # first query only, with MPNet's bias
    (2, 4, 4, 45, 45, 8, False, False, None, (1, 4, 45, 45)),  # bias, a head dim under one vector
    (2, 2, 2, 20, 20, 16, True, True, None, None),
    (2, 12, 12, 160, 160, 256, False, False, None, (2, 12, 160, 160)),  # Gemma's head dim, bias per text
]


ISAS = ("avx512", "avx2", "generic")  # widest first


def _skip_unless_runnable(isa):
    """Every build this CPU can run is tested: the widest it has, and the narrower ones as a CPU without it
    would; a wider build is a skip that says so."""
    have = native.vector_isa()
    if ISAS.index(isa) < ISAS.index(have):
        pytest.skip(f"the {isa} attention build: this CPU's widest vector instruction set is {have}")


def _inputs(case, seed=0):
    b, n, kv, t, s, d, per_query, causal, window, bias_shape = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, n, t, d), dtype=np.float32)
    k = rng.standard_normal((b, kv, s, d), dtype=np.float32)
    v = rng.standard_normal((b, kv, s, d), dtype=np.float32)
    mask = rng.random((b, t if per_query else 1, s)) > 0.3
    mask[0] = True
    if per_query:
        mask[1, 3] = False  # a query that may see no key: the mean of the values, as XLA's softmax gives
    elif causal and b > 1:
        mask[1, 0, :5] = False  # left padding: the first queries see nothing under the causal limit
    bias = None if bias_shape is None else rng.standard_normal(bias_shape, dtype=np.float32)
    return q, k, v, mask, bias


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])) + f"-pq{c[6]:d}c{c[7]:d}w{c[8]}")
def test_kernel_matches_xla(case, isa):
    _skip_unless_runnable(isa)
    target = native.register_attention(isa)
    q, k, v, mask, bias = _inputs(case)
    causal, window = case[7], case[8]
    scale = 1.5 / np.sqrt(q.shape[-1])  # scores of standard normal inputs with a 1.5x sharper softmax than 1/sqrt(D)
    want = layers.xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), scale, causal,
                                window, None if bias is None else jnp.asarray(bias))
    got = native.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask),
                           None if bias is None else jnp.asarray(bias), scale=scale, causal=causal, window=window,
                           target=target)
    want, got = np.asarray(want), np.asarray(got)
    assert got.shape == want.shape and np.isfinite(got).all()
    # Float32 sums in another order: differences of ~1e-6 on outputs of order 1.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # heads_last: the same numbers read from (B, T, N, D) / (B, S, KV, D) and written as (B, T, N, D)
    q_, k_, v_ = (jnp.asarray(x.transpose(0, 2, 1, 3)) for x in (q, k, v))
    got = native.attention(q_, k_, v_, jnp.asarray(mask), None if bias is None else jnp.asarray(bias), scale=scale,
                           causal=causal, window=window, target=target, heads_last=True)
    assert got.shape == q_.shape
    np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 1, 3), rtol=0, atol=1e-5)


def test_positive_control_a_wrong_mask_is_caught():
    """The comparison above can fail: the same inputs with one key unmasked differ by far more than 1e-5."""
    q, k, v, mask, _ = _inputs(CASES[0])
    changed = mask.copy()
    changed[1, 0, np.flatnonzero(~mask[1, 0])[0]] = True
    want = layers.xla_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), 0.3)
    got = native.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(changed), scale=0.3)
    assert np.abs(np.asarray(got) - np.asarray(want)).max() > 1e-3


def test_attention_dispatch_and_gradients(monkeypatch):
    """``layers.attention`` runs the kernel for float32 inference on one CPU device (counted), XLA's ops for
    bfloat16, and its gradient equals XLA's attention's gradient."""
    q, k, v, mask, bias = (jnp.asarray(x) for x in _inputs(CASES[6]))
    calls = []
    real = native.attention
    monkeypatch.setattr(native, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    out = jax.jit(lambda q, k, v: layers.attention(q, k, v, mask[:, 0], scale=0.25, bias=bias))(q, k, v)
    assert calls, "float32 inference on the CPU should run the native kernel"
    want = layers.xla_attention(q, k, v, mask, 0.25, bias=bias)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=0, atol=1e-5)

    def loss(fn):
        return lambda q, k, v, bias: (fn(q, k, v, bias) * jnp.arange(q.shape[-1])).sum()

    grads = jax.grad(loss(lambda q, k, v, b: layers.attention(q, k, v, mask[:, 0], scale=0.25, bias=b)),
                     argnums=(0, 1, 2, 3))(q, k, v, bias)
    ref = jax.grad(loss(lambda q, k, v, b: layers.xla_attention(q, k, v, mask, 0.25, bias=b)),
                   argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)
        assert np.abs(np.asarray(r)).max() > 0

    # (B, T, N, D) heads, as multi_head_attention passes them: the same outputs and gradients, transposed
    def heads_last(q, k, v, b):
        return layers.attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)), mask[:, 0], scale=0.25, bias=b,
                                heads_last=True).transpose(0, 2, 1, 3)

    calls.clear()
    np.testing.assert_allclose(np.asarray(jax.jit(heads_last)(q, k, v, bias)), np.asarray(want), rtol=0, atol=1e-5)
    assert calls
    for g, r in zip(jax.grad(loss(heads_last), argnums=(0, 1, 2, 3))(q, k, v, bias), ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)

    calls.clear()
    half = layers.attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), mask[:, 0],
                            scale=0.25)
    assert half.dtype == jnp.bfloat16 and not calls


def test_turned_off_and_failed_build(monkeypatch, tmp_path):
    """``JAXST_NATIVE=0`` keeps to XLA's ops; a failed build warns once and does the same."""
    q, k, v, mask, _ = (jnp.asarray(x) if x is not None else None for x in _inputs(CASES[0]))
    want = np.asarray(layers.xla_attention(q, k, v, mask, 0.3))
    calls = []
    real = native.attention
    monkeypatch.setattr(native, "attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    try:
        monkeypatch.setenv(native.ENV, "0")
        native.attention_kernel.cache_clear()
        assert native.attention_kernel() is None
        np.testing.assert_array_equal(np.asarray(layers.attention(q, k, v, mask[:, 0], scale=0.3)), want)

        monkeypatch.setenv(native.ENV, "1")
        monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
        monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
        native.attention_kernel.cache_clear()
        registered = {n: native._registered.pop(n) for n in list(native._registered) if "attention" in n}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.attention_kernel() is None
        assert any("native attention kernel is unavailable" in str(w.message) for w in caught)
        np.testing.assert_array_equal(np.asarray(layers.attention(q, k, v, mask[:, 0], scale=0.3)), want)
        assert not calls and not list(tmp_path.iterdir())
        native._registered.update(registered)
    finally:
        native.attention_kernel.cache_clear()


def test_bad_shapes_are_refused():
    target = native.register_attention("generic")
    q = jnp.zeros((2, 4, 8, 16))
    with pytest.raises(Exception, match="q, k, v shapes do not agree"):
        native.attention(q, jnp.zeros((2, 3, 8, 16)), jnp.zeros((2, 3, 8, 16)), jnp.ones((2, 1, 8), bool), scale=1.0,
                         target=target)
    with pytest.raises(Exception, match="mask must be"):
        native.attention(q, q, q, jnp.ones((2, 3, 8), bool), scale=1.0, target=target)
    with pytest.raises(Exception, match="needs T == S"):
        native.attention(q[:, :, :1], q, q, jnp.ones((2, 1, 8), bool), scale=1.0, causal=True, target=target)
