"""SparseEncoder evaluators with sentence-transformers 6.3's names, arguments and metric keys
(``sentence_transformers.sparse_encoder.evaluation``).

Each is ``jaxst.evaluation``'s dense evaluator of the same task with two changes, as in sentence-transformers:
texts are embedded as sparse rows (``max_active_dims``: None keeps the model's own), and the metrics gain the
embeddings' sparsity, ``active_dims`` (mean non-zero dimensions per embedding) and ``sparsity_ratio`` (1 -
that / vocabulary size), averaged over the evaluator's encode calls (also appended to its CSV rows). Scores
without a given function use the model's own ``similarity``, which scores sparse rows without making them dense.

    SparseEmbeddingSimilarityEvaluator   Pearson / Spearman + active_dims, sparsity_ratio
    SparseBinaryClassificationEvaluator  accuracy / F1 / AP / MCC by threshold + active_dims, sparsity_ratio
    SparseInformationRetrievalEvaluator  accuracy / precision / recall / MRR / NDCG / MAP@k + query_* and
                                         corpus_* statistics (the corpus's weighted by chunk size) and avg_flops
    SparseNanoBEIREvaluator              SparseInformationRetrievalEvaluator over the NanoBEIR tasks, their mean,
                                         and the statistics weighted by task size (avg_flops over all tasks)
    SparseMSEEvaluator                   negative_mse against a teacher (dense rows) + active_dims, sparsity_ratio
    SparseRerankingEvaluator             MAP / MRR@k / NDCG@k + query_* and corpus_* statistics
    SparseTranslationEvaluator           src2trg / trg2src / mean accuracy + active_dims, sparsity_ratio
    SparseTripletEvaluator               accuracy per similarity + anchor_*, positive_*, negative_* statistics
    ReciprocalRankFusionEvaluator        MAP / MRR@k / NDCG@k of two rankings (dense, sparse) fused by RRF
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import numpy as np

from jaxst.evaluation import (
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
    MSEEvaluator,
    NanoBEIREvaluator,
    RerankingEvaluator,
    SentenceEvaluator,
    TranslationEvaluator,
    TripletEvaluator,
    epoch_text,
    rank_metrics,
)
from jaxst.sparse import as_rows

logger = logging.getLogger(__name__)


class _SparseEvaluator:
    """What a sparse evaluator adds to its dense base (the next class in its bases): ``embed_inputs`` asks for
    sparse rows with ``max_active_dims`` and records each call's ``model.sparsity``; ``__call__`` returns the
    base's metrics and the statistics, prefixed by ``stat_prefixes`` (the groups, in key order: "" for one)
    and averaged over the calls of a group (weighted by rows for ``weighted_prefixes``, else one per call);
    ``sparsity_stats`` keeps them after the call."""

    stat_prefixes: tuple[str, ...] = ("",)
    weighted_prefixes: tuple[str, ...] = ()
    sparse_output = True  # sparse rows (False: dense ones, the MSE evaluator's)

    def _init_sparse(self, max_active_dims: int | None) -> None:
        self.max_active_dims = max_active_dims
        self.sparsity_stats: dict[str, float] = {}
        self._records: dict[str, list] = {}

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs):
        embeddings = super().embed_inputs(model, sentences, encode_fn_name,
                                          convert_to_sparse_tensor=self.sparse_output,
                                          max_active_dims=self.max_active_dims, **kwargs)
        self._record(self._stat_prefix(encode_fn_name), model, embeddings)
        return embeddings

    def _stat_prefix(self, encode_fn_name: str | None) -> str:
        return self.stat_prefixes[0]

    def _record(self, prefix: str, model, embeddings) -> None:
        self._records.setdefault(prefix, []).append((model.sparsity(embeddings), int(embeddings.shape[0])))

    def similarity_of(self, model) -> Callable:
        return model.similarity  # the SparseEncoder's own: sparse rows scored as they are

    def sparsity_statistics(self) -> dict[str, float]:
        """The recorded calls' statistics: ``{prefix}_active_dims``, ``{prefix}_sparsity_ratio`` per group."""
        stats = {}
        for prefix in self.stat_prefixes:
            records = self._records.get(prefix)
            if not records:
                continue
            weights = [n for _, n in records] if prefix in self.weighted_prefixes else [1] * len(records)
            for key in records[0][0]:
                value = sum(w * stat[key] for (stat, _), w in zip(records, weights)) / sum(weights)
                stats[f"{prefix}_{key}" if prefix else key] = value
        return stats

    def extra_csv_columns(self) -> dict[str, float]:
        return self.sparsity_statistics()

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        return self._evaluate(model, output_path, epoch, steps)

    def _evaluate(self, model, output_path, epoch, steps, *args, **kwargs) -> dict[str, float]:
        self._records = {}
        metrics = super().__call__(model, output_path, epoch, steps, *args, **kwargs)
        self.sparsity_stats = self.sparsity_statistics()
        for prefix in self.stat_prefixes:
            key = f"{prefix}_" if prefix else ""
            if key + "active_dims" in self.sparsity_stats:
                logger.info(f"Model {prefix.capitalize() + ' ' if prefix else ''}Sparsity: Active Dimensions: "
                            f"{self.sparsity_stats[key + 'active_dims']:.1f}, Sparsity Ratio: "
                            f"{self.sparsity_stats[key + 'sparsity_ratio']:.4f}")
        metrics.update(self.prefix_name_to_metrics(self.sparsity_stats, self.name))
        return metrics


