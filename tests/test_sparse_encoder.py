"""SparseEncoder against sentence-transformers' SparseEncoder (the oracle, run in the same test).

Tiny random masked-LM BERTs (hidden 32, the all-MiniLM-L6-v2 WordPiece vocabulary of 30,522 entries)
are built and saved here by transformers + sentence-transformers: SPLADE with max/relu (decoder bias
shifted down so that, as in trained SPLADE models, only a few hundred dimensions are active) and with
sum/log1p_relu (dense-ish rows: about half the vocabulary), and an inference-free model (a Router:
SparseStaticEmbedding for queries, SPLADE for documents).
"""

from __future__ import annotations

import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_same_gradients, assert_same_hits, read_stsb, save_tiny_bert, unique_sentences
from jax.experimental import sparse as jsparse

import jaxst.sparse
from jaxst import SentenceTransformer, SparseEncoder
from jaxst.sparse import from_scipy, splade_pool, to_dense, to_scipy

TOL = 1e-5
TEXTS = unique_sentences(read_stsb("stsb-en-test.csv")[:30]) + [
    "a", "", "Ünïcödé and emoji 🙂 text", " ".join(["a much longer text that the tokenizer truncates"] * 20)]


def st_dense(x) -> np.ndarray:
    x = x.to_dense() if x.is_sparse else x
    return x.cpu().numpy()


def relative_gap(ours, ref) -> float:
    """Largest |ours - ref| relative to max(1, |ref|): scores of dense-ish sparse rows reach thousands,
    where float32 itself resolves only ~1e-4 absolute."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref))))


def assert_same_sparse(ours, ref: np.ndarray) -> None:
    """Values within TOL (relative to max(1, |value|): sum pooling adds up to a few hundred, where one
    float32 ulp is 1.5e-5) and the same non-zero support."""
    ours = np.asarray(to_dense(ours) if not isinstance(ours, np.ndarray) else ours)
    assert ours.shape == ref.shape
    assert float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref)))) < TOL
    np.testing.assert_array_equal(ours != 0, ref != 0)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, minilm_folder):
    """A seeded random 2-layer BertForMaskedLM with the MiniLM tokenizer; biases and LayerNorm gains
    randomized (transformers starts them at 0 and 1) so a mis-mapped head weight shows."""
    from transformers import BertForMaskedLM

    def build(name: str, decoder_bias_mean: float):
        def perturb(key, p):
            if key == "cls.predictions.bias":
                p.normal_(decoder_bias_mean, 0.5)
            elif key.endswith(".bias"):
                p.normal_(0.0, 0.2)
            elif key.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.2)

        return save_tiny_bert(tmp_path_factory.mktemp(name), minilm_folder, BertForMaskedLM, perturb)

    return {"sparse": build("mlm-sparse", -3.0), "dense": build("mlm-dense", 0.0)}


@pytest.fixture(scope="module")
def tiny_distilbert_mlm(tmp_path_factory, minilm_folder):
    """A seeded random DistilBertForMaskedLM (the architecture of OpenSearch's inference-free models)."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    folder = tmp_path_factory.mktemp("distilbert-mlm")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                              max_position_embeddings=128, initializer_range=0.2)
    model = DistilBertForMaskedLM(config).eval()
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key == "vocab_projector.bias":
                p.normal_(-3.0, 0.5)
            elif key.endswith(".bias"):
                p.normal_(0.0, 0.2)
            elif key.endswith("norm.weight") or key.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.2)
    model.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder / file, folder / file)
    return folder


