"""A Stanford-NLP ColBERT checkpoint's projection: a bias-free linear whose ``linear.weight`` sits beside the
encoder's tensors. No modules.json names it (jaxst builds it for a Stanford folder); it is a Dense head and is
saved as a Dense module."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="stanford_projection",
    class_names=(),  # never read from modules.json
    type_path=None,  # saved as a Dense (MultiVectorEncoder.folder_plan rewrites it)
    v6_type_path=None,
    folder_name=None,
    head=True,
    head_params=True,
    forward="jaxst.pipeline:Dense",
)
