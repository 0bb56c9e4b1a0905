"""Hostile inputs to every search: non-finite embeddings are refused, never searched (``jaxst.search``'s rule).

A NaN or +-inf in a query or corpus row used to take a top-k slot and then be dropped with the real hit
it displaced; one NaN in an int8 index's first ``add`` made its calibration ranges NaN and emptied every
later search. Each entry point (``util.semantic_search`` dense / streamed / sparse, ``EmbeddingIndex`` at
every precision with and without rescoring, streamed and sharded, ``SparseEmbeddingIndex``,
``maxsim_search`` exact and two-stage, ``paraphrase_mining``, ``community_detection``) must raise a
ValueError naming the argument and the first offending row, store nothing on a refused ``add``, and,
once the bad row is gone, return sentence-transformers' hits: ``min(top_k, rows)`` of them, ids unique,
each score the oracle's score of that id. The sharded paths run in a fresh process with 8 forced CPU
devices, as in test_sharded_search.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import assert_same_hits
from jax.experimental import sparse as jsparse
from sentence_transformers import util as st_util

from jaxst import maxsim as M
from jaxst import util
from jaxst.index import EmbeddingIndex, SparseEmbeddingIndex
from jaxst.quantization import quantize_embeddings

DIM = 16
N = 40
BAD = 7  # the poisoned corpus row
BAD_VALUES = [np.nan, np.inf, -np.inf]
PRECISIONS = ("float32", "bfloat16", "int8", "uint8", "binary", "ubinary")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(30)
    corpus = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((5, DIM)).astype(np.float32)
    return queries, corpus


def poisoned(x, row, value, col=3):
    x = x.copy()
    x[row, col] = value
    return x


def refused(name, row):
    """pytest.raises for the rule's error: the argument and the first offending row named."""
    return pytest.raises(ValueError, match=rf"{re.escape(name)} row {row} holds NaN or inf")


def assert_strict(got, scores, top_k, tol=1e-5):
    """``got`` (hits per query) against the oracle's score matrix ``scores`` (Q, N): conftest's strict
    comparison (min(top_k, N) hits, ids unique, each hit's score the oracle's score of that id, rank by rank
    the oracle's best scores, so the ids are the oracle's except where its scores tie)."""
    scores = np.asarray(scores, np.float64)
    want = min(top_k, scores.shape[1])
    best = [[(int(i), float(ref[i])) for i in np.argsort(-ref, kind="stable")[:want]] for ref in scores]
    assert_same_hits(got, best, scores, tol=tol)


def assert_st_hits(got, queries, corpus, top_k, score_function=st_util.cos_sim):
    """The strict comparison with sentence-transformers' own ``util.semantic_search`` on the same arrays."""
    q, c = torch.from_numpy(np.asarray(queries, np.float32)), torch.from_numpy(np.asarray(corpus, np.float32))
    ref = st_util.semantic_search(q, c, top_k=top_k, score_function=score_function)
    scores = score_function(q, c).numpy()
    assert_strict(got, scores, top_k)
    assert_same_hits(got, ref, scores)  # ST's own hits, rank by rank


def unaligned(x):
    """A float32 copy the CPU device cannot alias: ``semantic_search`` streams it from host memory."""
    buf = np.empty(x.size + 1, np.float32)
    out = buf[1:].reshape(x.shape)
    out[...] = x
    return out


# ------------------------------------------------------------------------------ util.semantic_search


CORPUS_FORMS = {
    "device": lambda c: jnp.asarray(c),
    "host_streamed": lambda c: unaligned(c),
}


@pytest.mark.parametrize("form", CORPUS_FORMS)
@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("score_function", [util.cos_sim, util.dot_score])
def test_semantic_search_refuses_nonfinite_corpus_row(data, form, value, score_function):
    queries, corpus = data
    bad = poisoned(corpus, BAD, value)
    bad[BAD + 20, 0] = np.nan  # a later bad row: the first is named
    with refused("corpus_embeddings", BAD):
        util.semantic_search(queries, CORPUS_FORMS[form](bad), top_k=1, corpus_chunk_size=16,
                             score_function=score_function)
    with refused("corpus_embeddings", BAD):  # however many hits are asked for
        util.semantic_search(queries, CORPUS_FORMS[form](bad), top_k=N + 5, score_function=score_function)


