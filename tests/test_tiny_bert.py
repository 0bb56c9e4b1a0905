"""Tiny random BERT sentence-transformers models: every pooling mode, Dense, Normalize, prompts and
encode option, against sentence-transformers run on the same saved folder."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TEXTS, check_padding_invariance, max_abs

import jaxst

TOL = 1e-5


def load_both(folder, **kwargs):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(str(folder), device="cpu", **kwargs)
    return st, jaxst.SentenceTransformer(folder, **kwargs)


POOLINGS = [
    "cls",
    "max",
    "mean",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
    ("cls", "max", "mean"),
    ("mean", "weightedmean", "lasttoken", "mean_sqrt_len_tokens"),
]


@pytest.mark.parametrize("pooling_mode", POOLINGS, ids=str)
def test_pooling_modes(make_tiny_st, pooling_mode):
    st, jx = load_both(make_tiny_st(pooling_mode=pooling_mode))
    expected = st.encode(TEXTS)
    got = jx.encode(TEXTS)
    assert got.shape == expected.shape
    assert max_abs(got, expected) < TOL


@pytest.mark.parametrize(
    "dense,normalize",
    [
        ([(16, torch.nn.Tanh(), True)], False),
        ([(16, torch.nn.Tanh(), True)], True),
        ([(24, torch.nn.ReLU(), False), (8, torch.nn.Identity(), True)], True),
        ([(16, torch.nn.GELU(), True)], False),
        ([], True),
    ],
    ids=["dense-tanh", "dense-normalize", "two-dense-normalize", "dense-gelu", "normalize"],
)
def test_dense_and_normalize(make_tiny_st, dense, normalize):
    st, jx = load_both(make_tiny_st(pooling_mode="mean", dense=dense, normalize=normalize))
    expected = st.encode(TEXTS)
    assert jx.get_embedding_dimension() == st.get_embedding_dimension() == expected.shape[1]
    assert max_abs(jx.encode(TEXTS), expected) < TOL


PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "Classify the topic: "}


@pytest.mark.parametrize("pooling_mode", ["mean", "cls", "lasttoken", "weightedmean", "max"])
@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts(make_tiny_st, pooling_mode, include_prompt):
    st, jx = load_both(make_tiny_st(pooling_mode=pooling_mode, include_prompt=include_prompt, prompts=PROMPTS))
    assert jx.prompts == st.prompts
    assert max_abs(jx.encode_query(TEXTS), st.encode_query(TEXTS)) < TOL
    assert max_abs(jx.encode_document(TEXTS), st.encode_document(TEXTS)) < TOL
    assert max_abs(jx.encode(TEXTS, prompt_name="classification"), st.encode(TEXTS, prompt_name="classification")) < TOL
    assert max_abs(jx.encode(TEXTS, prompt="Represent this: "), st.encode(TEXTS, prompt="Represent this: ")) < TOL
    # A prompt really changes the result when it is pooled.
    if include_prompt:
        assert max_abs(jx.encode_query(TEXTS), jx.encode(TEXTS)) > 1e-3


def test_default_prompt_name_and_constructor_prompts(make_tiny_st):
    folder = make_tiny_st(prompts=PROMPTS, default_prompt_name="query", include_prompt=False)
    st, jx = load_both(folder)
    assert jx.default_prompt_name == st.default_prompt_name == "query"
    assert max_abs(jx.encode(TEXTS), st.encode(TEXTS)) < TOL
    st2, jx2 = load_both(folder, prompts={"query": "q: "}, default_prompt_name="document")
    assert jx2.prompts == st2.prompts
    assert max_abs(jx2.encode(TEXTS), st2.encode(TEXTS)) < TOL
    assert max_abs(jx2.encode_query(TEXTS), st2.encode_query(TEXTS)) < TOL


@pytest.fixture(scope="module")
def tiny_pair(make_tiny_st):
    return load_both(make_tiny_st(pooling_mode="mean", dense=[(16, torch.nn.Tanh(), True)]))


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_encode_options(tiny_pair, batch_size):
    st, jx = tiny_pair
    for kwargs in (
        {},
        {"normalize_embeddings": True},
        {"truncate_dim": 7},
        {"truncate_dim": 7, "normalize_embeddings": True},
    ):
        expected = st.encode(TEXTS, batch_size=batch_size, **kwargs)
        got = jx.encode(TEXTS, batch_size=batch_size, **kwargs)
        assert got.dtype == np.float32 and got.shape == expected.shape, kwargs
        assert max_abs(got, expected) < TOL, kwargs


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_encode_precision(tiny_pair, precision):
    st, jx = tiny_pair
    expected = st.encode(TEXTS, precision=precision, normalize_embeddings=True)
    got = jx.encode(TEXTS, precision=precision, normalize_embeddings=True)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # And exactly sentence-transformers' quantizer applied to jaxst's own float embeddings.
    from sentence_transformers.util import quantize_embeddings

    floats = jx.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_array_equal(got, quantize_embeddings(floats, precision=precision))


def test_encode_output_types(tiny_pair):
    st, jx = tiny_pair
    expected = st.encode(TEXTS)
    tensor = jx.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, jax.Array) and tensor.shape == expected.shape
    assert max_abs(tensor, expected) < TOL
    rows = jx.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(TEXTS) and rows[0].shape == (16,)
    single = jx.encode(TEXTS[0])
    assert single.shape == (16,)
    assert max_abs(single, st.encode(TEXTS[0])) < TOL
    single_tensor = jx.encode(TEXTS[2], convert_to_tensor=True)
    assert isinstance(single_tensor, jax.Array) and single_tensor.shape == (16,)


def test_token_embeddings(tiny_pair):
    st, jx = tiny_pair
    expected = st.encode(TEXTS, output_value="token_embeddings")
    got = jx.encode(TEXTS, output_value="token_embeddings")
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        assert max_abs(g, e.numpy()) < TOL
    everything = jx.encode(TEXTS[:3], output_value=None)
    ref = st.encode(TEXTS[:3], output_value=None)
    for g, e in zip(everything, ref):
        assert max_abs(g["sentence_embedding"], e["sentence_embedding"].numpy()) < TOL
        np.testing.assert_array_equal(g["input_ids"], e["input_ids"].numpy()[: len(g["input_ids"])])


def test_truncation_to_max_seq_length(tiny_pair):
    st, jx = tiny_pair
    long_text = TEXTS[7]
    assert jx.max_seq_length == st.max_seq_length == 64
    assert len(jx.tokenize([long_text])["input_ids"][0]) == 64
    np.testing.assert_array_equal(jx.tokenize([long_text])["input_ids"], st.tokenize([long_text])["input_ids"].numpy())
    jx.max_seq_length = st.max_seq_length = 16
    try:
        assert max_abs(jx.encode(TEXTS), st.encode(TEXTS)) < TOL
    finally:
        jx.max_seq_length = st.max_seq_length = 64


def test_similarity_functions(make_tiny_st):
    for name in ("cosine", "dot", "euclidean", "manhattan"):
        st, jx = load_both(make_tiny_st(similarity_fn_name=name))
        assert jx.similarity_fn_name == st.similarity_fn_name == name
        a, b = jx.encode(TEXTS[:4]), jx.encode(TEXTS[4:8])
        assert max_abs(jx.similarity(a, b), st.similarity(a, b).numpy()) < TOL
        assert max_abs(jx.similarity_pairwise(a, b), st.similarity_pairwise(a, b).numpy()) < TOL


def test_bucket_and_batch_independence(tiny_pair):
    """A text's embedding does not depend on its batch-mates, bucket or padded batch size."""
    _, jx = tiny_pair
    # Padding to a longer bucket than needed changes nothing either.
    check_padding_invariance(jx, TEXTS, batch_sizes=(1, 2, 5, 8, 32), tol=1e-6)


