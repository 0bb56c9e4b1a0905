"""CrossEncoder against sentence-transformers' CrossEncoder on tiny random sequence-classification models
saved by sentence-transformers (and by transformers alone): tokenization, predict with every activation
option, rank, loading, bad input, and the retrieve-and-rerank flow on STSb."""

from __future__ import annotations

import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import max_abs, read_stsb, unique_sentences

import jaxst
from jaxst.cross_encoder import CrossEncoder

TOL = 1e-5

LONG = " ".join(["This sentence is repeated to be far longer than the model's maximum sequence length."] * 6)
QUERY = "A man is playing a guitar on stage."
DOCUMENTS = [
    "A man plays the guitar.",
    "A woman is slicing an onion in the kitchen.",
    "",
    "naïve café résumé — ünïcödé",
    "Stock prices fell sharply on Monday, as investors worried about rising interest rates and slowing growth.",
    LONG,
    "Two men pushed carts through the woods. " * 4,
    "What is the capital of France?",
]
# Short pairs, and pairs whose query, document or both must be cut to max_length ('longest_first').
PAIRS = [(QUERY, d) for d in DOCUMENTS] + [
    (LONG, "short document"),
    (LONG, LONG + " And a few more words at the end."),
    ("Is this a long question? " * 12, "A shorter, but not tiny, answer to the question. " * 3),
    ("", ""),
    ("Ein Mann isst ein Stück Brot.", "A man is eating bread."),
]

# (name, make_tiny_cross_encoder kwargs)
MODELS = {
    "bert-1": dict(arch="bert", num_labels=1),
    "bert-1-tanh": dict(arch="bert", num_labels=1, activation=torch.nn.Tanh()),
    "bert-1-identity": dict(arch="bert", num_labels=1, activation=torch.nn.Identity()),
    "bert-1-unsaved": dict(arch="bert", num_labels=1, saved="hf"),
    "bert-3": dict(arch="bert", num_labels=3),
    "bert-3-sigmoid": dict(arch="bert", num_labels=3, activation=torch.nn.Sigmoid()),
    "bert-3-unsaved": dict(arch="bert", num_labels=3, saved="hf"),
    "xlmr-1": dict(arch="xlm-roberta", num_labels=1),
    "xlmr-3-unsaved": dict(arch="xlm-roberta", num_labels=3, saved="hf"),
    "mpnet-1": dict(arch="mpnet", num_labels=1),
    "mpnet-3-unsaved": dict(arch="mpnet", num_labels=3, saved="hf"),
}

# jaxst activation -> the torch module sentence-transformers takes for the same override.
ACTIVATIONS = {
    "identity": (lambda x: x, torch.nn.Identity()),
    "sigmoid": (jax.nn.sigmoid, torch.nn.Sigmoid()),
    "tanh": (jnp.tanh, torch.nn.Tanh()),
}


def reference(folder, **kwargs):
    from sentence_transformers import CrossEncoder as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(str(folder), device="cpu", **kwargs)


