"""Search at scale: util against sentence-transformers, quantized search recall, the persistent index."""

from __future__ import annotations

import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import assert_same_hits, read_stsb
from sentence_transformers import util as st_util

import jaxst
from jaxst import util
from jaxst.index import EmbeddingIndex

rng = np.random.default_rng(42)


def test_pairwise_angle_sim():
    for dim in (16, 15):
        a = rng.standard_normal((9, dim)).astype(np.float32)
        b = rng.standard_normal((9, dim)).astype(np.float32)
        ref = st_util.pairwise_angle_sim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        np.testing.assert_allclose(np.asarray(util.pairwise_angle_sim(a, b)), ref, atol=1e-5)


@pytest.fixture(scope="module")
def big_corpus():
    corpus = rng.standard_normal((50_000, 384)).astype(np.float32)
    queries = rng.standard_normal((40, 384)).astype(np.float32)
    return queries, corpus


@pytest.mark.parametrize("corpus_chunk_size,query_chunk_size", [(500_000, 100), (7_000, 100), (16_384, 7)])
@pytest.mark.parametrize("score", ["cos_sim", "dot_score"])
def test_semantic_search_50k(big_corpus, corpus_chunk_size, query_chunk_size, score):
    queries, corpus = big_corpus
    ours = util.semantic_search(queries, corpus, query_chunk_size=query_chunk_size,
                                corpus_chunk_size=corpus_chunk_size, top_k=10, score_function=getattr(util, score))
    ref = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(corpus), top_k=10,
                                  score_function=getattr(st_util, score))
    assert_same_hits(ours, ref)


def test_semantic_search_custom_score_function(big_corpus):
    queries, corpus = big_corpus
    ours = util.semantic_search(queries[:5], corpus[:3000], top_k=5, score_function=util.manhattan_sim,
                                corpus_chunk_size=1000)
    ref = st_util.semantic_search(torch.from_numpy(queries[:5]), torch.from_numpy(corpus[:3000]), top_k=5,
                                  score_function=st_util.manhattan_sim)
    assert_same_hits(ours, ref, tie=1e-3)


def test_sparse_search_reads_rows_by_width_and_keeps_their_ids(monkeypatch):
    """Sparse rows of very different widths, their padding slots scattered among the active ones (holding
    junk values a BCOO does not count): the scan reads its blocks widest first (``width_order``) and skips
    each block's unused slots, yet every hit is the row's own id with sentence-transformers' score."""
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    import jaxst.topk
    from jaxst.sparse import used_width, width_order

    r = np.random.default_rng(3)
    n, dim, slots = 700, 500, 48
    indices = np.full((n, slots), dim, np.int32)
    values = r.normal(size=(n, slots)).astype(np.float32)  # junk where the index is padding
    widths = np.minimum(r.lognormal(2.0, 0.9, n).astype(int), slots)
    widths[::97] = 0  # some empty rows
    for row, w in enumerate(widths):
        where = np.sort(r.choice(slots, w, replace=False))  # active slots anywhere in the row
        indices[row, where] = r.choice(dim, w, replace=False)
    order = np.asarray(width_order(jnp.asarray(indices), dim=dim))
    used = np.asarray(used_width(jnp.asarray(indices), dim))
    assert sorted(order) == list(range(n)) and np.all(np.diff(used[order]) <= 0)
    corpus = jsparse.BCOO((jnp.asarray(values), jnp.asarray(indices)[..., None]), shape=(n, dim))
    dense = np.asarray(corpus.todense())
    queries = np.where(r.random((6, dim)) < 0.1, r.random((6, dim)), 0).astype(np.float32)
    monkeypatch.setattr(jaxst.topk, "SPARSE_CHUNK_BYTES", 1)  # blocks of 256 rows: three scan steps
    for ours_fn, st_fn in ((util.dot_score, st_util.dot_score), (util.cos_sim, st_util.cos_sim)):
        ours = util.semantic_search(jsparse.BCOO.fromdense(jnp.asarray(queries)), corpus, top_k=20,
                                    score_function=ours_fn)
        t_queries, t_corpus = torch.from_numpy(queries).to_sparse(), torch.from_numpy(dense).to_sparse()
        ref = st_util.semantic_search(t_queries, t_corpus, top_k=20, score_function=st_fn)
        assert_same_hits(ours, ref, st_fn(torch.from_numpy(queries), torch.from_numpy(dense)).numpy())


