"""The native int8 top-k kernel (jaxst.native) against XLA's int8 scan: the same scores and ids, ties included."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from jaxst import native, search, topk
from jaxst.index import EmbeddingIndex

# (queries, rows, dim, k, value range, n_valid, first, offset): tiles of every shape, partial blocks,
# ragged bounds, heavy ties (tiny value ranges), dims with and without whole 64-byte transposes.
CASES = [
    (100, 5000, 384, 10, 127, 5000, 0, 0),
    (7, 1001, 8, 13, 2, 997, 5, 40),
    (25, 333, 4, 50, 1, 333, 0, 0),
    (1, 70000, 384, 40, 127, 69999, 17, 3),
    (49, 4096, 768, 100, 3, 4000, 100, 0),
    (24, 2000, 1024, 5, 127, 1990, 0, 7),
    (3, 40, 68, 40, 1, 40, 0, 0),  # k = every row
]


BUILDS = ["portable", "vnni"]


def _target(build):
    """The portable build runs everywhere; the AVX-512 VNNI build wherever the CPU has it, else a skip that
    says so."""
    if build == "vnni" and not native.has_vnni():
        pytest.skip("the AVX-512 VNNI build: this CPU has no AVX-512 VNNI (the portable build is tested)")
    return native.register(vnni=build == "vnni")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"q{c[0]}-n{c[1]}-d{c[2]}-k{c[3]}")
@pytest.mark.parametrize("build", BUILDS)
def test_kernel_equals_xla_scan(case, build):
    q_n, n, d, k, spread, n_valid, first, offset = case
    rng = np.random.default_rng(n + d)
    queries = jnp.asarray(rng.integers(-127, 128, (q_n, d), dtype=np.int8))
    corpus = jnp.asarray(rng.integers(-spread, spread + 1, (n, d), dtype=np.int8))
    want = topk.xla_chunked_top_k(queries, corpus, n_valid, first, offset, k=k, kind="int8", chunk=1024)
    if spread <= 3:  # the case really has ties at the k-th place
        assert len(np.unique(np.asarray(want[0]))) < want[0].size
    target = _target(build)
    values, ids = native.int8_top_k(queries, corpus, n_valid, first, offset, k=k, target=target)
    assert values.dtype == jnp.float32 and ids.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want[0]), err_msg=target)
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(want[1]), err_msg=target)


@pytest.mark.parametrize("build", BUILDS)
def test_extreme_values_are_exact(build):
    """-128 corpus levels against -127/127 queries: the largest sums the kernel can meet, exact in float32."""
    d = 1024
    corpus = np.full((64, d), -128, np.int8)
    corpus[5] = 127
    queries = np.stack([np.full(d, -127, np.int8), np.full(d, 127, np.int8)])
    want = topk.xla_chunked_top_k(jnp.asarray(queries), jnp.asarray(corpus), 64, k=3, kind="int8", chunk=64)
    target = _target(build)
    values, ids = native.int8_top_k(jnp.asarray(queries), jnp.asarray(corpus), 64, k=3, target=target)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(want[0]))
    np.testing.assert_array_equal(np.asarray(ids), np.asarray(want[1]))
    assert float(values[0, 0]) == 127 * 128 * d


def spy_kernel(monkeypatch, target: str | None) -> list:
    """Route jaxst.search's int8 scans to ``target`` (None: XLA's scan, as without a usable kernel) and record
    the target of every ``native.int8_top_k`` call."""
    calls = []
    real = native.int8_top_k
    monkeypatch.setattr(native, "int8_kernel", lambda: target)
    monkeypatch.setattr(native, "int8_top_k", lambda *a, **kw: calls.append(kw["target"]) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("build", BUILDS)
def test_index_search_through_each_kernel_equals_xla(monkeypatch, build):
    """An int8 EmbeddingIndex searched through the kernel (the portable build on every CPU, the VNNI build
    where the CPU has it) gives XLA's scan's hits and scores exactly."""
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((3000, 64)).astype(np.float32)
    queries = rng.standard_normal((9, 64)).astype(np.float32)
    index = EmbeddingIndex(64, precision="int8", ranges=np.stack([emb.min(0), emb.max(0)]))
    index.add(emb)
    with monkeypatch.context() as m:
        calls = spy_kernel(m, None)
        plain = index.search(queries, top_k=10, rescore_multiplier=None)
        assert not calls
    target = _target(build)
    with monkeypatch.context() as m:
        calls = spy_kernel(m, target)
        fast = index.search(queries, top_k=10, rescore_multiplier=None)
    assert calls == [target]
    assert [[h["corpus_id"] for h in row] for row in fast] == [[h["corpus_id"] for h in row] for row in plain]
    np.testing.assert_array_equal([[h["score"] for h in row] for row in fast],
                                  [[h["score"] for h in row] for row in plain])


def test_the_vnni_build_is_chosen_only_where_the_cpu_has_it(monkeypatch):
    """int8_kernel(): the VNNI build on AVX-512 VNNI CPUs, else None (the search then takes XLA's dot);
    ``JAXST_NATIVE=0`` turns it off everywhere."""
    calls = []
    real = native.int8_top_k
    monkeypatch.setattr(native, "int8_top_k", lambda *a, **kw: calls.append(kw["target"]) or real(*a, **kw))
    rng = np.random.default_rng(4)
    queries = jnp.asarray(rng.integers(-127, 128, (3, 16), dtype=np.int8))
    corpus = jnp.asarray(rng.integers(-127, 128, (500, 16), dtype=np.int8))
    want = topk.xla_chunked_top_k(queries, corpus, 500, k=4, kind="int8", chunk=128)
    native.int8_kernel.cache_clear()
    try:
        expected = native.TARGET if native.has_vnni() else None
        assert native.int8_kernel() == expected
        got = search.chunked_top_k(queries, corpus, 500, k=4, kind="int8", chunk=128)
        assert calls == ([expected] if expected else [])
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        # AVX-512 without VNNI (e.g. Skylake-SP): no kernel, whatever this CPU has.
        monkeypatch.setattr(native, "cpu_flags", lambda: set(native.VNNI_FLAGS) - {"avx512_vnni"})
        native.int8_kernel.cache_clear()
        assert not native.has_vnni() and native.int8_kernel() is None
        calls.clear()
        got = search.chunked_top_k(queries, corpus, 500, k=4, kind="int8", chunk=128)
        assert not calls
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
        monkeypatch.undo()
        monkeypatch.setenv(native.ENV, "0")
        native.int8_kernel.cache_clear()
        assert native.int8_kernel() is None
    finally:
        native.int8_kernel.cache_clear()


def test_bad_shapes_raise():
    target = native.register(vnni=False)
    q = jnp.zeros((2, 6), jnp.int8)
    with pytest.raises(ValueError, match="D % 4"):
        native.int8_top_k(q, jnp.zeros((10, 6), jnp.int8), 10, k=2, target=target)
    with pytest.raises(ValueError, match="k <= rows"):
        native.int8_top_k(jnp.zeros((2, 8), jnp.int8), jnp.zeros((10, 8), jnp.int8), 10, 5, k=6, target=target)
    with pytest.raises(ValueError, match="int8"):
        native.int8_top_k(jnp.zeros((2, 8), jnp.float32), jnp.zeros((10, 8), jnp.int8), 10, k=2, target=target)


def test_build_is_cached_and_atomic(tmp_path):
    first = native.build(vnni=False, directory=tmp_path)
    stamp = first.stat().st_mtime_ns
    again = native.build(vnni=False, directory=tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


def test_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    """A failed build warns once and leaves the search on XLA's scan. The VNNI build is only attempted on
    VNNI CPUs, so the probe is made to say so: with the compiler failing, no VNNI code ever runs."""
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="failed"):
        native.build(vnni=False)
    assert not list(tmp_path.iterdir())  # the failed build left nothing
    monkeypatch.setattr(native, "has_vnni", lambda: True)
    native.int8_kernel.cache_clear()
    registered = native._registered.pop(native.TARGET, None)
    calls = []
    real = native.int8_top_k
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.int8_kernel() is None
        assert any("native int8 search kernel is unavailable" in str(w.message) for w in caught)
        assert not list(tmp_path.iterdir())
        monkeypatch.setattr(native, "int8_top_k", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        queries = jnp.asarray(np.random.default_rng(6).integers(-127, 128, (2, 8), dtype=np.int8))
        corpus = jnp.asarray(np.random.default_rng(7).integers(-127, 128, (300, 8), dtype=np.int8))
        got = search.chunked_top_k(queries, corpus, 300, k=5, kind="int8", chunk=64)
        want = topk.xla_chunked_top_k(queries, corpus, 300, k=5, kind="int8", chunk=64)
        assert not calls
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
    finally:
        monkeypatch.undo()
        native.int8_kernel.cache_clear()
        if registered is not None:
            native._registered[native.TARGET] = registered
    assert native.int8_kernel() == (native.TARGET if native.has_vnni() else None)  # from the real cache again


@pytest.mark.parametrize("build", BUILDS)
def test_streamed_search_through_each_kernel(monkeypatch, build):
    """The host-streamed scan (pieces with first/offset) through the kernel, portable build on every CPU and
    VNNI build where the CPU has it, gives the device-resident XLA scan's hits."""
    rng = np.random.default_rng(5)
    corpus = rng.integers(-4, 5, (5000, 32), dtype=np.int8)
    queries = jnp.asarray(rng.integers(-127, 128, (6, 32), dtype=np.int8))
    want = topk.xla_chunked_top_k(queries, jnp.asarray(corpus), 5000, k=7, kind="int8", chunk=512)
    assert len(np.unique(np.asarray(want[0]))) < want[0].size  # tied scores, resolved to the lower row
    target = _target(build)
    with monkeypatch.context() as m:
        calls = spy_kernel(m, target)
        got = search.streamed_top_k(queries, corpus, 5000, k=7, kind="int8", chunk=512, piece=1500)
    assert len(calls) >= 4 and set(calls) == {target}  # every piece of 5000 rows, 1500 at a time
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]), err_msg=target)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]), err_msg=target)
