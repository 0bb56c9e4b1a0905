"""MultiVectorEncoder evaluators with sentence-transformers 6.3's names, arguments, metric keys and CSV files
(``sentence_transformers.multi_vector_encoder.evaluation``).

The first four are ``jaxst.evaluation``'s dense evaluators of the same task with the changes 6.3 makes: texts
are embedded as per-token matrices (queries by ``encode_query``, documents by ``encode_document``) with the
evaluator's ``truncate_dim`` and ``token_pooling`` (None: the model's own), and scored by the model's
multi-vector similarity (MaxSim, or MeanMaxSim for a ``meanmaxsim`` model). Metric keys follow the similarity's
name, e.g. ``maxsim_ndcg@10``.

    MultiVectorInformationRetrievalEvaluator  accuracy / precision / recall / MRR / NDCG / MAP@k, MaxSim over
                                              corpus chunks (``chunk_elements`` bounds the scoring block)
    MultiVectorNanoBEIREvaluator              the retrieval evaluator over NanoBEIR tasks and their mean
                                              (pooling and ``name`` in the evaluator names and the CSV file)
    MultiVectorRerankingEvaluator             MAP / MRR@k / NDCG@k of each query's candidates
    MultiVectorTripletEvaluator               {maxsim, meanmaxsim}_accuracy of (anchor, positive, negative)
    MultiVectorDistillationEvaluator          KL divergence and Spearman of the model's scores against a
                                              teacher's (per-query candidate lists, or flat pairs)
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from jaxst.checks import positive_int
from jaxst.evaluation import (
    InformationRetrievalEvaluator,
    NanoBEIREvaluator,
    RerankingEvaluator,
    SentenceEvaluator,
    TripletEvaluator,
    epoch_text,
    spearman,
)
from jaxst.maxsim import maxsim_pairwise, mean_maxsim_pairwise, pad_multi_vectors
from jaxst.modules.token_pooling import HierarchicalTokenPooling
from jaxst.multi_vector_encoder import SIMILARITY_FN_NAMES, MultiVectorEncoder

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _check_pooling(token_pooling):
    if token_pooling is not None and not isinstance(token_pooling, HierarchicalTokenPooling):
        raise TypeError("token_pooling must be a jaxst.multi_vector_encoder.HierarchicalTokenPooling or None, got "
                        f"{type(token_pooling).__name__}")
    return token_pooling


def pooling_name_suffix(token_pooling) -> str:
    """The short label of a pooling that 6.3 appends to NanoBEIR's evaluator names: ``distance_threshold_{t}``,
    ``max_tokens_{n}`` or ``pool_factor_{f:g}`` (another class: its name in snake case)."""
    if isinstance(token_pooling, HierarchicalTokenPooling):
        if token_pooling.distance_threshold is not None:
            return f"distance_threshold_{token_pooling.distance_threshold}"
        if token_pooling.max_tokens is not None:
            return f"max_tokens_{token_pooling.max_tokens}"
        return f"pool_factor_{token_pooling.pool_factor:g}"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(token_pooling).__name__).lower()


class _MultiVectorEvaluator:
    """What a multi-vector evaluator adds to its dense base (the next class in its bases): ``embed_inputs``
    asks a MultiVectorEncoder for per-token matrices with ``token_pooling`` (``truncate_dim`` comes from the
    base), and the default score function is the model's own ``similarity``."""

    token_pooling: HierarchicalTokenPooling | None = None

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs):
        if not isinstance(model, MultiVectorEncoder):
            raise TypeError(f"{type(self).__name__} evaluates a jaxst.MultiVectorEncoder, got {type(model).__name__}")
        kwargs.pop("convert_to_tensor", None)  # per-token matrices are ragged: a list of arrays
        return super().embed_inputs(model, sentences, encode_fn_name, token_pooling=self.token_pooling, **kwargs)

    def similarity_of(self, model) -> Callable:
        # MaxSim (MeanMaxSim for a meanmaxsim model) of every query with every document
        return _bucketed(model.similarity)


