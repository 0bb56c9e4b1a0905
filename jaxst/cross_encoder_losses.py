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


class RankNetLoss(LambdaLoss):
    """RankNet (Burges et al. 2005): LambdaLoss with no weighting, every mis-ordered pair's log-sigmoid
    (sentence-transformers' RankNetLoss)."""

    def __init__(self, model=None, k: int | None = None, sigma: float = 1.0, eps: float = 1e-10,
                 reduction_log: str = "binary", activation_fn: Callable | None = identity,
                 mini_batch_size: int | None = None):
        super().__init__(model, weighting_scheme=NoWeightingScheme(), k=k, sigma=sigma, eps=eps,
                         reduction_log=reduction_log, activation_fn=activation_fn, mini_batch_size=mini_batch_size)


# --------------------------------------------------------------------------------------- ListMLE, PListMLE


class PListMLELambdaWeight:
    """PListMLE's position weights: ``rank_discount_fn(mask)`` if given, else 2^(n - rank) - 1 for a list of n
    documents (rescaled so a row never exceeds 2^127), zero past the list."""

    def __init__(self, rank_discount_fn: Callable | None = None):
        self.rank_discount_fn = rank_discount_fn

    def __call__(self, mask) -> jax.Array:
        if self.rank_discount_fn is not None:
            return self.rank_discount_fn(mask)
        mask = mask.astype(jnp.float32)
        n = jnp.sum(mask, axis=1, keepdims=True)
        ranks = jnp.arange(1, mask.shape[1] + 1, dtype=jnp.float32)[None, :]
        scale = jnp.maximum(n - 127, 0)
        return (2.0 ** (n - ranks - scale) - 2.0 ** -scale) * mask

    def __repr__(self) -> str:
        return f"PListMLELambdaWeight(rank_discount_fn={self.rank_discount_fn!r})"


DEFAULT_LAMBDA_WEIGHT = PListMLELambdaWeight()  # stateless: one shared default, as the original's


class PListMLELoss(Loss):
    """Position-aware ListMLE (Lan et al. 2014): the Plackett-Luce negative log-likelihood of each query's list
    in its given order (``respect_input_order``, the default; else sorted by label), each position's term
    weighted by ``lambda_weight`` (normalized per list; None: plain ListMLE), averaged over queries."""

    listwise = True

    def __init__(self, model=None, lambda_weight: PListMLELambdaWeight | None = DEFAULT_LAMBDA_WEIGHT,
                 activation_fn: Callable | None = identity, mini_batch_size: int | None = None,
                 respect_input_order: bool = True):
        _one_label(model, type(self).__name__)
        self.lambda_weight = lambda_weight
        self.activation_fn = _callable(activation_fn)
        if mini_batch_size is not None:
            self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)
        self.respect_input_order = bool(respect_input_order)
        self.eps = 1e-10

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits, scores = list_matrices(embeddings, labels, self.activation_fn, type(self).__name__)
        mask = jnp.isfinite(scores)
        if not self.respect_input_order:  # by label, highest first (lists end in -inf labels: they stay last)
            order = jnp.argsort(-scores, axis=1, stable=True)
            logits, sorted_mask = jnp.take_along_axis(logits, order, axis=1), jnp.take_along_axis(mask, order, axis=1)
        else:
            sorted_mask = mask
        masked = jnp.where(sorted_mask, logits, jnp.finfo(jnp.float32).min)
        log_normalizers = jax.lax.cumlogsumexp(masked, axis=1, reverse=True)
        log_probs = logits - log_normalizers
        if self.lambda_weight is not None:
            weights = self.lambda_weight(mask)
            log_probs = log_probs * (weights / (jnp.sum(weights, axis=1, keepdims=True) + self.eps))
        per_query = -jnp.sum(jnp.where(sorted_mask, log_probs, 0.0), axis=1)
        return jnp.where(jnp.any(per_query != 0), jnp.mean(per_query), 0.0)


class ListMLELoss(PListMLELoss):
    """ListMLE (Xia et al. 2008): PListMLELoss without position weights."""

    def __init__(self, model=None, activation_fn: Callable | None = identity, mini_batch_size: int | None = None,
                 respect_input_order: bool = True):
        super().__init__(model, lambda_weight=None, activation_fn=activation_fn, mini_batch_size=mini_batch_size,
                         respect_input_order=respect_input_order)


