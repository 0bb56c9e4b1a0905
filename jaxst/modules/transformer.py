"""Transformer: the encoder (or a fill-mask / sequence-classification / text-generation model) every pipeline starts
with. Its architecture is one file of ``jaxst.models``; its settings are in ``sentence_bert_config.json``."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="transformer",
    class_names=("Transformer", "MLMTransformer"),  # MLMTransformer: the pre-v5 name of a fill-mask Transformer
    type_path="sentence_transformers.models.Transformer",
    v6_type_path="sentence_transformers.base.modules.transformer.Transformer",
    folder_name=None,  # saved at the folder's root
    config_files=("sentence_bert_config.json",),
)
