"""Cross-encoder ranking losses, matching ``sentence_transformers.cross_encoder.losses`` in 6.3.

    from jaxst import cross_encoder_losses as losses       # for: from sentence_transformers.cross_encoder import losses
    loss = losses.ListNetLoss(model)
    batch = training.collate(model, [(query, [doc, doc, ...], [label, label, ...]), ...])
    step_fn = training.make_train_step(model, loss, optimizer)

A listwise batch scores every (query, document) pair in one forward: ``features`` is one tokenized pair
batch (the pairs of all queries, end to end, padded to a multiple of 16 rows), and ``labels`` is a dict
with ``scores`` (queries, longest list) holding each document's label (``-inf`` past a query's list)
and ``index`` (pairs,) holding each pair's flat slot in it (the dummy slot queries * longest for the
padding rows). The losses take the model's logits (pairs, 1) and that dict, and scatter the logits into
the (queries, longest list) matrix sentence-transformers builds, ``-1e16`` in its empty slots.

``MultipleNegativesRankingLoss`` builds its lists from (anchor, positive[, negative...]) examples: each
anchor's positive, then other rows' candidates as in-batch negatives (``num_negatives`` of them drawn
without replacement, or all with ``None``), then its own hard negatives; ``collate(model, examples,
loss=loss, seed=...)`` calls ``loss.lists`` and tokenizes the result. ``mini_batch_size`` (ListNet,
Lambda) runs the pairs through ``training.cached_embeddings``: memory bounded by the mini-batch, the
same loss and gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxst.checks import callable_arg, non_negative_int, positive_int
from jaxst.losses import BinaryCrossEntropyLoss, Loss, identity

EMPTY_SLOT = -1e16  # sentence-transformers' logit for a slot past a query's list


def _one_label(model, name: str) -> None:
    num_labels = getattr(model, "num_labels", 1)
    if num_labels != 1:
        raise ValueError(f"{name} supports a model with 1 output label, but got a model with {num_labels} "
                         "output labels.")


def _callable(fn, what: str = "activation_fn") -> Callable:
    if fn is None:
        return identity
    callable_arg(what, fn)
    return fn


def list_matrices(logits, labels, activation_fn: Callable, name: str) -> tuple[jax.Array, jax.Array]:
    """(queries, longest list) logits (after ``activation_fn``; ``EMPTY_SLOT`` past each list) and labels
    (``-inf`` there) of a listwise batch."""
    if not isinstance(labels, dict) or "index" not in labels or "scores" not in labels:
        raise ValueError(f"{name} needs a listwise batch: training.collate(cross_encoder, "
                         "[(query, [documents], [labels]), ...]) (or collate(..., loss=loss) for in-batch lists)")
    logits = jnp.asarray(logits[0] if isinstance(logits, (list, tuple)) else logits)
    if logits.ndim == 2 and logits.shape[1] != 1:
        raise ValueError(f"{name} expects one logit per pair, got shape {logits.shape}")
    logits = activation_fn(logits.reshape(-1).astype(jnp.float32))
    scores = jnp.asarray(labels["scores"], jnp.float32)
    index = jnp.asarray(labels["index"])
    if index.shape != logits.shape:
        raise ValueError(f"{name}: {logits.shape[0]} logits for {index.shape[0]} pairs")
    queries, longest = scores.shape
    slots = jnp.full(queries * longest + 1, EMPTY_SLOT, jnp.float32).at[index].set(logits)
    return slots[:-1].reshape(queries, longest), scores


class MultipleNegativesRankingLoss(Loss):
    """sentence-transformers' cross-encoder MultipleNegativesRankingLoss: each anchor's list is its positive,
    ``num_negatives`` in-batch negatives (other rows' positives and negatives; all of them with ``None``) and
    its own hard negatives; ``activation_fn`` (sigmoid) then ``scale`` (10) on the logits, cross-entropy
    with the positive as the target. Build batches with ``collate(model, examples, loss=loss, seed=...)``."""

    listwise = True

    def __init__(self, model=None, num_negatives: int | None = 4, scale: float = 10.0,
                 activation_fn: Callable | None = jax.nn.sigmoid):
        _one_label(model, type(self).__name__)
        non_negative_int("num_negatives", num_negatives, optional=True)
        self.num_negatives = num_negatives
        self.scale = scale
        self.activation_fn = _callable(activation_fn)

    def lists(self, examples: Sequence, seed=None) -> list[tuple[str, list[str], list[float]]]:
        """(anchor, positive[, negative...]) examples -> listwise examples (anchor, candidates, [1, 0, ...]),
        as sentence-transformers pairs them: the positive, in-batch negatives (drawn with ``seed``: an int,
        a sequence of ints, or a numpy Generator), then the row's own negatives."""
        rows = [list(getattr(e, "texts", e)) for e in examples]  # tuples of texts, or InputExample-like
        widths = {len(r) for r in rows}
        if not all(isinstance(t, str) for r in rows for t in r) or len(widths) != 1 or widths.pop() < 2:
            raise ValueError(f"{type(self).__name__} takes (anchor, positive[, negative...]) examples of one width")
        size, columns = len(rows), len(rows[0]) - 1
        candidates = [row[1 + c] for c in range(columns) for row in rows]  # column by column, as flattened there
        valid = size * columns - columns
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        out = []
        for i, row in enumerate(rows):
            others = [k for k in range(size * columns) if k % size != i]
            if self.num_negatives is not None and self.num_negatives < valid:
                others = list(rng.choice(others, self.num_negatives, replace=False))
            texts = [row[1]] + [candidates[k] for k in others] + list(row[2:])
            out.append((row[0], texts, [1.0] + [0.0] * (len(texts) - 1)))
        return out

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits, scores = list_matrices(embeddings, labels, self.activation_fn, type(self).__name__)
        if self.scale:
            logits = logits * self.scale
        logits = jnp.where(jnp.isfinite(scores), logits, -jnp.inf)  # lists of unequal length: no empty slots
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


class ListNetLoss(Loss):
    """ListNet (Cao et al. 2007): cross-entropy between the softmax of each query's labels and of its
    logits (after ``activation_fn``, identity by default), averaged over queries."""

    listwise = True

    def __init__(self, model=None, activation_fn: Callable | None = identity, mini_batch_size: int | None = None):
        _one_label(model, type(self).__name__)
        self.activation_fn = _callable(activation_fn)
        if mini_batch_size is not None:
            self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits, scores = list_matrices(embeddings, labels, self.activation_fn, type(self).__name__)
        target = jax.nn.softmax(scores, axis=1)
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1))


