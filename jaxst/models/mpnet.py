"""MPNet encoder in Flax NNX, configured from a Hugging Face ``config.json`` (all-mpnet-base-v2, ...).

MPNet is BERT with three changes, all mirrored from the PyTorch ``MPNetModel``:

- no token type embeddings;
- RoBERTa-style position ids: real tokens count up from ``padding_idx + 1``, padding keeps
  ``padding_idx`` (PyTorch hard-codes ``padding_idx = 1``, MPNet's ``<pad>``);
- a T5-style relative position bias added to every layer's attention scores: one
  ``(buckets, heads)`` table, ``encoder.relative_attention_bias``, shared by all layers, looked up
  with log-spaced buckets of the key-minus-query distance.

Attribute names mirror PyTorch (``encoder.layer.0.attention.attn.q``, ...) so that the suffix rules
in ``jaxst.io.weights`` map the checkpoint. Dropout sits where PyTorch's ``MPNetModel`` has it
(embeddings, attention probabilities, the attention output and the feed-forward output before their
residuals) and runs only when a ``dropout_rng`` key is passed, as in ``jaxst.models.bert``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
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

PADDING_IDX = 1  # PyTorch's MPNetEmbeddings uses 1 whatever config.pad_token_id says
NUM_BUCKETS = 32  # PyTorch's compute_position_bias always buckets into 32, whatever the table holds
MAX_DISTANCE = 128  # distances from here on share the last bucket


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
    vocab_size: int = 30527  # BERT's uncased vocabulary plus <s> <pad> </s> <unk> <mask>
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514  # 512 tokens + the padding_idx offset of 2
    layer_norm_eps: float = 1e-5
    relative_attention_num_buckets: int = 32  # rows of the shared relative position bias table
    hidden_dropout_prob: float = 0.1  # training only: embeddings, attention and feed-forward outputs
    attention_probs_dropout_prob: float = 0.1  # training only: attention probabilities
    position_table = True  # learned absolute positions: max_tokens is a hard limit (RoPE models have none)

    @property
    def max_tokens(self) -> int:
        """Longest input the position table serves: ids start after PADDING_IDX."""
        return self.max_position_embeddings - PADDING_IDX - 1

    @classmethod
    def from_hf(cls, hf: dict, **overrides) -> MPNetConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in hf.items() if k in names and v is not None}
        kwargs.update(overrides)
        activation(kwargs.get("hidden_act", cls.hidden_act))  # fail early on an unknown activation
        buckets = kwargs.get("relative_attention_num_buckets", cls.relative_attention_num_buckets)
        if buckets < NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets {buckets} < {NUM_BUCKETS}: MPNet looks up {NUM_BUCKETS} buckets"
            )
        return cls(**kwargs)


def relative_position_bucket(relative_position: np.ndarray) -> np.ndarray:
    """PyTorch's ``MPNetEncoder.relative_position_bucket`` in numpy, float32 step for float32 step.

    Half the buckets are for keys before the query, half for keys after; in each half distances
    below 8 get a bucket each, larger ones share log-spaced buckets up to ``MAX_DISTANCE``. Computed
    on the host (shapes are static under jit) so bucket edges fall exactly where PyTorch puts them.
    """
    n = -relative_position
    half = NUM_BUCKETS // 2
    ret = (n < 0).astype(np.int32) * half
    n = np.abs(n)
    max_exact = half // 2
    log_ratio = np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))
    large = max_exact + (
        log_ratio / np.float32(math.log(MAX_DISTANCE / max_exact)) * np.float32(half - max_exact)
    ).astype(np.int32)
    large = np.minimum(large, half - 1)
    return ret + np.where(n < max_exact, n, large)


class MPNetEmbeddings(nnx.Module):
    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
        self.position_embeddings = nnx.Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.dropout_rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids, dropout_rng=None, positions=None):
        if positions is not None:  # each token's index within its own text (packed batches)
            position_ids = positions + PADDING_IDX + 1
        else:
            not_pad = (input_ids != PADDING_IDX).astype(jnp.int32)
            position_ids = jnp.cumsum(not_pad, axis=1) * not_pad + PADDING_IDX  # (B, T)
        x = self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))
        return dropout(x, self.dropout_rate, dropout_rng)


class MPNetSelfAttention(nnx.Module):
    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.dropout_rate = cfg.attention_probs_dropout_prob
        self.q = nnx.Linear(h, h, rngs=rngs)
        self.k = nnx.Linear(h, h, rngs=rngs)
        self.v = nnx.Linear(h, h, rngs=rngs)
        self.o = nnx.Linear(h, h, rngs=rngs)

    def __call__(self, x, mask, position_bias, dropout_rng=None):
        return self.o(multi_head_attention(x, self.q, self.k, self.v, self.num_heads, mask, self.dropout_rate,
                                           dropout_rng, position_bias=position_bias))


class MPNetAttention(nnx.Module):
    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.attn = MPNetSelfAttention(cfg, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, rngs=rngs)
        self.dropout_rate = cfg.hidden_dropout_prob

    def __call__(self, x, mask, position_bias, dropout_rng=None):
        attn_rng, out_rng = split_rng(dropout_rng, 2)
        return self.LayerNorm(dropout(self.attn(x, mask, position_bias, attn_rng), self.dropout_rate, out_rng) + x)


class MPNetLayer(nnx.Module):
    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.attention = MPNetAttention(cfg, rngs=rngs)
        # the BERT feed-forward: dense + activation, then dense, residual, LayerNorm
        self.intermediate = DenseActivation(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, rngs=rngs)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps,
                                        cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, x, mask, position_bias, dropout_rng=None):
        attn_rng, out_rng = split_rng(dropout_rng, 2)
        x = self.attention(x, mask, position_bias, attn_rng)
        return self.output(self.intermediate(x), x, out_rng)


class MPNetEncoder(nnx.Module):
    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([MPNetLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.relative_attention_bias = nnx.Embed(cfg.relative_attention_num_buckets, cfg.num_attention_heads,
                                                 rngs=rngs)

    def position_bias(self, t: int):
        """(1, N, T, T) attention bias from the key-minus-query distance, the same for every layer."""
        positions = np.arange(t)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None])  # (T, T), host constant
        return jnp.transpose(self.relative_attention_bias(jnp.asarray(buckets)), (2, 0, 1))[None]

    def __call__(self, x, mask, dropout_rng=None, all_layers=False):
        bias = self.position_bias(x.shape[1])
        states = [x]
        for layer, rng in zip(self.layer, split_rng(dropout_rng, len(self.layer))):
            x = run_layer(layer, x, mask, bias, rng)
            states.append(x)
        return layer_states(states, x, all_layers)


class MPNetModel(nnx.Module):
    """Token states (B, T, H) from input ids and attention mask; MPNet has no token types."""

    uses_token_types = False
    # attention_mask may be (B, S) with S < T: only the first S tokens are keys (the rest attend, unattended)
    key_prefix = True
    base_model_prefix = "mpnet"  # task checkpoints (MPNetForMaskedLM, ...) prefix their keys with it

    def __init__(self, cfg: MPNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = MPNetEmbeddings(cfg, rngs=rngs)
        self.encoder = MPNetEncoder(cfg, rngs=rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, dropout_rng=None, positions=None,
                 all_layers=False):
        """``dropout_rng``: a PRNG key to train with dropout; None (the default) for inference.
        Packed batches: ``attention_mask`` (B, T, T) and ``positions`` as for ``BertModel``. The
        relative position bias needs nothing more: within a text, key-minus-query distances are the
        same packed or not, and across texts attention is masked."""
        del token_type_ids  # accepted for a uniform signature; MPNet has none
        emb_rng, enc_rng = split_rng(dropout_rng, 2)
        return self.encoder(self.embeddings(input_ids, emb_rng, positions), attention_mask.astype(bool), enc_rng,
                            all_layers)