def test_paraphrase_mining_embeddings():
    emb = rng.standard_normal((400, 32)).astype(np.float32)
    for kwargs in ({}, {"query_chunk_size": 64, "corpus_chunk_size": 100, "top_k": 5, "max_pairs": 300}):
        ours = util.paraphrase_mining_embeddings(emb, **kwargs)
        ref = st_util.paraphrase_mining_embeddings(torch.from_numpy(emb), **kwargs)
        assert len(ours) > 100
        assert_same_pairs(ours, ref)


def assert_same_pairs(ours, ref):
    """Same [score, i, j] list, ties aside: a pair may only swap with one of (nearly) equal score."""
    assert len(ours) == len(ref)
    np.testing.assert_allclose([p[0] for p in ours], [p[0] for p in ref], atol=1e-5)
    assert_same_hits([[{"corpus_id": tuple(p[1:]), "score": p[0]} for p in ours]],
                     [[{"corpus_id": tuple(p[1:]), "score": p[0]} for p in ref]])
    margin = ref[-1][0] + 1e-5  # pairs clearly inside the cut-off are the same set
    assert {tuple(p[1:]) for p in ours if p[0] > margin} == {tuple(p[1:]) for p in ref if p[0] > margin}


def test_paraphrase_mining_with_model(jx_minilm, st_minilm):
    sentences = [r[0] for r in read_stsb("stsb-en-dev.csv")[:200]]
    ours = util.paraphrase_mining(jx_minilm, sentences, top_k=3)
    ref = st_util.paraphrase_mining(st_minilm, sentences, top_k=3)
    # The dev set repeats some sentences; which copy wins a tie is arbitrary, so name each by its text.
    first = {s: i for i, s in reversed(list(enumerate(sentences)))}

    def canonical(pairs):  # a pair of texts met k times (repeated sentences) is named (i, j, k)
        seen: dict = {}
        out = []
        for score, i, j in pairs:
            key = tuple(sorted((first[sentences[i]], first[sentences[j]])))
            seen[key] = seen.get(key, 0) + 1
            out.append([score, *key, seen[key]])
        return out

    assert len(ours) > 100 and len({(i, j) for _, i, j in ours}) == len(ours)  # no pair twice
    assert_same_pairs(canonical(ours), canonical(ref))


def test_community_detection():
    centres = rng.standard_normal((6, 24)).astype(np.float32)
    emb = np.concatenate([c + 0.25 * rng.standard_normal((n, 24)).astype(np.float32)
                          for c, n in zip(centres, (40, 25, 12, 8, 60, 3))])
    emb = np.concatenate([emb, rng.standard_normal((30, 24)).astype(np.float32)])
    for kwargs in ({"threshold": 0.8, "min_community_size": 10}, {"threshold": 0.7, "min_community_size": 5,
                                                                   "batch_size": 17}):
        ours = util.community_detection(emb, **kwargs)
        ref = st_util.community_detection(torch.from_numpy(emb), **kwargs)
        assert len(ours) >= 3
        assert ours == ref  # centres, members and their order (by score: no ties in random data)
    assert util.community_detection(emb[:3]) == []


def test_community_detection_with_tied_scores():
    """Exact duplicates tie: sentence-transformers 6.3 orders a community by one top-k per batch, whose order
    among equal scores torch leaves open, so the check is the centre, the members, and their scores in order."""
    centres = rng.standard_normal((3, 16)).astype(np.float32)
    groups = [np.repeat(c[None] + 0.2 * rng.standard_normal((n, 16)).astype(np.float32), 3, axis=0)
              for c, n in zip(centres, (12, 8, 5))]  # every text three times
    emb = np.concatenate(groups)[rng.permutation(75)]
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for kwargs in ({"threshold": 0.75, "min_community_size": 6}, {"threshold": 0.6, "min_community_size": 9,
                                                                   "batch_size": 10}):
        ours = util.community_detection(emb, **kwargs)
        ref = st_util.community_detection(torch.from_numpy(emb), **kwargs)
        assert len(ours) == len(ref) >= 2
        for mine, theirs in zip(ours, ref):
            assert sorted(mine) == sorted(theirs) and len(set(mine)) == len(mine)
            centre = unit[theirs[0]]
            assert mine[0] == theirs[0] or np.array_equal(emb[mine[0]], emb[theirs[0]])
            np.testing.assert_allclose(unit[mine[1:]] @ centre, unit[theirs[1:]] @ centre, atol=1e-6)


