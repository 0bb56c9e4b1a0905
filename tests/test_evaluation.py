"""jaxst.evaluation against sentence-transformers' evaluators: the same metric keys, values within 1e-4,
for all-MiniLM-L6-v2 on STSb-derived tasks (both libraries run in this test)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import read_stsb

from jaxst import util
from jaxst.evaluation import InformationRetrievalEvaluator, SequentialEvaluator, TripletEvaluator

TOL = 1e-4


def retrieval_task(limit: int | None = None):
    """STSb test pairs scoring at least 4.0: the first sentence a query, the second its relevant document;
    every unique second sentence of the test set is the corpus. ``limit``: the first so many test pairs only
    (a second configuration of an evaluator already checked on the whole task)."""
    rows = read_stsb("stsb-en-test.csv")[:limit]
    corpus_texts = list(dict.fromkeys(b for _, b, _ in rows))
    cid = {text: f"c{i}" for i, text in enumerate(corpus_texts)}
    queries, relevant = {}, {}
    for i, (a, b, score) in enumerate(rows):
        if score >= 4.0:
            queries[f"q{i}"] = a
            relevant[f"q{i}"] = {cid[b]}
    return queries, {c: t for t, c in cid.items()}, relevant


def assert_same_metrics(ours: dict, ref: dict) -> None:
    assert set(ours) == set(ref)
    for key, value in ref.items():
        assert abs(ours[key] - float(value)) < TOL, (key, ours[key], value)


def test_information_retrieval_evaluator(jx_minilm, st_minilm, tmp_path):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as STEvaluator

    queries, corpus, relevant = retrieval_task()
    assert len(queries) > 300 and len(corpus) > 1000
    kwargs = dict(corpus_chunk_size=500, accuracy_at_k=[1, 3, 10], map_at_k=[10, 100], name="stsb")
    ours = InformationRetrievalEvaluator(queries, corpus, relevant, **kwargs)
    ref = STEvaluator(queries, corpus, relevant, **kwargs)
    ours_metrics = ours(jx_minilm, output_path=str(tmp_path))
    assert_same_metrics(ours_metrics, ref(st_minilm))
    assert ours.primary_metric == ref.primary_metric == "stsb_cosine_ndcg@10"
    assert 0.5 < ours_metrics["stsb_cosine_ndcg@10"] < 1.0
    assert (tmp_path / "Information-Retrieval_evaluation_stsb_results.csv").is_file()
    # several score functions, truncated embeddings (on part of the task: the metrics are checked above)
    from sentence_transformers import util as st_util

    from jaxst import util

    queries, corpus, relevant = retrieval_task(500)
    ours = InformationRetrievalEvaluator(queries, corpus, relevant, truncate_dim=128,
                                         score_functions={"cos": util.cos_sim, "dot": util.dot_score})
    ref = STEvaluator(queries, corpus, relevant, truncate_dim=128,
                      score_functions={"cos": st_util.cos_sim, "dot": st_util.dot_score})
    assert_same_metrics(ours(jx_minilm), ref(st_minilm))
    assert ours.primary_metric == ref.primary_metric


def test_sts_evaluator_on_stsb(jx_minilm, st_minilm):
    """EmbeddingSimilarityEvaluator on the STSb test set with all-MiniLM-L6-v2: sentence-transformers' keys and
    values, for the model's similarity and for all four similarity functions."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator as STSimilarity

    from jaxst.evaluation import EmbeddingSimilarityEvaluator

    rows = read_stsb("stsb-en-test.csv")
    for kwargs, part in (({"name": "sts-test"}, rows),  # the whole test set; all four functions on part of it
                         ({"similarity_fn_names": ["cosine", "dot", "euclidean", "manhattan"]}, rows[:400])):
        s1, s2, scores = [a for a, _, _ in part], [b for _, b, _ in part], [s / 5 for *_, s in part]
        ours, ref = EmbeddingSimilarityEvaluator(s1, s2, scores, **kwargs), STSimilarity(s1, s2, scores, **kwargs)
        assert_same_metrics(ours(jx_minilm), ref(st_minilm))
        assert ours.primary_metric == ref.primary_metric


