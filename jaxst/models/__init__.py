"""Flax NNX encoders, one file per architecture, chosen by ``config.json``'s ``model_type``."""

from __future__ import annotations

from jaxst.models.bert import BertConfig, BertModel

# model_type -> (config class, encoder class, extra config fields)
ARCHITECTURES = {
    "bert": (BertConfig, BertModel, {}),
}


def encoder_from_hf_config(hf_config: dict):
    """The (config, encoder class) for a Hugging Face ``config.json``; a clear error for other models."""
    model_type = hf_config.get("model_type")
    if model_type not in ARCHITECTURES:
        archs = hf_config.get("architectures") or []
        raise ValueError(
            f"unsupported architecture: model_type {model_type!r} ({', '.join(archs) or 'no architectures listed'}); "
            f"jaxst supports {sorted(ARCHITECTURES)}"
        )
    config_cls, model_cls, extra = ARCHITECTURES[model_type]
    return config_cls.from_hf(hf_config, **extra), model_cls


__all__ = ["ARCHITECTURES", "BertConfig", "BertModel", "encoder_from_hf_config"]
