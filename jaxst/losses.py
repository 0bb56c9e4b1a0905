"""Training losses as pure functions of embeddings (and labels), matching sentence-transformers 6.3.

    loss = MultipleNegativesRankingLoss()            # the model argument is optional, as a name-compatible no-op
    value = loss([anchors, positives], labels=None)  # (B, D) arrays in, a float32 scalar out
    jax.grad(lambda e: loss(e))([anchors, positives])

Each loss is a small object holding its settings, called as ``loss(embeddings, labels=None, rng=None)``:
``embeddings`` is one (B, D) array per input column (anchor, positive, negatives...), or for
``BinaryCrossEntropyLoss`` the cross-encoder's logits (B,) or (B, 1). Values and gradients equal the
original's (``compute_loss_from_embeddings``) on the same inputs.

Data-parallel training calls ``loss.sharded(embeddings, labels, axis_name)`` inside ``shard_map``: it
returns this device's share of the loss, and the shares summed over the mesh axis (``psum``) give the
loss of the whole global batch. In-batch-negative losses gather the other devices' embeddings with
``all_gather`` (whose transpose routes their gradients home), so every device sees every negative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import positive_int
from jaxst.pooling import normalize
from jaxst.similarity import (
    cos_sim,
    dot_score,
    pairwise_angle_sim,
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
)

MNRL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")


def _columns(embeddings, minimum: int, name: str) -> list[jax.Array]:
    if isinstance(embeddings, (jax.Array, np.ndarray)) or not isinstance(embeddings, Sequence):
        raise TypeError(f"{name} expects a list of (batch, dim) embedding arrays, one per input column, "
                        f"got {type(embeddings).__name__}")
    columns = [jnp.asarray(e) for e in embeddings]
    if len(columns) < minimum:
        raise ValueError(f"{name} expects at least {minimum} embedding columns, got {len(columns)}")
    for i, c in enumerate(columns):
        if c.ndim != 2:
            raise ValueError(f"{name}: embedding column {i} must be (batch, dim), got shape {c.shape}")
        if c.shape[0] != columns[0].shape[0]:
            raise ValueError(f"{name}: column {i} has {c.shape[0]} rows, column 0 has {columns[0].shape[0]}")
    return columns


def _labels(labels, batch_size: int, name: str) -> jax.Array:
    if labels is None:
        raise ValueError(f"{name} needs labels (one per example)")
    labels = jnp.asarray(labels)
    if labels.size != batch_size:
        raise ValueError(f"{name} expects {batch_size} labels (one per example), "
                         f"but got {labels.size} labels with shape {tuple(labels.shape)}.")
    return labels.reshape(-1)


def _gather(x, axis_name):
    """The global batch: every device's rows, in device order (identity off a mesh)."""
    return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def _mse(pred, target):
    return jnp.mean((pred - target) ** 2)


def identity(x):
    """The default score transformation and activation of the losses (and of the cross-encoder losses)."""
    return x


class Loss:
    """Base: ``__call__`` is the loss of a batch; ``sharded`` this device's share of it on a mesh."""

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        raise NotImplementedError

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        """Default for losses that couple the whole batch: gather everything, compute the global loss on
        every device, and give each device 1/n of it (so the psum over devices is the global loss)."""
        gathered = jax.tree.map(lambda x: _gather(x, axis_name), list(embeddings))
        labels = None if labels is None else _gather(jnp.asarray(labels).reshape(-1), axis_name)
        return self(gathered, labels, rng) / jax.lax.axis_size(axis_name)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


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
        if not callable(similarity_fct):
            raise TypeError(f"similarity_fct must be callable, got {type(similarity_fct).__name__}")
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
        return self._loss(_columns(embeddings, 2, type(self).__name__), None)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        columns = _columns(embeddings, 2, type(self).__name__)
        local_mean = self._loss(columns, axis_name if self.gather_across_devices else None)
        return local_mean / jax.lax.axis_size(axis_name)

    def _loss(self, columns: list[jax.Array], axis_name) -> jax.Array:
        """Mean over this device's anchors; candidates from the global batch when ``axis_name`` is set."""
        local_queries, local_docs = columns[0], columns[1]  # (B, D)
        b = local_queries.shape[0]
        queries = _gather(local_queries, axis_name)  # (W, D), W = global batch
        docs = [_gather(d, axis_name) for d in columns[1:]]  # k columns of (W, D)
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