def _bucket(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _pad_to_bucket(items) -> tuple[np.ndarray, np.ndarray]:
    """Per-text (tokens_i, dim) matrices -> host ``(embeddings, mask)`` padded to power-of-two rows and tokens."""
    embeddings, mask = pad_multi_vectors([np.asarray(x) for x in items])
    (n, width), dim = mask.shape, embeddings.shape[-1]
    out = np.zeros((_bucket(n), _bucket(width), dim), embeddings.dtype)
    out[:n, :width] = embeddings
    padded_mask = np.zeros(out.shape[:2], bool)
    padded_mask[:n, :width] = mask
    return out, padded_mask


def _bucketed(score: Callable) -> Callable:
    """``score(a, b)`` for lists of per-text matrices, padded to a few shapes first: a reranking sample's query and
    candidates differ in count and length from the next one's, and each new shape would compile the scoring
    again (padding rows are masked, their scores cut off). Other inputs go to ``score`` as they are."""

    def scores(a, b):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and a and b):
            return score(a, b)
        (a_padded, a_mask), (b_padded, b_mask) = _pad_to_bucket(a), _pad_to_bucket(b)
        return score(a_padded, b_padded, a_mask=a_mask, b_mask=b_mask)[: len(a), : len(b)]

    return scores


class MultiVectorInformationRetrievalEvaluator(_MultiVectorEvaluator, InformationRetrievalEvaluator):
    """``InformationRetrievalEvaluator`` for a MultiVectorEncoder: queries by ``encode_query`` (padded once,
    padding rows zero), each chunk of ``corpus_chunk_size`` documents by ``encode_document``, scored by the
    model's similarity (``maxsim`` / ``meanmaxsim``, which names the metrics: ``maxsim_ndcg@10``, ...) unless
    ``score_functions`` are given. ``chunk_elements`` bounds MaxSim's (queries, documents, query tokens,
    document tokens) block (None: ``jaxst.maxsim``'s budget); it configures the default scoring only, so it
    is refused beside ``score_functions``. An explicit ``query_prompt`` / ``corpus_prompt`` replaces the
    model's registered one (a warning says so, once)."""

    def __init__(
        self,
        queries: dict[str, str],
        corpus: dict[str, str],
        relevant_docs: dict[str, set[str]],
        *,
        corpus_chunk_size: int = 5000,
        chunk_elements: int | None = None,
        token_pooling: HierarchicalTokenPooling | None = None,
        score_functions: dict[str, Callable] | None = None,
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
        main_score_function: str | None = None,
        query_prompt: str | None = None,
        query_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
        write_predictions: bool = False,
    ):
        if score_functions is not None and chunk_elements is not None:
            raise ValueError("chunk_elements only configures the default model-resolved scoring, so it would be "
                             "silently ignored alongside score_functions. Bind the budget into your own callable "
                             "instead, e.g. functools.partial(jaxst.maxsim.maxsim, chunk_elements=...).")
        self.chunk_elements = positive_int("chunk_elements", chunk_elements, optional=True)
        self.token_pooling = _check_pooling(token_pooling)
        super().__init__(
            queries=queries, corpus=corpus, relevant_docs=relevant_docs, corpus_chunk_size=corpus_chunk_size,
            mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k, accuracy_at_k=accuracy_at_k,
            precision_recall_at_k=precision_recall_at_k, map_at_k=map_at_k, show_progress_bar=show_progress_bar,
            batch_size=batch_size, name=name, write_csv=write_csv, truncate_dim=truncate_dim,
            score_functions=score_functions, main_score_function=main_score_function, query_prompt=query_prompt,
            query_prompt_name=query_prompt_name, corpus_prompt=corpus_prompt, corpus_prompt_name=corpus_prompt_name,
            write_predictions=write_predictions,
        )

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1, *args,
                 **kwargs) -> dict[str, float]:
        prompts = getattr(model, "prompts", None) or {}
        for explicit, parameter, roles in ((self.query_prompt, "query_prompt", ("query",)),
                                           (self.corpus_prompt, "corpus_prompt", ("document", "passage", "corpus"))):
            if explicit is None:
                continue
            role = next((r for r in roles if r in prompts), None)  # the prompt encode_query / _document would use
            registered = prompts.get(role) if role is not None else None
            if registered and not explicit.startswith(registered):
                _warn_once(f"The explicit {parameter} replaces the model's registered {role!r} prompt "
                           f"({registered!r}) rather than composing with it. Include the model's marker prompt in "
                           f"{parameter} if the trained prompt should be kept.")
        return super().__call__(model, output_path, epoch, steps, *args, **kwargs)

    def similarity_of(self, model) -> Callable:
        score = model.similarity
        return score if self.chunk_elements is None else functools.partial(score, chunk_elements=self.chunk_elements)

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs):
        if encode_fn_name != "query":
            return super().embed_inputs(model, sentences, encode_fn_name, **kwargs)
        # the queries, scored against every corpus chunk, padded once: (n, T, dim), padding rows zero (as 6.3)
        embeddings, _ = super().embed_inputs(model, sentences, encode_fn_name, return_padded=True, **kwargs)
        return embeddings