# ---------------------------------------------------------------- quantized search on real embeddings


@pytest.fixture(scope="module")
def stsb_embeddings(jx_minilm):
    rows = read_stsb("stsb-en-train.csv") + read_stsb("stsb-en-dev.csv") + read_stsb("stsb-en-test.csv")
    sentences = list(dict.fromkeys(s for a, b, _ in rows for s in (a, b)))
    assert len(sentences) == 15_457
    emb = jx_minilm.encode(sentences, batch_size=64, normalize_embeddings=True)
    queries = emb[np.random.default_rng(7).choice(len(emb), 300, replace=False)]
    exact = util.semantic_search(queries, emb, top_k=10)
    return queries, emb, [[h["corpus_id"] for h in q] for q in exact]


def recall_at_10(hits, exact_ids) -> float:
    return float(np.mean([len({h["corpus_id"] for h in h_row} & set(e_row)) / 10
                          for h_row, e_row in zip(hits, exact_ids)]))


def test_float_index_is_exact(stsb_embeddings):
    queries, emb, exact_ids = stsb_embeddings
    for precision in ("float32", "bfloat16"):
        index = EmbeddingIndex(384, precision=precision, chunk_size=4096)
        index.add(emb)
        hits = index.search(queries, top_k=10)
        if precision == "float32":
            assert [[h["corpus_id"] for h in q] for q in hits] == exact_ids
        else:
            assert recall_at_10(hits, exact_ids) >= 0.98


def test_int8_search_recall(stsb_embeddings):
    queries, emb, exact_ids = stsb_embeddings
    for precision in ("int8", "uint8"):
        index = EmbeddingIndex(384, precision=precision, similarity="dot", chunk_size=4096)  # emb is normalized
        index.add(emb)
        np.testing.assert_array_equal(index.embeddings, util.quantize_embeddings(emb, precision))
        recall = recall_at_10(index.search(queries, top_k=10, rescore_multiplier=2), exact_ids)
        assert recall >= 0.99, recall


def test_binary_search_recall_at_least_faiss(stsb_embeddings):
    from sentence_transformers.util.quantization import semantic_search_faiss

    queries, emb, exact_ids = stsb_embeddings
    index = EmbeddingIndex(384, precision="ubinary", similarity="dot", chunk_size=4096)  # emb is normalized
    index.add(emb)
    np.testing.assert_array_equal(index.embeddings, util.quantize_embeddings(emb, "ubinary"))
    ours = recall_at_10(index.search(queries, top_k=10, rescore_multiplier=4), exact_ids)
    ref_hits, _ = semantic_search_faiss(queries, corpus_embeddings=util.quantize_embeddings(emb, "ubinary"),
                                        corpus_precision="ubinary", top_k=10, rescore_multiplier=4)
    reference = recall_at_10(ref_hits, exact_ids)
    assert ours >= reference - 1e-9, (ours, reference)
    assert reference > 0.6
    # Without rescoring, scores are minus the Hamming distance.
    raw = index.search(queries[:3], top_k=5, rescore_multiplier=None)
    assert all(h["score"] <= 0 and float(h["score"]).is_integer() for q in raw for h in q)


# ---------------------------------------------------------------- the persistent index