class CoSENTLoss(Loss):
    """log(1 + sum over pairs (i, j) with label_i > label_j of exp(scale * (sim_j - sim_i))).

    ``embeddings``: [a, b], (B, D) each; ``labels``: (B,) gold similarity scores (any scale: only their
    order counts). ``similarity_fct`` is pairwise (default pairwise_cos_sim), ``scale`` 20."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = pairwise_cos_sim):
        del model
        if not callable(similarity_fct):
            raise TypeError(f"similarity_fct must be callable, got {type(similarity_fct).__name__}")
        self.scale = float(scale)
        self.similarity_fct = similarity_fct

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 2, type(self).__name__)
        labels = _labels(labels, columns[0].shape[0], type(self).__name__)
        return self._from_pairs(columns[0], columns[1], labels)

    def _from_pairs(self, a, b, labels) -> jax.Array:
        scores = self.similarity_fct(a, b).astype(jnp.float32) * self.scale  # (B,)
        labels = labels.astype(jnp.float32)
        higher = labels[:, None] > labels[None, :]  # (i, j): pair i should outscore pair j
        diffs = jnp.where(higher, scores[None, :] - scores[:, None], -jnp.inf)  # (B, B)
        return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1), diffs.reshape(-1)]))  # the 0 is e^0 = 1


class AnglELoss(CoSENTLoss):
    """CoSENT with the AnglE similarity (pairwise_angle_sim), ``scale`` 20.

    With more than two columns [anchor, positive, negative...], each (anchor, positive) pair gets its
    label (1 when labels is None) and each (anchor, negative) pair 1 - label, as the original does."""

    def __init__(self, model=None, scale: float = 20.0):
        super().__init__(model, scale=scale, similarity_fct=pairwise_angle_sim)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 2, type(self).__name__)
        b = columns[0].shape[0]
        if len(columns) == 2:
            if labels is None:
                raise ValueError("AnglELoss requires labels for datasets with pairs.")
            return self._from_pairs(columns[0], columns[1], _labels(labels, b, type(self).__name__))
        labels = jnp.ones(b) if labels is None else _labels(labels, b, type(self).__name__)
        n_other = len(columns) - 1
        anchors = jnp.tile(columns[0], (n_other, 1))
        others = jnp.concatenate(columns[1:], axis=0)
        combined = jnp.concatenate([labels, jnp.tile(1 - labels, n_other - 1)])
        return self._from_pairs(anchors, others, combined)


class CosineSimilarityLoss(Loss):
    """loss_fct(cos_score_transformation(cos(a, b)), labels): the MSE between cosine and gold score by
    default. ``loss_fct(pred, target)`` and ``cos_score_transformation(x)`` are callables on jax arrays."""

    def __init__(self, model=None, loss_fct: Callable = _mse, cos_score_transformation: Callable = identity):
        del model
        for name, fn in (("loss_fct", loss_fct), ("cos_score_transformation", cos_score_transformation)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self.loss_fct = loss_fct
        self.cos_score_transformation = cos_score_transformation

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 2, type(self).__name__)
        labels = _labels(labels, columns[0].shape[0], type(self).__name__).astype(jnp.float32)
        a, b = columns[0], columns[1]
        # torch.cosine_similarity: a.b / sqrt(max(|a|^2 |b|^2, eps^2)), eps 1e-8
        norms = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
        cos = jnp.sum(a * b, axis=-1) / jnp.sqrt(jnp.maximum(norms, 1e-16))
        return self.loss_fct(self.cos_score_transformation(cos), labels)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        if self.loss_fct is not _mse:  # a custom loss_fct may not be a per-example mean
            return super().sharded(embeddings, labels, axis_name, rng)
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # mean of equal-sized shards


def shrink(embeddings: jax.Array, dim: int) -> jax.Array:
    """The first ``dim`` dimensions, L2-normalized (half precision in float32, then cast back): a Matryoshka
    sub-embedding."""
    if dim > embeddings.shape[-1]:
        raise ValueError(f"Dimension {dim} in matryoshka_dims cannot be greater than the model's embedding "
                         f"dimension: {embeddings.shape[-1]}")
    x = embeddings[..., :dim]
    if x.dtype in (jnp.float16, jnp.bfloat16):  # normalized in float32, as sentence-transformers 6.3 does
        return normalize(x.astype(jnp.float32)).astype(x.dtype)
    return normalize(x)


class MatryoshkaLoss(Loss):
    """sum_i weight_i * loss(first dim_i dimensions of every column, L2-normalized, labels).

    ``matryoshka_dims`` are sorted largest first with their weights (default 1 each), as in the
    original. ``n_dims_per_step`` > 0 uses a random subset of that many dims per step, drawn from the
    ``rng`` key the train step passes (the original draws with Python's ``random``)."""

    def __init__(self, model=None, loss: Loss | None = None, matryoshka_dims: Sequence[int] = (),
                 matryoshka_weights: Sequence[float] | None = None, n_dims_per_step: int = -1):
        if not isinstance(loss, Loss):
            raise TypeError(f"MatryoshkaLoss wraps a jaxst loss, got {type(loss).__name__}")
        dims = [int(d) for d in matryoshka_dims]
        if not dims:
            raise ValueError("You must provide at least one dimension in matryoshka_dims.")
        if any(d <= 0 for d in dims):
            raise ValueError("All dimensions passed to a matryoshka loss must be > 0.")
        if matryoshka_weights is None:
            matryoshka_weights = [1] * len(dims)
        elif len(matryoshka_weights) != len(dims):
            raise ValueError("matryoshka_weights must be the same length as matryoshka_dims.")
        model_dim = _embedding_dim(model)
        if model_dim is not None and any(d > model_dim for d in dims):
            raise ValueError(f"Dimensions in matryoshka_dims cannot exceed the model's embedding dimension "
                             f"of {model_dim}.")
        pairs = sorted(zip(dims, matryoshka_weights), key=lambda p: p[0], reverse=True)
        self.loss = loss
        self.matryoshka_dims = tuple(d for d, _ in pairs)
        self.matryoshka_weights = tuple(w for _, w in pairs)
        self.n_dims_per_step = int(n_dims_per_step)

    def _chosen(self, rng) -> list[jax.Array | float]:
        """One multiplier per dim: 1 for every dim, or 1 for a random n_dims_per_step of them and 0 else."""
        n = len(self.matryoshka_dims)
        if not 0 < self.n_dims_per_step < n:
            return [1.0] * n
        if rng is None:
            raise ValueError("MatryoshkaLoss with n_dims_per_step > 0 needs an rng key to choose the dims")
        picked = jax.random.choice(rng, n, (self.n_dims_per_step,), replace=False)
        mask = jnp.zeros(n).at[picked].set(1.0)
        return [mask[i] for i in range(n)]

    def _inner_rng(self, rng):
        return None if rng is None else jax.random.fold_in(rng, 1)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 1, type(self).__name__)
        total = 0.0
        for dim, weight, on in zip(self.matryoshka_dims, self.matryoshka_weights, self._chosen(rng)):
            total = total + on * weight * self.loss([shrink(c, dim) for c in columns], labels, self._inner_rng(rng))
        return total

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        columns = _columns(embeddings, 1, type(self).__name__)
        total = 0.0
        for dim, weight, on in zip(self.matryoshka_dims, self.matryoshka_weights, self._chosen(rng)):
            shrunk = [shrink(c, dim) for c in columns]
            total = total + on * weight * self.loss.sharded(shrunk, labels, axis_name, self._inner_rng(rng))
        return total


