"""Normalize: L2 normalization; a head without params (no config keys, no tensors)."""

from __future__ import annotations

from flax import nnx

from jaxst.modules._kind import ModuleKind
from jaxst.pooling import normalize

KIND = ModuleKind(
    kind="normalize",
    class_names=("Normalize",),
    type_path="sentence_transformers.models.Normalize",
    v6_type_path="sentence_transformers.base.modules.normalize.Normalize",
    folder_name="Normalize",
    head=True,
    forward="jaxst.modules.normalize:Normalize",
)


class Normalize(nnx.Module):
    def __call__(self, x):
        return normalize(x)


def head(config: dict, dim: int, path) -> tuple[Normalize, int]:
    """The head (its width unchanged)."""
    return Normalize(), dim
