"""Transformer: the encoder (or a fill-mask / sequence-classification / text-generation model) every pipeline starts
with. Its architecture is one file of ``jaxst.models``; its settings are in ``sentence_bert_config.json``.
Saved: ``config.json`` (the architecture's), ``sentence_bert_config.json``, the tokenizer files and its
``model.safetensors`` (where the family keeps its params: ``SaveContext.weights``)."""

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext

KIND = ModuleKind(
    kind="transformer",
    class_names=("Transformer", "MLMTransformer"),  # MLMTransformer: the pre-v5 name of a fill-mask Transformer
    type_path="sentence_transformers.models.Transformer",
    v6_type_path="sentence_transformers.base.modules.transformer.Transformer",
    folder_name=None,  # saved at the folder's root
    config_files=("sentence_bert_config.json",),
    save="jaxst.modules.transformer:save",
)


def hf_config_as_saved(config: dict) -> dict:
    """config.json as loaded, saying float32 where it names a dtype: the weights are written in float32, and
    transformers 5 loads a checkpoint in the dtype its config names."""
    config = dict(config)
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    return config


def save(spec, context: SaveContext) -> ModuleFiles:
    """config.json, sentence_bert_config.json (the loaded one, e.g. its transformer_task, with the family's
    current settings and length), the tokenizer, and ``params["encoder"]`` unless the family says where."""
    config = {**spec.config, **context.settings}
    config["max_seq_length"] = int(context.max_seq_length)
    config["do_lower_case"] = bool(config.get("do_lower_case", False))
    return ModuleFiles({"config.json": hf_config_as_saved(context.hf_config), "sentence_bert_config.json": config},
                       context.weights or ((("encoder",), ""),), tokenizer=True)
