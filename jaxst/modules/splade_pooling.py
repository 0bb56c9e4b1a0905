"""SpladePooling: a masked-LM's token logits -> one sparse vocabulary-wide vector (SparseEncoder)."""

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling"

KIND = ModuleKind(
    kind="splade_pooling",
    class_names=("SpladePooling",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="SpladePooling",
    config_required=True,
    family="SparseEncoder",
    forward="jaxst.sparse:splade_pool",
)
