"""Multi-vector (ColBERT) losses over token embeddings scored by MaxSim."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxst.losses.base import Loss, gather


class MultiVectorMultipleNegativesRankingLoss(Loss):
    """ColBERT's contrastive loss (sentence-transformers' ``MultiVectorMultipleNegativesRankingLoss``): each
    query's MaxSim against every document of the batch (the positives and hard negatives of all rows), cross
    entropy towards its own positive. ``outputs``: one dict per column of what a MultiVectorEncoder returns
    (``token_embeddings`` (B, T, D) and the scoring ``attention_mask``; ``jaxst.training`` passes them, since
    ``needs_outputs`` is set); column 0 the queries. ``scale`` 1 (MaxSim is an unbounded sum, so PyLate's
    temperature is 1); ``length_normalize`` scores MeanMaxSim. ``gather_across_devices`` (sharded training):
    True (jaxst's default) scores each query against the documents of the global batch, so the loss equals
    the one-device loss; False against its own device's documents."""

    needs_outputs = True

    def __init__(self, model=None, scale: float = 1.0, length_normalize: bool = False,
                 gather_across_devices: bool = True):
        del model
        if not scale > 0:
            raise ValueError("Scale must be a positive value.")
        self.scale = float(scale)
        self.length_normalize = bool(length_normalize)
        self.gather_across_devices = bool(gather_across_devices)

    def __call__(self, outputs, labels=None, rng=None) -> jax.Array:
        return self._loss(outputs, None)

    def sharded(self, outputs, labels, axis_name: str, rng=None) -> jax.Array:
        local_mean = self._loss(outputs, axis_name if self.gather_across_devices else None)
        return local_mean / jax.lax.axis_size(axis_name)

    def _loss(self, outputs, axis_name) -> jax.Array:
        from jaxst.maxsim import maxsim_scores

        if not isinstance(outputs, (list, tuple)) or len(outputs) < 2 or not all(
                isinstance(o, dict) and "token_embeddings" in o for o in outputs):
            raise TypeError("MultiVectorMultipleNegativesRankingLoss reads one dict of MultiVectorEncoder outputs "
                            "per column (token_embeddings, attention_mask), at least a query and a document column")
        queries, query_mask = outputs[0]["token_embeddings"], outputs[0]["attention_mask"]
        docs = outputs[1:]
        b, n = queries.shape[0], len(docs)
        width = max(d["token_embeddings"].shape[1] for d in docs)
        emb = jnp.stack([jnp.pad(d["token_embeddings"], ((0, 0), (0, width - d["token_embeddings"].shape[1]),
                                                        (0, 0))) for d in docs], axis=1)  # (B, N, T, D)
        mask = jnp.stack([jnp.pad(d["attention_mask"] != 0, ((0, 0), (0, width - d["attention_mask"].shape[1])))
                          for d in docs], axis=1)
        emb, mask = gather(emb, axis_name), gather(mask, axis_name)  # (W, N, T, D): query-major groups
        scores = maxsim_scores(queries, query_mask, emb.reshape(-1, width, emb.shape[-1]), mask.reshape(-1, width),
                               length_normalize=self.length_normalize) * self.scale  # (B, W * N)
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * b
        own = (offset + jnp.arange(b)) * n  # each query's positive: document 0 of its own group
        picked = jnp.take_along_axis(scores, own[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(scores, axis=1) - picked)