def _save(st_model, tmp_path_factory, name):
    folder = tmp_path_factory.mktemp(name)
    st_model.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def splade_models(tiny_mlm, tmp_path_factory):
    """name -> (folder, sentence-transformers model) for two SPLADE variants."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    out = {}
    for name, base, strategy, act in (("max-relu", "sparse", "max", "relu"),
                                      ("sum-log1p_relu", "dense", "sum", "log1p_relu")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformer = Transformer(str(tiny_mlm[base]), transformer_task="fill-mask", max_seq_length=48)
            st = STSparseEncoder(modules=[transformer, SpladePooling(strategy, act)], device="cpu")
            out[name] = (_save(st, tmp_path_factory, f"splade-{name}"), st)
    return out


@pytest.fixture(scope="module")
def inference_free(tiny_mlm, tmp_path_factory):
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = Transformer(str(tiny_mlm["sparse"]), transformer_task="fill-mask", max_seq_length=48)
        torch.manual_seed(2)
        query = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=torch.rand(30522) * 3, frozen=True)
        router = Router.for_query_document(query_modules=[query],
                                           document_modules=[doc, SpladePooling("max", "log1p_relu")])
        st = STSparseEncoder(modules=[router], device="cpu", similarity_fn_name="dot")
        return _save(st, tmp_path_factory, "inference-free"), st


@pytest.mark.parametrize("name", ["max-relu", "sum-log1p_relu"])
def test_splade_embeddings_match_sentence_transformers(splade_models, name):
    folder, st = splade_models[name]
    model = SparseEncoder(str(folder))
    ours = model.encode(TEXTS, batch_size=8)
    ref = st_dense(st.encode(TEXTS, batch_size=8))
    assert isinstance(ours, jsparse.BCOO) and ours.shape == (len(TEXTS), 30522) and ours.n_batch == 1
    assert_same_sparse(ours, ref)
    assert model.get_embedding_dimension() == st.get_embedding_dimension() == 30522
    # the same rows as a dense array, as a list, one at a time
    np.testing.assert_array_equal(np.asarray(model.encode(TEXTS, batch_size=8, convert_to_sparse_tensor=False)),
                                  np.asarray(to_dense(ours)))
    rows = model.encode(TEXTS[:3], convert_to_tensor=False)
    assert len(rows) == 3 and all(isinstance(r, jsparse.BCOO) and r.shape == (30522,) for r in rows)
    assert_same_sparse(np.asarray(rows[1].todense())[None], ref[1:2])  # other batches: the same within TOL
    one = model.encode(TEXTS[4])
    assert one.shape == (30522,)
    assert_same_sparse(one.todense()[None], ref[4:5])
    stats, st_stats = model.sparsity(ours), st.sparsity(st.encode(TEXTS, batch_size=8))
    assert stats["active_dims"] == pytest.approx(st_stats["active_dims"], abs=1e-9)
    assert stats["sparsity_ratio"] == pytest.approx(st_stats["sparsity_ratio"], abs=1e-9)
    # SpladePooling's chunk_size (a runtime setting, not saved): token chunks instead of vocabulary blocks
    model.splade_pooling_chunk_size = st.splade_pooling_chunk_size = 3
    try:
        assert model.splade_pooling_chunk_size == 3
        assert_same_sparse(model.encode(TEXTS, batch_size=8), st_dense(st.encode(TEXTS, batch_size=8)))
    finally:
        st.splade_pooling_chunk_size = None


def test_sparse_rows_are_narrow_for_a_sparse_model(splade_models):
    """The fixed-width layout holds the active entries, not the vocabulary: ~hundreds wide here."""
    model = SparseEncoder(str(splade_models["max-relu"][0]))
    emb = model.encode(TEXTS)
    active = int(np.max(np.count_nonzero(np.asarray(emb.data), axis=1)))
    assert 0 < active <= emb.data.shape[1] < active + 16 and emb.data.shape[1] < 3000


@pytest.mark.parametrize("k", [1, 7, 64])
def test_max_active_dims(splade_models, k):
    folder, st = splade_models["max-relu"]
    model = SparseEncoder(str(folder))
    ours = model.encode(TEXTS, max_active_dims=k)
    ref = st_dense(st.encode(TEXTS, max_active_dims=k))
    assert_same_sparse(ours, ref)
    assert np.all(np.count_nonzero(np.asarray(to_dense(ours)), axis=1) <= k)
    # from the constructor, as sentence-transformers takes it
    assert_same_sparse(SparseEncoder(str(folder), max_active_dims=k).encode(TEXTS), ref)


def test_decode_similarity_and_intersection(splade_models):
    folder, st = splade_models["max-relu"]
    model = SparseEncoder(str(folder))
    ours, ref = model.encode(TEXTS), st.encode(TEXTS)
    for got, want in zip(model.decode(ours, top_k=10), st.decode(ref, top_k=10)):
        assert [t for t, _ in got] == [t for t, _ in want]
        assert max(abs(a - b) for (_, a), (_, b) in zip(got, want)) < TOL
    assert [t for t, _ in model.decode(model.encode(TEXTS[0]))] == [t for t, _ in st.decode(st.encode(TEXTS[0]))]
    assert relative_gap(model.similarity(ours, model.encode(TEXTS[:5])),
                        st.similarity(ref, st.encode(TEXTS[:5])).numpy()) < TOL
    assert relative_gap(model.similarity_pairwise(ours, ours), st.similarity_pairwise(ref, ref).numpy()) < TOL
    model.similarity_fn_name = st.similarity_fn_name = "cosine"
    assert relative_gap(model.similarity(ours, ours), st.similarity(ref, ref).numpy()) < TOL
    assert relative_gap(model.similarity_pairwise(ours, ours), st.similarity_pairwise(ref, ref).numpy()) < TOL
    shared = model.intersection(model.encode(TEXTS[0]), ours)
    st_shared = st.intersection(st.encode(TEXTS[0]), ref)
    assert relative_gap(np.asarray(to_dense(shared)), st_dense(st_shared)) < TOL


def test_inference_free_routes(inference_free):
    folder, st = inference_free
    model = SparseEncoder(str(folder))
    assert {name: r.kind for name, r in model.routes.items()} == {"query": "static", "document": "splade"}
    queries, docs = TEXTS[:10], TEXTS[10:]
    assert_same_sparse(model.encode_query(queries), st_dense(st.encode_query(queries)))
    assert_same_sparse(model.encode_document(docs), st_dense(st.encode_document(docs)))
    assert_same_sparse(model.encode(docs), st_dense(st.encode(docs)))  # the default route: document
    assert_same_sparse(model.encode(queries, task="query"), st_dense(st.encode(queries, task="query")))
    q, d = model.encode_query(queries), model.encode_document(docs)
    assert relative_gap(model.similarity(q, d),
                        st.similarity(st.encode_query(queries), st.encode_document(docs)).numpy()) < TOL
    with pytest.raises(ValueError, match="no route for task 'passage'"):
        model.encode(queries, task="passage")


def test_save_round_trip(splade_models, inference_free, tmp_path):
    from sentence_transformers import SparseEncoder as STSparseEncoder

    for name, (folder, st) in [*splade_models.items(), ("inference-free", inference_free)]:
        model = SparseEncoder(str(folder), max_active_dims=200)
        target = tmp_path / name
        model.save(str(target))
        reloaded = STSparseEncoder(str(target), device="cpu")
        assert reloaded.max_active_dims == 200
        for fn in ("encode_query", "encode_document"):
            assert_same_sparse(getattr(model, fn)(TEXTS), st_dense(getattr(reloaded, fn)(TEXTS)))
            assert_same_sparse(getattr(SparseEncoder(str(target)), fn)(TEXTS),
                               st_dense(getattr(st, fn)(TEXTS, max_active_dims=200)))


def test_scipy_and_dense_conversions(splade_models):
    model = SparseEncoder(str(splade_models["max-relu"][0]))
    emb = model.encode(TEXTS)
    dense = np.asarray(to_dense(emb))
    csr = to_scipy(emb)
    np.testing.assert_array_equal(csr.toarray(), dense)
    np.testing.assert_array_equal(np.asarray(to_dense(from_scipy(csr))), dense)
    np.testing.assert_array_equal(np.asarray(emb.todense()), dense)  # padding slots are ignored by BCOO itself
    # similarity accepts every form and gives the same scores
    ref = np.asarray(model.similarity(emb, emb))
    for a in (dense, csr, jnp.asarray(dense), from_scipy(csr)):
        np.testing.assert_allclose(np.asarray(model.similarity(a, emb)), ref, rtol=1e-6)


def _intermediate_shapes(fn, *args) -> set:
    jaxpr = jax.make_jaxpr(fn)(*args)
    shapes = {tuple(var.aval.shape) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars}
    return shapes | {tuple(var.aval.shape) for eqn in jaxpr.jaxpr.eqns for sub in eqn.params.values()
                     if hasattr(sub, "jaxpr") for e in sub.jaxpr.eqns for var in e.outvars}


def test_splade_pool_chunks(monkeypatch):
    """Token chunks (SpladePooling's chunk_size) and vocabulary blocks (the default; the last block overlaps
    the one before it) equal the pooling of the whole (B, T, V) logits, and neither program holds them."""
    rng = np.random.default_rng(0)
    b, t, h, v = 3, 13, 8, 50
    states = jnp.asarray(rng.standard_normal((b, t, h)), jnp.float32)
    mask = jnp.asarray(rng.random((b, t)) < 0.8).at[:, 0].set(True)
    table, bias = jnp.asarray(rng.standard_normal((v, h)), jnp.float32), jnp.asarray(rng.standard_normal(v) - 1,
                                                                                  jnp.float32)
    monkeypatch.setattr(jaxst.sparse, "SPLADE_VOCAB_BLOCK", 16)  # 50 entries: blocks at 0, 16, 32 and 34
    for strategy in ("max", "sum"):
        for act in ("relu", "log1p_relu"):
            logits = jnp.einsum("bth,vh->btv", states, table) + bias
            x = jnp.log1p(jax.nn.relu(logits * mask[:, :, None]))
            x = jnp.log1p(x) if act == "log1p_relu" else x
            expected = np.asarray(x.max(1) if strategy == "max" else x.sum(1))
            for chunk in (t, 4, None):
                np.testing.assert_allclose(np.asarray(splade_pool(states, mask, table, bias, strategy, act, chunk)),
                                           expected, atol=1e-5, err_msg=f"{strategy} {act} chunk={chunk}")
    shapes = _intermediate_shapes(lambda s: splade_pool(s, mask, table, bias, "max", "relu", chunk=4), states)
    assert (b, 4, v) in shapes and not any(len(s) == 3 and s[0] == b and s[2] == v and s[1] > 4 for s in shapes)
    shapes = _intermediate_shapes(lambda s: splade_pool(s, mask, table, bias, "max", "relu"), states)
    assert (b, t, 16) in shapes and not any(len(s) == 3 and s[-1] == v for s in shapes)


def test_bad_input(splade_models, make_tiny_st):
    folder, _ = splade_models["max-relu"]
    with pytest.raises(ValueError, match="load it with jaxst.SparseEncoder"):
        SentenceTransformer(str(folder))
    with pytest.raises(ValueError, match="unsupported SparseEncoder modules"):
        SparseEncoder(str(make_tiny_st()))
    model = SparseEncoder(str(folder))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_active_dims"):
            model.encode(["a"], max_active_dims=bad)
    with pytest.raises(ValueError, match="similarity_fn_name"):
        model.similarity_fn_name = "maxsim"
    with pytest.raises(ValueError, match="top_k"):
        model.decode(model.encode("a"), top_k=0)
    with pytest.raises(ValueError, match="keyword arguments"):
        model.encode(["a"], normalize_embeddings=True)


@pytest.mark.parametrize("name", ["max-relu", "sum-log1p_relu"])
def test_semantic_search_over_a_sparse_corpus(splade_models, inference_free, name):
    """Exact sparse search: the hits of sentence-transformers' util.semantic_search on its own sparse
    tensors, for dot and cosine, narrow rows (gathered) and wide rows (dense blocks)."""
    from sentence_transformers import util as st_util

    from jaxst import util

    folder, st = splade_models[name]
    model = SparseEncoder(str(folder))
    corpus = unique_sentences(read_stsb("stsb-en-train.csv")[:400])
    queries = TEXTS[:12]
    ours_c, ours_q = model.encode_document(corpus, batch_size=64), model.encode_query(queries)
    ref_c, ref_q = st.encode_document(corpus, batch_size=64), st.encode_query(queries)
    for ours_fn, st_fn in ((util.dot_score, st_util.dot_score), (util.cos_sim, st_util.cos_sim)):
        ours = util.semantic_search(ours_q, ours_c, top_k=10, score_function=ours_fn)
        ref = st_util.semantic_search(ref_q, ref_c, top_k=10, score_function=st_fn)
        assert_same_hits(ours, ref, st_fn(ref_q, ref_c))  # sparse rows tie (at 0 and above): scores of all
    # a small corpus chunk forces several scan steps; the hits do not change
    import jaxst.topk

    small = util.semantic_search(ours_q, ours_c, top_k=5)
    old = jaxst.topk.SPARSE_CHUNK_BYTES
    jaxst.topk.SPARSE_CHUNK_BYTES = 1
    try:
        assert_same_hits(util.semantic_search(ours_q, ours_c, top_k=5), small, np.asarray(util.cos_sim(ours_q, ours_c)))
    finally:
        jaxst.topk.SPARSE_CHUNK_BYTES = old
    # inference-free: static queries against SPLADE documents
    folder, st = inference_free
    model = SparseEncoder(str(folder))
    ours = util.semantic_search(model.encode_query(queries), model.encode_document(corpus), top_k=10,
                                score_function=util.dot_score)
    ref_q, ref_c = st.encode_query(queries), st.encode_document(corpus)
    ref = st_util.semantic_search(ref_q, ref_c, top_k=10, score_function=st_util.dot_score)
    assert_same_hits(ours, ref, st_util.dot_score(ref_q, ref_c))


# ---------------------------------------------------------------------------------------------- losses

LOSS_CONFIGS = {
    "flops": dict(document_regularizer_weight=0.3, query_regularizer_weight=0.5),
    "thresholds": dict(document_regularizer_weight=0.3, query_regularizer_weight=0.5,
                       document_regularizer_threshold=30, query_regularizer_threshold=34),
    "documents-only": dict(document_regularizer_weight=0.3, use_document_regularizer_only=True),
    "no-query-term": dict(document_regularizer_weight=0.3),
}


@pytest.mark.parametrize("config", sorted(LOSS_CONFIGS))
def test_splade_loss_value_and_gradient(splade_models, monkeypatch, config):
    """SpladeLoss(SparseMultipleNegativesRankingLoss) on random non-negative (B, V) columns: the value and
    every column's gradient equal sentence-transformers' (its own forward, fed the same embeddings)."""
    import sentence_transformers.sparse_encoder.losses.splade as st_splade
    from sentence_transformers.sparse_encoder import losses as st_losses

    from jaxst.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    st = splade_models["max-relu"][1]
    rng = np.random.default_rng(0)
    columns = [np.maximum(rng.standard_normal((8, 64)), 0).astype(np.float32) for _ in range(3)]
    t_columns = [torch.tensor(c, requires_grad=True) for c in columns]
    monkeypatch.setattr(st_splade, "embed_columns", lambda model, features, separate_first=True: t_columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses.SpladeLoss(st, st_losses.SparseMultipleNegativesRankingLoss(st), **LOSS_CONFIGS[config])
    parts = st_loss(None, None)
    ref = sum(parts.values())
    ref.backward()
    ours = SpladeLoss(loss=SparseMultipleNegativesRankingLoss(), **LOSS_CONFIGS[config])
    value, grads = jax.value_and_grad(ours)([jnp.asarray(c) for c in columns])
    assert abs(float(value) - float(ref.detach())) < TOL
    for g, t in zip(grads, t_columns):
        assert float(np.max(np.abs(np.asarray(g) - t.grad.numpy()))) < TOL
    got = ours.components([jnp.asarray(c) for c in columns])
    assert set(got) == set(parts)
    for name in parts:
        assert abs(float(got[name]) - float(parts[name])) < TOL


# inner sparse loss -> (columns, labels of shape ... or None); the labels are drawn per case
SPARSE_INNER = {
    "SparseCoSENTLoss": (2, "scores"),
    "SparseAnglELoss": (2, "scores"),
    "SparseCosineSimilarityLoss": (2, "scores"),
    "SparseDistillKLDivLoss": (3, "teacher"),
    "SparseMarginMSELoss": (3, "margins"),
    "SparseTripletLoss": (3, None),
    "SparseMSELoss": (2, "embeddings"),
}


@pytest.mark.parametrize("inner", sorted(SPARSE_INNER))
def test_sparse_losses_inside_splade_loss(splade_models, monkeypatch, inner):
    """Each of sentence-transformers 6.3's sparse losses inside SpladeLoss, on random non-negative (B, V) columns:
    value, components and every column's gradient equal its SpladeLoss's (fed the same embeddings)."""
    import sentence_transformers.sparse_encoder.losses.splade as st_splade
    from sentence_transformers.sparse_encoder import losses as st_losses

    from jaxst import losses as jl

    st = splade_models["max-relu"][1]
    n_columns, label_kind = SPARSE_INNER[inner]
    rng = np.random.default_rng(sorted(SPARSE_INNER).index(inner))
    columns = [np.maximum(rng.standard_normal((8, 64)), 0).astype(np.float32) for _ in range(n_columns)]
    labels = {None: None, "scores": rng.uniform(0, 1, 8), "teacher": rng.normal(size=(8, 2)) * 3,
              "margins": rng.normal(size=8) * 3, "embeddings": rng.uniform(0, 1, (8, 64))}[label_kind]
    labels = None if labels is None else labels.astype(np.float32)
    t_columns = [torch.tensor(c, requires_grad=True) for c in columns]
    monkeypatch.setattr(st_splade, "embed_columns", lambda model, features, separate_first=True: t_columns)
    config = dict(document_regularizer_weight=0.3, query_regularizer_weight=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_inner = getattr(st_losses, inner)(st)
        if inner == "SparseMSELoss":  # SpladeLoss hands 6.3's EmbedDistillLoss its labels as they are; it reads a list
            st_inner.compute_loss_from_embeddings = (
                lambda e, t, f=st_inner.compute_loss_from_embeddings: f(e, [t] * len(e)))
        st_loss = st_losses.SpladeLoss(st, st_inner, **config)
    parts = st_loss(None, None if labels is None else torch.from_numpy(labels))
    ref = sum(parts.values())
    ref.backward()
    ours = jl.SpladeLoss(loss=getattr(jl, inner)(), **config)
    value, grads = jax.value_and_grad(lambda c: ours(c, None if labels is None else jnp.asarray(labels)))(
        [jnp.asarray(c) for c in columns])
    assert abs(float(value) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach())))
    for g, t in zip(grads, t_columns):
        assert float(np.max(np.abs(np.asarray(g) - t.grad.numpy()))) < TOL
    got = ours.components([jnp.asarray(c) for c in columns], None if labels is None else jnp.asarray(labels))
    assert set(got) == set(parts)
    for name in parts:
        assert abs(float(got[name]) - float(parts[name])) < TOL * max(1.0, abs(float(parts[name])))


def test_sparse_losses_keep_sentence_transformers_defaults_and_go_inside_splade_or_csr(splade_models):
    import inspect

    from sentence_transformers.sparse_encoder import losses as st_losses

    from jaxst import losses as jl
    from jaxst.training import make_loss_fn

    for name in [*SPARSE_INNER, "SparseMultipleNegativesRankingLoss", "CachedSpladeLoss"]:
        theirs = inspect.signature(getattr(st_losses, name).__init__).parameters
        ours = inspect.signature(getattr(jl, name).__init__).parameters
        assert list(ours) == list(theirs), name  # the same arguments in the same order
        for arg, p in theirs.items():
            if arg == "gather_across_devices":  # jaxst gathers by default, so N devices give the one-device loss
                continue
            if p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float, str, tuple, type(None))):
                assert ours[arg].default == p.default, (name, arg)
    model = SparseEncoder(str(splade_models["max-relu"][0]))
    for name in [n for n in SPARSE_INNER if n != "SparseMSELoss"] + ["SparseMultipleNegativesRankingLoss"]:
        with pytest.raises(ValueError, match=f"{name} should not be used alone. Use it with SpladeLoss or CSRLoss"):
            make_loss_fn(model, getattr(jl, name)())
    make_loss_fn(model, jl.SparseMSELoss())  # a distillation loss of its own, as in sentence-transformers
    assert model.similarity_fn_name == "dot"
    jl.SparseCoSENTLoss(model)  # the cosine losses set the model's similarity, as the original's do
    assert model.similarity_fn_name == "cosine"
    with pytest.raises(ValueError, match="mini_batch_num_tokens is not supported"):
        jl.CachedSpladeLoss(loss=jl.SparseMultipleNegativesRankingLoss(), mini_batch_num_tokens=256)


def test_cached_splade_loss_equals_sentence_transformers(splade_models):
    """CachedSpladeLoss through jaxst.training's GradCache path (mini-batches of 2) on a tiny SPLADE model: the
    value and the parameter gradients of sentence-transformers' CachedSpladeLoss on the same batch."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder import losses as st_losses

    from jaxst import losses as jl
    from jaxst.training import collate, make_loss_fn

    folder, _ = splade_models["max-relu"]
    st = STSparseEncoder(str(folder), device="cpu")
    st.eval()
    st[1].training = True
    pairs = [(a, b) for a, b, _ in read_stsb("stsb-en-train.csv")[:6]]
    config = dict(document_regularizer_weight=0.03, query_regularizer_weight=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses.CachedSpladeLoss(st, st_losses.SparseMultipleNegativesRankingLoss(st), mini_batch_size=2,
                                             **config)
    features = [st.preprocess([p[i] for p in pairs]) for i in range(2)]
    ref = st_loss(features, None)
    ref = sum(ref.values()) if isinstance(ref, dict) else ref
    ref.backward()
    model = SparseEncoder(str(folder))
    loss = jl.CachedSpladeLoss(loss=jl.SparseMultipleNegativesRankingLoss(), mini_batch_size=2, **config)
    value, grads = jax.jit(jax.value_and_grad(make_loss_fn(model, loss, dropout=False)))(
        model.params, collate(model, pairs))
    assert abs(float(value) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach())))
    assert_same_gradients(st, [
        (grads["head"]["transform"]["dense"]["kernel"], "cls.predictions.transform.dense.weight", True),
        (grads["encoder"]["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"],
         "bert.encoder.layer.0.attention.self.query.weight", True),
    ])