def test_triplet_and_sequential_evaluators(jx_minilm, st_minilm):
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator as STSequential
    from sentence_transformers.sentence_transformer.evaluation import TripletEvaluator as STTriplet

    rows = [r for r in read_stsb("stsb-en-test.csv") if r[2] >= 3.0][:300]
    anchors, positives = [a for a, _, _ in rows], [b for _, b, _ in rows]
    negatives = positives[7:] + positives[:7]
    for kwargs in ({}, {"similarity_fn_names": ["cosine", "dot", "euclidean", "manhattan"], "margin": 0.05}):
        ours, ref = TripletEvaluator(anchors, positives, negatives, **kwargs), STTriplet(anchors, positives,
                                                                                          negatives, **kwargs)
        assert_same_metrics(ours(jx_minilm), ref(st_minilm))
        assert ours.primary_metric == ref.primary_metric
    queries, corpus, relevant = retrieval_task(500)  # the whole task is checked in the test above
    ours = SequentialEvaluator([TripletEvaluator(anchors, positives, negatives, name="triplet"),
                                InformationRetrievalEvaluator(queries, corpus, relevant, name="ir")],
                               main_score_function=np.mean)
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as STEvaluator

    ref = STSequential([STTriplet(anchors, positives, negatives, name="triplet"),
                        STEvaluator(queries, corpus, relevant, name="ir")], main_score_function=np.mean)
    assert_same_metrics(ours(jx_minilm), ref(st_minilm))


def test_mse_and_translation_evaluators(jx_minilm, st_minilm, make_tiny_st):
    """Distillation-style: the tiny model's embeddings against MiniLM as the teacher (same width: the tiny
    model with a 384-wide Dense head); translation: STSb pairs as "translations" (duplicates count)."""
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import MSEEvaluator as STMSE
    from sentence_transformers.sentence_transformer.evaluation import TranslationEvaluator as STTranslation

    from jaxst import SentenceTransformer
    from jaxst.evaluation import MSEEvaluator, TranslationEvaluator

    rows = read_stsb("stsb-en-dev.csv")[:200]
    source, target = [a for a, _, _ in rows], [b for _, b, _ in rows]
    import torch

    folder = make_tiny_st(dense=((384, torch.nn.Tanh(), True),))  # the one tests/test_streaming.py builds
    student, st_student = SentenceTransformer(str(folder)), STSentenceTransformer(str(folder), device="cpu")
    ours = MSEEvaluator(source, target, teacher_model=jx_minilm, name="distill")
    ref = STMSE(source, target, teacher_model=st_minilm, name="distill")
    assert_same_metrics(ours(student), ref(st_student))
    assert ours.primary_metric == ref.primary_metric == "distill_negative_mse"
    for model, st_model in ((jx_minilm, st_minilm), (student, st_student)):
        ours, ref = TranslationEvaluator(source, target, name="tr"), STTranslation(source, target, name="tr")
        assert_same_metrics(ours(model), ref(st_model))
        assert ours.primary_metric == ref.primary_metric


def test_binary_classification_evaluator(jx_minilm, st_minilm):
    """STSb pairs labelled duplicate when their score is at least 3.5."""
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as STBinary

    from jaxst.evaluation import BinaryClassificationEvaluator

    rows = read_stsb("stsb-en-dev.csv")[:400]
    s1, s2, labels = [a for a, _, _ in rows], [b for _, b, _ in rows], [int(x >= 3.5) for _, _, x in rows]
    for kwargs in ({}, {"similarity_fn_names": ["cosine", "dot", "euclidean", "manhattan"], "name": "dup"}):
        ours, ref = BinaryClassificationEvaluator(s1, s2, labels, **kwargs), STBinary(s1, s2, labels, **kwargs)
        assert_same_metrics(ours(jx_minilm), ref(st_minilm))
        assert ours.primary_metric == ref.primary_metric
    # the threshold searches and the AP / MCC definitions on exact scores, ties included
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1).astype(np.float32)  # many ties
    y = (scores + rng.normal(size=300) > 0).astype(int)
    for higher in (True, False):
        assert BinaryClassificationEvaluator.find_best_acc_and_threshold(scores, y, higher) == \
            STBinary.find_best_acc_and_threshold(scores, y, higher)
        assert BinaryClassificationEvaluator.find_best_f1_and_threshold(scores, y, higher) == \
            STBinary.find_best_f1_and_threshold(scores, y, higher)


def _rerank_samples(n: int = 60):
    rows = [r for r in read_stsb("stsb-en-test.csv") if r[2] >= 4.0][:n]
    others = [b for _, b, _ in read_stsb("stsb-en-dev.csv")]
    return [{"query": a, "positive": [b], "negative": others[7 * i : 7 * i + 5 + i % 3]}
            for i, (a, b, _) in enumerate(rows)]


