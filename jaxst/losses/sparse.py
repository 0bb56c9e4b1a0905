"""Sparse (SPLADE, CSR) losses: ranking with dot scores, the FLOPS regularizer, and CSR's reconstruction terms."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.losses.base import Loss, embedding_columns, mse
from jaxst.losses.ranking import MultipleNegativesRankingLoss
from jaxst.similarity import dot_score


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
        columns = embedding_columns(embeddings, 1, type(self).__name__)
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
            l_k = l_k + mse(x, out["decoded_embedding_k"])
            l_4k = l_4k + mse(x, out["decoded_embedding_4k"])
            if "decoded_embedding_aux" in out:
                target = x - jax.lax.stop_gradient(out["decoded_embedding_k_pre_bias"])
                l_aux = l_aux + normalized_mean_squared_error(out["decoded_embedding_aux"], target)
        parts = {"reconstruction_loss_k": l_k / n, "reconstruction_loss_4k": l_4k / n / 8.0,
                 "reconstruction_loss_aux": self.beta * l_aux / n}
        parts["base_loss"] = self.gamma * self.loss([o["sentence_embedding"] for o in outputs], labels, rng)
        return parts

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return sum(self.components(outputs, labels, rng).values())