def small_index(precision="float32", with_meta=True):
    emb = rng.standard_normal((300, 24)).astype(np.float32)
    index = EmbeddingIndex(24, precision=precision, chunk_size=128)
    ids = [f"doc-{i}" for i in range(300)] if with_meta else None
    texts = [f"text {i} ✓" for i in range(300)] if with_meta else None
    index.add(emb[:200], ids=ids and ids[:200], texts=texts and texts[:200])
    index.add(emb[200:], ids=ids and ids[200:], texts=texts and texts[200:])
    return index, emb


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8", "uint8", "binary", "ubinary"])
def test_save_load_round_trip(tmp_path, precision):
    index, emb = small_index(precision)
    path = tmp_path / "corpus.jxi"
    index.save(path)
    loaded = EmbeddingIndex.load(path)
    assert len(loaded) == 300 and loaded.precision == precision and loaded.ids == index.ids
    assert loaded.texts == index.texts
    np.testing.assert_array_equal(np.asarray(loaded.embeddings), np.asarray(index.embeddings))
    q = emb[:5] + 0.1
    assert loaded.search(q, top_k=7) == index.search(q, top_k=7)
    loaded.add(emb[:10], ids=[f"new-{i}" for i in range(10)], texts=["n"] * 10)  # still growable
    assert len(loaded) == 310 and loaded.search(emb[3], top_k=1)[0][0]["id"] in ("doc-3", "new-3")


@pytest.mark.parametrize("precision", ["float32", "int8", "ubinary"])
def test_growing_index_does_not_recompile_per_size(precision, caplog):
    """25 adds of 37 rows, a search after each: the scan compiles once (one storage capacity), not per size."""
    import logging

    rng = np.random.default_rng(11)
    index = EmbeddingIndex(32, precision=precision, ranges=np.array([[-4.0] * 32, [4.0] * 32], np.float32))
    query = rng.standard_normal((3, 32)).astype(np.float32)
    index.add(rng.standard_normal((37, 32)).astype(np.float32))
    index.search(query, top_k=5)  # the first search compiles
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        for _ in range(24):
            index.add(rng.standard_normal((37, 32)).astype(np.float32))
            hits = index.search(query, top_k=5)
    assert len(index) == 925 and len(hits[0]) == 5
    assert not scan_compiles(caplog), scan_compiles(caplog)
    # Positive control, the same counting: past its 1024-row capacity the storage doubles, the device copy
    # takes the new shape (2048 rows) and the scan must compile again, which the log shows.
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        index.add(rng.standard_normal((100, 32)).astype(np.float32))
        grown = index.search(query, top_k=5)
    assert len(index) == 1025 and index._corpus_on_device().shape[1 if precision == "ubinary" else 0] == 2048
    assert scan_compiles(caplog), [r.getMessage() for r in caplog.records]
    assert len(grown[0]) == 5


def scan_compiles(caplog) -> list[str]:
    """The scan's compilations among ``jax.log_compiles`` records: XLA's ``scan_top_k`` or the native
    kernel's ``_call``."""
    messages = [r.getMessage() for r in caplog.records]
    return [m for m in messages if m.startswith("Compiling") and ("top_k" in m or "_call" in m)]


def test_growing_keeps_results_and_finds_new_rows():
    index, emb = small_index()
    hit = index.search(emb[250], top_k=1)[0][0]
    assert hit == {"corpus_id": 250, "score": pytest.approx(1.0, abs=1e-5), "id": "doc-250", "text": "text 250 ✓"}
    exact = util.semantic_search(emb[:4], emb, top_k=5)
    assert [[h["corpus_id"] for h in r] for r in index.search(emb[:4], top_k=5)] == \
        [[h["corpus_id"] for h in r] for r in exact]


def test_interrupted_save_leaves_the_old_index(tmp_path, monkeypatch):
    index, emb = small_index()
    path = tmp_path / "corpus.jxi"
    index.save(path)
    before = path.read_bytes()
    index.add(emb[:5], ids=list("abcde"), texts=list("vwxyz"))

    def full_disk(self, name, data, *args, **kwargs):
        if name == "embeddings.npy":
            raise OSError(28, "No space left on device")
        return original(self, name, data, *args, **kwargs)

    original = zipfile.ZipFile.writestr
    monkeypatch.setattr(zipfile.ZipFile, "writestr", full_disk)
    with pytest.raises(OSError, match="No space"):
        index.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jxi"]  # no temp file left behind
    assert len(EmbeddingIndex.load(path)) == 300