def test_reranking_evaluators(jx_minilm, st_minilm, make_tiny_cross_encoder):
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STCERerank
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator as STRerank

    from jaxst import CrossEncoder
    from jaxst.evaluation import CrossEncoderRerankingEvaluator, RerankingEvaluator

    samples = _rerank_samples()
    for kwargs in ({}, {"at_k": 3, "name": "rr"}):
        ours, ref = RerankingEvaluator(samples, **kwargs), STRerank(samples, **kwargs)
        assert_same_metrics(ours(jx_minilm), ref(st_minilm))
        assert ours.primary_metric == ref.primary_metric
    folder = make_tiny_cross_encoder()
    model, st_model = CrossEncoder(str(folder)), STCrossEncoder(str(folder), device="cpu")
    # first-stage rankings: some miss the positive, one has none of it
    documents = [{"query": s["query"], "positive": s["positive"],
                  "documents": (s["negative"][:2] + s["positive"] + s["negative"][2:]) if i % 3 else s["negative"]}
                 for i, s in enumerate(samples[:30])]
    # sentence-transformers 6.3: MAP and NDCG count every known positive, those the first stage missed
    # included (no longer appended to its ranking); an empty first-stage ranking is a ranking
    missed = [{"query": s["query"], "positive": s["positive"] + [f"another answer to: {s['query']}"],
               "documents": s["negative"][:2] + s["positive"] + s["negative"][2:4]} for s in samples[30:45]]
    missed.append({"query": samples[45]["query"], "positive": samples[45]["positive"], "documents": []})
    for data, kwargs in ((samples[:30], {}), (documents, {"at_k": 5}), (documents, {"always_rerank_positives": False,
                                                                                   "name": "ce"}),
                         (missed, {}), (missed, {"always_rerank_positives": False, "at_k": 3})):
        ours, ref = CrossEncoderRerankingEvaluator(data, **kwargs), STCERerank(data, **kwargs)
        assert_same_metrics(ours(model), ref(st_model))
        assert ours.primary_metric == ref.primary_metric
    mine = CrossEncoderRerankingEvaluator(missed[:15], always_rerank_positives=False)(model)
    assert mine["map"] <= 0.5 and mine["base_map"] <= 0.5  # one of two positives among the candidates


def _read_csv_rows(path) -> list[list[str]]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def _cross_encoders(make_tiny_cross_encoder, num_labels: int):
    """A tiny random cross-encoder in both libraries."""
    from sentence_transformers import CrossEncoder as STCrossEncoder

    from jaxst import CrossEncoder

    folder = make_tiny_cross_encoder("bert", num_labels=num_labels)
    return CrossEncoder(str(folder)), STCrossEncoder(str(folder), device="cpu")