# ------------------------------------------------------------------------------- LambdaLoss weights


class BaseWeightingScheme:
    """A LambdaLoss weighting: ``scheme(gain, discount, true_sorted)`` -> pair weights broadcastable to
    (queries, list, list); ``gain`` and ``true_sorted`` are in the order of the predicted ranking."""

    def __call__(self, gain, discount, true_sorted):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoWeightingScheme(BaseWeightingScheme):
    def __call__(self, gain, discount, true_sorted):
        return jnp.float32(1.0)


class NDCGLoss1Scheme(BaseWeightingScheme):
    def __call__(self, gain, discount, true_sorted):
        return (gain / discount)[:, :, None]


class NDCGLoss2Scheme(BaseWeightingScheme):
    def __call__(self, gain, discount, true_sorted):
        n = gain.shape[1]
        delta = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
        inverse = 1.0 / jnp.abs(discount[0])
        deltas = jnp.abs(inverse[np.maximum(delta - 1, 0)] - inverse[delta])
        deltas = jnp.where(delta == 0, 0.0, deltas)
        return deltas[None] * jnp.abs(gain[:, :, None] - gain[:, None, :])


class LambdaRankScheme(BaseWeightingScheme):
    def __call__(self, gain, discount, true_sorted):
        return jnp.abs(1.0 / discount[:, :, None] - 1.0 / discount[:, None, :]) * \
            jnp.abs(gain[:, :, None] - gain[:, None, :])