@pytest.fixture(scope="module")
def models(make_tiny_cross_encoder):
    """name -> (sentence-transformers CrossEncoder, jaxst CrossEncoder), loaded from one saved folder."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = make_tiny_cross_encoder(**MODELS[name])
            cache[name] = (reference(folder), CrossEncoder(folder))
        return cache[name]

    return get


# ------------------------------------------------------------------------------------ tokenization


@pytest.mark.parametrize("name", ["bert-1", "bert-1-unsaved", "xlmr-1", "mpnet-1"])
def test_pair_tokenization_matches(models, name):
    st, jx = models(name)
    assert jx.max_seq_length == st.max_seq_length
    expected = st.preprocess(PAIRS)
    got = jx.tokenize(PAIRS)
    assert set(got) == {k for k in expected if k in ("input_ids", "attention_mask", "token_type_ids")}
    for key, value in got.items():
        assert value.dtype == np.int32
        np.testing.assert_array_equal(value, expected[key].numpy(), err_msg=key)
    # The long pairs really were cut to max_length, from the longer side first.
    lengths = got["attention_mask"].sum(1)
    assert lengths.max() == jx.max_seq_length and (lengths < jx.max_seq_length).sum() >= 4


# ------------------------------------------------------------------------------------ predict


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_default_activation(models, name):
    st, jx = models(name)
    expected = st.predict(PAIRS)
    got = jx.predict(PAIRS)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape
    assert got.shape == ((len(PAIRS),) if jx.num_labels == 1 else (len(PAIRS), jx.num_labels))
    assert max_abs(got, expected) < TOL


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_predict_activation_override(models, name, activation):
    st, jx = models(name)
    ours, theirs = ACTIVATIONS[activation]
    expected = st.predict(PAIRS, activation_fn=theirs)
    assert max_abs(jx.predict(PAIRS, activation_fn=ours), expected) < TOL
    if jx.num_labels > 1:
        expected = st.predict(PAIRS, activation_fn=theirs, apply_softmax=True)
        got = jx.predict(PAIRS, activation_fn=ours, apply_softmax=True)
        assert max_abs(got, expected) < TOL
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-6)


def test_saved_activation_is_read(models):
    """What each folder saved (or did not) decides the default, as in sentence-transformers."""
    for name, expected in [("bert-1", "sigmoid"), ("bert-1-tanh", "tanh"), ("bert-1-identity", "identity"),
                           ("bert-1-unsaved", "sigmoid"), ("bert-3", "identity"), ("bert-3-sigmoid", "sigmoid"),
                           ("bert-3-unsaved", "identity")]:
        st, jx = models(name)
        assert type(st.activation_fn).__name__.lower() == expected, name
        raw = jx.predict(PAIRS, activation_fn=lambda x: x)
        assert max_abs(jx.predict(PAIRS), np.asarray(ACTIVATIONS[expected][0](raw))) < 1e-6, name


@pytest.mark.parametrize("batch_size", [1, 3, 32])
@pytest.mark.parametrize("name", ["bert-1", "bert-3", "xlmr-1"])
def test_predict_batch_sizes(models, name, batch_size):
    st, jx = models(name)
    assert max_abs(jx.predict(PAIRS, batch_size=batch_size), st.predict(PAIRS, batch_size=batch_size)) < TOL


@pytest.mark.parametrize("name", ["bert-1", "bert-3"])
def test_predict_output_types(models, name):
    st, jx = models(name)
    expected = st.predict(PAIRS)
    tensor = jx.predict(PAIRS, convert_to_tensor=True)
    assert isinstance(tensor, jax.Array) and tensor.shape == expected.shape
    assert max_abs(tensor, expected) < TOL
    rows = jx.predict(PAIRS, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(PAIRS)
    assert max_abs(np.stack([np.asarray(r) for r in rows]), expected) < TOL
    # One pair, as a tuple, a list or a 1-d numpy array, gives one score (a row of scores for several labels).
    for pair in (PAIRS[0], list(PAIRS[0]), np.array(PAIRS[0])):
        single = jx.predict(pair)
        assert np.shape(single) == np.shape(st.predict(pair)) == (() if jx.num_labels == 1 else (jx.num_labels,))
        assert max_abs(single, st.predict(pair)) < TOL
    assert np.shape(jx.predict(PAIRS[1], convert_to_tensor=True)) == np.shape(expected[1])
    # A list of lists and a 2-d numpy array are batches too.
    assert max_abs(jx.predict([list(p) for p in PAIRS[:3]]), expected[:3]) < TOL
    assert max_abs(jx.predict(np.array(PAIRS[:3])), expected[:3]) < TOL


def test_prompts_are_prepended_to_the_query(models):
    st, jx = models("bert-1")
    for prompt in ("query: ", "Given a web search query, retrieve relevant passages: "):
        assert max_abs(jx.predict(PAIRS, prompt=prompt), st.predict(PAIRS, prompt=prompt)) < TOL
    assert max_abs(jx.predict(PAIRS, prompt="query: "), jx.predict(PAIRS)) > 1e-4


def test_max_length_override(make_tiny_cross_encoder):
    folder = make_tiny_cross_encoder(arch="bert", num_labels=1)
    st, jx = reference(folder, max_length=16), CrossEncoder(folder, max_length=16)
    assert jx.max_seq_length == st.max_seq_length == 16
    np.testing.assert_array_equal(jx.tokenize(PAIRS)["input_ids"], st.preprocess(PAIRS)["input_ids"].numpy())
    assert max_abs(jx.predict(PAIRS), st.predict(PAIRS)) < TOL
    jx.max_length = 24
    assert jx.max_seq_length == 24 and jx.tokenize(PAIRS)["input_ids"].shape[1] == 24
    with pytest.raises(ValueError, match="positions"):
        jx.max_seq_length = 1000
    with pytest.raises(ValueError, match="positions"):
        CrossEncoder(folder, max_length=129)


# ------------------------------------------------------------------------------------ rank


@pytest.mark.parametrize("name", ["bert-1", "bert-1-tanh", "bert-1-unsaved", "xlmr-1", "mpnet-1"])
def test_rank_matches(models, name):
    st, jx = models(name)
    for query in (QUERY, LONG):
        expected = st.rank(query, DOCUMENTS, return_documents=True)
        got = jx.rank(query, DOCUMENTS, return_documents=True)
        assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
        assert [r["text"] for r in got] == [DOCUMENTS[r["corpus_id"]] for r in got]
        assert all(set(r) == {"corpus_id", "score", "text"} and isinstance(r["score"], float) for r in got)
        assert max_abs([r["score"] for r in got], [r["score"] for r in expected]) < TOL
        scores = [r["score"] for r in got]
        assert scores == sorted(scores, reverse=True)
    top = jx.rank(QUERY, DOCUMENTS, top_k=3)
    assert [set(r) for r in top] == [{"corpus_id", "score"}] * 3
    assert [r["corpus_id"] for r in top] == [r["corpus_id"] for r in st.rank(QUERY, DOCUMENTS, top_k=3)]
    raw = jx.rank(QUERY, DOCUMENTS, activation_fn=lambda x: x)
    expected = st.rank(QUERY, DOCUMENTS, activation_fn=torch.nn.Identity())
    assert [r["corpus_id"] for r in raw] == [r["corpus_id"] for r in expected]
    assert max_abs([r["score"] for r in raw], [r["score"] for r in expected]) < TOL


def test_rank_ties_keep_document_order(models):
    _, jx = models("bert-1")
    ranked = jx.rank(QUERY, ["same text", "other text", "same text"])
    same = [r["corpus_id"] for r in ranked if r["corpus_id"] != 1]
    assert same == [0, 2]


def test_rank_refuses_multi_label_models(models):
    _, jx = models("bert-3")
    with pytest.raises(ValueError, match="one label"):
        jx.rank(QUERY, DOCUMENTS)


# ------------------------------------------------------------------------------------ functional core


def test_functional_contract(models):
    st, jx = models("bert-1")
    batch = jx.tokenize(PAIRS)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    logits = jax.jit(jx.apply)(jx.params, batch)
    assert isinstance(logits, jax.Array) and logits.shape == (len(PAIRS), 1)
    expected = st.predict(PAIRS, activation_fn=torch.nn.Identity())
    assert max_abs(logits[:, 0], expected) < TOL
    # Padding the batch further changes nothing beyond float32 rounding: a longer row changes the
    # matmul blocking, which on AVX-512 CPUs moves the logits by ~1e-6; the fp32 tolerance applies.
    padded = {k: np.pad(v, ((0, 0), (0, 16))) for k, v in batch.items()}
    assert max_abs(jx.apply(jx.params, padded), logits) < TOL
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(jx.params))
    assert set(jx.params) == {"encoder", "pooler", "classifier"}


def test_grad_through_the_scorer(models):
    _, jx = models("bert-1")
    batch = jx.tokenize(PAIRS[:4])
    labels = jnp.array([1.0, 0.0, 0.0, 1.0])

    def loss(params):
        logits = jx.apply(params, batch)[:, 0]
        return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits)  # binary cross-entropy

    grads = jax.grad(loss)(jx.params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.abs(grads["classifier"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["encoder"]["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("name", ["bert-1", "xlmr-1"])
def test_scorer_pass_equals_the_encoder(models, name):
    """The scorer's own pass over BERT's layers (first token only in the last one, fused QKV) gives the
    first-token state of the encoder's full forward."""
    from flax import nnx

    _, jx = models(name)
    batch = jx.tokenize(PAIRS)

    @jax.jit
    def both(params, batch):
        model = nnx.merge(jx.graphdef, params)
        full = model.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))[:, 0]
        return model.first_token(batch), full

    ours, full = both(jx.params, batch)
    assert max_abs(ours, full) < TOL