def test_cross_encoder_classification_evaluator(make_tiny_cross_encoder, tmp_path):
    """STSb dev pairs, labelled 1 when their score is at least 2.5 for a one-label cross-encoder (accuracy / F1
    thresholds, AP), and in three classes (< 1.5, < 3.5, the rest) for a three-label one (macro / micro /
    weighted F1); the CSV rows too."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator as STClassify

    from jaxst.evaluation import CrossEncoderClassificationEvaluator

    rows = read_stsb("stsb-en-dev.csv")[:200]
    pairs = [[a, b] for a, b, _ in rows]
    binary = [int(score >= 2.5) for *_, score in rows]
    three = [0 if score < 1.5 else 1 if score < 3.5 else 2 for *_, score in rows]
    assert 0 < sum(binary) < len(binary) and set(three) == {0, 1, 2}
    for num_labels, labels, keys in ((1, binary, 7), (3, three, 3)):
        model, st_model = _cross_encoders(make_tiny_cross_encoder, num_labels)
        for kwargs in ({}, {"name": "dev"}):
            ours, ref = CrossEncoderClassificationEvaluator(pairs, labels, **kwargs), STClassify(pairs, labels,
                                                                                                 **kwargs)
            out = tmp_path / f"{num_labels}-{len(kwargs)}"
            ours_metrics = ours(model, output_path=str(out / "jaxst"), epoch=1, steps=5)
            ref_metrics = ref(st_model, output_path=str(out / "st"), epoch=1, steps=5)
            assert len(ours_metrics) == keys
            assert_same_metrics(ours_metrics, ref_metrics)
            assert ours.primary_metric == ref.primary_metric
            ours_csv = _read_csv_rows(out / "jaxst" / ours.csv_file)
            ref_csv = _read_csv_rows(out / "st" / ref.csv_file)
            assert ours.csv_file == ref.csv_file and ours_csv[0] == ref_csv[0] and len(ours_csv) == len(ref_csv) == 2
            assert np.allclose(np.asarray(ours_csv[1], float), np.asarray(ref_csv[1], float), atol=TOL)
    assert ours.primary_metric == "dev_f1_macro"
    # the F1 averages on exact predictions, a class predicted but never true and one true but never predicted
    from sklearn.metrics import f1_score

    from jaxst.evaluation import _f1_averages

    rng = np.random.default_rng(1)
    for _ in range(20):
        y, p = rng.integers(0, 4, 50), rng.integers(1, 5, 50)
        expected = [f1_score(y, p, average=a) for a in ("macro", "micro", "weighted")]
        assert np.allclose(_f1_averages(y, p), expected, atol=1e-12)


def test_cross_encoder_correlation_evaluator(make_tiny_cross_encoder):
    """STSb test pairs and their scores / 5 against a one-label cross-encoder's scores (directly and from
    InputExamples)."""
    from sentence_transformers import InputExample
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator as STCorrelation

    from jaxst.evaluation import CrossEncoderCorrelationEvaluator

    rows = read_stsb("stsb-en-test.csv")[:300]
    pairs, scores = [[a, b] for a, b, _ in rows], [score / 5 for *_, score in rows]
    model, st_model = _cross_encoders(make_tiny_cross_encoder, 1)
    for kwargs in ({}, {"name": "sts-test"}):
        ours, ref = CrossEncoderCorrelationEvaluator(pairs, scores, **kwargs), STCorrelation(pairs, scores, **kwargs)
        ours_metrics = ours(model)
        assert_same_metrics(ours_metrics, ref(st_model))
        assert ours.primary_metric == ref.primary_metric
        assert len(ours_metrics) == 2
    assert ours.primary_metric == "sts-test_spearman"
    examples = [InputExample(texts=pair, label=score) for pair, score in zip(pairs[:100], scores)]
    ours = CrossEncoderCorrelationEvaluator.from_input_examples(examples, name="ie")
    ref = STCorrelation.from_input_examples(examples, name="ie")
    assert_same_metrics(ours(model), ref(st_model))
    assert ours.primary_metric == ref.primary_metric


def test_cross_encoder_evaluators_bad_input(make_tiny_cross_encoder):
    """Mismatched lengths raise (sentence-transformers' correlation evaluator only once called; jaxst's at
    construction); a one-label model's classification labels must be 0 or 1."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderClassificationEvaluator as STClassify
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator as STCorrelation

    from jaxst.evaluation import CrossEncoderClassificationEvaluator, CrossEncoderCorrelationEvaluator

    pairs = [["a cat sits", "a cat is sitting"], ["a man runs", "the sky is blue"], ["dogs bark", "a dog barks"]]
    for evaluator in (CrossEncoderClassificationEvaluator, STClassify):
        with pytest.raises(ValueError, match="same length"):
            evaluator(pairs, [1, 0])
    model, st_model = _cross_encoders(make_tiny_cross_encoder, 1)
    with pytest.raises(ValueError, match="same length"):
        CrossEncoderCorrelationEvaluator(pairs, [0.9, 0.1])
    with pytest.raises(ValueError):
        STCorrelation(pairs, [0.9, 0.1])(st_model)
    with pytest.raises(ValueError, match="labels 0 or 1"):
        CrossEncoderClassificationEvaluator(pairs, [0, 1, 2])(model)
    with pytest.raises(ValueError):
        STClassify(pairs, [0, 1, 2])(st_model)


