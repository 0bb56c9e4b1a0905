"""Evaluators with sentence-transformers' names, arguments and metric keys, scoring through jaxst's jitted
similarity functions and ``jax.lax.top_k``.

Each evaluator is called as ``evaluator(model, output_path=None, epoch=-1, steps=-1)`` and returns a dict
of metrics (prefixed with ``name_`` when it has a name), and names the one ``fit`` tracks in
``primary_metric`` after its first call, as sentence-transformers' evaluators do; ``output_path`` writes
the same CSV rows. They work from ``jaxst.training.fit`` and from a user's own loop.

    InformationRetrievalEvaluator  accuracy@k, precision@k, recall@k, MRR@k, NDCG@k, MAP@k per score function
    EmbeddingSimilarityEvaluator   Pearson / Spearman of similarity against gold scores (jaxst.training re-exports it)
    TripletEvaluator               how often the anchor is closer to the positive than to the negative
    BinaryClassificationEvaluator  pair classification by a similarity threshold: accuracy, F1, AP, MCC
    MSEEvaluator                   distance to a teacher's embeddings (multilingual distillation)
    ParaphraseMiningEvaluator      average precision and best F1 of mined duplicate pairs
    RerankingEvaluator             MAP / MRR@k / NDCG@k of a bi-encoder ranking each query's candidates
    CrossEncoderRerankingEvaluator the same for a CrossEncoder, with the first stage's base_* metrics
    CrossEncoderClassificationEvaluator  a CrossEncoder's pair classes: accuracy / F1 / AP (one label), F1s (more)
    CrossEncoderCorrelationEvaluator     Pearson / Spearman of a CrossEncoder's scores against gold scores
    LabelAccuracyEvaluator         accuracy of a SoftmaxLoss's classifier on labelled pairs
    MSEEvaluatorFromDataFrame      a student's MSE to a teacher's embeddings across language pairs
    NanoBEIREvaluator              InformationRetrievalEvaluator over the NanoBEIR tasks, and their mean
    CrossEncoderNanoBEIREvaluator  CrossEncoderRerankingEvaluator of each NanoBEIR task's BM25 top-k, and their mean
    TranslationEvaluator           how often a sentence's nearest neighbour is its translation
    SequentialEvaluator            several evaluators, one score

Every evaluator embeds through ``SentenceEvaluator.embed_inputs``; ``jaxst.sparse_evaluation``'s SparseEncoder
evaluators override it (sparse rows, ``max_active_dims``, sparsity statistics) and reuse the rest.
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import positive_int
from jaxst.similarity import as_matrix, similarity_functions

SIMILARITY_NAMES = ("cosine", "dot", "euclidean", "manhattan")

logger = logging.getLogger(__name__)


class SentenceEvaluator:
    """What every evaluator shares: the metric-name prefix and ``primary_metric``."""

    greater_is_better = True
    primary_metric: str | None = None

    def prefix_name_to_metrics(self, metrics: dict[str, float], name: str) -> dict[str, float]:
        """``{name}_{key}`` for every metric (and the primary one), values as floats."""
        metrics = {key: float(value) for key, value in metrics.items()}
        if not name:
            return metrics
        if self.primary_metric is not None and not self.primary_metric.startswith(name + "_"):
            self.primary_metric = name + "_" + self.primary_metric
        return {f"{name}_{key}": value for key, value in metrics.items()}

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs):
        """``model``'s embeddings of ``sentences`` with this evaluator's ``batch_size``, ``show_progress_bar`` and
        ``truncate_dim`` (``kwargs`` add to or override them), by ``encode_query`` / ``encode_document`` for
        ``encode_fn_name`` "query" / "document" (when the model has them) or ``encode``. Every evaluator embeds
        through here, as sentence-transformers' do: a subclass changes how (the sparse evaluators)."""
        kwargs = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress_bar, **kwargs}
        if getattr(self, "truncate_dim", None) is not None:
            kwargs.setdefault("truncate_dim", self.truncate_dim)
        return _encode(model, sentences, encode_fn_name, **kwargs)

    def similarity_of(self, model) -> Callable:
        """The score function an evaluator uses where none is given: the model's own similarity."""
        return model_similarity(model)

    def extra_csv_columns(self) -> dict[str, float]:
        """Columns a subclass appends to every CSV row this evaluator writes (the sparse evaluators' statistics)."""
        return {}

    def _write_csv(self, output_path: str | None, file: str, headers: list[str], row: list) -> None:
        if output_path is None:
            return
        extra = self.extra_csv_columns()
        headers, row = [*headers, *extra], [*row, *extra.values()]
        os.makedirs(output_path, exist_ok=True)
        path = os.path.join(output_path, file)
        new = not os.path.isfile(path)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(headers)
            writer.writerow(row)


def model_similarity(model):
    """The model's own similarity function (its ``similarity_fn_name``), as sentence-transformers 6.3's
    evaluators use ``model.similarity`` where no function is given."""
    return similarity_functions(getattr(model, "similarity_fn_name", None) or "cosine")[0]


def _encode(model, texts, side: str | None, **kwargs):
    fn = {"query": getattr(model, "encode_query", None), "document": getattr(model, "encode_document", None)}.get(
        side) or model.encode
    return fn(list(texts), **kwargs)


# ------------------------------------------------ examples and statistics (jaxst.training re-exports them)


def _is_vector_label(value) -> bool:
    """A label that is a vector of numbers: a teacher's embedding or scores (a numpy array, or a list or tuple
    of numbers)."""
    if isinstance(value, np.ndarray):
        return value.ndim >= 1 and np.issubdtype(value.dtype, np.number)
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(
        isinstance(v, numbers.Number) and not isinstance(v, bool) for v in value)


def example_parts(example) -> tuple[list[str], float | np.ndarray | None]:
    """(texts, label) of one example: a tuple (text, text[, text...][, label]) or an object with
    ``texts`` and ``label`` (sentence-transformers' InputExample). The label is a score, or a vector of numbers
    (a teacher's embedding for MSELoss, its scores for MarginMSELoss). What ``from_input_examples`` reads here
    and ``jaxst.training.collate`` reads for training."""
    if hasattr(example, "texts"):
        texts, label = list(example.texts), getattr(example, "label", None)
    elif isinstance(example, (tuple, list)):
        parts = list(example)
        label = None
        if parts and isinstance(parts[-1], numbers.Number) and not isinstance(parts[-1], bool):
            label = float(parts.pop())
        elif parts and _is_vector_label(parts[-1]):
            label = np.asarray(parts.pop(), np.float32)
        texts = parts
    else:
        raise TypeError(f"a training example is a tuple (text, text[, ...][, score]), got {type(example).__name__}")
    if len(texts) < 1 or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"a training example needs texts (str), got {example!r:.120}")
    return texts, label


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (scipy's rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / math.sqrt((a @ a) * (b @ b)))


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson of the ranks, ties averaged), as scipy's ``spearmanr``."""
    return pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64)))


class EmbeddingSimilarityEvaluator(SentenceEvaluator):
    """Pearson and Spearman correlation of embedding similarity against gold scores (STSb-style),
    as sentence-transformers' evaluator of the same name: returns ``{"pearson_cosine",
    "spearman_cosine"}`` (for each of ``similarity_fn_names``; the model's similarity by default),
    prefixed with ``name_`` when a name is given; ``primary_metric`` names the Spearman one. With an
    ``output_path``, ``write_csv`` appends a row to ``similarity_evaluation[_{name}]_results.csv``."""

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity: str | None = None, similarity_fn_names: list[str] | None = None, name: str = "",
                 show_progress_bar: bool = False, write_csv: bool = True):
        if not (len(sentences1) == len(sentences2) == len(scores)):
            raise ValueError(f"sentences1, sentences2 and scores differ in length: "
                             f"{len(sentences1)}, {len(sentences2)}, {len(scores)}")
        if len(scores) < 2:
            raise ValueError("a correlation needs at least two scored pairs")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.scores = np.asarray(scores, np.float64)
        self.batch_size = batch_size
        self.main_similarity = main_similarity = getattr(main_similarity, "value", main_similarity)
        self.similarity_fn_names = list(similarity_fn_names or ([main_similarity] if main_similarity else []))
        for fn in self.similarity_fn_names:
            similarity_functions(fn)  # validates the name
        self.name = name
        self.show_progress_bar = show_progress_bar
        self.write_csv = write_csv
        self.csv_file = "similarity_evaluation" + ("_" + name if name else "") + "_results.csv"
        self.primary_metric = None

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> EmbeddingSimilarityEvaluator:
        parts = [example_parts(e) for e in examples]
        return cls([t[0] for t, _ in parts], [t[1] for t, _ in parts], [lab for _, lab in parts], **kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        e1, e2 = self.embed_inputs(model, self.sentences1), self.embed_inputs(model, self.sentences2)
        names = self.similarity_fn_names or [model.similarity_fn_name]
        metrics = {}
        for fn in names:
            predicted = np.asarray(similarity_functions(fn)[1](e1, e2), np.float64)
            metrics[f"pearson_{fn}"] = pearson(self.scores, predicted)
            metrics[f"spearman_{fn}"] = spearman(self.scores, predicted)
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file,
                            ["epoch", "steps"] + [f"{fn}_{m}" for fn in names for m in ("pearson", "spearman")],
                            [epoch, steps] + [metrics[f"{m}_{fn}"] for fn in names for m in ("pearson", "spearman")])
        if len(names) > 1:
            metrics["pearson_max"] = max(metrics[f"pearson_{fn}"] for fn in names)
            metrics["spearman_max"] = max(metrics[f"spearman_{fn}"] for fn in names)
        self.primary_metric = f"spearman_{self.main_similarity or (names[0] if len(names) == 1 else 'max')}"
        return self.prefix_name_to_metrics(metrics, self.name)