def test_splade_training_step_matches_sentence_transformers(splade_models):
    """One jaxst train step's loss and gradient on a tiny SPLADE model equal sentence-transformers' loss
    and autograd gradient on the same batch (no dropout on either side)."""
    from sentence_transformers.sparse_encoder import losses as st_losses

    from jaxst.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
    from jaxst.training import collate, make_loss_fn

    folder, _ = splade_models["max-relu"]
    from sentence_transformers import SparseEncoder as STSparseEncoder

    st = STSparseEncoder(str(folder), device="cpu")
    st.eval()  # no dropout; SpladePooling in training mode only, whose ops (unlike eval's in-place ones) backprop
    st[1].training = True
    rows = read_stsb("stsb-en-train.csv")[:6]
    pairs = [(a, b) for a, b, _ in rows]
    config = dict(document_regularizer_weight=0.03, query_regularizer_weight=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses.SpladeLoss(st, st_losses.SparseMultipleNegativesRankingLoss(st), **config)
    features = [st.preprocess([p[i] for p in pairs]) for i in range(2)]
    ref = sum(st_loss(features, None).values())
    ref.backward()
    model = SparseEncoder(str(folder))
    loss_fn = make_loss_fn(model, SpladeLoss(loss=SparseMultipleNegativesRankingLoss(), **config), dropout=False)
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(model.params, collate(model, pairs))
    assert abs(float(value) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach())))
    assert_same_gradients(st, [
        (grads["head"]["transform"]["dense"]["kernel"], "cls.predictions.transform.dense.weight", True),
        (grads["head"]["bias"], "cls.predictions.bias", False),
        (grads["encoder"]["embeddings"]["word_embeddings"]["embedding"], "bert.embeddings.word_embeddings.weight",
         False),
        (grads["encoder"]["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"],
         "bert.encoder.layer.0.attention.self.query.weight", True),
    ])


