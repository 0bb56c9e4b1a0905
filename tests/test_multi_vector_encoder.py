"""jaxst.MultiVectorEncoder against sentence-transformers' MultiVectorEncoder on tiny random late-interaction
models built and saved in the test session (BERT backbone + token-level Dense projection + MultiVectorMask
+ token-level Normalize), and on a Stanford-NLP ColBERT (HF_ColBERT) checkpoint written the way that
library writes it."""

from __future__ import annotations

import json
import shutil
import string
import warnings

import jax
import numpy as np
import pytest
import torch
from conftest import assert_same_gradients, assert_same_hits, build_late_interaction, read_stsb, unique_sentences

from jaxst import MultiVectorEncoder, SentenceTransformer

TOL = 1e-5
QUERIES = ["What is the capital of France?", "hi", "Who plays the violin in the orchestra tonight, and why?",
           "a query long enough to be truncated at the query length because it goes on and on and on and on"]
DOCUMENTS = ["Paris is the capital, of France.", "Berlin!", "A woman is playing violin. " * 12,
             "The girl is carrying a baby; the man rides a horse."]


def assert_same_tokens(ours, ref) -> None:
    """One (tokens, dim) matrix per text: the same shapes, values within TOL."""
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        r = r.detach().numpy() if isinstance(r, torch.Tensor) else np.asarray(r)
        o = np.asarray(o)
        assert o.shape == r.shape
        assert float(np.max(np.abs(o - r), initial=0.0)) < TOL


VARIANTS = {
    # classic ColBERT: [MASK]-expanded to 16 query tokens, not attended; punctuation skipped in documents
    "colbert": dict(expansion={"strategy": "fixed", "length": 16}, skiplist=list(string.punctuation),
                    prompts={"query": "[Q] ", "document": "[D] "}),
    # expansion tokens attended; "min" keeps long queries whole up to query_length; skiplist on both sides
    "attend-min": dict(expansion={"strategy": "min", "attend": True, "length": 12}, query_length=24,
                       skiplist=list(string.punctuation), skiplist_tasks=["query", "document"],
                       similarity_fn_name="meanmaxsim"),
    # no expansion, no skiplist: lengths only
    "plain": dict(query_length=10, document_length=20),
}


@pytest.fixture(scope="module")
def late_models(tiny_backbone, tmp_path_factory):
    return {name: (folder, build_late_interaction(tiny_backbone, folder, **kwargs))
            for name, kwargs in VARIANTS.items()
            for folder in [tmp_path_factory.mktemp(f"mv-{name}")]}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_token_embeddings_match_sentence_transformers(late_models, name):
    folder, st = late_models[name]
    model = MultiVectorEncoder(str(folder))
    assert model.get_embedding_dimension() == 8 == st.get_embedding_dimension()
    assert model.similarity_fn_name == st.similarity_fn_name
    assert_same_tokens(model.encode_query(QUERIES, batch_size=3), st.encode_query(QUERIES, batch_size=3))
    assert_same_tokens(model.encode_document(DOCUMENTS, batch_size=3), st.encode_document(DOCUMENTS, batch_size=3))
    assert_same_tokens(model.encode(DOCUMENTS), st.encode(DOCUMENTS))  # no task: the document-side skiplist
    # one text, numpy output, the padded form
    one = model.encode_query(QUERIES[0], convert_to_numpy=True)
    assert isinstance(one, np.ndarray)
    assert_same_tokens([one], [st.encode_query(QUERIES[0])])
    padded, mask = model.encode_document(DOCUMENTS, return_padded=True)
    lists = model.encode_document(DOCUMENTS)
    assert padded.shape == (len(DOCUMENTS), max(len(x) for x in lists), 8) and mask.shape == padded.shape[:2]
    for row, m, x in zip(np.asarray(padded), np.asarray(mask), lists):
        assert m.sum() == len(x) and not m[len(x):].any()
        np.testing.assert_array_equal(row[: len(x)], np.asarray(x))