def test_functional_contract(tiny_pair):
    st, jx = tiny_pair
    batch = jx.tokenize(TEXTS)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int32 for v in batch.values())
    out = jax.jit(jx.apply)(jx.params, batch)
    assert isinstance(out, jax.Array)
    assert max_abs(out, jx.encode(TEXTS)) < 1e-6
    assert max_abs(out, st.encode(TEXTS)) < TOL
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(jx.params))


def test_grad_and_optax_step(tiny_pair):
    import optax

    _, jx = tiny_pair
    batch = jx.tokenize(["a cat sits on the mat", "a dog lies on the rug", "stocks fell"])

    def loss(params):
        e = jaxst.util.normalize_embeddings(jx.apply(params, batch))
        return jnp.sum(e[0] * e[1]) - jnp.sum(e[0] * e[2])

    grads = jax.grad(loss)(jx.params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    assert float(jnp.abs(grads["encoder"]["encoder"]["layer"][0]["attention"]["self"]["query"]["kernel"]).sum()) > 0

    opt = optax.adam(1e-2)
    state = opt.init(jx.params)
    updates, state = opt.update(grads, state, jx.params)
    new_params = optax.apply_updates(jx.params, updates)
    assert float(loss(new_params)) < float(loss(jx.params))
    assert max_abs(jx.apply(new_params, batch), jx.apply(jx.params, batch)) > 1e-4