def test_damaged_or_foreign_files(tmp_path):
    index, _ = small_index()
    path = tmp_path / "corpus.jxi"
    index.save(path)
    truncated = tmp_path / "truncated.jxi"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged"):
        EmbeddingIndex.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ValueError, match="not a jaxst embedding index"):
        EmbeddingIndex.load(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="damaged or not"):
        EmbeddingIndex.load(text)
    future = tmp_path / "future.jxi"
    with zipfile.ZipFile(future, "w") as z:
        z.writestr("header.json", '{"format": "jaxst-embedding-index", "version": 99}')
    with pytest.raises(ValueError, match="version 99"):
        EmbeddingIndex.load(future)
    with pytest.raises(FileNotFoundError):
        EmbeddingIndex.load(tmp_path / "missing.jxi")


def test_index_bad_input():
    index, emb = small_index()
    with pytest.raises(ValueError, match="shape"):
        index.add(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="ids"):
        index.add(emb[:2], ids=["x"], texts=["a", "b"])
    with pytest.raises(ValueError, match="has ids"):
        index.add(emb[:2])
    with pytest.raises(ValueError, match="top_k"):
        index.search(emb[0], top_k=0)
    with pytest.raises(TypeError, match="model"):
        index.search("a text query")
    with pytest.raises(ValueError, match="precision"):
        EmbeddingIndex(24, precision="int4")
    assert EmbeddingIndex(24).search(emb[:2]) == [[], []]


def test_retrieve_with_text_queries(jx_minilm):
    corpus = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
              "A man is riding a horse.", "A woman is playing violin."]
    index = jaxst.EmbeddingIndex(384)
    index.add(jx_minilm.encode(corpus), texts=corpus)
    hits = index.search(["Someone eats bread.", "A person plays a string instrument."], top_k=2, model=jx_minilm)
    assert hits[0][0]["text"] == "A man is eating a piece of bread." and hits[1][0]["corpus_id"] == 4
    expected = util.semantic_search(jx_minilm.encode(["Someone eats bread."]), jx_minilm.encode(corpus), top_k=2)
    assert [h["corpus_id"] for h in hits[0]] == [h["corpus_id"] for h in expected[0]]
    assert abs(hits[0][0]["score"] - expected[0][0]["score"]) < 1e-5
    assert index.search("Someone eats bread.", top_k=1, model=jx_minilm)[0][0]["corpus_id"] == 1


# ---------------------------------------------------------------- streaming a corpus from host memory


def _unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data does not start on a 64-byte boundary (so the CPU backend must copy it)."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    skip = (-buf.ctypes.data) % 64 + 4
    out = buf[skip : skip + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("score", ["cos_sim", "dot_score"])
def test_semantic_search_streams_a_host_corpus_piece_by_piece(big_corpus, monkeypatch, score):
    """A numpy corpus the device cannot read in place (here rows with a stride; on an accelerator, any) stays
    on the host: at most ``corpus_chunk_size`` rows are on the device at a time, and the hits equal
    sentence-transformers' (and the on-device search's)."""
    import jax

    import jaxst.search

    queries, corpus = big_corpus
    corpus = np.repeat(corpus[:23_456], 2, axis=0)[::2]  # every other row of a larger array: not contiguous
    assert not corpus.flags.c_contiguous
    put_rows = []
    real_put = jax.device_put

    def spy(x, *args, **kwargs):
        if isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 384 and x.shape[0] > 100:
            put_rows.append(x.shape[0])
        return real_put(x, *args, **kwargs)

    monkeypatch.setattr(jaxst.search.jax, "device_put", spy)
    ours = util.semantic_search(queries, corpus, corpus_chunk_size=5_000, top_k=10,
                                score_function=getattr(util, score))
    monkeypatch.undo()
    assert put_rows == [5_000] * 5  # 23,456 rows in five pieces (the last aligned to the end)
    ref = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(np.array(corpus)), top_k=10,
                                  score_function=getattr(st_util, score))
    assert_same_hits(ours, ref)
    on_device = util.semantic_search(jax.device_put(np.array(corpus)), jax.device_put(np.array(corpus)), top_k=3,
                                     corpus_chunk_size=5_000)
    streamed = util.semantic_search(np.array(corpus), corpus, top_k=3, corpus_chunk_size=5_000)
    assert [[h["corpus_id"] for h in r] for r in streamed] == [[h["corpus_id"] for h in r] for r in on_device]


