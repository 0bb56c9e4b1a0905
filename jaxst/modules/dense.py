"""Dense: activation(linear(x)) [+ residual], on sentence or token embeddings; its params are a head's.

Config: ``in_features``, ``out_features``, ``bias``, ``activation_function`` (a torch class path, both ways:
``dense_activation_name`` reads it, ``torch_activation_path`` writes it), ``use_residual``. Tensors:
``linear.weight`` / ``linear.bias`` (``params["heads"][i]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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
    forward="jaxst.modules.dense:Dense",
)


def identity(x):
    return x


# Dense activations by the PyTorch class name sentence-transformers saves (last component, lower case).
DENSE_ACTIVATIONS = {
    "identity": identity,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
}


def dense_activation_name(saved: str | None) -> str:
    """``torch.nn.modules.activation.Tanh`` -> ``tanh``; a clear error for anything else."""
    name = "identity" if saved is None else saved.rsplit(".", 1)[-1].lower()
    if name not in DENSE_ACTIVATIONS:
        raise ValueError(f"unsupported Dense activation_function {saved!r}; supported: {sorted(DENSE_ACTIVATIONS)}")
    return name


# A jaxst activation name -> the torch class sentence-transformers saves and re-imports.
TORCH_ACTIVATIONS = {
    "identity": "torch.nn.modules.linear.Identity",
    "tanh": "torch.nn.modules.activation.Tanh",
    "relu": "torch.nn.modules.activation.ReLU",
    "gelu": "torch.nn.modules.activation.GELU",
    "sigmoid": "torch.nn.modules.activation.Sigmoid",
    "silu": "torch.nn.modules.activation.SiLU",
    "softplus": "torch.nn.modules.activation.Softplus",
}


def torch_activation_path(name: str) -> str:
    """A jaxst activation name (``DENSE_ACTIVATIONS``) -> the torch class sentence-transformers saves."""
    return TORCH_ACTIVATIONS[name]


def activation_name(fn) -> str | None:
    """The name in ``DENSE_ACTIVATIONS`` of the function ``fn`` is, or None."""
    return next((name for name, candidate in DENSE_ACTIVATIONS.items() if fn is candidate), None)


class Dense(nnx.Module):
    """sentence-transformers' Dense module: activation(linear(x)) [+ residual]."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "tanh",
                 use_residual: bool = False, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(in_features, out_features, use_bias=bias, rngs=rngs)
        self.activation = activation
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = nnx.Linear(in_features, out_features, use_bias=False, rngs=rngs)

    def __call__(self, x):
        out = DENSE_ACTIVATIONS[self.activation](self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


def head(config: dict, dim: int, path) -> tuple[Dense, int]:
    """The abstract Dense module a saved Dense config describes, after a ``dim``-wide input, and its
    output width."""
    if config.get("in_features") != dim:
        raise ValueError(f"{path}: Dense in_features {config.get('in_features')} != input dim {dim}")
    activation = dense_activation_name(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    head = nnx.eval_shape(lambda: Dense(config["in_features"], config["out_features"], config.get("bias", True),
                                        activation, config.get("use_residual", False), rngs=nnx.Rngs(0)))
    return head, config["out_features"]
