"""Masked-language-model heads: token states (B, T, H) -> vocabulary logits (B, T, V), as the PyTorch
``*ForMaskedLM`` classes compute them (what SPLADE pools into sparse embeddings).

Every head is a transform (dense -> activation -> LayerNorm) followed by a decoder whose weight is the
encoder's word-embedding table (tied, as in every checkpoint these classes save) plus a bias. Attribute
names mirror PyTorch's, so ``jaxst.io.weights`` maps them with the usual suffix rules under the head's
``prefix``:

    bert            cls.predictions.transform.{dense, LayerNorm}, cls.predictions.bias
    roberta / xlm-r lm_head.{dense, layer_norm}, lm_head.bias
    distilbert      vocab_transform, vocab_layer_norm, vocab_projector.bias
    modernbert      head.{dense, norm}, decoder.bias

The decoder's product is not computed here: ``SpladeEncoder`` runs it a chunk of tokens at a time
(``jaxst.sparse.splade_pool``) so the (B, T, V) logits never exist whole.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxst.models.layers import activation


class BertPredictionTransform(nnx.Module):
    def __init__(self, hidden: int, act: str, eps: float, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(hidden, hidden, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(hidden, epsilon=eps, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.LayerNorm(activation(self.act)(self.dense(x)))


class BertMLMHead(nnx.Module):
    """``BertForMaskedLM.cls.predictions``."""

    prefix = "cls.predictions."

    def __init__(self, hf: dict, *, rngs: nnx.Rngs):
        self.transform = BertPredictionTransform(hf["hidden_size"], hf.get("hidden_act", "gelu"),
                                                 hf.get("layer_norm_eps", 1e-12), rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((hf["vocab_size"],), jnp.float32))

    def __call__(self, x):
        return self.transform(x)

    @staticmethod
    def table(encoder):
        return encoder.embeddings.word_embeddings.embedding[...]


class RobertaLMHead(nnx.Module):
    """``RobertaForMaskedLM.lm_head`` / ``XLMRobertaForMaskedLM.lm_head`` (exact GELU, as PyTorch's)."""

    prefix = "lm_head."

    def __init__(self, hf: dict, *, rngs: nnx.Rngs):
        hidden = hf["hidden_size"]
        self.dense = nnx.Linear(hidden, hidden, rngs=rngs)
        self.layer_norm = nnx.LayerNorm(hidden, epsilon=hf.get("layer_norm_eps", 1e-5), rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((hf["vocab_size"],), jnp.float32))

    def __call__(self, x):
        return self.layer_norm(activation("gelu")(self.dense(x)))

    @staticmethod
    def table(encoder):
        return encoder.embeddings.word_embeddings.embedding[...]


class DistilBertProjectorBias(nnx.Module):
    def __init__(self, vocab: int):
        self.bias = nnx.Param(jnp.zeros((vocab,), jnp.float32))


class DistilBertMLMHead(nnx.Module):
    """``DistilBertForMaskedLM``'s vocab_transform -> activation -> vocab_layer_norm, and vocab_projector's bias."""

    prefix = ""

    def __init__(self, hf: dict, *, rngs: nnx.Rngs):
        dim = hf.get("dim", 768)
        self.vocab_transform = nnx.Linear(dim, dim, rngs=rngs)
        self.vocab_layer_norm = nnx.LayerNorm(dim, epsilon=1e-12, rngs=rngs)
        self.vocab_projector = DistilBertProjectorBias(hf["vocab_size"])
        self.act = hf.get("activation", "gelu")

    def __call__(self, x):
        return self.vocab_layer_norm(activation(self.act)(self.vocab_transform(x)))

    @property
    def bias(self):
        return self.vocab_projector.bias

    @staticmethod
    def table(encoder):
        return encoder.embeddings.word_embeddings.embedding[...]


class ModernBertPredictionHead(nnx.Module):
    def __init__(self, hf: dict, *, rngs: nnx.Rngs):
        hidden = hf["hidden_size"]
        self.dense = nnx.Linear(hidden, hidden, use_bias=bool(hf.get("classifier_bias", False)), rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, epsilon=hf.get("norm_eps", 1e-5), use_bias=bool(hf.get("norm_bias", False)),
                                  rngs=rngs)
        self.act = hf.get("classifier_activation", "gelu")

    def __call__(self, x):
        return self.norm(activation(self.act)(self.dense(x)))


class ModernBertDecoderBias(nnx.Module):
    def __init__(self, vocab: int):
        self.bias = nnx.Param(jnp.zeros((vocab,), jnp.float32))


class ModernBertMLMHead(nnx.Module):
    """``ModernBertForMaskedLM``'s ``head`` and ``decoder`` (its bias; the weight is tied)."""

    prefix = ""

    def __init__(self, hf: dict, *, rngs: nnx.Rngs):
        if not hf.get("decoder_bias", True):
            raise ValueError("ModernBERT masked-LM heads without a decoder bias (decoder_bias=false) are not supported")
        self.head = ModernBertPredictionHead(hf, rngs=rngs)
        self.decoder = ModernBertDecoderBias(hf["vocab_size"])

    def __call__(self, x):
        return self.head(x)

    @property
    def bias(self):
        return self.decoder.bias

    @staticmethod
    def table(encoder):
        return encoder.embeddings.tok_embeddings.embedding[...]


# model_type -> head class; the head's params sit under its ``prefix`` in the checkpoint
MLM_HEADS = {"bert": BertMLMHead, "distilbert": DistilBertMLMHead, "roberta": RobertaLMHead,
             "xlm-roberta": RobertaLMHead, "modernbert": ModernBertMLMHead}


def mlm_head_class(name: str | None, hf: dict):
    """The head class for ``model_type`` ``name``; a clear error for an architecture without one here, or
    for a checkpoint whose decoder is not tied to the word embeddings."""
    if name not in MLM_HEADS:
        raise ValueError(f"no masked-LM head for model_type {name!r} in jaxst; SPLADE models load for "
                         f"{sorted(MLM_HEADS)}")
    if hf.get("tie_word_embeddings", True) is False:
        raise ValueError("this masked-LM checkpoint does not tie its decoder to the word embeddings "
                         "(tie_word_embeddings: false); jaxst's masked-LM heads read the tied table")
    return MLM_HEADS[name]


__all__ = ["MLM_HEADS", "BertMLMHead", "DistilBertMLMHead", "ModernBertMLMHead", "RobertaLMHead", "mlm_head_class"]