def _saved_and_loaded(a: np.ndarray, folder) -> np.ndarray:
    np.save(folder / "corpus.npy", a)
    return np.load(folder / "corpus.npy")


@pytest.mark.parametrize("score", ["cos_sim", "dot_score"])
@pytest.mark.parametrize("source", ["4 bytes off", "16 bytes off", "60 bytes off", "a slice", "np.load"])
def test_any_host_corpus_is_searched_in_place(big_corpus, monkeypatch, tmp_path, score, source):
    """Issue 32: a numpy corpus whose data does not start on the 64-byte boundary the CPU backend aliases (a
    loaded .npy, a slice, most allocations) is read where it lies too, through a flat view from the boundary
    before it (``topk.host_view``): one device_put, no copy, no streaming; the hits equal
    sentence-transformers'. The rows around it are poisoned: nothing outside the array is scored."""
    import jax

    import jaxst.search
    from jaxst.topk import HOST_ALIGN, host_view

    queries, full = big_corpus
    full = full[:20_011]
    if source.endswith("bytes off"):
        gap = int(source.split()[0])
        buf = np.full(full.nbytes + 2 * HOST_ALIGN, np.nan, np.float32)  # NaN before and after the corpus
        skip = ((-buf.ctypes.data) % HOST_ALIGN + gap) // 4
        corpus = buf[skip : skip + full.size].reshape(full.shape)
        corpus[...] = full
    elif source == "a slice":
        corpus, full = full[3:], full[3:]
    else:
        corpus = _saved_and_loaded(full, tmp_path)
    assert corpus.flags.c_contiguous
    on_cpu = jax.default_backend() == "cpu"
    view = host_view(corpus)
    if corpus.ctypes.data % HOST_ALIGN == 0:  # this allocation happened to be aligned: used in place as is
        assert view is None
    else:
        flat, origin = view
        assert flat.ctypes.data % HOST_ALIGN == 0 and flat.ctypes.data + 4 * origin == corpus.ctypes.data
        assert flat.ctypes.data + flat.nbytes == corpus.ctypes.data + corpus.nbytes  # ends where the corpus ends
        np.testing.assert_array_equal(flat[origin:].reshape(corpus.shape), corpus)
    puts, streamed = [], []
    real_put = jax.device_put
    monkeypatch.setattr(jaxst.search.jax, "device_put", lambda x, *a, **kw: puts.append(x) or real_put(x, *a, **kw))
    monkeypatch.setattr(jaxst.search, "streamed_top_k", lambda *a, **kw: streamed.append(1) / 0)
    if on_cpu:
        ours = util.semantic_search(queries, corpus, top_k=10, score_function=getattr(util, score))
        assert not streamed and len(puts) == 1
        put = puts[0]
        assert put.ctypes.data == corpus.ctypes.data - corpus.ctypes.data % HOST_ALIGN
        assert real_put(put).unsafe_buffer_pointer() == put.ctypes.data  # aliased, not copied
    monkeypatch.undo()
    if not on_cpu:
        ours = util.semantic_search(queries, corpus, top_k=10, score_function=getattr(util, score))
    ref = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(np.array(full)), top_k=10,
                                  score_function=getattr(st_util, score))
    assert_same_hits(ours, ref)


def test_host_view_refuses_what_it_cannot_map():
    from jaxst.topk import HOST_ALIGN, aligned_empty, host_view

    aligned = aligned_empty((100, 8), np.float32)
    assert host_view(aligned) is None  # nothing to do
    assert host_view(np.asfortranarray(_unaligned(aligned))) is None  # not row-major
    raw = np.empty(100 * 8 * 4 + 2 * HOST_ALIGN, np.uint8)
    odd = raw[(-raw.ctypes.data) % HOST_ALIGN + 1 :][: 100 * 8 * 4].view(np.float32).reshape(100, 8)
    assert host_view(odd) is None  # data not on an element boundary
    narrow = raw[(-raw.ctypes.data) % HOST_ALIGN + 48 :][: 100 * 4 * 4].view(np.float32).reshape(100, 4)
    assert host_view(narrow) is None  # the gap (12 floats) is wider than a row
    assert host_view(np.empty((0, 8), np.float32)) is None