class MultiVectorNanoBEIREvaluator(NanoBEIREvaluator):
    """``NanoBEIREvaluator`` running ``MultiVectorInformationRetrievalEvaluator`` on each task (with
    ``corpus_chunk_size``, ``chunk_elements``, ``token_pooling``). As in 6.3, an explicit ``token_pooling``
    appends its short label (``pooling_name_suffix``) to the aggregate and per-task names, ``name`` prefixes
    them (``{name}_NanoSciFact_...``), and the CSV file names both and ``truncate_dim``:
    ``[{name}_]NanoBEIR_evaluation_{aggregate_key}[_{truncate_dim}][_{pooling}]_results.csv``."""

    information_retrieval_class = MultiVectorInformationRetrievalEvaluator

    def __init__(self, dataset_names: list[str] | None = None, dataset_id: str = "sentence-transformers/NanoBEIR-en",
                 mrr_at_k: list[int] = (10,), ndcg_at_k: list[int] = (10,), accuracy_at_k: list[int] = (1, 3, 5, 10),
                 precision_recall_at_k: list[int] = (1, 3, 5, 10), map_at_k: list[int] = (100,),
                 show_progress_bar: bool = False, batch_size: int = 32, write_csv: bool = True,
                 truncate_dim: int | None = None, score_functions: dict[str, Callable] | None = None,
                 main_score_function: str | None = None, aggregate_fn: Callable = np.mean, aggregate_key: str = "mean",
                 query_prompts: str | dict[str, str] | None = None, corpus_prompts: str | dict[str, str] | None = None,
                 write_predictions: bool = False, *, corpus_chunk_size: int = 5000, chunk_elements: int | None = None,
                 token_pooling: HierarchicalTokenPooling | None = None, name: str = ""):
        # read by _task and _get_human_readable_name while the base builds the per-task evaluators
        self._ir_extra_kwargs = {"corpus_chunk_size": corpus_chunk_size, "chunk_elements": chunk_elements,
                                 "token_pooling": token_pooling}
        self.token_pooling = _check_pooling(token_pooling)
        self._name = name
        super().__init__(
            dataset_names=dataset_names, dataset_id=dataset_id, mrr_at_k=mrr_at_k, ndcg_at_k=ndcg_at_k,
            accuracy_at_k=accuracy_at_k, precision_recall_at_k=precision_recall_at_k, map_at_k=map_at_k,
            show_progress_bar=show_progress_bar, batch_size=batch_size, write_csv=write_csv, truncate_dim=truncate_dim,
            score_functions=score_functions, main_score_function=main_score_function, aggregate_fn=aggregate_fn,
            aggregate_key=aggregate_key, query_prompts=query_prompts, corpus_prompts=corpus_prompts,
            write_predictions=write_predictions,
        )
        if token_pooling is not None:  # one underscore segment more than each task's name, as the tasks get it
            self.name += f"_{pooling_name_suffix(token_pooling)}"
        self.csv_file = f"NanoBEIR_evaluation_{self.name.removeprefix('NanoBEIR_')}_results.csv"
        if name:
            self.name = f"{name}_{self.name}"
            self.csv_file = f"{name}_{self.csv_file}"

    def _get_human_readable_name(self, dataset_name: str) -> str:
        readable = super()._get_human_readable_name(dataset_name)
        if self.token_pooling is not None:
            readable += f"_{pooling_name_suffix(self.token_pooling)}"
        return f"{self._name}_{readable}" if self._name else readable

    def _task(self, name: str, **options):
        return super()._task(name, **options, **self._ir_extra_kwargs)


class MultiVectorRerankingEvaluator(_MultiVectorEvaluator, RerankingEvaluator):
    """``RerankingEvaluator`` for a MultiVectorEncoder: each sample's query (``encode_query``) scored against its
    positives and negatives (``encode_document``) by the model's similarity, or ``similarity_fct(query, documents)``
    (the query as a one-item list of its token matrix): ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}`` (primary)."""

    def __init__(self, samples, *, at_k: int = 10, name: str = "", write_csv: bool = True,
                 similarity_fct: Callable | None = None, batch_size: int = 16, show_progress_bar: bool = False,
                 use_batched_encoding: bool = True, truncate_dim: int | None = None,
                 token_pooling: HierarchicalTokenPooling | None = None):
        self.token_pooling = _check_pooling(token_pooling)
        super().__init__(samples=samples, at_k=at_k, name=name, similarity_fct=similarity_fct, batch_size=batch_size,
                         show_progress_bar=show_progress_bar, use_batched_encoding=use_batched_encoding,
                         truncate_dim=truncate_dim, write_csv=write_csv)