class InformationRetrievalEvaluator(SentenceEvaluator):
    """Retrieval metrics of a model on ``queries`` (qid -> text), ``corpus`` (cid -> text) and
    ``relevant_docs`` (qid -> set of cids), as sentence-transformers' evaluator of the same name computes
    them: for each score function (the model's similarity by default, or ``score_functions`` {name:
    fn(queries, documents) -> scores}), the top hits of every query over the corpus, embedded and scored
    ``corpus_chunk_size`` documents at a time (ties ordered by corpus id), then accuracy@k, precision@k,
    recall@k, MRR@k, NDCG@k and MAP@k. Metric keys: ``{score function}_{metric}@{k}``, e.g.
    ``cosine_ndcg@10`` (the primary metric, the best score function's NDCG at the largest k).
    Called with ``corpus_model`` (the model that embeds the corpus; ``model`` by default) or
    ``corpus_embeddings`` (the corpus already embedded, in ``corpus`` order), as sentence-transformers takes
    them."""

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        corpus_chunk_size: int = 50000,
        mrr_at_k: list[int] = (10,),
        ndcg_at_k: list[int] = (10,),
        accuracy_at_k: list[int] = (1, 3, 5, 10),
        precision_recall_at_k: list[int] = (1, 3, 5, 10),
        map_at_k: list[int] = (100,),
        show_progress_bar: bool = False,
        batch_size: int = 32,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
        score_functions: dict[str, Callable] | None = None,
        main_score_function: str | None = None,
        query_prompt: str | None = None,
        query_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
        write_predictions: bool = False,
    ):
        self.queries_ids = [qid for qid in queries if qid in relevant_docs and len(relevant_docs[qid]) > 0]
        self.queries = [queries[qid] for qid in self.queries_ids]
        self.corpus_ids = list(corpus.keys())
        self.corpus = [corpus[cid] for cid in self.corpus_ids]
        if not self.queries:
            raise ValueError("InformationRetrievalEvaluator: no query has a relevant document")
        if not self.corpus:
            raise ValueError("InformationRetrievalEvaluator: the corpus is empty")
        self.relevant_docs = relevant_docs
        self.corpus_chunk_size = positive_int("corpus_chunk_size", corpus_chunk_size)
        self.mrr_at_k, self.ndcg_at_k = list(mrr_at_k), list(ndcg_at_k)
        self.accuracy_at_k, self.precision_recall_at_k, self.map_at_k = (list(accuracy_at_k),
                                                                         list(precision_recall_at_k), list(map_at_k))
        for k in self.mrr_at_k + self.ndcg_at_k + self.accuracy_at_k + self.precision_recall_at_k + self.map_at_k:
            positive_int("every @k", k)
        self.show_progress_bar, self.batch_size, self.name = show_progress_bar, batch_size, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.score_functions = dict(score_functions) if score_functions else None
        self.main_score_function = getattr(main_score_function, "value", main_score_function)
        self.query_prompt, self.query_prompt_name = query_prompt, query_prompt_name
        self.corpus_prompt, self.corpus_prompt_name = corpus_prompt, corpus_prompt_name
        self.write_predictions = write_predictions
        suffix = "_" + name if name else ""
        self.csv_file = f"Information-Retrieval_evaluation{suffix}_results.csv"
        self.predictions_file = f"Information-Retrieval_evaluation{suffix}_predictions.jsonl"
        self._corpus_id_ranks = None

    def _functions(self, model) -> dict[str, Callable]:
        if self.score_functions is not None:
            return self.score_functions
        return {model.similarity_fn_name: self.similarity_of(model)}

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        functions = self._functions(model)
        scores = self.compute_metrics_for(model, functions, output_path, *args, **kwargs)
        names = sorted(functions)
        if output_path is not None and self.write_csv:
            headers, row = ["epoch", "steps"], [epoch, steps]
            for fn in names:
                for metric, ks in (("Accuracy", self.accuracy_at_k), ("Precision-Recall", self.precision_recall_at_k),
                                   ("MRR", self.mrr_at_k), ("NDCG", self.ndcg_at_k), ("MAP", self.map_at_k)):
                    for k in ks:
                        if metric == "Precision-Recall":
                            headers += [f"{fn}-Precision@{k}", f"{fn}-Recall@{k}"]
                            row += [scores[fn]["precision@k"][k], scores[fn]["recall@k"][k]]
                        else:
                            headers.append(f"{fn}-{metric}@{k}")
                            row.append(scores[fn][f"{metric.lower()}@k"][k])
            self._write_csv(output_path, self.csv_file, headers, row)
        top = max(self.ndcg_at_k)
        main = self.main_score_function or max(names, key=lambda fn: scores[fn]["ndcg@k"][top])
        self.primary_metric = f"{main}_ndcg@{top}"
        metrics = {f"{fn}_{metric.replace('@k', f'@{k}')}": value
                   for fn, values in scores.items() for metric, per_k in values.items() for k, value in per_k.items()}
        return self.prefix_name_to_metrics(metrics, self.name)

    def compute_metrics_for(self, model, functions: dict[str, Callable], output_path: str | None = None,
                            corpus_model=None, corpus_embeddings=None) -> dict:
        """{score function: {"accuracy@k": {k: value}, ...}} for ``model``."""
        max_k = max(self.mrr_at_k + self.ndcg_at_k + self.accuracy_at_k + self.precision_recall_at_k + self.map_at_k)
        corpus_model = model if corpus_model is None else corpus_model
        queries = self.embed_inputs(model, self.queries, "query", prompt=self.query_prompt,
                                    prompt_name=self.query_prompt_name, convert_to_tensor=True)
        hits = {fn: [[] for _ in self.queries] for fn in functions}
        for start in range(0, len(self.corpus), self.corpus_chunk_size):
            chunk = self.corpus[start : start + self.corpus_chunk_size]
            if corpus_embeddings is None:
                docs = self.embed_inputs(corpus_model, chunk, "document", prompt=self.corpus_prompt,
                                         prompt_name=self.corpus_prompt_name, convert_to_tensor=True)
            else:
                docs = corpus_embeddings[start : start + self.corpus_chunk_size]
            for fn, score in functions.items():
                values, idx = self._top_k(score(queries, docs), min(max_k, len(chunk)), start)
                for q, (vals, ids) in enumerate(zip(values.tolist(), idx.tolist())):
                    found = hits[fn][q]
                    found.extend((v, self.corpus_ids[start + i]) for v, i in zip(vals, ids))
                    found.sort(key=lambda x: (-x[0], x[1]))  # ties by corpus id, as sentence-transformers
                    del found[max_k:]
        if self.write_predictions and output_path is not None:
            import json

            os.makedirs(output_path, exist_ok=True)
            for fn in hits:
                path = os.path.join(output_path, self.predictions_file.replace(".jsonl", f"_{fn}.jsonl"))
                with open(path, "w", encoding="utf-8") as f:
                    for qid, text, found in zip(self.queries_ids, self.queries, hits[fn]):
                        results = [{"corpus_id": c, "score": s} for s, c in found]
                        f.write(json.dumps({"query_id": qid, "query": text, "results": results}) + "\n")
        return {fn: self.compute_metrics([[{"corpus_id": c, "score": s} for s, c in found] for found in hits[fn]])
                for fn in functions}

    def _top_k(self, scores, k: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` best documents of a corpus chunk (from corpus index ``start``): (scores, indices in the
        chunk). Where more documents than fit tie at the k-th score, the tied ones with the smallest corpus ids
        are kept, as sentence-transformers 6.3 does, so the metrics do not depend on ``corpus_chunk_size``."""
        values, idx = jax.lax.top_k(scores, k)
        threshold = values[:, -1:]
        values, idx = np.array(values), np.array(idx)  # writable copies
        tied = np.flatnonzero(np.asarray(jnp.sum(scores >= threshold, axis=1) > k))
        if len(tied):
            if self._corpus_id_ranks is None:  # each corpus entry's place in the sorted corpus ids
                self._corpus_id_ranks = np.empty(len(self.corpus_ids), np.int64)
                self._corpus_id_ranks[sorted(range(len(self.corpus_ids)), key=self.corpus_ids.__getitem__)] = \
                    np.arange(len(self.corpus_ids))
            rows, bound = np.asarray(scores[tied]), np.asarray(threshold[tied])
            ranks, n = self._corpus_id_ranks[start : start + rows.shape[1]], len(self.corpus_ids)
            keys = np.where(rows > bound, ranks, np.where(rows == bound, ranks + n, 2 * n))
            pick = np.argpartition(keys, k - 1, axis=1)[:, :k]
            idx[tied], values[tied] = pick, np.take_along_axis(rows, pick, axis=1)
        return values, idx

    def compute_metrics(self, queries_result_list: list[list[dict]]) -> dict:
        """The metrics of per-query hit lists ({"corpus_id", "score"}), as sentence-transformers defines them."""
        hits_at = {k: 0 for k in self.accuracy_at_k}
        precision = {k: [] for k in self.precision_recall_at_k}
        recall = {k: [] for k in self.precision_recall_at_k}
        mrr = {k: 0.0 for k in self.mrr_at_k}
        ndcg = {k: [] for k in self.ndcg_at_k}
        average_precision = {k: [] for k in self.map_at_k}
        for qid, found in zip(self.queries_ids, queries_result_list):
            ranked = [h["corpus_id"] for h in sorted(found, key=lambda h: (-h["score"], h["corpus_id"]))]
            relevant = self.relevant_docs[qid]
            hit = [cid in relevant for cid in ranked]
            for k in self.accuracy_at_k:
                hits_at[k] += any(hit[:k])
            for k in self.precision_recall_at_k:
                correct = sum(hit[:k])
                precision[k].append(correct / k)
                recall[k].append(correct / len(relevant))
            for k in self.mrr_at_k:
                first = next((rank for rank, h in enumerate(hit[:k]) if h), None)
                mrr[k] += 0.0 if first is None else 1.0 / (first + 1)
            for k in self.ndcg_at_k:
                ndcg[k].append(_dcg(hit, k) / _dcg([True] * len(relevant), k))
            for k in self.map_at_k:
                correct, total = 0, 0.0
                for rank, h in enumerate(hit[:k]):
                    if h:
                        correct += 1
                        total += correct / (rank + 1)
                average_precision[k].append(total / min(k, len(relevant)))
        n = len(self.queries)
        return {
            "accuracy@k": {k: v / n for k, v in hits_at.items()},
            "precision@k": {k: float(np.mean(v)) for k, v in precision.items()},
            "recall@k": {k: float(np.mean(v)) for k, v in recall.items()},
            "ndcg@k": {k: float(np.mean(v)) for k, v in ndcg.items()},
            "mrr@k": {k: v / n for k, v in mrr.items()},
            "map@k": {k: float(np.mean(v)) for k, v in average_precision.items()},
        }


def _dcg(relevances: Sequence[bool], k: int) -> float:
    return sum(float(r) / np.log2(i + 2) for i, r in enumerate(relevances[:k]))


class TripletEvaluator(SentenceEvaluator):
    """How often each anchor scores its positive higher than its negative (by more than ``margin``), for each
    of ``similarity_fn_names`` (the model's by default), as sentence-transformers' TripletEvaluator: keys
    ``{fn}_accuracy`` (and ``max_accuracy`` for several). ``main_distance_function`` is the deprecated name of
    ``main_similarity_function``."""

    def __init__(self, anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[str],
                 main_similarity_function: str | None = None, margin: float | dict[str, float] | None = None,
                 name: str = "", batch_size: int = 16, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None,
                 main_distance_function: str | None = "deprecated"):
        if not (len(anchors) == len(positives) == len(negatives)):
            raise ValueError(f"anchors, positives and negatives differ in length: {len(anchors)}, {len(positives)}, "
                             f"{len(negatives)}")
        if main_distance_function != "deprecated" and main_similarity_function is None:
            main_similarity_function = main_distance_function
            logger.warning("The 'main_distance_function' parameter is deprecated. Please use "
                           "'main_similarity_function' instead.")
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.main_similarity_function = getattr(main_similarity_function, "value", main_similarity_function)
        self.similarity_fn_names = list(similarity_fn_names or ([self.main_similarity_function]
                                                                 if self.main_similarity_function else []))
        known = list(self._get_similarity_functions())
        unknown = sorted(set(self.similarity_fn_names) - set(known))
        if unknown:
            raise ValueError(f"`similarity_fn_names` got unexpected names {unknown}, expected names in {known}.")
        if margin is None:
            margin = 0.0
        if isinstance(margin, (int, float)):
            self.margin = {k: float(margin) for k in known}
        elif isinstance(margin, dict):
            unknown = sorted(set(margin) - set(known))
            if unknown:
                raise ValueError(f"`margin` got unexpected keys {unknown}, expected keys in {known}.")
            self.margin = {**{k: 0.0 for k in known}, **margin}
        else:
            raise ValueError(f"`margin` should be a float or a dictionary with keys in {known}.")
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.csv_file = "triplet_evaluation" + ("_" + name if name else "") + "_results.csv"

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> TripletEvaluator:
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.texts[2] for e in examples],
                   **kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        anchors = self.embed_inputs(model, self.anchors, "query")
        positives = self.embed_inputs(model, self.positives, "document")
        negatives = self.embed_inputs(model, self.negatives, "document")
        names = self.similarity_fn_names or [model.similarity_fn_name]
        functions = self._get_similarity_functions()
        metrics = {}
        for fn in names:
            pos, neg = (np.asarray(x) for x in functions[fn](anchors, positives, negatives))
            metrics[f"{fn}_accuracy"] = float(np.mean(pos > neg + self.margin[fn]))
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, ["epoch", "steps"] + [f"accuracy_{fn}" for fn in names],
                            [epoch, steps] + list(metrics.values()))
        if len(names) > 1:
            metrics["max_accuracy"] = max(metrics.values())
        if self.main_similarity_function:
            self.primary_metric = f"{self.main_similarity_function}_accuracy"
        else:
            self.primary_metric = "max_accuracy" if len(names) > 1 else f"{names[0]}_accuracy"
        return self.prefix_name_to_metrics(metrics, self.name)

    def _get_similarity_functions(self) -> dict[str, Callable]:
        """{name: fn(anchors, positives, negatives) -> (positive scores, negative scores)}: the similarities
        ``similarity_fn_names`` and ``margin`` may name (sentence-transformers' hook; the multi-vector
        evaluator's are MaxSim's)."""
        pairwise_of = {name: similarity_functions(name)[1] for name in SIMILARITY_NAMES}
        return {name: lambda a, p, n, pairwise=pairwise_of[name]: (pairwise(a, p), pairwise(a, n))
                for name in SIMILARITY_NAMES}


# score function per name: (pairwise score, whether a higher score means "more similar")
_PAIR_SCORES = {
    "cosine": (lambda a, b: similarity_functions("cosine")[1](a, b), True),
    "dot": (lambda a, b: similarity_functions("dot")[1](a, b), True),
    "manhattan": (lambda a, b: -similarity_functions("manhattan")[1](a, b), False),
    "euclidean": (lambda a, b: -similarity_functions("euclidean")[1](a, b), False),
}


class BinaryClassificationEvaluator(SentenceEvaluator):
    """Pair classification (duplicate / not) by thresholding a similarity, as sentence-transformers'
    BinaryClassificationEvaluator: for each of ``similarity_fn_names`` (the model's by default), the best
    accuracy and its threshold, the best F1 with its precision, recall and threshold, average precision and
    Matthews correlation at the F1 threshold; keys ``{fn}_{metric}`` (and ``max_{metric}`` for several)."""

    # the CSV columns per similarity, in sentence-transformers' order
    METRICS = ("accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold", "ap", "mcc")

    def __init__(self, sentences1: list[str], sentences2: list[str], labels: list[int], name: str = "",
                 batch_size: int = 32, show_progress_bar: bool = False, truncate_dim: int | None = None,
                 similarity_fn_names: list[str] | None = None, write_csv: bool = True):
        if not (len(sentences1) == len(sentences2) == len(labels)):
            raise ValueError(f"sentences1, sentences2 and labels differ in length: {len(sentences1)}, "
                             f"{len(sentences2)}, {len(labels)}")
        if any(label not in (0, 1) for label in labels):
            raise ValueError("BinaryClassificationEvaluator labels must be 0 or 1")
        unknown = sorted(set(similarity_fn_names or []) - set(_PAIR_SCORES))
        if unknown:
            raise ValueError(f"similarity_fn_names got unexpected names {unknown}, expected {list(_PAIR_SCORES)}")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.labels = np.asarray(labels, np.int64)
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.truncate_dim, self.write_csv = truncate_dim, write_csv
        self.similarity_fn_names = list(similarity_fn_names or [])
        self.csv_file = "binary_classification_evaluation" + ("_" + name if name else "") + "_results.csv"

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> BinaryClassificationEvaluator:
        return cls([e.texts[0] for e in examples], [e.texts[1] for e in examples], [e.label for e in examples],
                   **kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        names = self.similarity_fn_names or [model.similarity_fn_name]
        unique = list(dict.fromkeys(self.sentences1 + self.sentences2))  # each sentence embedded once
        embeddings = as_matrix(self.embed_inputs(model, unique))  # sparse embeddings as dense rows
        row = {text: i for i, text in enumerate(unique)}
        e1 = embeddings[np.asarray([row[t] for t in self.sentences1], np.int32)]
        e2 = embeddings[np.asarray([row[t] for t in self.sentences2], np.int32)]
        scores = {}
        for fn in names:
            score_fn, higher = _PAIR_SCORES[fn]
            values = np.asarray(score_fn(e1, e2))
            acc, acc_threshold = self.find_best_acc_and_threshold(values, self.labels, higher)
            f1, precision, recall, f1_threshold = self.find_best_f1_and_threshold(values, self.labels, higher)
            predicted = values >= f1_threshold if higher else values <= f1_threshold
            scores[fn] = {"accuracy": acc, "accuracy_threshold": float(acc_threshold), "f1": f1,
                          "f1_threshold": float(f1_threshold), "precision": precision, "recall": recall,
                          "ap": _average_precision(self.labels, values if higher else -values),
                          "mcc": _matthews(self.labels, predicted)}
        metrics = {f"{fn}_{m}": v for fn, values in scores.items() for m, v in values.items()}
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file,
                            ["epoch", "steps"] + [f"{fn}_{m}" for fn in names for m in self.METRICS],
                            [epoch, steps] + [scores[fn][m] for fn in names for m in self.METRICS])
        if len(names) > 1:
            metrics.update({f"max_{m}": max(scores[fn][m] for fn in scores) for m in next(iter(scores.values()))})
            self.primary_metric = "max_ap"
        else:
            self.primary_metric = f"{names[0]}_ap"
        return self.prefix_name_to_metrics(metrics, self.name)

    @staticmethod
    def find_best_acc_and_threshold(scores, labels, high_score_more_similar: bool):
        """The best accuracy of "similar iff score passes the threshold" and a threshold midway between the
        scores where it is reached (sentence-transformers' rule, ties kept together)."""
        scores, labels = np.asarray(scores), np.asarray(labels)
        order = np.argsort(-scores if high_score_more_similar else scores, kind="stable")
        s, y = scores[order], labels[order]
        best = float(np.sum(labels == 0)) / len(labels) if len(labels) else 0.0
        threshold = np.nextafter(s[0], np.inf if high_score_more_similar else -np.inf,
                                 dtype=np.result_type(s.dtype, np.float16)) if len(s) else -1
        positives, negatives = 0, int(np.sum(labels == 0))
        for i in range(len(s)):
            positives += int(y[i] == 1)
            negatives -= int(y[i] != 1)
            last = i == len(s) - 1
            if not last and s[i] == s[i + 1]:
                continue
            acc = (positives + negatives) / len(labels)
            if acc > best:
                best = acc
                threshold = s[i] if last else (s[i] + s[i + 1]) / 2
                if not last and threshold == s[i + 1]:
                    threshold = s[i]
        return best, threshold

    @staticmethod
    def find_best_f1_and_threshold(scores, labels, high_score_more_similar: bool):
        """The best F1 (with its precision and recall) over thresholds, as sentence-transformers finds it."""
        scores, labels = np.asarray(scores), np.asarray(labels)
        order = np.argsort(-scores if high_score_more_similar else scores, kind="stable")
        s, y = scores[order], labels[order]
        best = (0.0, 0.0, 0.0, 0)
        extracted = correct = 0
        total = int(np.sum(labels))
        for i in range(len(s)):
            extracted += 1
            correct += int(y[i] == 1)
            last = i == len(s) - 1
            if not last and s[i] == s[i + 1]:
                continue
            if correct > 0:
                precision, recall = correct / extracted, correct / total
                f1 = 2 * precision * recall / (precision + recall)
                if f1 > best[0]:
                    threshold = s[i] if last else (s[i] + s[i + 1]) / 2
                    if not last and threshold == s[i + 1]:
                        threshold = s[i]
                    best = (f1, precision, recall, threshold)
        return best


def _average_precision(labels, scores) -> float:
    """sum over distinct score thresholds (highest first) of (recall gain) x precision, as scikit-learn's
    ``average_precision_score``."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[ends]
    fp = (ends + 1) - tp
    recall = tp / max(int(labels.sum()), 1)
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _matthews(labels, predicted) -> float:
    """Matthews correlation of binary labels and predictions (0 when a margin is empty, as scikit-learn)."""
    y, p = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    tp, tn = float(np.sum(y & p)), float(np.sum(~y & ~p))
    fp, fn = float(np.sum(~y & p)), float(np.sum(y & ~p))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / denominator)


def _ndcg(relevant: Sequence[int], scores: Sequence[float], k: int, known_positives: int | None = None) -> float:
    """NDCG@k of binary relevances ranked by ``scores``, tied scores sharing their positions' discounts (the
    average gain of a tie group), as scikit-learn's ``ndcg_score``; with ``known_positives``, the ideal
    ranking holds that many positives, those missing from the candidates included."""
    relevant, scores = np.asarray(relevant, np.float64), np.asarray(scores, np.float64)
    discount = 1.0 / np.log2(np.arange(len(scores)) + 2)
    discount[k:] = 0.0
    order = np.argsort(-scores, kind="stable")
    gains, ranked = relevant[order], scores[order]
    dcg, start = 0.0, 0
    for end in list(np.nonzero(np.diff(ranked))[0] + 1) + [len(ranked)]:  # groups of equal scores
        dcg += gains[start:end].mean() * discount[start:end].sum()
        start = end
    if known_positives is None:
        ideal = float(np.sum(np.sort(relevant)[::-1] * discount))
    else:
        ideal = float(np.sum(1.0 / np.log2(np.arange(min(known_positives, k)) + 2)))
    return 0.0 if ideal == 0 else dcg / ideal


def rank_metrics(relevant: list[int], scores, k: int, known_positives: int | None = None
                 ) -> tuple[float, float, float]:
    """(MRR@k, NDCG@k, average precision) of one query's candidates. With ``known_positives`` (how many
    positives the query has, candidates or not; sentence-transformers 6.3's CrossEncoderRerankingEvaluator),
    NDCG's ideal ranking holds them all and average precision is scaled by the share of them among the
    candidates; a query with no positive among its candidates scores 0."""
    scores = np.asarray(scores, np.float64)
    retrieved = int(np.sum(relevant))
    if known_positives is not None:
        if retrieved == 0:
            return 0.0, 0.0, 0.0
        known_positives = max(known_positives, retrieved)
    order = np.argsort(-scores, kind="stable")
    mrr = next((1.0 / (rank + 1) for rank, i in enumerate(order[:k]) if relevant[i]), 0.0)
    ap = _average_precision(np.asarray(relevant), scores)
    if known_positives is not None:
        ap *= retrieved / known_positives
    return mrr, _ndcg(relevant, scores, k, known_positives), ap


class RerankingEvaluator(SentenceEvaluator):
    """How well a bi-encoder ranks each sample's positives above its negatives (``samples``: dicts with
    "query", "positive" and "negative", each a text or a list), as sentence-transformers' RerankingEvaluator:
    ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` (the primary metric). Samples without a positive or a negative
    are skipped. ``use_batched_encoding``: all queries in one encode and all documents in another (False: each
    sample's query and documents on their own, to save memory)."""

    def __init__(self, samples, at_k: int = 10, name: str = "", similarity_fct: Callable | None = None,
                 batch_size: int = 64, show_progress_bar: bool = False, use_batched_encoding: bool = True,
                 truncate_dim: int | None = None, mrr_at_k: int | None = None, write_csv: bool = True):
        samples = list(samples.values()) if isinstance(samples, dict) else list(samples)
        self.samples = []
        for sample in samples:
            positive = [sample["positive"]] if isinstance(sample["positive"], str) else list(sample["positive"])
            negative = [sample["negative"]] if isinstance(sample["negative"], str) else list(sample["negative"])
            if positive and negative:
                self.samples.append({**sample, "positive": positive, "negative": negative})
        self.at_k = mrr_at_k if mrr_at_k is not None else at_k
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.similarity_fct = similarity_fct  # None: the model's own similarity (sentence-transformers 6.3)
        self.truncate_dim, self.write_csv = truncate_dim, write_csv
        self.use_batched_encoding = use_batched_encoding
        self.csv_file = "RerankingEvaluator" + ("_" + name if name else "") + f"_results_@{self.at_k}.csv"
        self.primary_metric = f"ndcg@{self.at_k}"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        similarity = self.similarity_fct if self.similarity_fct is not None else self.similarity_of(model)
        if self.use_batched_encoding and self.samples:
            queries = self.embed_inputs(model, [s["query"] for s in self.samples], "query")
            docs = self.embed_inputs(model, [d for s in self.samples for d in s["positive"] + s["negative"]],
                                     "document")
        results, offset = [], 0
        for i, sample in enumerate(self.samples):
            n = len(sample["positive"]) + len(sample["negative"])
            if self.use_batched_encoding:
                query, candidates = queries[i : i + 1], docs[offset : offset + n]
            else:
                query = self.embed_inputs(model, [sample["query"]], "query", show_progress_bar=False)
                candidates = self.embed_inputs(model, sample["positive"] + sample["negative"], "document",
                                               show_progress_bar=False)
            scores = np.asarray(similarity(query, candidates))[0]
            offset += n
            results.append(rank_metrics([1] * len(sample["positive"]) + [0] * len(sample["negative"]), scores,
                                        self.at_k))
        mrr, ndcg, ap = (float(np.mean(x)) for x in zip(*results)) if results else (0.0, 0.0, 0.0)
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, ["epoch", "steps", "MAP", f"MRR@{self.at_k}",
                                                         f"NDCG@{self.at_k}"], [epoch, steps, ap, mrr, ndcg])
        self.primary_metric = f"ndcg@{self.at_k}"
        return self.prefix_name_to_metrics({"map": ap, f"mrr@{self.at_k}": mrr, f"ndcg@{self.at_k}": ndcg},
                                           self.name)


class CrossEncoderRerankingEvaluator(SentenceEvaluator):
    """A CrossEncoder's reranking quality, as sentence-transformers' CrossEncoderRerankingEvaluator:
    ``samples`` are dicts with "query", "positive" and either "negative" (rank positives + negatives) or
    "documents" (a first-stage ranking to rerank: its own metrics come back as ``base_*``;
    ``always_rerank_positives`` adds the positives it missed). Metrics ``map``, ``mrr@{at_k}``,
    ``ndcg@{at_k}`` (primary); as in sentence-transformers 6.3, MAP and NDCG count every known positive,
    those missing from ``documents`` included."""

    def __init__(self, samples, at_k: int = 10, always_rerank_positives: bool = True, name: str = "",
                 prompt_name: str | None = None, batch_size: int = 64, show_progress_bar: bool = False,
                 write_csv: bool = True, mrr_at_k: int | None = None):
        self.samples = list(samples)
        self.at_k = mrr_at_k if mrr_at_k is not None else at_k
        self.always_rerank_positives = always_rerank_positives
        self.name, self.prompt_name, self.batch_size = name, prompt_name, batch_size
        self.show_progress_bar, self.write_csv = show_progress_bar, write_csv
        self.csv_file = "CrossEncoderRerankingEvaluator" + ("_" + name if name else "") + f"_results_@{self.at_k}.csv"
        self.primary_metric = f"ndcg@{self.at_k}"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        base, pairs, meta = [], [], []
        for sample in self.samples:
            if "query" not in sample or "positive" not in sample:
                raise ValueError("CrossEncoderRerankingEvaluator requires 'query' and 'positive' keys in each sample.")
            if ("negative" in sample) == ("documents" in sample):
                raise ValueError("CrossEncoderRerankingEvaluator requires exactly one of 'negative' and "
                                 "'documents' in each sample.")
            positive = [sample["positive"]] if isinstance(sample["positive"], str) else list(sample["positive"])
            documents = sample.get("documents")
            if documents is not None:  # the first stage's ranking, scored against every known positive
                found = [int(d in positive) for d in documents]
                base.append(rank_metrics(found, np.arange(len(found), 0, -1), self.at_k, len(positive)))
                if self.always_rerank_positives:
                    docs = positive + [d for d in documents if d not in positive]
                    relevant = [1] * len(positive) + [0] * (len(docs) - len(positive))
                else:
                    docs, relevant = list(documents), found
            else:
                docs = positive + list(sample["negative"])
                relevant = [1] * len(positive) + [0] * len(sample["negative"])
            if sum(relevant) == 0:
                meta.append(None)
                continue
            meta.append((relevant, len(positive)))
            pairs.extend([sample["query"], d] for d in docs)
        scores = np.asarray(model.predict(pairs, prompt_name=self.prompt_name, batch_size=self.batch_size,
                                          show_progress_bar=self.show_progress_bar)) if pairs else np.zeros(0)
        results, offset = [], 0
        for entry in meta:
            if entry is None:
                results.append((0.0, 0.0, 0.0))
                continue
            relevant, positives = entry
            results.append(rank_metrics(relevant, scores[offset : offset + len(relevant)], self.at_k, positives))
            offset += len(relevant)
        mrr, ndcg, ap = (float(np.mean(x)) for x in zip(*results)) if results else (0.0, 0.0, 0.0)
        metrics = {"map": ap, f"mrr@{self.at_k}": mrr, f"ndcg@{self.at_k}": ndcg}
        if base:
            b_mrr, b_ndcg, b_ap = (float(np.mean(x)) for x in zip(*base))
            metrics.update({"base_map": b_ap, f"base_mrr@{self.at_k}": b_mrr, f"base_ndcg@{self.at_k}": b_ndcg})
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, ["epoch", "steps", "MAP", f"MRR@{self.at_k}",
                                                         f"NDCG@{self.at_k}"], [epoch, steps, ap, mrr, ndcg])
        self.primary_metric = f"ndcg@{self.at_k}"
        return self.prefix_name_to_metrics(metrics, self.name)