class ADRMSELoss(Loss):
    """Approx Discounted Rank MSE (Rank-DistiLLM): each document's approximate rank (1 + the sigmoid of
    ``alpha`` times its score gaps to the others) against its rank by label (ties share their average rank),
    squared, discounted by 1 / log2(1 + true rank), averaged over the documents of the batch."""

    listwise = True

    def __init__(self, model=None, alpha: float = 1.0, activation_fn: Callable | None = identity,
                 mini_batch_size: int | None = None):
        _one_label(model, type(self).__name__)
        self.alpha = float(alpha)
        self.activation_fn = _callable(activation_fn)
        if mini_batch_size is not None:
            self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits, scores = list_matrices(embeddings, labels, self.activation_fn, type(self).__name__)
        mask = jnp.isfinite(scores)
        scores = jnp.where(mask, scores, 0.0)
        valid = mask[:, None, :]  # (query, i, j): document j counts
        greater = jnp.sum((scores[:, None, :] > scores[:, :, None]) & valid, axis=-1)
        equal = jnp.sum((scores[:, None, :] == scores[:, :, None]) & valid, axis=-1)
        true_ranks = greater + (equal + 1.0) / 2.0
        pairwise = jax.nn.sigmoid(self.alpha * (logits[:, None, :] - logits[:, :, None])) * valid
        approx_ranks = 1.0 + jnp.sum(pairwise, axis=2) - 0.5 * mask
        losses = (true_ranks - approx_ranks) ** 2 / jnp.log2(true_ranks + 1.0)
        return jnp.sum(jnp.where(mask, losses, 0.0)) / jnp.sum(mask)


# ------------------------------------------------------------------------------------- pointwise losses


def _pair_logits(embeddings, name: str, one_label: bool = True) -> jax.Array:
    logits = jnp.asarray(embeddings[0] if isinstance(embeddings, (list, tuple)) else embeddings)
    if isinstance(embeddings, dict):
        raise ValueError(f"{name} takes (query, document, label) pairs, not a listwise batch")
    if one_label:
        if logits.ndim == 2 and logits.shape[1] != 1:
            raise ValueError(f"{name} expects one logit per pair, got shape {logits.shape}")
        return logits.reshape(-1)
    return logits


class MSELoss(Loss):
    """Mean squared error between each pair's logit (after ``activation_fn``, identity by default) and its
    label: distillation from a teacher's scores (sentence-transformers' cross-encoder MSELoss)."""

    def __init__(self, model=None, activation_fn: Callable | None = identity):
        _one_label(model, type(self).__name__)
        self.activation_fn = _callable(activation_fn)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits = self.activation_fn(_pair_logits(embeddings, type(self).__name__).astype(jnp.float32))
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels (one score per pair)")
        labels = jnp.asarray(labels, jnp.float32)
        if labels.size != logits.shape[0]:
            raise ValueError(f"{type(self).__name__} expects {logits.shape[0]} labels (one per example), "
                             f"but got {labels.size} labels with shape {tuple(labels.shape)}.")
        return jnp.mean((logits - jax.lax.stop_gradient(labels.reshape(-1))) ** 2)

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        return self(embeddings, labels, rng) / jax.lax.axis_size(axis_name)  # a mean of equal-sized shards


class MarginMSELoss(Loss):
    """The student's margins logit(query, positive) - logit(query, negative_i) against the labels' margins,
    squared and averaged (sentence-transformers' cross-encoder MarginMSELoss). Examples are (query, positive,
    negative[, negative...], label) with the label the margins (one number for one negative, or a vector of
    ``num_negatives``) or the teacher's scores of the positive and each negative (``num_negatives`` + 1);
    ``collate(model, examples, loss=loss)`` scores each example's documents as one list."""

    listwise = True

    def __init__(self, model=None, activation_fn: Callable | None = identity):
        _one_label(model, type(self).__name__)
        self.activation_fn = _callable(activation_fn)

    def lists(self, examples: Sequence, seed=None) -> list[tuple[str, list[str], list[float]]]:
        """(query, positive, negative..., label) -> (query, [positive, negative...], scores whose margins
        are the label's): a list per example, every list as long."""
        out = []
        for example in examples:
            texts, label = getattr(example, "texts", None), getattr(example, "label", None)
            if texts is None:
                texts, label = list(example[:-1]), example[-1]
            if len(texts) < 3 or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"{type(self).__name__} takes (query, positive, negative[, ...], label) examples, "
                                 f"got {example!r:.120}")
            n = len(texts) - 2
            label = np.atleast_1d(np.asarray(label, np.float32))
            if label.shape == (n,):
                scores = [0.0] + [-float(m) for m in label]  # margins: positive 0, negative i at -margin_i
            elif label.shape == (n + 1,):
                scores = [float(x) for x in label]
            else:
                raise ValueError(f"Labels shape {label.shape} does not match expected shape ({n},): the margins "
                                 f"(length num_negatives) or the positive and negative scores (num_negatives + 1)")
            out.append((texts[0], texts[1:], scores))
        if len({len(d) for _, d, _ in out}) != 1:
            raise ValueError(f"{type(self).__name__}: every example needs the same number of negatives")
        return out

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits, scores = list_matrices(embeddings, labels, self.activation_fn, type(self).__name__)
        margins = logits[:, :1] - logits[:, 1:]
        target = jax.lax.stop_gradient(scores[:, :1] - scores[:, 1:])
        return jnp.mean((margins - target) ** 2)


