"""ModernBERT (gte-modernbert-base, modernbert-embed-base) in Flax NNX: a bidirectional encoder with rotary
positions, a fused QKV projection, a GeGLU MLP, bias-free pre-LayerNorms, and attention that alternates
between global layers and local (sliding-window) ones, configured from a Hugging Face ``config.json``.

    ids ─▶ tok_embeddings ─▶ norm ─▶ [attn_norm ─▶ attention (RoPE, global or local window) ─▶ +
                                      mlp_norm ─▶ Wo(act(in) * gate), (in, gate) = Wi(x) ─▶ +] x L
        ─▶ final_norm ─▶ (B, T, H)

Attribute names mirror transformers' ``ModernBertModel`` (``embeddings.tok_embeddings``,
``layers.0.attn.Wqkv``, ``layers.0.mlp.Wi``, ``final_norm``), so the suffix rules of ``jaxst.io.weights``
map the checkpoint (``model.`` prefixed keys of ``ModernBertForMaskedLM`` too). Layer 0 has no
``attn_norm``: transformers' is an ``nn.Identity``, the embeddings' norm having just run.

Global layers (every ``global_attn_every_n_layers``-th, from layer 0) rotate with ``global_rope_theta``
and see every token; local layers rotate with ``local_rope_theta`` and see the keys at most
``local_attention // 2`` positions away on either side (transformers' ``|q - k| <= sliding_window``).
Positions count real tokens only, so a text's states do not depend on its batch's padding: this is what
the original unpadded (flash-attention) path computes, and what transformers' padded path computes for
right-padded batches.

Dropout runs only in training (a ``dropout_rng``), where transformers has it: after the embeddings' norm
(``embedding_dropout``), on the attention probabilities and after ``attn.Wo`` (both ``attention_dropout``),
and on the GeGLU product before ``mlp.Wo`` (``mlp_dropout``).
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


@dataclasses.dataclass(frozen=True)
class ModernBertConfig:
    vocab_size: int = 50368
    hidden_size: int = 768  # ModernBERT-base (gte-modernbert-base, modernbert-embed-base)
    intermediate_size: int = 1152  # per GeGLU half: Wi projects to twice this
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_activation: str = "gelu"  # applied to the first half of Wi's output, which gates by the second
    norm_eps: float = 1e-5
    norm_bias: bool = False  # LayerNorms without bias
    attention_bias: bool = False
    mlp_bias: bool = False
    global_rope_theta: float = 160_000.0  # global layers: long-range positions
    local_rope_theta: float = 10_000.0
    local_attention: int = 128  # local layers' whole window: local_attention // 2 tokens on either side
    layer_types: tuple[str, ...] = ()  # "full_attention" or "sliding_attention" per layer
    max_position_embeddings: int = 8192  # RoPE has no table: only the trained context length
    embedding_dropout: float = 0.0  # training only
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0

    @property
    def max_tokens(self) -> int:
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, hf: dict) -> ModernBertConfig:
        activation(hf.get("hidden_activation", cls.hidden_activation))  # fail early on an unknown activation
        # Hub configs carry global_rope_theta / local_rope_theta; transformers 5 saves rope_parameters per layer type.
        rope = hf.get("rope_parameters") or {}
        thetas = {}
        for kind, legacy, default in (("full_attention", "global_rope_theta", cls.global_rope_theta),
                                      ("sliding_attention", "local_rope_theta", cls.local_rope_theta)):
            params = {**(hf.get("rope_scaling") or {}), **(rope.get(kind) or {})}
            rope_type = params.get("rope_type", params.get("type", "default"))
            if rope_type != "default":
                raise ValueError(f"ModernBERT with rope_type {rope_type!r} is not supported (only 'default')")
            thetas[kind] = float(params.get("rope_theta", hf.get(legacy) or default))
        layers = hf["num_hidden_layers"]
        every = hf.get("global_attn_every_n_layers", 3)
        layer_types = hf.get("layer_types") or [
            "sliding_attention" if i % every else "full_attention" for i in range(layers)
        ]
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=hf["num_attention_heads"],
            hidden_activation=hf.get("hidden_activation", cls.hidden_activation),
            norm_eps=hf.get("norm_eps", cls.norm_eps),
            norm_bias=bool(hf.get("norm_bias", cls.norm_bias)),
            attention_bias=bool(hf.get("attention_bias", cls.attention_bias)),
            mlp_bias=bool(hf.get("mlp_bias", cls.mlp_bias)),
            global_rope_theta=thetas["full_attention"],
            local_rope_theta=thetas["sliding_attention"],
            local_attention=hf.get("local_attention", cls.local_attention),
            layer_types=tuple(layer_types),
            max_position_embeddings=hf.get("max_position_embeddings", cls.max_position_embeddings),
            embedding_dropout=float(hf.get("embedding_dropout") or 0.0),
            attention_dropout=float(hf.get("attention_dropout") or 0.0),
            mlp_dropout=float(hf.get("mlp_dropout") or 0.0),
        )


def layer_norm(cfg: ModernBertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.norm_eps, use_bias=cfg.norm_bias, rngs=rngs)


class ModernBertEmbeddings(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.tok_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.norm = layer_norm(cfg, rngs)

    def __call__(self, input_ids, dropout_rng=None):
        return dropout(self.norm(self.tok_embeddings(input_ids)), self.cfg.embedding_dropout, dropout_rng)


class ModernBertAttention(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, local: bool, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.cfg = cfg
        # |q - k| <= local_attention // 2, as attention_mask's |q - k| < window
        self.window = cfg.local_attention // 2 + 1 if local else None
        self.Wqkv = nnx.Linear(h, 3 * h, use_bias=cfg.attention_bias, rngs=rngs)
        self.Wo = nnx.Linear(h, h, use_bias=cfg.attention_bias, rngs=rngs)

    def __call__(self, x, padding_mask, cos, sin, dropout_rng=None):
        cfg = self.cfg
        b, t, _ = x.shape
        probs_rng, out_rng = split_rng(dropout_rng, 2)
        qkv = self.Wqkv(x).reshape(b, t, 3, cfg.num_attention_heads, cfg.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = apply_rope(qkv[0], cos, sin), apply_rope(qkv[1], cos, sin), qkv[2]  # (B, N, T, D)
        out = attention(q, k, v, padding_mask, scale=cfg.head_dim**-0.5, window=self.window,
                        dropout_rate=cfg.attention_dropout, dropout_rng=probs_rng)
        out = self.Wo(out.transpose(0, 2, 1, 3).reshape(b, t, -1))
        return dropout(out, cfg.attention_dropout, out_rng)


class ModernBertMLP(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.Wi = nnx.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, use_bias=cfg.mlp_bias, rngs=rngs)
        self.Wo = nnx.Linear(cfg.intermediate_size, cfg.hidden_size, use_bias=cfg.mlp_bias, rngs=rngs)

    def __call__(self, x, dropout_rng=None):
        inputs, gate = jnp.split(self.Wi(x), 2, axis=-1)  # (B, T, I) each
        hidden = activation(self.cfg.hidden_activation)(inputs) * gate
        return self.Wo(dropout(hidden, self.cfg.mlp_dropout, dropout_rng))


class ModernBertEncoderLayer(nnx.Module):
    def __init__(self, cfg: ModernBertConfig, index: int, *, rngs: nnx.Rngs):
        self.local = cfg.layer_types[index] == "sliding_attention"
        self.attn_norm = layer_norm(cfg, rngs) if index else None  # layer 0: none (transformers' Identity)
        self.attn = ModernBertAttention(cfg, self.local, rngs=rngs)
        self.mlp_norm = layer_norm(cfg, rngs)
        self.mlp = ModernBertMLP(cfg, rngs=rngs)

    def __call__(self, x, padding_mask, cos, sin, dropout_rng=None):
        attn_rng, mlp_rng = split_rng(dropout_rng, 2)
        h = x if self.attn_norm is None else self.attn_norm(x)
        x = x + self.attn(h, padding_mask, cos, sin, attn_rng)
        return x + self.mlp(self.mlp_norm(x), mlp_rng)


class ModernBertModel(nnx.Module):
    """Token states (B, T, H) from input ids and an attention mask (padding on either side)."""

    uses_token_types = False
    base_model_prefix = "model"  # ModernBertForMaskedLM / ForSequenceClassification prefix the encoder's keys

    def __init__(self, cfg: ModernBertConfig, *, rngs: nnx.Rngs):
        if len(cfg.layer_types) != cfg.num_hidden_layers:
            raise ValueError(f"{len(cfg.layer_types)} layer_types for {cfg.num_hidden_layers} layers")
        self.cfg = cfg
        self.embeddings = ModernBertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([ModernBertEncoderLayer(cfg, i, rngs=rngs) for i in range(cfg.num_hidden_layers)])
        self.final_norm = layer_norm(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``attention_mask`` (B, T), or (B, T, T) with ``positions`` (B, T) for packed batches (several texts
        per row, each token seeing only its own text, numbered from 0 within it)."""
        cfg = self.cfg
        if positions is None:
            positions = positions_from_mask(attention_mask)
        rope = {False: rope_tables(positions, cfg.head_dim, cfg.global_rope_theta),  # (cos, sin), (B, T, D) each
                True: rope_tables(positions, cfg.head_dim, cfg.local_rope_theta)}
        emb_rng, *layer_rngs = split_rng(dropout_rng, len(self.layers) + 1)
        x = self.embeddings(input_ids, emb_rng)  # (B, T, H)
        states = [x]
        for layer, rng in zip(self.layers, layer_rngs):
            x = run_layer(layer, x, attention_mask, *rope[layer.local], rng)
            states.append(x)
        return layer_states(states, self.final_norm(x), all_layers)


__all__ = ["ModernBertConfig", "ModernBertModel"]
