"""Pooling: token states -> one vector per text (mean, CLS, max, last token, ...).

Config: ``pooling_mode_*`` flags or ``pooling_mode`` (``jaxst.pooling.pooling_modes_from_config``),
``include_prompt``, ``word_embedding_dimension``. No tensors. It makes a Transformer a sentence encoder:
``sentence_encoder`` builds the ``jaxst.pipeline.SentenceEncoder`` for the modules after a Transformer.
"""

from __future__ import annotations

from flax import nnx

from jaxst.modules import dense, layer_norm, normalize, weighted_layer_pooling
from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext
from jaxst.pipeline import SentenceEncoder
from jaxst.pooling import pooling_modes_from_config

KIND = ModuleKind(
    kind="pooling",
    class_names=("Pooling",),
    type_path="sentence_transformers.models.Pooling",
    v6_type_path="sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    folder_name="Pooling",
    config_required=True,
    forward="jaxst.pooling:pool",
    save="jaxst.modules.pooling:save",
)

HEADS = {"dense": dense.head, "normalize": normalize.head,  # the heads a sentence encoder runs after pooling
         "layer_norm": layer_norm.head}


def sentence_encoder(encoder: nnx.Module, hidden_size: int, modules: list, where,
                     pooling_modes: tuple[str, ...] | None = None,
                     hidden_states: bool = False) -> tuple[SentenceEncoder, int]:
    """The abstract ``SentenceEncoder`` over ``encoder`` for the modules after the Transformer, and its
    output dimension. ``modules``: ``(kind, config, path)`` in modules.json order ("pooling", "dense",
    "normalize", "dropout"); exactly one Pooling, before any Dense or Normalize. ``where`` names the
    model folder in errors. ``pooling_modes``: an input module that pools by itself (StaticEmbedding's mean)
    and so is followed by no Pooling module. A WeightedLayerPooling may come before the Pooling (a head that
    mixes the encoder's layers); ``hidden_states``: the Transformer's config.json sets ``output_hidden_states``,
    without which that module changes nothing, as in sentence-transformers."""
    pooling, modes, heads, dim, token_heads = None, (), [], hidden_size, 0
    if pooling_modes is not None:
        pooling, modes = {}, tuple(pooling_modes)
    for kind, config, path in modules:
        if kind == "pooling":
            if pooling is not None:
                raise ValueError(f"{where} has more than one Pooling module" if pooling_modes is None else
                                 f"{where}: its input module pools by itself; a Pooling module after it is not "
                                 "supported")
            pooling, modes = config, pooling_modes_from_config(config)
            dim *= len(modes)
        elif kind == "weighted_layer_pooling" and pooling is None and not heads and pooling_modes is None:
            head, dim = weighted_layer_pooling.head(config, dim, path, hidden_states=hidden_states)
            heads.append(head)
            token_heads = 1
        elif pooling is None and kind != "dropout":
            raise ValueError(f"{where}: a {kind} module before Pooling is not supported")
        elif kind in HEADS:
            head, dim = HEADS[kind](config, dim, path)
            heads.append(head)
    if pooling is None:
        raise ValueError(f"{where} has no Pooling module; jaxst needs one to make sentence embeddings")
    return SentenceEncoder(encoder, modes, bool(pooling.get("include_prompt", True)), heads, token_heads), dim


def save(spec, context: SaveContext) -> ModuleFiles:
    """Its config; a mean pooling jaxst made up for a bare transformer folder gets the width it pools
    (``hidden_size``; DistilBERT calls it ``dim``)."""
    config = {**spec.config, **context.settings}
    if "word_embedding_dimension" not in config and "embedding_dimension" not in config:
        hf = context.hf_config or {}
        config["word_embedding_dimension"] = int(hf.get("hidden_size", hf.get("dim")))
    return ModuleFiles({"config.json": config})