def _default_progress_bar(show_progress_bar: bool | None) -> bool:
    """``None``: shown when this module logs at INFO or DEBUG (sentence-transformers' evaluators' rule)."""
    if show_progress_bar is None:
        return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    return bool(show_progress_bar)


def epoch_text(epoch: int, steps: int) -> str:
    if epoch == -1:
        return ""
    return f" after epoch {epoch}" if steps == -1 else f" in epoch {epoch} after {steps} steps"


def _f1_averages(labels, predicted) -> tuple[float, float, float]:
    """(macro, micro, weighted) F1 of class predictions over every class in the labels or the predictions,
    as scikit-learn's ``f1_score`` (micro F1 of single-label classes is the accuracy)."""
    labels, predicted = np.asarray(labels).ravel(), np.asarray(predicted).ravel()
    classes = np.union1d(labels, predicted)
    truth = labels[:, None] == classes[None, :]
    guess = predicted[:, None] == classes[None, :]
    tp = np.sum(truth & guess, axis=0).astype(np.float64)
    support = truth.sum(axis=0).astype(np.float64)
    denominator = support + guess.sum(axis=0)  # 2tp + fp + fn; never 0 for a class that occurs
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    micro = 2 * tp.sum() / denominator.sum() if denominator.sum() else 0.0
    weighted = float(f1 @ support / support.sum()) if support.sum() else 0.0
    return float(f1.mean()) if len(f1) else 0.0, float(micro), weighted


