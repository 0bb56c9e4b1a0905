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

from jaxst.losses.adaptive_layer import AdaptiveLayerLoss, Matryoshka2dLoss
from jaxst.losses.base import Loss, identity
from jaxst.losses.classification import SoftmaxLoss
from jaxst.losses.distillation import DistillKLDivLoss, EmbedDistillLoss, MarginMSELoss, MSELoss
from jaxst.losses.matryoshka import MatryoshkaLoss, shrink
from jaxst.losses.multi_vector import (
    CachedMultiVectorMultipleNegativesRankingLoss,
    MultiVectorDistillKLDivLoss,
    MultiVectorMarginMSELoss,
    MultiVectorMatryoshkaLoss,
    MultiVectorMultipleNegativesRankingLoss,
    MultiVectorTokenPoolingLoss,
)
from jaxst.losses.pairs import (
    AnglELoss,
    BinaryCrossEntropyLoss,
    ContrastiveLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    OnlineContrastiveLoss,
    SiameseDistanceMetric,
)
from jaxst.losses.ranking import (
    CachedGISTEmbedLoss,
    CachedMultipleNegativesRankingLoss,
    CachedMultipleNegativesSymmetricRankingLoss,
    GISTEmbedLoss,
    MegaBatchMarginLoss,
    MultipleNegativesRankingLoss,
    MultipleNegativesSymmetricRankingLoss,
)
from jaxst.losses.regularization import GlobalOrthogonalRegularizationLoss
from jaxst.losses.sparse import (
    CachedSpladeLoss,
    CSRLoss,
    FlopsLoss,
    SparseAnglELoss,
    SparseCoSENTLoss,
    SparseCosineSimilarityLoss,
    SparseDistillKLDivLoss,
    SparseMarginMSELoss,
    SparseMSELoss,
    SparseMultipleNegativesRankingLoss,
    SparseTripletLoss,
    SpladeLoss,
    normalized_mean_squared_error,
)
from jaxst.losses.triplet import (
    BatchAllTripletLoss,
    BatchHardSoftMarginTripletLoss,
    BatchHardTripletLoss,
    BatchHardTripletLossDistanceFunction,
    BatchSemiHardTripletLoss,
    TripletDistanceMetric,
    TripletLoss,
)
from jaxst.losses.unsupervised import (
    ContrastiveTensionDataLoader,
    ContrastiveTensionLoss,
    ContrastiveTensionLossInBatchNegatives,
    DenoisingAutoEncoderDataset,
    DenoisingAutoEncoderLoss,
)

__all__ = [
    "AdaptiveLayerLoss",
    "AnglELoss",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchHardTripletLossDistanceFunction",
    "BatchSemiHardTripletLoss",
    "BinaryCrossEntropyLoss",
    "CachedGISTEmbedLoss",
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "CachedMultiVectorMultipleNegativesRankingLoss",
    "CachedSpladeLoss",
    "ContrastiveLoss",
    "ContrastiveTensionDataLoader",
    "ContrastiveTensionLoss",
    "ContrastiveTensionLossInBatchNegatives",
    "CoSENTLoss",
    "CosineSimilarityLoss",
    "CSRLoss",
    "DenoisingAutoEncoderDataset",
    "DenoisingAutoEncoderLoss",
    "DistillKLDivLoss",
    "EmbedDistillLoss",
    "FlopsLoss",
    "GISTEmbedLoss",
    "GlobalOrthogonalRegularizationLoss",
    "Loss",
    "MarginMSELoss",
    "Matryoshka2dLoss",
    "MatryoshkaLoss",
    "MegaBatchMarginLoss",
    "MSELoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "MultiVectorDistillKLDivLoss",
    "MultiVectorMarginMSELoss",
    "MultiVectorMatryoshkaLoss",
    "MultiVectorMultipleNegativesRankingLoss",
    "MultiVectorTokenPoolingLoss",
    "OnlineContrastiveLoss",
    "SiameseDistanceMetric",
    "SoftmaxLoss",
    "SparseAnglELoss",
    "SparseCoSENTLoss",
    "SparseCosineSimilarityLoss",
    "SparseDistillKLDivLoss",
    "SparseMarginMSELoss",
    "SparseMSELoss",
    "SparseMultipleNegativesRankingLoss",
    "SparseTripletLoss",
    "SpladeLoss",
    "TripletDistanceMetric",
    "TripletLoss",
    "identity",
    "normalized_mean_squared_error",
    "shrink",
]
