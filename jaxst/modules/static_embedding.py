"""StaticEmbedding: a SentenceTransformer's input module with no network, one learned vector per vocabulary entry;
a text's embedding is the mean of its tokens' vectors (PyTorch's ``EmbeddingBag`` in "mean" mode).

Static models (sentence-transformers' static-retrieval-mrl, model2vec's potion models) tokenize without special
tokens and without a length limit. In jaxst the module is the encoder of a ``SentenceEncoder``: it gives each
token its vector, and the encoder's mean pooling over the attention mask is the bag's mean (an empty text: zeros,
as there), so encode, batching, training and the heads after it (Normalize, Dense) are the sentence pipeline's.

No config file. Tensors (``model.safetensors``): ``embedding.weight`` (vocab, dim); a model2vec folder's
``embeddings`` (with its optional ``mapping`` of tokens to rows and per-token ``weights``) is folded into that
table on load. Saved: ``model.safetensors`` and ``tokenizer.json`` at the folder's root, as
sentence-transformers 6 saves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext

KIND = ModuleKind(
    kind="static_embedding",
    class_names=("StaticEmbedding",),
    type_path="sentence_transformers.models.StaticEmbedding",
    v6_type_path="sentence_transformers.sentence_transformer.modules.static_embedding.StaticEmbedding",
    folder_name=None,  # at the root, as sentence-transformers 6 saves it (older folders: 0_StaticEmbedding)
    save="jaxst.modules.static_embedding:save",
)

POOLING_MODES = ("mean",)  # EmbeddingBag's mode: the mean of a text's token vectors
NO_LENGTH_LIMIT = 1 << 24  # tokens: sentence-transformers' StaticEmbedding truncates nothing (max_seq_length inf)


class Table(nnx.Module):
    """The (vocab, dim) table; its param is named as Flax names an embedding's (PyTorch's ``weight``)."""

    def __init__(self, vocab: int, dim: int):
        self.embedding = nnx.Param(jnp.zeros((vocab, dim), jnp.float32))


class StaticEmbedding(nnx.Module):
    """Token ids -> their vectors, (B, T, D): the encoder of a static model's ``SentenceEncoder``. It takes the
    Transformer encoders' arguments and reads only the ids (no attention across tokens, no positions)."""

    uses_token_types = False

    def __init__(self, vocab: int, dim: int):
        self.embedding = Table(vocab, dim)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, dropout_rng=None, positions=None):
        return jnp.take(self.embedding.embedding[...], input_ids, axis=0)


def token_limit(folder) -> int:
    """How many tokens a text keeps: what its ``tokenizer.json`` truncates to (sentence-transformers keeps a
    static tokenizer's saved truncation), else no limit."""
    path = Path(folder) / "tokenizer.json"
    truncation = json.loads(path.read_text(encoding="utf-8")).get("truncation") if path.is_file() else None
    if isinstance(truncation, dict) and truncation.get("max_length"):
        return int(truncation["max_length"])
    return NO_LENGTH_LIMIT


def build(vocab: int, dim: int) -> StaticEmbedding:
    """The abstract module (shapes only; the weights come from ``load_weight``)."""
    return nnx.eval_shape(lambda: StaticEmbedding(vocab, dim))


def fold_model2vec(embeddings, mapping=None, weights=None) -> np.ndarray:
    """A model2vec table as one (vocab, dim) float32 table: rows picked by ``mapping`` (token -> row, for
    vocabulary-quantized models), each scaled by its token's ``weights``."""
    table = np.asarray(embeddings)
    if mapping is not None:
        table = table[np.asarray(mapping, np.int64)]
    table = table.astype(np.float32)
    if weights is not None:
        table = table * np.asarray(weights, np.float32)[:, None]
    return np.ascontiguousarray(table)


def load_weight(state_dict, path) -> np.ndarray:
    """The (vocab, dim) float32 table of a saved StaticEmbedding (``embedding.weight``) or model2vec model
    (``embeddings`` [+ ``mapping``, ``weights``]); a clear error for anything else."""
    keys = set(state_dict.keys())
    if "embedding.weight" in keys:
        table = np.asarray(state_dict["embedding.weight"], np.float32)
    elif "embeddings" in keys:
        table = fold_model2vec(state_dict["embeddings"], state_dict["mapping"] if "mapping" in keys else None,
                               state_dict["weights"] if "weights" in keys else None)
    else:
        raise ValueError(f"{path}: a StaticEmbedding checkpoint holds 'embedding.weight' (or model2vec's "
                         f"'embeddings'), found {sorted(keys)}")
    if table.ndim != 2:
        raise ValueError(f"{path}: the StaticEmbedding table must be (vocab, dim), got shape {table.shape}")
    return table


def save(spec, context: SaveContext) -> ModuleFiles:
    """``model.safetensors`` (``embedding.weight``, from where the family keeps it) and the tokenizer."""
    return ModuleFiles({}, context.weights or ((("encoder",), ""),), tokenizer=True)