class _QueryCorpusStats(_SparseEvaluator):
    """Statistics of the queries (``encode_query`` and ``encode``) and of the corpus (``encode_document``)."""

    stat_prefixes = ("query", "corpus")

    def _stat_prefix(self, encode_fn_name: str | None) -> str:
        return "query" if encode_fn_name in ("query", None) else "corpus"


class SparseEmbeddingSimilarityEvaluator(_SparseEvaluator, EmbeddingSimilarityEvaluator):
    """``EmbeddingSimilarityEvaluator`` on a SparseEncoder's sparse embeddings: ``pearson_{fn}``,
    ``spearman_{fn}`` (primary) and ``active_dims``, ``sparsity_ratio``."""

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity: str | None = None, similarity_fn_names: list[str] | None = None, name: str = "",
                 show_progress_bar: bool = False, write_csv: bool = True, max_active_dims: int | None = None):
        self._init_sparse(max_active_dims)
        super().__init__(sentences1=sentences1, sentences2=sentences2, scores=scores, batch_size=batch_size,
                         main_similarity=main_similarity, similarity_fn_names=similarity_fn_names, name=name,
                         show_progress_bar=show_progress_bar, write_csv=write_csv)


class SparseBinaryClassificationEvaluator(_SparseEvaluator, BinaryClassificationEvaluator):
    """``BinaryClassificationEvaluator`` on a SparseEncoder's sparse embeddings (each distinct sentence embedded
    once): ``{fn}_accuracy`` ... ``{fn}_ap`` (primary) ... and ``active_dims``, ``sparsity_ratio``."""

    def __init__(self, sentences1: list[str], sentences2: list[str], labels: list[int], name: str = "",
                 batch_size: int = 32, show_progress_bar: bool = False, write_csv: bool = True,
                 max_active_dims: int | None = None, similarity_fn_names: list[str] | None = None):
        self._init_sparse(max_active_dims)
        super().__init__(sentences1=sentences1, sentences2=sentences2, labels=labels, name=name,
                         batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv,
                         similarity_fn_names=similarity_fn_names)


