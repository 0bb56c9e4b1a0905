"""BERT as a decoder: transformers' ``BertLMHeadModel`` with ``is_decoder=True`` and ``add_cross_attention=True``,
what TSDAE (``DenoisingAutoEncoderLoss``) reconstructs a sentence with from its damaged copy's embedding.

Each layer is BERT's encoder layer with causal self-attention, then cross-attention (queries from the decoder,
keys and values from ``encoder_hidden_states``, here one vector per sentence), then the feed-forward; the LM head
is ``BertForMaskedLM``'s (transform, then the word-embedding table as the output matrix, plus a bias). Attribute
names are transformers' (``bert.encoder.layer.0.crossattention.self.query``, ``cls.predictions.transform.dense``),
so a ``BertLMHeadModel`` state dict loads by ``jaxst.io.weights``' suffix rules (``decoder_params``), and the
self-attention, feed-forward and embedding params have the same paths as a ``BertModel`` encoder's under ``bert``:
what TSDAE ties to the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.models.bert import BertAttention, BertConfig, BertEmbeddings, BertSelfAttention
from jaxst.models.layers import DenseActivation, DenseResidualNorm, attention, attention_mask, run_layer, split_rng
from jaxst.models.mlm_head import BertMLMHead


class BertCrossSelfAttention(BertSelfAttention):
    """Multi-head attention from the decoder's states (queries) to the encoder's (keys and values): BERT's
    self-attention weights, applied across."""

    def __call__(self, x, states, mask, dropout_rng=None):
        b, t, h = x.shape
        s = states.shape[1]
        d = h // self.num_heads
        q = self.query(x).reshape(b, t, self.num_heads, d)  # (B, T, N, D)
        k = self.key(states).reshape(b, s, self.num_heads, d)  # (B, S, N, D)
        v = self.value(states).reshape(b, s, self.num_heads, d)
        out = attention(q, k, v, mask, scale=1 / math.sqrt(d), dropout_rate=self.dropout_rate,
                        dropout_rng=dropout_rng, heads_last=True)
        return out.reshape(b, t, h)


class BertCrossAttention(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.self = BertCrossSelfAttention(cfg, rngs=rngs)
        self.output = DenseResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps, cfg.hidden_dropout_prob,
                                        rngs=rngs)

    def __call__(self, x, states, mask, dropout_rng=None):
        attn_rng, out_rng = split_rng(dropout_rng, 2)
        return self.output(self.self(x, states, mask, attn_rng), x, out_rng)


class BertDecoderLayer(nnx.Module):
    """Causal self-attention -> cross-attention -> feed-forward, each a post-norm residual sublayer."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attention = BertAttention(cfg, rngs=rngs)
        self.crossattention = BertCrossAttention(cfg, rngs=rngs)
        self.intermediate = DenseActivation(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, rngs=rngs)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps,
                                        cfg.hidden_dropout_prob, rngs=rngs)

    def __call__(self, x, causal_mask, states, states_mask, dropout_rng=None):
        self_rng, cross_rng, out_rng = split_rng(dropout_rng, 3)
        x = self.attention(x, causal_mask, self_rng)
        x = self.crossattention(x, states, states_mask, cross_rng)
        return self.output(self.intermediate(x), x, out_rng)


class BertDecoderStack(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([BertDecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x, causal_mask, states, states_mask, dropout_rng=None):
        for layer, rng in zip(self.layer, split_rng(dropout_rng, len(self.layer))):
            x = run_layer(layer, x, causal_mask, states, states_mask, rng)
        return x


class BertDecoderModel(nnx.Module):
    """``BertLMHeadModel.bert``: embeddings and the decoder layers (no pooler)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.encoder = BertDecoderStack(cfg, rngs=rngs)


class BertOnlyMLMHead(nnx.Module):
    """``BertLMHeadModel.cls``."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.predictions = BertMLMHead({"hidden_size": cfg.hidden_size, "hidden_act": cfg.hidden_act,
                                        "layer_norm_eps": cfg.layer_norm_eps, "vocab_size": cfg.vocab_size}, rngs=rngs)


