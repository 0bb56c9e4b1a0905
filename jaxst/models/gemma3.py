"""Gemma 3's text decoder (EmbeddingGemma's backbone) in Flax NNX: grouped-query attention with q/k RMSNorm,
rotary positions with one base for sliding-window layers and another for global ones, a GeGLU MLP, Gemma's
(1 + weight) RMSNorm around both sublayers, configured from a Hugging Face ``config.json`` (``gemma3_text``).

    ids ─▶ embed_tokens * sqrt(H) ─▶ [x + post_attention_norm(attention(input_norm(x)))               ─▶
                                      x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))] x L ─▶ norm ─▶ (B, T, H)

EmbeddingGemma sets ``use_bidirectional_attention``: no causal mask, and a sliding-window layer sees the keys
with ``|q - k| < sliding_window // 2 + 1`` on both sides (transformers halves the configured window when it
reads such a config, so 512 in ``config.json`` reaches 256 tokens each way). Without the flag this is the
causal Gemma 3 decoder, whose sliding layers see the ``sliding_window`` keys up to the query.

Attribute names mirror transformers' ``Gemma3TextModel``, so the suffix rules of ``jaxst.io.weights`` map the
checkpoint (``model.`` prefixed keys of ``Gemma3ForCausalLM`` too). ``attn_logit_softcapping`` and
``final_logit_softcapping`` are not read: transformers' Gemma 3 does not cap attention scores (Gemma 2 did),
and the final cap acts on language-model logits, which an encoder never computes.

Padding: positions count real tokens only (``positions_from_mask``), so a text's states do not depend on how
much padding its batch has or on which side it is. transformers numbers positions 0..T-1 whatever the padding;
for right padding that is the same, for left padding rotary attention depends only on position differences.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.models.layers import (
    GatedMLP,
    QKNormAttention,
    RMSNorm,
    layer_states,
    positions_from_mask,
    rope_tables,
    run_layer,
    split_rng,
)


def default_layer_types(layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Gemma 3's layout when ``config.json`` lists no ``layer_types``: ``pattern - 1`` sliding-window layers,
    then a global one, repeated."""
    return tuple("sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers))


def gelu_tanh(x):
    """``gelu_pytorch_tanh``: gelu with the tanh approximation."""
    return jax.nn.gelu(x, approximate=True)


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    vocab_size: int = 262144  # EmbeddingGemma-300m
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 24
    num_attention_heads: int = 3
    num_key_value_heads: int = 1  # grouped-query attention: query heads share key/value heads
    head_dim: int = 256  # not hidden_size / heads in Gemma 3
    rms_norm_eps: float = 1e-6
    query_pre_attn_scalar: float = 256.0  # scores are scaled by its inverse square root, not head_dim's
    rope_theta: float = 1_000_000.0  # global (full-attention) layers
    rope_local_theta: float = 10_000.0  # sliding-window layers (rope_local_base_freq)
    attention_bias: bool = False
    max_position_embeddings: int = 2048
    bidirectional: bool = True  # use_bidirectional_attention: every token sees both ways (EmbeddingGemma)
    sliding_window: int | None = 257  # the exclusive bound on |q - k| (bidirectional) or q - k (causal)
    layer_types: tuple[str, ...] = default_layer_types(24)  # "full_attention" or "sliding_attention" per layer
    attention_dropout: float = 0.0  # training only

    def __post_init__(self):
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"Gemma 3 config: {len(self.layer_types)} layer_types for {self.num_hidden_layers} layers")

    @property
    def max_tokens(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict) -> Gemma3Config:
        """Read as transformers' ``Gemma3TextConfig`` reads it, its defaults for missing keys included."""
        activation = hf.get("hidden_activation", "gelu_pytorch_tanh")
        if activation != "gelu_pytorch_tanh":
            raise ValueError(f"Gemma 3 with hidden_activation {activation!r} is not supported "
                             "(only 'gelu_pytorch_tanh')")
        # RoPE per layer type: the new rope_parameters form, or the legacy rope_theta / rope_local_base_freq /
        # rope_scaling (scaling applies to the global layers) of configs such as EmbeddingGemma's.
        rope = hf.get("rope_parameters") or {}
        full = {**(rope.get("full_attention") or {}), **(hf.get("rope_scaling") or {})}
        local = rope.get("sliding_attention") or {}
        for kind, params in (("full_attention", full), ("sliding_attention", local)):
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type != "default":
                raise ValueError(f"Gemma 3 with rope_type {rope_type!r} on {kind} layers is not supported "
                                 "(only 'default')")
        bidirectional = bool(hf.get("use_bidirectional_attention"))
        window = hf.get("sliding_window", 4096)
        if window is not None and bidirectional:
            window = window // 2 + 1  # as transformers: |q - k| < 512 // 2 + 1 for EmbeddingGemma's 512
        layers = hf.get("num_hidden_layers", 26)
        layer_types = hf.get("layer_types") or default_layer_types(layers, hf.get("sliding_window_pattern", 6))
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=hf.get("num_attention_heads", 8),
            num_key_value_heads=hf.get("num_key_value_heads", 4),
            head_dim=hf.get("head_dim", 256),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar", 256)),
            rope_theta=float(full.get("rope_theta", hf.get("rope_theta", 1_000_000.0))),
            rope_local_theta=float(local.get("rope_theta", hf.get("rope_local_base_freq", 10_000.0))),
            attention_bias=bool(hf.get("attention_bias", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 131072),
            bidirectional=bidirectional,
            sliding_window=window,
            layer_types=tuple(layer_types),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
        )


