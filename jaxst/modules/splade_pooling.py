"""SpladePooling: a masked-LM's token logits -> one sparse vocabulary-wide vector (SparseEncoder).

Config: ``pooling_strategy`` ("max" / "sum"), ``activation_function`` ("relu" / "log1p_relu"), ``chunk_size``,
``embedding_dimension`` (pre-v5 folders: ``word_embedding_dimension``). It follows a fill-mask Transformer,
whose MLM head's tensors it reads. Forward: ``SpladeEncoder`` (encoder, MLM head, ``jaxst.sparse.splade_pool``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext
from jaxst.modules._state import Aliased
from jaxst.modules.sparse_static_embedding import static_route
from jaxst.sparse import check_splade_pooling, splade_pool

_PATH = "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"

KIND = ModuleKind(
    kind="splade_pooling",
    class_names=("SpladePooling",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="SpladePooling",
    config_required=True,
    family="SparseEncoder",
    forward="jaxst.modules.splade_pooling:SpladeEncoder",
    save="jaxst.modules.splade_pooling:save",
)


class SpladeEncoder(nnx.Module):
    """Masked-LM encoder + head + SPLADE pooling: a tokenized batch -> (B, V) sparse-by-value embeddings. A
    Router's static route, attached as ``static``, runs batches tokenized for it."""

    def __init__(self, encoder: nnx.Module, head: nnx.Module, pooling_strategy: str = "max",
                 activation_function: str = "relu", chunk_size: int | None = None):
        self.encoder = encoder
        self.head = head
        self.pooling_strategy = pooling_strategy
        self.activation_function = activation_function
        self.chunk_size = chunk_size

    def __call__(self, batch: dict, dropout_rng=None) -> dict:
        if (static := static_route(self, batch)) is not None:
            return static
        mask = batch["attention_mask"]
        states = self.encoder(batch["input_ids"], mask, batch.get("token_type_ids"), dropout_rng=dropout_rng)
        states = self.head(states.astype(jnp.float32))
        pooled = splade_pool(states, mask, self.head.table(self.encoder), self.head.bias[...],
                             self.pooling_strategy, self.activation_function, self.chunk_size)
        return {"sentence_embedding": pooled}


def read_config(config: dict) -> dict:
    """The saved settings, pre-v5 key names renamed."""
    config = dict(config)
    if "word_embedding_dimension" in config and "embedding_dimension" not in config:  # the pre-v5 key
        config["embedding_dimension"] = config.pop("word_embedding_dimension")
    return config


def build(encoder: nnx.Module, head: nnx.Module, config: dict) -> SpladeEncoder:
    """The module over an (abstract) encoder and MLM head; an unsupported strategy or activation fails here,
    at load, not at encode."""
    config = read_config(config)
    module = SpladeEncoder(encoder, head, config.get("pooling_strategy", "max"),
                           config.get("activation_function", "relu"), config.get("chunk_size"))
    check_splade_pooling(module.pooling_strategy, module.activation_function)
    return module


def load_params(load, module: SpladeEncoder, state_dict, base_model_prefix: str) -> dict:
    """``{"encoder", "head"}`` params from the fill-mask Transformer's tensors (``load``: the facade's
    ``load_params(module, state_dict, prefixes)``); the decoder bias is found under either name it is saved as."""
    prefix = module.head.prefix
    sd = Aliased(state_dict, {f"{prefix}bias": f"{prefix}decoder.bias"})
    return {"encoder": load(module.encoder, sd, (f"{base_model_prefix}.",)),
            "head": load(module.head, sd, (prefix,))}


def save(spec, context: SaveContext) -> ModuleFiles:
    """Its config as sentence-transformers 6 writes it: every key named (v6 defaults where the loaded folder
    left one out), the pre-v5 width key dropped, the model's current ``chunk_size`` where one is set."""
    config = {"pooling_strategy": "max", "activation_function": "relu", "embedding_dimension": None,
              **{k: v for k, v in spec.config.items() if k != "word_embedding_dimension"}}
    config.update({k: v for k, v in context.settings.items() if v is not None})
    return ModuleFiles({"config.json": config})