# ------------------------------------------------------------------------------------ loading


def test_lazy_export():
    assert jaxst.CrossEncoder is CrossEncoder


@pytest.mark.parametrize("key", ["sentence_transformers", "sbert_ce_default_activation_function"])
def test_legacy_activation_in_config_json(make_tiny_cross_encoder, tmp_path, key):
    """sentence-transformers 4-5 kept the activation in config.json; older ones under another key."""
    folder = shutil.copytree(make_tiny_cross_encoder(arch="bert", num_labels=1, saved="hf"), tmp_path / "legacy")
    config = json.loads((folder / "config.json").read_text())
    path = "torch.nn.modules.activation.Tanh"
    config[key] = {"activation_fn": path, "version": "4.0.1"} if key == "sentence_transformers" else path
    (folder / "config.json").write_text(json.dumps(config))
    st, jx = reference(folder), CrossEncoder(folder)
    assert isinstance(st.activation_fn, torch.nn.Tanh)
    assert max_abs(jx.predict(PAIRS), st.predict(PAIRS)) < TOL
    assert max_abs(jx.predict(PAIRS), np.tanh(jx.predict(PAIRS, activation_fn=lambda x: x))) < 1e-6


def test_untrusted_activation_path_falls_back_to_default(make_tiny_cross_encoder, tmp_path):
    folder = shutil.copytree(make_tiny_cross_encoder(arch="bert", num_labels=1), tmp_path / "custom")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["activation_fn"] = "my_package.activations.Fancy"
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="remote code"):
        jx = CrossEncoder(folder)
    assert max_abs(jx.predict(PAIRS), reference(folder).predict(PAIRS)) < TOL