@pytest.mark.parametrize("frozen", [False, True])
def test_inference_free_training_matches_sentence_transformers(tiny_mlm, tmp_path, frozen):
    """An inference-free model (Router: SparseStaticEmbedding for queries, SPLADE for documents) through
    jaxst.training with a router_mapping: sentence-transformers' SpladeLoss value and gradients on the same
    (query, positive, negative) batch, the static weight's included; a frozen static weight gets no gradient
    and keeps its values over a step; the trained model saves to a folder sentence-transformers reads."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder import losses as st_losses
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    from jaxst.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
    from jaxst.training import TrainState, collate, default_optimizer, make_loss_fn, make_train_step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = Transformer(str(tiny_mlm["sparse"]), transformer_task="fill-mask", max_seq_length=48)
        torch.manual_seed(3)
        query = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=torch.rand(30522) * 3, frozen=frozen)
        router = Router.for_query_document(query_modules=[query],
                                           document_modules=[doc, SpladePooling("max", "log1p_relu")])
        st = STSparseEncoder(modules=[router], device="cpu", similarity_fn_name="dot")
        st.save(str(tmp_path / "model"))
    st.eval()  # no dropout; SpladePooling in training mode, whose ops backprop
    router.sub_modules["document"][1].training = True
    rows = read_stsb("stsb-en-train.csv")[:6]
    triplets = [(a, b, rows[(i + 1) % len(rows)][1]) for i, (a, b, _) in enumerate(rows)]
    config = dict(document_regularizer_weight=0.03, use_document_regularizer_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses.SpladeLoss(st, st_losses.SparseMultipleNegativesRankingLoss(st), **config)
    tasks = ["query", "document", "document"]
    features = [st.preprocess([t[i] for t in triplets], task=task) for i, task in enumerate(tasks)]
    ref = sum(st_loss(features, None).values())
    ref.backward()

    model = SparseEncoder(str(tmp_path / "model"))
    assert model.frozen_params == ([("static", "embedding")] if frozen else [])
    loss = SpladeLoss(loss=SparseMultipleNegativesRankingLoss(), **config)
    batch = collate(model, triplets, router_mapping=tasks)
    assert [("static_route" in f) for f in batch["features"]] == [True, False, False]
    value, grads = jax.jit(jax.value_and_grad(make_loss_fn(model, loss, dropout=False)))(model.params, batch)
    assert abs(float(value) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach())))
    pairs = [(grads["head"]["bias"], "cls.predictions.bias", False),
             (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"],
              "bert.encoder.layer.1.output.dense.weight", True)]
    if frozen:
        assert query.weight.grad is None and not np.any(np.asarray(grads["static"]["embedding"]))
    else:
        assert np.any(np.asarray(grads["static"]["embedding"]))
        pairs.append((grads["static"]["embedding"], "query.0.weight", False))
    assert_same_gradients(st, pairs)

    step = make_train_step(model, loss, default_optimizer(1e-2), dropout=False)
    state, _ = step(TrainState.create(model.params, default_optimizer(1e-2)), batch)
    moved = not np.array_equal(np.asarray(state.params["static"]["embedding"]),
                               np.asarray(model.params["static"]["embedding"]))
    assert moved != frozen
    assert not np.array_equal(np.asarray(state.params["head"]["bias"]), np.asarray(model.params["head"]["bias"]))
    model.params = state.params
    model.save(str(tmp_path / "trained"))
    reloaded = STSparseEncoder(str(tmp_path / "trained"), device="cpu")
    queries = [t[0] for t in triplets]
    assert_same_sparse(model.encode_query(queries), st_dense(reloaded.encode_query(queries)))
    assert_same_sparse(model.encode_document(queries), st_dense(reloaded.encode_document(queries)))

    with pytest.raises(ValueError, match="no route for task 'passage'"):
        collate(model, triplets, router_mapping=["query", "passage", "document"])
    with pytest.raises(ValueError, match="2 tasks for 3 columns"):
        collate(model, triplets, router_mapping=["query", "document"])
    with pytest.raises(ValueError, match="cannot be packed"):
        collate(model, triplets, router_mapping={0: "query"}, pack=True)


def test_cli_sparse_encode_and_search(splade_models, inference_free, tmp_path, capsys):
    import json

    import scipy.sparse
    from sentence_transformers import util as st_util

    from jaxst import cli

    folder, st = splade_models["max-relu"]
    texts = TEXTS[:20]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n", encoding="utf-8")
    out = tmp_path / "emb.npz"
    assert cli.main(["encode", str(corpus), "-o", str(out), "--sparse", "--model", str(folder)]) == 0
    assert_same_sparse(scipy.sparse.load_npz(out).toarray(), st_dense(st.encode(texts)))
    assert cli.main(["encode", str(corpus), "-o", str(tmp_path / "emb.npy"), "--sparse", "--model", str(folder)]) == 2
    assert "OUT.npz" in capsys.readouterr().err
    assert cli.main(["encode", str(corpus), "-o", str(tmp_path / "dense.npy"), "--model", str(folder)]) == 2
    assert "--sparse" in capsys.readouterr().err
    # search with the inference-free model: static queries, SPLADE documents
    folder, st = inference_free
    lines = [t for t in texts if t.strip()]
    queries = ["A man is playing a flute.", "a dog runs"]
    assert cli.main(["search", *queries, "--corpus", str(corpus), "--sparse", "--model", str(folder), "--json",
                     "-k", "4"]) == 0
    got = json.loads(capsys.readouterr().out)
    ref_q, ref_c = st.encode_query(queries), st.encode_document(lines)
    ref = st_util.semantic_search(ref_q, ref_c, top_k=4, score_function=st_util.dot_score)
    assert_same_hits(got, ref, st_util.dot_score(ref_q, ref_c))


def test_distilbert_splade_and_inference_free(tiny_distilbert_mlm, tmp_path_factory):
    """DistilBERT masked-LM SPLADE, alone and as the document side of an inference-free Router (as
    opensearch-neural-sparse-encoding-doc-v3-distill is built)."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        doc = Transformer(str(tiny_distilbert_mlm), transformer_task="fill-mask", max_seq_length=48)
        st = STSparseEncoder(modules=[doc, SpladePooling("max")], device="cpu")
        folder = _save(st, tmp_path_factory, "distilbert-splade")
        torch.manual_seed(3)
        query = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=torch.rand(30522), frozen=True)
        router = Router.for_query_document([query], [doc, SpladePooling("max", "log1p_relu")])
        st_free = STSparseEncoder(modules=[router], device="cpu")
        free = _save(st_free, tmp_path_factory, "distilbert-inference-free")
    assert_same_sparse(SparseEncoder(str(folder)).encode(TEXTS), st_dense(st.encode(TEXTS)))
    model = SparseEncoder(str(free))
    assert_same_sparse(model.encode_query(TEXTS), st_dense(st_free.encode_query(TEXTS)))
    assert_same_sparse(model.encode_document(TEXTS), st_dense(st_free.encode_document(TEXTS)))


