"""``jaxst.util``: the helpers of ``sentence_transformers.util``, on JAX arrays."""

from jaxst.hard_negatives import mine_hard_negatives
from jaxst.pooling import normalize as normalize_embeddings
from jaxst.pooling import truncate as truncate_embeddings
from jaxst.quantization import quantize_embeddings
from jaxst.search import community_detection, paraphrase_mining, paraphrase_mining_embeddings, semantic_search
from jaxst.similarity import (
    cos_sim,
    dot_score,
    euclidean_sim,
    manhattan_sim,
    pairwise_angle_sim,
    pairwise_cos_sim,
    pairwise_dot_score,
    pairwise_euclidean_sim,
    pairwise_manhattan_sim,
    pytorch_cos_sim,
)

__all__ = [
    "community_detection",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "mine_hard_negatives",
    "normalize_embeddings",
    "pairwise_angle_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "pairwise_cos_sim",
    "pairwise_dot_score",
    "pairwise_euclidean_sim",
    "pairwise_manhattan_sim",
    "pytorch_cos_sim",
    "quantize_embeddings",
    "semantic_search",
    "truncate_embeddings",
]