class CrossEncoderClassificationEvaluator(SentenceEvaluator):
    """How well a CrossEncoder classifies ``sentence_pairs`` against gold ``labels``, as sentence-transformers'
    CrossEncoderClassificationEvaluator. A one-label model's scores are thresholded: ``accuracy`` and
    ``f1`` (with their best thresholds, ``BinaryClassificationEvaluator``'s searches), ``precision``,
    ``recall`` and ``average_precision`` (primary); labels must be 0 or 1. A model with more labels predicts
    the argmax class: ``f1_macro`` (primary), ``f1_micro``, ``f1_weighted``."""

    def __init__(self, sentence_pairs: list[list[str]], labels: list[int], *, name: str = "",
                 prompt_name: str | None = None, batch_size: int = 32, show_progress_bar: bool | None = None,
                 write_csv: bool = True, **kwargs):
        del kwargs  # accepted and ignored, as sentence-transformers does
        if len(sentence_pairs) != len(labels):
            raise ValueError("sentence_pairs and labels must have the same length")
        self.sentence_pairs = [list(pair) for pair in sentence_pairs]
        self.labels = np.asarray(labels)
        self.name, self.prompt_name, self.batch_size = name, prompt_name, batch_size
        self.show_progress_bar = _default_progress_bar(show_progress_bar)
        self.write_csv = write_csv
        self.csv_file = "CrossEncoderClassificationEvaluator" + ("_" + name if name else "") + "_results.csv"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"CrossEncoderClassificationEvaluator: Evaluating the model on {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        scores = np.asarray(model.predict(self.sentence_pairs, prompt_name=self.prompt_name, batch_size=self.batch_size,
                                          convert_to_numpy=True, show_progress_bar=self.show_progress_bar))
        if model.num_labels == 1:
            if not np.isin(self.labels, (0, 1)).all():
                raise ValueError("CrossEncoderClassificationEvaluator: a model with one label needs labels 0 or 1")
            scores = scores.reshape(-1)
            acc, acc_threshold = BinaryClassificationEvaluator.find_best_acc_and_threshold(scores, self.labels, True)
            f1, precision, recall, f1_threshold = BinaryClassificationEvaluator.find_best_f1_and_threshold(
                scores, self.labels, True)
            ap = _average_precision(self.labels, scores)
            logger.info(f"Accuracy:          {acc * 100:.2f}\t(Threshold: {acc_threshold:.4f})")
            logger.info(f"F1:                {f1 * 100:.2f}\t(Threshold: {f1_threshold:.4f})")
            logger.info(f"Precision:         {precision * 100:.2f}")
            logger.info(f"Recall:            {recall * 100:.2f}")
            logger.info(f"Average Precision: {ap * 100:.2f}")
            metrics = {"accuracy": acc, "accuracy_threshold": acc_threshold, "f1": f1, "f1_threshold": f1_threshold,
                       "precision": precision, "recall": recall, "average_precision": ap}
            self.csv_headers = ["epoch", "steps", "Accuracy", "Accuracy_Threshold", "F1", "F1_Threshold", "Precision",
                                "Recall", "Average_Precision"]
            self.primary_metric = "average_precision"
        else:
            f1_macro, f1_micro, f1_weighted = _f1_averages(self.labels, np.argmax(scores, axis=1))
            logger.info(f"Macro F1:           {f1_macro * 100:.2f}")
            logger.info(f"Micro F1:           {f1_micro * 100:.2f}")
            logger.info(f"Weighted F1:        {f1_weighted * 100:.2f}")
            metrics = {"f1_macro": f1_macro, "f1_micro": f1_micro, "f1_weighted": f1_weighted}
            self.csv_headers = ["epoch", "steps", "Macro_F1", "Micro_F1", "Weighted_F1"]
            self.primary_metric = "f1_macro"
        metrics = {key: float(value) for key, value in metrics.items()}
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, *metrics.values()])
        return self.prefix_name_to_metrics(metrics, self.name)


