"""Flax NNX encoders, one file per architecture, chosen by ``config.json``'s ``model_type``."""

from __future__ import annotations

import re

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


def encoder_from_hf_config(hf_config: dict):
    """The (config, encoder class) for a Hugging Face ``config.json``; a clear error for other models."""
    name = model_type(hf_config)
    if name not in ARCHITECTURES:
        archs = ", ".join(map(str, hf_config.get("architectures") or [])) or "no architectures listed"
        raise ValueError(
            f"unsupported architecture: model_type {name!r} ({archs}); "
            f"jaxst supports {sorted(ARCHITECTURES)}"
        )
    config_cls, model_cls, extra = ARCHITECTURES[name]
    return config_cls.from_hf(hf_config, **extra), model_cls


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
    "encoder_from_hf_config",
    "model_type",
]
