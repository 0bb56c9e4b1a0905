"""Normalize: L2 normalization; a head without params."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="normalize",
    class_names=("Normalize",),
    type_path="sentence_transformers.models.Normalize",
    v6_type_path="sentence_transformers.base.modules.normalize.Normalize",
    folder_name="Normalize",
    head=True,
    forward="jaxst.pipeline:Normalize",
)