class NDCGLoss2PPScheme(BaseWeightingScheme):
    def __init__(self, mu: float = 10.0):
        self.mu = mu

    def __call__(self, gain, discount, true_sorted):
        return self.mu * NDCGLoss2Scheme()(gain, discount, true_sorted) + LambdaRankScheme()(gain, discount,
                                                                                          true_sorted)

    def __repr__(self) -> str:
        return f"NDCGLoss2PPScheme(mu={self.mu!r})"


DEFAULT_SCHEME = NDCGLoss2PPScheme()  # stateless apart from mu: one shared default, as the original's


class LambdaLoss(Loss):
    """The LambdaLoss framework (Wang et al. 2018): each query's documents sorted by predicted score, and
    every pair whose labels disagree with that order penalized by ``weights * log(sigmoid(sigma * score
    difference))``; ``weighting_scheme`` (NDCGLoss2PPScheme by default) sets the weights, ``k`` restricts
    to pairs touching the top k, ``reduction_log`` "binary" divides by log(2)."""

    listwise = True

    def __init__(self, model=None, weighting_scheme: BaseWeightingScheme | None = DEFAULT_SCHEME,
                 k: int | None = None, sigma: float = 1.0, eps: float = 1e-10, reduction_log: str = "binary",
                 activation_fn: Callable | None = identity, mini_batch_size: int | None = None):
        _one_label(model, type(self).__name__)
        if reduction_log not in ("natural", "binary"):
            raise ValueError(f"reduction_log must be 'natural' or 'binary', got {reduction_log!r}")
        positive_int("k", k, optional=True)
        scheme = weighting_scheme or NoWeightingScheme()
        if not isinstance(scheme, BaseWeightingScheme):
            raise TypeError(f"weighting_scheme must be a jaxst.cross_encoder_losses weighting scheme, got "
                            f"{type(scheme).__name__}")
        self.weighting_scheme = scheme
        self.k, self.sigma, self.eps, self.reduction_log = k, sigma, eps, reduction_log
        self.activation_fn = _callable(activation_fn)
        if mini_batch_size is not None:
            self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits, scores = list_matrices(embeddings, labels, self.activation_fn, type(self).__name__)
        longest = logits.shape[1]
        order = jnp.argsort(-logits, axis=1, stable=True)
        logits_sorted = jnp.take_along_axis(logits, order, axis=1)
        true_sorted = jnp.take_along_axis(scores, order, axis=1)  # labels in the predicted order
        ideal = -jnp.sort(-scores, axis=1)
        true_diffs = true_sorted[:, :, None] - true_sorted[:, None, :]
        pairs = jnp.isfinite(true_diffs)
        if not isinstance(self.weighting_scheme, NDCGLoss1Scheme):
            pairs = pairs & (true_diffs > 0)
        k = self.k or longest
        position = np.arange(longest)
        pairs = pairs & ((position[:, None] < k) | (position[None, :] < k))[None]
        true_sorted, ideal = jnp.maximum(true_sorted, 0.0), jnp.maximum(ideal, 0.0)
        discount = jnp.log2(1.0 + jnp.arange(1, longest + 1, dtype=jnp.float32))[None, :]
        max_dcg = jnp.maximum(jnp.sum(((2.0 ** ideal - 1.0) / discount)[:, :k], axis=-1), self.eps)
        gain = (2.0 ** true_sorted - 1.0) / max_dcg[:, None]
        weights = self.weighting_scheme(gain, discount, true_sorted)
        diffs = jnp.clip(logits_sorted[:, :, None] - logits_sorted[:, None, :], -1e8, 1e8)
        losses = weights * jax.nn.log_sigmoid(self.sigma * diffs)
        if self.reduction_log == "binary":
            losses = losses / math.log(2)
        count = jnp.maximum(jnp.sum(pairs), 1)
        return -jnp.sum(jnp.where(pairs, losses, 0.0)) / count


__all__ = [
    "BaseWeightingScheme",
    "BinaryCrossEntropyLoss",
    "LambdaLoss",
    "LambdaRankScheme",
    "ListNetLoss",
    "MultipleNegativesRankingLoss",
    "NDCGLoss1Scheme",
    "NDCGLoss2PPScheme",
    "NDCGLoss2Scheme",
    "NoWeightingScheme",
]