@pytest.mark.parametrize("value", BAD_VALUES)
def test_semantic_search_refuses_nonfinite_query(data, value):
    queries, corpus = data
    with refused("query_embeddings", 3):
        util.semantic_search(poisoned(queries, 3, value), corpus, top_k=1, query_chunk_size=2)
    with refused("query_embeddings", 0):
        util.semantic_search(poisoned(queries[:1], 0, value, col=5)[0], corpus, top_k=1)  # one 1-D query


def test_semantic_search_custom_score_function_refuses_nonfinite_corpus(data):
    queries, corpus = data
    with refused("corpus_embeddings", BAD):
        util.semantic_search(queries, poisoned(corpus, BAD, np.nan), top_k=2,
                             score_function=lambda q, c: -jnp.sum(jnp.abs(q[:, None] - c[None]), axis=-1))


@pytest.mark.parametrize("form", CORPUS_FORMS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_semantic_search_refuses_score_overflow(data, form, sign):
    """A finite corpus whose dot score overflows float32 (to +inf or -inf) is refused, not ranked or dropped."""
    queries, corpus = data
    huge = corpus.copy()
    huge[BAD] = sign * 3e38 * np.sign(queries[1])
    with pytest.raises(ValueError, match=rf"score of query \d and corpus_embeddings row {BAD} is not finite"):
        util.semantic_search(queries, CORPUS_FORMS[form](huge), top_k=3, score_function=util.dot_score)


@pytest.mark.parametrize("form", CORPUS_FORMS)
@pytest.mark.parametrize("score_function", [st_util.cos_sim, st_util.dot_score])
@pytest.mark.parametrize("top_k", [1, N + 5])
def test_semantic_search_without_the_bad_row_matches_sentence_transformers(data, form, score_function, top_k):
    queries, corpus = data
    clean = np.delete(corpus, BAD, axis=0)
    ours = {st_util.cos_sim: util.cos_sim, st_util.dot_score: util.dot_score}[score_function]
    got = util.semantic_search(queries, CORPUS_FORMS[form](clean), top_k=top_k, corpus_chunk_size=16,
                               query_chunk_size=2, score_function=ours)
    assert_st_hits(got, queries, clean, top_k, score_function)


# ------------------------------------------------------------------------------ sparse semantic_search


def csr(dense):
    """A scipy sparse matrix: the stored (nonzero) values are what a search reads and checks."""
    import scipy.sparse

    return scipy.sparse.csr_matrix(dense)


def sparse_data(rng):
    dense = np.where(rng.random((N, 64)) < 0.2, rng.random((N, 64)), 0).astype(np.float32)
    queries = np.where(rng.random((4, 64)) < 0.3, rng.random((4, 64)), 0).astype(np.float32)
    return queries, dense


@pytest.mark.parametrize("value", BAD_VALUES)
def test_sparse_semantic_search_refuses_nonfinite(value):
    queries, corpus = sparse_data(np.random.default_rng(1))
    bad = corpus.copy()
    bad[BAD, np.flatnonzero(bad[BAD])[0]] = value  # a stored value
    with refused("corpus_embeddings", BAD):
        util.semantic_search(csr(queries), csr(bad), top_k=1)
    badq = queries.copy()
    badq[2, np.flatnonzero(badq[2])[0]] = value
    with refused("query_embeddings", 2):
        util.semantic_search(csr(badq), csr(corpus), top_k=1)


def test_sparse_padding_slot_values_are_not_the_embedding():
    """A value a BCOO keeps at an index outside the vocabulary is padding (``todense`` drops it): it is
    neither scored nor refused."""
    queries, corpus = sparse_data(np.random.default_rng(2))
    c = jsparse.BCOO.fromdense(corpus, n_batch=1)
    data_, indices = np.array(c.data), np.array(c.indices)
    pad = indices[..., 0] == 64
    assert pad.any()
    data_[pad] = np.nan
    poisoned_padding = jsparse.BCOO((jnp.asarray(data_), jnp.asarray(indices)), shape=c.shape)
    for score_function, st_fn in ((util.dot_score, st_util.dot_score), (util.cos_sim, st_util.cos_sim)):
        got = util.semantic_search(csr(queries), poisoned_padding, top_k=5,
                                   score_function=score_function)
        assert_st_hits(got, queries, corpus, 5, st_fn)


@pytest.mark.parametrize("top_k", [3, N + 5])
def test_sparse_semantic_search_without_the_bad_row_matches_sentence_transformers(top_k):
    queries, corpus = sparse_data(np.random.default_rng(3))
    clean = np.delete(corpus, BAD, axis=0)
    for score_function, st_fn in ((util.dot_score, st_util.dot_score), (util.cos_sim, st_util.cos_sim)):
        got = util.semantic_search(csr(queries), csr(clean), top_k=top_k,
                                   score_function=score_function)
        assert_st_hits(got, queries, clean, top_k, st_fn)


# ------------------------------------------------------------------------------ EmbeddingIndex


INDEX_LAYOUTS = {"device": {}, "streamed": {"max_device_rows": 16}}


@pytest.mark.parametrize("layout", INDEX_LAYOUTS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_index_add_refuses_nonfinite_rows_and_stores_nothing(data, layout, precision):
    queries, corpus = data
    index = EmbeddingIndex(DIM, precision=precision, chunk_size=8, **INDEX_LAYOUTS[layout])
    for value in BAD_VALUES:
        with refused("embeddings", BAD):
            index.add(poisoned(corpus, BAD, value), texts=[str(i) for i in range(N)])
        assert len(index) == 0 and index.ranges is None and index.texts is None
        assert index.search(queries, top_k=3) == [[] for _ in queries]
    clean = np.delete(corpus, BAD, axis=0)
    index.add(clean[:20])
    with refused("embeddings", 2):  # a later add is refused too, and leaves the first intact
        index.add(poisoned(clean[20:], 2, np.nan))
    assert len(index) == 20
    index.add(clean[20:])
    fresh = EmbeddingIndex(DIM, precision=precision, chunk_size=8, **INDEX_LAYOUTS[layout])
    fresh.add(clean[:20])
    fresh.add(clean[20:])
    for rescore in (None, 4):
        for top_k in (1, N + 5):
            got = index.search(queries, top_k=top_k, rescore_multiplier=rescore)
            assert got == fresh.search(queries, top_k=top_k, rescore_multiplier=rescore)  # the refusal left no trace
            assert all(len(row) == min(top_k, len(clean)) and len({h["corpus_id"] for h in row}) == len(row)
                       for row in got)
            with refused("queries", 1):
                index.search(poisoned(queries, 1, np.nan), top_k=top_k, rescore_multiplier=rescore)
            with refused("queries", 0):
                index.search(poisoned(queries[:1], 0, -np.inf)[0], top_k=top_k, rescore_multiplier=rescore)


@pytest.mark.parametrize("layout", INDEX_LAYOUTS)
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_float_index_matches_sentence_transformers(data, layout, similarity, precision):
    queries, corpus = data
    clean = np.delete(corpus, BAD, axis=0)
    index = EmbeddingIndex(DIM, precision=precision, similarity=similarity, chunk_size=8, **INDEX_LAYOUTS[layout])
    with refused("embeddings", BAD):
        index.add(poisoned(corpus, BAD, np.nan))
    index.add(clean)
    stored, q = clean, queries
    if similarity == "cosine":  # the index stores normalized rows; the oracle scores them by dot
        stored = clean / np.linalg.norm(clean, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    if precision == "bfloat16":
        stored = stored.astype(ml_dtypes.bfloat16).astype(np.float32)
    for top_k in (1, 10, N + 5):
        assert_st_hits(index.search(queries, top_k=top_k), q, stored, top_k, st_util.dot_score)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_float_index_refuses_score_overflow(data, precision):
    queries, corpus = data
    index = EmbeddingIndex(DIM, precision=precision, similarity="dot")
    huge = corpus.copy()
    huge[BAD] = 3.4e38 * np.sign(queries[0])
    if precision == "bfloat16":  # 3.4e38 rounds past bfloat16's largest finite value: refused at add
        with pytest.raises(ValueError, match=rf"embeddings \(rounded to bfloat16\) row {BAD} holds NaN or inf"):
            index.add(huge)
        huge[BAD] = 1e38 * np.sign(queries[0])
    index.add(huge)
    with pytest.raises(ValueError, match=rf"score of query \d and index row {BAD} is not finite"):
        index.search(queries, top_k=2)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_int8_index_refuses_nonfinite_ranges(data, precision):
    _, corpus = data
    good = np.stack([corpus.min(0), corpus.max(0)])
    for value in BAD_VALUES:
        with pytest.raises(ValueError, match="ranges column 5 is not finite"):
            EmbeddingIndex(DIM, precision=precision, ranges=poisoned(good, 1, value, col=5))
    span = good.copy()
    span[:, 2] = (-3e38, 3e38)  # finite, but max - min overflows: infinite steps
    with pytest.raises(ValueError, match="ranges column 2 is not finite"):
        EmbeddingIndex(DIM, precision=precision, ranges=span)
    wide = corpus.copy()  # the same span found by first-add calibration
    wide[0, 2], wide[1, 2] = -3e38, 3e38
    index = EmbeddingIndex(DIM, precision=precision, similarity="dot")
    with pytest.raises(ValueError, match="calibrated on the first add.. column 2 is not finite"):
        index.add(wide)
    assert len(index) == 0 and index.ranges is None
    index.add(corpus)
    assert np.isfinite(index.ranges).all()
    assert all(len(row) == 4 for row in index.search(corpus[:3], top_k=4))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_quantize_embeddings_refuses_nonfinite_calibration(data, precision):
    _, corpus = data
    good = np.stack([corpus.min(0), corpus.max(0)])
    with pytest.raises(ValueError, match="ranges column 4 is not finite"):
        quantize_embeddings(corpus, precision, ranges=poisoned(good, 0, np.nan, col=4))
    with pytest.raises(ValueError, match="calibration_embeddings row 9 holds NaN or inf"):
        quantize_embeddings(corpus, precision, calibration_embeddings=poisoned(corpus, 9, np.inf))
    ref = quantize_embeddings(corpus, precision, ranges=good)  # valid calls unchanged, ranges winning
    assert np.array_equal(quantize_embeddings(corpus, precision, ranges=good,
                                              calibration_embeddings=poisoned(corpus, 9, np.inf)), ref)


# ------------------------------------------------------------------------------ SparseEmbeddingIndex


@pytest.mark.parametrize("similarity", ["dot", "cosine"])
def test_sparse_index_refuses_nonfinite_and_matches_sentence_transformers(similarity):
    queries, corpus = sparse_data(np.random.default_rng(4))
    index = SparseEmbeddingIndex(64, similarity=similarity)
    for value in BAD_VALUES:
        bad = corpus.copy()
        bad[BAD, np.flatnonzero(bad[BAD])[0]] = value
        with refused("embeddings", BAD):
            index.add(csr(bad), texts=[str(i) for i in range(N)])
        assert len(index) == 0 and index.texts is None
    clean = np.delete(corpus, BAD, axis=0)
    index.add(csr(clean))
    badq = queries.copy()
    badq[1, np.flatnonzero(badq[1])[0]] = np.nan
    with refused("queries", 1):
        index.search(csr(badq))
    st_fn = st_util.dot_score if similarity == "dot" else st_util.cos_sim
    for top_k in (1, 5, N + 5):
        assert_st_hits(index.search(csr(queries), top_k=top_k), queries, clean, top_k, st_fn)


# ------------------------------------------------------------------------------ MaxSim search


def multi_vectors(rng, n, tokens=6):
    return [rng.standard_normal((int(rng.integers(2, tokens)), DIM)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def mv():
    rng = np.random.default_rng(5)
    return multi_vectors(rng, 4), multi_vectors(rng, N)


def padded(items):
    emb, mask = M.pad_multi_vectors(items)
    return emb, mask


MAXSIM_FORMS = {
    "device": {},
    "host_streamed": {"corpus_chunk_size": 16},
    "two_stage": {"candidates": 12},
}


@pytest.mark.parametrize("form", MAXSIM_FORMS)
@pytest.mark.parametrize("value", BAD_VALUES)
def test_maxsim_search_refuses_nonfinite_tokens(mv, form, value):
    queries, corpus = mv
    emb, mask = padded(corpus)
    bad = emb.copy()
    bad[BAD, 0, 3] = value
    qe, qm = padded(queries)
    if form != "host_streamed":
        bad = jnp.asarray(bad)
    with refused("corpus_embeddings", BAD):
        M.maxsim_search(qe, bad, qm, mask, top_k=1, **MAXSIM_FORMS[form])
    masked = emb.copy()  # a masked (padding) token counts too: the whole embedding is the input
    short = int(np.flatnonzero(~mask[:, -1])[0])  # a document shorter than the padded width
    masked[short, -1, 0] = value
    assert not mask[short, -1]
    with refused("corpus_embeddings", short):
        M.maxsim_search(qe, masked, qm, mask, top_k=2, **MAXSIM_FORMS[form])
    badq = qe.copy()
    badq[2, 1, 0] = value
    with refused("query_embeddings", 2):
        M.maxsim_search(badq, emb, qm, mask, top_k=1, **MAXSIM_FORMS[form])


def test_maxsim_search_refuses_nonfinite_corpus_vectors_and_query_mask(mv):
    queries, corpus = mv
    emb, mask = padded(corpus)
    qe, qm = padded(queries)
    vectors = np.array(M.mean_vectors(emb, mask))
    vectors[BAD, 1] = np.nan
    with refused("corpus_vectors", BAD):
        M.maxsim_search(qe, emb, qm, mask, top_k=2, candidates=N, corpus_vectors=vectors)
    weights = qm.astype(np.float32)
    weights[1, 0] = np.inf
    with refused("query_mask", 1):
        M.maxsim_search(qe, emb, weights, mask, top_k=2)


@pytest.mark.parametrize("form", MAXSIM_FORMS)
@pytest.mark.parametrize("top_k", [1, 5, N + 5])
def test_maxsim_search_without_the_bad_row_matches_sentence_transformers(mv, form, top_k):
    queries, corpus = mv
    clean = corpus[:BAD] + corpus[BAD + 1 :]
    scores = st_util.maxsim([torch.from_numpy(x) for x in queries], [torch.from_numpy(x) for x in clean]).numpy()
    emb, mask = padded(clean)
    kwargs = dict(MAXSIM_FORMS[form])
    if "candidates" in kwargs:
        kwargs["candidates"] = len(clean)  # every candidate: the exact hits
    got = M.maxsim_search(padded(queries)[0], emb, padded(queries)[1], mask, top_k=top_k, **kwargs)
    assert_strict(got, scores, top_k)


# ------------------------------------------------------------------------------ paraphrase mining, communities


def test_paraphrase_mining_and_community_detection_refuse_nonfinite(data):
    _, corpus = data
    for value in BAD_VALUES:
        with refused("embeddings", BAD):
            util.paraphrase_mining_embeddings(poisoned(corpus, BAD, value), top_k=3)
        with refused("embeddings", BAD):
            util.community_detection(poisoned(corpus, BAD, value), threshold=0.1, min_community_size=2)
    clean = np.delete(corpus, BAD, axis=0)
    ref = st_util.paraphrase_mining_embeddings(torch.from_numpy(clean), top_k=3)
    got = util.paraphrase_mining_embeddings(clean, top_k=3)
    normed = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    assert len(got) == len(ref) and len({(i, j) for _, i, j in got}) == len(got)
    for (s, i, j), (rs, _, _) in zip(got, ref):  # rank by rank ST's scores; each pair's score its cosine
        assert abs(s - rs) <= 1e-5 and i < j and abs(s - float(normed[i] @ normed[j])) <= 1e-5


# ------------------------------------------------------------------------------ sharded (8 CPU devices)


SHARDED = textwrap.dedent('''
    import json, re
    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxst import util, maxsim as M
    from jaxst.index import EmbeddingIndex

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(8)
    corpus = rng.standard_normal((64, 16)).astype(np.float32)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    out = {}

    def refusal(fn):
        try:
            fn()
        except ValueError as e:
            return str(e)
        return None

    bad = corpus.copy(); bad[37, 2] = np.nan
    out["util_bad"] = refusal(lambda: util.semantic_search(queries, jax.device_put(bad, rows), top_k=1))
    clean = np.delete(corpus, 37, axis=0)[:56]  # whole rows per device
    out["util_clean"] = util.semantic_search(queries, jax.device_put(clean, rows), top_k=5)
    huge = clean.copy(); huge[41] = 3e38 * np.sign(queries[2])
    out["util_overflow"] = refusal(lambda: util.semantic_search(queries, jax.device_put(huge, rows), top_k=2,
                                                                 score_function=util.dot_score))
    out["index"] = {}
    for precision in ("float32", "bfloat16", "int8", "uint8", "binary", "ubinary"):
        index = EmbeddingIndex(16, precision=precision, mesh=mesh, chunk_size=8)
        r = {"add": refusal(lambda: index.add(bad)), "len": len(index)}
        index.add(clean)
        r["query"] = refusal(lambda: index.search(np.where(np.arange(3)[:, None] == 1, np.inf, queries)))
        r["hits"] = [index.search(queries, top_k=k, rescore_multiplier=m) for k in (5, 100) for m in (None, 4)]
        out["index"][precision] = r
    docs = rng.standard_normal((64, 4, 16)).astype(np.float32)
    dmask = np.ones((64, 4), bool)
    qdocs = rng.standard_normal((2, 3, 16)).astype(np.float32)
    bad_docs = docs.copy(); bad_docs[13, 1, 0] = np.inf
    out["maxsim_bad"] = refusal(lambda: M.maxsim_search(qdocs, jax.device_put(bad_docs, rows), None,
                                                         jax.device_put(dmask, rows), top_k=1))
    out["maxsim_bad_two_stage"] = refusal(lambda: M.maxsim_search(qdocs, jax.device_put(bad_docs, rows), None,
                                                                   jax.device_put(dmask, rows), top_k=1,
                                                                   candidates=64))
    out["maxsim_clean"] = M.maxsim_search(qdocs, jax.device_put(docs, rows), None, jax.device_put(dmask, rows),
                                          top_k=70)
    print("RESULT" + json.dumps(out))
''')


def test_sharded_searches_refuse_nonfinite():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT", 1)[1])
    rng = np.random.default_rng(8)
    corpus = rng.standard_normal((64, 16)).astype(np.float32)
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    clean = np.delete(corpus, 37, axis=0)[:56]

    assert "corpus_embeddings row 37 holds NaN or inf" in out["util_bad"]
    assert_st_hits(out["util_clean"], queries, clean, 5)
    assert re.search(r"score of query \d and corpus_embeddings row 41 is not finite", out["util_overflow"])
    for precision, r in out["index"].items():
        assert "embeddings row 37 holds NaN or inf" in r["add"] and r["len"] == 0, precision
        assert "queries row 1 holds NaN or inf" in r["query"], precision
        for hits_, k in zip(r["hits"], (5, 5, 100, 100)):
            assert all(len(row) == min(k, 56) and len({h["corpus_id"] for h in row}) == len(row) for row in hits_)
    normed = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for hits_, k in zip(out["index"]["float32"]["hits"][::2], (5, 100)):
        assert_st_hits(hits_, q, normed, k, st_util.dot_score)
    assert "corpus_embeddings row 13 holds NaN or inf" in out["maxsim_bad"]
    assert "corpus_embeddings row 13 holds NaN or inf" in out["maxsim_bad_two_stage"]
    rng_docs = rng.standard_normal((64, 4, 16)).astype(np.float32)
    rng_q = rng.standard_normal((2, 3, 16)).astype(np.float32)
    scores = st_util.maxsim(torch.from_numpy(rng_q), torch.from_numpy(rng_docs)).numpy()
    assert_strict(out["maxsim_clean"], scores, 70)
