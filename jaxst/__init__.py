"""jaxst: sentence-transformers as pure, jitted JAX functions over a params pytree."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use, so that `jaxst --help` does not pay for importing JAX.
_LAZY = {
    "CrossEncoder": ("jaxst.cross_encoder", "CrossEncoder"),
    "SentenceTransformer": ("jaxst.sentence_transformer", "SentenceTransformer"),
    "SparseEncoder": ("jaxst.sparse_encoder", "SparseEncoder"),
    "MultiVectorEncoder": ("jaxst.multi_vector_encoder", "MultiVectorEncoder"),
    "EmbeddingIndex": ("jaxst.index", "EmbeddingIndex"),
    "SparseEmbeddingIndex": ("jaxst.index", "SparseEmbeddingIndex"),
    "quantize_embeddings": ("jaxst.quantization", "quantize_embeddings"),
    "util": ("jaxst.util", None),
    "SentenceTransformerTrainer": ("jaxst.training.trainer", "SentenceTransformerTrainer"),
    "SentenceTransformerTrainingArguments": ("jaxst.training.trainer", "SentenceTransformerTrainingArguments"),
    "CrossEncoderTrainer": ("jaxst.training.trainer", "CrossEncoderTrainer"),
    "CrossEncoderTrainingArguments": ("jaxst.training.trainer", "CrossEncoderTrainingArguments"),
    "SparseEncoderTrainer": ("jaxst.training.trainer", "SparseEncoderTrainer"),
    "SparseEncoderTrainingArguments": ("jaxst.training.trainer", "SparseEncoderTrainingArguments"),
    "MultiVectorEncoderTrainer": ("jaxst.training.trainer", "MultiVectorEncoderTrainer"),
    "MultiVectorEncoderTrainingArguments": ("jaxst.training.trainer", "MultiVectorEncoderTrainingArguments"),
    "BatchSamplers": ("jaxst.training.samplers", "BatchSamplers"),
    "MultiDatasetBatchSamplers": ("jaxst.training.samplers", "MultiDatasetBatchSamplers"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'jaxst' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


__all__ = ["BatchSamplers", "CrossEncoder", "CrossEncoderTrainer", "CrossEncoderTrainingArguments", "EmbeddingIndex",
           "MultiDatasetBatchSamplers", "MultiVectorEncoder", "MultiVectorEncoderTrainer",
           "MultiVectorEncoderTrainingArguments", "SentenceTransformer", "SentenceTransformerTrainer",
           "SentenceTransformerTrainingArguments", "SparseEmbeddingIndex", "SparseEncoder", "SparseEncoderTrainer",
           "SparseEncoderTrainingArguments", "quantize_embeddings", "util", "__version__"]
