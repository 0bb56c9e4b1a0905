"""Sparse (SPLADE, CSR) losses: sentence-transformers' sparse forms of the ranking, pair, distillation and triplet
losses (which go inside SpladeLoss or CSRLoss), the FLOPS regularizer, SpladeLoss and its cached form, and CSR's
reconstruction terms."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxst.losses.base import Loss, cached_rows, embedding_columns, identity, mse
from jaxst.losses.distillation import DistillKLDivLoss, MarginMSELoss, MSELoss
from jaxst.losses.pairs import CoSENTLoss, CosineSimilarityLoss
from jaxst.losses.ranking import MultipleNegativesRankingLoss
from jaxst.losses.triplet import TripletLoss
from jaxst.similarity import dot_score, pairwise_angle_sim, pairwise_cos_sim, pairwise_dot_score


def _inside_only(cls):
    """A sparse loss goes inside SpladeLoss or CSRLoss (which add the sparsity terms); the training step refuses
    it on its own with sentence-transformers' words."""
    cls.standalone_error = f"{cls.__name__} should not be used alone. Use it with SpladeLoss or CSRLoss."
    return cls


def _cosine_model(model) -> None:
    """sentence-transformers' cosine sparse losses set the model's similarity to cosine: so does jaxst."""
    if model is not None and hasattr(model, "similarity_fn_name"):
        model.similarity_fn_name = "cosine"


@_inside_only
class SparseMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss for sparse embeddings: dot score, scale 1 (SPLADE's values are not
    normalized), as sentence-transformers' SparseMultipleNegativesRankingLoss."""

    def __init__(self, model=None, scale: float = 1.0, similarity_fct: Callable = dot_score,
                 gather_across_devices: bool = True, directions: tuple[str, ...] = ("query_to_doc",),
                 partition_mode: str = "joint", hardness_mode: str | None = None, hardness_strength: float = 0.0):
        super().__init__(model, scale, similarity_fct, gather_across_devices, directions, partition_mode,
                         hardness_mode, hardness_strength)


@_inside_only
class SparseCoSENTLoss(CoSENTLoss):
    """CoSENTLoss on sparse embeddings (pairwise cosine, scale 20); sets the model's similarity to cosine."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable = pairwise_cos_sim):
        _cosine_model(model)
        super().__init__(model, scale=scale, similarity_fct=similarity_fct)


@_inside_only
class SparseAnglELoss(SparseCoSENTLoss):
    """SparseCoSENTLoss with the AnglE similarity (pairs with a score each, as sentence-transformers')."""

    def __init__(self, model=None, scale: float = 20.0):
        super().__init__(model, scale, similarity_fct=pairwise_angle_sim)


@_inside_only
class SparseCosineSimilarityLoss(CosineSimilarityLoss):
    """CosineSimilarityLoss on sparse embeddings; sets the model's similarity to cosine."""

    def __init__(self, model=None, loss_fct: Callable = mse, cos_score_transformation: Callable = identity):
        _cosine_model(model)
        super().__init__(model, loss_fct=loss_fct, cos_score_transformation=cos_score_transformation)


@_inside_only
class SparseDistillKLDivLoss(DistillKLDivLoss):
    """DistillKLDivLoss on sparse embeddings: dot score, temperature 2 by default."""

    def __init__(self, model=None, similarity_fct: Callable = pairwise_dot_score, temperature: float = 2.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None):
        super().__init__(model, similarity_fct=similarity_fct, temperature=temperature,
                         student_temperature=student_temperature, teacher_temperature=teacher_temperature)


@_inside_only
class SparseMarginMSELoss(MarginMSELoss):
    """MarginMSELoss on sparse embeddings (dot score)."""


@_inside_only
class SparseTripletLoss(TripletLoss):
    """TripletLoss on sparse embeddings (euclidean distance, margin 5)."""


class SparseMSELoss(MSELoss):
    """MSELoss on sparse embeddings against a teacher's (labels); trains on its own or inside SpladeLoss."""

    def __init__(self, model=None):
        super().__init__(model)


@_inside_only
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
        raise NotImplementedError(self.standalone_error)


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
        parts = getattr(self.loss, "components", None)  # a loss of named parts keeps its names, as in the original
        out = dict(parts(columns, labels, rng)) if parts else {"base_loss": self.loss(columns, labels, rng)}
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


class CachedSpladeLoss(SpladeLoss):
    """SpladeLoss with GradCache (sentence-transformers' CachedSpladeLoss): ``jaxst.training`` embeds the columns
    ``mini_batch_size`` rows at a time without keeping activations and re-runs each mini-batch in the backward, so
    a large batch trains with the memory of a mini-batch; the loss, its components and the gradients are
    SpladeLoss's."""

    def __init__(self, model=None, loss: Loss | None = None, document_regularizer_weight: float = 0.0,
                 query_regularizer_weight: float | None = None, document_regularizer: FlopsLoss | None = None,
                 query_regularizer: FlopsLoss | None = None, document_regularizer_threshold: int | None = None,
                 query_regularizer_threshold: int | None = None, use_document_regularizer_only: bool = False,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False):
        super().__init__(model, loss, document_regularizer_weight, query_regularizer_weight, document_regularizer,
                         query_regularizer, document_regularizer_threshold, query_regularizer_threshold,
                         use_document_regularizer_only)
        self.mini_batch_size = cached_rows(mini_batch_size, mini_batch_num_tokens)
        del show_progress_bar  # the mini-batches run inside one compiled program


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