class Gemma3DecoderLayer(nnx.Module):
    def __init__(self, cfg: Gemma3Config, sliding: bool, *, rngs: nnx.Rngs):
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = RMSNorm(h, eps, rngs=rngs, zero_centered=True)
        self.self_attn = QKNormAttention(
            h, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, bias=cfg.attention_bias, eps=eps,
            scale=cfg.query_pre_attn_scalar**-0.5, causal=not cfg.bidirectional,
            window=cfg.sliding_window if sliding else None, dropout_rate=cfg.attention_dropout, zero_centered=True,
            rngs=rngs)
        self.post_attention_layernorm = RMSNorm(h, eps, rngs=rngs, zero_centered=True)
        self.pre_feedforward_layernorm = RMSNorm(h, eps, rngs=rngs, zero_centered=True)
        self.mlp = GatedMLP(h, cfg.intermediate_size, gelu_tanh, rngs=rngs)
        self.post_feedforward_layernorm = RMSNorm(h, eps, rngs=rngs, zero_centered=True)

    def __call__(self, x, padding_mask, cos, sin, dropout_rng=None):
        attended = self.self_attn(self.input_layernorm(x), padding_mask, cos, sin, dropout_rng)
        x = x + self.post_attention_layernorm(attended)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Model(nnx.Module):
    """Token states (B, T, H) from input ids and an attention mask (padding on either side)."""

    uses_token_types = False
    base_model_prefix = "model"  # Gemma3ForCausalLM prefixes the decoder's keys with it

    def __init__(self, cfg: Gemma3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.sliding = tuple(kind == "sliding_attention" for kind in cfg.layer_types)
        self.layers = nnx.List([Gemma3DecoderLayer(cfg, s, rngs=rngs) for s in self.sliding])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs, zero_centered=True)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``attention_mask`` (B, T), or (B, T, T) with ``positions`` (B, T) for packed batches (several texts
        per row, each token seeing only its own text, numbered from 0 within it)."""
        cfg = self.cfg
        if positions is None:
            positions = positions_from_mask(attention_mask)
        tables = {False: rope_tables(positions, cfg.head_dim, cfg.rope_theta),  # (cos, sin) per layer kind
                  True: rope_tables(positions, cfg.head_dim, cfg.rope_local_theta)}
        x = self.embed_tokens(input_ids)  # (B, T, H)
        x = x * jnp.asarray(np.float32(cfg.hidden_size**0.5), x.dtype)  # a float32 scalar cast to x's dtype
        states = [x]
        for layer, sliding, rng in zip(self.layers, self.sliding, split_rng(dropout_rng, len(self.layers))):
            x = run_layer(layer, x, attention_mask, *tables[sliding], rng)
            states.append(x)
        return layer_states(states, self.norm(x), all_layers)


__all__ = ["Gemma3Config", "Gemma3Model", "default_layer_types"]