def test_evaluators_score_with_the_models_similarity(make_tiny_st):
    """sentence-transformers 6.3: RerankingEvaluator without a similarity_fct and ParaphraseMiningEvaluator
    score with the model's own similarity (here dot product over unnormalized embeddings), not cosine."""
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import ParaphraseMiningEvaluator as STMining
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator as STRerank

    from jaxst import SentenceTransformer
    from jaxst.evaluation import ParaphraseMiningEvaluator, RerankingEvaluator

    folder = make_tiny_st(similarity_fn_name="dot")
    model, st_model = SentenceTransformer(folder), STSentenceTransformer(str(folder), device="cpu")
    assert model.similarity_fn_name == "dot"
    samples = _rerank_samples()
    ours, ref = RerankingEvaluator(samples)(model), STRerank(samples)(st_model)
    assert_same_metrics(ours, ref)
    cosine = RerankingEvaluator(samples, similarity_fct=util.cos_sim)(model)
    assert max(abs(ours[k] - cosine[k]) for k in ours) > 1e-3  # the default is not cosine any more
    rows = read_stsb("stsb-en-dev.csv")[:200]
    ids = {text: f"s{i}" for i, text in enumerate(dict.fromkeys(t for a, b, _ in rows for t in (a, b)))}
    duplicates = [(ids[a], ids[b]) for a, b, score in rows if score >= 4.0]
    sentences = {i: t for t, i in ids.items()}
    ours = ParaphraseMiningEvaluator(sentences, duplicates_list=duplicates)(model)
    assert_same_metrics(ours, STMining(sentences, duplicates_list=duplicates)(st_model))


def test_ndcg_and_average_precision_with_ties():
    """The tie handling of scikit-learn's ndcg_score and average_precision_score, which the evaluators use."""
    from sklearn.metrics import average_precision_score, ndcg_score

    from jaxst.evaluation import _average_precision, _ndcg

    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(2, 30))
        relevant = rng.integers(0, 2, n)
        relevant[0] = 1
        scores = np.round(rng.normal(size=n), 1)  # ties
        for k in (1, 3, 10):
            assert abs(_ndcg(relevant, scores, k) - ndcg_score([relevant], [scores], k=k)) < 1e-12
        assert abs(_average_precision(relevant, scores) - average_precision_score(relevant, scores)) < 1e-12


def test_paraphrase_mining_evaluator(jx_minilm, st_minilm):
    """STSb sentences by id; pairs scoring at least 4.0 are the duplicates (with and without their transitive
    closure, from a list and from a dict)."""
    from sentence_transformers.sentence_transformer.evaluation import ParaphraseMiningEvaluator as STMining

    from jaxst.evaluation import ParaphraseMiningEvaluator

    rows = read_stsb("stsb-en-dev.csv")[:300]
    ids = {text: f"s{i}" for i, text in enumerate(dict.fromkeys(t for a, b, _ in rows for t in (a, b)))}
    sentences = {i: t for t, i in ids.items()}
    duplicates = [(ids[a], ids[b]) for a, b, score in rows if score >= 4.0]
    as_dict = {}
    for a, b in duplicates[::2]:
        as_dict.setdefault(a, {})[b] = True
    for kwargs in ({"duplicates_list": duplicates}, {"duplicates_list": duplicates, "add_transitive_closure": True,
                                                    "top_k": 5, "name": "pm"}, {"duplicates_dict": as_dict}):
        ours = ParaphraseMiningEvaluator(sentences, **kwargs)
        if "duplicates_dict" in kwargs:  # sentence-transformers indexes it for every mined pair: a defaultdict
            from collections import defaultdict

            nested = defaultdict(lambda: defaultdict(bool))
            for a, others in kwargs["duplicates_dict"].items():
                nested[a].update(others)
            kwargs = {**kwargs, "duplicates_dict": nested}
        ref = STMining(sentences, **kwargs)
        assert_same_metrics(ours(jx_minilm), ref(st_minilm))
        assert ours.primary_metric == ref.primary_metric


def test_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        TripletEvaluator(["a"], ["b"], [])
    with pytest.raises(ValueError, match="similarity_fn_names"):
        TripletEvaluator(["a"], ["b"], ["c"], similarity_fn_names=["cosine", "jaccard"])
    with pytest.raises(ValueError, match="no query has a relevant document"):
        InformationRetrievalEvaluator({"q": "a"}, {"c": "b"}, {})
    with pytest.raises(ValueError, match="positive int"):
        InformationRetrievalEvaluator({"q": "a"}, {"c": "b"}, {"q": {"c"}}, ndcg_at_k=[0])