def test_distilbert_sentence_transformer(tiny_distilbert_mlm, tmp_path_factory):
    """The DistilBERT encoder also serves dense models (msmarco-distilbert-*): mean pooling of a
    DistilBertModel checkpoint, within 1e-5 of sentence-transformers."""
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer = Transformer(str(tiny_distilbert_mlm), max_seq_length=48)
        st = STSentenceTransformer(modules=[transformer, Pooling(32, "mean")], device="cpu")
        folder = _save(st, tmp_path_factory, "distilbert-dense")
    ours = SentenceTransformer(str(folder)).encode(TEXTS)
    assert float(np.max(np.abs(ours - st.encode(TEXTS)))) < TOL


def test_sparse_index_grows_saves_and_searches(splade_models, tmp_path):
    from jaxst import SparseEmbeddingIndex, util

    folder, _ = splade_models["max-relu"]
    model = SparseEncoder(str(folder))
    corpus = unique_sentences(read_stsb("stsb-en-train.csv")[:300])
    queries = TEXTS[:8]
    emb = model.encode_document(corpus, batch_size=64)
    q = model.encode_query(queries)
    for similarity, fn in (("dot", util.dot_score), ("cosine", util.cos_sim)):
        index = SparseEmbeddingIndex(30522, similarity=similarity)
        index.add(model.encode_document(corpus[:100]), ids=[f"d{i}" for i in range(100)], texts=corpus[:100])
        index.add(model.encode_document(corpus[100:]), ids=[f"d{i}" for i in range(100, len(corpus))],
                  texts=corpus[100:])  # a second batch, of another row width
        assert len(index) == len(corpus)
        want = util.semantic_search(q, emb, top_k=7, score_function=fn)
        got = index.search(q, top_k=7)
        assert_same_hits(got, want, np.asarray(fn(q, emb)))
        assert got[0][0]["text"] == corpus[got[0][0]["corpus_id"]] and got[0][0]["id"] == f"d{got[0][0]['corpus_id']}"
        index.save(tmp_path / f"{similarity}.jxs")
        loaded = SparseEmbeddingIndex.load(tmp_path / f"{similarity}.jxs")
        assert loaded.search(q, top_k=7) == got
        assert_same_hits(index.search(queries[:2], top_k=7, model=model), got[:2], np.asarray(fn(q, emb))[:2])
    bad = tmp_path / "bad.jxs"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="damaged or not a jaxst sparse index"):
        SparseEmbeddingIndex.load(bad)
    with pytest.raises(ValueError, match="dimension"):
        SparseEmbeddingIndex(100).add(emb)
    with pytest.raises(TypeError, match="need a model"):
        SparseEmbeddingIndex(30522).search("a text")