def _embedding_dim(model) -> int | None:
    getter = getattr(model, "get_embedding_dimension", None)
    return getter() if callable(getter) else None


class BinaryCrossEntropyLoss(Loss):
    """Binary cross-entropy with logits, for a one-label cross-encoder: ``embeddings`` are its raw
    logits (B,) or (B, 1), ``labels`` (B,) targets in [0, 1]. ``pos_weight`` weighs the positive term,
    ``activation_fn`` is applied to the logits first (identity by default), as in the original."""

    def __init__(self, model=None, activation_fn: Callable = identity, pos_weight: float | None = None):
        num_labels = getattr(model, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"BinaryCrossEntropyLoss expects a model with 1 output label, "
                             f"but got a model with {num_labels} output labels.")
        if not callable(activation_fn):
            raise TypeError(f"activation_fn must be callable, got {type(activation_fn).__name__}")
        self.activation_fn = activation_fn
        self.pos_weight = None if pos_weight is None else float(pos_weight)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits = jnp.asarray(embeddings[0] if isinstance(embeddings, (list, tuple)) else embeddings)
        if logits.ndim == 2 and logits.shape[1] != 1:
            raise ValueError(f"BinaryCrossEntropyLoss expects one logit per pair, got shape {logits.shape}")
        logits = self.activation_fn(logits.reshape(-1))
        labels = _labels(labels, logits.shape[0], type(self).__name__).astype(jnp.float32)
        # -[w y log(sigmoid(x)) + (1 - y) log(1 - sigmoid(x))], with log(sigmoid(x)) = -softplus(-x)
        w = 1.0 if self.pos_weight is None else self.pos_weight
        return jnp.mean(w * labels * jax.nn.softplus(-logits) + (1.0 - labels) * jax.nn.softplus(logits))

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # mean of equal-sized shards


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss with GradCache (sentence-transformers' CachedMultipleNegativesRankingLoss):
    the same loss and gradients, for batches far larger than fit in memory at once. ``jaxst.training``
    embeds the columns ``mini_batch_size`` rows at a time without keeping activations, and the backward
    re-runs each mini-batch with its slice of the loss's embedding gradient (``training.cached_embeddings``),
    so memory is bounded by the mini-batch. On embeddings given directly, the plain MNRL value."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = cos_sim, mini_batch_size: int = 32,
                 gather_across_devices: bool = True, show_progress_bar: bool = False, **kwargs):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct,
                         gather_across_devices=gather_across_devices, **kwargs)
        self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)
        del show_progress_bar  # the mini-batches run inside one compiled program


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
        columns = _columns(embeddings, 2, type(self).__name__)
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
                 margin_strategy: str = "absolute", margin: float = 0.0, contrast_anchors: bool = True,
                 contrast_positives: bool = True, gather_across_devices: bool = False, show_progress_bar: bool = False):
        super().__init__(model, guide, temperature, margin_strategy, margin, contrast_anchors, contrast_positives,
                         gather_across_devices)
        self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)
        del show_progress_bar


