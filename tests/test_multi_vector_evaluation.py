"""jaxst.multi_vector_evaluation against sentence-transformers 6.3's MultiVectorEncoder evaluators: the same
constructor arguments and defaults, metric keys, primary metric, values within 1e-4, CSV files and rows, both
libraries running one tiny late-interaction model (conftest's ``build_late_interaction``: a random 2-layer BERT, a
token-level Dense to 8 dimensions, [MASK] query expansion to 16 tokens, punctuation skipped in documents) on
STSb-derived tasks; each evaluator once with its defaults and once with ``truncate_dim`` and ``token_pooling``."""

from __future__ import annotations

import csv
import inspect
import json
import os
import string

import numpy as np
import pytest
from conftest import assert_same_hits, build_late_interaction, read_stsb
from test_evaluation import assert_same_metrics, nanobeir_folder, retrieval_task

from jaxst import MultiVectorEncoder
from jaxst import multi_vector_evaluation as ours_module
from jaxst.multi_vector_encoder import HierarchicalTokenPooling

TOL = 1e-4
ROWS = read_stsb("stsb-en-test.csv")[:80]
S1, S2 = [a for a, _, _ in ROWS], [b for _, b, _ in ROWS]
EVALUATORS = ["MultiVectorInformationRetrievalEvaluator", "MultiVectorNanoBEIREvaluator",
              "MultiVectorRerankingEvaluator", "MultiVectorTripletEvaluator", "MultiVectorDistillationEvaluator"]


@pytest.fixture(scope="module")
def late(tiny_backbone, tmp_path_factory):
    """(jaxst model, sentence-transformers model) of one saved tiny ColBERT-style folder."""
    folder = tmp_path_factory.mktemp("mv-eval")
    st = build_late_interaction(tiny_backbone, folder, expansion={"strategy": "fixed", "length": 16},
                                skiplist=list(string.punctuation))
    return MultiVectorEncoder(str(folder)), st


def reference(name: str):
    from sentence_transformers.multi_vector_encoder import evaluation

    return getattr(evaluation, name)


def pooling(**kwargs):
    """The same HierarchicalTokenPooling in both libraries."""
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling as STPooling

    return HierarchicalTokenPooling(**kwargs), STPooling(**kwargs)


def read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def same_csv(ours_path, ref_path) -> None:
    ours, ref = read_csv(ours_path), read_csv(ref_path)
    assert ours[0] == ref[0] and len(ours) == len(ref) >= 2
    np.testing.assert_allclose(np.asarray(ours[1:], float), np.asarray(ref[1:], float), rtol=1e-6, atol=TOL)


def check(name: str, late, tmp_path, ours_kwargs: dict, ref_kwargs: dict | None = None) -> tuple:
    """Build jaxst's and sentence-transformers' evaluator ``name``, run each on its library's model with an output
    path, and check the metrics (keys in order, values), the primary metric and the CSV file."""
    jx, st = late
    ours = getattr(ours_module, name)(**ours_kwargs)
    ref = reference(name)(**(ref_kwargs or ours_kwargs))
    ours_metrics = ours(jx, str(tmp_path / "ours"), 1, 5)
    ref_metrics = ref(st, str(tmp_path / "ref"), 1, 5)
    assert_same_metrics(ours_metrics, ref_metrics)
    assert list(ours_metrics) == list(ref_metrics)
    assert ours.primary_metric == ref.primary_metric and ours.primary_metric in ours_metrics
    assert ours.csv_file == ref.csv_file
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "ref"))
    same_csv(tmp_path / "ours" / ours.csv_file, tmp_path / "ref" / ref.csv_file)
    return ours, ours_metrics