def _mlm_folder(tmp_path_factory, name, model, tokenizer_folder, bias_key):
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key == bias_key:
                p.normal_(-3.0, 0.5)
            elif key.endswith(".bias"):
                p.normal_(0.0, 0.2)
            elif "norm" in key.lower() and key.endswith(".weight"):
                p.normal_(1.0, 0.2)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    for f in tokenizer_folder.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "sentencepiece")):
            shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("arch", ["xlm-roberta", "modernbert"])
def test_masked_lm_heads_of_other_architectures(arch, tmp_path_factory, xlmr_tokenizer_folder, minilm_folder):
    """SPLADE over XLM-RoBERTa's lm_head and ModernBERT's head + decoder, against sentence-transformers."""
    import json

    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    torch.manual_seed(0)
    if arch == "xlm-roberta":
        from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

        vocab = len(json.loads((xlmr_tokenizer_folder / "tokenizer.json").read_text())["model"]["vocab"])
        model = XLMRobertaForMaskedLM(XLMRobertaConfig(
            vocab_size=vocab, max_position_embeddings=514, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, initializer_range=0.2)).eval()
        folder = _mlm_folder(tmp_path_factory, "xlmr-mlm", model, xlmr_tokenizer_folder, "lm_head.bias")
    else:
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        model = ModernBertForMaskedLM(ModernBertConfig(
            vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            global_attn_every_n_layers=2, local_attention=16, max_position_embeddings=512, initializer_range=0.2,
            pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
            classifier_bias=True, norm_bias=True)).eval()
        folder = _mlm_folder(tmp_path_factory, "modernbert-mlm", model, minilm_folder, "decoder.bias")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer = Transformer(str(folder), transformer_task="fill-mask", max_seq_length=48)
        st = STSparseEncoder(modules=[transformer, SpladePooling("max")], device="cpu")
        saved = _save(st, tmp_path_factory, f"{arch}-splade")
    ours = SparseEncoder(str(saved))
    assert_same_sparse(ours.encode(TEXTS), st_dense(st.encode(TEXTS)))
    target = tmp_path_factory.mktemp(f"{arch}-saved")
    ours.save(str(target))
    assert_same_sparse(ours.encode(TEXTS), st_dense(STSparseEncoder(str(target), device="cpu").encode(TEXTS)))