class MultiVectorTripletEvaluator(_MultiVectorEvaluator, TripletEvaluator):
    """``TripletEvaluator`` for a MultiVectorEncoder: how often ``sim(anchor, positive) > sim(anchor, negative) +
    margin`` with anchors by ``encode_query`` and positives / negatives by ``encode_document``, for the
    similarities ``maxsim`` and ``meanmaxsim`` (``similarity_fn_names``; the model's by default): keys
    ``{fn}_accuracy`` (and ``max_accuracy`` for both). A ``margin`` dict is keyed by those names (MaxSim grows
    with the query's length, MeanMaxSim sits in [-1, 1]: they need different margins)."""

    def __init__(self, anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[str],
                 main_similarity_function: str | None = None, margin: float | dict[str, float] | None = None,
                 name: str = "", batch_size: int = 16, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, similarity_fn_names: list[str] | None = None,
                 main_distance_function: str | None = "deprecated", *,
                 token_pooling: HierarchicalTokenPooling | None = None):
        self.token_pooling = _check_pooling(token_pooling)
        super().__init__(anchors=anchors, positives=positives, negatives=negatives,
                         main_similarity_function=main_similarity_function, margin=margin, name=name,
                         batch_size=batch_size, show_progress_bar=show_progress_bar, write_csv=write_csv,
                         truncate_dim=truncate_dim, similarity_fn_names=similarity_fn_names,
                         main_distance_function=main_distance_function)

    def _get_similarity_functions(self) -> dict[str, Callable]:
        pairwise_of = {"maxsim": maxsim_pairwise, "meanmaxsim": mean_maxsim_pairwise}
        return {name: lambda a, p, n, pairwise=pairwise_of[name]: (pairwise(a, p), pairwise(a, n))
                for name in SIMILARITY_FN_NAMES}


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().cpu().numpy()
    try:
        return np.asarray(scores, np.float32)
    except ValueError as e:
        raise ValueError(f"{name} must be numbers in a rectangular shape (1-D or 2-D): {e}") from None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _spearman_or_nan(a, b) -> float:
    """Spearman's rank correlation, NaN where it is undefined (fewer than two values, or constant ones), as
    scipy's ``spearmanr`` reports it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return spearman(a, b)


class MultiVectorDistillationEvaluator(_MultiVectorEvaluator, SentenceEvaluator):
    """How closely a MultiVectorEncoder's scores follow a teacher's, as sentence-transformers 6.3's evaluator of
    the same name: ``kl_divergence`` (lower is better) and ``spearman`` (primary). Queries are embedded by
    ``encode_query``, documents by ``encode_document``, each pair scored by ``similarity_fct`` (None: the model's
    ``similarity_pairwise``). Two shapes of data:

    - per-query candidate lists (the shape ``MultiVectorDistillKLDivLoss`` trains on): ``documents`` one list of
      N documents per query, ``scores`` (queries, N). The KL divergence of the student's softmax over each
      query's candidates from the teacher's, averaged over queries, times ``student_temperature`` squared (each
      side's scores divided by its temperature first): the training loss's number. The Spearman is the mean of
      the per-query correlations (queries whose teacher or student scores are constant are skipped; 0.0 if all).
    - flat pairs: one document per query, ``scores`` 1-D. One softmax over the whole dataset; the KL is summed,
      not averaged (not comparable to the per-query KL), and the Spearman is one global correlation (0.0 when
      undefined).

    ``temperature`` applies to both sides unless ``student_temperature`` / ``teacher_temperature`` override
    it; each must be positive and finite. ``output_path`` appends ``epoch, steps, kl_divergence, spearman`` to
    ``distillation_evaluation[_{name}]_results.csv``."""

    def __init__(self, queries: Sequence[str], documents: Sequence[str] | Sequence[Sequence[str]], scores, *,
                 temperature: float = 1.0, student_temperature: float | None = None,
                 teacher_temperature: float | None = None, similarity_fct: Callable | None = None, name: str = "",
                 batch_size: int = 16, show_progress_bar: bool = False, write_csv: bool = True,
                 truncate_dim: int | None = None, token_pooling: HierarchicalTokenPooling | None = None):
        if not (len(queries) == len(documents) == len(scores)):
            raise ValueError(f"queries ({len(queries)}), documents ({len(documents)}), and scores ({len(scores)}) "
                             "must all have the same length.")
        if len(queries) == 0:
            raise ValueError("MultiVectorDistillationEvaluator needs at least one query")
        self.queries = list(queries)
        documents = list(documents)
        self.nested_documents = isinstance(documents[0], (list, tuple))
        if self.nested_documents:
            n_ways = len(documents[0])
            if any(not isinstance(row, (list, tuple)) or len(row) != n_ways for row in documents):
                raise ValueError("All per-query candidate lists in documents must have the same length.")
            self.documents = [list(row) for row in documents]
            self.scores = _as_scores(scores)
            if self.scores.ndim != 2 or self.scores.shape[1] != n_ways:
                raise ValueError(f"With per-query candidate documents, scores must be 2-D (num_queries, {n_ways}), "
                                 f"got shape {tuple(self.scores.shape)}.")
        else:
            self.documents = documents
            self.scores = _as_scores(scores)
            if self.scores.ndim != 1:
                raise ValueError(f"With one document per query, scores must be 1-D, got shape "
                                 f"{tuple(self.scores.shape)}. Pass documents as a list of per-query candidate lists "
                                 "to use 2-D scores.")
        self.temperature = temperature
        self.student_temperature = student_temperature if student_temperature is not None else temperature
        self.teacher_temperature = teacher_temperature if teacher_temperature is not None else temperature
        for label in ("temperature", "student_temperature", "teacher_temperature"):
            value = getattr(self, label)
            if not 0 < value < math.inf:
                raise ValueError(f"{label} must be a positive finite number, got {value}.")
        self.similarity_fct = similarity_fct
        self.name, self.batch_size, self.show_progress_bar = name, batch_size, show_progress_bar
        self.write_csv, self.truncate_dim = write_csv, truncate_dim
        self.token_pooling = _check_pooling(token_pooling)
        self.csv_file = "distillation_evaluation" + (f"_{name}" if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "kl_divergence", "spearman"]
        self.primary_metric = "spearman"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(f"MultiVectorDistillationEvaluator: Evaluating the model on the {self.name} dataset"
                    f"{epoch_text(epoch, steps)}:")
        queries = self.embed_inputs(model, self.queries, "query")
        pairwise = self.similarity_fct if self.similarity_fct is not None else model.similarity_pairwise
        if self.nested_documents:
            n_ways = len(self.documents[0])
            documents = self.embed_inputs(model, [d for row in self.documents for d in row], "document")
            # way j of every query scored as pairs, as the KD loss scores them at training time
            student = np.stack([np.asarray(pairwise(queries, documents[way::n_ways]), np.float32)
                                for way in range(n_ways)], axis=1)
        else:
            student = np.asarray(pairwise(queries, self.embed_inputs(model, self.documents, "document")), np.float32)
        teacher_log = _log_softmax(self.scores.astype(np.float64) / self.teacher_temperature)
        student_log = _log_softmax(student.astype(np.float64) / self.student_temperature)
        kl = float(np.sum(np.exp(teacher_log) * (teacher_log - student_log)))
        if self.nested_documents:  # the mean over queries; the flat path reports the whole sum
            kl /= len(self.queries)
        kl *= self.student_temperature ** 2
        if self.nested_documents:
            per_query = [c for c in map(_spearman_or_nan, self.scores, student) if not math.isnan(c)]
            correlation = sum(per_query) / len(per_query) if per_query else 0.0
        else:
            correlation = _spearman_or_nan(self.scores, student)
            correlation = 0.0 if math.isnan(correlation) else correlation
        logger.info(f"KL divergence:\t{kl:.4f}")
        logger.info(f"Spearman correlation:\t{correlation:.4f}")
        if output_path is not None and self.write_csv:
            self._write_csv(output_path, self.csv_file, self.csv_headers, [epoch, steps, kl, correlation])
        self.primary_metric = "spearman"
        return self.prefix_name_to_metrics({"kl_divergence": kl, "spearman": float(correlation)}, self.name)


__all__ = [
    "MultiVectorDistillationEvaluator",
    "MultiVectorInformationRetrievalEvaluator",
    "MultiVectorNanoBEIREvaluator",
    "MultiVectorRerankingEvaluator",
    "MultiVectorTripletEvaluator",
]
