"""WeightedLayerPooling: the token embeddings as a learned weighted mean of the encoder's layers, from
``layer_start`` on; it sits between the Transformer and Pooling and its params are a head's.

Config: ``embedding_dimension`` (``word_embedding_dimension`` before sentence-transformers 6), ``layer_start``,
``num_hidden_layers``. Tensor: ``layer_weights`` (``num_hidden_layers + 1 - layer_start``,), in
``params["heads"][i]``. As in sentence-transformers, it reads every layer's token states only where the
Transformer's ``config.json`` sets ``output_hidden_states``; otherwise it changes nothing (``active``).
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
from flax import nnx

from jaxst.modules._kind import ModuleKind

logger = logging.getLogger(__name__)

KIND = ModuleKind(
    kind="weighted_layer_pooling",
    class_names=("WeightedLayerPooling",),
    type_path="sentence_transformers.models.WeightedLayerPooling",
    v6_type_path="sentence_transformers.sentence_transformer.modules.weighted_layer_pooling.WeightedLayerPooling",
    folder_name="WeightedLayerPooling",
    config_required=True,
    head=True,
    head_params=True,
    forward="jaxst.modules.weighted_layer_pooling:WeightedLayerPooling",
)


class WeightedLayerPooling(nnx.Module):
    """``sum_l w_l * states[layer_start + l] / sum_l w_l`` over the encoder's hidden states (the embedding
    output first, as transformers' ``hidden_states``). ``active``: False where the encoder's config does not
    output its hidden states, so the module passes the last layer's states through, as sentence-transformers'
    does then."""

    def __init__(self, embedding_dimension: int, num_hidden_layers: int = 12, layer_start: int = 4,
                 active: bool = True):
        if not 0 <= layer_start <= num_hidden_layers:
            raise ValueError(f"WeightedLayerPooling: layer_start {layer_start} is outside 0..{num_hidden_layers} "
                             "(num_hidden_layers)")
        self.embedding_dimension = int(embedding_dimension)
        self.layer_start = int(layer_start)
        self.num_hidden_layers = int(num_hidden_layers)
        self.active = bool(active)
        self.layer_weights = nnx.Param(jnp.ones(num_hidden_layers + 1 - layer_start, jnp.float32))

    def __call__(self, states):
        """``states``: the encoder's hidden states, each (B, T, H) -> (B, T, H)."""
        if not self.active:
            return states[-1]
        if len(states) != self.num_hidden_layers + 1:
            raise ValueError(f"WeightedLayerPooling was configured for {self.num_hidden_layers} hidden layers, but "
                             f"the encoder has {len(states) - 1}")
        weights = self.layer_weights[...]
        stacked = jnp.stack(states[self.layer_start:])  # (L + 1 - layer_start, B, T, H)
        return jnp.tensordot(weights, stacked, axes=1) / jnp.sum(weights)


def head(config: dict, dim: int, path, *, hidden_states: bool) -> tuple[WeightedLayerPooling, int]:
    """The abstract module a saved config describes, over a ``dim``-wide encoder; ``hidden_states``: whether
    the encoder's config.json sets ``output_hidden_states`` (without it, the module is inactive)."""
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    if width != dim:
        raise ValueError(f"{path}: WeightedLayerPooling embedding_dimension {width} != the encoder's width {dim}")
    if not hidden_states:
        logger.warning("%s: the Transformer's config.json does not set output_hidden_states, so "
                       "WeightedLayerPooling changes nothing (as in sentence-transformers)", path)
    layers, start = config.get("num_hidden_layers", 12), config.get("layer_start", 4)
    return nnx.eval_shape(lambda: WeightedLayerPooling(dim, layers, start, active=hidden_states)), dim
