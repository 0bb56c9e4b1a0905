"""LayerNorm: layer normalization of the sentence embedding (with a learned scale and shift); its params are a
head's.

Config: ``dimension``. Tensors: ``norm.weight`` / ``norm.bias`` (``params["heads"][i]``), PyTorch's
``nn.LayerNorm(dimension)`` (epsilon 1e-5).
"""

from __future__ import annotations

from flax import nnx

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="layer_norm",
    class_names=("LayerNorm",),
    type_path="sentence_transformers.models.LayerNorm",
    v6_type_path="sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm",
    folder_name="LayerNorm",
    config_required=True,
    head=True,
    head_params=True,
    forward="jaxst.modules.layer_norm:LayerNorm",
)


class LayerNorm(nnx.Module):
    """sentence-transformers' LayerNorm module: PyTorch's ``nn.LayerNorm`` over the embedding (the variance
    computed as PyTorch does, not as E[x^2] - E[x]^2)."""

    def __init__(self, dimension: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(dimension, epsilon=1e-5, use_fast_variance=False, rngs=rngs)

    def __call__(self, x):
        return self.norm(x)


def head(config: dict, dim: int, path) -> tuple[LayerNorm, int]:
    """The abstract LayerNorm a saved config describes, after a ``dim``-wide input (its width unchanged)."""
    if config.get("dimension") != dim:
        raise ValueError(f"{path}: LayerNorm dimension {config.get('dimension')} != input dim {dim}")
    return nnx.eval_shape(lambda: LayerNorm(dim, rngs=nnx.Rngs(0))), dim
