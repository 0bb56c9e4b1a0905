"""Multi-vector (ColBERT) losses over token embeddings scored by MaxSim.

Each loss reads ``outputs``: one dict per input column of what a MultiVectorEncoder returns, its
``token_embeddings`` (B, T, D) and its scoring ``attention_mask`` (B, T) (``jaxst.training`` passes them, since
``needs_outputs`` is set); column 0 the queries, the others documents. The documents of the columns are
padded to one width and stacked (B, N, T, D), as sentence-transformers stacks them.

``similarity_fct`` (where a loss takes one) is a JAX callable with sentence-transformers 6.3's calling
convention, ``similarity_fct(queries, documents, queries_mask=..., documents_mask=...)``; None (the default)
scores MaxSim, or MeanMaxSim when ``model`` is a MultiVectorEncoder whose ``similarity_fn_name`` is
"meanmaxsim" (the original's ``model.similarity`` / ``model.similarity_pairwise``).

A loss with a ``mini_batch_size`` trains through jaxst's GradCache (``jaxst.training.cached_embeddings``): each
column embedded that many rows at a time with its per-token outputs cached, the loss computed once on the full
outputs, its gradients sent back a mini-batch at a time; the same value and gradients as one forward.

``MultiVectorMatryoshkaLoss`` and ``MultiVectorTokenPoolingLoss`` wrap any of these losses (a cached one too): they
change the outputs (truncated and normalized token dims; token pooling of the documents with straight-through
gradients) and sum the wrapped loss over the variants.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import callable_arg, positive_int
from jaxst.losses.base import Loss, cached_rows, embedding_dim, gather, mse
from jaxst.losses.distillation import distill_kl_div, distill_temperatures, teacher_margins, teacher_scores
from jaxst.losses.matryoshka import MatryoshkaLoss, shrink
from jaxst.maxsim import maxsim_scores
from jaxst.pooling import normalize


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

    In training (``jaxst.training``) each column is embedded ``mini_batch_size`` rows at a time through GradCache
    with its per-token outputs cached (see the module): the uncached loss's value and gradients with the memory
    of a mini-batch under differentiation. ``mini_batch_num_tokens`` is refused as by jaxst's other cached
    losses; ``show_progress_bar`` has no bar to show."""

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
    ``mini_batch_size`` (the original's chunked document forward): jaxst's training embeds the columns that many
    rows at a time through GradCache (see the module), the same numbers."""

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
    ``MultiVectorMarginMSELoss``."""

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


# ------------------------------------------------------------------ wrappers: Matryoshka dims and token pooling


def _wrapped_loss(loss, name: str) -> Loss:
    """The multi-vector loss a wrapper sums over its variants: a jaxst loss that reads the model's outputs."""
    if not isinstance(loss, Loss) or not getattr(loss, "needs_outputs", False):
        raise TypeError(f"{name} wraps a multi-vector loss (a jaxst loss that reads the model's token outputs, e.g. "
                        f"MultiVectorMultipleNegativesRankingLoss), got {type(loss).__name__}")
    return loss


def _output_columns(outputs, name: str) -> list[dict]:
    """Each column's output dict, checked (``_token_columns``), its entries kept."""
    _token_columns(outputs, 1, name)
    return [dict(o) for o in outputs]


class MultiVectorMatryoshkaLoss(MatryoshkaLoss):
    """sum_i weight_i * loss(outputs with each token embedding cut to its first dim_i dimensions and
    L2-normalized) (sentence-transformers 6.3's ``MultiVectorMatryoshkaLoss``, its arguments): a late-interaction
    model trained to score with shorter token vectors (Jina-ColBERT-v2); truncate and normalize the same way at
    inference. ``loss``: a multi-vector loss (a cached one too: the cut is applied to the cached outputs); wrap
    this loss in ``MultiVectorTokenPoolingLoss``, not the other way round, so pooling precedes truncation as in
    ``encode``. ``matryoshka_dims`` are sorted largest first with their weights (default 1 each); none may
    exceed the model's (untruncated) token dimension, and a warning says when that dimension is missing from
    them. ``n_dims_per_step`` > 0 sums a random subset of that many dims per step, drawn from the ``rng`` key the
    train step passes (the original draws with Python's ``random``)."""

    needs_outputs = True

    def __init__(self, model=None, loss: Loss | None = None, matryoshka_dims: Sequence[int] = (),
                 matryoshka_weights: Sequence[float] | None = None, n_dims_per_step: int = -1):
        name = type(self).__name__
        if isinstance(loss, MultiVectorTokenPoolingLoss):
            raise ValueError("MultiVectorTokenPoolingLoss must wrap MultiVectorMatryoshkaLoss so token pooling "
                             "happens before truncation, matching MultiVectorEncoder.encode().")
        super().__init__(None, _wrapped_loss(loss, name), matryoshka_dims, matryoshka_weights, n_dims_per_step)
        model_dim = getattr(model, "_embedding_dim", None) or embedding_dim(model)  # before the model's truncate_dim
        if model_dim is not None:
            if any(d > model_dim for d in self.matryoshka_dims):
                raise ValueError(f"Dimensions in matryoshka_dims cannot exceed the model's embedding dimension "
                                 f"of {model_dim}.")
            if model_dim not in self.matryoshka_dims:
                warnings.warn(f"The model's embedding dimension {model_dim} is not included in matryoshka_dims: "
                              f"{list(self.matryoshka_dims)}, so the full dimension is not trained; include it.",
                              UserWarning, stacklevel=2)

    @property
    def mini_batch_size(self) -> int | None:
        """The wrapped loss's (a cached one's GradCache mini-batch), which the training step reads."""
        return getattr(self.loss, "mini_batch_size", None)

    def _sum(self, outputs, inner, rng) -> jax.Array:
        columns = _output_columns(outputs, type(self).__name__)
        total = 0.0
        for dim, weight, on in zip(self.matryoshka_dims, self.matryoshka_weights, self._chosen(rng)):
            cut = [{**c, **{k: shrink(c[k], dim) for k in ("token_embeddings", "sentence_embedding") if k in c}}
                   for c in columns]
            total = total + on * weight * inner(cut, self._inner_rng(rng))
        return total

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return self._sum(outputs, lambda cut, r: self.loss(cut, labels, r), rng)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        return self._sum(outputs, lambda cut, r: self.loss.sharded(cut, labels, axis_name, r), rng)


def _cluster_ids(pooling, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Host side of ``pool_token_outputs``: each row's first ``lengths[row]`` of (B, T, D) tokens clustered by
    ``pooling.cluster_labels`` (encode's rule) -> cluster ids (B, T) int32 (-1 past the row's tokens) and
    each row's cluster count (B,) int32."""
    ids = np.full(tokens.shape[:2], -1, np.int32)
    counts = np.zeros(len(lengths), np.int32)
    for row, n in enumerate(np.asarray(lengths).tolist()):
        labels = pooling.cluster_labels(tokens[row, :n])
        ids[row, :n] = labels
        counts[row] = int(labels.max(initial=-1)) + 1
    return ids, counts


def pool_token_outputs(pooling, token_embeddings: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """A ``HierarchicalTokenPooling`` applied in training, as sentence-transformers 6.3's module applies it: padded
    (B, T, D) token embeddings and their (B, T) scoring mask -> pooled (B, T, D) and the new mask (B, T) bool.

    Each row's scored tokens are gathered in order (mask holes dropped); the first ``num_protected_tokens`` stay;
    the rest are clustered on the host (Ward linkage of their cosine distances; ``jax.pure_callback``, no
    gradient, as the original's assignments have none) and each cluster becomes its mean, with the
    straight-through estimator: every member gets the full gradient of its cluster's output, not divided by the
    cluster size. Then ``normalize_embeddings`` L2-normalizes every output token. A pooling that clusters
    nothing (``pool_factor`` 1, no ``max_tokens`` or ``distance_threshold``) only normalizes. The output keeps
    the input's width T: pooled tokens first, the rest masked."""
    mask = attention_mask != 0
    if pooling.pool_factor <= 1 and pooling.max_tokens is None and pooling.distance_threshold is None:
        return (normalize(token_embeddings) if pooling.normalize_embeddings else token_embeddings), mask
    b, t, d = token_embeddings.shape
    lengths = mask.sum(axis=1).astype(jnp.int32)
    order = jnp.argsort(~mask, axis=1, stable=True)  # each row's scored tokens first, in order
    valid = jnp.arange(t)[None] < lengths[:, None]
    tokens = jnp.where(valid[..., None], jnp.take_along_axis(token_embeddings, order[..., None], axis=1), 0)
    protected = min(pooling.num_protected_tokens, t)
    pooled, pooled_lengths = tokens, lengths
    if t > protected:
        poolable = tokens[:, protected:]  # (B, P, D), zero past each row's tokens
        poolable_lengths = jnp.maximum(lengths - protected, 0)
        shapes = (jax.ShapeDtypeStruct(poolable.shape[:2], jnp.int32), jax.ShapeDtypeStruct((b,), jnp.int32))
        labels, counts = jax.pure_callback(lambda x, n: _cluster_ids(pooling, x, n), shapes,
                                           jax.lax.stop_gradient(poolable), poolable_lengths, vmap_method="sequential")
        clusters = poolable.shape[1]  # at most one cluster per token; label -1 (padding) is dropped
        sums = jax.vmap(lambda x, ids: jax.ops.segment_sum(x, ids, num_segments=clusters))(poolable, labels)
        sizes = jax.vmap(lambda ids: jax.ops.segment_sum(jnp.ones(ids.shape, sums.dtype), ids,
                                                         num_segments=clusters))(labels)
        means = sums / jnp.maximum(sizes, 1)[..., None]
        means = jax.lax.stop_gradient(means) + (sums - jax.lax.stop_gradient(sums))  # straight-through
        pooled = jnp.concatenate([tokens[:, :protected], means], axis=1)
        pooled_lengths = jnp.minimum(lengths, protected) + counts
    if pooling.normalize_embeddings:
        pooled = normalize(pooled)
    return pooled, jnp.arange(t)[None] < pooled_lengths[:, None]


class MultiVectorTokenPoolingLoss(Loss):
    """sum_i weight_i * loss(outputs with the documents pooled by token_poolings[i]) (sentence-transformers 6.3's
    ``MultiVectorTokenPoolingLoss``, its arguments; Learn to Pool): a late-interaction model trained to score
    well after ``HierarchicalTokenPooling`` shrinks its documents. The outputs are computed once; each variant
    pools them with ``pool_token_outputs`` (cluster means with straight-through gradients). ``token_poolings``:
    ``jaxst.multi_vector_encoder.HierarchicalTokenPooling`` entries, or None for the unpooled outputs (include it
    to keep training unpooled retrieval); each applies to the columns of its ``tasks`` (column 0 is the query,
    the others documents: the task 6.3's collator stamps on unrouted columns). ``weights`` default to 1 each;
    ``n_poolings_per_step`` > 0 sums a random subset of that many variants per step, drawn from the ``rng`` key
    the train step passes. ``loss``: a multi-vector loss, a cached one or a ``MultiVectorMatryoshkaLoss`` too
    (so pooling precedes truncation, as in ``encode``)."""

    needs_outputs = True

    def __init__(self, model=None, loss: Loss | None = None, token_poolings: Sequence = (), *,
                 weights: Sequence[float] | None = None, n_poolings_per_step: int = -1):
        self.loss = _wrapped_loss(loss, type(self).__name__)
        token_poolings = list(token_poolings)
        if not token_poolings:
            raise ValueError("You must provide at least one token pooling in token_poolings.")
        for pooling in token_poolings:
            if pooling is not None and not callable(getattr(pooling, "cluster_labels", None)):
                raise ValueError("Every entry of token_poolings must be a HierarchicalTokenPooling "
                                 f"(jaxst.multi_vector_encoder) or None, got {type(pooling).__name__}.")
        if weights is None:
            weights = [1] * len(token_poolings)
        elif len(weights) != len(token_poolings):
            raise ValueError("weights must have one weight per pooling variant.")
        self.token_poolings = tuple(token_poolings)
        self.weights = tuple(weights)
        self.n_poolings_per_step = int(n_poolings_per_step)

    @property
    def mini_batch_size(self) -> int | None:
        """The wrapped loss's (a cached one's GradCache mini-batch), which the training step reads."""
        return getattr(self.loss, "mini_batch_size", None)

    def _chosen(self, rng) -> list[jax.Array | float]:
        """One multiplier per variant: 1 for each, or 1 for a random n_poolings_per_step of them and 0 else."""
        n = len(self.token_poolings)
        if not 0 < self.n_poolings_per_step < n:
            return [1.0] * n
        if rng is None:
            raise ValueError(f"{type(self).__name__} with n_poolings_per_step > 0 needs an rng key to choose the "
                             "poolings")
        picked = jax.random.choice(rng, n, (self.n_poolings_per_step,), replace=False)
        mask = jnp.zeros(n).at[picked].set(1.0)
        return [mask[i] for i in range(n)]

    def _sum(self, outputs, inner, rng) -> jax.Array:
        columns = _output_columns(outputs, type(self).__name__)
        inner_rng = None if rng is None else jax.random.fold_in(rng, 1)
        total = 0.0
        for pooling, weight, on in zip(self.token_poolings, self.weights, self._chosen(rng)):
            pooled = []
            for i, column in enumerate(columns):
                if pooling is not None and pooling.applies_to("query" if i == 0 else "document"):
                    emb, mask = pool_token_outputs(pooling, column["token_embeddings"], column["attention_mask"])
                    column = {**column, "token_embeddings": emb, "attention_mask": mask}
                pooled.append(column)
            total = total + on * weight * inner(pooled, inner_rng)
        return total

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return self._sum(outputs, lambda pooled, r: self.loss(pooled, labels, r), rng)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        return self._sum(outputs, lambda pooled, r: self.loss.sharded(pooled, labels, axis_name, r), rng)
