"""Pooling: token states -> one vector per text (mean, CLS, max, last token, ...)."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="pooling",
    class_names=("Pooling",),
    type_path="sentence_transformers.models.Pooling",
    v6_type_path="sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    folder_name="Pooling",
    config_required=True,
    forward="jaxst.pooling:pool",
)
