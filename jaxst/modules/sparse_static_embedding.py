"""SparseStaticEmbedding: one learned weight per vocabulary entry, a Router's query route (SparseEncoder).

Config: ``frozen`` (no gradient reaches the weight). Tensor: ``weight`` (vocab,). Forward: the weight of every
token present (``jaxst.sparse.static_embedding``). Saved in the Router's folder under its loaded name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext
from jaxst.sparse import static_embedding

_PATH = "sentence_transformers.sparse_encoder.modules.sparse_static_embedding.SparseStaticEmbedding"

KIND = ModuleKind(
    kind="sparse_static_embedding",
    class_names=("SparseStaticEmbedding",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name=None,  # saved in a Router's folder under the name it was loaded from
    family="SparseEncoder",
    forward="jaxst.modules.sparse_static_embedding:static_forward",
    save="jaxst.modules.sparse_static_embedding:save",
)

STATIC_ROUTE = np.bool_(True)  # the "static_route" batch key's value: one object, so static columns stay stackable


class StaticEmbedding(nnx.Module):
    """The inference-free query side: one weight per vocabulary entry (PyTorch's ``weight``) for each token
    present. ``frozen`` (saved in its config): no gradient reaches the weight, and ``jaxst.training``'s step
    leaves it unchanged, as PyTorch leaves a parameter without requires_grad."""

    def __init__(self, vocab: int, frozen: bool = False):
        self.embedding = nnx.Param(jnp.zeros((vocab,), jnp.float32))
        self.frozen = frozen

    def __call__(self, input_ids, attention_mask):
        weight = self.embedding[...]
        return static_embedding(input_ids, attention_mask, jax.lax.stop_gradient(weight) if self.frozen else weight)


def build(config: dict, vocab: int) -> StaticEmbedding:
    """The abstract module a saved config describes, over ``vocab`` entries."""
    return nnx.eval_shape(lambda: StaticEmbedding(vocab, bool(config.get("frozen", False))))


def load_weight(state_dict, path) -> np.ndarray:
    """The saved ``weight`` (vocab,) as float32; a clear error for a missing or misshapen one."""
    if "weight" not in state_dict:
        raise ValueError(f"{path}: SparseStaticEmbedding weights have no 'weight' tensor")
    weight = np.asarray(state_dict["weight"], np.float32)
    if weight.ndim != 1:
        raise ValueError(f"{path}: SparseStaticEmbedding weight must be 1-D, got shape {weight.shape}")
    return weight


def static_route(module: nnx.Module, batch: dict) -> dict | None:
    """A Router model's static-route batch (tokenized with its ``static_route`` key) through the module's
    ``static`` part; None for a Transformer-route batch."""
    if "static_route" not in batch:
        return None
    static = getattr(module, "static", None)
    if static is None:
        raise ValueError("this batch was tokenized for a static route, which this model does not have")
    return {"sentence_embedding": static(batch["input_ids"], batch["attention_mask"])}


@jax.jit
def static_forward(weight, input_ids, attention_mask):
    """The static route on its own: (B, vocab) from the weight and a tokenized batch."""
    return static_embedding(input_ids, attention_mask, weight)


def save(spec, context: SaveContext) -> ModuleFiles:
    """Its config, its own tokenizer (a Router's static route tokenizes on its own) and ``params["static"]``."""
    return ModuleFiles({"config.json": {**spec.config, **context.settings}}, ((("static",), ""),), tokenizer=True)
