"""Adaptive layers: a loss over the sentence embeddings the model makes from each of its encoder's layers, so
that a model cut after fewer layers still embeds well (AdaptiveLayerLoss), and that with Matryoshka dimensions
(Matryoshka2dLoss, 2DMSE).

These losses read every layer: the train step runs the encoder once with all its hidden states and pools each
one through the model's Pooling and later modules (``needs_layers``; ``SentenceEncoder(all_layers=True)``), so
each column arrives as ``(S, B, D)``: the embedding output first, the last layer's (the usual sentence
embedding) last, as sentence-transformers' ``all_layer_embeddings``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from jaxst.checks import callable_arg
from jaxst.losses.base import Loss
from jaxst.losses.matryoshka import MatryoshkaLoss

LAYER_WEIGHTINGS = ("uniform", "log", "linear")


def layer_columns(embeddings, name: str) -> list[jax.Array]:
    """The per-layer columns a layer loss receives: a list of (S, B, D) arrays, one per input column."""
    if isinstance(embeddings, jax.Array) or not isinstance(embeddings, Sequence) or not embeddings:
        raise TypeError(f"{name} expects a list of (layers, batch, dim) arrays, one per input column (the train "
                        f"step gives it these: the loss has needs_layers), got {type(embeddings).__name__}")
    columns = [jnp.asarray(c) for c in embeddings]
    for i, c in enumerate(columns):
        if c.ndim != 3 or c.shape[:2] != columns[0].shape[:2]:
            raise ValueError(f"{name}: column {i} must be (layers, batch, dim) like column 0 "
                             f"{tuple(columns[0].shape)}, got {tuple(c.shape)}")
    return columns


class AdaptiveLayerLoss(Loss):
    """sentence-transformers' AdaptiveLayerLoss: ``loss`` on the last layer's embeddings (x ``last_layer_weight``),
    plus, for each prior layer used this step, ``loss`` on that layer's embeddings weighted by
    ``layer_weighting`` / the number of layers used x ``prior_layers_weight``, and (``kl_temperature`` > 0) the
    KL divergence (batch mean, x ``kl_temperature`` x ``kl_div_weight``) from the last layer's softmax(embedding /
    T), held constant, to that layer's. ``n_layers_per_step`` > 0 uses that many prior layers, drawn from the
    ``rng`` key the train step passes (the original draws with Python's ``random``); -1 all of them. Layer 0 is
    the embedding output."""

    needs_layers = True

    def __init__(self, model=None, loss: Loss | None = None, n_layers_per_step: int = 1,
                 last_layer_weight: float = 1.0, prior_layers_weight: float = 1.0, kl_div_weight: float = 1.0,
                 kl_temperature: float = 0.3,
                 layer_weighting: str | Callable[[int], float] = "uniform"):
        name = type(self).__name__
        if not isinstance(loss, Loss):
            raise TypeError(f"{name} wraps a jaxst loss, got {type(loss).__name__}")
        for attribute, why in (("mini_batch_size", "it caches one batch of gradients (GradCache) while this loss "
                                                   "runs it once per layer"),
                               ("needs_outputs", "it reads every model output, not sentence embeddings"),
                               ("needs_guide", "it embeds with a guide model"),
                               ("needs_layers", "it already reads every layer")):
            if getattr(loss, attribute, None):
                raise ValueError(f"{name} is not compatible with {type(loss).__name__}: {why}")
        if getattr(loss, "params", None) is not None:
            raise ValueError(f"{name} cannot wrap {type(loss).__name__}, a loss with params of its own")
        if not callable(layer_weighting) and layer_weighting not in LAYER_WEIGHTINGS:
            raise ValueError(f'layer_weighting must be "uniform", "log", "linear", or a callable, but got '
                             f"{layer_weighting!r}.")
        if model is not None and getattr(model, "hf_config", None) is None:
            raise ValueError(f"{name} needs a model whose first module is a Transformer (its layers); "
                             f"{type(model).__name__} has none (a StaticEmbedding model?)")
        self.loss = loss
        self.n_layers_per_step = int(n_layers_per_step)
        self.last_layer_weight = float(last_layer_weight)
        self.prior_layers_weight = float(prior_layers_weight)
        self.kl_div_weight = float(kl_div_weight)
        self.kl_temperature = float(kl_temperature)
        self.layer_weighting = layer_weighting if isinstance(layer_weighting, str) else \
            callable_arg("layer_weighting", layer_weighting)

    def layer_weight(self, layer: int) -> float:
        if not isinstance(self.layer_weighting, str):
            return float(self.layer_weighting(layer))
        if self.layer_weighting == "log":
            return 1.0 / (1.0 + math.log(1 + layer))
        if self.layer_weighting == "linear":
            return 1.0 / (1 + layer)
        return 1.0

    def _chosen(self, prior: int, rng) -> tuple[list, int]:
        """(one multiplier per prior layer: 1 if used this step, else 0; how many are used)."""
        if not 0 < self.n_layers_per_step < prior:
            return [1.0] * prior, prior
        if rng is None:
            raise ValueError(f"{type(self).__name__} with n_layers_per_step > 0 needs an rng key to choose layers")
        picked = jax.random.choice(rng, prior, (self.n_layers_per_step,), replace=False)
        mask = jnp.zeros(prior).at[picked].set(1.0)
        return [mask[i] for i in range(prior)], self.n_layers_per_step

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        columns = layer_columns(embeddings, type(self).__name__)
        prior = columns[0].shape[0] - 1

        def inner_rng(i):
            return None if rng is None else jax.random.fold_in(rng, i + 1)

        final = [c[-1] for c in columns]
        total = self.loss(final, labels, inner_rng(prior)) * self.last_layer_weight
        if prior == 0:
            return total
        on, used = self._chosen(prior, None if rng is None else jax.random.fold_in(rng, 0))
        temperature = self.kl_temperature
        if temperature > 0:  # the last layer is the self-distillation teacher: constant in the gradient
            target = jax.lax.stop_gradient(jax.nn.softmax(jnp.concatenate(final) / temperature, axis=-1))
        for layer in range(prior):
            layer_columns_ = [c[layer] for c in columns]
            term = self.loss(layer_columns_, labels, inner_rng(layer)) * (
                self.layer_weight(layer) / used * self.prior_layers_weight)
            if temperature > 0:
                log_probs = jax.nn.log_softmax(jnp.concatenate(layer_columns_) / temperature, axis=-1)
                kl = jnp.sum(xlogy(target, target) - target * log_probs) / log_probs.shape[0]
                term = term + kl * temperature * self.kl_div_weight
            total = total + on[layer] * term
        return total

    def sharded(self, embeddings, labels, axis_name: str, rng=None) -> jax.Array:
        """Every device's rows gathered (along the batch axis of each (S, B, D) column), the global loss computed
        on each device, and 1/n of it returned."""
        columns = [jax.lax.all_gather(c, axis_name, axis=1, tiled=True) for c in layer_columns(embeddings,
                                                                                                 type(self).__name__)]
        if labels is not None:
            labels = jax.lax.all_gather(jnp.asarray(labels).reshape(-1), axis_name, tiled=True)
        return self(columns, labels, rng) / jax.lax.axis_size(axis_name)


class Matryoshka2dLoss(AdaptiveLayerLoss):
    """sentence-transformers' Matryoshka2dLoss (2DMSE): AdaptiveLayerLoss over a MatryoshkaLoss of ``loss``, so
    that both fewer layers and fewer dimensions embed well; ``n_layers_per_step`` and ``n_dims_per_step``
    default to 1, as in the original."""

    def __init__(self, model=None, loss: Loss | None = None, matryoshka_dims: Sequence[int] = (),
                 matryoshka_weights: Sequence[float] | None = None, n_layers_per_step: int = 1,
                 n_dims_per_step: int = 1, last_layer_weight: float = 1.0, prior_layers_weight: float = 1.0,
                 kl_div_weight: float = 1.0, kl_temperature: float = 0.3,
                 layer_weighting: str | Callable[[int], float] = "uniform"):
        matryoshka = MatryoshkaLoss(model, loss, matryoshka_dims, matryoshka_weights, n_dims_per_step)
        super().__init__(model, matryoshka, n_layers_per_step=n_layers_per_step,
                         last_layer_weight=last_layer_weight, prior_layers_weight=prior_layers_weight,
                         kl_div_weight=kl_div_weight, kl_temperature=kl_temperature,
                         layer_weighting=layer_weighting)
