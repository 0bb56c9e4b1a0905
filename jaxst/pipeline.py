"""The embedding pipelines as NNX modules (sentence and multi-vector), and their one pure jitted forward.

    ids, mask ─▶ encoder ─▶ token states (B, T, H) ─▶ pool ─▶ [Dense | Normalize]* ─▶ (B, D)      SentenceEncoder
    ids, mask ─▶ encoder ─▶ token states (B, T, H) ─▶ [Dense | Normalize]* per token ─▶ (B, T, D)  MultiVectorModule

The heads (Dense, Normalize) and the builder from a folder's modules live in the module registry
(``jaxst.modules.dense``, ``normalize``, ``pooling.sentence_encoder``); this file only runs them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxst.pooling import pool


def is_packed(batch) -> bool:
    """A packed batch (``jaxst.training.pack_columns``): several texts per row, gathered back per text."""
    return isinstance(batch, dict) and "unpack_index" in batch


class SentenceEncoder(nnx.Module):
    """encoder + pooling + the modules after it (Dense, Normalize), in modules.json order. ``token_heads``: how
    many of ``heads`` come before the pooling (a WeightedLayerPooling, which mixes the encoder's layers)."""

    def __init__(self, encoder: nnx.Module, pooling_modes: tuple[str, ...], include_prompt: bool = True,
                 heads: list[nnx.Module] | None = None, token_heads: int = 0):
        self.encoder = encoder
        self.pooling_modes = tuple(pooling_modes)
        self.include_prompt = include_prompt
        self.heads = nnx.List(heads or [])
        self.token_heads = int(token_heads)

    def _encode(self, batch: dict, dropout_rng, all_layers: bool):
        """``(mask, token states)``: (B, T, H) float32 states, or with ``all_layers`` a tuple of every layer's
        (``jaxst.models.layers.layer_states``). A packed batch (``jaxst.training.pack_columns``) holds several
        texts per row; its token states are gathered back into one right-padded row per text."""
        layers = {"all_layers": True} if all_layers else {}  # encoders without layers (static) take no flag
        if is_packed(batch):
            segments = batch["segment_ids"]  # (rows, R): the text each token belongs to, -1 for padding
            same_text = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0)
            out = self.encoder(batch["input_ids"], same_text, batch.get("token_type_ids"),
                               dropout_rng=dropout_rng, positions=batch["positions"], **layers)  # (rows, R, H)
            index = batch["unpack_index"]  # (columns, B, R) -> flat token slots
            mask = batch["attention_mask"].reshape(-1, index.shape[-1])  # (columns * B, R)

            def unpack(packed):  # (rows, R, H) -> (columns * B, R, H)
                return packed.reshape(-1, packed.shape[-1])[index.reshape(mask.shape)].astype(jnp.float32)
        else:
            mask = batch["attention_mask"]
            out = self.encoder(batch["input_ids"], mask, batch.get("token_type_ids"), dropout_rng=dropout_rng,
                               **layers)

            def unpack(states):  # pooling and heads in float32, whatever the encoder computed in
                return states.astype(jnp.float32)
        return mask, tuple(map(unpack, out)) if all_layers else unpack(out)

    def _sentence(self, tokens, mask, batch: dict):
        prompt_length = None if self.include_prompt else batch.get("prompt_length")
        x = pool(tokens, mask, self.pooling_modes, prompt_length)  # (B, H * len(modes))
        for head in self.heads[self.token_heads:]:
            x = head(x)
        return x

    def __call__(self, batch: dict, dropout_rng=None, all_layers: bool = False) -> dict:
        """``dropout_rng``: a PRNG key to run the encoder with training dropout; None for inference.
        ``all_layers``: also ``layer_embeddings`` (S, B, D), the sentence embedding the pooling and heads make
        from each of the encoder's hidden states (the embedding output first, the last one the
        ``sentence_embedding`` itself), what AdaptiveLayerLoss trains."""
        mask, out = self._encode(batch, dropout_rng, all_layers or self.token_heads > 0)
        states = out if isinstance(out, tuple) else None
        tokens = out if states is None else states[-1]
        for head in self.heads[:self.token_heads]:
            tokens = head(states)
        x = self._sentence(tokens, mask, batch)
        result = {"sentence_embedding": x, "token_embeddings": tokens}
        if all_layers:
            result["layer_embeddings"] = jnp.stack([self._sentence(s, mask, batch) for s in states[:-1]] + [x])
        return result


class MultiVectorModule(nnx.Module):
    """encoder + the token-level modules after it (Dense, Normalize), in modules.json order."""

    def __init__(self, encoder: nnx.Module, heads: list[nnx.Module]):
        self.encoder = encoder
        self.heads = nnx.List(heads)

    def __call__(self, batch: dict, dropout_rng=None) -> dict:
        """``{"token_embeddings": (B, T, D), "attention_mask": (B, T)}``: the mask is the batch's
        ``scoring_mask`` (what MaxSim reads), not the encoder's attention mask."""
        tokens = self.encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                              dropout_rng=dropout_rng).astype(jnp.float32)
        for head in self.heads:
            tokens = head(tokens)
        return {"token_embeddings": tokens, "attention_mask": batch["scoring_mask"]}


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, params, batch: dict) -> dict:
    """Pure forward of either module: ``SentenceEncoder`` gives ``{"sentence_embedding": (B, D),
    "token_embeddings": (B, T, H)}``, ``MultiVectorModule`` ``{"token_embeddings", "attention_mask"}``."""
    return nnx.merge(graphdef, params)(batch)