class SparseInformationRetrievalEvaluator(_QueryCorpusStats, InformationRetrievalEvaluator):
    """``InformationRetrievalEvaluator`` on a SparseEncoder's sparse embeddings (queries by ``encode_query``,
    the corpus by ``encode_document``, scored by the model's ``similarity`` unless ``score_functions`` are
    given), with ``query_active_dims``, ``query_sparsity_ratio``, ``corpus_active_dims``,
    ``corpus_sparsity_ratio`` (over all corpus chunks) and ``avg_flops``: the expected number of dimensions
    a query and a document share, the dot product of the mean query and mean document activity (the share of
    embeddings active in each dimension)."""

    weighted_prefixes = ("corpus",)

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
        max_active_dims: int | None = None,
        score_functions: dict[str, Callable] | None = None,
        main_score_function: str | None = None,
        query_prompt: str | None = None,
        query_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
        write_predictions: bool = False,
    ):
        self._init_sparse(max_active_dims)
        self._counts: dict[str, np.ndarray] = {}
        super().__init__(
            queries=queries, corpus=corpus, relevant_docs=relevant_docs, corpus_chunk_size=corpus_chunk_size,
            mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k, accuracy_at_k=accuracy_at_k,
            precision_recall_at_k=precision_recall_at_k, map_at_k=map_at_k, show_progress_bar=show_progress_bar,
            batch_size=batch_size, name=name, write_csv=write_csv, score_functions=score_functions,
            main_score_function=main_score_function, query_prompt=query_prompt, query_prompt_name=query_prompt_name,
            corpus_prompt=corpus_prompt, corpus_prompt_name=corpus_prompt_name, write_predictions=write_predictions,
        )

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        self._counts = {}
        metrics = self._evaluate(model, output_path, epoch, steps, *args, **kwargs)
        logger.info(f"Average FLOPS: {self.sparsity_stats['avg_flops']:.2f}")
        return metrics

    def compute_metrics_for(self, model, functions: dict[str, Callable], output_path: str | None = None,
                            corpus_model=None, corpus_embeddings=None) -> dict:
        if corpus_embeddings is not None:  # embedded beforehand: its statistics, once for the whole corpus
            self._record("corpus", model if corpus_model is None else corpus_model, corpus_embeddings)
        return super().compute_metrics_for(model, functions, output_path, corpus_model, corpus_embeddings)

    def _record(self, prefix: str, model, embeddings) -> None:
        super()._record(prefix, model, embeddings)
        values, indices, dim = (np.asarray(a) if i < 2 else a for i, a in enumerate(as_rows(embeddings)))
        active = indices[(values != 0) & (indices < dim)]
        counts = np.bincount(active, minlength=dim)
        self._counts[prefix] = self._counts[prefix] + counts if prefix in self._counts else counts

    def sparsity_statistics(self) -> dict[str, float]:
        stats = super().sparsity_statistics()
        if "query" in self._counts and "corpus" in self._counts:
            rows = {prefix: sum(n for _, n in self._records[prefix]) for prefix in ("query", "corpus")}
            stats["avg_flops"] = float(np.dot(self._counts["query"] / rows["query"],
                                              self._counts["corpus"] / rows["corpus"]))
        else:
            stats["avg_flops"] = 0.0
        return stats