def test_int8_quantizes_the_transformer_route(inference_free, tiny_mlm, tmp_path_factory):
    """dtype="int8" on a Router model: the SPLADE route's encoder runs int8 (close to float32, not equal), the
    static route is a weight lookup and stays exact; a model whose only route is static encodes as
    sentence-transformers does and refuses int8."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding

    folder, _ = inference_free
    full, q8 = SparseEncoder(str(folder)), SparseEncoder(str(folder), dtype="int8")
    assert q8.dtype == np.int8 and full.dtype == np.float32
    queries, docs = TEXTS[:10], TEXTS[10:]
    np.testing.assert_array_equal(np.asarray(q8.encode_query(queries).todense()),
                                  np.asarray(full.encode_query(queries).todense()))
    ours, ref = np.asarray(q8.encode_document(docs).todense()), np.asarray(full.encode_document(docs).todense())
    cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(ours, ref)  # the README's int8 bar, as for dense models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = Transformer(str(tiny_mlm["sparse"]), transformer_task="fill-mask").tokenizer
        st_static = STSparseEncoder(modules=[SparseStaticEmbedding(tokenizer=tokenizer, weight=torch.rand(30522))],
                                    device="cpu")
        static_only = _save(st_static, tmp_path_factory, "static-only")
    # a static-only model encodes (it has no Transformer, so no graph: the engine runs its lookup alone)
    assert_same_sparse(SparseEncoder(str(static_only)).encode(queries), st_dense(st_static.encode(queries)))
    with pytest.raises(ValueError, match="int8.*has none"):
        SparseEncoder(str(static_only), dtype="int8")


@pytest.mark.parametrize("normalize", [False, True])
def test_csr_sparse_autoencoder(make_tiny_st, tmp_path_factory, normalize):
    """CSR: a dense model (Transformer + mean Pooling) with a SparseAutoEncoder on top: the same top-k codes
    as sentence-transformers, with the model's k, another max_active_dims, and after a save."""
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    dense = STSentenceTransformer(str(make_tiny_st()), device="cpu")
    torch.manual_seed(4)
    sae = SparseAutoEncoder(input_dim=32, hidden_dim=128, k=8, k_aux=16, normalize=normalize)
    with torch.no_grad():
        sae.pre_bias.normal_(0.0, 0.3)
        sae.latent_bias.normal_(0.0, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = STSparseEncoder(modules=[*dense, sae], device="cpu")
        folder = _save(st, tmp_path_factory, f"csr-{normalize}")
    model = SparseEncoder(str(folder))
    assert model.max_active_dims == st.max_active_dims == 8 and model.get_embedding_dimension() == 128
    assert model.splade_pooling_chunk_size is None  # no SpladePooling here (was an AttributeError)
    assert_same_sparse(model.encode(TEXTS), st_dense(st.encode(TEXTS)))
    for k in (4, 16):
        assert_same_sparse(model.encode(TEXTS, max_active_dims=k), st_dense(st.encode(TEXTS, max_active_dims=k)))
    assert relative_gap(model.similarity(model.encode(TEXTS[:6]), model.encode(TEXTS)),
                        st.similarity(st.encode(TEXTS[:6]), st.encode(TEXTS)).numpy()) < TOL
    target = tmp_path_factory.mktemp(f"csr-{normalize}-saved")
    model.save(str(target))
    reloaded = STSparseEncoder(str(target), device="cpu")
    assert_same_sparse(model.encode(TEXTS), st_dense(reloaded.encode(TEXTS)))


CSR_OUTPUT_KEYS = ("sentence_embedding", "sentence_embedding_backbone", "decoded_embedding_k", "decoded_embedding_4k",
                   "decoded_embedding_aux", "decoded_embedding_k_pre_bias")


def test_csr_loss_value_and_gradient_on_random_outputs():
    """CSRLoss on random per-column outputs: value, every component and every gradient equal
    sentence-transformers' CSRLoss (its model call returns the given outputs)."""
    from sentence_transformers.sparse_encoder import losses as st_losses

    from jaxst.losses import CSRLoss

    rng = np.random.default_rng(0)
    columns = []
    for _ in range(2):
        out = {key: rng.standard_normal((6, 16)).astype(np.float32) for key in CSR_OUTPUT_KEYS}
        out["sentence_embedding"] = np.maximum(rng.standard_normal((6, 40)), 0).astype(np.float32)
        columns.append(out)
    t_columns = [{k: torch.tensor(v, requires_grad=True) for k, v in c.items()} for c in columns]

    class Stub(torch.nn.Module):  # what sentence-transformers' CSRLoss calls per column
        def forward(self, features):
            return features

    st_loss = st_losses.CSRLoss(Stub(), beta=0.3, gamma=0.7)
    parts = st_loss(t_columns, None)
    total = sum(parts.values())
    total.backward()
    ours = CSRLoss(beta=0.3, gamma=0.7)
    value, grads = jax.value_and_grad(ours)([{k: jnp.asarray(v) for k, v in c.items()} for c in columns])
    assert abs(float(value) - float(total.detach())) < TOL
    got = ours.components([{k: jnp.asarray(v) for k, v in c.items()} for c in columns])
    assert set(got) == set(parts)
    for name in parts:
        assert abs(float(got[name]) - float(parts[name].detach())) < TOL, name
    for g, t in zip(grads, t_columns):
        for key in CSR_OUTPUT_KEYS:
            want = np.zeros_like(columns[0][key]) if t[key].grad is None else t[key].grad.numpy()
            assert float(np.max(np.abs(np.asarray(g[key]) - want))) < TOL, key


@pytest.mark.parametrize("normalize", [False, True])
def test_csr_training_step_matches_sentence_transformers(make_tiny_st, normalize):
    """CSRLoss through jaxst.training on a tiny CSR model: the loss and gradients of sentence-transformers'
    CSRLoss on the same batch (no dropout; its SparseAutoEncoder in training mode)."""
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder import losses as st_losses
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    from jaxst.losses import CSRLoss
    from jaxst.training import collate, make_loss_fn

    dense = STSentenceTransformer(str(make_tiny_st()), device="cpu")
    torch.manual_seed(5)
    sae = SparseAutoEncoder(input_dim=32, hidden_dim=128, k=8, k_aux=16, normalize=normalize)
    with torch.no_grad():
        sae.pre_bias.normal_(0.0, 0.3)
        sae.latent_bias.normal_(0.0, 0.3)
    import tempfile

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        STSparseEncoder(modules=[*dense, sae], device="cpu").save(tmp)
        st = STSparseEncoder(tmp, device="cpu")
        model = SparseEncoder(tmp)
    st.eval()
    st[-1].training = True  # the SparseAutoEncoder returns its reconstructions only in training
    pairs = [(a, b) for a, b, _ in read_stsb("stsb-en-train.csv")[:6]]
    st_loss = st_losses.CSRLoss(st, beta=0.2, gamma=0.5)
    ref = sum(st_loss([st.preprocess([p[i] for p in pairs]) for i in range(2)], None).values())
    ref.backward()
    loss_fn = make_loss_fn(model, CSRLoss(beta=0.2, gamma=0.5), dropout=False)
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(model.params, collate(model, pairs))
    assert abs(float(value) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach())))
    assert_same_gradients(st, [(grads["sae"]["encoder"]["kernel"], "encoder.weight", True),
                               (grads["sae"]["latent_bias"], "latent_bias", False),
                               (grads["sae"]["pre_bias"], "pre_bias", False),
                               (grads["encoder"]["embeddings"]["word_embeddings"]["embedding"],
                                "embeddings.word_embeddings.weight", False)])


