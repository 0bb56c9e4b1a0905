"""In-batch-negative ranking losses: MultipleNegativesRanking (and its symmetric and cached forms), GISTEmbed
(and cached), MegaBatchMargin."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.checks import callable_arg
from jaxst.losses.base import HARDNESS_MODES, MNRL_DIRECTIONS, Loss, cached_rows, embedding_columns, gather
from jaxst.similarity import cos_sim


class MultipleNegativesRankingLoss(Loss):
    """InfoNCE with in-batch negatives: each anchor's positive must outscore every other candidate.

    ``embeddings``: [anchors, positives, *hard_negatives], each (B, D); the documents are the positives
    and the hard negatives of every row. Same options and defaults as sentence-transformers: ``scale``
    20 (a temperature of 0.05), ``similarity_fct`` cos_sim, ``directions``, ``partition_mode``,
    ``hardness_mode``/``hardness_strength``. ``gather_across_devices`` (sharded training only): True
    (jaxst's default) scores each anchor against the documents of the global batch, so the loss equals
    the one-device loss; False against its own device's documents only, as PyTorch DDP does by default.
    """

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = cos_sim,
                 gather_across_devices: bool = True, directions: tuple[str, ...] = ("query_to_doc",),
                 partition_mode: str = "joint", hardness_mode: str | None = None, hardness_strength: float = 0.0):
        del model  # accepted for sentence-transformers' signature; the loss needs only embeddings
        if not scale > 0:
            raise ValueError("Scale must be a positive value.")
        callable_arg("similarity_fct", similarity_fct)
        directions = tuple(directions)
        if not directions:
            raise ValueError("At least one direction must be specified.")
        unknown = set(directions) - set(MNRL_DIRECTIONS)
        if unknown:
            raise ValueError(f"Invalid directions: {sorted(unknown)}. Valid: {MNRL_DIRECTIONS}")
        if "query_to_doc" not in directions:
            raise ValueError("'query_to_doc' direction is required (contains the positive pair).")
        if partition_mode not in ("joint", "per_direction"):
            raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got {partition_mode!r}")
        if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
            raise ValueError("partition_mode='per_direction' cannot be combined with 'query_to_query' or "
                             "'doc_to_doc' (their candidates never include the positive); use 'joint'")
        if hardness_mode not in HARDNESS_MODES:
            raise ValueError(f"hardness_mode must be one of {HARDNESS_MODES}, got {hardness_mode!r}")
        if hardness_strength < 0.0:
            raise ValueError("hardness_strength must be non-negative.")
        self.scale = float(scale)
        self.similarity_fct = similarity_fct
        self.gather_across_devices = bool(gather_across_devices)
        self.directions = directions
        self.partition_mode = partition_mode
        self.hardness_mode = hardness_mode
        self.hardness_strength = float(hardness_strength)

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        return self._loss(embedding_columns(embeddings, 2, type(self).__name__), None)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        local_mean = self._loss(columns, axis_name if self.gather_across_devices else None)
        return local_mean / jax.lax.axis_size(axis_name)

    def _loss(self, columns: list[jax.Array], axis_name) -> jax.Array:
        """Mean over this device's anchors; candidates from the global batch when ``axis_name`` is set."""
        local_queries, local_docs = columns[0], columns[1]  # (B, D)
        b = local_queries.shape[0]
        queries = gather(local_queries, axis_name)  # (W, D), W = global batch
        docs = [gather(d, axis_name) for d in columns[1:]]  # k columns of (W, D)
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
        w, k = queries.shape[0], len(docs)
        docs_all = jnp.concatenate(docs, axis=0)  # (k W, D): positives, then each negative column
        rows = jnp.arange(b)
        local = offset + rows  # each local anchor's own column among the W
        own = jax.nn.one_hot(local, w, dtype=bool)  # (B, W)

        sims = {"query_to_doc": self.similarity_fct(local_queries, docs_all)}  # (B, k W)
        if "query_to_query" in self.directions:
            sims["query_to_query"] = jnp.where(own, -jnp.inf, self.similarity_fct(local_queries, queries))
        if "doc_to_query" in self.directions:
            sims["doc_to_query"] = self.similarity_fct(queries, local_docs).T  # (B, W)
        if "doc_to_doc" in self.directions:
            same_query = jnp.tile(own, (1, k))  # a row's own positive and hard negatives
            sims["doc_to_doc"] = jnp.where(same_query, -jnp.inf, self.similarity_fct(docs_all, local_docs).T)

        scaled = {name: s * self.scale for name, s in sims.items()}
        if self.hardness_mode is not None and self.hardness_strength > 0.0:
            own_docs = jnp.tile(own, (1, k))  # (B, k W)
            in_batch = jnp.arange(k * w)[None, :] < w  # the positives' block
            penalized = {
                "in_batch_negatives": ~own_docs,  # other rows' positives and negatives
                "hard_negatives": own_docs & ~in_batch,  # a row's own hard negatives
                "all_negatives": ~(own_docs & in_batch),  # everything but the positive
            }[self.hardness_mode]
            penalty = self.hardness_strength * jax.lax.stop_gradient(sims["query_to_doc"])
            scaled["query_to_doc"] = scaled["query_to_doc"] + jnp.where(penalized, penalty, 0.0)

        positive = scaled["query_to_doc"][rows, local]  # (B,)
        if self.partition_mode == "joint":
            log_z = jax.nn.logsumexp(jnp.concatenate(list(scaled.values()), axis=1), axis=1)
        else:
            log_z = sum(jax.nn.logsumexp(s, axis=1) for s in scaled.values()) / len(scaled)
        return -jnp.mean(positive - log_z)


class MultipleNegativesSymmetricRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss in both directions (anchor -> documents and positive -> anchors),
    one softmax per direction, averaged: sentence-transformers' (deprecated) symmetric variant."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = cos_sim,
                 gather_across_devices: bool = True):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         gather_across_devices=gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss with GradCache (sentence-transformers' CachedMultipleNegativesRankingLoss):
    the same loss and gradients, for batches far larger than fit in memory at once. ``jaxst.training``
    embeds the columns ``mini_batch_size`` rows at a time without keeping activations, and the backward
    re-runs each mini-batch with its slice of the loss's embedding gradient (``training.cached_embeddings``),
    so memory is bounded by the mini-batch. On embeddings given directly, the plain MNRL value."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = cos_sim, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, gather_across_devices: bool = True,
                 show_progress_bar: bool = False, **kwargs):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         gather_across_devices=gather_across_devices, **kwargs)
        self.mini_batch_size = cached_rows(mini_batch_size, mini_batch_num_tokens)
        del show_progress_bar  # the mini-batches run inside one compiled program


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """MultipleNegativesSymmetricRankingLoss with GradCache: both directions (anchor -> documents, positive ->
    anchors), one softmax each, embedded ``mini_batch_size`` rows at a time (sentence-transformers' deprecated
    CachedMultipleNegativesSymmetricRankingLoss, the cached MNRL with those directions)."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = cos_sim, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, gather_across_devices: bool = True,
                 show_progress_bar: bool = False):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, mini_batch_size=mini_batch_size,
                         mini_batch_num_tokens=mini_batch_num_tokens,
                         gather_across_devices=gather_across_devices, show_progress_bar=show_progress_bar,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")


class GISTEmbedLoss(Loss):
    """sentence-transformers' GISTEmbedLoss: InfoNCE over anchor-positive (and anchor-anchor, positive-positive,
    anchor-negative) cosine similarities / ``temperature``, where a guide model's similarities drop the
    in-batch candidates it scores above the pair's own (``margin_strategy`` "absolute": above its
    similarity minus ``margin``; "relative": minus that fraction of its magnitude): likely false negatives.
    ``embeddings``: [anchors, positives[, negatives]]; ``guide_embeddings``: the guide's, same columns
    (``jaxst.training`` computes them when the batch is collated with ``guide=loss.guide``)."""

    needs_guide = True

    def __init__(self, model=None, guide=None, temperature: float = 0.01, margin_strategy: str = "absolute",
                 margin: float = 0.0, contrast_anchors: bool = True, contrast_positives: bool = True,
                 gather_across_devices: bool = False):
        del model
        if margin_strategy not in ("absolute", "relative"):
            raise ValueError("margin_strategy must be 'absolute' or 'relative'.")
        if gather_across_devices:
            raise ValueError("jaxst's GISTEmbedLoss runs on one device (gather_across_devices=False)")
        self.guide = guide
        self.temperature, self.margin_strategy, self.margin = float(temperature), margin_strategy, float(margin)
        self.contrast_anchors, self.contrast_positives = bool(contrast_anchors), bool(contrast_positives)

    def __call__(self, embeddings, labels=None, rng=None, guide_embeddings=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        if len(columns) not in (2, 3):
            raise ValueError(f"Expected 2 or 3 embeddings, got {len(columns)}")
        if guide_embeddings is None or len(guide_embeddings) != len(columns):
            raise ValueError("GISTEmbedLoss needs the guide's embeddings of the same columns (guide_embeddings)")
        guided = [jnp.asarray(g) for g in guide_embeddings]
        anchor, positive = columns[0], columns[1]
        guided_pair = jnp.diagonal(cos_sim(guided[0], guided[1]))[:, None]  # (B, 1): each pair's own
        threshold = guided_pair - (self.margin if self.margin_strategy == "absolute"
                                   else jnp.abs(guided_pair) * self.margin)

        def masked(a, b, ga, gb, diagonal: bool | None = None):
            """Candidates the guide scores above the pair's own threshold dropped; the diagonal kept (``True``:
            a's own positive), dropped (``False``: a text is never its own negative, as sentence-transformers
            6.3 has it) or left to the guide (``None``: a row's own hard negative)."""
            scores = cos_sim(a, b)
            drop = cos_sim(ga, gb) > threshold
            if diagonal is not None:
                drop = jnp.where(jnp.eye(scores.shape[0], scores.shape[1], dtype=bool), not diagonal, drop)
            return jnp.where(drop, -jnp.inf, scores)

        scores = [masked(anchor, positive, guided[0], guided[1], diagonal=True)]
        if self.contrast_anchors:
            scores.append(masked(anchor, anchor, guided[0], guided[0], diagonal=False))
        if self.contrast_positives:
            scores.append(masked(positive, positive, guided[1], guided[1], diagonal=False))
        if len(columns) == 3:
            scores.append(masked(anchor, columns[2], guided[0], guided[2]))
        logits = jnp.concatenate(scores, axis=1) / self.temperature
        own = jnp.arange(anchor.shape[0])
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[own, own])


