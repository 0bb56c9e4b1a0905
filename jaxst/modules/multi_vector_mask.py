"""MultiVectorMask: which tokens a multi-vector embedding keeps (skiplist words, kept ids) (MultiVectorEncoder)."""

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask"

KIND = ModuleKind(
    kind="multi_vector_mask",
    class_names=("MultiVectorMask",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="MultiVectorMask",
    family="MultiVectorEncoder",
)
