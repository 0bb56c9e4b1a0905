"""GTE (Alibaba-NLP gte-base-en-v1.5, gte-large-en-v1.5, gte-multilingual-base) in Flax NNX: Nomic BERT's
encoder (``jaxst.models.nomic_bert``: post-norm layers, rotary positions, fused QKV, gated MLP) with biases on the
attention projections and the MLP's down projection, a GeGLU MLP (exact erf gelu) and token type embeddings
only when ``type_vocab_size`` > 0, configured from a Hugging Face ``config.json``.

    ids[, types] ─▶ word (+ token type) embeddings ─▶ LayerNorm ─▶
        [x = attn_ln(x + o_proj(attention(qkv_proj(x), RoPE, padding mask)));
         x = mlp_ln(x + down_proj(gelu(gate) * up)), (up | gate) = up_gate_proj(x)] x L ─▶ (B, T, H)

Attribute names are the checkpoint's (``embeddings.LayerNorm``, ``encoder.layer.0.attention.qkv_proj``,
``mlp.up_gate_proj``, ``attn_ln``, ...): the layout Alibaba-NLP publishes and transformers' ``GteModel`` writes
back on ``save_pretrained``, so the suffix rules of ``jaxst.io.weights`` map it. ``qkv_proj`` stacks
[q; k; v] on its output axis, ``up_gate_proj`` [up; gate].

RoPE: the v1.5 and multilingual checkpoints scale it with static NTK (``rope_theta`` times the factor, the
frequencies divided by ``factor ** (2 / head_dim)``); transformers expresses that as a "linear" ``rope_parameters``
entry, and so does ``GteConfig.from_hf`` when a config still says ``{"type": "ntk"}``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxst.models.layers import (
    activation,
    dropout,
    layer_states,
    positions_from_mask,
    rope_tables,
    run_layer,
    split_rng,
)
from jaxst.models.nomic_bert import NomicBertConfig, rotary_self_attention


@dataclasses.dataclass(frozen=True)
class GteConfig(NomicBertConfig):
    vocab_size: int = 250048  # gte-multilingual-base (XLM-R's vocabulary); the English models have 30528
    hidden_act: str = "gelu"  # GeGLU with the exact erf gelu
    type_vocab_size: int = 1  # gte-base-en-v1.5 has 0: no token type embeddings
    rope_theta: float = 160_000.0  # transformers' default_theta for gte
    max_position_embeddings: int = 8192
    hidden_dropout_prob: float = 0.1  # training only: also inside the MLP, before down_proj

    @classmethod
    def from_hf(cls, hf: dict) -> GteConfig:
        rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
        if rope.get("rope_type", rope.get("type")) == "ntk":  # the original configs' static NTK, as linear RoPE
            hidden = hf.get("hidden_size") or cls.hidden_size
            dim = hf.get("head_dim") or hidden // (hf.get("num_attention_heads") or cls.num_attention_heads)
            theta, factor = float(rope.get("rope_theta", hf.get("rope_theta", cls.rope_theta))), float(rope["factor"])
            linear = {"rope_type": "linear", "rope_theta": theta * factor, "factor": factor ** (2 / dim)}
            hf = {**hf, "rope_scaling": None, "rope_parameters": linear}
        return super().from_hf(hf)


class GteAttention(nnx.Module):
    def __init__(self, cfg: GteConfig, *, rngs: nnx.Rngs):
        inner = cfg.num_attention_heads * cfg.head_dim
        self.cfg = cfg
        self.qkv_proj = nnx.Linear(cfg.hidden_size, 3 * inner, rngs=rngs)
        self.o_proj = nnx.Linear(inner, cfg.hidden_size, rngs=rngs)

    def __call__(self, x, mask, cos, sin, dropout_rng=None):
        cfg = self.cfg
        out = rotary_self_attention(self.qkv_proj(x), mask, cos, sin, cfg.num_attention_heads,
                                    cfg.attention_probs_dropout_prob, dropout_rng)
        return self.o_proj(out)


class GteMLP(nnx.Module):
    def __init__(self, cfg: GteConfig, *, rngs: nnx.Rngs):
        self.up_gate_proj = nnx.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, use_bias=False, rngs=rngs)
        self.down_proj = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, dropout_rng=None):
        up, gate = jnp.split(self.up_gate_proj(x), 2, axis=-1)  # each (B, T, I)
        return self.down_proj(dropout(self.act(gate) * up, self.rate, dropout_rng))


class GteLayer(nnx.Module):
    def __init__(self, cfg: GteConfig, *, rngs: nnx.Rngs):
        self.attention = GteAttention(cfg, rngs=rngs)
        self.attn_ln = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.mlp = GteMLP(cfg, rngs=rngs)
        self.mlp_ln = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, mask, cos, sin, dropout_rng=None):
        attn_rng, rng1, mlp_rng, rng2 = split_rng(dropout_rng, 4)
        x = self.attn_ln(x + dropout(self.attention(x, mask, cos, sin, attn_rng), self.rate, rng1))
        return self.mlp_ln(x + dropout(self.mlp(x, mlp_rng), self.rate, rng2))


class GteEmbeddings(nnx.Module):
    def __init__(self, cfg: GteConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.token_type_embeddings = (nnx.Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs)
                                      if cfg.type_vocab_size else None)
        self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, token_type_ids=None, dropout_rng=None):
        x = self.word_embeddings(input_ids)  # (B, T, H)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        return dropout(self.LayerNorm(x), self.rate, dropout_rng)


class GteEncoder(nnx.Module):
    def __init__(self, cfg: GteConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([GteLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, mask, cos, sin, dropout_rng=None, all_layers=False):
        states = [x]
        for layer, rng in zip(self.layer, split_rng(dropout_rng, len(self.layer))):
            x = run_layer(layer, x, mask, cos, sin, rng)
            states.append(x)
        return layer_states(states, x, all_layers)


class GteModel(nnx.Module):
    """Token states (B, T, H) from input ids, an attention mask and (optional) token type ids."""

    # Token type ids are read when the model has their table (type_vocab_size > 0) and ignored otherwise; single
    # texts carry all-zero ids either way.
    uses_token_types = True
    base_model_prefix = "gte"  # GteForMaskedLM and friends prefix the encoder's keys with it

    def __init__(self, cfg: GteConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = GteEmbeddings(cfg, rngs=rngs)
        self.encoder = GteEncoder(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """As ``NomicBertModel.__call__``: ``attention_mask`` (B, T), or (B, T, T) with ``positions`` (B, T) for
        packed batches; ``dropout_rng`` to train with dropout."""
        cfg = self.cfg
        if positions is None:
            positions = positions_from_mask(attention_mask)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, cfg.rope_factor)
        emb_rng, enc_rng = split_rng(dropout_rng, 2)
        x = self.embeddings(input_ids, token_type_ids, emb_rng)
        return self.encoder(x, attention_mask, cos, sin, enc_rng, all_layers)


__all__ = ["GteConfig", "GteModel"]
