"""Flax NNX encoders, one file per architecture, chosen by ``config.json``'s ``model_type``.

``layers.py`` holds every building block the architectures share (activations, dropout, norms, RoPE, attention
masks and kernels, BERT-style multi-head attention, feed-forward blocks); each architecture file (``bert.py``,
``distilbert.py``, ``mpnet.py``, ``xlm_roberta.py``, ``qwen3.py``, ``gemma3.py``, ``modernbert.py``,
``nomic_bert.py``, ``gte.py``) holds only its config and the wiring that is its own. A new architecture is one
file here and one entry in ``ARCHITECTURES``. Heads: ``mlm_head.py``, ``classification.py``, ``causal_lm.py``.

The architectures know nothing of quantization: ``int8.py`` (``dtype="int8"``) calibrates and quantizes a built
model from outside, replacing its ``nnx.Linear`` nodes in the graph.
"""

from __future__ import annotations

import dataclasses
import re

from jaxst.checks import non_negative_int, positive_int
from jaxst.models.bert import BertConfig, BertModel
from jaxst.models.distilbert import DistilBertConfig, DistilBertModel
from jaxst.models.gemma3 import Gemma3Config, Gemma3Model
from jaxst.models.gte import GteConfig, GteModel
from jaxst.models.modernbert import ModernBertConfig, ModernBertModel
from jaxst.models.mpnet import MPNetConfig, MPNetModel
from jaxst.models.nomic_bert import NomicBertConfig, NomicBertModel
from jaxst.models.qwen3 import Qwen3Config, Qwen3Model
from jaxst.models.xlm_roberta import ROBERTA_OVERRIDES, XLMRobertaModel

# model_type -> (config class, encoder class, extra config fields)
ARCHITECTURES = {
    "bert": (BertConfig, BertModel, {}),
    "distilbert": (DistilBertConfig, DistilBertModel, {}),
    "mpnet": (MPNetConfig, MPNetModel, {}),
    "roberta": (BertConfig, XLMRobertaModel, ROBERTA_OVERRIDES),
    "xlm-roberta": (BertConfig, XLMRobertaModel, ROBERTA_OVERRIDES),
    "qwen3": (Qwen3Config, Qwen3Model, {}),
    "gemma3_text": (Gemma3Config, Gemma3Model, {}),
    "modernbert": (ModernBertConfig, ModernBertModel, {}),
    "nomic_bert": (NomicBertConfig, NomicBertModel, {}),
    "gte": (GteConfig, GteModel, {}),
}

# Old config.json files without a model_type name only the PyTorch class: BertModel, XLMRobertaForMaskedLM, ...
_CLASS_NAME = re.compile(
    r"(Bert|DistilBert|MPNet|Roberta|XLMRoberta|Qwen3|Gemma3Text|ModernBert|NomicBert|Gte)"
    r"(Model|For[A-Za-z]+|LMHeadModel)"
)
_CLASS_PREFIX_TYPES = {"Bert": "bert", "DistilBert": "distilbert", "MPNet": "mpnet", "Roberta": "roberta",
                       "XLMRoberta": "xlm-roberta",
                       "Qwen3": "qwen3", "Gemma3Text": "gemma3_text", "ModernBert": "modernbert",
                       "NomicBert": "nomic_bert", "Gte": "gte"}


def model_type(hf_config: dict) -> str | None:
    """``config.json``'s ``model_type``, else the one its ``architectures`` class names imply."""
    if hf_config.get("model_type"):
        return hf_config["model_type"]
    for arch in hf_config.get("architectures") or []:
        match = _CLASS_NAME.fullmatch(str(arch))
        if match:
            return _CLASS_PREFIX_TYPES[match.group(1)]
    return None