def test_label_accuracy_evaluator(make_tiny_st, tmp_path):
    """A SoftmaxLoss's classifier scored on labelled pairs: 6.3's accuracy (its DataLoader of InputExamples, or
    the examples themselves) with the same classifier weights; the CSV row."""
    import jax.numpy as jnp
    import torch
    from sentence_transformers import InputExample
    from sentence_transformers import SentenceTransformer as STModel
    from sentence_transformers.sentence_transformer.evaluation import LabelAccuracyEvaluator as STAccuracy
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss as STSoftmax
    from torch.utils.data import DataLoader

    import jaxst
    from jaxst.evaluation import LabelAccuracyEvaluator
    from jaxst.losses import SoftmaxLoss

    folder = make_tiny_st()
    st = STModel(str(folder), device="cpu")
    jx = jaxst.SentenceTransformer(folder)
    torch.manual_seed(0)
    st_loss = STSoftmax(st, st.get_embedding_dimension(), 3)
    loss = SoftmaxLoss(jx, num_labels=3)
    loss.params = {"classifier": {"kernel": jnp.asarray(st_loss.classifier.weight.detach().numpy().T),
                                  "bias": jnp.asarray(st_loss.classifier.bias.detach().numpy())}}
    rows = read_stsb("stsb-en-dev.csv")[:120]
    examples = [InputExample(texts=[a, b], label=int(s) % 3) for a, b, s in rows]
    ref = STAccuracy(DataLoader(examples, batch_size=16), name="dev", softmax_model=st_loss)(st)
    for data in (DataLoader(examples, batch_size=16), [(a, b, int(s) % 3) for a, b, s in rows]):
        ours = LabelAccuracyEvaluator(data, name="dev", softmax_model=loss)
        got = ours(jx, output_path=str(tmp_path), epoch=1, steps=5)
        assert got.keys() == ref.keys() and abs(got["dev_accuracy"] - ref["dev_accuracy"]) < 1e-9
        assert ours.primary_metric == "dev_accuracy"
    assert 0 < ref["dev_accuracy"] < 1  # some right, some wrong: the check can fail
    lines = (tmp_path / "accuracy_evaluation_dev_results.csv").read_text().splitlines()
    assert lines[0] == "epoch,steps,accuracy" and lines[1].startswith("1,5,")
    with pytest.raises(ValueError, match="needs softmax_model"):
        LabelAccuracyEvaluator(examples)(jx)


def test_mse_evaluator_from_dataframe(jx_minilm, st_minilm, tmp_path):
    """Teacher all-MiniLM-L6-v2, student the same model (English and German columns, empty cells skipped, one
    truncated run): 6.3's negative_mse and CSV row."""
    from sentence_transformers.sentence_transformer.evaluation import MSEEvaluatorFromDataFrame as STFromDataFrame

    from jaxst.evaluation import MSEEvaluatorFromDataFrame

    en = [a for a, _, _ in read_stsb("stsb-en-test.csv")[:60]]
    de = [a for a, _, _ in read_stsb("stsb-de-test.csv")[:60]]
    rows = [{"en": e, "de": d if i % 7 else "", "en2": e.upper()} for i, (e, d) in enumerate(zip(en, de))]
    for kwargs in ({"name": "dev"}, {"truncate_dim": 64}):
        combinations = [("en", "de"), ("en", "en2")]
        ref = STFromDataFrame(rows, st_minilm, combinations, **kwargs)(st_minilm, output_path=str(tmp_path / "st"))
        ours = MSEEvaluatorFromDataFrame(rows, jx_minilm, combinations, **kwargs)
        got = ours(jx_minilm, output_path=str(tmp_path / "jx"))
        assert got.keys() == ref.keys()
        assert all(abs(got[k] - ref[k]) < 1e-4 for k in ref) and next(iter(got.values())) < -1e-3
        assert ours.primary_metric in got
    ours_rows = (tmp_path / "jx" / "mse_evaluation_dev_results.csv").read_text().splitlines()
    ref_rows = (tmp_path / "st" / "mse_evaluation_dev_results.csv").read_text().splitlines()
    assert ours_rows[0] == ref_rows[0] == "epoch,steps,en-de,en-en2"