def test_unsupported_torch_activation_is_an_error(make_tiny_cross_encoder, tmp_path):
    folder = shutil.copytree(make_tiny_cross_encoder(arch="bert", num_labels=1), tmp_path / "hardtanh")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["activation_fn"] = "torch.nn.modules.activation.Hardtanh"
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Hardtanh"):
        CrossEncoder(folder)


def test_activation_fn_argument(make_tiny_cross_encoder):
    folder = make_tiny_cross_encoder(arch="bert", num_labels=1)
    jx = CrossEncoder(folder, activation_fn=jnp.tanh)
    st = reference(folder, activation_fn=torch.nn.Tanh())
    assert max_abs(jx.predict(PAIRS), st.predict(PAIRS)) < TOL
    jx.activation_fn = jax.nn.sigmoid
    assert max_abs(jx.predict(PAIRS), reference(folder).predict(PAIRS)) < TOL
    with pytest.raises(TypeError, match="callable"):
        CrossEncoder(folder, activation_fn="sigmoid")


def test_num_labels_must_match_the_checkpoint(make_tiny_cross_encoder):
    folder = make_tiny_cross_encoder(arch="bert", num_labels=3)
    assert CrossEncoder(folder, num_labels=3).num_labels == 3
    with pytest.raises(ValueError, match="num_labels"):
        CrossEncoder(folder, num_labels=1)


def test_not_a_cross_encoder(make_tiny_st, tiny_bert_base, tmp_path):
    with pytest.raises(ValueError, match="SentenceTransformer"):
        CrossEncoder(make_tiny_st())
    with pytest.raises(ValueError, match="sequence-classification"):
        CrossEncoder(tiny_bert_base)  # a BertModel: no classifier weights
    with pytest.raises(OSError):
        CrossEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="needs a model"):
        CrossEncoder()


