"""DistilBERT encoder in Flax NNX: BERT's post-LayerNorm layers with DistilBERT's names and no token types.

Attribute names mirror the PyTorch ``DistilBertModel`` (``embeddings.word_embeddings``,
``transformer.layer.0.attention.q_lin``, ``sa_layer_norm``, ``ffn.lin1``, ...), so weights map with the
usual suffix rules; task checkpoints (``DistilBertForMaskedLM``: SPLADE and inference-free sparse models)
prefix the encoder's keys with ``distilbert.``. Dropout as in PyTorch (after the embeddings' LayerNorm,
on attention probabilities and on the FFN output), only with a ``dropout_rng``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxst.models.layers import activation, dropout, layer_states, multi_head_attention, run_layer, split_rng

EPS = 1e-12  # DistilBERT's LayerNorms all use this; the config has no field for it


@dataclasses.dataclass(frozen=True)
class DistilBertConfig:
    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    activation: str = "gelu"
    max_position_embeddings: int = 512
    dropout: float = 0.1
    attention_dropout: float = 0.1
    position_table = True  # learned absolute positions: max_tokens is a hard limit (RoPE models have none)

    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def max_tokens(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict) -> DistilBertConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names and v is not None}
        activation(kwargs.get("activation", cls.activation))  # fail early on an unknown activation
        return cls(**kwargs)  # sizes and heads: jaxst.models.check_sizes / check_heads


class DistilBertEmbeddings(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.dim, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, cfg.dim, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(cfg.dim, epsilon=EPS, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, input_ids, dropout_rng=None, positions=None):
        position_ids = jnp.arange(input_ids.shape[1])[None, :] if positions is None else positions
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return dropout(self.LayerNorm(x), self.rate, dropout_rng)


class DistilBertSelfAttention(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, rngs: nnx.Rngs):
        self.n_heads = cfg.n_heads
        self.rate = cfg.attention_dropout
        self.q_lin = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
        self.k_lin = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
        self.v_lin = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)
        self.out_lin = nnx.Linear(cfg.dim, cfg.dim, rngs=rngs)

    def __call__(self, x, mask, dropout_rng=None):
        return self.out_lin(multi_head_attention(x, self.q_lin, self.k_lin, self.v_lin, self.n_heads, mask, self.rate,
                                                 dropout_rng))


class DistilBertFFN(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(cfg.dim, cfg.hidden_dim, rngs=rngs)
        self.lin2 = nnx.Linear(cfg.hidden_dim, cfg.dim, rngs=rngs)
        self.act = cfg.activation

    def __call__(self, x):
        return self.lin2(activation(self.act)(self.lin1(x)))


class DistilBertBlock(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, rngs: nnx.Rngs):
        self.attention = DistilBertSelfAttention(cfg, rngs=rngs)
        self.sa_layer_norm = nnx.LayerNorm(cfg.dim, epsilon=EPS, rngs=rngs)
        self.ffn = DistilBertFFN(cfg, rngs=rngs)
        self.output_layer_norm = nnx.LayerNorm(cfg.dim, epsilon=EPS, rngs=rngs)
        self.rate = cfg.dropout

    def __call__(self, x, mask, dropout_rng=None):
        attn_rng, ffn_rng = split_rng(dropout_rng, 2)
        x = self.sa_layer_norm(self.attention(x, mask, attn_rng) + x)
        return self.output_layer_norm(dropout(self.ffn(x), self.rate, ffn_rng) + x)


class DistilBertTransformer(nnx.Module):
    def __init__(self, cfg: DistilBertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([DistilBertBlock(cfg, rngs=rngs) for _ in range(cfg.n_layers)])

    def __call__(self, x, mask, dropout_rng=None, all_layers=False):
        states = [x]
        for layer, rng in zip(self.layer, split_rng(dropout_rng, len(self.layer))):
            x = run_layer(layer, x, mask, rng)
            states.append(x)
        return layer_states(states, x, all_layers)


class DistilBertModel(nnx.Module):
    """Token states (B, T, H) from input ids and attention mask (DistilBERT takes no token type ids)."""

    uses_token_types = False
    # attention_mask may be (B, S) with S < T: only the first S tokens are keys (the rest attend, unattended)
    key_prefix = True
    base_model_prefix = "distilbert"

    def __init__(self, cfg: DistilBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = DistilBertEmbeddings(cfg, rngs=rngs)
        self.transformer = DistilBertTransformer(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``attention_mask`` (B, T), or (B, T, T) with ``positions`` for packed batches."""
        emb_rng, enc_rng = split_rng(dropout_rng, 2)
        x = self.embeddings(input_ids, emb_rng, positions)
        return self.transformer(x, attention_mask.astype(bool), enc_rng, all_layers)