def test_stsb_similarity_and_top5(late_models):
    """500 STSb sentences as documents, 40 as queries: the maxsim and meanmaxsim matrices and the pairwise
    scores within 1e-5 of sentence-transformers', and the same top-5 documents per query."""
    from jaxst.maxsim import maxsim_search

    folder, st = late_models["colbert"]
    model = MultiVectorEncoder(str(folder))
    docs = unique_sentences(read_stsb("stsb-en-test.csv"))[:500]
    queries = [a for a, _, _ in read_stsb("stsb-en-dev.csv")[:40]]
    q_ours, d_ours = model.encode_query(queries), model.encode_document(docs)
    q_ref, d_ref = st.encode_query(queries), st.encode_document(docs)
    assert_same_tokens(q_ours, q_ref)
    assert_same_tokens(d_ours, d_ref)
    for name in ("maxsim", "meanmaxsim"):
        model.similarity_fn_name = st.similarity_fn_name = name
        ours = np.asarray(model.similarity(q_ours, d_ours))
        ref = st.similarity(q_ref, d_ref).numpy()
        assert float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref)))) < TOL, name
        pair_ours = np.asarray(model.similarity_pairwise(q_ours, d_ours[:40]))
        pair_ref = st.similarity_pairwise(q_ref, d_ref[:40]).numpy()
        assert float(np.max(np.abs(pair_ours - pair_ref) / np.maximum(1.0, np.abs(pair_ref)))) < TOL, name
    model.similarity_fn_name = st.similarity_fn_name = "maxsim"
    ref = st.similarity(q_ref, d_ref)
    expected = torch.topk(ref, 5, dim=1)
    q_pad, q_mask = model.encode_query(queries, return_padded=True)
    d_pad, d_mask = model.encode_document(docs, return_padded=True)
    hits = maxsim_search(q_pad, d_pad, query_mask=q_mask, corpus_mask=d_mask, top_k=5)
    want = [list(zip(ids.tolist(), values.tolist())) for ids, values in zip(expected.indices, expected.values)]
    assert_same_hits(hits, want, ref.numpy(), tol=TOL)  # ties aside, each hit's score the oracle's


def test_save_round_trip(late_models, tmp_path):
    folder, st = late_models["attend-min"]
    model = MultiVectorEncoder(str(folder))
    model.save(str(tmp_path / "saved"))
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    reloaded = STMultiVectorEncoder(str(tmp_path / "saved"), device="cpu")
    assert reloaded.similarity_fn_name == "meanmaxsim"
    assert reloaded[0].query_expansion == st[0].query_expansion
    assert_same_tokens(model.encode_query(QUERIES), reloaded.encode_query(QUERIES))
    assert_same_tokens(model.encode_document(DOCUMENTS), reloaded.encode_document(DOCUMENTS))
    again = MultiVectorEncoder(str(tmp_path / "saved"))
    assert_same_tokens(again.encode_query(QUERIES), st.encode_query(QUERIES))


@pytest.fixture(scope="module")
def stanford_colbert(tiny_backbone, tmp_path_factory):
    """A Stanford-NLP ColBERT checkpoint as that library saves it: HF_ColBERT's config.json, the encoder
    under "bert." and the projection as "linear.weight" in one file, settings in artifact.metadata."""
    from safetensors.torch import save_file
    from transformers import BertModel

    folder = tmp_path_factory.mktemp("stanford-colbert")
    bert = BertModel.from_pretrained(str(tiny_backbone), add_pooling_layer=False)
    torch.manual_seed(4)
    tensors = {f"bert.{k}": v.contiguous() for k, v in bert.state_dict().items()}
    tensors["linear.weight"] = torch.randn(8, 32) * 0.3
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((tiny_backbone / "config.json").read_text())
    config["architectures"] = ["HF_ColBERT"]
    (folder / "config.json").write_text(json.dumps(config))
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(tiny_backbone / file, folder / file)
    metadata = {"query_maxlen": 12, "doc_maxlen": 40, "mask_punctuation": True, "attend_to_mask_tokens": False,
                "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "dim": 8, "similarity": "cosine"}
    (folder / "artifact.metadata").write_text(json.dumps(metadata))
    return folder


def test_stanford_colbert_checkpoint(stanford_colbert, tmp_path):
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = STMultiVectorEncoder(str(stanford_colbert), device="cpu")
    model = MultiVectorEncoder(str(stanford_colbert))
    assert model.prompts == {"query": "[unused0] ", "document": "[unused1] "}
    assert model.prompts == {k: st.prompts[k] for k in model.prompts}
    ids = model.tokenize(["what?"], prompt=model.prompts["query"], task="query")["input_ids"][0]
    ref_ids = st.preprocess(["what?"], prompt=st.prompts["query"], task="query")["input_ids"][0].numpy()
    np.testing.assert_array_equal(ids, ref_ids)  # [CLS] [unused0] what ? [SEP] [MASK] x 7: the marker is one token
    q_ours, d_ours = model.encode_query(QUERIES), model.encode_document(DOCUMENTS)
    q_ref, d_ref = st.encode_query(QUERIES), st.encode_document(DOCUMENTS)
    assert_same_tokens(q_ours, q_ref)
    assert_same_tokens(d_ours, d_ref)
    ours, ref = np.asarray(model.similarity(q_ours, d_ours)), st.similarity(q_ref, d_ref).numpy()
    assert float(np.max(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref)))) < TOL
    # saved in sentence-transformers' own format, it loads there with the same results
    model.save(str(tmp_path / "converted"))
    reloaded = STMultiVectorEncoder(str(tmp_path / "converted"), device="cpu")
    assert_same_tokens(model.encode_query(QUERIES), reloaded.encode_query(QUERIES))
    assert_same_tokens(model.encode_document(DOCUMENTS), reloaded.encode_document(DOCUMENTS))


