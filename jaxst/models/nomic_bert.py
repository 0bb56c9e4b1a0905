"""Nomic BERT (nomic-embed-text-v1 / v1.5) in Flax NNX: a bidirectional post-norm encoder with rotary positions,
a fused QKV projection and a SwiGLU MLP, no biases anywhere but in the LayerNorms, configured from a Hugging Face
``config.json``. GTE (``jaxst.models.gte``) is the same encoder with biases and other names; it imports the
config, the RoPE settings and the attention from here.

    ids, types ─▶ word + token type embeddings ─▶ emb_ln ─▶
        [x = norm1(x + out_proj(attention(Wqkv(x), RoPE, padding mask)));
         x = norm2(x + fc2(silu(fc12(x)) * fc11(x)))] x L ─▶ (B, T, H)

Attribute names are the checkpoint's (``emb_ln``, ``encoder.layers.0.attn.Wqkv``, ``mlp.fc11``, ``norm1``, ...):
the layout nomic-ai publishes and transformers' ``NomicBertModel`` writes back on ``save_pretrained`` (it splits
``Wqkv`` into q/k/v and renames the rest only in memory), so the suffix rules of ``jaxst.io.weights`` map it.
``Wqkv`` stacks [q; k; v] on its output axis; ``fc11`` is the up projection, ``fc12`` the gate.

Positions count real tokens (``positions_from_mask``); transformers numbers every slot 0..T-1, the same for the
right-padded batches BERT tokenizers make.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxst.models.layers import (
    activation,
    apply_rope,
    attention,
    dropout,
    layer_states,
    positions_from_mask,
    rope_tables,
    run_layer,
    split_rng,
)


def rope_from_hf(hf: dict, default_theta: float, model: str) -> tuple[float, float]:
    """(theta, linear scaling factor) from ``rope_parameters`` (or the older ``rope_theta`` / ``rope_scaling``),
    as transformers reads them. "default" and "linear" are computed exactly as transformers' ROPE_INIT_FUNCTIONS
    do; other types are refused by name."""
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ValueError(f"{model} with rope_type {rope_type!r} is not supported (only 'default' and 'linear')")
    if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor") or 1.0)) != 1.0:
        raise ValueError(f"{model} with partial_rotary_factor != 1 is not supported (RoPE on the whole head only)")
    theta = float(rope.get("rope_theta", hf.get("rope_theta", default_theta)))
    return theta, float(rope["factor"]) if rope_type == "linear" else 1.0


@dataclasses.dataclass(frozen=True)
class NomicBertConfig:
    vocab_size: int = 30528  # nomic-embed-text-v1.5: BERT's WordPiece vocabulary padded to a multiple of 64
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 3072
    hidden_act: str = "silu"  # the gate's activation: silu is SwiGLU, gelu GeGLU
    type_vocab_size: int = 2  # GTE: 0 means no token type table at all (gte-base-en-v1.5)
    layer_norm_eps: float = 1e-12
    rope_theta: float = 1000.0  # transformers' default_theta for nomic_bert
    rope_factor: float = 1.0  # "linear" RoPE scaling: frequencies divided by it
    max_position_embeddings: int = 2048
    hidden_dropout_prob: float = 0.0  # training only: embeddings, and each sublayer's output before its residual
    attention_probs_dropout_prob: float = 0.0  # training only

    @property
    def max_tokens(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict) -> NomicBertConfig:
        """Fields as transformers' config class reads them, its defaults where ``config.json`` has none."""
        names = {f.name for f in dataclasses.fields(cls)} - {"head_dim", "rope_theta", "rope_factor"}
        kwargs = {k: hf[k] for k in names if hf.get(k) is not None}
        activation(kwargs.get("hidden_act", cls.hidden_act))  # fail early on an unknown activation
        hidden = kwargs.get("hidden_size", cls.hidden_size)
        heads = kwargs.get("num_attention_heads", cls.num_attention_heads)
        theta, factor = rope_from_hf(hf, cls.rope_theta, cls.__name__.removesuffix("Config"))
        return cls(**kwargs, head_dim=hf.get("head_dim") or hidden // heads, rope_theta=theta, rope_factor=factor)


def rotary_self_attention(qkv, mask, cos, sin, num_heads: int, dropout_rate: float = 0.0, dropout_rng=None):
    """Bidirectional attention from fused projections: qkv (B, T, 3 * N * D), [q | k | v] on the last axis, with
    queries and keys rotated by the (B, T, D) RoPE tables -> (B, T, N * D). ``mask``: (B, T) real tokens, or
    (B, T, T) which key each query may see (packed batches)."""
    b, t, _ = qkv.shape
    q, k, v = qkv.reshape(b, t, 3, num_heads, -1).transpose(2, 0, 3, 1, 4)  # each (B, N, T, D)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = attention(q, k, v, mask, scale=q.shape[-1] ** -0.5, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return out.transpose(0, 2, 1, 3).reshape(b, t, -1)


class NomicBertAttention(nnx.Module):
    def __init__(self, cfg: NomicBertConfig, *, rngs: nnx.Rngs):
        inner = cfg.num_attention_heads * cfg.head_dim
        self.cfg = cfg
        self.Wqkv = nnx.Linear(cfg.hidden_size, 3 * inner, use_bias=False, rngs=rngs)
        self.out_proj = nnx.Linear(inner, cfg.hidden_size, use_bias=False, rngs=rngs)

    def __call__(self, x, mask, cos, sin, dropout_rng=None):
        cfg = self.cfg
        out = rotary_self_attention(self.Wqkv(x), mask, cos, sin, cfg.num_attention_heads,
                                    cfg.attention_probs_dropout_prob, dropout_rng)
        return self.out_proj(out)


class NomicBertMLP(nnx.Module):
    def __init__(self, cfg: NomicBertConfig, *, rngs: nnx.Rngs):
        self.fc11 = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, use_bias=False, rngs=rngs)  # up
        self.fc12 = nnx.Linear(cfg.hidden_size, cfg.intermediate_size, use_bias=False, rngs=rngs)  # gate
        self.fc2 = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, use_bias=False, rngs=rngs)  # down
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        return self.fc2(self.act(self.fc12(x)) * self.fc11(x))


