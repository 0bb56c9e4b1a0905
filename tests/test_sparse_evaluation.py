"""jaxst.sparse_evaluation against sentence-transformers 6.3's SparseEncoder evaluators: the same constructor
arguments, metric keys (the sparsity statistics included), primary metric, values within 1e-4 and CSV rows, both
libraries running the same tiny SPLADE model (saved by sentence-transformers) on STSb-derived tasks.

The model is conftest's ``save_tiny_splade`` (test_sparse_encoder.py's max/relu SPLADE) with the decoder bias
drawn around -4: about 140 active dimensions per text, as trained SPLADE models have, and no logit of these
texts within float32 noise of zero (around -3 one of ~10 million is, which moves ``active_dims`` by 1/400).
"""

from __future__ import annotations

import csv
import inspect
import json

import numpy as np
import pytest
from conftest import read_stsb, save_tiny_splade
from test_evaluation import assert_same_metrics, nanobeir_folder, retrieval_task

from jaxst import SparseEncoder
from jaxst import sparse_evaluation as ours_module

TOL = 1e-4
ROWS = read_stsb("stsb-en-test.csv")[:100]
S1, S2 = [a for a, _, _ in ROWS], [b for _, b, _ in ROWS]
HALF = len(ROWS) // 2  # a second configuration of an evaluator runs on the first half
ALL_FNS = ["cosine", "dot", "euclidean", "manhattan"]
EVALUATORS = ["SparseEmbeddingSimilarityEvaluator", "SparseBinaryClassificationEvaluator",
              "SparseInformationRetrievalEvaluator", "SparseMSEEvaluator", "SparseRerankingEvaluator",
              "SparseTranslationEvaluator", "SparseTripletEvaluator", "ReciprocalRankFusionEvaluator",
              "SparseNanoBEIREvaluator"]


@pytest.fixture(scope="module")
def splade(tmp_path_factory, minilm_folder):
    """(jaxst model, sentence-transformers model) of one saved tiny SPLADE folder."""
    from sentence_transformers import SparseEncoder as STSparseEncoder

    def perturb(key, p):
        if key == "cls.predictions.bias":
            p.normal_(-4.0, 0.5)
        elif key.endswith(".bias"):
            p.normal_(0.0, 0.2)
        elif key.endswith("LayerNorm.weight"):
            p.normal_(1.0, 0.2)

    folder = save_tiny_splade(tmp_path_factory, minilm_folder, "eval-splade", perturb)
    return SparseEncoder(str(folder)), STSparseEncoder(str(folder), device="cpu")


def reference(name: str):
    from sentence_transformers.sparse_encoder import evaluation

    return getattr(evaluation, name)


def read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def check(name: str, splade, tmp_path, ours_kwargs: dict, ref_kwargs: dict | None = None, **call) -> dict:
    """Build jaxst's and sentence-transformers' evaluator ``name``, run each on its library's model with an output
    path, and check the metrics, the primary metric and the CSV file; returns our metrics."""
    jx, st = splade
    ours = getattr(ours_module, name)(**ours_kwargs)
    ref = reference(name)(**(ref_kwargs or ours_kwargs))
    ours_metrics = ours(jx, str(tmp_path / "ours"), 1, 5, **call.get("ours", {}))
    ref_metrics = ref(st, str(tmp_path / "ref"), 1, 5, **call.get("ref", {}))
    assert_same_metrics(ours_metrics, ref_metrics)
    assert ours.primary_metric == ref.primary_metric and ours.primary_metric in ours_metrics
    assert list(ours_metrics) == list(ref_metrics)  # the same order too: the statistics last
    assert ours.sparsity_stats.keys() == ref.sparsity_stats.keys()
    # the CSV: the same columns (the statistics appended), the same values
    ours_rows, ref_rows = read_csv(tmp_path / "ours" / ours.csv_file), read_csv(tmp_path / "ref" / ref.csv_file)
    assert ours.csv_file == ref.csv_file and ours_rows[0] == ref_rows[0] and len(ours_rows) == len(ref_rows) == 2
    np.testing.assert_allclose(np.asarray(ours_rows[1], float), np.asarray(ref_rows[1], float), rtol=1e-6, atol=TOL)
    return ours_metrics