class MegaBatchMarginLoss(Loss):
    """sentence-transformers' MegaBatchMarginLoss over (anchor, positive) pairs: for each anchor, the most
    similar positive of another pair (cosine) is its hard negative; the loss is relu(``positive_margin`` -
    cos(anchor, positive)) + relu(cos(anchor, negative) - ``negative_margin``), averaged. With
    ``use_mini_batched_version`` (the default) ``jaxst.training`` embeds the batch ``mini_batch_size`` rows
    at a time with GradCache (as sentence-transformers' cached version), so very large batches fit; the loss
    and gradients are those of the whole batch either way."""

    def __init__(self, model=None, positive_margin: float = 0.8, negative_margin: float = 0.3,
                 use_mini_batched_version: bool = True, mini_batch_size: int = 50, show_progress_bar: bool = False):
        del model, show_progress_bar
        positive_int("mini_batch_size", mini_batch_size)
        self.positive_margin, self.negative_margin = float(positive_margin), float(negative_margin)
        self.use_mini_batched_version = bool(use_mini_batched_version)
        self.mini_batch_size = mini_batch_size if use_mini_batched_version else None

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 2, type(self).__name__)
        if len(columns) != 2:
            raise ValueError(f"MegaBatchMarginLoss expects (anchor, positive) columns, got {len(columns)}")
        scores = cos_sim(columns[0], columns[1])
        own = jnp.eye(scores.shape[0], dtype=bool)
        positive = jnp.diagonal(scores)
        negative = jnp.max(jnp.where(own, -jnp.inf, scores), axis=1)
        return jnp.mean(jax.nn.relu(self.positive_margin - positive) + jax.nn.relu(negative - self.negative_margin))