def nanobeir_folder(path, tasks=("SciFact", "NFCorpus"), bm25: int | None = None, sizes=None, start: int = 0):
    """A local datasets folder with NanoBEIR's layout (subsets corpus / queries / qrels, a split per task), built
    from STSb dev pairs from row ``start`` on: each pair's first text a query, its second the relevant document
    (rows 500-849 repeat no second text: no tie left to float noise). ``sizes``: (documents, queries) per task,
    (150, 60) each by default. ``bm25``: also the "bm25" subset sentence-transformers 6.3's
    CrossEncoderNanoBEIREvaluator reads ("query-id", and "corpus-ids": that many ranked corpus ids per query, the
    positive at a varying rank or missing), and a second relevant document for the first ten queries.
    Returns the folder: ``path`` with a hash of the content appended to its name, since ``datasets`` caches a
    local folder's subsets by the folder's name alone (another folder of that name would read stale data)."""
    import hashlib

    from datasets import Dataset

    rows = read_stsb("stsb-en-dev.csv")
    splits = {}  # (subset, task) -> table
    for t, task in enumerate(tasks):
        n_docs, n_queries = sizes[t] if sizes else (150, 60)
        part, start = rows[start:start + n_docs], start + n_docs
        qids = [f"q{i}" for i in range(n_queries)]
        tables = {
            "corpus": {"_id": [f"d{i}" for i in range(len(part))] + ["empty"], "text": [b for _, b, _ in part] + [""]},
            "queries": {"_id": qids, "text": [a for a, _, _ in part[:n_queries]]},
            "qrels": {"query-id": list(qids), "corpus-id": [f"d{i}" for i in range(n_queries)]},
        }
        if bm25:
            extra = range(min(10, n_queries))
            tables["qrels"]["query-id"] += [f"q{i}" for i in extra]
            tables["qrels"]["corpus-id"] += [f"d{n_docs - 1 - i}" for i in extra]
            rng = np.random.default_rng(t)
            rankings = []
            for i in range(n_queries):
                ranking = [f"d{j}" for j in rng.permutation(n_docs) if j != i][:bm25]
                if i % 7:  # else BM25 missed the positive
                    ranking.insert(i % (bm25 + 3), f"d{i}")
                rankings.append(ranking[:bm25])
            tables["bm25"] = {"query-id": list(qids), "corpus-ids": rankings}
        splits.update({(subset, task): table for subset, table in tables.items()})
    path = path.with_name(f"{path.name}-{hashlib.sha256(repr(splits).encode()).hexdigest()[:16]}")
    configs: dict[str, list[str]] = {}
    for (subset, task), table in splits.items():
        (path / subset).mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(table).to_parquet(str(path / subset / f"Nano{task}.parquet"))
        configs.setdefault(subset, []).append(f"  - split: Nano{task}\n    path: {subset}/Nano{task}.parquet")
    yaml = "".join(f"- config_name: {subset}\n  data_files:\n" + "\n".join(entries) + "\n"
                   for subset, entries in configs.items())
    (path / "README.md").write_text(f"---\nconfigs:\n{yaml}---\n")
    return path


