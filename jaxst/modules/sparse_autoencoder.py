"""SparseAutoEncoder: CSR's top-k autoencoder over dense embeddings (SparseEncoder).

Config: ``input_dim`` (the dense embedding's width), ``hidden_dim``, ``k``, ``k_aux``, ``normalize``,
``dead_threshold``. Tensors: ``pre_bias``, ``encoder.weight`` (the decoder is its transpose; safetensors may keep
it as ``decoder.linear.weight``), ``latent_bias``, and the ``stats_last_nonzero`` buffer. Forward: ``CSREncoder``
(a dense sentence encoder, then the top-k code).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext
from jaxst.modules._state import Aliased
from jaxst.modules.sparse_static_embedding import static_route
from jaxst.pipeline import SentenceEncoder
from jaxst.sparse import sae_normalize, sae_top_k

_PATH = "sentence_transformers.sparse_encoder.modules.sparse_auto_encoder.SparseAutoEncoder"

KIND = ModuleKind(
    kind="sparse_autoencoder",
    class_names=("SparseAutoEncoder",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="SparseAutoEncoder",
    family="SparseEncoder",
    forward="jaxst.modules.sparse_autoencoder:CSREncoder",
    save="jaxst.modules.sparse_autoencoder:save",
)


class SparseAutoEncoder(nnx.Module):
    """sentence-transformers' SparseAutoEncoder (CSR, "Beyond Matryoshka"): a dense embedding (B, D) ->
    ``hidden_dim`` latents, of which the ``k`` largest are kept (then relu). PyTorch names: ``pre_bias``,
    ``encoder.weight`` (the decoder is its transpose), ``latent_bias``."""

    def __init__(self, input_dim: int, hidden_dim: int = 512, k: int = 8, k_aux: int = 512, normalize: bool = False,
                 dead_threshold: int = 30, *, rngs: nnx.Rngs):
        self.pre_bias = nnx.Param(jnp.zeros((input_dim,), jnp.float32))
        self.encoder = nnx.Linear(input_dim, hidden_dim, use_bias=False, rngs=rngs)
        self.latent_bias = nnx.Param(jnp.zeros((hidden_dim,), jnp.float32))
        self.k, self.k_aux, self.normalize, self.dead_threshold = k, k_aux, normalize, dead_threshold

    def latents(self, x):
        """Pre-activation latents (B, hidden_dim)."""
        if self.normalize:
            x, _, _ = sae_normalize(x)
        return (x - self.pre_bias[...]) @ self.encoder.kernel[...] + self.latent_bias[...]

    def decode(self, latents, info=None):
        """Reconstructed dense embeddings from latents (the tied decoder), un-normalized with ``info``."""
        out = latents @ self.encoder.kernel[...].T + self.pre_bias[...]
        if self.normalize:
            mu, std = info
            out = out * std + mu
        return out

    def training_outputs(self, x, stats=None) -> dict:
        """What CSRLoss reads, as sentence-transformers' SparseAutoEncoder returns it in training: the top-k
        and top-4k reconstructions and the auxiliary reconstruction from the top ``k_aux`` latents of the
        dead ones. ``stats`` (hidden_dim,) int32: PyTorch's ``stats_last_nonzero`` buffer, the forward
        passes since each latent was last among a top-k with a value above 1e-5 (None: zeros, a fresh
        model's); a latent is dead past ``dead_threshold``. The top-k, then the top-4k selection update it,
        the auxiliary term reads it after the first, as PyTorch's forward does; the updated counts come
        back as ``sae_stats``."""
        info = None
        prepared = x
        if self.normalize:
            prepared, mu, std = sae_normalize(x)
            info = (mu, std)
        pre = (prepared - self.pre_bias[...]) @ self.encoder.kernel[...] + self.latent_bias[...]
        stats = jnp.zeros(pre.shape[-1], jnp.int32) if stats is None else jnp.asarray(stats, jnp.int32)
        stats = _count_inactive(stats, pre, self.k)
        latents_k = sae_top_k(pre, self.k)
        recons_k = self.decode(latents_k, info)
        # with normalize, the bias and the auxiliary reconstruction are scaled by the std (not shifted by the
        # mean), as sentence-transformers does
        scale = 1.0 if info is None else info[1]
        out = {
            "sentence_embedding": latents_k,
            "sentence_embedding_backbone": x,
            "sentence_embedding_encoded": pre,
            "decoded_embedding_k": recons_k,
            "decoded_embedding_4k": self.decode(sae_top_k(pre, 4 * self.k), info),
            "decoded_embedding_k_pre_bias": recons_k - self.pre_bias[...] * scale,
        }
        if self.k_aux:
            masked = pre * (stats > self.dead_threshold)
            aux = sae_top_k(masked, self.k_aux) @ self.encoder.kernel[...].T + self.pre_bias[...]
            out["decoded_embedding_aux"] = aux * scale
        out["sae_stats"] = _count_inactive(stats, pre, 4 * self.k)
        return out


def _count_inactive(stats, pre, k: int):
    """One top-``k`` selection's update of ``stats_last_nonzero``: 0 for the latents selected with a value
    above 1e-5 in any row, then every count + 1."""
    values, indices = jax.lax.top_k(jax.lax.stop_gradient(pre), min(k, pre.shape[-1]))
    hit = jnp.zeros_like(stats).at[indices.reshape(-1)].add((values > 1e-5).astype(stats.dtype).reshape(-1))
    return stats * (1 - jnp.minimum(hit, 1)) + 1


class CSREncoder(SentenceEncoder):
    """A dense sentence encoder (Transformer, Pooling, Dense/Normalize) followed by a SparseAutoEncoder."""

    def __init__(self, sentence: SentenceEncoder, sae: SparseAutoEncoder):
        super().__init__(sentence.encoder, sentence.pooling_modes, sentence.include_prompt, list(sentence.heads))
        self.sae = sae

    def __call__(self, batch: dict, dropout_rng=None) -> dict:
        """Inference: the top-k code, the latents and the dense embedding. With ``batch["sae_training"]`` (any
        value; ``jaxst.training`` sets it for losses that need it) also the reconstructions CSRLoss reads,
        the dead-latent counts taken from ``batch.get("sae_stats")`` and returned updated (``sae_stats``)."""
        if (static := static_route(self, batch)) is not None:
            return static
        dense = super().__call__(batch, dropout_rng)["sentence_embedding"]
        if "sae_training" in batch:
            return self.sae.training_outputs(dense, batch.get("sae_stats"))
        latents = self.sae.latents(dense)
        return {"sentence_embedding": sae_top_k(latents, self.sae.k), "latents": latents, "dense_embedding": dense}


def build(sentence: SentenceEncoder, dim: int, config: dict, path) -> CSREncoder:
    """The CSR module: ``sentence`` (abstract, ``dim`` wide) then the autoencoder a saved config describes."""
    if int(config.get("input_dim", -1)) != dim:
        raise ValueError(f"{path}: SparseAutoEncoder input_dim {config.get('input_dim')} != the dense "
                         f"embedding's {dim}")
    sae = nnx.eval_shape(lambda: SparseAutoEncoder(
        dim, int(config.get("hidden_dim", 512)), int(config.get("k", 8)), int(config.get("k_aux", 512)),
        bool(config.get("normalize", False)), int(config.get("dead_threshold", 30)), rngs=nnx.Rngs(0)))
    return CSREncoder(sentence, sae)


def load_params(load, module: SparseAutoEncoder, state_dict) -> tuple[dict, dict]:
    """``(params, buffers)``: the autoencoder's params (``load``: the facade's ``load_params``) and
    ``{"sae_stats": stats_last_nonzero}`` as int32 (zeros where the folder has none)."""
    sd = Aliased(state_dict, {"encoder.weight": "decoder.linear.weight"})
    params = load(module, sd)
    hidden = module.latent_bias.shape[0]
    stats = np.asarray(sd["stats_last_nonzero"]) if "stats_last_nonzero" in sd else np.zeros(hidden)
    return params, {"sae_stats": jnp.asarray(stats, jnp.int32)}


@functools.partial(jax.jit, static_argnames=("k",))
def top_k_code(latents, *, k: int):
    """The top-``k`` code of precomputed latents (``max_active_dims`` other than the module's own ``k``)."""
    return sae_top_k(latents, k)


def save(spec, context: SaveContext) -> ModuleFiles:
    """Its config and ``params["sae"]``, with its ``stats_last_nonzero`` buffer (``SaveContext.buffers``)."""
    return ModuleFiles({"config.json": {**spec.config, **context.settings}}, ((("sae",), ""),),
                       unmapped=dict(context.buffers))