class CrossEncoderCorrelationEvaluator(SentenceEvaluator):
    """Pearson and Spearman correlation of a CrossEncoder's scores for ``sentence_pairs`` against gold
    ``scores``, as sentence-transformers' CrossEncoderCorrelationEvaluator: ``pearson``, ``spearman``
    (primary)."""

    def __init__(self, sentence_pairs: list[list[str]], scores: list[float], name: str = "",
                 prompt_name: str | None = None, batch_size: int = 32, show_progress_bar: bool | None = None,
                 write_csv: bool = True):
        if len(sentence_pairs) != len(scores):
            raise ValueError(f"sentence_pairs ({len(sentence_pairs)}) and scores ({len(scores)}) must have the "
                             f"same length")
        self.sentence_pairs = [list(pair) for pair in sentence_pairs]
        self.scores = list(scores)
        self.name, self.prompt_name, self.batch_size = name, prompt_name, batch_size
        self.show_progress_bar = _default_progress_bar(show_progress_bar)
        self.write_csv = write_csv
        self.csv_file = "CrossEncoderCorrelationEvaluator" + ("_" + name if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "Pearson_Correlation", "Spearman_Correlation"]
        self.primary_metric = "spearman"

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> CrossEncoderCorrelationEvaluator:
        parts = [example_parts(e) for e in examples]
        return cls([texts for texts, _ in parts], [label for _, label in parts], **kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"CrossEncoderCorrelationEvaluator: Evaluating the model on {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        if len(self.scores) < 2:
            raise ValueError("a correlation needs at least two scored pairs")
        predicted = np.asarray(model.predict(self.sentence_pairs, prompt_name=self.prompt_name,
                                             batch_size=self.batch_size, convert_to_numpy=True,
                                             show_progress_bar=self.show_progress_bar), np.float64)
        if predicted.ndim != 1:
            raise ValueError(f"CrossEncoderCorrelationEvaluator needs one score per pair (a one-label model), got "
                             f"scores of shape {predicted.shape}")
        eval_pearson, eval_spearman = pearson(self.scores, predicted), spearman(self.scores, predicted)
        logger.info(f"Correlation:\tPearson: {eval_pearson:.4f}\tSpearman: {eval_spearman:.4f}")
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, eval_pearson, eval_spearman])
        self.primary_metric = "spearman"
        return self.prefix_name_to_metrics({"pearson": eval_pearson, "spearman": eval_spearman}, self.name)