class SparseNanoBEIREvaluator(NanoBEIREvaluator):
    """``NanoBEIREvaluator`` over ``SparseInformationRetrievalEvaluator`` (sparse rows with ``max_active_dims``:
    None keeps the model's own; it suffixes the names, ``Nano{Task}_{max_active_dims}`` and
    ``NanoBEIR_{aggregate_key}_{max_active_dims}``), as sentence-transformers 6.3's SparseNanoBEIREvaluator:
    every task's metrics and statistics, their ``aggregate_fn`` over the tasks, except that the aggregated
    ``query_active_dims``, ``query_sparsity_ratio``, ``corpus_active_dims`` and ``corpus_sparsity_ratio`` are
    the tasks' weighted by their numbers of queries / documents, and ``avg_flops`` is that of all the tasks'
    queries and documents together (the dot product of the mean query and mean document activity); those five
    are appended to the CSV row and kept in ``sparsity_stats``."""

    information_retrieval_class = SparseInformationRetrievalEvaluator

    def __init__(self, dataset_names: list[str] | None = None, dataset_id: str = "sentence-transformers/NanoBEIR-en",
                 mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,), accuracy_at_k: list[int] = (1, 3, 5, 10),
                 precision_recall_at_k: list[int] = (1, 3, 5, 10), map_at_k: list[int] = (100,),
                 show_progress_bar: bool = False, batch_size: int = 32, write_csv: bool = True,
                 max_active_dims: int | None = None, score_functions: dict[str, Callable] | None = None,
                 main_score_function: str | None = None, aggregate_fn: Callable = np.mean, aggregate_key: str = "mean",
                 query_prompts: str | dict[str, str] | None = None, corpus_prompts: str | dict[str, str] | None = None,
                 write_predictions: bool = False):
        self.max_active_dims = max_active_dims
        self.sparsity_stats: dict[str, float] = {}
        super().__init__(dataset_names=dataset_names, dataset_id=dataset_id, mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k,
                         accuracy_at_k=accuracy_at_k, precision_recall_at_k=precision_recall_at_k,
                         map_at_k=map_at_k, show_progress_bar=show_progress_bar, batch_size=batch_size,
                         write_csv=write_csv, score_functions=score_functions,
                         main_score_function=main_score_function, aggregate_fn=aggregate_fn,
                         aggregate_key=aggregate_key, query_prompts=query_prompts, corpus_prompts=corpus_prompts,
                         write_predictions=write_predictions)
        if max_active_dims is not None:
            self.name += f"_{max_active_dims}"

    def _get_human_readable_name(self, dataset_name: str) -> str:
        name = super()._get_human_readable_name(dataset_name)
        return name + (f"_{self.max_active_dims}" if self.max_active_dims is not None else "")

    def _task(self, name: str, **options):
        options.pop("truncate_dim", None)
        return super()._task(name, max_active_dims=self.max_active_dims, **options)

    def aggregated_sparsity(self) -> dict[str, float]:
        """The tasks' statistics of their last call, aggregated: each ``query_*`` / ``corpus_*`` weighted by the
        task's number of queries / documents, ``avg_flops`` from the activity counts of all of them."""
        lengths = {"query": [len(e.queries) for e in self.evaluators],
                   "corpus": [len(e.corpus) for e in self.evaluators]}
        stats = {}
        for key in self.evaluators[0].sparsity_stats:
            if key != "avg_flops":
                weights = lengths[key.split("_")[0]]
                stats[key] = sum(e.sparsity_stats[key] * n for e, n in zip(self.evaluators, weights)) / sum(weights)
        mean = {prefix: sum(e._counts[prefix] for e in self.evaluators) / sum(lengths[prefix])
                for prefix in ("query", "corpus")}
        stats["avg_flops"] = float(np.dot(mean["query"], mean["corpus"]))
        return stats

    def extra_csv_columns(self) -> dict[str, float]:
        return self.aggregated_sparsity()  # called once the tasks ran: the row of this call

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        metrics = super().__call__(model, output_path, epoch, steps, *args, **kwargs)
        self.sparsity_stats = self.aggregated_sparsity()
        logger.info(f"Model Query Sparsity: Active Dimensions: {self.sparsity_stats['query_active_dims']:.1f}, "
                    f"Sparsity Ratio: {self.sparsity_stats['query_sparsity_ratio']:.4f}")
        logger.info(f"Model Corpus Sparsity: Active Dimensions: {self.sparsity_stats['corpus_active_dims']:.1f}, "
                    f"Sparsity Ratio: {self.sparsity_stats['corpus_sparsity_ratio']:.4f}")
        logger.info(f"Average FLOPS: {self.sparsity_stats['avg_flops']:.2f}")
        metrics.update(self.prefix_name_to_metrics(self.sparsity_stats, self.name))
        return metrics


class SparseMSEEvaluator(_SparseEvaluator, MSEEvaluator):
    """``MSEEvaluator`` for SparseEncoders: the mean squared error (x 100) between a teacher's embeddings of
    ``source_sentences`` and the model's of ``target_sentences`` (both as dense rows, as sentence-transformers
    computes it; each with ``max_active_dims``), ``negative_mse`` (primary), and the model's ``active_dims``,
    ``sparsity_ratio``."""

    sparse_output = False

    def __init__(self, source_sentences: list[str], target_sentences: list[str], teacher_model=None,
                 show_progress_bar: bool = False, batch_size: int = 32, name: str = "", write_csv: bool = True,
                 max_active_dims: int | None = None):
        self._init_sparse(max_active_dims)
        super().__init__(source_sentences=source_sentences, target_sentences=target_sentences,
                         teacher_model=teacher_model, show_progress_bar=show_progress_bar, batch_size=batch_size,
                         name=name, write_csv=write_csv)