def test_pylate_folder(late_models, tmp_path):
    """A PyLate 3 save (modules.json lists the Transformer and PyLate's Dense only; the prefixes, lengths,
    expansion and skiplist are top-level settings in config_sentence_transformers.json, model_type "ColBERT"):
    the same model as sentence-transformers builds from it, and saved in that library's own format."""
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    source, _ = late_models["plain"]
    folder = tmp_path / "pylate"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("2_MultiVectorMask", "3_Normalize"))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    dense = json.loads((folder / "1_Dense" / "config.json").read_text())
    (folder / "1_Dense" / "config.json").write_text(json.dumps(
        {k: v for k, v in dense.items() if k not in ("module_input_name", "module_output_name")}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "ColBERT", "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
        "similarity_fn_name": "MaxSim", "query_prefix": "[unused0]", "document_prefix": "[unused1]",
        "query_length": 12, "document_length": 40, "attend_to_expansion_tokens": False,
        "skiplist_words": list(string.punctuation)}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = STMultiVectorEncoder(str(folder), device="cpu")
    model = MultiVectorEncoder(str(folder))
    assert model.prompts == {k: st.prompts[k] for k in model.prompts} and model.prompts["query"] == "[unused0]"
    assert model.query_expansion == st[0].query_expansion and model.document_length == 40
    assert_same_tokens(model.encode_query(QUERIES), st.encode_query(QUERIES))
    assert_same_tokens(model.encode_document(DOCUMENTS), st.encode_document(DOCUMENTS))
    model.save(str(tmp_path / "native"))
    reloaded = STMultiVectorEncoder(str(tmp_path / "native"), device="cpu")
    assert_same_tokens(model.encode_query(QUERIES), reloaded.encode_query(QUERIES))
    assert_same_tokens(model.encode_document(DOCUMENTS), reloaded.encode_document(DOCUMENTS))


def test_hierarchical_token_pooling(late_models, tmp_path):
    """HierarchicalTokenPooling per call and as the folder's last module: sentence-transformers' pooled
    documents (Ward clusters on cosine distance, cluster means, protected leading tokens, normalized), queries
    untouched; the module survives a jaxst save."""
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling as STPooling

    from jaxst.multi_vector_encoder import HierarchicalTokenPooling

    folder, st = late_models["colbert"]
    model = MultiVectorEncoder(str(folder))
    docs = DOCUMENTS + unique_sentences(read_stsb("stsb-en-test.csv"))[:20]
    for factor, protected, normalize in ((2, 1, True), (3.0, 0, False), (1.5, 2, True)):
        kwargs = dict(num_protected_tokens=protected, normalize_embeddings=normalize)
        ours = model.encode_document(docs, token_pooling=HierarchicalTokenPooling(factor, **kwargs))
        ref = st.encode_document(docs, token_pooling=STPooling(factor, **kwargs))
        assert_same_tokens(ours, ref)
        assert sum(len(x) for x in ours) < sum(len(x) for x in model.encode_document(docs))
    pooling = HierarchicalTokenPooling(2)
    assert_same_tokens(model.encode_query(QUERIES, token_pooling=pooling), model.encode_query(QUERIES))
    assert_same_tokens(pooling.pool(model.encode_document(docs)), st.encode_document(docs, token_pooling=STPooling(2)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        STMultiVectorEncoder(modules=[*st, STPooling(2.0, num_protected_tokens=1)], device="cpu").save(
            str(tmp_path / "pooled"))
        st_pooled = STMultiVectorEncoder(str(tmp_path / "pooled"), device="cpu")
    pooled = MultiVectorEncoder(str(tmp_path / "pooled"))
    assert_same_tokens(pooled.encode_document(docs), st_pooled.encode_document(docs))
    assert_same_tokens(pooled.encode_query(QUERIES), st_pooled.encode_query(QUERIES))
    pooled.save(str(tmp_path / "pooled-again"))
    again = STMultiVectorEncoder(str(tmp_path / "pooled-again"), device="cpu")
    assert_same_tokens(pooled.encode_document(docs), again.encode_document(docs))
    with pytest.raises(ValueError, match="HierarchicalTokenPooling"):
        from jaxst.training import collate

        collate(pooled, [("a", "b")])


def _ward_heights(embeddings, protected: int) -> np.ndarray:
    """Every Ward merge height of each document's poolable tokens (scipy on the cosine distances)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    heights = []
    for e in embeddings:
        x = np.asarray(e, np.float32)[protected:]
        if len(x) > 1:
            heights.append(linkage(squareform(np.clip(1 - x @ x.T, 0, 2), checks=False), method="ward")[:, 2])
    return np.concatenate(heights)


def test_token_pooling_max_tokens_and_distance_threshold(late_models):
    """6.3's other two ways to size the clusters: ``max_tokens`` (at most that many output tokens, protected
    ones included; shorter documents untouched; 2 with one protected token: one mean) and ``distance_threshold``
    (the Ward tree cut at a height, so the count follows each document): the same clusters (token counts) and
    vectors within 1e-5 as sentence-transformers 6.3; the config keys and argument checks of 6.3."""
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling as STPooling

    from jaxst.multi_vector_encoder import HierarchicalTokenPooling

    folder, st = late_models["colbert"]
    model = MultiVectorEncoder(str(folder))
    docs = DOCUMENTS + unique_sentences(read_stsb("stsb-en-test.csv"))[:20]
    plain = [len(x) for x in model.encode_document(docs)]
    for kwargs in (dict(max_tokens=6), dict(max_tokens=4, num_protected_tokens=0, normalize_embeddings=False),
                   dict(max_tokens=2), dict(max_tokens=9, num_protected_tokens=2)):
        ours = model.encode_document(docs, token_pooling=HierarchicalTokenPooling(**kwargs))
        assert_same_tokens(ours, st.encode_document(docs, token_pooling=STPooling(**kwargs)))
        assert [len(x) for x in ours] == [min(n, kwargs["max_tokens"]) for n in plain]
    heights = _ward_heights(model.encode_document(docs), 1)
    for threshold in (0.3, 0.8, 1.5):
        assert np.abs(heights - threshold).min() > 1e-4  # no merge at the cut: the clusters cannot flip
        kwargs = dict(distance_threshold=threshold)
        ours = model.encode_document(docs, token_pooling=HierarchicalTokenPooling(**kwargs))
        assert_same_tokens(ours, st.encode_document(docs, token_pooling=STPooling(**kwargs)))
        ratios = {round(len(o) / n, 3) for o, n in zip(ours, plain)}
        assert sum(len(x) for x in ours) < sum(plain) and len(ratios) > 2  # not a fixed factor
    pooling = HierarchicalTokenPooling(distance_threshold=0.8, num_protected_tokens=0, normalize_embeddings=False)
    assert pooling.get_config_dict() == STPooling(distance_threshold=0.8, num_protected_tokens=0,
                                                  normalize_embeddings=False).get_config_dict()
    for bad in (dict(pool_factor=2, max_tokens=4), dict(max_tokens=4, distance_threshold=0.5),
                dict(pool_factor=2, distance_threshold=0.5), dict(max_tokens=1), dict(distance_threshold=-1.0),
                dict(pool_factor=float("inf"))):
        for cls in (HierarchicalTokenPooling, STPooling):
            with pytest.raises(ValueError):
                cls(**bad)


def test_calibrate_distance_threshold(late_models):
    """``HierarchicalTokenPooling.calibrate_distance_threshold`` (a static method in 6.3): on the same document
    embeddings, the threshold sentence-transformers returns (within 1e-5), None when the budget needs no
    merge, its errors; pooling with it keeps the average at most the target."""
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling as STPooling

    from jaxst.multi_vector_encoder import HierarchicalTokenPooling

    _, st = late_models["colbert"]
    docs = DOCUMENTS + unique_sentences(read_stsb("stsb-en-test.csv"))[:20]
    ref_embeddings = st.encode_document(docs)
    arrays = [e.numpy() for e in ref_embeddings]
    average = sum(len(x) for x in arrays) / len(arrays)
    calibrate = HierarchicalTokenPooling.calibrate_distance_threshold
    for target, protected in ((5.3, 1), (average / 2, 0), (3.55, 2), (average - 0.45, 1), (6, 1)):
        ours = calibrate(arrays, target_tokens=target, num_protected_tokens=protected)
        ref = STPooling.calibrate_distance_threshold(ref_embeddings, target_tokens=target,
                                                     num_protected_tokens=protected)
        assert isinstance(ours, float) and abs(ours - ref) < TOL, (target, protected)
        pooled = HierarchicalTokenPooling(distance_threshold=ours, num_protected_tokens=protected).pool(arrays)
        assert target - 1 < sum(len(x) for x in pooled) / len(pooled) <= target  # the merge at the cut included
    assert calibrate(iter(arrays), target_tokens=average) is None  # a generator, as 6.3 takes an iterable
    assert STPooling.calibrate_distance_threshold(ref_embeddings, target_tokens=average) is None
    for bad, message in ((dict(target_tokens=1.5), "at least 2 "),  # the protected token and one mean
                         (dict(target_tokens=2.5, num_protected_tokens=2), "at least 3 "),
                         (dict(target_tokens=0), "finite and > 0")):
        with pytest.raises(ValueError, match=message):
            calibrate(arrays, **bad)
        with pytest.raises(ValueError, match=message):
            STPooling.calibrate_distance_threshold(ref_embeddings, **bad)
    with pytest.raises(ValueError, match="at least one"):
        calibrate([], target_tokens=4)


def test_model_level_token_pooling_and_truncate_dim(late_models, tmp_path):
    """``MultiVectorEncoder(token_pooling=, truncate_dim=)`` and the same arguments of encode / encode_query /
    encode_document (6.3): a per-call value wins over the model's; the pooling applies to the tasks it names
    (documents, and no task), after the pipeline; truncation applies to every token vector, queries' too, after
    the pooling, and L2-normalizes again. Within 1e-5 of 6.3 on each combination; truncate_dim is saved and
    loaded both ways, the pooling is not saved."""
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling as STPooling

    from jaxst.multi_vector_encoder import HierarchicalTokenPooling

    folder, _ = late_models["attend-min"]  # the skiplist on both sides, attended [MASK] expansion
    docs = DOCUMENTS + unique_sentences(read_stsb("stsb-en-test.csv"))[:8]
    model = MultiVectorEncoder(str(folder), token_pooling=HierarchicalTokenPooling(2), truncate_dim=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = STMultiVectorEncoder(str(folder), device="cpu", token_pooling=STPooling(2), truncate_dim=5)
    assert model.get_embedding_dimension() == 5 == st.get_embedding_dimension()
    assert_same_tokens(model.encode_document(docs), st.encode_document(docs))
    assert_same_tokens(model.encode(docs), st.encode(docs))
    queries = model.encode_query(QUERIES)
    assert_same_tokens(queries, st.encode_query(QUERIES))
    full = MultiVectorEncoder(str(folder)).encode_query(QUERIES)
    assert [len(q) for q in queries] == [len(q) for q in full]  # not pooled, truncated, unit vectors again
    assert all(np.allclose(np.linalg.norm(np.asarray(q), axis=-1), 1.0, atol=1e-5) for q in queries)
    assert float(np.linalg.norm(np.asarray(full[0])[:, :5], axis=-1).min()) < 0.99
    per_call = [  # (jaxst's arguments, sentence-transformers')
        (dict(truncate_dim=3), dict(truncate_dim=3)),
        (dict(token_pooling=HierarchicalTokenPooling(max_tokens=4)), dict(token_pooling=STPooling(max_tokens=4))),
        (dict(token_pooling=HierarchicalTokenPooling(distance_threshold=0.6, tasks=["query", "document"]),
              truncate_dim=7),
         dict(token_pooling=STPooling(distance_threshold=0.6, tasks=["query", "document"]), truncate_dim=7)),
        (dict(normalize_embeddings=True, truncate_dim=8), dict(normalize_embeddings=True, truncate_dim=8)),
    ]
    for ours, ref in per_call:
        assert_same_tokens(model.encode_document(docs, **ours), st.encode_document(docs, **ref))
        assert_same_tokens(model.encode_query(QUERIES, **ours), st.encode_query(QUERIES, **ref))
    padded, mask = model.encode_document(docs, truncate_dim=3, return_padded=True)
    assert padded.shape[-1] == 3 and float(np.abs(np.asarray(padded)[~np.asarray(mask)]).max(initial=0)) == 0

    # without model-level settings: per call only; truncate_dim saved and loaded, the pooling is not
    plain = MultiVectorEncoder(str(folder))
    assert plain.token_pooling is None and plain.truncate_dim is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_plain = STMultiVectorEncoder(str(folder), device="cpu")
    assert_same_tokens(plain.encode_document(docs, token_pooling=HierarchicalTokenPooling(2), truncate_dim=5),
                       st.encode_document(docs))
    assert_same_tokens(plain.encode_document(docs, truncate_dim=4), st_plain.encode_document(docs, truncate_dim=4))
    model.save(str(tmp_path / "ours"))
    st.save(str(tmp_path / "theirs"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = STMultiVectorEncoder(str(tmp_path / "ours"), device="cpu")
    assert reloaded.truncate_dim == 5 and reloaded.token_pooling is None
    assert_same_tokens(MultiVectorEncoder(str(tmp_path / "theirs")).encode_document(docs),
                       reloaded.encode_document(docs))
    assert MultiVectorEncoder(str(tmp_path / "theirs"), truncate_dim=6).get_embedding_dimension() == 6
    with pytest.raises(ValueError, match="truncate_dim"):
        plain.encode_document(docs, truncate_dim=0)
    with pytest.raises(ValueError, match="token_pooling"):
        plain.token_pooling = "half"


def test_bad_input(late_models, make_tiny_st):
    folder, _ = late_models["colbert"]
    with pytest.raises(ValueError, match="load it with jaxst.MultiVectorEncoder"):
        SentenceTransformer(str(folder))
    with pytest.raises(ValueError, match="not a multi-vector model"):
        MultiVectorEncoder(str(make_tiny_st()))
    model = MultiVectorEncoder(str(folder))
    with pytest.raises(ValueError, match="convert_to_tensor"):
        model.encode(["a"], convert_to_tensor=True)
    with pytest.raises(ValueError, match="task must be"):
        model.encode(["a"], task="passage")
    with pytest.raises(ValueError, match="similarity_fn_name"):
        model.similarity_fn_name = "cosine"
    for bad in (0, -1):
        with pytest.raises(ValueError, match="batch_size"):
            model.encode(["a"], batch_size=bad)
    assert jax.numpy.asarray(model.encode_query("a")).shape == (16, 8)


def _st_loss_and_grads(folder, triplets, loss_kwargs):
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorMultipleNegativesRankingLoss as STLoss

    st = STMultiVectorEncoder(str(folder), device="cpu")
    st.eval()  # no dropout on either side
    features = []
    for i, task in enumerate(["query"] + ["document"] * (len(triplets[0]) - 1)):
        f = st.preprocess([t[i] for t in triplets], task=task)
        f["task"] = task
        features.append(f)
    ref = STLoss(st, **loss_kwargs)(features, None)
    ref.backward()
    return st, float(ref.detach())


def _triplets(n: int) -> list[tuple[str, str, str]]:
    rows = read_stsb("stsb-en-train.csv")[:n]
    return [(a, b, rows[(i + 1) % n][1]) for i, (a, b, _) in enumerate(rows)]


@pytest.mark.parametrize("name", ["colbert", "attend-min"])
def test_contrastive_loss_matches_sentence_transformers(late_models, name):
    """MultiVectorMultipleNegativesRankingLoss through jaxst.training (column 0 the queries, the others
    documents, as sentence-transformers' collator assigns them): its loss and autograd gradients on the same
    (query, positive, negative) batch; MeanMaxSim with a scale for the attend-min model."""
    from jaxst.losses import MultiVectorMultipleNegativesRankingLoss
    from jaxst.training import collate, make_loss_fn

    folder, _ = late_models[name]
    triplets = _triplets(6)
    mean = name == "attend-min"
    if mean:
        from sentence_transformers.multi_vector_encoder.scoring import mean_colbert_scores

        st, ref = _st_loss_and_grads(folder, triplets, {"scale": 8.0, "similarity_fct": mean_colbert_scores})
    else:
        st, ref = _st_loss_and_grads(folder, triplets, {})
    model = MultiVectorEncoder(str(folder))
    loss = MultiVectorMultipleNegativesRankingLoss(scale=8.0 if mean else 1.0, length_normalize=mean)
    value, grads = jax.value_and_grad(make_loss_fn(model, loss, dropout=False))(model.params, collate(model, triplets))
    assert abs(float(value) - ref) < TOL * max(1.0, abs(ref))
    assert_same_gradients(st, [
        (grads["heads"][0]["linear"]["kernel"], "1.linear.weight", True),
        (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"],
         "encoder.layer.1.output.dense.weight", True),
        (grads["encoder"]["embeddings"]["word_embeddings"]["embedding"], "embeddings.word_embeddings.weight", False),
    ])


def test_contrastive_loss_follows_the_model_similarity(late_models):
    """6.3's MultiVectorMultipleNegativesRankingLoss without a ``similarity_fct`` scores with the model's
    similarity: MeanMaxSim for the "meanmaxsim" model (6.2 scored MaxSim whatever the model). jaxst's, given the
    model and no ``length_normalize``: the same loss and gradients; ``length_normalize=False`` still forces
    MaxSim, and a ``similarity_fct`` (6.3's calling convention) is used as given."""
    from jaxst.losses import MultiVectorMultipleNegativesRankingLoss
    from jaxst.maxsim import maxsim_scores
    from jaxst.training import collate, make_loss_fn

    folder, _ = late_models["attend-min"]
    triplets = _triplets(6)
    st, ref = _st_loss_and_grads(folder, triplets, {"scale": 8.0})
    model = MultiVectorEncoder(str(folder))
    assert model.similarity_fn_name == "meanmaxsim"
    batch = collate(model, triplets)
    loss = MultiVectorMultipleNegativesRankingLoss(model, scale=8.0)
    assert loss.length_normalize and MultiVectorMultipleNegativesRankingLoss(MultiVectorEncoder(
        str(late_models["colbert"][0])), scale=8.0).length_normalize is False
    value, grads = jax.value_and_grad(make_loss_fn(model, loss, dropout=False))(model.params, batch)
    assert abs(float(value) - ref) < TOL * max(1.0, abs(ref))
    assert_same_gradients(st, [(grads["heads"][0]["linear"]["kernel"], "1.linear.weight", True)])
    maxsim = MultiVectorMultipleNegativesRankingLoss(model, scale=8.0, length_normalize=False)
    assert abs(float(make_loss_fn(model, maxsim, dropout=False)(model.params, batch)) - ref) > 1e-2

    def mean_scores(queries, documents, queries_mask, documents_mask):
        return maxsim_scores(queries, queries_mask, documents.reshape(-1, *documents.shape[2:]),
                             documents_mask.reshape(-1, documents_mask.shape[-1]), length_normalize=True)

    custom = MultiVectorMultipleNegativesRankingLoss(scale=8.0, similarity_fct=mean_scores)
    assert abs(float(make_loss_fn(model, custom, dropout=False)(model.params, batch)) - ref) < TOL * max(1.0, abs(ref))


SHARDED_SCRIPT = """
    import json, sys
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxst import MultiVectorEncoder
    from jaxst.losses import MultiVectorMultipleNegativesRankingLoss
    from jaxst.training import collate, make_loss_fn

    folder, triplets = sys.argv[1], json.loads(sys.argv[2])
    model = MultiVectorEncoder(folder, device="cpu:0")
    batch = collate(model, [tuple(t) for t in triplets])
    loss = MultiVectorMultipleNegativesRankingLoss()
    one = jax.jit(jax.value_and_grad(make_loss_fn(model, loss, dropout=False)))(model.params, batch)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    params = jax.device_put(model.params, NamedSharding(mesh, P()))  # replicated on the 8 devices
    eight = jax.jit(jax.value_and_grad(make_loss_fn(model, loss, dropout=False, mesh=mesh)))(params, batch)
    local = MultiVectorMultipleNegativesRankingLoss(gather_across_devices=False)
    own = float(jax.jit(make_loss_fn(model, local, dropout=False, mesh=mesh))(params, batch))
    grad_gap = max(float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(1.0, float(np.abs(np.asarray(a)).max())))
                   for a, b in zip(jax.tree.leaves(one[1]), jax.tree.leaves(eight[1])))
    print(json.dumps({"devices": jax.device_count(), "one": float(one[0]), "eight": float(eight[0]),
                      "grad_gap": grad_gap, "own_devices_only": own}))
"""


def test_contrastive_loss_gathers_across_eight_devices(late_models):
    """On a mesh of 8 forced CPU devices, each device embeds its rows and scores its queries against the
    documents gathered from all devices: the one-device loss and gradients; without gathering, the loss
    changes (each query sees only its own device's documents)."""
    import os
    import subprocess
    import sys
    import textwrap

    folder, _ = late_models["colbert"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "JAXST_COMPILATION_CACHE": "0",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SHARDED_SCRIPT), str(folder),
                             json.dumps(_triplets(16))], capture_output=True, text=True, timeout=480, env=env)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8
    assert abs(r["one"] - r["eight"]) < TOL * max(1.0, abs(r["one"]))
    assert r["grad_gap"] < TOL
    assert abs(r["own_devices_only"] - r["one"]) > 1e-3


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("family", ["bert", "mpnet", "distilbert"])
def test_key_prefix_mask_is_a_masked_tail(family, native, monkeypatch):
    """An attention mask narrower than the input (what encode passes for [MASK]-expanded queries: only the
    first S tokens are keys) gives every token, the unattended tail included, the same states as the full
    mask with that tail zeroed, on the native kernel and on XLA's ops; a mask wider than the input is an
    error, not a silent broadcast."""
    from flax import nnx

    from jaxst.models import layers
    from jaxst.models.bert import BertConfig, BertModel
    from jaxst.models.distilbert import DistilBertConfig, DistilBertModel
    from jaxst.models.mpnet import MPNetConfig, MPNetModel

    if not native:
        monkeypatch.setattr(layers, "_native_ok", lambda *a: False)
    sizes = dict(vocab_size=100, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    model = {"bert": lambda: BertModel(BertConfig(hidden_size=32, **sizes), rngs=nnx.Rngs(0)),
             "mpnet": lambda: MPNetModel(MPNetConfig(hidden_size=32, **sizes), rngs=nnx.Rngs(0)),
             "distilbert": lambda: DistilBertModel(DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4,
                                                                    hidden_dim=48), rngs=nnx.Rngs(0))}[family]()
    assert type(model).key_prefix
    rng = np.random.default_rng(0)
    ids = jax.numpy.asarray(rng.integers(1, 100, (3, 16)), jax.numpy.int32)
    full = np.zeros((3, 16), np.int32)
    full[0, :9], full[1, :5], full[2, :12] = 1, 1, 1  # real tokens; the rest [MASK] expansion
    whole = np.asarray(model(ids, jax.numpy.asarray(full)))
    narrow = np.asarray(model(ids, jax.numpy.asarray(full[:, :12])))
    assert narrow.shape == whole.shape == (3, 16, 32)
    assert float(np.abs(narrow - whole).max()) < 1e-6
    # control: a prefix that drops a real key changes the states
    assert float(np.abs(np.asarray(model(ids, jax.numpy.asarray(full[:, :8]))) - whole).max()) > 1e-3
    with pytest.raises(ValueError, match="does not fit 16 tokens"):
        model(ids, jax.numpy.asarray(np.ones((3, 20), np.int32)))