class ParaphraseMiningEvaluator(SentenceEvaluator):
    """Paraphrase mining quality, as sentence-transformers' ParaphraseMiningEvaluator: the model's mined pairs
    of ``sentences_map`` (id -> text), best first (``util.paraphrase_mining``), against the known duplicate
    pairs (``duplicates_list`` of id pairs or ``duplicates_dict``; ``add_transitive_closure`` links the
    duplicates of duplicates): ``average_precision`` (primary), and the best ``f1`` with its ``precision``,
    ``recall`` and score ``threshold``."""

    def __init__(self, sentences_map: dict[str, str], duplicates_list: list[tuple[str, str]] | None = None,
                 duplicates_dict: dict[str, dict[str, bool]] | None = None, add_transitive_closure: bool = False,
                 query_chunk_size: int = 5000, corpus_chunk_size: int = 100000, max_pairs: int = 500000,
                 top_k: int = 100, show_progress_bar: bool = False, batch_size: int = 16, name: str = "",
                 truncate_dim: int | None = None, write_csv: bool = True):
        self.ids, self.sentences = list(sentences_map), list(sentences_map.values())
        self.name, self.show_progress_bar, self.batch_size = name, show_progress_bar, batch_size
        self.query_chunk_size, self.corpus_chunk_size = query_chunk_size, corpus_chunk_size
        self.max_pairs, self.top_k, self.truncate_dim, self.write_csv = max_pairs, top_k, truncate_dim, write_csv
        pairs = set()
        for a, others in (duplicates_dict or {}).items():
            pairs |= {frozenset((a, b)) for b, duplicate in others.items() if duplicate and a != b}
        pairs |= {frozenset(pair) for pair in (duplicates_list or []) if len(set(pair)) == 2}
        pairs = {pair for pair in pairs if all(i in sentences_map for i in pair)}
        if add_transitive_closure:
            pairs = _transitive_closure(pairs)
        self.duplicates = pairs
        self.csv_file = "paraphrase_mining_evaluation" + ("_" + name if name else "") + "_results.csv"
        self.primary_metric = "average_precision"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        from jaxst.search import paraphrase_mining

        mined = paraphrase_mining(model, self.sentences, show_progress_bar=self.show_progress_bar,
                                  batch_size=self.batch_size, query_chunk_size=self.query_chunk_size,
                                  corpus_chunk_size=self.corpus_chunk_size, max_pairs=self.max_pairs,
                                  top_k=self.top_k, truncate_dim=self.truncate_dim,
                                  score_function=self.similarity_of(model))
        total = len(self.duplicates)
        extracted = correct = previous = 0
        best = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "threshold": 0.0}
        average_precision = 0.0
        for idx, (score, i, j) in enumerate(mined):
            extracted += 1
            correct += frozenset((self.ids[i], self.ids[j])) in self.duplicates
            if idx + 1 < len(mined) and mined[idx + 1][0] == score:
                continue  # tied scores: one threshold
            if correct > previous:
                precision, recall = correct / extracted, (correct / total if total else 0.0)
                f1 = 2 * precision * recall / (precision + recall)
                average_precision += precision * (correct - previous)
                if f1 > best["f1"]:
                    threshold = (mined[idx][0] + mined[min(idx + 1, len(mined) - 1)][0]) / 2
                    best = {"f1": f1, "precision": precision, "recall": recall, "threshold": float(threshold)}
            previous = correct
        metrics = {"average_precision": average_precision / total if total else 0.0, **best}
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, ["epoch", "steps", "precision", "recall", "f1", "threshold",
                                                         "average_precision"],
                            [epoch, steps, best["precision"], best["recall"], best["f1"], best["threshold"],
                             metrics["average_precision"]])
        self.primary_metric = "average_precision"
        return self.prefix_name_to_metrics(metrics, self.name)


def _transitive_closure(pairs: set) -> set:
    """Every pair within each connected group of duplicates."""
    neighbours: dict = {}
    for a, b in (tuple(p) for p in pairs):
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    closed, seen = set(), set()
    for start in neighbours:
        if start in seen:
            continue
        group, queue = {start}, [start]
        while queue:
            for other in neighbours[queue.pop()]:
                if other not in group:
                    group.add(other)
                    queue.append(other)
        seen |= group
        closed |= {frozenset((a, b)) for a in group for b in group if a != b}
    return closed


class MSEEvaluatorFromDataFrame(SentenceEvaluator):
    """Knowledge distillation across languages, as sentence-transformers' MSEEvaluatorFromDataFrame: for each
    (source, target) column pair of ``combinations``, the mean squared error (x100) between the teacher's
    embeddings of the source texts (computed once, here) and the model's of their translations, over the rows of
    ``dataframe`` (a list of dicts, column -> text) where both are non-empty; ``negative_mse`` (primary) is minus
    their mean. ``truncate_dim`` truncates both sides' embeddings."""

    def __init__(self, dataframe: list[dict[str, str]], teacher_model, combinations: list[tuple[str, str]],
                 batch_size: int = 8, name: str = "", write_csv: bool = True, truncate_dim: int | None = None):
        self.combinations, self.name, self.batch_size = list(combinations), name, batch_size
        self.csv_file = "mse_evaluation" + ("_" + name if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps"] + [f"{src}-{trg}" for src, trg in self.combinations]
        self.primary_metric = "negative_mse"
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.data = {}
        sources: dict[str, None] = {}
        for src, trg in self.combinations:
            rows = [(row[src], row[trg]) for row in dataframe if row[src].strip() != "" and row[trg].strip() != ""]
            self.data[(src, trg)] = ([s for s, _ in rows], [t for _, t in rows])
            sources.update(dict.fromkeys(s for s, _ in rows))
        self.show_progress_bar = False
        embeddings = np.asarray(self.embed_inputs(teacher_model, list(sources), convert_to_numpy=True))
        self.teacher_embeddings = dict(zip(sources, embeddings))

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        scores = []
        for src, trg in self.combinations:
            sources, targets = self.data[(src, trg)]
            teacher = np.asarray([self.teacher_embeddings[s] for s in sources])
            student = np.asarray(self.embed_inputs(model, targets, convert_to_numpy=True))
            scores.append(float(((teacher - student) ** 2).mean() * 100))
            logger.info(f"MSE evaluation on {self.name} dataset - {src}-{trg}: MSE (*100): {scores[-1]:4f}")
        if self.write_csv:
            self._write_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, *scores])
        return self.prefix_name_to_metrics({"negative_mse": -float(np.mean(scores))}, self.name)


class LabelAccuracyEvaluator(SentenceEvaluator):
    """Accuracy of a ``SoftmaxLoss``'s classifier (``softmax_model``) on labelled pairs, as
    sentence-transformers' LabelAccuracyEvaluator: ``dataloader`` is the examples, ``(text1, text2, label)``
    tuples or InputExamples (a PyTorch DataLoader over them is read through its ``dataset``); each pair is
    embedded by the model and classified by the loss's current classifier, ``accuracy`` the share whose
    argmax is the label."""

    def __init__(self, dataloader, name: str = "", softmax_model=None, write_csv: bool = True):
        self.dataloader, self.name, self.softmax_model, self.write_csv = dataloader, name, softmax_model, write_csv
        self.csv_file = "accuracy_evaluation" + ("_" + name if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "accuracy"]
        self.primary_metric = "accuracy"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        if self.softmax_model is None or not callable(getattr(self.softmax_model, "logits", None)):
            raise ValueError("LabelAccuracyEvaluator needs softmax_model: the SoftmaxLoss whose classifier it scores")
        parts = [example_parts(e) for e in getattr(self.dataloader, "dataset", self.dataloader)]
        if not parts or any(len(texts) != 2 or label is None for texts, label in parts):
            raise ValueError("LabelAccuracyEvaluator takes labelled pairs: (text1, text2, label) examples")
        first = model.encode([texts[0] for texts, _ in parts], convert_to_numpy=True)
        second = model.encode([texts[1] for texts, _ in parts], convert_to_numpy=True)
        predicted = np.argmax(np.asarray(self.softmax_model.logits(first, second)), axis=1)
        correct = int(np.sum(predicted == np.asarray([label for _, label in parts]).astype(np.int64)))
        accuracy = correct / len(parts)
        logger.info(f"Accuracy: {accuracy:.4f} ({correct}/{len(parts)})")
        if self.write_csv:
            self._write_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, accuracy])
        return self.prefix_name_to_metrics({"accuracy": accuracy}, self.name)


# NanoBEIR: 13 small BEIR retrieval tasks (sentence-transformers' NanoBEIREvaluator); name -> its split's name
NANOBEIR_DATASETS = {
    "climatefever": "ClimateFEVER", "dbpedia": "DBPedia", "fever": "FEVER", "fiqa2018": "FiQA2018",
    "hotpotqa": "HotpotQA", "msmarco": "MSMARCO", "nfcorpus": "NFCorpus", "nq": "NQ",
    "quoraretrieval": "QuoraRetrieval", "scidocs": "SCIDOCS", "arguana": "ArguAna", "scifact": "SciFact",
    "touche2020": "Touche2020",
}


def _nanobeir_names(dataset_names: list[str] | None, default: list[str]) -> list[str]:
    """``dataset_names`` (``default`` for None), checked against NanoBEIR's task names."""
    names = list(default) if dataset_names is None else list(dataset_names)
    if not names:
        raise ValueError("dataset_names cannot be empty. Use None to evaluate on all datasets.")
    unknown = [n for n in names if n.lower() not in NANOBEIR_DATASETS]
    if unknown:
        raise ValueError(f"Dataset(s) {unknown} are not valid NanoBEIR datasets. Valid dataset names are: "
                         f"{list(NANOBEIR_DATASETS)}")
    return names


