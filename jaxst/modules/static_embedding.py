"""SparseStaticEmbedding: one learned weight per vocabulary entry, a Router's query route (SparseEncoder)."""

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.sparse_encoder.modules.sparse_static_embedding.SparseStaticEmbedding"

KIND = ModuleKind(
    kind="static_embedding",
    class_names=("SparseStaticEmbedding",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name=None,  # saved in a Router's folder under the name it was loaded from
    family="SparseEncoder",
    forward="jaxst.sparse:static_embedding",
)