# ------------------------------------------------------------------------- triplet and distillation losses


class TripletDistanceMetric:
    """sentence-transformers' triplet distances: 1 - cosine, euclidean, manhattan (pairwise)."""

    COSINE = staticmethod(lambda x, y: 1.0 - pairwise_cos_sim(x, y))
    EUCLIDEAN = staticmethod(lambda x, y: -pairwise_euclidean_sim(x, y))
    MANHATTAN = staticmethod(lambda x, y: -pairwise_manhattan_sim(x, y))


class TripletLoss(Loss):
    """max(d(anchor, positive) - d(anchor, negative) + ``triplet_margin``, 0), averaged; ``embeddings``:
    [anchors, positives, negatives], each (B, D). Euclidean distance and margin 5 by default, as
    sentence-transformers' TripletLoss."""

    def __init__(self, model=None, distance_metric: Callable = TripletDistanceMetric.EUCLIDEAN,
                 triplet_margin: float = 5.0):
        del model
        if not callable(distance_metric):
            raise TypeError(f"distance_metric must be callable, got {type(distance_metric).__name__}")
        self.distance_metric = distance_metric
        self.triplet_margin = float(triplet_margin)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 3, type(self).__name__)
        if len(columns) != 3:
            raise ValueError(f"TripletLoss expects (anchor, positive, negative) columns, got {len(columns)}")
        anchor, positive, negative = columns
        return jnp.mean(jax.nn.relu(self.distance_metric(anchor, positive) - self.distance_metric(anchor, negative)
                                    + self.triplet_margin))

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # a mean of equal-sized shards


def _teacher_scores(labels, batch: int, n_candidates: int, name: str) -> jax.Array:
    if labels is None:
        raise ValueError(f"{name} needs labels: the teacher's scores")
    labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
    if labels.shape != (batch, n_candidates):
        raise ValueError(f"{name} expects teacher scores of shape (batch_size, N) = ({batch}, {n_candidates}) "
                         f"for N candidate columns, but got {tuple(labels.shape)}.")
    return labels


class MarginMSELoss(Loss):
    """MSE between the student's margins sim(query, positive) - sim(query, negative_i) and the gold margins
    (sentence-transformers' MarginMSELoss). ``embeddings``: [queries, positives, negatives...]; ``labels``:
    the margins, (B,) or (B, n_negatives), or the teacher's scores (B, n_negatives + 1) whose margins are
    taken. ``similarity_fct``: a pairwise score, dot product by default."""

    def __init__(self, model=None, similarity_fct: Callable = pairwise_dot_score):
        del model
        if not callable(similarity_fct):
            raise TypeError(f"similarity_fct must be callable, got {type(similarity_fct).__name__}")
        self.similarity_fct = similarity_fct

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 3, type(self).__name__)
        queries, positives, negatives = columns[0], columns[1], columns[2:]
        b, n = queries.shape[0], len(negatives)
        if labels is None:
            raise ValueError("MarginMSELoss needs labels: gold margins or the teacher's scores")
        labels = jax.lax.stop_gradient(jnp.asarray(labels, jnp.float32))
        if labels.shape == (b, n + 1):
            labels = labels[:, :1] - labels[:, 1:]
        if labels.shape == (b,):
            labels = labels[:, None]
        if labels.shape != (b, n):
            raise ValueError(f"Labels shape {tuple(labels.shape)} does not match expected shape {(b, n)}: margins "
                             "(length num_negatives) or positive and negative scores (length num_negatives + 1)")
        positive = self.similarity_fct(queries, positives)
        margins = jnp.stack([positive - self.similarity_fct(queries, neg) for neg in negatives], axis=1)
        return jnp.mean((margins - labels) ** 2)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)