class CachedGISTEmbedLoss(GISTEmbedLoss):
    """GISTEmbedLoss with GradCache (sentence-transformers' CachedGISTEmbedLoss): the student's columns are
    embedded ``mini_batch_size`` rows at a time by ``jaxst.training``'s cached path, so memory is bounded
    by the mini-batch; the same loss and gradients as the uncached loss."""

    def __init__(self, model=None, guide=None, temperature: float = 0.01, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False,
                 margin_strategy: str = "absolute", margin: float = 0.0, contrast_anchors: bool = True,
                 contrast_positives: bool = True, gather_across_devices: bool = False):
        super().__init__(model, guide, temperature, margin_strategy, margin, contrast_anchors, contrast_positives,
                         gather_across_devices)
        self.mini_batch_size = cached_rows(mini_batch_size, mini_batch_num_tokens)
        del show_progress_bar


class MegaBatchMarginLoss(Loss):
    """sentence-transformers' MegaBatchMarginLoss over (anchor, positive) pairs: for each anchor, the most
    similar positive of another pair (cosine) is its hard negative; the loss is relu(``positive_margin`` -
    cos(anchor, positive)) + relu(cos(anchor, negative) - ``negative_margin``), averaged. With
    ``use_mini_batched_version`` (the default) ``jaxst.training`` embeds the batch ``mini_batch_size`` rows
    at a time with GradCache (as sentence-transformers' cached version), so very large batches fit; the loss
    and gradients are those of the whole batch either way."""

    def __init__(self, model=None, positive_margin: float = 0.8, negative_margin: float = 0.3,
                 use_mini_batched_version: bool = True, mini_batch_size: int = 50,
                 mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False):
        del model, show_progress_bar
        cached_rows(mini_batch_size, mini_batch_num_tokens)
        self.positive_margin, self.negative_margin = float(positive_margin), float(negative_margin)
        self.use_mini_batched_version = bool(use_mini_batched_version)
        self.mini_batch_size = mini_batch_size if use_mini_batched_version else None

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = embedding_columns(embeddings, 2, type(self).__name__)
        if len(columns) != 2:
            raise ValueError(f"MegaBatchMarginLoss expects (anchor, positive) columns, got {len(columns)}")
        scores = cos_sim(columns[0], columns[1])
        own = jnp.eye(scores.shape[0], dtype=bool)
        positive = jnp.diagonal(scores)
        negative = jnp.max(jnp.where(own, -jnp.inf, scores), axis=1)
        return jnp.mean(jax.nn.relu(self.positive_margin - positive) + jax.nn.relu(negative - self.negative_margin))