class BertLMHeadModel(nnx.Module):
    """Next-token logits (B, T, V) from input ids and the encoder's states (B, S, H)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bert = BertDecoderModel(cfg, rngs=rngs)
        self.cls = BertOnlyMLMHead(cfg, rngs=rngs)

    def __call__(self, input_ids, encoder_hidden_states, encoder_attention_mask=None, attention_mask=None,
                 dropout_rng=None):
        """``attention_mask`` (B, T): the decoder's real tokens (None: all, as TSDAE calls it; each token sees
        itself and those before it either way); ``encoder_attention_mask`` (B, S): the encoder states attended
        (None: all). ``dropout_rng``: a PRNG key to train with dropout; None for none."""
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        if encoder_attention_mask is None:
            encoder_attention_mask = jnp.ones(encoder_hidden_states.shape[:2], bool)
        causal = _causal(attention_mask)  # (B, T, T)
        emb_rng, dec_rng = split_rng(dropout_rng, 2)
        x = self.bert.embeddings(input_ids, attention_mask, jnp.zeros_like(input_ids), emb_rng)  # (B, T, H)
        x = self.bert.encoder(x, causal, encoder_hidden_states.astype(x.dtype), encoder_attention_mask.astype(bool),
                              dec_rng)
        head = self.cls.predictions
        table = self.bert.embeddings.word_embeddings.embedding[...]  # (V, H): the output matrix, tied
        return head(x) @ table.T + head.bias[...]  # (B, T, V)


def _causal(mask):
    """(B, T, T): query i sees the real keys j <= i."""
    return attention_mask(mask, causal=True)[:, 0]


# leaf name -> (PyTorch's, transposed?): jaxst.io.weights' rules for the leaves this decoder has (models sit above io)
_TORCH_LEAVES = {"kernel": ("weight", True), "embedding": ("weight", False), "scale": ("weight", False),
                 "bias": ("bias", False)}


def torch_name(path: tuple) -> tuple[str, bool]:
    """The ``BertLMHeadModel`` state-dict key of a decoder param path, and whether the tensor is transposed."""
    name, transpose = _TORCH_LEAVES[str(path[-1])]
    return ".".join([*map(str, path[:-1]), name]), transpose


def decoder_module(cfg: BertConfig) -> BertLMHeadModel:
    """The decoder with abstract params (nothing allocated): for ``nnx.split`` and ``decoder_params``."""
    return nnx.eval_shape(lambda: BertLMHeadModel(cfg, rngs=nnx.Rngs(0)))


def decoder_params(cfg: BertConfig, state_dict: Mapping | None = None, *, seed: int = 0,
                   initializer_range: float = 0.02, skip: Collection[tuple] = ()) -> tuple[dict, list[str]]:
    """``(params, missing)``: the decoder's params as a nested dict, each tensor from ``state_dict`` (a
    ``BertLMHeadModel``'s, ``BertForMaskedLM``'s or ``BertModel``'s keys, PyTorch layouts) where it has it, and
    drawn as transformers initializes a missing weight elsewhere (dense and embedding weights normal(0,
    ``initializer_range``), biases 0, LayerNorm gains 1, from ``seed``); ``missing`` names those.
    Paths in ``skip`` (weights tied to an encoder) are left out."""
    _, abstract = nnx.split(decoder_module(cfg), nnx.Param)
    rng = np.random.default_rng(seed)
    state_dict = state_dict or {}
    params: dict = {}
    missing = []
    for path, var in nnx.to_flat_state(abstract):
        if path in skip:
            continue
        key, transpose = torch_name(path)
        shape = tuple(var.get_value().shape)
        candidates = [key] + ([key[len("bert."):]] if key.startswith("bert.") else [])
        found = next((state_dict[k] for k in candidates if k in state_dict), None)
        if found is not None:
            array = np.asarray(found, np.float32)
            array = array.T if transpose else array
            if array.shape != shape:
                raise ValueError(f"decoder weight {key}: checkpoint {tuple(np.shape(found))}, model "
                                 f"{shape[::-1] if transpose else shape}")
        else:
            missing.append(key)
            leaf = str(path[-1])
            if leaf == "scale":
                array = np.ones(shape, np.float32)
            elif leaf == "bias":
                array = np.zeros(shape, np.float32)
            else:  # kernel, embedding
                array = rng.normal(0.0, initializer_range, shape).astype(np.float32)
                if key == "bert.embeddings.word_embeddings.weight":
                    array[cfg.pad_token_id] = 0.0  # nn.Embedding(padding_idx=pad_token_id)
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(np.ascontiguousarray(array))
    return params, missing


__all__ = ["BertLMHeadModel", "decoder_module", "decoder_params", "torch_name"]