@pytest.mark.parametrize("name", EVALUATORS)
def test_constructor_and_call_signatures(name):
    """Every argument of sentence-transformers' evaluator, by name, in order, with its default (a list default
    is a tuple here); ``__call__`` alike."""
    ours, ref = getattr(ours_module, name), reference(name)

    def params(fn):
        return [(p.name, tuple(p.default) if isinstance(p.default, list) else p.default, p.kind)
                for p in inspect.signature(fn).parameters.values()]

    assert params(ours.__init__) == params(ref.__init__)
    assert params(ours.__call__) == params(ref.__call__)


def test_sparse_embedding_similarity_evaluator(splade, tmp_path):
    scores = [s / 5 for *_, s in ROWS]
    metrics = check("SparseEmbeddingSimilarityEvaluator", splade, tmp_path / "a",
                    dict(sentences1=S1, sentences2=S2, scores=scores, name="sts"))
    assert set(metrics) == {"sts_pearson_dot", "sts_spearman_dot", "sts_active_dims", "sts_sparsity_ratio"}
    assert 50 < metrics["sts_active_dims"] < 300 and 0.99 < metrics["sts_sparsity_ratio"] < 1
    from sentence_transformers import SimilarityFunction

    check("SparseEmbeddingSimilarityEvaluator", splade, tmp_path / "b",
          dict(sentences1=S1[:HALF], sentences2=S2[:HALF], scores=scores[:HALF], similarity_fn_names=ALL_FNS,
               main_similarity=SimilarityFunction.COSINE, max_active_dims=32))


def test_sparse_binary_classification_evaluator(splade, tmp_path):
    labels = [int(s >= 2.5) for *_, s in ROWS]
    check("SparseBinaryClassificationEvaluator", splade, tmp_path / "a", dict(sentences1=S1, sentences2=S2,
                                                                              labels=labels, batch_size=16))
    metrics = check("SparseBinaryClassificationEvaluator", splade, tmp_path / "b",
                    dict(sentences1=S1[:HALF], sentences2=S2[:HALF], labels=labels[:HALF], name="pairs",
                         similarity_fn_names=ALL_FNS, batch_size=16, max_active_dims=24))
    assert metrics["pairs_active_dims"] <= 24


def test_sparse_information_retrieval_evaluator(splade, tmp_path):
    """Corpus chunks of 40 (the corpus statistics weighted by chunk size), several @k, a name; one active
    dimension per text (most scores 0: ties across a chunk's top-k edge, kept by corpus id); the corpus
    embedded beforehand."""
    jx, st = splade
    queries, corpus, relevant = retrieval_task(150)
    assert len(queries) > 20 and len(corpus) > 100 and len(corpus) % 40
    kwargs = dict(queries=queries, corpus=corpus, relevant_docs=relevant, corpus_chunk_size=40, batch_size=16,
                  accuracy_at_k=[1, 3, 10], map_at_k=[10, 100], name="stsb")
    metrics = check("SparseInformationRetrievalEvaluator", splade, tmp_path / "chunks", kwargs)
    for key in ("query_active_dims", "query_sparsity_ratio", "corpus_active_dims", "corpus_sparsity_ratio",
                "avg_flops"):
        assert f"stsb_{key}" in metrics
    assert 0 < metrics["stsb_avg_flops"] < metrics["stsb_query_active_dims"]
    kwargs = dict(queries=queries, corpus=corpus, relevant_docs=relevant, corpus_chunk_size=40, map_at_k=[10],
                  batch_size=16, max_active_dims=1)
    metrics = check("SparseInformationRetrievalEvaluator", splade, tmp_path / "ties", kwargs)
    assert metrics["corpus_active_dims"] == 1 and metrics["dot_accuracy@10"] > 0
    # corpus_embeddings (and max_active_dims, which applies to the queries only then)
    texts = list(corpus.values())
    kwargs = dict(queries=queries, corpus=corpus, relevant_docs=relevant, corpus_chunk_size=64, batch_size=16,
                  max_active_dims=40)
    check("SparseInformationRetrievalEvaluator", splade, tmp_path / "embedded", kwargs,
          ours={"corpus_embeddings": jx.encode_document(texts, batch_size=16, max_active_dims=20)},
          ref={"corpus_embeddings": st.encode_document(texts, batch_size=16, max_active_dims=20)})


