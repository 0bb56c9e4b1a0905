"""The functional core (similarity, quantization, pooling, search) against sentence-transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import max_abs
from sentence_transformers import util as st_util

from jaxst import util
from jaxst.pooling import pool

rng = np.random.default_rng(0)
A = rng.standard_normal((7, 24)).astype(np.float32)
B = rng.standard_normal((11, 24)).astype(np.float32)


@pytest.mark.parametrize("name", ["cos_sim", "pytorch_cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"])
def test_matrix_scores(name):
    ours = getattr(util, name)(A, B)
    ref = getattr(st_util, name)(torch.from_numpy(A), torch.from_numpy(B)).numpy()
    assert ours.dtype == jnp.float32 and ours.shape == (7, 11)
    assert max_abs(ours, ref) < 1e-5
    # Lists, jax arrays and single vectors are accepted like in the original.
    assert max_abs(getattr(util, name)(list(A), jnp.asarray(B)), ref) < 1e-5
    assert getattr(util, name)(A[0], B).shape == (1, 11)


@pytest.mark.parametrize("name", ["pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim",
                                  "pairwise_manhattan_sim"])
def test_pairwise_scores(name):
    ours = getattr(util, name)(A, B[:7])
    ref = getattr(st_util, name)(torch.from_numpy(A), torch.from_numpy(B[:7])).numpy()
    assert ours.shape == (7,)
    assert max_abs(ours, ref) < 1e-5
    with pytest.raises(ValueError, match="shape"):
        getattr(util, name)(A, B)


@pytest.mark.parametrize("half", [jnp.bfloat16, jnp.float16, np.float16])
def test_half_precision_inputs_score_in_float32(half):
    """bf16/fp16 embeddings (jax or numpy) give float32 scores: those of the same values in float32."""
    a16, b16 = jnp.asarray(A).astype(half), jnp.asarray(B).astype(half)
    if half is np.float16:
        a16, b16 = np.asarray(A, np.float16), np.asarray(B, np.float16)
    a32, b32 = (torch.from_numpy(np.asarray(x, np.float32)) for x in (a16, b16))
    for name in ("cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"):
        ours = getattr(util, name)(a16, b16)
        assert ours.dtype == jnp.float32, name
        assert max_abs(ours, getattr(st_util, name)(a32, b32).numpy()) < 1e-5, name
    for name in ("pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim",
                 "pairwise_angle_sim"):
        ours = getattr(util, name)(a16, b16[:7])
        assert ours.dtype == jnp.float32, name
        assert max_abs(ours, getattr(st_util, name)(a32, b32[:7]).numpy()) < 1e-5, name
    hits = util.semantic_search(a16, b16, top_k=3)
    ref = st_util.semantic_search(a32, b32, top_k=3)
    assert [[h["corpus_id"] for h in r] for r in hits] == [[h["corpus_id"] for h in r] for r in ref]
    assert all(isinstance(h["score"], float) for r in hits for h in r)


def test_normalize_and_truncate():
    ref = st_util.normalize_embeddings(torch.from_numpy(A)).numpy()
    assert max_abs(util.normalize_embeddings(A), ref) < 1e-6
    assert max_abs(util.normalize_embeddings(np.zeros((2, 3), np.float32)), np.zeros((2, 3))) == 0
    assert util.truncate_embeddings(A, 5).shape == (7, 5)
    np.testing.assert_array_equal(util.truncate_embeddings(A, 5), st_util.truncate_embeddings(A, 5))


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_bit_exact(precision):
    x = rng.standard_normal((200, 45)).astype(np.float32)
    calib = rng.standard_normal((500, 45)).astype(np.float32)
    ranges = np.vstack([np.full(45, -1.5, np.float32), np.full(45, 1.5, np.float32)])
    for kwargs in ({}, {"calibration_embeddings": calib}, {"ranges": ranges}):
        ref = st_util.quantize_embeddings(x, precision=precision, **kwargs)
        ours = util.quantize_embeddings(x, precision=precision, **kwargs)
        assert ours.dtype == ref.dtype and ours.shape == ref.shape
        np.testing.assert_array_equal(ours, ref)
        # The jax.numpy path (jittable with static precision): binary is bit-exact; XLA's float32
        # division is not correctly rounded, so a value that sits on a bucket edge may land one level
        # lower or higher. encode() quantizes with numpy and is exact.
        jx_kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
        on_device = jax.jit(lambda e, kw: util.quantize_embeddings(e, precision, **kw))(jnp.asarray(x), jx_kwargs)
        on_device = np.asarray(on_device)
        assert on_device.dtype == ref.dtype and on_device.shape == ref.shape
        if precision.endswith("int8"):
            diff = np.abs(on_device.astype(np.int32) - ref.astype(np.int32))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        else:
            np.testing.assert_array_equal(on_device, ref)


def test_quantize_errors():
    with pytest.raises(ValueError, match="precision"):
        util.quantize_embeddings(A, "int4")
    with pytest.raises(ValueError, match="single embedding"):
        util.quantize_embeddings(A[:1], "int8")
    with pytest.raises(TypeError, match="float"):
        util.quantize_embeddings(A.astype(np.int8), "binary")


def test_pooling_matches_sentence_transformers_module():
    from sentence_transformers.sentence_transformer.modules import Pooling

    h = rng.standard_normal((4, 9, 6)).astype(np.float32)
    mask = np.array([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7, [1] + [0] * 8], dtype=np.int64)
    modes = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
    for prompt_length in (None, 2):
        ref_module = Pooling(6, pooling_mode=modes, include_prompt=prompt_length is None)
        features = {"token_embeddings": torch.from_numpy(h), "attention_mask": torch.from_numpy(mask)}
        if prompt_length:
            features["prompt_length"] = prompt_length
        ref = ref_module(features)["sentence_embedding"].numpy()
        ours = jax.jit(pool, static_argnums=2)(h, mask, modes, prompt_length)
        assert max_abs(np.where(np.isfinite(ref), ref, 0), np.where(np.isfinite(ours), ours, 0)) < 1e-6
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))


@pytest.mark.parametrize("score_function", ["cos_sim", "dot_score"])
@pytest.mark.parametrize("chunks", [(100, 500000), (3, 17), (1, 1000)])
def test_semantic_search_matches(score_function, chunks):
    q = rng.standard_normal((9, 16)).astype(np.float32)
    c = rng.standard_normal((300, 16)).astype(np.float32)
    ours = util.semantic_search(q, c, query_chunk_size=chunks[0], corpus_chunk_size=chunks[1], top_k=7,
                                score_function=getattr(util, score_function))
    ref = st_util.semantic_search(torch.from_numpy(q), torch.from_numpy(c), top_k=7,
                                  score_function=getattr(st_util, score_function))
    assert [[h["corpus_id"] for h in r] for r in ours] == [[h["corpus_id"] for h in r] for r in ref]
    assert max(abs(a["score"] - b["score"]) for ra, rb in zip(ours, ref) for a, b in zip(ra, rb)) < 1e-5


def test_semantic_search_edge_cases():
    c = rng.standard_normal((3, 8)).astype(np.float32)
    res = util.semantic_search(c[0], c, top_k=10)  # 1-D query, top_k larger than the corpus
    assert len(res) == 1 and len(res[0]) == 3 and res[0][0]["corpus_id"] == 0
    with pytest.raises(ValueError, match="top_k"):
        util.semantic_search(c, c, top_k=0)
    with pytest.raises(ValueError, match="dim"):
        util.semantic_search(c, c[:, :4])