class SparseRerankingEvaluator(_QueryCorpusStats, RerankingEvaluator):
    """``RerankingEvaluator`` on a SparseEncoder's sparse embeddings (scored by the model's ``similarity``
    unless ``similarity_fct`` is given): ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` (primary), and
    ``query_active_dims``, ``query_sparsity_ratio``, ``corpus_active_dims``, ``corpus_sparsity_ratio`` (per
    encode call: with ``use_batched_encoding=False`` the mean over samples)."""

    def __init__(self, samples, at_k: int = 10, name: str = "", write_csv: bool = True,
                 similarity_fct: Callable | None = None, batch_size: int = 64, show_progress_bar: bool = False,
                 use_batched_encoding: bool = True, max_active_dims: int | None = None, mrr_at_k: int | None = None):
        self._init_sparse(max_active_dims)
        super().__init__(samples=samples, at_k=at_k, name=name, similarity_fct=similarity_fct,
                         batch_size=batch_size, show_progress_bar=show_progress_bar,
                         use_batched_encoding=use_batched_encoding, mrr_at_k=mrr_at_k, write_csv=write_csv)


class SparseTranslationEvaluator(_SparseEvaluator, TranslationEvaluator):
    """``TranslationEvaluator`` on a SparseEncoder's sparse embeddings (cosine, as the dense one):
    ``src2trg_accuracy``, ``trg2src_accuracy``, ``mean_accuracy`` (primary), ``active_dims``,
    ``sparsity_ratio``."""

    def __init__(self, source_sentences: list[str], target_sentences: list[str], show_progress_bar: bool = False,
                 batch_size: int = 16, name: str = "", print_wrong_matches: bool = False, write_csv: bool = True,
                 max_active_dims: int | None = None):
        self._init_sparse(max_active_dims)
        super().__init__(source_sentences, target_sentences, show_progress_bar=show_progress_bar,
                         batch_size=batch_size, name=name, print_wrong_matches=print_wrong_matches,
                         write_csv=write_csv)


class SparseTripletEvaluator(_SparseEvaluator, TripletEvaluator):
    """``TripletEvaluator`` on a SparseEncoder's sparse embeddings (anchors by ``encode_query``, positives and
    negatives by ``encode_document``): ``{fn}_accuracy`` and the statistics of each column,
    ``anchor_active_dims``, ``anchor_sparsity_ratio``, ``positive_*``, ``negative_*``."""

    stat_prefixes = ("anchor", "positive", "negative")

    def __init__(self, anchors: list[str], positives: list[str], negatives: list[str],
                 main_similarity_function: str | None = None, margin: float | dict[str, float] | None = None,
                 name: str = "", batch_size: int = 16, show_progress_bar: bool = False, write_csv: bool = True,
                 max_active_dims: int | None = None, similarity_fn_names: list[str] | None = None,
                 main_distance_function: str | None = "deprecated"):
        self._init_sparse(max_active_dims)
        super().__init__(anchors=anchors, positives=positives, negatives=negatives,
                         main_similarity_function=main_similarity_function, margin=margin, name=name,
                         batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv,
                         similarity_fn_names=similarity_fn_names, main_distance_function=main_distance_function)

    def _stat_prefix(self, encode_fn_name: str | None) -> str:
        return self.stat_prefixes[len(self._records)]  # the columns are embedded in order