def test_hub_cache_name(make_tiny_cross_encoder, tmp_path):
    """A Hub name resolves through the Hugging Face cache like SentenceTransformer's."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--cross-encoder--tiny-reranker"
    folder = make_tiny_cross_encoder(arch="bert", num_labels=1)
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    jx = CrossEncoder("cross-encoder/tiny-reranker", cache_folder=str(tmp_path / "hub"))
    assert jx.model_folder == repo / "snapshots" / commit
    assert max_abs(jx.predict(PAIRS), reference(folder).predict(PAIRS)) < TOL


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [None, "just one string", 3, {"query": "q"}, b"bytes"])
def test_predict_needs_pairs(models, bad):
    _, jx = models("bert-1")
    with pytest.raises(TypeError, match="pair"):
        jx.predict(bad)


@pytest.mark.parametrize(
    "bad, error, needle",
    [
        ([("q", "d"), ("q", None)], TypeError, "document of pair 1"),
        ([("q", "d"), (None, "d")], TypeError, "query of pair 1"),
        ([("q", "d"), ("q", 3)], TypeError, "pair 1"),
        ([("q", "d"), ("q", "d", "e")], ValueError, "3 elements"),
        ([("q", "d"), ("q",)], ValueError, "1 elements"),
        ([("q", "d"), "not a pair"], TypeError, "pair 1"),
        (("q", "d", "e"), ValueError, "3 elements"),
        (("q", ["d"]), TypeError, "document of the pair"),
    ],
)
def test_bad_pairs_are_named(models, bad, error, needle):
    _, jx = models("bert-1")
    with pytest.raises(error, match=needle):
        jx.predict(bad)


def test_empty_inputs(models):
    _, jx = models("bert-1")
    out = jx.predict([])
    assert isinstance(out, np.ndarray) and out.shape == (0,)
    assert jx.predict([], convert_to_tensor=True).shape == (0,)
    assert jx.rank(QUERY, []) == []
    assert jx.rank(QUERY, [], return_documents=True, top_k=3) == []
    assert jx.rank(QUERY, DOCUMENTS, top_k=0) == []


@pytest.mark.parametrize("query", [None, 3, ["a query"], ("q",)])
def test_rank_query_must_be_a_string(models, query):
    _, jx = models("bert-1")
    with pytest.raises(TypeError, match="query"):
        jx.rank(query, DOCUMENTS)


@pytest.mark.parametrize("documents, needle", [(None, "list of strings"), ("one string", "list of strings"),
                                               (["ok", None], "document 1"), (["ok", 3.0], "document 1")])
def test_rank_documents_must_be_strings(models, documents, needle):
    _, jx = models("bert-1")
    with pytest.raises(TypeError, match=needle):
        jx.rank(QUERY, documents)


@pytest.mark.parametrize("kwargs, needle", [({"batch_size": 0}, "batch_size"), ({"top_k": -1}, "top_k"),
                                            ({"top_k": 2.5}, "top_k"), ({"activation_fn": "sigmoid"}, "callable"),
                                            ({"prompt_name": "nope"}, "nope")])
def test_bad_options(models, kwargs, needle):
    _, jx = models("bert-1")
    with pytest.raises((TypeError, ValueError), match=needle):
        jx.rank(QUERY, DOCUMENTS, **kwargs)


# ------------------------------------------------------------------------------------ retrieve and rerank


def retrieve_and_rerank(retriever, reranker, semantic_search, queries, corpus, corpus_embeddings):
    """The README's flow: bi-encoder top-50, cross-encoder rank, the top 5 passages joined as context."""
    out = []
    for query in queries:
        hits = semantic_search(retriever.encode([query]), corpus_embeddings, top_k=50)[0]
        candidates = [corpus[h["corpus_id"]] for h in hits]
        ranked = reranker.rank(query, candidates, top_k=5)
        ids = [hits[r["corpus_id"]]["corpus_id"] for r in ranked]
        out.append((ids, [r["score"] for r in ranked], "\n\n".join(corpus[i] for i in ids)))
    return out


def test_retrieve_and_rerank_on_stsb(jx_minilm, st_minilm, make_tiny_cross_encoder):
    from sentence_transformers import util as st_util

    from jaxst import util

    rows = read_stsb("stsb-en-test.csv")[:200]
    corpus = unique_sentences(rows)
    queries = [a for a, _, _ in rows[:40:4]]
    folder = make_tiny_cross_encoder(arch="bert", num_labels=1)
    ours = retrieve_and_rerank(jx_minilm, CrossEncoder(folder), util.semantic_search, queries, corpus,
                               jx_minilm.encode(corpus))
    theirs = retrieve_and_rerank(st_minilm, reference(folder), st_util.semantic_search, queries, corpus,
                                 st_minilm.encode(corpus, convert_to_tensor=True))
    assert len(corpus) > 300
    for (ids, scores, context), (ref_ids, ref_scores, ref_context) in zip(ours, theirs, strict=True):
        assert ids == ref_ids
        assert max_abs(scores, ref_scores) < TOL
        assert context == ref_context and context.count("\n\n") == 4