def test_sparse_mse_evaluator(splade, tmp_path):
    jx, st = splade
    kwargs = dict(source_sentences=S1, target_sentences=S2, name="mse", batch_size=16, max_active_dims=48)
    check("SparseMSEEvaluator", splade, tmp_path, dict(kwargs, teacher_model=jx), dict(kwargs, teacher_model=st))


def test_sparse_nanobeir_evaluator(splade, tmp_path):
    """SparseNanoBEIREvaluator over two tasks of different sizes read from a local NanoBEIR folder: every task's
    metrics and statistics, the aggregated ones (query_* / corpus_* weighted by the tasks' sizes, avg_flops over
    all of them), the primary metric, sparsity_stats and the CSV rows (the statistics appended) as 6.3's; then
    with max_active_dims (in every name), another aggregate key, two NDCG@k and query prompts."""
    folder = nanobeir_folder(tmp_path / "nanobeir", sizes=((70, 30), (40, 12)), start=500)
    base = dict(dataset_names=["scifact", "NFCorpus"], dataset_id=str(folder), batch_size=16)
    metrics = check("SparseNanoBEIREvaluator", splade, tmp_path / "a", base)
    stats = ("query_active_dims", "query_sparsity_ratio", "corpus_active_dims", "corpus_sparsity_ratio", "avg_flops")
    assert list(metrics)[-len(stats):] == [f"NanoBEIR_mean_{key}" for key in stats]
    for key in ("query_active_dims", "corpus_active_dims", "avg_flops"):  # not the tasks' plain mean
        per_task = [metrics[f"NanoSciFact_{key}"], metrics[f"NanoNFCorpus_{key}"]]
        assert abs(metrics[f"NanoBEIR_mean_{key}"] - np.mean(per_task)) > 1e-3, key
    kwargs = dict(base, max_active_dims=16, aggregate_key="avg", ndcg_at_k=[5, 10],
                  query_prompts={"scifact": "query: ", "NFCorpus": ""})
    metrics = check("SparseNanoBEIREvaluator", splade, tmp_path / "b", kwargs)
    assert "NanoSciFact_16_dot_ndcg@5" in metrics and metrics["NanoBEIR_avg_16_query_active_dims"] <= 16
    assert ours_module.SparseNanoBEIREvaluator(**kwargs).primary_metric is None  # named by the first call


def negatives(i: int, count: int, shift: int = 1) -> list[str]:
    """``count`` second sentences of the pairs from ``i + shift`` on that differ from pair i's (STSb repeats
    some sentences: a negative equal to the positive would tie, decided by float noise in each library)."""
    texts = list(dict.fromkeys(S2[(i + j) % len(S2)] for j in range(shift, len(S2))))
    return [t for t in texts if t != S2[i]][:count]


def reranking_samples(n: int) -> list[dict]:
    """Each pair's first sentence a query, its second the positive, five other second sentences the negatives
    (the positive a text, not a list, every seventh sample)."""
    return [{"query": S1[i], "positive": S2[i] if i % 7 == 0 else [S2[i]], "negative": negatives(i, 5)}
            for i in range(n)]


def test_sparse_reranking_evaluator(splade, tmp_path):
    check("SparseRerankingEvaluator", splade, tmp_path / "a", dict(samples=reranking_samples(40), at_k=3,
                                                                   batch_size=16))
    # one sample at a time: the statistics are the mean over the samples' encode calls
    check("SparseRerankingEvaluator", splade, tmp_path / "b", dict(samples=reranking_samples(6), name="one",
                                                                   use_batched_encoding=False, max_active_dims=30))


def test_sparse_translation_evaluator(splade, tmp_path):
    german = [a for a, _, _ in read_stsb("stsb-de-test.csv")[: len(ROWS)]]
    check("SparseTranslationEvaluator", splade, tmp_path, dict(source_sentences=S1, target_sentences=german,
                                                               name="en-de"))


