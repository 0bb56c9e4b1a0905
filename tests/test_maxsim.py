"""Late-interaction (MaxSim) scoring and search against sentence-transformers' util.maxsim family.

Every expected number is computed by sentence-transformers in the same test: ragged inputs, masks,
an all-masked and a zero-token document, length normalization. The 8-device sharded search runs in a
fresh process (``--xla_force_host_platform_device_count=8``), as in test_sharded_search.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_same_hits
from sentence_transformers import util as st_util

from jaxst import maxsim as M

DIM = 24


def ragged(rng, n, lo, hi, dim=DIM):
    return [rng.standard_normal((int(rng.integers(lo, hi)), dim)).astype(np.float32) for _ in range(n)]


def torch_list(items):
    return [torch.from_numpy(x) for x in items]


def assert_close(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    assert np.all(np.abs(ours - ref) <= 1e-5 * np.maximum(1.0, np.abs(ref))), np.max(np.abs(ours - ref))


def st_hits(scores: torch.Tensor, k: int) -> list[list[dict]]:
    values, ids = torch.topk(scores, k, dim=1)
    return [[{"corpus_id": i, "score": v} for v, i in zip(vr, ir)] for vr, ir in zip(values.tolist(), ids.tolist())]


@pytest.fixture(scope="module")
def inputs():
    """Queries and documents as ragged lists and padded (array, mask) forms; document 3 has no token,
    document 5 only masked ones (padded form), query 2 a float mask with a zero entry."""
    rng = np.random.default_rng(0)
    queries = ragged(rng, 9, 1, 9)
    docs = ragged(rng, 40, 1, 14)
    docs[3] = np.zeros((0, DIM), np.float32)
    docs[7] = -queries[0][:2]  # real similarities all negative for some query tokens: padding must not win
    q_emb, q_mask = M.pad_multi_vectors(queries)
    d_emb, d_mask = M.pad_multi_vectors(docs)
    d_mask = d_mask.copy()
    d_mask[5] = False
    q_mask = q_mask.astype(np.float32)
    q_mask[2, 0] = 0.0
    return queries, docs, q_emb, q_mask, d_emb, d_mask


@pytest.mark.parametrize("chunk_elements", [None, 300])
@pytest.mark.parametrize("length_normalize", [False, True])
def test_maxsim_matches_sentence_transformers(inputs, chunk_elements, length_normalize):
    queries, docs, q_emb, q_mask, d_emb, d_mask = inputs
    kw = dict(chunk_elements=chunk_elements, length_normalize=length_normalize)
    # ragged lists
    ref = st_util.maxsim(torch_list(queries), torch_list(docs), length_normalize=length_normalize)
    ours = M.maxsim(queries, docs, **kw)
    assert isinstance(ours, jax.Array) and ours.dtype == jnp.float32
    assert_close(ours, ref)
    assert ref[0, 3] < -1e8 / 8 and ref[:, 7].min() < 0  # the empty document's sentinel; negative maxima
    # padded with masks (bool documents, float queries): every input form is the same function
    ref = st_util.maxsim(torch.from_numpy(q_emb), torch.from_numpy(d_emb), torch.from_numpy(q_mask),
                         torch.from_numpy(d_mask), length_normalize=length_normalize)
    assert_close(M.maxsim(q_emb, d_emb, q_mask, d_mask, **kw), ref)
    assert_close(M.maxsim(jnp.asarray(q_emb), jnp.asarray(d_emb), jnp.asarray(q_mask), jnp.asarray(d_mask), **kw),
                 ref)
    mean = st_util.mean_maxsim(torch.from_numpy(q_emb), torch.from_numpy(d_emb), torch.from_numpy(q_mask),
                               torch.from_numpy(d_mask))
    assert_close(M.mean_maxsim(q_emb, d_emb, q_mask, d_mask, chunk_elements=chunk_elements), mean)
    # padded without masks: all-zero token rows are padding (sentence-transformers' zero-row mask)
    ref = st_util.maxsim(torch.from_numpy(q_emb), torch.from_numpy(d_emb), length_normalize=length_normalize)
    assert_close(M.maxsim(q_emb, d_emb, **kw), ref)
    assert_close(M.maxsim(queries, docs, **kw), M.maxsim(*M.pad_multi_vectors(queries)[:1], d_emb, **kw))
    # pairwise
    pairs_q, pairs_d = queries * 4, docs[:36]
    ref = st_util.maxsim_pairwise(torch_list(pairs_q), torch_list(pairs_d), length_normalize=length_normalize)
    assert_close(M.maxsim_pairwise(pairs_q, pairs_d, **kw), ref)
    qe, qm = M.pad_multi_vectors(pairs_q)
    de, dm = d_emb[:36], d_mask[:36]
    ref = st_util.maxsim_pairwise(torch.from_numpy(qe), torch.from_numpy(de), torch.from_numpy(qm),
                                  torch.from_numpy(dm), length_normalize=length_normalize)
    assert_close(M.maxsim_pairwise(qe, de, qm, dm, **kw), ref)
    mean = st_util.mean_maxsim_pairwise(torch.from_numpy(qe), torch.from_numpy(de), torch.from_numpy(qm),
                                        torch.from_numpy(dm))
    assert_close(M.mean_maxsim_pairwise(qe, de, qm, dm, chunk_elements=chunk_elements), mean)


def test_single_inputs_and_edge_shapes(inputs):
    queries, docs, *_ = inputs
    ref = st_util.maxsim(torch.from_numpy(queries[1]), torch_list(docs[:6]))
    assert_close(M.maxsim(queries[1], docs[:6]), ref)  # one (tokens, dim) query: a batch of one
    one_mask = np.array([True, False, True] + [False] * (queries[4].shape[0] - 3))
    ref = st_util.maxsim(torch.from_numpy(queries[4]), torch_list(docs[:6]), a_mask=torch.from_numpy(one_mask))
    assert_close(M.maxsim(queries[4], docs[:6], a_mask=one_mask), ref)
    empty_docs = [np.zeros((0, DIM), np.float32)] * 3  # no document has a token
    ref = st_util.maxsim(torch_list(queries[:2]), torch_list(empty_docs), length_normalize=True)
    assert_close(M.maxsim(queries[:2], empty_docs, length_normalize=True), ref)
    assert M.maxsim(queries[:2], []).shape == (2, 0) and M.maxsim_pairwise([], []).shape == (0,)
    # jax items pad on device to the same arrays as numpy ones
    on_device = M.pad_multi_vectors([jnp.asarray(x) for x in docs[:8]])
    on_host = M.pad_multi_vectors(docs[:8])
    assert isinstance(on_device[0], jax.Array) and isinstance(on_host[0], np.ndarray)
    np.testing.assert_array_equal(np.asarray(on_device[0]), on_host[0])
    np.testing.assert_array_equal(np.asarray(on_device[1]), on_host[1])


@pytest.fixture(scope="module")
def corpus():
    """500 ragged documents (a few all-masked) and 12 queries, padded, with sentence-transformers' scores."""
    rng = np.random.default_rng(1)
    docs = ragged(rng, 500, 1, 25)
    queries = [d[: max(1, len(d) // 2)] + 0.3 * rng.standard_normal((max(1, len(d) // 2), DIM)).astype(np.float32)
               for d in docs[:12]]
    q_emb, q_mask = M.pad_multi_vectors(queries)
    d_emb, d_mask = M.pad_multi_vectors(docs)
    d_mask[[10, 200]] = False
    scores = st_util.maxsim(torch.from_numpy(q_emb), torch.from_numpy(d_emb), torch.from_numpy(q_mask),
                            torch.from_numpy(d_mask))
    counts = torch.from_numpy(q_mask).sum(dim=1, keepdim=True).float()
    mean_scores = st_util.mean_maxsim(torch.from_numpy(q_emb), torch.from_numpy(d_emb), torch.from_numpy(q_mask),
                                      torch.from_numpy(d_mask))
    assert torch.allclose(mean_scores, scores / counts)
    return q_emb, q_mask, d_emb, d_mask, scores, mean_scores


def spy_scans(monkeypatch):
    """Record (corpus rows, rows per scan step) of every chunked_top_k call maxsim_search makes."""
    calls = []
    real = M.chunked_top_k

    def spy(queries, corpus, *args, **kwargs):
        calls.append((corpus[0].shape[0], kwargs["chunk"]))
        return real(queries, corpus, *args, **kwargs)

    monkeypatch.setattr(M, "chunked_top_k", spy)
    return calls


def test_maxsim_search_chunked(corpus, monkeypatch):
    q_emb, q_mask, d_emb, d_mask, scores, mean_scores = corpus
    calls = spy_scans(monkeypatch)
    per_step = q_emb.shape[0] * q_emb.shape[1] * d_emb.shape[1] * 60  # about 60 documents per scan step
    on_device = (jnp.asarray(d_emb), jnp.asarray(d_mask))
    ref = st_hits(scores, 5)
    assert_same_hits(M.maxsim_search(q_emb, on_device[0], q_mask, on_device[1], top_k=5, chunk_elements=per_step), ref,
                     scores)
    assert calls == [(500, 60)]  # one compiled scan of ceil(500 / 60) = 9 chunks
    hits = M.maxsim_search(q_emb, on_device[0], q_mask, on_device[1], top_k=5, chunk_elements=per_step,
                           length_normalize=True, query_chunk_size=5)
    assert_same_hits(hits, st_hits(mean_scores, 5), mean_scores)
    assert len(calls) == 4  # three query chunks


def test_maxsim_search_streamed_host_corpus(corpus, monkeypatch):
    q_emb, q_mask, d_emb, d_mask, scores, _ = corpus
    calls = spy_scans(monkeypatch)
    hits = M.maxsim_search(q_emb, d_emb, q_mask, d_mask, top_k=5, corpus_chunk_size=128,
                           chunk_elements=q_emb.shape[0] * q_emb.shape[1] * d_emb.shape[1] * 50)
    assert_same_hits(hits, st_hits(scores, 5), scores)
    assert calls == [(128, 50)] * 4  # four pieces of 128 documents, the last aligned to the corpus' end
    # a ragged list corpus is padded on the host and streamed the same way
    lists = [e[m] for e, m in zip(d_emb, d_mask)]
    lists[10] = lists[200] = np.zeros((0, DIM), np.float32)
    assert_same_hits(M.maxsim_search(q_emb, lists, q_mask, top_k=5, corpus_chunk_size=300), st_hits(scores, 5),
                     scores)
    assert len(calls) == 6


def test_two_stage_search(corpus):
    q_emb, q_mask, d_emb, d_mask, scores, mean_scores = corpus
    exact = M.maxsim_search(q_emb, d_emb, q_mask, d_mask, top_k=5)
    assert_same_hits(exact, st_hits(scores, 5), scores)
    assert_same_hits(M.maxsim_search(q_emb, d_emb, q_mask, d_mask, top_k=5, candidates=500), st_hits(scores, 5),
                     scores)
    assert_same_hits(M.maxsim_search(q_emb, d_emb, q_mask, d_mask, top_k=5, candidates=600, chunk_elements=5000,
                                     corpus_chunk_size=90, length_normalize=True), st_hits(mean_scores, 5),
                     mean_scores)
    vectors = M.mean_vectors(jnp.asarray(d_emb), jnp.asarray(d_mask))
    assert vectors.shape == (500, DIM)
    np.testing.assert_allclose(np.asarray(vectors), M.mean_vectors(d_emb, d_mask), atol=1e-6)
    two_stage = M.maxsim_search(q_emb, jnp.asarray(d_emb), q_mask, jnp.asarray(d_mask), top_k=5, candidates=30,
                                corpus_vectors=vectors)
    assert all(len(row) == 5 for row in two_stage)
    for row in two_stage:  # the scores of whatever it found are exact
        for h in row:
            assert abs(h["score"] - scores[two_stage.index(row), h["corpus_id"]].item()) < 1e-5 * abs(h["score"])
    recall = M.recall_at_k(two_stage, exact, 5)
    assert 0.0 <= recall <= 1.0
    assert M.recall_at_k(two_stage, exact, 1) > 0.8  # the queries are noisy halves of documents 0-11
    assert M.maxsim_recall(q_emb, d_emb, q_mask, d_mask, top_k=5, candidates=30) == pytest.approx(recall)
    # an exact top-5 document among the candidates is always reranked into the top 5: recall grows with N
    more = M.maxsim_recall(q_emb, d_emb, q_mask, d_mask, top_k=5, candidates=150)
    assert recall <= more <= 1.0
    assert M.maxsim_recall(q_emb, d_emb, q_mask, d_mask, top_k=5, candidates=500) == 1.0
    assert M.recall_at_k(exact, exact) == 1.0


def test_bad_input(corpus):
    q_emb, q_mask, d_emb, d_mask, *_ = corpus
    with pytest.raises(ValueError, match="query dim 24 != corpus dim 16"):
        M.maxsim_search(q_emb, d_emb[..., :16], q_mask, d_mask)
    with pytest.raises(ValueError, match="query dim 24 != document dim 16"):
        M.maxsim(q_emb, d_emb[..., :16])
    with pytest.raises(ValueError, match="`corpus_mask` covers 5 tokens, but the padded embeddings have 24"):
        M.maxsim_search(q_emb, d_emb, q_mask, d_mask[:, :5])
    with pytest.raises(ValueError, match="`corpus_mask` has 3 rows, but there are 500"):
        M.maxsim_search(q_emb, d_emb, q_mask, d_mask[:3])
    with pytest.raises(ValueError, match="`b_mask` must be"):
        M.maxsim(q_emb, d_emb, b_mask=d_mask[None])
    for top_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            M.maxsim_search(q_emb, d_emb, top_k=top_k)
    with pytest.raises(ValueError, match="candidates must be a positive integer"):
        M.maxsim_search(q_emb, d_emb, candidates=0)
    with pytest.raises(ValueError, match="corpus_vectors has shape"):
        M.maxsim_search(q_emb, d_emb, candidates=5, corpus_vectors=np.zeros((3, DIM), np.float32))
    with pytest.raises(ValueError, match="same number of items"):
        M.maxsim_pairwise(q_emb, d_emb)
    with pytest.raises(ValueError, match=r"multi-vector embeddings must be \(n, tokens, dim\)"):
        M.maxsim(q_emb[None], d_emb)
    with pytest.raises(ValueError, match="item 1 has dim 3, but item 0 has 24"):
        M.pad_multi_vectors([d_emb[0], np.zeros((2, 3), np.float32)])
    assert M.maxsim_search(q_emb, d_emb[:0], top_k=3) == [[] for _ in range(len(q_emb))]


SHARDED = textwrap.dedent('''
    import json, sys
    import numpy as np
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxst import maxsim as M

    assert len(jax.devices()) == 8, jax.devices()
    data = np.load(sys.argv[1])
    q_emb, q_mask, d_emb, d_mask = (data[k] for k in ("q_emb", "q_mask", "d_emb", "d_mask"))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = NamedSharding(mesh, P("data"))
    sharded = jax.device_put(d_emb, rows), jax.device_put(d_mask, rows)
    assert len(sharded[0].sharding.device_set) == 8
    assert M._Corpus(*sharded, None).kind == "sharded" and M._Corpus(d_emb, d_mask, 100).kind == "host"
    one = jnp.asarray(d_emb), jnp.asarray(d_mask)
    step = q_emb.shape[0] * q_emb.shape[1] * d_emb.shape[1] * 20  # 20 documents per scan step: 4 per shard
    out = {}
    for name, (emb, mask) in (("one", one), ("sharded", sharded)):
        out[name] = {
            "exact": M.maxsim_search(q_emb, emb, q_mask, mask, top_k=5, chunk_elements=step),
            "mean": M.maxsim_search(q_emb, emb, q_mask, mask, top_k=5, chunk_elements=step, length_normalize=True),
            "two_stage": M.maxsim_search(q_emb, emb, q_mask, mask, top_k=5, candidates=len(d_emb)),
            "few": M.maxsim_search(q_emb, emb, q_mask, mask, top_k=5, candidates=40, chunk_elements=50_000),
            "zero_rows": M.maxsim_search(q_emb, emb, q_mask, top_k=5),  # mask from the (sharded) zero rows
        }
    print("RESULT" + json.dumps(out))
''')


def test_sharded_search_equals_one_device(corpus, tmp_path):
    q_emb, q_mask, d_emb, d_mask, scores, mean_scores = corpus
    n = 496  # whole rows per device
    d_emb = d_emb[:n] * d_mask[:n, :, None]  # masked rows zeroed: the zero-row mask is the explicit one
    np.savez(tmp_path / "data.npz", q_emb=q_emb, q_mask=q_mask, d_emb=d_emb, d_mask=d_mask[:n])
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path / "data.npz")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    ref, ref_mean = st_hits(scores[:, :n], 5), st_hits(mean_scores[:, :n], 5)
    for name in ("one", "sharded"):
        got = result[name]
        for key in ("exact", "two_stage", "zero_rows"):
            assert_same_hits(got[key], ref, scores[:, :n])
        assert_same_hits(got["mean"], ref_mean, mean_scores[:, :n])
    for key, hits in result["one"].items():
        assert [[h["corpus_id"] for h in row] for row in result["sharded"][key]] == \
            [[h["corpus_id"] for h in row] for row in hits], key
