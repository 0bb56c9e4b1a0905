"""Dense: activation(linear(x)) [+ residual], on sentence or token embeddings; its params are a head's."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="dense",
    class_names=("Dense",),
    type_path="sentence_transformers.models.Dense",
    v6_type_path="sentence_transformers.base.modules.dense.Dense",
    folder_name="Dense",
    config_required=True,
    head=True,
    head_params=True,
    forward="jaxst.pipeline:dense_head",
)
