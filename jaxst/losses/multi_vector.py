"""Multi-vector (ColBERT) losses over token embeddings scored by MaxSim.

Each loss reads ``outputs``: one dict per input column of what a MultiVectorEncoder returns, its
``token_embeddings`` (B, T, D) and its scoring ``attention_mask`` (B, T) (``jaxst.training`` passes them, since
``needs_outputs`` is set); column 0 the queries, the others documents. The documents of the columns are
padded to one width and stacked (B, N, T, D), as sentence-transformers stacks them.

``similarity_fct`` (where a loss takes one) is a JAX callable with sentence-transformers 6.3's calling
convention, ``similarity_fct(queries, documents, queries_mask=..., documents_mask=...)``; None (the default)
scores MaxSim, or MeanMaxSim when ``model`` is a MultiVectorEncoder whose ``similarity_fn_name`` is
"meanmaxsim" (the original's ``model.similarity`` / ``model.similarity_pairwise``).

A loss with ``needs_outputs`` cannot run through jaxst's GradCache path, which caches one sentence embedding
per text, not per-token outputs: the training step refuses a multi-vector loss whose ``mini_batch_size`` is
set (see ``jaxst.training.step``), rather than ignore it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.checks import callable_arg, positive_int
from jaxst.losses.base import Loss, cached_rows, gather, mse
from jaxst.losses.distillation import distill_kl_div, distill_temperatures, teacher_margins, teacher_scores
from jaxst.maxsim import maxsim_scores


def _token_columns(outputs, minimum: int, name: str) -> list[tuple[jax.Array, jax.Array]]:
    """(token_embeddings, attention_mask) of each column, at least ``minimum`` columns."""
    if not isinstance(outputs, (list, tuple)) or not all(
            isinstance(o, dict) and "token_embeddings" in o and "attention_mask" in o for o in outputs):
        raise TypeError(f"{name} reads one dict of MultiVectorEncoder outputs per column (token_embeddings, "
                        "attention_mask)")
    if len(outputs) < minimum:
        raise ValueError(f"{name} expects at least {minimum} columns (a query column and {minimum - 1} document "
                         f"columns), but got {len(outputs)}.")
    return [(jnp.asarray(o["token_embeddings"]), jnp.asarray(o["attention_mask"])) for o in outputs]


def _stack_documents(documents) -> tuple[jax.Array, jax.Array]:
    """Document columns [(B, T_i, D), (B, T_i)] padded to the widest and stacked: (B, N, T, D), (B, N, T) bool."""
    width = max(e.shape[1] for e, _ in documents)
    emb = jnp.stack([jnp.pad(e, ((0, 0), (0, width - e.shape[1]), (0, 0))) for e, _ in documents], axis=1)
    mask = jnp.stack([jnp.pad(m != 0, ((0, 0), (0, width - m.shape[1]))) for _, m in documents], axis=1)
    return emb, mask


def _candidate_scores(queries, query_mask, documents, document_mask, length_normalize: bool) -> jax.Array:
    """MaxSim of each query (B, S, D) against its own candidates (B, C, T, D) -> (B, C)."""
    one = lambda q, qm, d, dm: maxsim_scores(q[None], qm[None], d, dm, length_normalize=length_normalize)[0]  # noqa: E731
    return jax.vmap(one)(queries, query_mask, documents, document_mask)


def _model_length_normalize(model) -> bool:
    """Whether the default scoring is MeanMaxSim: a model whose ``similarity_fn_name`` says so."""
    return getattr(model, "similarity_fn_name", None) == "meanmaxsim"


def _similarity(similarity_fct) -> Callable | None:
    return None if similarity_fct is None else callable_arg("similarity_fct", similarity_fct)


class MultiVectorMultipleNegativesRankingLoss(Loss):
    """ColBERT's contrastive loss (sentence-transformers' ``MultiVectorMultipleNegativesRankingLoss``): each
    query's MaxSim against every document of the batch (the positives and hard negatives of all rows), cross
    entropy towards its own positive. ``outputs``: one dict per column of what a MultiVectorEncoder returns
    (``token_embeddings`` (B, T, D) and the scoring ``attention_mask``; ``jaxst.training`` passes them, since
    ``needs_outputs`` is set); column 0 the queries. ``scale`` 1 (MaxSim is an unbounded sum, so PyLate's
    temperature is 1). The scores follow the model, as sentence-transformers 6.3's default (``model.similarity``):
    MeanMaxSim when ``model``'s ``similarity_fn_name`` is "meanmaxsim", else MaxSim (6.2 scored MaxSim
    whatever the model); ``length_normalize`` True / False (jaxst) forces MeanMaxSim / MaxSim; ``similarity_fct``
    (6.3's, keyword-only): see the module, and it wins over both. ``gather_across_devices`` (sharded training):
    True (jaxst's default) scores each query against the documents of the global batch, so the loss equals
    the one-device loss; False against its own device's documents."""

    needs_outputs = True

    def __init__(self, model=None, scale: float = 1.0, length_normalize: bool | None = None,
                 gather_across_devices: bool = True, *, similarity_fct: Callable | None = None):
        if not scale > 0:
            raise ValueError("Scale must be a positive value.")
        self.scale = float(scale)
        self.length_normalize = _model_length_normalize(model) if length_normalize is None else bool(length_normalize)
        self.similarity_fct = _similarity(similarity_fct)
        self.gather_across_devices = bool(gather_across_devices)

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return self._loss(outputs, None)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        local_mean = self._loss(outputs, axis_name if self.gather_across_devices else None)
        return local_mean / jax.lax.axis_size(axis_name)

    def _loss(self, outputs, axis_name) -> jax.Array:
        (queries, query_mask), *docs = _token_columns(outputs, 2, type(self).__name__)
        b, n = queries.shape[0], len(docs)
        emb, mask = _stack_documents(docs)
        emb, mask = gather(emb, axis_name), gather(mask, axis_name)  # (W, N, T, D): query-major groups
        if self.similarity_fct is None:
            scores = maxsim_scores(queries, query_mask, emb.reshape(-1, *emb.shape[2:]),
                                   mask.reshape(-1, mask.shape[2]), length_normalize=self.length_normalize)  # (B, W*N)
        else:
            scores = self.similarity_fct(queries, emb, queries_mask=query_mask != 0, documents_mask=mask)
        scores = scores * self.scale
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
        own = (offset + jnp.arange(b)) * n  # each query's positive: document 0 of its own group
        picked = jnp.take_along_axis(scores, own[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(scores, axis=1) - picked)


class CachedMultiVectorMultipleNegativesRankingLoss(MultiVectorMultipleNegativesRankingLoss):
    """The GradCache version of ``MultiVectorMultipleNegativesRankingLoss`` (sentence-transformers 6.3's
    ``CachedMultiVectorMultipleNegativesRankingLoss``, its arguments): on outputs given directly, the same
    value and gradients as the uncached loss (the scores in one product; ``score_mini_batch_size``, the
    original's query chunking of the scoring, changes no number). ``similarity_fct``: see the module.

    Training it is refused: jaxst's GradCache (``jaxst.training.cached_embeddings``) caches (rows, D) sentence
    embeddings, not a MultiVectorEncoder's per-token outputs, so the training step cannot embed the columns
    ``mini_batch_size`` rows at a time for this loss and says so; train ``MultiVectorMultipleNegativesRankingLoss``
    (the same loss, without the memory bound) instead. ``mini_batch_num_tokens`` is refused as by jaxst's
    other cached losses; ``show_progress_bar`` has no bar to show."""

    def __init__(self, model=None, *, scale: float = 1.0, similarity_fct: Callable | None = None,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None,
                 score_mini_batch_size: int | None = None, gather_across_devices: bool = False,
                 show_progress_bar: bool = False):
        super().__init__(model, scale=scale, gather_across_devices=gather_across_devices,
                         similarity_fct=similarity_fct)
        self.mini_batch_size = cached_rows(mini_batch_size, mini_batch_num_tokens)
        score_mini_batch_size = positive_int("score_mini_batch_size", score_mini_batch_size, optional=True)
        self.score_mini_batch_size = score_mini_batch_size if score_mini_batch_size is not None else mini_batch_size
        del show_progress_bar


class MultiVectorMarginMSELoss(Loss):
    """Margin-MSE distillation for a MultiVectorEncoder (sentence-transformers 6.3's ``MultiVectorMarginMSELoss``):
    MSE between the student's margins score(query, positive) - score(query, negative_i) and the teacher's.
    ``outputs``: [queries, positives, negatives...] (see the module); ``labels``: the margins, (B,) with one
    negative or (B, n_negatives), or the teacher's scores (B, n_negatives + 1) whose margins are taken
    (``MarginMSELoss``'s rule). ``similarity_fct``: a pairwise score, ``similarity_fct(queries (B, S, D),
    documents (B, T, D), queries_mask=, documents_mask=) -> (B,)``; None: MaxSim (see the module).
    ``mini_batch_size`` (the original's chunked document forward: the same numbers) cannot run in jaxst's
    training step, which refuses it rather than ignore it; leave it None to train."""

    needs_outputs = True

    def __init__(self, model=None, *, similarity_fct: Callable | None = None, mini_batch_size: int | None = None):
        self.length_normalize = _model_length_normalize(model)
        self.similarity_fct = _similarity(similarity_fct)
        self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size, optional=True)

    def _score(self, queries, query_mask, documents, document_mask) -> jax.Array:
        if self.similarity_fct is not None:
            return self.similarity_fct(queries, documents, queries_mask=query_mask != 0,
                                       documents_mask=document_mask != 0)
        return _candidate_scores(queries, query_mask, documents[:, None], document_mask[:, None],
                                 self.length_normalize)[:, 0]

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        name = type(self).__name__
        (queries, query_mask), positives, *negatives = _token_columns(outputs, 3, name)
        labels = teacher_margins(labels, queries.shape[0], len(negatives), name)
        positive = self._score(queries, query_mask, *positives)
        margins = jnp.stack([positive - self._score(queries, query_mask, *neg) for neg in negatives], axis=1)
        return mse(margins, labels)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        return self(outputs, labels, rng) / jax.lax.axis_size(axis_name)


class MultiVectorDistillKLDivLoss(Loss):
    """KL-divergence distillation for a MultiVectorEncoder (sentence-transformers 6.3's
    ``MultiVectorDistillKLDivLoss``): the teacher's softmax over each query's N candidate documents
    (``labels`` (B, N), its scores) against the student's log-softmax over their MaxSim, batch mean, times the
    student temperature squared (``DistillKLDivLoss``'s rule; ``temperature`` for both sides unless
    ``student_temperature`` / ``teacher_temperature`` override it). ``outputs``: [queries, document_1, ...,
    document_N], N >= 2 (see the module). ``similarity_fct``: ``similarity_fct(queries (B, S, D), documents
    (B, N, T, D), queries_mask=, documents_mask=) -> (B, N)``; None: MaxSim. ``mini_batch_size``: as in
    ``MultiVectorMarginMSELoss`` (refused by the training step; leave it None to train)."""

    needs_outputs = True

    def __init__(self, model=None, *, similarity_fct: Callable | None = None, temperature: float = 1.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None,
                 mini_batch_size: int | None = None):
        self.length_normalize = _model_length_normalize(model)
        self.similarity_fct = _similarity(similarity_fct)
        self.student_temperature, self.teacher_temperature = distill_temperatures(
            temperature, student_temperature, teacher_temperature)
        self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size, optional=True)

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        name = type(self).__name__
        (queries, query_mask), *docs = _token_columns(outputs, 3, name)
        teacher = teacher_scores(labels, queries.shape[0], len(docs), name)
        emb, mask = _stack_documents(docs)
        if self.similarity_fct is None:
            student = _candidate_scores(queries, query_mask, emb, mask, self.length_normalize)
        else:
            student = self.similarity_fct(queries, emb, queries_mask=query_mask != 0, documents_mask=mask)
        return distill_kl_div(student, teacher, self.student_temperature, self.teacher_temperature)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        return self(outputs, labels, rng) / jax.lax.axis_size(axis_name)
