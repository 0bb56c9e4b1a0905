"""Qwen3 (Qwen3-Embedding's backbone) in Flax NNX: a causal decoder with grouped-query attention,
per-head q/k RMSNorm, rotary positions and a SwiGLU MLP, configured from a Hugging Face ``config.json``.

    ids ─▶ embed_tokens ─▶ [RMSNorm ─▶ attention (q/k norm, RoPE, causal[, sliding window]) ─▶ +
                             RMSNorm ─▶ down(silu(gate(x)) * up(x)) ─▶ +] x L ─▶ norm ─▶ (B, T, H)

Attribute names mirror transformers' ``Qwen3Model`` (``layers.0.self_attn.q_proj``, ...), so the suffix
rules of ``jaxst.io.weights`` map the checkpoint (``model.`` prefixed keys of ``Qwen3ForCausalLM`` too).

Padding: positions count real tokens only (``positions_from_mask``), so a text's states do not depend on
how much padding its batch has or on which side it is; the causal mask keeps real tokens from seeing
right padding. transformers numbers left-padded positions from the first pad instead; rotary attention
depends only on position differences, so the two agree to float rounding.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
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


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int = 151669
    hidden_size: int = 1024  # Qwen3-Embedding-0.6B
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8  # grouped-query attention: query heads share key/value heads
    head_dim: int = 128  # not hidden_size / heads in Qwen3
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    attention_bias: bool = False
    max_position_embeddings: int = 32768
    sliding_window: int | None = None  # set only when the config enables it (use_sliding_window)
    layer_types: tuple[str, ...] = ()  # "full_attention" or "sliding_attention" per layer
    attention_dropout: float = 0.0  # training only
    pad_token_id: int | None = None  # torch's padding_idx: that embedding row gets no gradient in training

    @property
    def max_tokens(self) -> int:
        return self.max_position_embeddings

    @classmethod
    def from_hf(cls, hf: dict) -> Qwen3Config:
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"Qwen3 with hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"Qwen3 with rope_type {rope_type!r} is not supported (only 'default')")
        theta = rope.get("rope_theta", hf.get("rope_theta", cls.rope_theta))
        heads = hf["num_attention_heads"]
        window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        layers = hf["num_hidden_layers"]
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if window is not None and i >= hf.get("max_window_layers", layers) else "full_attention"
            for i in range(layers)
        ]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", cls.rms_norm_eps),
            rope_theta=float(theta),
            attention_bias=bool(hf.get("attention_bias", False)),
            max_position_embeddings=hf.get("max_position_embeddings", cls.max_position_embeddings),
            sliding_window=window,
            layer_types=tuple(layer_types),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            pad_token_id=hf.get("pad_token_id"),
        )


class Qwen3DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen3Config, sliding: bool, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.self_attn = QKNormAttention(
            cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, bias=cfg.attention_bias,
            eps=cfg.rms_norm_eps, scale=cfg.head_dim**-0.5, causal=True, window=cfg.sliding_window if sliding else None,
            dropout_rate=cfg.attention_dropout, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, jax.nn.silu, rngs=rngs)  # SwiGLU

    def __call__(self, x, padding_mask, cos, sin, dropout_rng=None):
        x = x + self.self_attn(self.input_layernorm(x), padding_mask, cos, sin, dropout_rng)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3Model(nnx.Module):
    """Token states (B, T, H) from input ids and an attention mask (padding on either side)."""

    uses_token_types = False
    base_model_prefix = "model"  # Qwen3ForCausalLM and friends prefix the decoder's keys with it

    def __init__(self, cfg: Qwen3Config, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        sliding = [kind == "sliding_attention" for kind in cfg.layer_types] or [False] * cfg.num_hidden_layers
        self.layers = nnx.List([Qwen3DecoderLayer(cfg, s, rngs=rngs) for s in sliding])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``attention_mask`` (B, T), or (B, T, T) with ``positions`` (B, T) for packed batches (several texts
        per row, each token seeing only its own text, numbered from 0 within it)."""
        if positions is None:
            positions = positions_from_mask(attention_mask)
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        x = self.embed_tokens(input_ids)  # (B, T, H)
        if self.cfg.pad_token_id is not None:  # nn.Embedding(padding_idx=...): no gradient into that row, as in
            frozen = (input_ids == self.cfg.pad_token_id)[..., None]  # torch, where EOS (a real token) is the pad
            x = jnp.where(frozen, jax.lax.stop_gradient(x), x)
        states = [x]
        for layer, rng in zip(self.layers, split_rng(dropout_rng, len(self.layers))):
            x = run_layer(layer, x, attention_mask, cos, sin, rng)
            states.append(x)
        return layer_states(states, self.norm(x), all_layers)


__all__ = ["Qwen3Config", "Qwen3Model"]