def test_aligned_host_corpus_is_used_in_place():
    import jax

    from jaxst.search import aligned_empty, shares_host_memory

    a = aligned_empty((1000, 16), np.float32)
    a[...] = rng.standard_normal((1000, 16))
    b = _unaligned(a)
    on_cpu = jax.default_backend() == "cpu"
    # On every backend: an aligned, contiguous array of the asked shape and dtype; device_put keeps its values.
    assert a.shape == (1000, 16) and a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    assert b.ctypes.data % 64 != 0
    for shape, dtype in (((7, 3), np.int8), ((5, 3), np.uint64), ((33,), ml_dtypes.bfloat16)):
        c = aligned_empty(shape, dtype)
        assert c.shape == shape and c.dtype == dtype and c.flags.c_contiguous and c.ctypes.data % 64 == 0
    np.testing.assert_array_equal(np.asarray(jax.device_put(a)), a)
    np.testing.assert_array_equal(np.asarray(jax.device_put(b)), a)
    # Aliasing is a CPU-backend property: only there do aligned arrays share memory, never unaligned ones.
    assert shares_host_memory(a) == on_cpu
    assert not shares_host_memory(b)
    assert not shares_host_memory(np.asfortranarray(aligned_empty((64, 16), np.float32)))  # not C-contiguous
    if on_cpu:  # the device buffer is the host array itself, and the unaligned copy's is not (control)
        assert jax.device_put(a).unsafe_buffer_pointer() == a.ctypes.data
        assert jax.device_put(b).unsafe_buffer_pointer() != b.ctypes.data


def test_encode_output_is_searched_in_place(jx_minilm, monkeypatch):
    """What encode returns by default (numpy) is a corpus the CPU backend reads where it lies: 64-byte
    aligned, so util.semantic_search neither streams nor copies it (issue 17: a numpy corpus searched
    once must not pay a 1.5 GB copy on 1M x 384); the hits equal sentence-transformers'."""
    import jax

    import jaxst.search
    from jaxst.search import shares_host_memory

    texts = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain", "music"] * 10)]
    corpus = jx_minilm.encode(texts)
    assert isinstance(corpus, np.ndarray) and corpus.ctypes.data % 64 == 0 and corpus.flags.c_contiguous
    assert jx_minilm.encode(texts[:1]).ctypes.data % 64 == 0
    assert shares_host_memory(corpus) == (jax.default_backend() == "cpu")
    queries = jx_minilm.encode(["a sentence about dogs", "music"])
    streamed = []
    monkeypatch.setattr(jaxst.search, "streamed_top_k", lambda *a, **kw: streamed.append(1) or None)
    if jax.default_backend() == "cpu":
        puts = []
        real_put = jax.device_put
        monkeypatch.setattr(jaxst.search.jax, "device_put", lambda x, *a, **kw: puts.append(x) or real_put(x, *a, **kw))
        ours = util.semantic_search(queries, corpus, top_k=5)
        assert not streamed and len(puts) == 1 and puts[0] is corpus
        assert real_put(corpus).unsafe_buffer_pointer() == corpus.ctypes.data  # aliased, not copied
        monkeypatch.undo()
        ref = st_util.semantic_search(torch.from_numpy(queries), torch.from_numpy(np.array(corpus)), top_k=5)
        assert_same_hits(ours, ref)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8", "uint8", "binary", "ubinary"])