class CrossEntropyLoss(Loss):
    """Cross-entropy over a multi-label cross-encoder's logits (B, num_labels) with class-index labels, as
    torch's ``CrossEntropyLoss`` (sentence-transformers' cross-encoder CrossEntropyLoss passes it ``weight``,
    ``ignore_index``, ``label_smoothing``, ``reduction``)."""

    def __init__(self, model=None, activation_fn: Callable | None = identity, weight=None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum' (a training loss is a scalar), got {reduction!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.activation_fn = _callable(activation_fn)
        self.weight = None if weight is None else np.asarray(weight, np.float32)
        self.ignore_index, self.reduction, self.label_smoothing = int(ignore_index), reduction, float(label_smoothing)

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        logits = self.activation_fn(_pair_logits(embeddings, type(self).__name__, one_label=False)
                                    .astype(jnp.float32))
        if logits.ndim != 2:
            raise ValueError(f"{type(self).__name__} expects (batch, num_labels) logits, got shape {logits.shape}")
        if labels is None:
            raise ValueError(f"{type(self).__name__} needs labels (a class index per pair)")
        labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
        n_classes = logits.shape[1]
        weight = jnp.ones(n_classes) if self.weight is None else jnp.asarray(self.weight)
        kept = labels != self.ignore_index
        target = jnp.where(kept, labels, 0)
        log_p = jax.nn.log_softmax(logits, axis=1)
        row_weight = jnp.where(kept, weight[target], 0.0)
        nll = -jnp.take_along_axis(log_p, target[:, None], axis=1)[:, 0] * row_weight
        smooth = -jnp.sum(log_p * weight[None, :], axis=1) * kept
        if self.reduction == "sum":
            return (1 - self.label_smoothing) * jnp.sum(nll) + self.label_smoothing / n_classes * jnp.sum(smooth)
        total = jnp.sum(row_weight)
        return (1 - self.label_smoothing) * jnp.sum(nll) / total + \
            self.label_smoothing / n_classes * jnp.sum(smooth) / total


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss with GradCache: the lists' pairs run ``mini_batch_size`` at a time through
    ``training.cached_embeddings`` (memory bounded by the mini-batch; the same loss and gradients), as
    sentence-transformers' cross-encoder CachedMultipleNegativesRankingLoss."""

    def __init__(self, model=None, num_negatives: int | None = 4, scale: float = 10.0,
                 activation_fn: Callable | None = jax.nn.sigmoid, mini_batch_size: int = 32,
                 show_progress_bar: bool = False):
        super().__init__(model, num_negatives, scale, activation_fn)
        self.mini_batch_size = positive_int("mini_batch_size", mini_batch_size)
        del show_progress_bar


__all__ = [
    "ADRMSELoss",
    "BaseWeightingScheme",
    "BinaryCrossEntropyLoss",
    "CachedMultipleNegativesRankingLoss",
    "CrossEntropyLoss",
    "LambdaLoss",
    "LambdaRankScheme",
    "ListMLELoss",
    "ListNetLoss",
    "MarginMSELoss",
    "MSELoss",
    "MultipleNegativesRankingLoss",
    "NDCGLoss1Scheme",
    "NDCGLoss2PPScheme",
    "NDCGLoss2Scheme",
    "NoWeightingScheme",
    "PListMLELambdaWeight",
    "PListMLELoss",
    "RankNetLoss",
]