def test_nanobeir_evaluator_on_a_local_folder(jx_minilm, st_minilm, tmp_path):
    """NanoBEIREvaluator over two tasks read from a local datasets folder of NanoBEIR's layout: every task's and
    the mean's metrics, the primary metric and the CSV row equal 6.3's; bad names and prompts are refused."""
    from sentence_transformers.sentence_transformer.evaluation import NanoBEIREvaluator as STNanoBEIR

    from jaxst.evaluation import NanoBEIREvaluator

    folder = nanobeir_folder(tmp_path / "nanobeir")
    for kwargs in ({}, {"query_prompts": {"scifact": "query: ", "nfcorpus": ""}, "truncate_dim": 128,
                        "ndcg_at_k": [5, 10], "aggregate_key": "avg"}):
        ref_eval = STNanoBEIR(["scifact", "nfcorpus"], dataset_id=str(folder), **kwargs)
        ref = ref_eval(st_minilm, output_path=str(tmp_path / "st"))
        ours = NanoBEIREvaluator(["scifact", "nfcorpus"], dataset_id=str(folder), **kwargs)
        got = ours(jx_minilm, output_path=str(tmp_path / "jx"))
        assert_same_metrics(got, ref)
        assert ours.primary_metric == ref_eval.primary_metric
    assert (tmp_path / "jx" / "NanoBEIR_evaluation_mean_results.csv").read_text().splitlines()[0] == \
        (tmp_path / "st" / "NanoBEIR_evaluation_mean_results.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="not valid NanoBEIR datasets"):
        NanoBEIREvaluator(["scifact", "nosuchtask"], dataset_id=str(folder))
    with pytest.raises(ValueError, match="missing query prompts: \\['nfcorpus'\\]"):
        NanoBEIREvaluator(["scifact", "nfcorpus"], dataset_id=str(folder), query_prompts={"scifact": "q: "})
    with pytest.raises(ValueError, match="Could not load subset 'corpus' split 'NanoFEVER'"):
        NanoBEIREvaluator(["fever"], dataset_id=str(folder))


def test_cross_encoder_nanobeir_evaluator(make_tiny_cross_encoder, tmp_path):
    """CrossEncoderNanoBEIREvaluator over two tasks of a local NanoBEIR folder with a "bm25" subset (12 ranked ids
    per query, some missing the positive, some queries with two positives): the same constructor arguments, every
    task's and the mean's metrics (base_* included) in the same order, the primary metric and the CSV rows as
    6.3's, by default and with a shorter rerank_k, another at_k, only the positives BM25 found, a custom
    aggregation; bad names and a folder without the bm25 subset are refused."""
    import inspect

    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator as STCENanoBEIR

    from jaxst.evaluation import CrossEncoderNanoBEIREvaluator

    def params(fn):
        return [(p.name, tuple(p.default) if isinstance(p.default, list) else p.default, p.kind)
                for p in inspect.signature(fn).parameters.values()]

    assert params(CrossEncoderNanoBEIREvaluator.__init__) == params(STCENanoBEIR.__init__)
    assert params(CrossEncoderNanoBEIREvaluator.__call__) == params(STCENanoBEIR.__call__)
    folder = nanobeir_folder(tmp_path / "nanobeir", bm25=12, sizes=((60, 20), (50, 16)), start=500)
    model, st_model = _cross_encoders(make_tiny_cross_encoder, 1)
    names = ["scifact", "NFCorpus"]
    for i, kwargs in enumerate(({}, {"rerank_k": 5, "at_k": 3, "always_rerank_positives": False,
                                     "aggregate_key": "median", "aggregate_fn": np.median, "batch_size": 16})):
        out = tmp_path / str(i)
        ref_eval = STCENanoBEIR(names, dataset_id=str(folder), **kwargs)
        ref = ref_eval(st_model, output_path=str(out / "st"), epoch=2, steps=7)
        ours = CrossEncoderNanoBEIREvaluator(names, dataset_id=str(folder), **kwargs)
        got = ours(model, output_path=str(out / "jx"), epoch=2, steps=7)
        assert_same_metrics(got, ref)
        assert list(got) == list(ref) and len(got) == 18
        assert ours.primary_metric == ref_eval.primary_metric and ours.primary_metric in got
        assert ours.csv_file == ref_eval.csv_file
        for file in sorted(p.name for p in (out / "st").iterdir()):  # the aggregate's and each task's
            ours_csv, ref_csv = _read_csv_rows(out / "jx" / file), _read_csv_rows(out / "st" / file)
            assert ours_csv[0] == ref_csv[0] and len(ours_csv) == len(ref_csv) == 2
            assert np.allclose(np.asarray(ours_csv[1], float), np.asarray(ref_csv[1], float), atol=TOL)
        assert len(list((out / "jx").iterdir())) == 3
    assert ours.primary_metric == "NanoBEIR_R5_median_ndcg@3"
    assert 0 < got["NanoSciFact_R5_base_map"] < 1 and 0 < got["NanoSciFact_R5_map"] < 1  # BM25 missed some
    with pytest.raises(ValueError, match="not valid NanoBEIR datasets"):
        CrossEncoderNanoBEIREvaluator(["scifact", "nosuchtask"], dataset_id=str(folder))
    with pytest.raises(ValueError, match="dataset_names cannot be empty"):
        CrossEncoderNanoBEIREvaluator([], dataset_id=str(folder))
    with pytest.raises(ValueError, match="rerank_k must be a positive integer"):
        CrossEncoderNanoBEIREvaluator(names, dataset_id=str(folder), rerank_k=0)
    with pytest.raises(ValueError, match="Could not load subset 'bm25' split 'NanoSciFact'"):
        CrossEncoderNanoBEIREvaluator(["scifact"], dataset_id=str(nanobeir_folder(tmp_path / "no-bm25")))
    # None: every task but arguana and touche2020, the first of them climatefever
    with pytest.raises(ValueError, match="split 'NanoClimateFEVER'"):
        CrossEncoderNanoBEIREvaluator(dataset_id=str(folder))