class DistillKLDivLoss(Loss):
    """KL divergence from the teacher's softmax over the candidates (``labels`` (B, N): its scores for the
    positive and each negative) to the student's log-softmax over sim(query, candidate), batch mean, times
    the student temperature squared (sentence-transformers' DistillKLDivLoss; ``temperature`` for both
    sides unless ``student_temperature`` / ``teacher_temperature`` override it)."""

    def __init__(self, model=None, similarity_fct: Callable = pairwise_dot_score, temperature: float = 1.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None):
        del model
        self.similarity_fct = similarity_fct
        self.student_temperature = float(student_temperature if student_temperature is not None else temperature)
        self.teacher_temperature = float(teacher_temperature if teacher_temperature is not None else temperature)
        if not (self.student_temperature > 0 and self.teacher_temperature > 0):
            raise ValueError("temperatures must be positive")

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = _columns(embeddings, 3, type(self).__name__)
        queries = columns[0]
        teacher = _teacher_scores(labels, queries.shape[0], len(columns) - 1, type(self).__name__)
        student = jnp.stack([self.similarity_fct(queries, c) for c in columns[1:]], axis=1)
        log_p = jax.nn.log_softmax(student / self.student_temperature, axis=1)
        target = jax.nn.softmax(teacher / self.teacher_temperature, axis=1)
        # torch's KLDivLoss: target * (log target - input), 0 where the target is 0; "batchmean"
        kl = jnp.where(target > 0, target * (jnp.log(jnp.where(target > 0, target, 1.0)) - log_p), 0.0)
        return jnp.sum(kl) / queries.shape[0] * self.student_temperature ** 2

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)


# ----------------------------------------------------------------------------------- sparse (SPLADE) losses


class SparseMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss for sparse embeddings: dot score, scale 1 (SPLADE's values are not
    normalized), as sentence-transformers' SparseMultipleNegativesRankingLoss."""

    def __init__(self, model=None, scale: float = 1.0, similarity_fct: Callable = dot_score, **kwargs):
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, **kwargs)


class FlopsLoss(Loss):
    """SPLADE's FLOPS regularizer: the squared L2 norm of the batch's mean embedding, sum_j (mean_i x_ij)^2.
    With ``threshold``, rows with at most that many non-zero entries are zeroed first (FLOPS with l0
    masking). A regularizer inside ``SpladeLoss``; ``loss.regularize(embeddings)`` computes it on one (B, V)."""

    def __init__(self, model=None, threshold: float | None = None):
        del model
        self.threshold = threshold

    def regularize(self, embeddings) -> jax.Array:
        embeddings = jnp.asarray(embeddings)
        if self.threshold is not None:
            active = jnp.sum(embeddings != 0, axis=1)
            embeddings = embeddings * (active > self.threshold).astype(embeddings.dtype)[:, None]
        return jnp.sum(jnp.mean(embeddings, axis=0) ** 2)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        raise NotImplementedError("FlopsLoss is a regularizer: use it inside SpladeLoss")


