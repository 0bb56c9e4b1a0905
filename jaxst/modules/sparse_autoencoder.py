"""SparseAutoEncoder: CSR's top-k autoencoder over dense embeddings (SparseEncoder)."""

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.sparse_encoder.modules.sparse_auto_encoder.SparseAutoEncoder"

KIND = ModuleKind(
    kind="sparse_autoencoder",
    class_names=("SparseAutoEncoder",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="SparseAutoEncoder",
    family="SparseEncoder",
)