def _nanobeir_split(dataset_id: str, subset: str, split: str, columns: list[str], evaluator: str):
    """``datasets.load_dataset(dataset_id, subset, split=split)`` (a Hub name or a local folder), with
    ``columns`` required; ``evaluator`` names the caller in the errors."""
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ValueError(f"datasets is not available. Please install it to use the {evaluator} via "
                         "`pip install datasets`.") from e
    try:
        data = load_dataset(dataset_id, subset, split=split)
    except Exception as e:
        raise ValueError(f"Could not load subset '{subset}' split '{split}' from dataset '{dataset_id}'.") from e
    if missing := set(columns) - set(data.column_names):
        raise ValueError(f"Subset '{subset}' split '{split}' from dataset '{dataset_id}' is missing "
                         f"required columns: {sorted(missing)}.")
    return data


def _nanobeir_task(dataset_id: str, split: str, evaluator: str) -> tuple[dict, dict, dict[str, set]]:
    """One NanoBEIR task's ``(corpus, queries, qrels)``: id -> text (empty texts kept) for the first two,
    query id -> the set of its relevant corpus ids (a qrels row holds one id or a list)."""
    corpus = {row["_id"]: row["text"] for row in _nanobeir_split(dataset_id, "corpus", split, ["_id", "text"],
                                                                 evaluator)}
    queries = {row["_id"]: row["text"] for row in _nanobeir_split(dataset_id, "queries", split, ["_id", "text"],
                                                                  evaluator)}
    qrels: dict[str, set] = {}
    for row in _nanobeir_split(dataset_id, "qrels", split, ["query-id", "corpus-id"], evaluator):
        ids = row["corpus-id"]
        qrels.setdefault(row["query-id"], set()).update(ids if isinstance(ids, list) else [ids])
    return corpus, queries, qrels


class NanoBEIREvaluator(SentenceEvaluator):
    """InformationRetrievalEvaluator on each NanoBEIR task and the metrics aggregated over them, as
    sentence-transformers' NanoBEIREvaluator: every task's metrics under ``Nano{Task}_...``, and ``aggregate_fn``
    (the mean) of each over the tasks under ``NanoBEIR_{aggregate_key}_...`` (primary: NDCG at the largest k).
    The tasks are read with ``datasets.load_dataset(dataset_id, subset, split="Nano{Task}")`` for the subsets
    "corpus", "queries" and "qrels": ``dataset_id`` is a Hub name (sentence-transformers/NanoBEIR-en) or a local
    folder of the same layout. ``query_prompts`` / ``corpus_prompts``: one prompt, or one per task name."""

    information_retrieval_class = InformationRetrievalEvaluator

    def __init__(self, dataset_names: list[str] | None = None, dataset_id: str = "sentence-transformers/NanoBEIR-en",
                 mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,), accuracy_at_k: list[int] = (1, 3, 5, 10),
                 precision_recall_at_k: list[int] = (1, 3, 5, 10), map_at_k: list[int] = (100,),
                 show_progress_bar: bool = False, batch_size: int = 32, write_csv: bool = True,
                 truncate_dim: int | None = None, score_functions: dict[str, Callable] | None = None,
                 main_score_function: str | None = None, aggregate_fn: Callable = np.mean, aggregate_key: str = "mean",
                 query_prompts: str | dict[str, str] | None = None, corpus_prompts: str | dict[str, str] | None = None,
                 write_predictions: bool = False):
        self.dataset_names = _nanobeir_names(dataset_names, list(NANOBEIR_DATASETS))
        self.query_prompts = self._per_task(query_prompts, "query")
        self.corpus_prompts = self._per_task(corpus_prompts, "corpus")
        self.dataset_id, self.aggregate_fn, self.aggregate_key = dataset_id, aggregate_fn, aggregate_key
        self.write_csv, self.show_progress_bar, self.truncate_dim = write_csv, show_progress_bar, truncate_dim
        self.score_functions = dict(score_functions) if score_functions else None
        self.main_score_function = getattr(main_score_function, "value", main_score_function)
        self.name = f"NanoBEIR_{aggregate_key}" + (f"_{truncate_dim}" if truncate_dim else "")
        self.ks = {"accuracy": list(accuracy_at_k), "precision_recall": list(precision_recall_at_k),
                   "mrr": list(mrr_at_k), "ndcg": list(ndcg_at_k), "map": list(map_at_k)}
        options = dict(mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k, accuracy_at_k=accuracy_at_k,
                       precision_recall_at_k=precision_recall_at_k, map_at_k=map_at_k,
                       show_progress_bar=show_progress_bar, batch_size=batch_size, write_csv=write_csv,
                       truncate_dim=truncate_dim, score_functions=score_functions,
                       main_score_function=main_score_function, write_predictions=write_predictions)
        self.evaluators = [self._task(name, **options) for name in self.dataset_names]
        self.csv_file = f"NanoBEIR_evaluation_{aggregate_key}_results.csv"

    def _per_task(self, prompts, side: str) -> dict | None:
        if prompts is None or isinstance(prompts, dict) and not prompts:
            return None
        if isinstance(prompts, str):
            return {name: prompts for name in self.dataset_names}
        missing = [name for name in self.dataset_names if name not in prompts]
        if missing:
            raise ValueError(f"The following datasets are missing {side} prompts: {missing}")
        return dict(prompts)

    def _task(self, name: str, **options):
        split = f"Nano{NANOBEIR_DATASETS[name.lower()]}"
        corpus, queries, qrels = _nanobeir_task(self.dataset_id, split, "NanoBEIREvaluator")
        corpus = {cid: text for cid, text in corpus.items() if text}
        queries = {qid: text for qid, text in queries.items() if text}
        if self.query_prompts is not None:
            options["query_prompt"] = self.query_prompts.get(name)
        if self.corpus_prompts is not None:
            options["corpus_prompt"] = self.corpus_prompts.get(name)
        return self.information_retrieval_class(queries=queries, corpus=corpus, relevant_docs=qrels,
                                                name=self._get_human_readable_name(name), **options)

    def _get_human_readable_name(self, dataset_name: str) -> str:
        """A task's evaluator name, ``Nano{Task}[_{truncate_dim}]`` (sentence-transformers' hook: the
        multi-vector evaluator appends its pooling)."""
        split = f"Nano{NANOBEIR_DATASETS[dataset_name.lower()]}"
        return split + (f"_{self.truncate_dim}" if self.truncate_dim else "")

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        per_task, per_metric = {}, {}
        for evaluator in self.evaluators:
            for key, value in evaluator(model, output_path, epoch, steps).items():
                per_task[key] = value
                per_metric.setdefault(key.removeprefix(f"{evaluator.name}_"), []).append(value)
        aggregated = {metric: float(self.aggregate_fn(values)) for metric, values in per_metric.items()}
        names = sorted(self.score_functions) if self.score_functions else [model.similarity_fn_name]
        if self.write_csv and output_path is not None:
            headers, row = ["epoch", "steps"], [epoch, steps]
            for fn in names:
                for metric, key in (("Accuracy", "accuracy"), ("Precision-Recall", "precision_recall"),
                                    ("MRR", "mrr"), ("NDCG", "ndcg"), ("MAP", "map")):
                    for k in self.ks[key]:
                        if key == "precision_recall":
                            headers += [f"{fn}-Precision@{k}", f"{fn}-Recall@{k}"]
                            row += [aggregated[f"{fn}_precision@{k}"], aggregated[f"{fn}_recall@{k}"]]
                        else:
                            headers.append(f"{fn}-{metric}@{k}")
                            row.append(aggregated[f"{fn}_{key}@{k}"])
            self._write_csv(output_path, self.csv_file, headers, row)
        top = max(self.ks["ndcg"])
        main = self.main_score_function or max(names, key=lambda fn: aggregated[f"{fn}_ndcg@{top}"])
        self.primary_metric = f"{main}_ndcg@{top}"
        per_task.update(self.prefix_name_to_metrics(aggregated, self.name))
        return per_task


