"""Token pooling: merges a document's similar token embeddings (HierarchicalTokenPooling; LambdaTokenPooling holds
code, which jaxst reads but refuses to run) (MultiVectorEncoder)."""

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.multi_vector_encoder.modules.token_pooling.HierarchicalTokenPooling"

KIND = ModuleKind(
    kind="token_pooling",
    class_names=("HierarchicalTokenPooling", "LambdaTokenPooling"),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="HierarchicalTokenPooling",
    family="MultiVectorEncoder",
)