class ReciprocalRankFusionEvaluator(SentenceEvaluator):
    """A hybrid search's quality, as sentence-transformers 6.3's ReciprocalRankFusionEvaluator: each query's two
    rankings (``dense_samples`` and ``sparse_samples``, aligned dicts with "query_id", "query", "positive" and
    the ranked "documents"; the positives are the dense sample's) are fused by Reciprocal Rank Fusion (a
    document scores the sum of 1 / (``rrf_k`` + its rank) over the rankings that hold it; equal scores keep
    dense-first order). Metrics of each ranking and of the fusion: ``dense_map``, ``dense_mrr@{at_k}``,
    ``dense_ndcg@{at_k}``, ``sparse_*``, and ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` (primary); MAP and NDCG
    count every known positive, those no ranking found included. Called without a model:
    ``evaluator(output_path=None, epoch=-1, steps=-1)``; ``write_predictions`` writes the fused rankings."""

    def __init__(self, dense_samples: list[dict], sparse_samples: list[dict], at_k: int = 10, rrf_k: int = 60,
                 name: str = "", batch_size: int = 32, show_progress_bar: bool = False, write_csv: bool = True,
                 write_predictions: bool = False):
        if len(dense_samples) != len(sparse_samples):
            raise ValueError(f"Dense samples ({len(dense_samples)}) and sparse samples ({len(sparse_samples)}) must "
                             "have the same length")
        for i, (dense, sparse) in enumerate(zip(dense_samples, sparse_samples)):
            if "query_id" not in dense or "query_id" not in sparse:
                raise ValueError(f"Sample at index {i} missing 'query_id' field")
            if dense["query_id"] != sparse["query_id"]:
                raise ValueError(f"Query ID mismatch at index {i}: {dense['query_id']} != {sparse['query_id']}")
        self.dense_samples, self.sparse_samples = dense_samples, sparse_samples
        self.at_k, self.rrf_k, self.name = at_k, rrf_k, name
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.write_csv, self.write_predictions = write_csv, write_predictions
        suffix = "_" + name if name else ""
        self.csv_file = f"ReciprocalRankFusion_evaluation{suffix}_results.csv"
        self.predictions_file = f"ReciprocalRankFusion_evaluation{suffix}_predictions.jsonl"
        self.csv_headers = ["epoch", "steps"] + [f"{ranking}_{metric}" for ranking in ("Dense", "Sparse", "Fusion")
                                                 for metric in ("MAP", f"MRR@{at_k}", f"NDCG@{at_k}")]
        self.primary_metric = f"ndcg@{at_k}"

    def fuse(self, *rankings: list[str]) -> list[str]:
        """The documents of ``rankings`` by Reciprocal Rank Fusion score, best first (ties: first seen first)."""
        scores: dict[str, float] = {}
        for documents in rankings:
            for doc, rank in {doc: rank for rank, doc in enumerate(documents, start=1)}.items():
                scores[doc] = scores.get(doc, 0.0) + 1 / (self.rrf_k + rank)
        return sorted(scores, key=lambda doc: -scores[doc])

    def __call__(self, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"ReciprocalRankFusionEvaluator: Evaluating hybrid search on the {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        results: dict[str, list] = {"dense": [], "sparse": [], "fusion": []}
        fused_rankings = []
        for dense, sparse in zip(self.dense_samples, self.sparse_samples):
            positive = [dense["positive"]] if isinstance(dense["positive"], str) else list(dense["positive"])
            fused = self.fuse(dense["documents"], sparse["documents"])
            for ranking, documents in (("dense", dense["documents"]), ("sparse", sparse["documents"]),
                                       ("fusion", fused)):
                relevant = [int(doc in positive) for doc in documents]
                results[ranking].append(rank_metrics(relevant, np.arange(len(documents), 0, -1), self.at_k,
                                                      len(positive)))
            if self.write_predictions:
                fused_rankings.append({"query_id": dense["query_id"], "query": dense["query"], "positive": positive,
                                       "documents": fused})
        metrics, row = {}, [epoch, steps]
        for ranking, prefix in (("dense", "dense_"), ("sparse", "sparse_"), ("fusion", "")):
            mrr, ndcg, ap = (float(np.mean(column)) for column in zip(*results[ranking])) if results[ranking] else \
                (float("nan"),) * 3
            metrics.update({f"{prefix}map": ap, f"{prefix}mrr@{self.at_k}": mrr, f"{prefix}ndcg@{self.at_k}": ndcg})
            row += [ap, mrr, ndcg]
            logger.info(f"{ranking.capitalize()}: MAP {ap:.2%}, MRR@{self.at_k} {mrr:.2%}, NDCG@{self.at_k} {ndcg:.2%}")
        if output_path is not None:
            os.makedirs(output_path, exist_ok=True)
            if self.write_csv:
                self._write_csv(output_path, self.csv_file, self.csv_headers, row)
            if self.write_predictions and fused_rankings:
                with open(os.path.join(output_path, self.predictions_file), "w", encoding="utf-8") as f:
                    for prediction in fused_rankings:
                        f.write(json.dumps(prediction) + "\n")
        self.primary_metric = f"ndcg@{self.at_k}"
        return self.prefix_name_to_metrics(metrics, self.name)


__all__ = [
    "ReciprocalRankFusionEvaluator",
    "SparseBinaryClassificationEvaluator",
    "SparseEmbeddingSimilarityEvaluator",
    "SparseInformationRetrievalEvaluator",
    "SparseMSEEvaluator",
    "SparseNanoBEIREvaluator",
    "SparseRerankingEvaluator",
    "SparseTranslationEvaluator",
    "SparseTripletEvaluator",
]
