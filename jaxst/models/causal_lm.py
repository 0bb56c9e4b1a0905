"""Causal-LM relevance scores: what a reranker such as Qwen3-Reranker scores a (query, document) prompt with.

    ids, mask ─▶ decoder ─▶ token states (B, T, H) ─▶ last real token (B, H) ─▶ · rows of the LM head (K, H)
              ─▶ logits of the K scored tokens (B, K) ─▶ logit[true] - logit[false] (or logit[true]) (B, 1)

sentence-transformers' ``LogitScore`` reads ``logits[:, -1, true_token_id] - logits[:, -1, false_token_id]``
from a ``*ForCausalLM`` run with ``logits_to_keep=1`` on left-padded batches. The same number needs only
the last real token's state and the one or two rows of the LM head for those tokens: the vocabulary
projection (151,669 x hidden for Qwen3) is never computed. The head is the input embedding table when
``tie_word_embeddings`` is set (Qwen3-Reranker-0.6B / 4B), else its own ``lm_head.weight`` (8B); either way
the rows are gathered from a [vocab, hidden] table, PyTorch's layout, so the checkpoint needs no transpose.

The last real token is found from the mask, so left- and right-padded batches give the same scores. The
logits are computed in float32 whatever the decoder's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

# The architectures whose causal-LM rerankers jaxst runs (model_type) -> the prefix of the decoder's keys in
# their *ForCausalLM checkpoints.
DECODER_PREFIXES = {"qwen3": "model"}
# transformers' default tie_word_embeddings per model_type, for configs that do not say (Qwen3Config's: False).
TIED_BY_DEFAULT = {"qwen3": False}


def last_token_index(mask):
    """(B,) index of each row's last real token, for left- or right-padded (B, T) masks."""
    t = mask.shape[1]
    return t - 1 - jnp.argmax(jnp.flip(mask.astype(jnp.int32), axis=1), axis=1)


class LogitScorer(nnx.Module):
    """A decoder and the LM-head rows of the scored tokens: a tokenized prompt batch -> scores (B, 1).

    ``true_token_id`` / ``false_token_id`` as sentence-transformers' ``LogitScore`` has them (no false
    token: the score is the true token's logit). ``tied``: the LM head is the decoder's ``embed_tokens``
    (then this module has no ``lm_head`` params)."""

    def __init__(self, decoder: nnx.Module, true_token_id: int, false_token_id: int | None, *, tied: bool,
                 rngs: nnx.Rngs):
        cfg = decoder.cfg
        for name, token in (("true_token_id", true_token_id), ("false_token_id", false_token_id)):
            if token is not None and not 0 <= token < cfg.vocab_size:
                raise ValueError(f"{name} {token} is outside the vocabulary (size {cfg.vocab_size})")
        self.encoder = decoder
        self.lm_head = None if tied else nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs)  # <-> lm_head.weight
        self.token_ids = (true_token_id,) if false_token_id is None else (true_token_id, false_token_id)

    def head_rows(self):
        """(K, H): the LM-head rows of the scored tokens."""
        table = (self.encoder.embed_tokens if self.lm_head is None else self.lm_head).embedding
        return table[jnp.asarray(self.token_ids)]

    def __call__(self, batch: dict, dropout_rng=None):
        """Scores (B, 1); ``dropout_rng``: a PRNG key to train with dropout, None for inference."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        states = self.encoder(ids, mask, dropout_rng=dropout_rng)  # (B, T, H)
        last = states[jnp.arange(states.shape[0]), last_token_index(mask)]  # (B, H)
        logits = jnp.einsum("bh,kh->bk", last.astype(jnp.float32), self.head_rows().astype(jnp.float32))  # (B, K)
        score = logits[:, 0] if logits.shape[1] == 1 else logits[:, 0] - logits[:, 1]
        return score[:, None]


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, params, batch: dict) -> jax.Array:
    """Pure scorer: relevance scores (B, 1) for a tokenized prompt batch, before any activation."""
    return nnx.merge(graphdef, params)(batch)


__all__ = ["DECODER_PREFIXES", "TIED_BY_DEFAULT", "LogitScorer", "forward", "last_token_index"]
