"""BERT encoder in Flax NNX, configured from a Hugging Face ``config.json``.

Attribute names mirror the PyTorch ``BertModel`` (``embeddings.word_embeddings``,
``encoder.layer.0.attention.self.query``, ...) so that the weight mapping in ``jaxst.io.weights`` is
a short table of suffix rules (``kernel`` <-> ``weight`` transposed, ``embedding``/``scale`` <->
``weight``) rather than a per-architecture rename list. RoBERTa and XLM-RoBERTa reuse the layers.

Dropout is applied where PyTorch's ``BertModel`` applies it in training (after the embeddings'
LayerNorm, on the attention probabilities, and on each dense output before its residual LayerNorm),
only when a ``dropout_rng`` key is passed: without one every module is deterministic and computes
exactly what inference computes.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxst.models.layers import (
    DenseActivation,
    DenseResidualNorm,
    activation,
    dropout,
    layer_states,
    multi_head_attention,
    run_layer,
    split_rng,
)


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # BERT feeds segment ids; RoBERTa-style models keep one all-zero row
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0  # RoBERTa positions start after this index
    position_offset: bool = False  # True for RoBERTa/XLM-R: position ids are pad_token_id + 1 + i
    hidden_dropout_prob: float = 0.1  # training only: embeddings and every dense output before its residual
    attention_probs_dropout_prob: float = 0.1  # training only: attention probabilities
    classifier_dropout: float | None = None  # training only, sequence-classification heads; None: hidden's
    position_table = True  # learned absolute positions: max_tokens is a hard limit (RoPE models have none)

    @property
    def max_tokens(self) -> int:
        """Longest input the position table serves (RoBERTa-style ids start after pad_token_id)."""
        return self.max_position_embeddings - (self.pad_token_id + 1 if self.position_offset else 0)

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> BertConfig:
        pos_type = hf.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type {pos_type!r} is not supported (only 'absolute')")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names and v is not None}
        kwargs.update(overrides)
        activation(kwargs.get("hidden_act", cls.hidden_act))  # fail early on an unknown activation
        return cls(**kwargs)


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(max(cfg.type_vocab_size, 1), cfg.hidden_size, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids, dropout_rng=None, positions=None):
        cfg = self.cfg
        if positions is not None:  # each token's index within its own text (packed batches)
            position_ids = positions + (cfg.pad_token_id + 1 if cfg.position_offset else 0)
        elif cfg.position_offset:
            # RoBERTa: real tokens count up from pad_token_id + 1, padding keeps pad_token_id.
            not_pad = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(not_pad, axis=1) * not_pad + cfg.pad_token_id
        else:
            position_ids = jnp.arange(input_ids.shape[1])[None, :]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )  # (B, T, H)
        return dropout(self.LayerNorm(x), self.cfg.hidden_dropout_prob, dropout_rng)


class BertSelfAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.dropout_rate = cfg.attention_probs_dropout_prob
        self.query = nnx.Linear(h, h, rngs=rngs)
        self.key = nnx.Linear(h, h, rngs=rngs)
        self.value = nnx.Linear(h, h, rngs=rngs)

    def __call__(self, x, mask, dropout_rng=None):
        return multi_head_attention(x, self.query, self.key, self.value, self.num_heads, mask, self.dropout_rate,
                                    dropout_rng)


class BertAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.self = BertSelfAttention(cfg, rngs=rngs)
        self.output = DenseResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout_prob,
                                        rngs=rngs)

    def __call__(self, x, mask, dropout_rng=None):
        attn_rng, out_rng = split_rng(dropout_rng, 2)
        return self.output(self.self(x, mask, attn_rng), x, out_rng)


class BertLayer(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(cfg, rngs=rngs)
        self.intermediate = DenseActivation(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, rngs=rngs)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps,
                                        cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, x, mask, dropout_rng=None):
        attn_rng, out_rng = split_rng(dropout_rng, 2)
        x = self.attention(x, mask, attn_rng)
        return self.output(self.intermediate(x), x, out_rng)


class BertEncoder(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask, dropout_rng=None, all_layers=False):
        states = [x]
        for layer, rng in zip(self.layer, split_rng(dropout_rng, len(self.layer))):
            x = run_layer(layer, x, mask, rng)
            states.append(x)
        return layer_states(states, x, all_layers)


class BertModel(nnx.Module):
    """Token states (B, T, H) from input ids, attention mask and (optional) token type ids."""

    uses_token_types = True
    # attention_mask may be (B, S) with S < T: only the first S tokens are keys (the rest attend, unattended)
    key_prefix = True
    base_model_prefix = "bert"  # task checkpoints (BertForMaskedLM, ...) prefix their keys with it

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.encoder = BertEncoder(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``dropout_rng``: a PRNG key to train with dropout; None (the default) for inference.
        ``attention_mask`` (B, T), or (B, T, T) with ``positions`` (B, T) for packed batches: several
        texts per row, each token seeing only its own text and numbered from 0 within it."""
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = attention_mask.astype(bool)  # (B, T) or (B, T, T)
        emb_rng, enc_rng = split_rng(dropout_rng, 2)
        x = self.embeddings(input_ids, attention_mask, token_type_ids, emb_rng, positions)
        return self.encoder(x, mask, enc_rng, all_layers)