class NomicBertBlock(nnx.Module):
    def __init__(self, cfg: NomicBertConfig, *, rngs: nnx.Rngs):
        self.attn = NomicBertAttention(cfg, rngs=rngs)
        self.norm1 = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.mlp = NomicBertMLP(cfg, rngs=rngs)
        self.norm2 = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, mask, cos, sin, dropout_rng=None):
        attn_rng, rng1, rng2 = split_rng(dropout_rng, 3)
        x = self.norm1(x + dropout(self.attn(x, mask, cos, sin, attn_rng), self.rate, rng1))
        return self.norm2(x + dropout(self.mlp(x), self.rate, rng2))


class NomicBertEmbeddings(nnx.Module):
    def __init__(self, cfg: NomicBertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs)

    def __call__(self, input_ids, token_type_ids):
        return self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)  # (B, T, H)


class NomicBertEncoder(nnx.Module):
    def __init__(self, cfg: NomicBertConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([NomicBertBlock(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask, cos, sin, dropout_rng=None, all_layers=False):
        states = [x]
        for layer, rng in zip(self.layers, split_rng(dropout_rng, len(self.layers))):
            x = run_layer(layer, x, mask, cos, sin, rng)
            states.append(x)
        return layer_states(states, x, all_layers)


class NomicBertModel(nnx.Module):
    """Token states (B, T, H) from input ids, an attention mask and (optional) token type ids."""

    uses_token_types = True
    base_model_prefix = "nomic_bert"  # NomicBertForMaskedLM and friends prefix the encoder's keys with it

    def __init__(self, cfg: NomicBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = NomicBertEmbeddings(cfg, rngs=rngs)
        self.emb_ln = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.encoder = NomicBertEncoder(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``dropout_rng``: a PRNG key to train with dropout; None (the default) for inference.
        ``attention_mask`` (B, T), or (B, T, T) with ``positions`` (B, T) for packed batches (several texts
        per row, each token seeing only its own text, numbered from 0 within it)."""
        cfg = self.cfg
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_factor)
        emb_rng, enc_rng = split_rng(dropout_rng, 2)
        x = dropout(self.emb_ln(self.embeddings(input_ids, token_type_ids)), cfg.hidden_dropout_prob, emb_rng)
        return self.encoder(x, attention_mask, cos, sin, enc_rng, all_layers)


__all__ = ["NomicBertConfig", "NomicBertModel", "rope_from_hf", "rotary_self_attention"]