class CrossEncoderNanoBEIREvaluator(SentenceEvaluator):
    """A CrossEncoder reranking each NanoBEIR task's BM25 top ``rerank_k`` documents, as sentence-transformers 6.3's
    CrossEncoderNanoBEIREvaluator: a CrossEncoderRerankingEvaluator per task (the "bm25" subset's ranked
    "corpus-ids" as its ``documents``, the qrels as its positives; ``always_rerank_positives`` adds the positives
    BM25 missed) with metrics ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` and BM25's own ``base_*`` under
    ``Nano{Task}_R{rerank_k}_...``, and ``aggregate_fn`` of each over the tasks under
    ``NanoBEIR_R{rerank_k}_{aggregate_key}_...`` (primary: ``ndcg@{at_k}``). The tasks are read as
    NanoBEIREvaluator reads them, plus the "bm25" subset (columns "query-id" and "corpus-ids");
    ``dataset_names=None`` takes every task but arguana and touche2020 (argument retrieval, a different task)."""

    def __init__(self, dataset_names: list[str] | None = None, dataset_id: str = "sentence-transformers/NanoBEIR-en",
                 rerank_k: int = 100, at_k: int = 10, always_rerank_positives: bool = True,
                 prompt_name: str | None = None, batch_size: int = 32, show_progress_bar: bool = False,
                 write_csv: bool = True, aggregate_fn: Callable = np.mean, aggregate_key: str = "mean"):
        default = [name for name in NANOBEIR_DATASETS if name not in ("arguana", "touche2020")]
        self.dataset_names = _nanobeir_names(dataset_names, default)
        self.dataset_id, self.rerank_k, self.at_k = dataset_id, positive_int("rerank_k", rerank_k), at_k
        self.always_rerank_positives, self.prompt_name = always_rerank_positives, prompt_name
        self.batch_size, self.show_progress_bar, self.write_csv = batch_size, show_progress_bar, write_csv
        self.aggregate_fn, self.aggregate_key = aggregate_fn, aggregate_key
        self.name = f"NanoBEIR_R{self.rerank_k}_{aggregate_key}"
        options = dict(at_k=at_k, always_rerank_positives=always_rerank_positives, prompt_name=prompt_name,
                       show_progress_bar=show_progress_bar, batch_size=batch_size, write_csv=write_csv)
        self.evaluators = [self._task(name, **options) for name in self.dataset_names]
        self.csv_file = f"NanoBEIR_evaluation_{aggregate_key}_results.csv"
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{at_k}", f"NDCG@{at_k}"]
        self.primary_metric = f"ndcg@{at_k}"

    def _get_human_readable_name(self, dataset_name: str) -> str:
        """A task's evaluator name, ``Nano{Task}_R{rerank_k}``."""
        return f"Nano{NANOBEIR_DATASETS[dataset_name.lower()]}_R{self.rerank_k}"

    def _task(self, name: str, **options) -> CrossEncoderRerankingEvaluator:
        split = f"Nano{NANOBEIR_DATASETS[name.lower()]}"
        corpus, queries, qrels = _nanobeir_task(self.dataset_id, split, "CrossEncoderNanoBEIREvaluator")
        bm25 = _nanobeir_split(self.dataset_id, "bm25", split, ["query-id", "corpus-ids"],
                               "CrossEncoderNanoBEIREvaluator")

        def texts(ids, table: dict, what: str) -> list[str]:
            if missing := [i for i in ids if i not in table]:
                raise ValueError(f"{split}: {what} {missing[:5]} of dataset '{self.dataset_id}' not found")
            return [table[i] for i in ids]

        samples = []
        for row in bm25:
            qid = row["query-id"]
            if qid not in qrels:
                raise ValueError(f"{split}: query id {qid!r} of the bm25 subset of dataset '{self.dataset_id}' has "
                                 "no qrels")
            samples.append({"query": texts([qid], queries, "the bm25 subset's query ids")[0],
                            "positive": texts(qrels[qid], corpus, "the qrels' corpus ids"),
                            "documents": texts(row["corpus-ids"][: self.rerank_k], corpus,
                                               "the bm25 subset's corpus ids")})
        return CrossEncoderRerankingEvaluator(samples, name=self._get_human_readable_name(name), **options)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        logger.info(f"NanoBEIR Evaluation of the model on {self.dataset_names} dataset{epoch_text(epoch, steps)}:")
        per_task, per_metric = {}, {}
        for evaluator in self.evaluators:
            logger.info(f"Evaluating {evaluator.name}")
            for key, value in evaluator(model, output_path, epoch, steps).items():
                per_task[key] = value
                per_metric.setdefault(key.removeprefix(f"{evaluator.name}_"), []).append(value)
        aggregated = {metric: float(self.aggregate_fn(values)) for metric, values in per_metric.items()}
        k = self.at_k
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, self.csv_headers,
                            [epoch, steps, aggregated["map"], aggregated[f"mrr@{k}"], aggregated[f"ndcg@{k}"]])
        logger.info("CrossEncoderNanoBEIREvaluator: Aggregated Results:")
        logger.info(f"{' ' * len(str(k))}       Base  -> Reranked")
        for label, metric in (("MAP", "map"), (f"MRR@{k}", f"mrr@{k}"), (f"NDCG@{k}", f"ndcg@{k}")):
            logger.info(f"{label + ':':<{len(str(k)) + 6}} {aggregated[f'base_{metric}'] * 100:.2f} -> "
                        f"{aggregated[metric] * 100:.2f}")
        self.primary_metric = f"ndcg@{k}"
        per_task.update(self.prefix_name_to_metrics(aggregated, self.name))
        return per_task


class MSEEvaluator(SentenceEvaluator):
    """Mean squared error (x 100) between a teacher's embeddings of ``source_sentences`` (computed once, at
    construction) and the model's of ``target_sentences``, reported as ``negative_mse`` (higher is better),
    as sentence-transformers' MSEEvaluator for multilingual distillation."""

    def __init__(self, source_sentences: list[str], target_sentences: list[str], teacher_model=None,
                 show_progress_bar: bool = False, batch_size: int = 32, name: str = "", write_csv: bool = True,
                 truncate_dim: int | None = None):
        if len(source_sentences) != len(target_sentences):
            raise ValueError(f"source_sentences ({len(source_sentences)}) and target_sentences "
                             f"({len(target_sentences)}) must have the same length.")
        if teacher_model is None:
            raise ValueError("MSEEvaluator needs a teacher_model to embed the source sentences")
        self.target_sentences = list(target_sentences)
        self.show_progress_bar, self.batch_size, self.name = show_progress_bar, batch_size, name
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.csv_file = "mse_evaluation_" + name + "_results.csv"
        self.primary_metric = "negative_mse"
        self.source_embeddings = np.asarray(self.embed_inputs(teacher_model, source_sentences), np.float32)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        target = np.asarray(self.embed_inputs(model, self.target_sentences), np.float32)
        mse = float(np.mean((self.source_embeddings - target) ** 2) * 100)
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, ["epoch", "steps", "MSE"], [epoch, steps, mse])
        self.primary_metric = "negative_mse"
        return self.prefix_name_to_metrics({"negative_mse": -mse}, self.name)


class TranslationEvaluator(SentenceEvaluator):
    """How often a source sentence's most similar target (cosine) is its own translation, and the reverse:
    ``src2trg_accuracy``, ``trg2src_accuracy``, ``mean_accuracy`` (sentence-transformers' TranslationEvaluator;
    a duplicate of the right sentence counts as right)."""

    def __init__(self, source_sentences: list[str], target_sentences: list[str], show_progress_bar: bool = False,
                 batch_size: int = 16, name: str = "", print_wrong_matches: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None):
        if len(source_sentences) != len(target_sentences):
            raise ValueError(f"source_sentences ({len(source_sentences)}) and target_sentences "
                             f"({len(target_sentences)}) must have the same length.")
        self.source_sentences, self.target_sentences = list(source_sentences), list(target_sentences)
        self.show_progress_bar, self.batch_size, self.name = show_progress_bar, batch_size, name
        self.print_wrong_matches, self.write_csv, self.truncate_dim = print_wrong_matches, write_csv, truncate_dim
        self.csv_file = "translation_evaluation" + ("_" + name if name else "") + "_results.csv"
        self.primary_metric = "mean_accuracy"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        scores = np.asarray(similarity_functions("cosine")[0](self.embed_inputs(model, self.source_sentences),
                                                              self.embed_inputs(model, self.target_sentences)))
        src2trg = [self.target_sentences[i] == self.target_sentences[j] for i, j in enumerate(scores.argmax(1))]
        trg2src = [self.source_sentences[i] == self.source_sentences[j] for i, j in enumerate(scores.argmax(0))]
        if self.print_wrong_matches:
            for i, (ok, j) in enumerate(zip(src2trg, scores.argmax(1))):
                if not ok:
                    print(f"Source {i} is most similar to target {j} instead of target {i}: "
                          f"{self.source_sentences[i]!r} -> {self.target_sentences[j]!r}")
        metrics = {"src2trg_accuracy": float(np.mean(src2trg)), "trg2src_accuracy": float(np.mean(trg2src))}
        metrics["mean_accuracy"] = (metrics["src2trg_accuracy"] + metrics["trg2src_accuracy"]) / 2
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, ["epoch", "steps", "src2trg", "trg2src"],
                            [epoch, steps, metrics["src2trg_accuracy"], metrics["trg2src_accuracy"]])
        self.primary_metric = "mean_accuracy"
        return self.prefix_name_to_metrics(metrics, self.name)


class SequentialEvaluator(SentenceEvaluator):
    """Runs ``evaluators`` in order; returns all their metrics and ``sequential_score``, ``main_score_function``
    of their primary scores (the last one's by default)."""

    def __init__(self, evaluators: Iterable, main_score_function: Callable = lambda scores: scores[-1]):
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        results, scores = {}, []
        for i, evaluator in enumerate(self.evaluators):
            evaluation = evaluator(model, output_path, epoch, steps)
            if not isinstance(evaluation, dict):
                scores.append(evaluation)
                evaluation = {f"evaluator_{i}": evaluation}
            else:
                primary = getattr(evaluator, "primary_metric", None)
                scores.append(evaluation[primary] if primary is not None else next(iter(evaluation.values())))
            results.update(evaluation)
        self.primary_metric = "sequential_score"
        results["sequential_score"] = float(self.main_score_function(scores)) if scores else 0.0
        return results


__all__ = [
    "BinaryClassificationEvaluator",
    "CrossEncoderClassificationEvaluator",
    "CrossEncoderCorrelationEvaluator",
    "CrossEncoderNanoBEIREvaluator",
    "CrossEncoderRerankingEvaluator",
    "EmbeddingSimilarityEvaluator",
    "InformationRetrievalEvaluator",
    "LabelAccuracyEvaluator",
    "MSEEvaluator",
    "MSEEvaluatorFromDataFrame",
    "NanoBEIREvaluator",
    "ParaphraseMiningEvaluator",
    "RerankingEvaluator",
    "SentenceEvaluator",
    "SequentialEvaluator",
    "TranslationEvaluator",
    "TripletEvaluator",
    "pearson",
    "rank_metrics",
    "spearman",
]
