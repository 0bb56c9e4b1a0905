"""int8 inference (``dtype="int8"``): all-MiniLM-L6-v2 against its float32 self and sentence-transformers'
STSb score, the native VNNI product against exact integer arithmetic, the portable path giving the same
embeddings, and an int8 CrossEncoder ranking like sentence-transformers'."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import stsb_spearman

import jaxst
from jaxst import native
from jaxst.models import int8


@pytest.fixture(scope="module")
def int8_minilm(minilm_folder):
    return jaxst.SentenceTransformer(str(minilm_folder), dtype="int8")


@pytest.fixture(scope="module")
def int8_stsb(int8_minilm, minilm_stsb) -> np.ndarray:
    """The int8 model's embeddings of the unique STSb test sentences (``minilm_stsb``'s order)."""
    return int8_minilm.encode(minilm_stsb[1], batch_size=32)


def test_every_stsb_sentence_close_to_float32(int8_stsb, minilm_stsb):
    _, sentences, _, full = minilm_stsb
    quant = int8_stsb
    assert quant.dtype == np.float32 and quant.shape == full.shape
    cos = (quant * full).sum(1) / np.linalg.norm(quant, axis=1) / np.linalg.norm(full, axis=1)
    print(f"int8 MiniLM: lowest cosine to float32 {cos.min():.5f}")
    assert cos.min() >= 0.996, (cos.min(), sentences[int(cos.argmin())])  # README: cosine >= 0.996
    assert cos.mean() < 0.99999  # really quantized: not the float32 path under another name


def test_stsb_spearman_within_0_2_of_sentence_transformers(int8_stsb, minilm_stsb):
    rows, sentences, st_embeddings, _ = minilm_stsb
    reference = stsb_spearman(st_embeddings, rows, sentences)
    ours = stsb_spearman(int8_stsb, rows, sentences)
    assert abs(reference - 82.03) <= 0.01, reference
    assert abs(ours - reference) <= 0.2, (ours, reference)


@pytest.mark.parametrize("m, k, n", [(1, 4, 1), (13, 37, 33), (96, 384, 1152), (200, 1536, 384), (97, 768, 70)])
def test_products_are_exact(m, k, n):
    """Both paths of ``int8_product`` equal exact integer arithmetic: XLA's int8 dot (every CPU) and, where
    the CPU has AVX-512 VNNI, the native kernel, on ragged shapes (K not a multiple of 4, N of 32)."""
    rng = np.random.default_rng(m * k + n)
    x = rng.integers(-128, 128, (m, k), dtype=np.int8)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    exact = x.astype(np.int64) @ w.astype(np.int64)
    packed, correction = native.pack_int8_weights(w)
    np.testing.assert_array_equal(np.asarray(native.unpack_int8_weights(jnp.asarray(packed), k, n)), w)
    portable = jax.lax.dot(jnp.asarray(x), native.unpack_int8_weights(jnp.asarray(packed), k, n),
                           preferred_element_type=jnp.int32)
    np.testing.assert_array_equal(np.asarray(portable), exact)
    assert (native.int8_matmul_kernel() is not None) == native.has_vnni()  # built wherever VNNI is there
    if not native.has_vnni():
        pytest.skip("the native int8 kernel: this CPU has no AVX-512 VNNI (XLA's int8 dot was checked)")
    got = native.int8_matmul(jnp.asarray(x), jnp.asarray(packed), jnp.asarray(correction), n)
    np.testing.assert_array_equal(np.asarray(got), exact)


def test_portable_path_gives_identical_embeddings(int8_minilm, monkeypatch, minilm_stsb):
    """XLA's int8 dot (a CPU without VNNI, or JAXST_NATIVE=0) gives the very same embeddings: the integer
    sums are exact either way and the float steps are the same ops."""
    sentences = minilm_stsb[1][:300]
    first = int8_minilm.encode(sentences, batch_size=32)
    calls = []
    real = native.int8_matmul
    monkeypatch.setattr(native, "int8_matmul", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    jax.clear_caches()
    again = int8_minilm.encode(sentences, batch_size=32)
    assert bool(calls) == (native.int8_matmul_kernel() is not None)  # the native kernel ran where it exists
    calls.clear()
    monkeypatch.setenv(native.ENV, "0")
    native.int8_matmul_kernel.cache_clear()
    try:
        jax.clear_caches()
        portable = int8_minilm.encode(sentences, batch_size=32)
        assert not calls
    finally:
        monkeypatch.delenv(native.ENV)
        native.int8_matmul_kernel.cache_clear()
        jax.clear_caches()
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(portable, first)
    if native.int8_matmul_kernel() is None:
        pytest.skip("native kernel against XLA's int8 dot: this CPU has no AVX-512 VNNI, both runs took XLA's dot")


def test_quantization_steps():
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((64, 48)).astype(np.float32)
    q, scale = int8.quantize_weights(kernel)
    assert q.dtype == np.int8 and np.abs(q).max() == 127 and scale.shape == (48,)
    assert np.abs(q * scale - kernel).max() <= scale.max() / 2 + 1e-7
    x = jnp.asarray(rng.standard_normal((5, 64)).astype(np.float32)).at[2].set(0.0)
    x = x.at[3].set(jnp.abs(x[3]))  # one-sided, as after an activation function: the whole range still used
    xq, xs, xo = int8.quantize_rows(x)
    xq, xs, xo = np.asarray(xq), np.asarray(xs), np.asarray(xo)
    assert xq.dtype == np.int8 and xq.min() == -128 and xq.max() == 127
    assert xq[3].min() < -100 and xq[3].max() == 127  # [0, max] in 256 steps, not half of them
    np.testing.assert_allclose(xq[2] * xs[2] + xo[2], 0.0, atol=1e-7)  # a zero row stays zero
    assert np.abs(xq * xs + xo - np.asarray(x)).max() <= xs.max() / 2 + 1e-6


def test_int8_model_refuses_what_it_cannot_do(int8_minilm, tmp_path):
    with pytest.raises(ValueError, match="int8"):
        int8_minilm.save(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="int8"):
        int8_minilm.bfloat16()
    assert int8_minilm.dtype == np.int8
    with pytest.raises(ValueError, match="unsupported dtype"):
        jaxst.SentenceTransformer("all-MiniLM-L6-v2", dtype="int4")


@pytest.fixture(scope="module")
def minilm_reranker(tmp_path_factory, minilm_folder):
    """A reranker with real activations: all-MiniLM-L6-v2's encoder under a seeded classifier head, saved
    by sentence-transformers. (The tiny random rerankers' scores for these candidates lie within 0.01 of
    each other, closer than int8 rounding moves a random 32-wide model's logits: ~0.03-0.05.)"""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("minilm-reranker")
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(str(minilm_folder), num_labels=1)
    hf.save_pretrained(folder / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_folder / name).is_file():
            (folder / "hf" / name).write_bytes((minilm_folder / name).read_bytes())
    CrossEncoder(str(folder / "hf"), device="cpu").save(str(folder / "st"))
    return folder / "st"


def test_int8_cross_encoder_ranks_like_sentence_transformers(minilm_reranker):
    """The tiny reranker tests' query and candidates (tests/test_cross_encoder.py) through a reranker with
    real activations: every pair of candidates whose sentence-transformers float32 logits differ by more
    than 0.003 is ordered the same way by the int8 CrossEncoder (the seeded head gives logits within
    +-0.03, and int8 moves them by up to ~0.0015: closer candidates count as ties)."""
    from sentence_transformers import CrossEncoder
    from test_cross_encoder import DOCUMENTS, LONG, QUERY

    reference = CrossEncoder(str(minilm_reranker), device="cpu")
    full = jaxst.CrossEncoder(str(minilm_reranker))
    model = jaxst.CrossEncoder(str(minilm_reranker), dtype="int8")
    compared = 0
    for query in (QUERY, LONG):
        pairs = [(query, d) for d in DOCUMENTS]
        expected = reference.predict(pairs, activation_fn=torch_identity())
        scores = model.predict(pairs, activation_fn=lambda x: x)
        floats = full.predict(pairs, activation_fn=lambda x: x)
        assert 0 < np.abs(scores - floats).max() < 0.002
        for i in range(len(DOCUMENTS)):
            for j in range(i + 1, len(DOCUMENTS)):
                if abs(expected[i] - expected[j]) > 0.003:
                    compared += 1
                    assert (scores[i] > scores[j]) == (expected[i] > expected[j]), (query[:20], i, j)
        ranked = [r["corpus_id"] for r in model.rank(query, DOCUMENTS)]
        assert ranked == list(np.argsort(-scores, kind="stable"))
    assert compared >= 30  # of 56 pairs: the check is not vacuous


def torch_identity():
    import torch

    return torch.nn.Identity()


def test_mpnet_int8_stsb(mpnet_folder, mpnet_stsb_reference):
    """all-mpnet-base-v2 (relative position bias, 12 layers of 768) keeps cosine >= 0.993 to float32 on every
    STSb test sentence and its Spearman within 0.2 of sentence-transformers' float32 (whose embeddings of
    the unique sentences the float32 tests share)."""
    stsb_rows, sentences, reference = mpnet_stsb_reference
    model = jaxst.SentenceTransformer(str(mpnet_folder), dtype="int8")
    ours = model.encode(sentences, batch_size=32)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    cos = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    print(f"int8 mpnet: lowest cosine to float32 {cos.min():.5f}")
    assert cos.min() >= 0.993, cos.min()  # README: cosine >= 0.993
    assert cos.mean() < 0.99999  # really quantized
    reference_score = stsb_spearman(reference, stsb_rows, sentences)
    ours_score = stsb_spearman(ours, stsb_rows, sentences)
    assert abs(ours_score - reference_score) <= 0.2, (ours_score, reference_score)