class SpladeLoss(Loss):
    """``loss`` on [queries, documents, ...] plus FLOPS regularization of the documents (every column after
    the first) weighted by ``document_regularizer_weight`` and of the queries by ``query_regularizer_weight``
    (None: no query term, as for inference-free models). ``use_document_regularizer_only``: every column is a
    document. Same value and gradient as sentence-transformers' SpladeLoss, whose components are summed;
    ``components(embeddings, labels)`` returns them by name."""

    def __init__(self, model=None, loss: Loss | None = None, document_regularizer_weight: float = 0.0,
                 query_regularizer_weight: float | None = None, document_regularizer: FlopsLoss | None = None,
                 query_regularizer: FlopsLoss | None = None, document_regularizer_threshold: int | None = None,
                 query_regularizer_threshold: int | None = None, use_document_regularizer_only: bool = False):
        del model
        if not isinstance(loss, Loss):
            raise TypeError(f"SpladeLoss wraps a jaxst loss, got {type(loss).__name__}")
        if isinstance(loss, (SpladeLoss, FlopsLoss)):
            raise ValueError(f"SpladeLoss cannot wrap {type(loss).__name__}")
        self.loss = loss
        self.document_regularizer_weight = float(document_regularizer_weight)
        self.use_document_regularizer_only = bool(use_document_regularizer_only)
        self.query_regularizer_weight = None if use_document_regularizer_only or query_regularizer_weight is None \
            else float(query_regularizer_weight)
        self.document_regularizer = document_regularizer or FlopsLoss(threshold=document_regularizer_threshold)
        self.query_regularizer = query_regularizer or FlopsLoss(threshold=query_regularizer_threshold)

    def components(self, embeddings, labels=None, rng=None) -> dict[str, jax.Array]:
        columns = _columns(embeddings, 1, type(self).__name__)
        out = {"base_loss": self.loss(columns, labels, rng)}
        documents = columns if self.use_document_regularizer_only else columns[1:]
        if documents:
            out["document_regularizer_loss"] = (self.document_regularizer.regularize(jnp.concatenate(documents))
                                                * self.document_regularizer_weight)
        if self.query_regularizer_weight is not None:
            query = self.query_regularizer.regularize(columns[0])
            out["query_regularizer_loss"] = query * self.query_regularizer_weight
        return out

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        return sum(self.components(embeddings, labels, rng).values())


def normalized_mean_squared_error(reconstruction, original):
    """MSE divided by the batch's variance around its mean (plain MSE for a constant batch), as
    sentence-transformers' CSR reconstruction loss computes it."""
    variance = jnp.mean((jnp.mean(original, axis=0, keepdims=True) - original) ** 2)
    constant = (variance == 0) | jnp.all(original == original[:1])
    return jnp.mean((reconstruction - original) ** 2) / jnp.where(constant, 1.0, variance)


class CSRLoss(Loss):
    """Contrastive Sparse Representation's loss: ``gamma`` x ``loss`` (SparseMultipleNegativesRankingLoss by
    default) on the top-k codes, plus the SparseAutoEncoder's reconstruction terms (top-k MSE, top-4k MSE / 8,
    ``beta`` x the auxiliary normalized MSE), each averaged over the columns. ``outputs``: one dict per
    column of what a CSR model returns in training (``SparseEncoder``'s CSR module with ``sae_training``;
    ``jaxst.training`` passes them, since ``needs_outputs`` is set). Same values and gradients as
    sentence-transformers' CSRLoss; ``components`` names them as it does."""

    needs_outputs = True

    def __init__(self, model=None, loss: Loss | None = None, beta: float = 0.1, gamma: float = 1.0):
        del model
        if loss is not None and not isinstance(loss, Loss):
            raise TypeError(f"CSRLoss wraps a jaxst loss, got {type(loss).__name__}")
        self.loss = loss if loss is not None else SparseMultipleNegativesRankingLoss()
        self.beta, self.gamma = float(beta), float(gamma)

    def components(self, outputs, labels=None, rng=None) -> dict[str, jax.Array]:
        if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, dict) for o in outputs):
            raise TypeError("CSRLoss reads one dict of model outputs per column (a CSR SparseEncoder in training)")
        n = len(outputs)
        l_k = l_4k = l_aux = 0.0
        for out in outputs:
            x = out["sentence_embedding_backbone"]
            l_k = l_k + _mse(x, out["decoded_embedding_k"])
            l_4k = l_4k + _mse(x, out["decoded_embedding_4k"])
            if "decoded_embedding_aux" in out:
                target = x - jax.lax.stop_gradient(out["decoded_embedding_k_pre_bias"])
                l_aux = l_aux + normalized_mean_squared_error(out["decoded_embedding_aux"], target)
        parts = {"reconstruction_loss_k": l_k / n, "reconstruction_loss_4k": l_4k / n / 8.0,
                 "reconstruction_loss_aux": self.beta * l_aux / n}
        parts["base_loss"] = self.gamma * self.loss([o["sentence_embedding"] for o in outputs], labels, rng)
        return parts

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return sum(self.components(outputs, labels, rng).values())


