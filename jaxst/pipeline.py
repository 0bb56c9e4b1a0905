"""The sentence-embedding pipeline as one NNX module, and its pure jitted forward.

    ids, mask ─▶ encoder ─▶ token states (B, T, H) ─▶ pool ─▶ [Dense | Normalize]* ─▶ (B, D)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxst.pooling import normalize, pool, pooling_modes_from_config


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


class Normalize(nnx.Module):
    def __call__(self, x):
        return normalize(x)


def is_packed(batch) -> bool:
    """A packed batch (``jaxst.training.pack_columns``): several texts per row, gathered back per text."""
    return isinstance(batch, dict) and "unpack_index" in batch


class SentenceEncoder(nnx.Module):
    """encoder + pooling + the modules after it (Dense, Normalize), in modules.json order."""

    def __init__(self, encoder: nnx.Module, pooling_modes: tuple[str, ...], include_prompt: bool = True,
                 heads: list[nnx.Module] | None = None):
        self.encoder = encoder
        self.pooling_modes = tuple(pooling_modes)
        self.include_prompt = include_prompt
        self.heads = nnx.List(heads or [])

    def __call__(self, batch: dict, dropout_rng=None) -> dict:
        """``dropout_rng``: a PRNG key to run the encoder with training dropout; None for inference.

        A packed batch (``jaxst.training.pack_columns``) holds several texts per row; its token states are
        gathered back into one right-padded row per text before pooling, so every pooling mode
        and head sees what it would for the unpacked batch."""
        if is_packed(batch):
            segments = batch["segment_ids"]  # (rows, R): the text each token belongs to, -1 for padding
            same_text = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] >= 0)
            packed = self.encoder(batch["input_ids"], same_text, batch.get("token_type_ids"),
                                  dropout_rng=dropout_rng, positions=batch["positions"])  # (rows, R, H)
            index = batch["unpack_index"]  # (columns, B, R) -> flat token slots
            mask = batch["attention_mask"].reshape(-1, index.shape[-1])  # (columns * B, R)
            tokens = packed.reshape(-1, packed.shape[-1])[index.reshape(mask.shape)]  # (columns * B, R, H)
        else:
            mask = batch["attention_mask"]
            tokens = self.encoder(batch["input_ids"], mask, batch.get("token_type_ids"), dropout_rng=dropout_rng)
        tokens = tokens.astype(jnp.float32)  # pooling and heads in float32, whatever the encoder computed in
        prompt_length = None if self.include_prompt else batch.get("prompt_length")
        x = pool(tokens, mask, self.pooling_modes, prompt_length)  # (B, H * len(modes))
        for head in self.heads:
            x = head(x)
        return {"sentence_embedding": x, "token_embeddings": tokens}


def dense_head(config: dict, dim: int, path) -> tuple[Dense, int]:
    """The abstract Dense module a saved Dense config describes, after a ``dim``-wide input, and its
    output width."""
    if config.get("in_features") != dim:
        raise ValueError(f"{path}: Dense in_features {config.get('in_features')} != input dim {dim}")
    activation = dense_activation_name(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    head = nnx.eval_shape(lambda: Dense(config["in_features"], config["out_features"], config.get("bias", True),
                                        activation, config.get("use_residual", False), rngs=nnx.Rngs(0)))
    return head, config["out_features"]


def sentence_encoder(encoder: nnx.Module, hidden_size: int, modules: list, where) -> tuple[SentenceEncoder, int]:
    """The abstract ``SentenceEncoder`` over ``encoder`` for the modules after the Transformer, and its
    output dimension. ``modules``: ``(kind, config, path)`` in modules.json order ("pooling", "dense",
    "normalize", "dropout"); exactly one Pooling, before any Dense or Normalize. ``where`` names the
    model folder in errors."""
    pooling, modes, heads, dim = None, (), [], hidden_size
    for kind, config, path in modules:
        if kind == "pooling":
            if pooling is not None:
                raise ValueError(f"{where} has more than one Pooling module")
            pooling, modes = config, pooling_modes_from_config(config)
            dim *= len(modes)
        elif pooling is None and kind != "dropout":
            raise ValueError(f"{where}: a {kind} module before Pooling is not supported")
        elif kind == "dense":
            head, dim = dense_head(config, dim, path)
            heads.append(head)
        elif kind == "normalize":
            heads.append(Normalize())
    if pooling is None:
        raise ValueError(f"{where} has no Pooling module; jaxst needs one to make sentence embeddings")
    return SentenceEncoder(encoder, modes, bool(pooling.get("include_prompt", True)), heads), dim


@functools.partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, params, batch: dict) -> dict:
    """Pure forward: ``{"sentence_embedding": (B, D), "token_embeddings": (B, T, H)}``."""
    return nnx.merge(graphdef, params)(batch)
