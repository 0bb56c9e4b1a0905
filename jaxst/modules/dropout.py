"""Dropout: a no-op at inference."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="dropout",
    class_names=("Dropout",),
    type_path="sentence_transformers.models.Dropout",
    v6_type_path="sentence_transformers.sentence_transformer.modules.dropout.Dropout",
    folder_name="Dropout",
    forward="jaxst.modules.dense:identity"  # inference: dropout passes its input on,
)