# ------------------------------------------------------------------------- multi-vector (ColBERT) losses


class MultiVectorMultipleNegativesRankingLoss(Loss):
    """ColBERT's contrastive loss (sentence-transformers' ``MultiVectorMultipleNegativesRankingLoss``): each
    query's MaxSim against every document of the batch (the positives and hard negatives of all rows), cross
    entropy towards its own positive. ``outputs``: one dict per column of what a MultiVectorEncoder returns
    (``token_embeddings`` (B, T, D) and the scoring ``attention_mask``; ``jaxst.training`` passes them, since
    ``needs_outputs`` is set); column 0 the queries. ``scale`` 1 (MaxSim is an unbounded sum, so PyLate's
    temperature is 1); ``length_normalize`` scores MeanMaxSim. ``gather_across_devices`` (sharded training):
    True (jaxst's default) scores each query against the documents of the global batch, so the loss equals
    the one-device loss; False against its own device's documents."""

    needs_outputs = True

    def __init__(self, model=None, scale: float = 1.0, length_normalize: bool = False,
                 gather_across_devices: bool = True):
        del model
        if not scale > 0:
            raise ValueError("Scale must be a positive value.")
        self.scale = float(scale)
        self.length_normalize = bool(length_normalize)
        self.gather_across_devices = bool(gather_across_devices)

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return self._loss(outputs, None)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        local_mean = self._loss(outputs, axis_name if self.gather_across_devices else None)
        return local_mean / jax.lax.axis_size(axis_name)

    def _loss(self, outputs, axis_name) -> jax.Array:
        from jaxst.maxsim import maxsim_scores

        if not isinstance(outputs, (list, tuple)) or len(outputs) < 2 or not all(
                isinstance(o, dict) and "token_embeddings" in o for o in outputs):
            raise TypeError("MultiVectorMultipleNegativesRankingLoss reads one dict of MultiVectorEncoder outputs "
                            "per column (token_embeddings, attention_mask), at least a query and a document column")
        queries, query_mask = outputs[0]["token_embeddings"], outputs[0]["attention_mask"]
        docs = outputs[1:]
        b, n = queries.shape[0], len(docs)
        width = max(d["token_embeddings"].shape[1] for d in docs)
        emb = jnp.stack([jnp.pad(d["token_embeddings"], ((0, 0), (0, width - d["token_embeddings"].shape[1]),
                                                        (0, 0))) for d in docs], axis=1)  # (B, N, T, D)
        mask = jnp.stack([jnp.pad(d["attention_mask"] != 0, ((0, 0), (0, width - d["attention_mask"].shape[1])))
                          for d in docs], axis=1)
        emb, mask = _gather(emb, axis_name), _gather(mask, axis_name)  # (W, N, T, D): query-major groups
        scores = maxsim_scores(queries, query_mask, emb.reshape(-1, width, emb.shape[-1]), mask.reshape(-1, width),
                               length_normalize=self.length_normalize) * self.scale  # (B, W * N)
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
        own = (offset + jnp.arange(b)) * n  # each query's positive: document 0 of its own group
        picked = jnp.take_along_axis(scores, own[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(scores, axis=1) - picked)


__all__ = [
    "AnglELoss",
    "BinaryCrossEntropyLoss",
    "CSRLoss",
    "CachedGISTEmbedLoss",
    "CachedMultipleNegativesRankingLoss",
    "CoSENTLoss",
    "DistillKLDivLoss",
    "CosineSimilarityLoss",
    "Loss",
    "MarginMSELoss",
    "MatryoshkaLoss",
    "MegaBatchMarginLoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "MultiVectorMultipleNegativesRankingLoss",
    "FlopsLoss",
    "GISTEmbedLoss",
    "SparseMultipleNegativesRankingLoss",
    "SpladeLoss",
    "TripletDistanceMetric",
    "TripletLoss",
    "shrink",
]