def encoder_from_hf_config(hf_config: dict, where="config.json"):
    """The (config, encoder class) for a Hugging Face ``config.json``; a clear error for other models, and a
    ValueError naming ``where`` (the file) and the field for a config no model can be built from."""
    name = model_type(hf_config)
    if name not in ARCHITECTURES:
        archs = ", ".join(map(str, hf_config.get("architectures") or [])) or "no architectures listed"
        raise ValueError(
            f"{where}: unsupported architecture: model_type {name!r} ({archs}); "
            f"jaxst supports {sorted(ARCHITECTURES)}"
        )
    config_cls, model_cls, extra = ARCHITECTURES[name]
    try:
        check_sizes(hf_config)  # before from_hf, which divides by the head count
        cfg = config_cls.from_hf(hf_config, **extra)
        check_sizes(dataclasses.asdict(cfg))  # and the derived ones (head_dim = hidden_size // heads)
        check_heads(cfg)
    except KeyError as e:
        raise ValueError(f"{where}: {name} needs {e.args[0]!r}, which it lacks") from e
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{where}: {e}") from e
    return cfg, model_cls


# config.json's sizes, positive integers wherever an architecture reads them (null: the architecture's default).
# One check for every architecture, at load: a 0, negative, fractional or string size otherwise fails (or
# divides by zero) at the first encode, or builds a model that computes garbage.
POSITIVE_SIZES = ("vocab_size", "hidden_size", "dim", "num_hidden_layers", "n_layers", "num_attention_heads",
                  "n_heads", "num_key_value_heads", "head_dim", "intermediate_size", "hidden_dim",
                  "max_position_embeddings")


def check_sizes(values: dict) -> None:
    for name in POSITIVE_SIZES:
        if values.get(name) is not None:  # null: the architecture's default
            positive_int(name, values[name])
    if values.get("type_vocab_size") is not None:
        non_negative_int("type_vocab_size", values["type_vocab_size"])


def check_heads(cfg) -> None:
    """Attention heads split the width: where a head is hidden_size / heads wide (no head_dim of its own), the
    head count must divide hidden_size; grouped-query heads must divide the query heads. And a layer_types
    list names one kind per layer."""
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_heads
    names = {f.name for f in dataclasses.fields(cfg)}
    if "head_dim" not in names and cfg.hidden_size % heads:
        field = "num_attention_heads" if "num_attention_heads" in names else "n_heads"
        raise ValueError(f"{field} {heads} does not divide hidden_size {cfg.hidden_size}")
    kv = getattr(cfg, "num_key_value_heads", None)
    if kv is not None and heads % kv:
        raise ValueError(f"num_key_value_heads {kv} does not divide num_attention_heads {heads}")
    kinds = getattr(cfg, "layer_types", None)
    if kinds and len(kinds) != num_layers(cfg):  # some encoders build one layer per entry
        raise ValueError(f"layer_types has {len(kinds)} entries for num_hidden_layers {num_layers(cfg)}")


def num_layers(cfg) -> int:
    return cfg.n_layers if hasattr(cfg, "n_layers") else cfg.num_hidden_layers


# A layer's tensors in every architecture's PyTorch names: encoder.layer.3., layers.3., transformer.layer.3., ...
_LAYER_KEY = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


def check_layers(cfg, tensor_names, where: str, checkpoint: str) -> None:
    """Refuse a config with more layers than ``checkpoint`` holds (by its tensor names alone), before any layer
    is built: a config saying 10^6 layers must not spend minutes building them only to find them missing."""
    found = {int(m.group(1)) for m in map(_LAYER_KEY.search, tensor_names) if m}
    held = max(found) + 1 if found else 0
    if num_layers(cfg) > held:
        field = "n_layers" if hasattr(cfg, "n_layers") else "num_hidden_layers"
        raise ValueError(f"{where}: {field} is {num_layers(cfg)} but {checkpoint} holds {held} layers")


__all__ = [
    "ARCHITECTURES",
    "BertConfig",
    "BertModel",
    "DistilBertConfig",
    "DistilBertModel",
    "Gemma3Config",
    "Gemma3Model",
    "GteConfig",
    "GteModel",
    "MPNetConfig",
    "MPNetModel",
    "ModernBertConfig",
    "ModernBertModel",
    "NomicBertConfig",
    "NomicBertModel",
    "Qwen3Config",
    "Qwen3Model",
    "XLMRobertaModel",
    "check_layers",
    "encoder_from_hf_config",
    "model_type",
]