def effective_parameters(cls) -> dict:
    """{name: (default, keyword_only)} of ``cls.__init__``; 6.3's ``*args`` / ``**kwargs`` stand for the dense
    parent's arguments (positional ones as they are there, the others keyword-only)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    out = {}
    variadic = [p.kind for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        parent = effective_parameters(cls.__mro__[1])
        if inspect.Parameter.VAR_POSITIONAL in variadic:
            out.update(parent)
        else:
            out.update({k: (d, True) for k, (d, _) in parent.items()})
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = tuple(p.default) if isinstance(p.default, list) else p.default
        out[p.name] = (default, p.kind == p.KEYWORD_ONLY)
    return out


@pytest.mark.parametrize("name", EVALUATORS)
def test_constructor_signatures(name):
    """Every argument of sentence-transformers' evaluator (its dense parent's, for those it passes on through
    ``**kwargs``), by name, with its default, keyword-only where 6.3 makes it so; named explicitly here."""
    ours, ref = getattr(ours_module, name), reference(name)
    assert effective_parameters(ours) == effective_parameters(ref)
    kinds = {p.kind for p in inspect.signature(ours.__init__).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds
    assert name in ours_module.__all__


def test_information_retrieval_evaluator(late, tmp_path):
    """Corpus chunks of 40 and a small MaxSim element budget, several @k, a name, the predictions file; then
    truncate_dim with token pooling on a MeanMaxSim model; then a given score function."""
    jx, st = late
    queries, corpus, relevant = retrieval_task(150)
    assert len(queries) > 20 and len(corpus) > 100 and len(corpus) % 40
    kwargs = dict(queries=queries, corpus=corpus, relevant_docs=relevant, corpus_chunk_size=40, chunk_elements=5000,
                  accuracy_at_k=[1, 3, 10], map_at_k=[10, 100], name="stsb", write_predictions=True)
    ours, metrics = check("MultiVectorInformationRetrievalEvaluator", late, tmp_path / "a", kwargs)
    assert ours.primary_metric == "stsb_maxsim_ndcg@10" and 0 < metrics["stsb_maxsim_ndcg@10"] <= 1
    predictions = [[json.loads(line) for line in (tmp_path / "a" / side / ours.predictions_file.replace(
        ".jsonl", "_maxsim.jsonl")).read_text(encoding="utf-8").splitlines()] for side in ("ours", "ref")]
    assert [p["query_id"] for p in predictions[0]] == [p["query_id"] for p in predictions[1]]
    assert_same_hits([p["results"] for p in predictions[0]], [p["results"] for p in predictions[1]])

    small = retrieval_task(60)  # a second and third configuration: part of the task
    ours_pool, ref_pool = pooling(max_tokens=5)
    jx.similarity_fn_name = st.similarity_fn_name = "meanmaxsim"
    try:
        kwargs = dict(queries=small[0], corpus=small[1], relevant_docs=small[2], corpus_chunk_size=32,
                      truncate_dim=5, batch_size=16)
        _, metrics = check("MultiVectorInformationRetrievalEvaluator", late, tmp_path / "b",
                           dict(kwargs, token_pooling=ours_pool), dict(kwargs, token_pooling=ref_pool))
        assert "meanmaxsim_ndcg@10" in metrics
    finally:
        jx.similarity_fn_name = st.similarity_fn_name = "maxsim"

    from sentence_transformers.util import maxsim as st_maxsim

    from jaxst.maxsim import maxsim

    kwargs = dict(queries=small[0], corpus=small[1], relevant_docs=small[2], main_score_function="maxsim",
                  ndcg_at_k=[3, 10])
    check("MultiVectorInformationRetrievalEvaluator", late, tmp_path / "c",
          dict(kwargs, score_functions={"maxsim": maxsim}), dict(kwargs, score_functions={"maxsim": st_maxsim}))
    with pytest.raises(ValueError, match="chunk_elements only configures"):
        ours_module.MultiVectorInformationRetrievalEvaluator(queries, corpus, relevant, chunk_elements=10,
                                                             score_functions={"maxsim": maxsim})


def test_nanobeir_evaluator(late, tmp_path):
    """Two tasks from a local datasets folder of NanoBEIR's layout: every task's and the mean's metrics, the
    primary metric, the CSV files (each task's and the aggregate's); then truncate_dim, a pooling and a name,
    which 6.3 puts into the evaluator names and the aggregate CSV file's name."""
    folder = nanobeir_folder(tmp_path / "nanobeir", sizes=[(60, 24), (50, 20)], start=500)  # no repeated text
    kwargs = dict(dataset_names=["scifact", "nfcorpus"], dataset_id=str(folder))
    ours, metrics = check("MultiVectorNanoBEIREvaluator", late, tmp_path / "a", kwargs)
    assert ours.primary_metric == "NanoBEIR_mean_maxsim_ndcg@10" and "NanoSciFact_maxsim_ndcg@10" in metrics
    ours_pool, ref_pool = pooling(pool_factor=2)
    kwargs = dict(kwargs, truncate_dim=6, name="mv", corpus_chunk_size=50, ndcg_at_k=[5, 10])
    ours, metrics = check("MultiVectorNanoBEIREvaluator", late, tmp_path / "b", dict(kwargs, token_pooling=ours_pool),
                          dict(kwargs, token_pooling=ref_pool))
    assert ours.name == "mv_NanoBEIR_mean_6_pool_factor_2"
    assert ours.csv_file == "mv_NanoBEIR_evaluation_mean_6_pool_factor_2_results.csv"
    assert [e.name for e in ours.evaluators] == ["mv_NanoSciFact_6_pool_factor_2", "mv_NanoNFCorpus_6_pool_factor_2"]
    assert ours_module.pooling_name_suffix(HierarchicalTokenPooling(max_tokens=4)) == "max_tokens_4"
    assert ours_module.pooling_name_suffix(HierarchicalTokenPooling(distance_threshold=0.5)) == \
        "distance_threshold_0.5"


