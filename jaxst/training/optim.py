"""The optimizer side of training: sentence-transformers' ``fit`` recipe as an optax transformation, the
learning-rate schedules it uses, and ``TrainState``, what a training loop carries from step to step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


def require_optax():
    """The optax module, or an ImportError that names the extra to install."""
    try:
        import optax
    except ImportError:
        raise ImportError("jaxst.training needs optax: pip install 'jaxst[train]'") from None
    return optax


class TrainState(NamedTuple):
    """What a training loop carries from step to step: a pytree that jit, orbax and optax all accept."""

    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken
    # What the forward updates besides params (a model's ``buffers``: a CSR model's dead-latent counts);
    # None for models without any. make_train_step fills it from the model on the first step.
    model_state: Any = None

    @classmethod
    def create(cls, params, optimizer, model_state=None) -> TrainState:
        """A fresh state: a copy of ``params`` (a model's own params stay untouched) and ``optimizer.init``;
        ``model_state``: e.g. ``model.buffers`` (None: make_train_step takes the model's on its first step)."""
        params = jax.tree.map(jnp.array, params)
        if model_state is not None:
            model_state = jax.tree.map(jnp.array, model_state)
        return cls(params, optimizer.init(params), jnp.zeros((), jnp.int32), model_state)


def linear_schedule_with_warmup(learning_rate: float, warmup_steps: int, total_steps: int) -> Callable:
    """transformers' ``get_linear_schedule_with_warmup``: 0 -> ``learning_rate`` over ``warmup_steps``
    (the first step runs at 0 when there is warmup), then linearly down to 0 at ``total_steps``."""
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got {warmup_steps} and {total_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = step / max(1, warmup_steps)
        decay = jnp.maximum(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
        return learning_rate * jnp.where(step < warmup_steps, warmup, decay)

    return schedule


def weight_decay_mask(params) -> Any:
    """True for the params AdamW decays: all but biases and LayerNorm weights (sentence-transformers'
    ``no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]``)."""
    def decays(path, _):
        names = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        return not (names[-1] == "bias" or any(n == "LayerNorm" for n in names))

    return jax.tree_util.tree_map_with_path(decays, params)


def constant_schedule_with_warmup(learning_rate: float, warmup_steps: int) -> Callable:
    """transformers' ``get_constant_schedule_with_warmup``: 0 -> ``learning_rate`` over ``warmup_steps``,
    then constant; the full rate from the first step when ``warmup_steps`` is 0."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        return learning_rate * jnp.where(step < warmup_steps, step / max(1, warmup_steps), 1.0)

    return schedule


def default_optimizer(learning_rate: float = 2e-5, total_steps: int = 0, warmup_steps: int = 0,
                      weight_decay: float = 0.01, max_grad_norm: float | None = 1.0, b1: float = 0.9,
                      b2: float = 0.999, eps: float = 1e-8):
    """sentence-transformers' ``fit`` recipe as an optax transformation (see the module docstring).
    ``total_steps`` 0 keeps the learning rate constant after warmup."""
    optax = require_optax()

    if total_steps:
        lr = linear_schedule_with_warmup(learning_rate, warmup_steps, total_steps)
    else:
        lr = constant_schedule_with_warmup(learning_rate, warmup_steps)
    adamw = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)
    if max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)