def test_sparse_triplet_evaluator(splade, tmp_path):
    others = [negatives(i, 1, shift=7)[0] for i in range(len(S2))]
    metrics = check("SparseTripletEvaluator", splade, tmp_path / "a", dict(anchors=S1, positives=S2, negatives=others))
    assert [k for k in metrics if "_" in k and k.split("_")[0] in ("anchor", "positive", "negative")] == [
        f"{column}_{stat}" for column in ("anchor", "positive", "negative") for stat in ("active_dims",
                                                                                         "sparsity_ratio")]
    check("SparseTripletEvaluator", splade, tmp_path / "b",
          dict(anchors=S1[:HALF], positives=S2[:HALF], negatives=others[:HALF], similarity_fn_names=ALL_FNS,
               name="nli", margin={"cosine": 0.05, "manhattan": 1.0}, max_active_dims=32))


def rrf_samples():
    """Two rankings per query of STSb's second sentences: the 'dense' one and the 'sparse' one differ in
    order and in the documents they hold, some positives in neither, some documents tied after fusion."""
    rng = np.random.default_rng(0)
    documents = S2[:60]
    dense, sparse = [], []
    for i in range(25):
        positive = [documents[i]] + ([documents[i + 30]] if i % 3 == 0 else [])
        if i % 5 == 4:
            positive = positive[0]  # a text, not a list
        dense_docs = [documents[j] for j in rng.permutation(60)[:12]]
        sparse_docs = [documents[j] for j in rng.permutation(60)[:9]]
        if i % 2:
            dense_docs.insert(int(rng.integers(0, 5)), documents[i])
        if i % 4 == 1:
            sparse_docs.insert(0, documents[i])
        dense.append({"query_id": f"q{i}", "query": S1[i], "positive": positive, "documents": dense_docs})
        sparse.append({"query_id": f"q{i}", "query": S1[i], "positive": positive, "documents": sparse_docs})
    return dense, sparse


@pytest.mark.parametrize("at_k", [10, 1, 0])
def test_reciprocal_rank_fusion_evaluator(tmp_path, at_k):
    dense, sparse = rrf_samples()
    kwargs = dict(dense_samples=dense, sparse_samples=sparse, at_k=at_k, name="hybrid", write_predictions=True)
    ours = ours_module.ReciprocalRankFusionEvaluator(**kwargs)
    ref = reference("ReciprocalRankFusionEvaluator")(**kwargs)
    ours_metrics = ours(output_path=str(tmp_path / "ours"), epoch=0, steps=3)
    ref_metrics = ref(output_path=str(tmp_path / "ref"), epoch=0, steps=3)
    assert_same_metrics(ours_metrics, ref_metrics)
    assert list(ours_metrics) == list(ref_metrics)
    assert ours.primary_metric == ref.primary_metric == f"hybrid_ndcg@{at_k}"
    if at_k:
        assert ours_metrics[f"hybrid_ndcg@{at_k}"] > 0
    ours_rows, ref_rows = read_csv(tmp_path / "ours" / ours.csv_file), read_csv(tmp_path / "ref" / ref.csv_file)
    assert ours_rows[0] == ref_rows[0]
    np.testing.assert_allclose(np.asarray(ours_rows[1], float), np.asarray(ref_rows[1], float), atol=1e-12)
    predictions = [(tmp_path / side / ours.predictions_file).read_text(encoding="utf-8") for side in ("ours", "ref")]
    assert [json.loads(line) for line in predictions[0].splitlines()] == \
        [json.loads(line) for line in predictions[1].splitlines()]


def test_reciprocal_rank_fusion_bad_input():
    dense, sparse = rrf_samples()
    with pytest.raises(ValueError, match="must have the same length"):
        ours_module.ReciprocalRankFusionEvaluator(dense, sparse[:-1])
    with pytest.raises(ValueError, match="Query ID mismatch at index 0"):
        ours_module.ReciprocalRankFusionEvaluator(dense, [{**sparse[0], "query_id": "other"}] + sparse[1:])
    with pytest.raises(ValueError, match="missing 'query_id'"):
        ours_module.ReciprocalRankFusionEvaluator([{k: v for k, v in dense[0].items() if k != "query_id"}],
                                                  sparse[:1])
