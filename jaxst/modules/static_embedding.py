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

Built in code, as sentence-transformers 6.3 builds one: ``StaticEmbedding.from_model2vec`` (a model2vec model,
folder or Hub name) and ``StaticEmbedding.from_distillation`` (model2vec's distillation of a transformer) give a
module with its table and tokenizer; its ``save`` writes the one-module folder that ``jaxst.SentenceTransformer``
(and sentence-transformers) load. jaxst's facades load folders only (no ``SentenceTransformer(modules=[...])``),
so that folder is the way from the module to a model. ``model2vec`` is an optional package, imported on use.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
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
        self.tokenizer = None  # a ``tokenizers.Tokenizer`` where built in code (from_model2vec, from_distillation)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, dropout_rng=None, positions=None):
        return jnp.take(self.embedding.embedding[...], input_ids, axis=0)

    @classmethod
    def from_model2vec(cls, model_id_or_path: str | os.PathLike) -> StaticEmbedding:
        """A model2vec model (a local folder, or a Hub name through model2vec's own loader) as a StaticEmbedding:
        its table folded (``fold_model2vec``) and its tokenizer, as sentence-transformers 6.3 builds it."""
        try:
            from model2vec import StaticModel
        except ImportError:
            raise ImportError("StaticEmbedding.from_model2vec needs the `model2vec` package: "
                              "`pip install model2vec`") from None
        path = os.fspath(model_id_or_path) if isinstance(model_id_or_path, os.PathLike) else model_id_or_path
        return cls._from_static_model(StaticModel.from_pretrained(path))

    @classmethod
    def from_distillation(cls, model_name: str | os.PathLike, vocabulary: list[str] | None = None,
                          device: str | None = None, pca_dims: int | None = 256, apply_zipf: bool = True,
                          sif_coefficient: float | None = 1e-4, token_remove_pattern: str | None = r"\[unused\d+\]",
                          quantize_to: str = "float32", use_subword: bool = True, **kwargs) -> StaticEmbedding:
        """A StaticEmbedding distilled from a transformer (Hub name or folder) by model2vec's ``distill``: every
        vocabulary token's output vector, PCA to ``pca_dims``, SIF-weighted by ``sif_coefficient``. ``device``
        is the torch device distill runs on (None: model2vec picks). The arguments are sentence-transformers
        6.3's; those the installed model2vec's ``distill`` does not take (0.10 has no ``apply_zipf`` and
        ``use_subword``) are dropped with a warning, as there. ``kwargs`` go to ``distill`` too."""
        try:
            from model2vec.distill import distill
        except ImportError:
            raise ImportError("StaticEmbedding.from_distillation needs the `model2vec` package with its distill "
                              "extra: `pip install model2vec[distill]`") from None
        model_name = os.fspath(model_name) if isinstance(model_name, os.PathLike) else model_name
        arguments = {"vocabulary": vocabulary, "device": device, "pca_dims": pca_dims, "apply_zipf": apply_zipf,
                     "use_subword": use_subword, "quantize_to": quantize_to, "sif_coefficient": sif_coefficient,
                     "token_remove_pattern": token_remove_pattern, **kwargs}
        accepted = set(inspect.signature(distill).parameters) - {"model_name"}
        if dropped := [name for name in arguments if name not in accepted]:
            warnings.warn(f"the installed model2vec's distill takes no {', '.join(map(repr, dropped))}: "
                          "distilling without them (a newer model2vec may take them)", stacklevel=2)
        return cls._from_static_model(
            distill(model_name, **{k: v for k, v in arguments.items() if k in accepted}))

    @classmethod
    def _from_static_model(cls, static_model) -> StaticEmbedding:
        """A model2vec ``StaticModel`` as a StaticEmbedding: its folded float32 table, and a copy of its tokenizer
        without padding (its truncation kept: model2vec truncates to its ``max_length``, 512 by default, and
        sentence-transformers keeps that)."""
        from tokenizers import Tokenizer as HFTokenizer

        table = fold_model2vec(static_model.embedding, getattr(static_model, "token_mapping", None),
                               getattr(static_model, "weights", None))
        module = cls(*table.shape)
        module.embedding.embedding[...] = jnp.asarray(table)
        module.tokenizer = HFTokenizer.from_str(static_model.tokenizer.to_str())
        module.tokenizer.no_padding()
        return module

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model of this one module as sentence-transformers 6 saves ``SentenceTransformer(
        modules=[static_embedding])``: ``modules.json``, ``model.safetensors`` (``embedding.weight``) and
        ``tokenizer.json`` at the folder's root; ``jaxst.SentenceTransformer(path)`` loads it. Returns the folder.

        Into a new or empty folder only, and not atomically: the atomic folder writer is io's, above this registry
        (``tests/test_layout.py``); a loaded model's ``save`` goes through it."""
        from safetensors.numpy import save_file

        if self.tokenizer is None:
            raise ValueError("this StaticEmbedding has no tokenizer (it is a loaded model's encoder): save the "
                             "model instead, or build the module with from_model2vec / from_distillation")
        folder = Path(os.path.expanduser(os.fspath(path)))
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise FileExistsError(f"{folder} exists and is not an empty folder: save a built StaticEmbedding into "
                                  "a new folder")
        folder.mkdir(parents=True, exist_ok=True)
        table = np.asarray(self.embedding.embedding[...], np.float32)
        save_file({"embedding.weight": table}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        self.tokenizer.save(str(folder / "tokenizer.json"))
        modules = [{"idx": 0, "name": "0", "path": "", "type": KIND.type_path}]
        (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n", encoding="utf-8")
        return folder.resolve()


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