def test_csr_dead_latents_tracked_over_steps(make_tiny_st, tmp_path):
    """The SparseAutoEncoder's stats_last_nonzero buffer: jaxst.training carries it in TrainState.model_state
    and updates it in each step's forward as PyTorch does, so once latents pass dead_threshold (2 here) the
    auxiliary loss reads the same dead latents. Four SGD steps: the same losses and the same counts after
    each; the trained model saves them where sentence-transformers reads them."""
    import optax
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.sparse_encoder import losses as st_losses
    from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder

    from jaxst.losses import CSRLoss
    from jaxst.training import TrainState, collate, make_train_step

    dense = STSentenceTransformer(str(make_tiny_st()), device="cpu")
    torch.manual_seed(6)
    sae = SparseAutoEncoder(input_dim=32, hidden_dim=128, k=4, k_aux=8, dead_threshold=2)
    with torch.no_grad():
        sae.latent_bias.normal_(0.0, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        STSparseEncoder(modules=[*dense, sae], device="cpu").save(str(tmp_path / "csr"))
        st = STSparseEncoder(str(tmp_path / "csr"), device="cpu")
    model = SparseEncoder(str(tmp_path / "csr"))
    st.eval()
    st[-1].training = True
    pairs = [(a, b) for a, b, _ in read_stsb("stsb-en-train.csv")[:6]]
    st_loss = st_losses.CSRLoss(st, beta=0.5)
    # lr 0.01: the loss is in the thousands, and a larger SGD step turns float32 rounding differences (XLA's
    # and torch's sums) into loss differences above 1e-5 relative by the fourth step, whichever side is closer
    optimizer = torch.optim.SGD(st.parameters(), lr=0.01)
    step = make_train_step(model, CSRLoss(beta=0.5), optax.sgd(0.01), dropout=False)
    state = TrainState.create(model.params, optax.sgd(0.01))
    batch = collate(model, pairs)
    for i in range(4):
        optimizer.zero_grad()
        ref = sum(st_loss([st.preprocess([p[c] for p in pairs]) for c in range(2)], None).values())
        ref.backward()
        optimizer.step()
        state, metrics = step(state, batch)
        assert abs(float(metrics["loss"]) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach()))), i
        np.testing.assert_array_equal(np.asarray(state.model_state["sae_stats"]), st[-1].stats_last_nonzero.numpy())
    assert int((st[-1].stats_last_nonzero > 2).sum()) > 0  # some latents are dead: the auxiliary term is live
    model.params, model.buffers = state.params, state.model_state
    model.save(str(tmp_path / "trained"))
    reloaded = STSparseEncoder(str(tmp_path / "trained"), device="cpu")
    np.testing.assert_array_equal(reloaded[-1].stats_last_nonzero.numpy(), st[-1].stats_last_nonzero.numpy())
    assert reloaded[-1].dead_threshold == 2


def test_legacy_mlm_transformer_folder(splade_models, tmp_path):
    """A folder saved before sentence-transformers 5.4: MLMTransformer and SpladePooling under their old
    ``sparse_encoder.models`` paths, no transformer_task. Both libraries load it as the same model."""
    import json

    from sentence_transformers import SparseEncoder as STSparseEncoder

    folder = tmp_path / "legacy"
    shutil.copytree(splade_models["max-relu"][0], folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.sparse_encoder.models.MLMTransformer"
    modules[1]["type"] = "sentence_transformers.sparse_encoder.models.SpladePooling"
    (folder / "modules.json").write_text(json.dumps(modules))
    config = json.loads((folder / "sentence_bert_config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("transformer_task", "modality_config", "module_output_name")}
    (folder / "sentence_bert_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = STSparseEncoder(str(folder), device="cpu")
    assert_same_sparse(SparseEncoder(str(folder)).encode(TEXTS), st_dense(st.encode(TEXTS)))