def test_index_streamed_from_host_equals_on_device(precision):
    """``max_device_rows``: a larger index is searched from host memory, piece by piece, same hits."""
    emb = rng.standard_normal((5_000, 64)).astype(np.float32)
    queries = emb[:20] + 0.3 * rng.standard_normal((20, 64)).astype(np.float32)
    ranges = np.stack([emb.min(axis=0), emb.max(axis=0)]) if precision in ("int8", "uint8") else None
    whole = EmbeddingIndex(64, precision=precision, chunk_size=512, ranges=ranges)
    streamed = EmbeddingIndex(64, precision=precision, chunk_size=512, ranges=ranges, max_device_rows=1_500)
    for idx in (whole, streamed):
        idx.add(emb[:100])
        idx.add(emb[100:])
    assert streamed._streamed() and not whole._streamed()
    for mult in (None, 3):
        a = whole.search(queries, top_k=10, rescore_multiplier=mult)
        b = streamed.search(queries, top_k=10, rescore_multiplier=mult)
        assert [[h["corpus_id"] for h in r] for r in a] == [[h["corpus_id"] for h in r] for r in b]
        np.testing.assert_allclose([[h["score"] for h in r] for r in a], [[h["score"] for h in r] for r in b],
                                   rtol=1e-6, atol=1e-6)


def test_hamming_search_equals_brute_force():
    """The 64-bit popcount scan returns minus the exact Hamming distance and the nearest codes."""
    emb = rng.standard_normal((3_000, 200)).astype(np.float32)  # 200 bits: 25 bytes, 4 words with padding
    queries = rng.standard_normal((7, 200)).astype(np.float32)
    index = EmbeddingIndex(200, precision="ubinary", chunk_size=1024)
    index.add(emb)
    bits_c = np.unpackbits(util.quantize_embeddings(emb, "ubinary"), axis=1)[:, :200].astype(np.int32)
    bits_q = np.unpackbits(util.quantize_embeddings(queries, "ubinary"), axis=1)[:, :200].astype(np.int32)
    dist = (bits_q[:, None, :] != bits_c[None, :, :]).sum(-1)  # (7, 3000)
    for row, hits in zip(dist, index.search(queries, top_k=15, rescore_multiplier=None)):
        assert [-h["score"] for h in hits] == sorted(row)[:15]
        assert all(row[h["corpus_id"]] == -h["score"] for h in hits)


def test_loads_version_1_binary_index(tmp_path):
    """Files from the first format (binary rows as uint32 words) still load and search the same."""
    import io
    import json

    index, emb = small_index("ubinary")
    words32 = np.pad(util.quantize_embeddings(emb, "ubinary"), ((0, 0), (0, 1))).view(np.uint32)  # 3 -> 4 bytes
    buf = io.BytesIO()
    np.save(buf, words32, allow_pickle=False)
    header = {"format": "jaxst-embedding-index", "version": 1, "dim": 24, "precision": "ubinary",
              "similarity": "cosine", "count": 300, "chunk_size": 128, "has_ids": False, "has_texts": False,
              "has_ranges": False}
    path = tmp_path / "v1.jxi"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("header.json", json.dumps(header))
        z.writestr("embeddings.npy", buf.getvalue())
    loaded = EmbeddingIndex.load(path)
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    q = emb[:5] + 0.1
    assert [[h["corpus_id"] for h in r] for r in loaded.search(q, top_k=5)] == \
        [[h["corpus_id"] for h in r] for r in index.search(q, top_k=5)]


def test_scan_compiler_options_only_for_cpu_arrays():
    """The CPU-only compiler option (512-bit vectors for the popcount scan) is chosen by where the
    arrays live; numpy arguments go by the default backend."""
    import jax
    import jax.numpy as jnp

    from jaxst import search, topk

    assert topk.on_cpu(jnp.zeros(3), jnp.zeros(3)) == (jax.devices()[0].platform == "cpu")
    assert topk.on_cpu(np.zeros(3)) == (jax.default_backend() == "cpu")
    words = np.random.default_rng(0).integers(0, 2**63, (300, 6), dtype=np.uint64)
    corpus = search.hamming_corpus(words)
    queries = jnp.asarray(search.scan_words(words[:4]))
    scores, ids = search.chunked_top_k(queries, corpus, 300, k=3, kind="hamming", chunk=128)
    assert np.asarray(ids)[:, 0].tolist() == [0, 1, 2, 3] and (np.asarray(scores)[:, 0] == 0).all()