def negatives(i: int, count: int, shift: int = 1) -> list[str]:
    """``count`` second sentences of other pairs that differ from pair i's."""
    texts = list(dict.fromkeys(S2[(i + j) % len(S2)] for j in range(shift, len(S2))))
    return [t for t in texts if t != S2[i]][:count]


def test_reranking_evaluator(late, tmp_path):
    """Each pair's first sentence a query, its second the positive (a text every seventh sample), five negatives;
    then one sample at a time with at_k, truncate_dim and a pooling."""
    samples = [{"query": S1[i], "positive": S2[i] if i % 7 == 0 else [S2[i]], "negative": negatives(i, 5)}
               for i in range(24)]
    ours, metrics = check("MultiVectorRerankingEvaluator", late, tmp_path / "a", dict(samples=samples))
    assert ours.primary_metric == "ndcg@10" and 0 < metrics["map"] <= 1
    ours_pool, ref_pool = pooling(pool_factor=2, tasks=["query", "document"])
    kwargs = dict(samples=samples[:4], at_k=3, name="one", use_batched_encoding=False, truncate_dim=4)
    check("MultiVectorRerankingEvaluator", late, tmp_path / "b", dict(kwargs, token_pooling=ours_pool),
          dict(kwargs, token_pooling=ref_pool))


def test_triplet_evaluator(late, tmp_path):
    """The model's similarity (MaxSim) by default; both similarities with margins, truncate_dim and a pooling."""
    others = [negatives(i, 1, shift=7)[0] for i in range(len(S2))]
    ours, metrics = check("MultiVectorTripletEvaluator", late, tmp_path / "a",
                          dict(anchors=S1, positives=S2, negatives=others))
    assert list(metrics) == ["maxsim_accuracy"] and 0 < metrics["maxsim_accuracy"] < 1
    ours_pool, ref_pool = pooling(max_tokens=4)
    kwargs = dict(anchors=S1[:40], positives=S2[:40], negatives=others[:40], similarity_fn_names=["maxsim",
                  "meanmaxsim"], margin={"maxsim": 0.5, "meanmaxsim": 0.01}, name="nli", truncate_dim=6)
    ours, metrics = check("MultiVectorTripletEvaluator", late, tmp_path / "b", dict(kwargs, token_pooling=ours_pool),
                          dict(kwargs, token_pooling=ref_pool))
    assert ours.primary_metric == "nli_max_accuracy"
    for bad, match in ((dict(similarity_fn_names=["cosine"]), "similarity_fn_names"),
                       (dict(margin={"cosine": 0.1}), "margin")):
        for module in (ours_module, None):
            cls = module.MultiVectorTripletEvaluator if module else reference("MultiVectorTripletEvaluator")
            with pytest.raises(ValueError, match=match):
                cls(S1[:2], S2[:2], others[:2], **bad)


