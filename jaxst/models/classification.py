"""Sequence-classification heads over the encoders: what a cross-encoder scores pairs with.

    ids, mask[, types] ─▶ encoder ─▶ token states (B, T, H) ─▶ first token (B, H) ─▶ head ─▶ logits (B, L)

Two head shapes cover the BERT family, both reading the first token ([CLS] / <s>):

- ``"pooler"``: ``BertForSequenceClassification``: ``pooler.dense`` + tanh, then ``classifier`` (H -> L);
- ``"dense_tanh_out"``: ``RobertaForSequenceClassification``, ``XLMRobertaForSequenceClassification``,
  ``MPNetForSequenceClassification``: ``classifier.dense`` + tanh, then ``classifier.out_proj`` (H -> L).

Attribute names mirror PyTorch (``pooler.dense``, ``classifier.out_proj``) so the suffix rules in
``jaxst.io.weights`` map the checkpoint. Dropout runs only in training, when a ``dropout_rng`` key is
passed: in the encoder as PyTorch applies it, and in the heads where PyTorch's are (before
``classifier`` for BERT; before ``dense`` and before ``out_proj`` for the RoBERTa-style head), at
``classifier_dropout`` (``hidden_dropout_prob`` when unset; MPNet's head always uses the latter).

For encoders with BERT's layer structure (``BertModel`` and its RoBERTa/XLM-R subclasses) the scorer
walks the layers itself, with the same weights and math but two savings that matter on CPU:

- the last layer runs for the first token only: the head reads nothing else, so its queries,
  attention output and feed-forward for the other T - 1 positions would be thrown away (keys and
  values still come from every position);
- attention is ``multi_head_attention``, the encoders' own (three projections, (B, T, N, D) heads to the kernel).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxst.models.bert import BertModel
from jaxst.models.layers import dropout, multi_head_attention, split_rng

# config.json model_type -> head shape
HEAD_KINDS = {
    "bert": "pooler",
    "roberta": "dense_tanh_out",
    "xlm-roberta": "dense_tanh_out",
    "mpnet": "dense_tanh_out",
}

# config.json model_type -> the prefix of the encoder's keys in a *ForSequenceClassification checkpoint
BASE_MODEL_PREFIXES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "mpnet": "mpnet"}


def head_kind(model_type: str) -> str:
    try:
        return HEAD_KINDS[model_type]
    except KeyError:
        raise ValueError(
            f"no sequence-classification head for model_type {model_type!r}; jaxst supports {sorted(HEAD_KINDS)}"
        ) from None


def num_labels_from_hf(hf_config: dict) -> int:
    """``num_labels`` as transformers' ``PretrainedConfig`` reads it: explicit, else len(id2label), else 2."""
    if hf_config.get("num_labels") is not None:
        return int(hf_config["num_labels"])
    if hf_config.get("id2label"):
        return len(hf_config["id2label"])
    return 2


class BertPooler(nnx.Module):
    """tanh(dense(first token)): BERT's pooler."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, first):  # (B, H) -> (B, H)
        return jnp.tanh(self.dense(first))


class ClassificationHead(nnx.Module):
    """out_proj(tanh(dense(first token))): the RoBERTa / XLM-R / MPNet classification head."""

    def __init__(self, hidden: int, num_labels: int, *, rngs: nnx.Rngs, dropout_rate: float = 0.0):
        self.dense = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out_proj = nnx.Linear(hidden, num_labels, rngs=rngs)
        self.dropout_rate = dropout_rate

    def __call__(self, first, dropout_rng=None):  # (B, H) -> (B, L)
        in_rng, mid_rng = split_rng(dropout_rng, 2)
        x = jnp.tanh(self.dense(dropout(first, self.dropout_rate, in_rng)))
        return self.out_proj(dropout(x, self.dropout_rate, mid_rng))


def _first_token_states(encoder: BertModel, input_ids, attention_mask, token_type_ids, dropout_rng=None):
    """The last layer's output at position 0 (B, H), for encoders built from BERT's layers."""
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    emb_rng, enc_rng = split_rng(dropout_rng, 2)
    x = encoder.embeddings(input_ids, attention_mask, token_type_ids, emb_rng)  # (B, T, H)
    mask = attention_mask.astype(bool)
    layers = list(encoder.encoder.layer)
    for i, (layer, rng) in enumerate(zip(layers, split_rng(enc_rng, len(layers)))):
        first_only = i == len(layers) - 1
        probs_rng, attn_out_rng, out_rng = split_rng(rng, 3)
        attn = layer.attention.self
        context = multi_head_attention(x, attn.query, attn.key, attn.value, attn.num_heads, mask, attn.dropout_rate,
                                       probs_rng, first_only=first_only)  # (B, Tq, H)
        residual = x[:, :1] if first_only else x
        y = layer.attention.output(context, residual, attn_out_rng)
        x = layer.output(layer.intermediate(y), y, out_rng)
    return x[:, 0]


class SequenceClassifier(nnx.Module):
    """An encoder and its classification head: a tokenized pair batch -> logits (B, num_labels)."""

    def __init__(self, encoder: nnx.Module, kind: str, hidden: int, num_labels: int, *, rngs: nnx.Rngs):
        if kind not in ("pooler", "dense_tanh_out"):
            raise ValueError(f"unknown head kind {kind!r}")
        self.encoder = encoder
        self.kind = kind
        self.num_labels = num_labels
        cfg = getattr(encoder, "cfg", None)
        rate = getattr(cfg, "classifier_dropout", None)
        self.dropout_rate = getattr(cfg, "hidden_dropout_prob", 0.0) if rate is None else rate
        if kind == "pooler":
            self.pooler = BertPooler(hidden, rngs=rngs)
            self.classifier = nnx.Linear(hidden, num_labels, rngs=rngs)
        else:
            self.classifier = ClassificationHead(hidden, num_labels, rngs=rngs, dropout_rate=self.dropout_rate)

    def first_token(self, batch: dict, dropout_rng=None):
        """(B, H): the encoder's last hidden state at the first position."""
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")
        if isinstance(self.encoder, BertModel) and len(self.encoder.encoder.layer) > 0:
            return _first_token_states(self.encoder, ids, mask, types, dropout_rng)
        return self.encoder(ids, mask, types, dropout_rng=dropout_rng)[:, 0]

    def __call__(self, batch: dict, dropout_rng=None):
        """Logits (B, num_labels); ``dropout_rng``: a PRNG key to train with dropout, None for inference."""
        encoder_rng, head_rng = split_rng(dropout_rng, 2)
        first = self.first_token(batch, encoder_rng)
        if self.kind == "pooler":
            return self.classifier(dropout(self.pooler(first), self.dropout_rate, head_rng))
        return self.classifier(first, head_rng)


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, params, batch: dict) -> jax.Array:
    """Pure scorer: raw logits (B, num_labels) for a tokenized pair batch."""
    return nnx.merge(graphdef, params)(batch)


__all__ = [
    "BASE_MODEL_PREFIXES",
    "BertPooler",
    "ClassificationHead",
    "HEAD_KINDS",
    "SequenceClassifier",
    "forward",
    "head_kind",
    "num_labels_from_hf",
]