def distillation_data(n_queries: int = 12, n_ways: int = 4):
    """Per query: its STSb partner first and ``n_ways - 1`` other sentences, with random teacher scores (one
    query's all equal: no rank correlation, skipped)."""
    rng = np.random.default_rng(3)
    documents = [[S2[i]] + negatives(i, n_ways - 1, shift=5) for i in range(n_queries)]
    scores = rng.normal(5.0, 2.0, (n_queries, n_ways)).round(3)
    scores[2] = 1.5
    return S1[:n_queries], documents, scores


@pytest.mark.filterwarnings("ignore:An input array is constant")  # 6.3's scipy on the constant teacher row
def test_distillation_evaluator(late, tmp_path):
    """Candidate lists (KL averaged over queries, the mean per-query Spearman; a constant teacher row skipped)
    with a temperature; flat pairs (one softmax over the whole set, a global Spearman) with per-side
    temperatures, truncate_dim and a pooling; a MeanMaxSim scoring function given as ``similarity_fct``."""
    queries, documents, scores = distillation_data()
    ours, metrics = check("MultiVectorDistillationEvaluator", late, tmp_path / "a",
                          dict(queries=queries, documents=documents, scores=scores.tolist(), temperature=0.5,
                               name="kd"))
    assert ours.primary_metric == "kd_spearman" and list(metrics) == ["kd_kl_divergence", "kd_spearman"]
    assert metrics["kd_kl_divergence"] > 0
    ours_pool, ref_pool = pooling(pool_factor=2)
    flat = dict(queries=S1[:30], documents=S2[:30], scores=[float(s) for *_, s in ROWS[:30]], student_temperature=2.0,
                teacher_temperature=0.5, truncate_dim=5)
    check("MultiVectorDistillationEvaluator", late, tmp_path / "b", dict(flat, token_pooling=ours_pool),
          dict(flat, token_pooling=ref_pool))
    import torch
    from sentence_transformers.util import mean_maxsim_pairwise as st_mean_maxsim_pairwise

    from jaxst.maxsim import mean_maxsim_pairwise

    kwargs = dict(queries=queries, documents=documents)
    check("MultiVectorDistillationEvaluator", late, tmp_path / "c",
          dict(kwargs, scores=scores, similarity_fct=mean_maxsim_pairwise),
          dict(kwargs, scores=torch.tensor(scores), similarity_fct=st_mean_maxsim_pairwise))
    evaluator = ours_module.MultiVectorDistillationEvaluator
    for args, kw, match in (((queries, documents[:-1], scores), {}, "same length"),
                            ((queries, [d[:3] if i == 1 else d for i, d in enumerate(documents)], scores), {},
                             "same length"),
                            ((queries, documents, scores[:, :3]), {}, "must be 2-D"),
                            ((queries, [d[0] for d in documents], scores), {}, "must be 1-D"),
                            ((queries, documents, scores), {"temperature": 0}, "positive finite"),
                            ((queries, documents, scores), {"teacher_temperature": float("inf")}, "positive finite")):
        with pytest.raises(ValueError, match=match):
            evaluator(*args, **kw)
    with pytest.raises(TypeError, match="MultiVectorEncoder"):
        evaluator(queries, documents, scores)(object())
    with pytest.raises(TypeError, match="HierarchicalTokenPooling"):
        evaluator(queries, documents, scores, token_pooling="pool_factor_2")
