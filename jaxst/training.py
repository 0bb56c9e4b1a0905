"""Fine-tuning: a jitted train step for your own optax loop, orbax checkpoints, and a short ``fit``.

    from jaxst import losses, training
    loss = losses.MultipleNegativesRankingLoss()
    optimizer = training.default_optimizer(learning_rate=2e-5, total_steps=1000, warmup_steps=100)
    state = training.TrainState.create(model.params, optimizer)
    step_fn = training.make_train_step(model, loss, optimizer)
    batch = training.collate(model, [("anchor", "positive"), ...])  # {"features": [...], "labels": ...}
    state, metrics = step_fn(state, batch, jax.random.key(0))       # dropout from the key
    model.params = state.params

Everything here is a thin layer over pure functions: ``train_forward`` runs the model with dropout
from an explicit key, ``make_loss_fn`` is ``(params, batch, rng) -> loss`` (differentiable, and
sharded over a mesh when one is given), ``make_train_step`` adds any optax optimizer. The default
recipe is the one sentence-transformers' ``fit`` uses: AdamW with weight decay 0.01 on all but
biases and LayerNorm, gradients clipped to norm 1, the learning rate warmed up linearly from 0 over
``warmup_steps`` and decayed linearly to 0 at the last step.
"""

from __future__ import annotations

import ctypes
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxst.losses import Loss
from jaxst.models.layers import split_rng
from jaxst.pipeline import is_packed
from jaxst.similarity import similarity_functions

SEQ_MULTIPLE = 8  # columns are padded to a multiple of this many tokens: little padding, few shapes to compile
PACK_ROW = 128  # tokens per row of a packed batch: rows stay few (few shapes), attention per row stays cheap
LIST_ROWS = 16  # a listwise batch pads its (query, document) pairs to a multiple of this many rows: few shapes


def _optax():
    try:
        import optax
    except ImportError:
        raise ImportError("jaxst.training needs optax: pip install 'jaxst[train]'") from None
    return optax


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError("jaxst checkpoints need orbax-checkpoint: pip install 'jaxst[train]'") from None
    return ocp


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


# ------------------------------------------------------------------------------------- optimizer


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
    optax = _optax()

    if total_steps:
        lr = linear_schedule_with_warmup(learning_rate, warmup_steps, total_steps)
    else:
        lr = constant_schedule_with_warmup(learning_rate, warmup_steps)
    adamw = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask)
    if max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)


# ------------------------------------------------------------------------------ forward and loss


TRAINING_OUTPUTS = np.bool_(True)  # the "sae_training" flag: one object, so stacked columns stay stackable


def cached_embeddings(graphdef: nnx.GraphDef, params, batch: dict, mini_batch_size: int, dropout_rng=None,
                      output: str | None = "sentence_embedding"):
    """(rows, D) sentence embeddings (``output``: the module's output under that key; None: the output itself,
    a cross-encoder's (rows, labels) logits) of a tokenized batch, computed ``mini_batch_size`` rows at a time, with
    GradCache's memory bound under differentiation: the forward keeps no activations (``lax.map`` over the
    mini-batches), and the backward gets the loss's gradient for every embedding, then re-runs each
    mini-batch under ``jax.vjp`` with its slice of it and adds up the parameter gradients. The result and
    its gradients are those of the one big forward; memory grows with the mini-batch, not the batch. Each
    mini-batch draws its dropout from ``fold_in(dropout_rng, index)``, in both passes.

    A batch from ``pack_chunks`` (``collate(..., pack=True, mini_batch_size=)``) is already cut into packed
    mini-batches: each one's texts lie end to end in a few rows; the result is in the columns' order, (columns,
    B, D)."""
    arrays = {k: v for k, v in batch.items() if np.ndim(v) >= 1 and k != "order"}
    scalars = {k: v for k, v in batch.items() if np.ndim(v) == 0}
    if is_packed(batch) and "order" in batch:
        out = _cached_map(graphdef, params, arrays, scalars, dropout_rng, output)
        return out.reshape(-1, out.shape[-1])[batch["order"]]
    rows = batch["input_ids"].shape[0]
    steps = -(-rows // mini_batch_size)
    pad = steps * mini_batch_size - rows

    def chunked(x):  # padding rows repeat the first row (real tokens: no fully masked attention row)
        x = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
        return x.reshape(steps, mini_batch_size, *x.shape[1:])

    out = _cached_map(graphdef, params, {k: chunked(v) for k, v in arrays.items()}, scalars, dropout_rng, output)
    return out.reshape(steps * mini_batch_size, -1)[:rows]


def _cached_map(graphdef: nnx.GraphDef, params, chunks: dict, scalars: dict, dropout_rng, output):
    """The module over each mini-batch of ``chunks`` (arrays with a leading mini-batch axis) -> (steps, rows,
    ...), differentiable with GradCache's memory bound (see ``cached_embeddings``)."""
    index = jnp.arange(jax.tree.leaves(chunks)[0].shape[0])

    def apply(p, chunk, i):
        key = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
        out = nnx.merge(graphdef, p)({**chunk, **scalars}, dropout_rng=key)
        return out if output is None else out[output]

    @jax.custom_vjp
    def embed(p, chunks):
        return jax.lax.map(lambda xs: apply(p, *xs), (chunks, index))

    def embed_fwd(p, chunks):
        return embed(p, chunks), (p, chunks)

    def embed_bwd(residual, cotangent):
        p, chunks = residual

        def step(total, xs):
            chunk, i, g = xs
            _, vjp = jax.vjp(lambda q: apply(q, chunk, i), p)
            return jax.tree.map(jnp.add, total, vjp(g)[0]), None

        grads, _ = jax.lax.scan(step, jax.tree.map(jnp.zeros_like, p), (chunks, index, cotangent))
        return grads, jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0), chunks)

    embed.defvjp(embed_fwd, embed_bwd)
    return embed(params, chunks)


def train_forward(graphdef: nnx.GraphDef, params, features, dropout_rng=None, full_outputs: bool = False,
                  model_state: dict | None = None, mini_batch_size: int | None = None):
    """The model in training mode, as a pure function.

    ``features``: for a SentenceTransformer, a list of tokenized batches, one per input column ->
    a list of (B, D) sentence embeddings; for a CrossEncoder, one tokenized pair batch -> its raw
    logits (B, num_labels). ``dropout_rng``: a PRNG key for dropout, None for none. ``full_outputs``
    (losses with ``needs_outputs``, e.g. CSRLoss): one dict of every model output per column instead.
    ``model_state`` (with ``full_outputs``; a model's ``buffers``): each entry goes into the first column's
    batch, the module returns it updated under the same key, and that feeds the next column, as PyTorch
    updates a buffer column by column; returns ``(outputs, model_state)`` then. ``mini_batch_size``
    (cached losses): the columns' embeddings through ``cached_embeddings``."""
    if mini_batch_size is not None and isinstance(features, dict) and not is_packed(features):
        # a cross-encoder's pair batch (listwise losses with a mini_batch_size): its logits, GradCache-style
        return cached_embeddings(graphdef, params, features, mini_batch_size, dropout_rng, output=None)
    if mini_batch_size is not None and is_packed(features) and "order" in features:  # packed mini-batches
        return list(cached_embeddings(graphdef, params, features, mini_batch_size, dropout_rng))
    if mini_batch_size is not None:
        if full_outputs or not isinstance(features, (list, tuple)) or is_packed(features) or not _stackable(features):
            raise ValueError("a cached loss embeds unpacked columns of one padded length, or packed mini-batches: "
                             "build the batch with collate(model, examples) or collate(model, examples, pack=True, "
                             "mini_batch_size=loss.mini_batch_size)")
        merged, rows = _merge_columns(features)
        return jnp.split(cached_embeddings(graphdef, params, merged, mini_batch_size, dropout_rng),
                         np.cumsum(rows)[:-1])
    module = nnx.merge(graphdef, params)
    if full_outputs:
        if not isinstance(features, (list, tuple)) or is_packed(features):
            raise ValueError("this loss reads every model output per column: build unpacked column batches")
        keys = split_rng(dropout_rng, len(features))
        outputs, state = [], model_state
        for f, k in zip(features, keys):
            out = module({**f, "sae_training": TRAINING_OUTPUTS, **(state or {})}, dropout_rng=k)
            if state is not None:
                state = {name: out.pop(name) for name in state}
            outputs.append(out)
        return outputs if model_state is None else (outputs, state)
    if is_packed(features) and "order" in features:
        raise ValueError("a batch packed into mini-batches (collate(..., mini_batch_size=)) needs a cached loss; "
                         "build it with collate(model, examples, pack=True) for this one")
    if is_packed(features):  # all columns in one packed forward; the embeddings come back per column
        embeddings = module(dict(features), dropout_rng=dropout_rng)["sentence_embedding"]
        return list(embeddings.reshape(features["unpack_index"].shape[0], -1, embeddings.shape[-1]))
    if not isinstance(features, (list, tuple)):
        return module(dict(features), dropout_rng=dropout_rng)
    if _stackable(features):  # one forward over all columns: bigger matmuls, the same per-row math
        merged, rows = _merge_columns(features)
        embeddings = module(merged, dropout_rng=dropout_rng)["sentence_embedding"]
        return jnp.split(embeddings, np.cumsum(rows)[:-1])
    keys = split_rng(dropout_rng, len(features))
    return [module(dict(f), dropout_rng=k)["sentence_embedding"] for f, k in zip(features, keys)]


def _merge_columns(features) -> tuple[dict, list[int]]:
    """Stackable columns as one batch (arrays concatenated along rows, scalars kept), and each column's rows."""
    merged = {k: jnp.concatenate([f[k] for f in features]) if np.ndim(v) >= 1 else v for k, v in features[0].items()}
    return merged, [f["input_ids"].shape[0] for f in features]


def _stackable(features) -> bool:
    """Columns with the same keys, the same shapes past the batch axis and the same scalars."""
    first = features[0]
    for f in features[1:]:
        if set(f) != set(first):
            return False
        for k, v in f.items():
            if np.ndim(v) != np.ndim(first[k]) or np.shape(v)[1:] != np.shape(first[k])[1:]:
                return False
            if np.ndim(v) == 0 and v is not first[k]:
                return False
    return True


def _check_batch(batch) -> None:
    if not isinstance(batch, dict) or "features" not in batch:
        raise TypeError("a training batch is a dict {'features': ..., 'labels': ...}; build one with "
                        "jaxst.training.collate(model, examples)")


def _batch_spec(x, axis: str) -> P:
    return P(axis) if np.ndim(x) >= 1 else P()  # scalars (prompt_length) are the same on every device


def make_loss_fn(model, loss: Loss, *, dropout: bool = True, mesh: Mesh | None = None,
                 axis_name: str | None = None, model_state: bool = False) -> Callable:
    """``loss_fn(params, batch, rng=None) -> scalar``: pure and differentiable.

    ``model_state=True`` (losses that read every output, on a model with ``buffers``; one device):
    ``loss_fn(params, batch, rng) -> (scalar, new model state)``, the state read from
    ``batch["model_state"]`` and updated by the forward (``jax.value_and_grad(..., has_aux=True)``).

    With a ``mesh``, the batch is split along its first axis over the mesh axis ``axis_name`` (the
    mesh's first by default) inside ``shard_map``: each device embeds its rows, and the loss gathers
    what it needs across devices (all negatives, for in-batch-negative losses), so value and gradients
    equal the one-device ones on the same global batch. Dropout keys differ per device."""
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a jaxst.losses loss, got {type(loss).__name__}")
    graphdef = model.graphdef

    def outputs(params, features, rng, device_index=None, state=None):
        drop_rng, loss_rng = split_rng(rng, 2)
        if drop_rng is not None and device_index is not None:
            drop_rng = jax.random.fold_in(drop_rng, device_index)
        return train_forward(graphdef, params, features, drop_rng if dropout else None,
                             full_outputs=getattr(loss, "needs_outputs", False), model_state=state,
                             mini_batch_size=getattr(loss, "mini_batch_size", None)), loss_rng

    if model_state:
        if mesh is not None:
            raise ValueError("model_state is tracked on one device only; build the loss without a mesh")
        if not getattr(loss, "needs_outputs", False):
            raise ValueError(f"{type(loss).__name__} reads embeddings only: its forward updates no model state")

        def loss_fn(params, batch, rng=None):
            (out, state), loss_rng = outputs(params, batch["features"], rng, state=batch["model_state"])
            return loss(out, batch.get("labels"), loss_rng), state

        return loss_fn

    if getattr(loss, "needs_guide", False):
        if mesh is not None:
            raise ValueError(f"{type(loss).__name__} with a guide runs on one device")

        def loss_fn(params, batch, rng=None):
            if "guide" not in batch:
                raise ValueError(f"{type(loss).__name__} needs the guide's view of the batch: "
                                 "collate(model, examples, guide=loss.guide)")
            out, loss_rng = outputs(params, batch["features"], rng)
            guide = nnx.merge(loss.guide.graphdef, batch["guide"]["params"])  # params from the batch: not constants
            guided = [jax.lax.stop_gradient(guide(dict(f))["sentence_embedding"]) for f in batch["guide"]["features"]]
            return loss(out, batch.get("labels"), loss_rng, guide_embeddings=guided)

        return loss_fn

    if getattr(loss, "listwise", False) and mesh is not None:
        raise ValueError(f"{type(loss).__name__} (listwise) runs on one device; build the loss function without a mesh")

    if mesh is None:
        def loss_fn(params, batch, rng=None):
            out, loss_rng = outputs(params, batch["features"], rng)
            return loss(out, batch.get("labels"), loss_rng)

        return loss_fn

    axis = axis_name or mesh.axis_names[0]
    n_devices = mesh.shape[axis]

    def loss_fn(params, batch, rng=None):
        features, labels = batch["features"], batch.get("labels")
        if is_packed(features):
            raise ValueError("a packed batch cannot be split over devices; build it with collate(..., pack=False)")
        rows = jax.tree.leaves(features)[0].shape[0]
        if rows % n_devices:
            raise ValueError(f"a batch of {rows} rows does not split evenly over {n_devices} devices")

        def per_device(params, features, labels, rng):
            out, loss_rng = outputs(params, features, rng, jax.lax.axis_index(axis))
            return jax.lax.psum(loss.sharded(out, labels, axis, loss_rng), axis)

        specs = (P(), jax.tree.map(lambda x: _batch_spec(x, axis), features),
                 None if labels is None else P(axis), P())
        return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P())(params, features, labels, rng)

    return loss_fn


def _keep(new: dict, old: dict, paths) -> dict:
    """``new`` with the entries at ``paths`` (tuples of keys) taken from ``old``."""
    out = dict(new)
    for path in paths:
        node, source = out, old
        for key in path[:-1]:
            node[key] = dict(node[key])
            node, source = node[key], source[key]
        node[path[-1]] = source[path[-1]]
    return out


def make_train_step(model, loss: Loss, optimizer, *, dropout: bool = True, mesh: Mesh | None = None,
                    axis_name: str | None = None, donate: bool = False) -> Callable:
    """``step_fn(state, batch, rng=None) -> (state, metrics)``: one optimizer step, compiled.

    ``optimizer`` is any optax ``GradientTransformation`` (``default_optimizer()`` for the recipe).
    ``rng`` is required when ``dropout`` is on (the default, as the original trains) and by losses that
    draw (Matryoshka with ``n_dims_per_step``); derive one per step, e.g. ``jax.random.fold_in(key,
    step)``, so a resumed run draws what an uninterrupted one would. ``metrics``: ``loss`` and
    ``grad_norm`` (before clipping). ``donate=True`` lets XLA update the state in place (the state passed in
    is invalid after the step, as PyTorch's optimizer overwrites its tensors; ``fit`` donates). Params the
    model lists in ``frozen_params`` (a frozen SparseStaticEmbedding) keep their values."""
    optax = _optax()

    # A model's buffers (a CSR model's dead-latent counts) are carried in state.model_state and updated by
    # each step's forward, on one device with a loss that reads the model's outputs (CSRLoss)
    track = mesh is None and getattr(loss, "needs_outputs", False) and bool(getattr(model, "buffers", None))
    loss_fn = make_loss_fn(model, loss, dropout=dropout, mesh=mesh, axis_name=axis_name, model_state=track)

    def update(state: TrainState, grads):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(params=params, opt_state=opt_state, step=state.step + 1), optax.tree.norm(grads)

    frozen = tuple(getattr(model, "frozen_params", ()))
    if frozen:
        optimizer_update = update

        def update(state: TrainState, grads):  # frozen weights keep their values, whatever the optimizer does
            new, grad_norm = optimizer_update(state, grads)
            return new._replace(params=_keep(new.params, state.params, frozen)), grad_norm

    # Two compiled programs: the gradient, compiled once per batch shape, and the optimizer update, compiled
    # once for all shapes (it only sees params-shaped arrays). One fused program per shape would recompile
    # the whole AdamW update with every new shape (+1.3 s each for MiniLM), for no lower peak.
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=track))
    update_fn = jax.jit(update, donate_argnums=(0,) if donate else ())  # the state, updated in place
    shapes_seen: set = set()

    def step_fn(state: TrainState, batch, rng=None):
        _check_batch(batch)
        if rng is None and dropout:
            raise ValueError("dropout needs a PRNG key: call step_fn(state, batch, rng), or build the step "
                             "with make_train_step(..., dropout=False)")
        if track:
            batch = {**batch, "model_state": state.model_state if state.model_state is not None else model.buffers}
        shapes = _shapes((state.params, batch, rng))
        new_shape = shapes not in shapes_seen
        if new_shape:  # compile it first; give the compiler's scratch memory back before the step allocates its own
            grad_fn.lower(state.params, batch, rng).compile()
            shapes_seen.add(shapes)
            _release_free_memory()
        if track:
            (value, model_state), grads = grad_fn(state.params, batch, rng)
            state = state._replace(model_state=model_state)
        else:
            value, grads = grad_fn(state.params, batch, rng)
        state, grad_norm = update_fn(state, grads)
        if new_shape:  # and again after its first run (a program loaded from the persistent cache ends loading there)
            jax.block_until_ready(state)
            _release_free_memory()
        return state, {"loss": value, "grad_norm": grad_norm}

    return step_fn


# ----------------------------------------------------------------------------------- checkpoints


def checkpoint_manager(directory: str | Path, max_to_keep: int | None = None):
    """An orbax ``CheckpointManager`` over ``directory`` (created if missing): one numbered, atomically
    finalized folder per saved step; ``max_to_keep`` keeps only the newest ones."""
    ocp = _orbax()

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_checkpoint(manager, state: TrainState) -> int:
    """Save params, optimizer state and step at ``state.step``; returns the step. Waits until the
    checkpoint is on disk (orbax writes to a temporary folder and renames it when complete)."""
    ocp = _orbax()

    step = int(state.step)
    manager.save(step, args=ocp.args.StandardSave(state._asdict()))
    manager.wait_until_finished()
    return step


def restore_checkpoint(manager, like: TrainState, step: int | None = None) -> TrainState:
    """The saved state at ``step`` (the latest by default), shaped and placed like ``like``: a state of
    the same model and optimizer, e.g. ``TrainState.create(model.params, optimizer)``."""
    ocp = _orbax()

    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {manager.directory}")
    restored = manager.restore(step, args=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                                                like._asdict())))
    return TrainState(**restored)


# ------------------------------------------------------------------------------------ batches


def _example_parts(example) -> tuple[list[str], float | None]:
    """(texts, label) of one example: a tuple (text, text[, text...][, score]) or an object with
    ``texts`` and ``label`` (sentence-transformers' InputExample)."""
    if hasattr(example, "texts"):
        texts, label = list(example.texts), getattr(example, "label", None)
    elif isinstance(example, (tuple, list)):
        parts = list(example)
        label = None
        if parts and isinstance(parts[-1], numbers.Number) and not isinstance(parts[-1], bool):
            label = float(parts.pop())
        texts = parts
    else:
        raise TypeError(f"a training example is a tuple (text, text[, ...][, score]), got {type(example).__name__}")
    if len(texts) < 1 or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"a training example needs texts (str), got {example!r:.120}")
    return texts, label


def _pad_to(batch: dict, target: int, pad_id: int) -> dict:
    """Right-pad a tokenized batch to ``target`` tokens."""
    t = batch["input_ids"].shape[1]
    if target == t:
        return batch
    out = {}
    for key, value in batch.items():
        if np.ndim(value) == 2:
            fill = pad_id if key == "input_ids" else 0
            value = np.pad(value, ((0, 0), (0, target - t)), constant_values=fill)
        out[key] = value
    return out


def _grid_length(longest: int, seq_multiple: int, max_length: int) -> int:
    """The padded length of a batch whose longest text has ``longest`` tokens: the next multiple of
    ``seq_multiple``, at most ``max_length`` (never below ``longest``)."""
    return max(min(-(-longest // seq_multiple) * seq_multiple, max_length), longest)


def _column_tasks(model, router_mapping, n_columns: int) -> list[str | None]:
    """The task ("query" / "document") each column is tokenized and embedded for, from ``router_mapping``:
    a sequence of tasks, one per column, or a dict {column index: task}. Columns it leaves out take the
    model's default: a Router model's default route (as sentence-transformers' ``router_mapping`` leaves
    them), a MultiVectorEncoder's "query" for the first column and "document" for the others (as its data
    collator assigns them)."""
    defaults = model.column_tasks(n_columns) if hasattr(model, "column_tasks") else [None] * n_columns
    if router_mapping is None:
        return defaults
    if getattr(model, "router", None) is None and not hasattr(model, "column_tasks"):
        raise ValueError("router_mapping needs a model with a Router (e.g. an inference-free SparseEncoder) "
                         "or a MultiVectorEncoder")
    if isinstance(router_mapping, dict):
        bad = [k for k in router_mapping if not isinstance(k, int) or not 0 <= k < n_columns]
        if bad:
            raise ValueError(f"router_mapping keys are column indices 0..{n_columns - 1}, got {bad}")
        tasks = [router_mapping.get(i, defaults[i]) for i in range(n_columns)]
    else:
        tasks = list(router_mapping)
        if len(tasks) != n_columns:
            raise ValueError(f"router_mapping names {len(tasks)} tasks for {n_columns} columns")
    for task in tasks:
        if task is not None:
            model.tokenize([], task=task)  # an unknown task fails here, naming the model's routes
    return tasks


def collate(model, examples: Sequence, seq_multiple: int = SEQ_MULTIPLE, pack: bool = False,
            router_mapping: Sequence[str | None] | dict[int, str] | None = None, guide=None, loss=None,
            seed=None, mini_batch_size: int | None = None) -> dict:
    """Tokenize a list of examples into a training batch ``{"features", "labels"}``.

    SentenceTransformer: one tokenized batch per column (all examples need the same number of texts).
    CrossEncoder: examples are (query, document, label) and become one tokenized pair batch.
    Labels are float32, or None when no example has one. All columns are padded to one length, a
    multiple of ``seq_multiple`` tokens (at most the model's ``max_seq_length``), so that few shapes
    compile and the columns run as one forward. ``pack=True`` (SentenceTransformer only) packs all
    texts end to end instead (see ``pack_columns``): the same loss and gradients with no padding to compute.
    ``router_mapping`` (a model with a Router, e.g. an inference-free SparseEncoder): the task each column
    takes, ``["query", "document", "document"]`` or ``{0: "query"}``; each column is tokenized for its
    route and runs through it in the forward (unmapped columns: the Router's default route). ``guide`` (a
    SentenceTransformer, for losses with a guide such as GISTEmbedLoss): the columns tokenized for it too,
    with its params, under ``batch["guide"]``.
    Listwise cross-encoder batches: examples ``(query, [documents], [labels])`` become one pair batch and the
    labels dict of ``jaxst.cross_encoder_losses`` (ListNetLoss, LambdaLoss). ``loss`` with a ``lists`` method
    (the cross-encoder MultipleNegativesRankingLoss): the examples are first turned into its lists, the
    in-batch negatives drawn with ``seed``. ``pack=True`` with ``mini_batch_size`` (a cached loss's) packs the
    texts into GradCache mini-batches instead (``pack_chunks``)."""
    if not examples:
        raise ValueError("collate() needs at least one example")
    if loss is not None and hasattr(loss, "lists"):
        if not _is_cross_encoder(model):
            raise ValueError(f"{type(loss).__name__} trains a CrossEncoder, got {type(model).__name__}")
        examples = loss.lists(examples, seed)
    if _is_cross_encoder(model) and any(_is_listwise(e) for e in examples):
        return _listwise_batch(model, examples, seq_multiple)
    parts = [_example_parts(e) for e in examples]
    n_texts = {len(t) for t, _ in parts}
    if len(n_texts) != 1:
        raise ValueError(f"all examples in a batch need the same number of texts, got {sorted(n_texts)}")
    has_label = {lab is not None for _, lab in parts}
    if len(has_label) != 1:
        raise ValueError("either every example in a batch has a label or none has")
    labels = np.asarray([lab for _, lab in parts], np.float32) if has_label == {True} else None
    if _is_cross_encoder(model):
        if n_texts != {2}:
            raise ValueError("a cross-encoder example is (query, document, label)")
        batches = [model.tokenize([tuple(t) for t, _ in parts])]
    elif router_mapping is not None or hasattr(model, "column_tasks"):
        tasks = _column_tasks(model, router_mapping, n_texts.pop())
        if pack:
            raise ValueError("a routed batch cannot be packed (its columns take different routes): pack=False")
        batches = [model.tokenize(list(c), task=task) for c, task in zip(zip(*(t for t, _ in parts)), tasks)]
    else:
        batches = [model.tokenize(list(c)) for c in zip(*(t for t, _ in parts))]
    if pack and not _is_cross_encoder(model) and guide is None:
        if mini_batch_size is not None:
            return {"features": pack_chunks(batches, model.tokenizer.pad_id, mini_batch_size), "labels": labels}
        return {"features": pack_columns(batches, model.tokenizer.pad_id), "labels": labels}
    longest = max(b["input_ids"].shape[1] for b in batches)
    target = _grid_length(longest, seq_multiple, model.max_seq_length)
    batches = [_pad_to(b, target, model.tokenizer.pad_id) for b in batches]
    out = {"features": batches[0] if _is_cross_encoder(model) else batches, "labels": labels}
    if guide is not None:
        out["guide"] = _guide_batch(guide, parts)
    return out


def _is_listwise(example) -> bool:
    return isinstance(example, (tuple, list)) and len(example) == 3 and isinstance(example[1], (tuple, list)) \
        and isinstance(example[2], (tuple, list, np.ndarray))


def _listwise_batch(model, examples: Sequence, seq_multiple: int) -> dict:
    """(query, [documents], [labels]) examples -> every (query, document) pair in one tokenized batch, padded
    to a multiple of ``LIST_ROWS`` rows (repeats of the first pair), and ``labels`` {"scores": (queries,
    longest list) with -inf past each list, "index": each row's flat slot, queries * longest for padding}."""
    pairs, slots, lists = [], [], []
    for example in examples:
        if not _is_listwise(example):
            raise ValueError(f"a listwise batch takes (query, [documents], [labels]) examples only, "
                             f"got {example!r:.120}")
        query, documents, labels = example
        if not isinstance(query, str) or not documents or not all(isinstance(d, str) for d in documents):
            raise TypeError(f"a listwise example is (query: str, [documents: str, ...], [labels]), "
                            f"got {example!r:.120}")
        if len(documents) != len(labels):
            raise ValueError(f"query {query!r:.60} has {len(documents)} documents but {len(labels)} labels")
        lists.append(np.asarray(labels, np.float32))
    longest = max(len(labels) for labels in lists)
    for q, (query, documents, _) in enumerate(examples):
        pairs += [(query, d) for d in documents]
        slots += [q * longest + j for j in range(len(documents))]
    padding = -len(pairs) % LIST_ROWS
    pairs += [pairs[0]] * padding
    slots += [len(examples) * longest] * padding
    scores = np.full((len(examples), longest), -np.inf, np.float32)
    for q, labels in enumerate(lists):
        scores[q, :len(labels)] = labels
    features = model.tokenize(pairs)
    features = _pad_to(features, _grid_length(features["input_ids"].shape[1], seq_multiple, model.max_seq_length),
                       model.tokenizer.pad_id)
    return {"features": features, "labels": {"scores": scores, "index": np.asarray(slots, np.int32)}}


def _guide_batch(guide, parts) -> dict:
    """A guide model's view of a batch: its params and each column tokenized by its tokenizer."""
    columns = [guide.tokenize(list(c)) for c in zip(*(t for t, _ in parts))]
    longest = max(c["input_ids"].shape[1] for c in columns)
    return {"params": guide.params, "features": [_pad_to(c, longest, guide.tokenizer.pad_id) for c in columns]}


def _text_lengths(batches: Sequence[dict], row: int) -> tuple[np.ndarray, int, int]:
    """Every text's token count, column after column (columns * B,), the batch size B, and the packed row
    width: ``row``, or the next multiple of it that holds the longest text."""
    masks = [np.asarray(b["attention_mask"]) for b in batches]
    size = masks[0].shape[0]
    if any(m.shape[0] != size for m in masks):
        raise ValueError(f"columns differ in batch size: {[m.shape[0] for m in masks]}")
    lengths = np.concatenate([m.sum(axis=1) for m in masks]).astype(np.int64)
    return lengths, size, max(row, -(-int(lengths.max()) // row) * row)


def _first_fit(lengths: np.ndarray, texts, width: int) -> tuple[list[tuple[int, int, int]], int]:
    """``texts`` (indices into ``lengths``, longest first) placed first-fit into rows of ``width`` tokens:
    (text, row, offset) each, and the number of rows used."""
    free: list[int] = []  # room left in each row
    spots = []
    for s in texts:
        r = next((i for i, room in enumerate(free) if room >= lengths[s]), len(free))
        if r == len(free):
            free.append(width)
        spots.append((int(s), r, width - free[r]))
        free[r] -= lengths[s]
    return spots, len(free)


def _lay_out(batches: Sequence[dict], size: int, lengths: np.ndarray, spots, rows: int, width: int, slots: int,
             pad_id: int) -> dict:
    """The packed arrays for texts at ``spots`` (text, row, offset), the i-th in text slot i: ``input_ids``,
    ``token_type_ids``, ``positions``, ``segment_ids`` (rows, width; the slot, -1 on padding) and
    ``unpack_index`` / ``attention_mask`` (slots, width): each slot's token positions in the flat rows."""
    input_ids = np.full((rows, width), pad_id, np.int32)
    token_type_ids = np.zeros((rows, width), np.int32)
    positions = np.zeros((rows, width), np.int32)
    segment_ids = np.full((rows, width), -1, np.int32)
    unpack_index = np.zeros((slots, width), np.int32)
    attention_mask = np.zeros((slots, width), np.int32)
    for slot, (s, r, o) in enumerate(spots):
        n = lengths[s]
        c, b = divmod(s, size)
        input_ids[r, o : o + n] = batches[c]["input_ids"][b, :n]
        if "token_type_ids" in batches[c]:
            token_type_ids[r, o : o + n] = batches[c]["token_type_ids"][b, :n]
        positions[r, o : o + n] = np.arange(n)
        segment_ids[r, o : o + n] = slot
        unpack_index[slot, :n] = r * width + o + np.arange(n)
        attention_mask[slot, :n] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "positions": positions,
            "segment_ids": segment_ids, "unpack_index": unpack_index, "attention_mask": attention_mask}


def _scalars(batches: Sequence[dict]) -> dict:
    return {k: v for k, v in batches[0].items() if np.ndim(v) == 0}  # prompt_length


def pack_columns(batches: Sequence[dict], pad_id: int, row: int = PACK_ROW) -> dict:
    """Tokenized columns (right-padded, each (B, T_c)) -> one packed batch.

    Every text's tokens are laid end to end in rows of ``R`` tokens (``row``, or the next multiple of it
    that holds the longest text), first-fit by decreasing length, no text split across rows. The model
    masks attention to each text's own tokens and numbers positions from 0 within each text, then
    gathers the token states back into one right-padded row per text, so pooling, heads, loss and
    gradients are those of the padded batch while the encoder computes on real tokens only (STSb
    pairs: ~2.2x fewer token slots than padding each column to its longest text).

    Returns ``input_ids``, ``token_type_ids``, ``positions`` and ``segment_ids`` (-1 on padding), all
    (rows, R), and ``unpack_index`` / ``attention_mask`` (columns, B, R): each text's token slots."""
    lengths, size, width = _text_lengths(batches, row)
    spots, rows = _first_fit(lengths, np.argsort(-lengths, kind="stable"), width)
    spots.sort()  # slot i holds text i: the embeddings come back in the columns' order
    out = _lay_out(batches, size, lengths, spots, rows, width, len(lengths), pad_id)
    for key in ("unpack_index", "attention_mask"):
        out[key] = out[key].reshape(len(batches), size, width)
    return {**out, **_scalars(batches)}


def _row_bucket(n: int) -> int:
    """``n`` rounded up on the grid 1, 2, 3, 4, 6, 8, 12, 16, 24, ...: few shapes to compile, at most 50% slack."""
    size = 1
    while size < n:  # a power of two p >= 2 steps to 3p/2, and 3p/2 to 2p
        size = 2 if size == 1 else size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def pack_chunks(batches: Sequence[dict], pad_id: int, mini_batch_size: int, row: int = PACK_ROW) -> dict:
    """Tokenized columns -> packed mini-batches for GradCache (a cached loss's ``cached_embeddings``).

    The texts of all columns are dealt to ``ceil(texts / mini_batch_size)`` mini-batches in a snake over
    decreasing length (so each gets a like share of tokens), at most ``mini_batch_size`` each; each
    mini-batch lays its texts end to end in rows of ``R`` tokens as ``pack_columns`` does, and all have the
    same number of rows (the most any needs, on a coarse grid). The encoder then computes on real tokens,
    not on every text padded to the batch's longest, with a mini-batch's memory bound.

    Returns ``input_ids``, ``token_type_ids``, ``positions``, ``segment_ids`` (steps, rows, R),
    ``unpack_index`` / ``attention_mask`` (steps, 1, mini_batch_size, R) (empty text slots point at the
    mini-batch's first token, and are dropped) and ``order`` (columns, B): each text's slot in the steps x
    mini_batch_size outputs."""
    lengths, size, width = _text_lengths(batches, row)
    steps = -(-len(lengths) // mini_batch_size)
    members: list[list[int]] = [[] for _ in range(steps)]
    for rank, s in enumerate(np.argsort(-lengths, kind="stable")):
        lap, pos = divmod(rank, steps)
        members[pos if lap % 2 == 0 else steps - 1 - pos].append(int(s))
    placed = [_first_fit(lengths, texts, width) for texts in members]  # each mini-batch's texts, longest first
    rows = _row_bucket(max(n for _, n in placed))
    chunks = [_lay_out(batches, size, lengths, spots, rows, width, mini_batch_size, pad_id) for spots, _ in placed]
    out = {key: np.stack([c[key] for c in chunks]) for key in chunks[0]}
    order = np.zeros(len(lengths), np.int64)
    for step, (spots, _) in enumerate(placed):
        out["attention_mask"][step, len(spots):, 0] = 1  # empty slots: the mini-batch's first token (finite, dropped)
        for slot, (s, _, _) in enumerate(spots):
            order[s] = step * mini_batch_size + slot
    out["unpack_index"], out["attention_mask"] = out["unpack_index"][:, None], out["attention_mask"][:, None]
    return {**out, "order": order.reshape(len(batches), size).astype(np.int32), **_scalars(batches)}


def _is_cross_encoder(model) -> bool:
    from jaxst.cross_encoder import CrossEncoder

    return isinstance(model, CrossEncoder)


def batch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The example indices of each batch of an epoch: a permutation seeded by (seed, epoch), so a run
    (or a resumed run) sees the same batches in the same order. The last batch may be smaller."""
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]


# ------------------------------------------------------------------------------------ evaluation


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (scipy's rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x))
    ranks[order] = (first[group] + last[group]) / 2.0 + 1.0
    return ranks


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / math.sqrt((a @ a) * (b @ b)))


def spearman(a, b) -> float:
    """Spearman's rank correlation (Pearson of the ranks, ties averaged), as scipy's ``spearmanr``."""
    return pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64)))


class EmbeddingSimilarityEvaluator:
    """Pearson and Spearman correlation of embedding similarity against gold scores (STSb-style),
    as sentence-transformers' evaluator of the same name: returns ``{"pearson_cosine",
    "spearman_cosine"}`` (for each of ``similarity_fn_names``; the model's similarity by default),
    prefixed with ``name_`` when a name is given; ``primary_metric`` names the Spearman one."""

    def __init__(self, sentences1: list[str], sentences2: list[str], scores: list[float], batch_size: int = 16,
                 main_similarity: str | None = None, similarity_fn_names: list[str] | None = None, name: str = "",
                 show_progress_bar: bool = False):
        if not (len(sentences1) == len(sentences2) == len(scores)):
            raise ValueError(f"sentences1, sentences2 and scores differ in length: "
                             f"{len(sentences1)}, {len(sentences2)}, {len(scores)}")
        if len(scores) < 2:
            raise ValueError("a correlation needs at least two scored pairs")
        self.sentences1, self.sentences2 = list(sentences1), list(sentences2)
        self.scores = np.asarray(scores, np.float64)
        self.batch_size = batch_size
        self.main_similarity = main_similarity
        self.similarity_fn_names = list(similarity_fn_names or ([main_similarity] if main_similarity else []))
        for fn in self.similarity_fn_names:
            similarity_functions(fn)  # validates the name
        self.name = name
        self.show_progress_bar = show_progress_bar
        self.primary_metric = None

    @classmethod
    def from_input_examples(cls, examples, **kwargs) -> EmbeddingSimilarityEvaluator:
        parts = [_example_parts(e) for e in examples]
        return cls([t[0] for t, _ in parts], [t[1] for t, _ in parts], [lab for _, lab in parts], **kwargs)

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        del output_path  # no CSV: the metrics are returned
        kw = dict(batch_size=self.batch_size, show_progress_bar=self.show_progress_bar)
        e1, e2 = model.encode(self.sentences1, **kw), model.encode(self.sentences2, **kw)
        names = self.similarity_fn_names or [model.similarity_fn_name]
        metrics = {}
        for fn in names:
            predicted = np.asarray(similarity_functions(fn)[1](e1, e2), np.float64)
            metrics[f"pearson_{fn}"] = pearson(self.scores, predicted)
            metrics[f"spearman_{fn}"] = spearman(self.scores, predicted)
        if len(names) > 1:
            metrics["pearson_max"] = max(metrics[f"pearson_{fn}"] for fn in names)
            metrics["spearman_max"] = max(metrics[f"spearman_{fn}"] for fn in names)
        primary = f"spearman_{self.main_similarity or (names[0] if len(names) == 1 else 'max')}"
        prefix = f"{self.name}_" if self.name else ""
        self.primary_metric = prefix + primary
        return {prefix + k: v for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------- fit


def fit(model, train_examples: Sequence, loss: Loss, epochs: int = 1, batch_size: int = 16,
        learning_rate: float = 2e-5, warmup_steps: int = 100, weight_decay: float = 0.01,
        max_grad_norm: float | None = 1.0, seed: int = 0, evaluator: Callable | None = None,
        evaluation_steps: int = 0, show_progress_bar: bool = True, optimizer=None, dropout: bool = True,
        mesh: Mesh | None = None, checkpoint_path: str | Path | None = None, checkpoint_save_steps: int = 500,
        checkpoint_save_total_limit: int | None = None, resume_from_checkpoint: bool = False,
        callback: Callable[[dict], None] | None = None, metric_for_best_model: str | None = None,
        greater_is_better: bool = True, load_best_model_at_end: bool = False) -> dict:
    """Fine-tune ``model`` in place on (anchor, positive[, negative...]) or (text1, text2, score) examples.

    Batches are drawn in a seeded order (``batch_order``) and dropout keys from ``seed`` and the step,
    so the same call gives the same model. ``optimizer`` defaults to ``default_optimizer`` with the
    given ``learning_rate``, ``warmup_steps``, ``weight_decay`` and ``max_grad_norm`` over all steps.
    ``evaluator(model, epoch=, steps=)`` (e.g. ``EmbeddingSimilarityEvaluator``; or a list of evaluators,
    ``jaxst.evaluation``'s or your own, whose metrics are merged) runs every ``evaluation_steps`` steps (0:
    never mid-epoch) and after each epoch, on the current params; the progress bar shows the latest
    ``metric_for_best_model`` (or each evaluator's primary metric). ``load_best_model_at_end``: the model
    ends with the params of the evaluation that scored best on ``metric_for_best_model`` (higher is better
    unless ``greater_is_better=False``) instead of the last ones.
    ``checkpoint_path`` saves orbax checkpoints every ``checkpoint_save_steps`` steps and at the end;
    ``resume_from_checkpoint`` continues from the latest one there. The model is trained in place, as
    PyTorch's is: each step donates the state (the model's own params first) to the next, so arrays taken
    from ``model.params`` before or during the run are invalid after it, and ``model.params`` holds the trained
    params at the end, or the last completed step's after an error or an interrupt.
    Returns ``{"loss": [per-step losses], "evaluations": [...]}``."""
    if not isinstance(loss, Loss):
        raise TypeError(f"loss must be a jaxst.losses loss, got {type(loss).__name__}")
    examples = list(train_examples)
    if not examples:
        raise ValueError("fit() needs at least one training example")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    evaluators = [] if evaluator is None else list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
    if load_best_model_at_end and (metric_for_best_model is None or not evaluators):
        raise ValueError("load_best_model_at_end needs an evaluator and the metric_for_best_model it reports")
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = steps_per_epoch * epochs
    if optimizer is None:
        optimizer = default_optimizer(learning_rate, total_steps, warmup_steps, weight_decay, max_grad_norm)
    # the model is trained in place, as PyTorch's is: the state starts from the model's own params and each
    # step donates it to the next (the optimizer update overwrites params and moments), so no second copy of
    # the params is kept; model.params holds the last completed step's params whenever fit hands control out
    step_fn = make_train_step(model, loss, optimizer, dropout=dropout, mesh=mesh, donate=True)
    state = _donatable(TrainState(model.params, optimizer.init(model.params), jnp.zeros((), jnp.int32)),
                       getattr(loss, "guide", None))
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, P()))
    manager = None
    if checkpoint_path is not None:
        manager = checkpoint_manager(checkpoint_path, checkpoint_save_total_limit)
        if resume_from_checkpoint and manager.latest_step() is not None:
            state = restore_checkpoint(manager, state)
    key = jax.random.key(seed)
    history: dict = {"loss": [], "evaluations": []}

    best: dict = {}  # "value", "params": the best evaluation so far by metric_for_best_model

    def evaluate(epoch: int, step: int):
        held = model.params  # the model's own params until the first step donates them; a guide's if it is the model
        model.params = state.params
        entry = {"epoch": epoch, "step": step}
        for i, each in enumerate(evaluators):
            result = each(model, epoch=epoch, steps=step)
            entry.update(result if isinstance(result, dict) else {f"evaluator_{i}": result})
        history["evaluations"].append(entry)
        shown = [metric_for_best_model] if metric_for_best_model else [getattr(e, "primary_metric", None)
                                                                       for e in evaluators]
        bar.set_postfix({k: f"{entry[k]:.4f}" for k in shown if k in entry}, refresh=False)
        if metric_for_best_model is not None:
            if metric_for_best_model not in entry:
                raise ValueError(f"metric_for_best_model {metric_for_best_model!r} is not among the evaluators' "
                                 f"metrics: {sorted(k for k in entry if k not in ('epoch', 'step'))}")
            value = float(entry[metric_for_best_model])
            if not best or (value > best["value"] if greater_is_better else value < best["value"]):
                best.update(value=value, params=jax.tree.map(jnp.copy, state.params), step=step)
            history["best"] = {"step": best["step"], metric_for_best_model: best["value"]}
        if callback is not None:
            callback(entry)  # the model holds this step's params here
        model.params = held  # the next step donates state.params

    # packing (texts end to end) feeds losses that read embeddings (cached ones in packed mini-batches); not
    # full-output losses (CSR, multi-vector), columns tokenized per task or guided losses
    pack = mesh is None and not getattr(loss, "needs_outputs", False) and not hasattr(model, "column_tasks") \
        and not getattr(loss, "needs_guide", False)
    mini_batch_size = getattr(loss, "mini_batch_size", None)
    start = int(state.step)
    bar = tqdm(total=total_steps, initial=start, desc="Training", disable=not show_progress_bar)
    try:
        for epoch in range(epochs):
            for i, idx in enumerate(batch_order(len(examples), batch_size, seed, epoch)):
                step = epoch * steps_per_epoch + i
                if step < start:
                    continue  # resumed: this batch was trained on before the checkpoint
                batch = collate(model, [examples[j] for j in idx], pack=pack, guide=getattr(loss, "guide", None),
                                loss=loss, seed=(seed, step), mini_batch_size=mini_batch_size)
                state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
                value = float(metrics["loss"])
                history["loss"].append(value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                done = step + 1
                if manager is not None and done % checkpoint_save_steps == 0:
                    save_checkpoint(manager, state)
                if evaluators and evaluation_steps > 0 and done % evaluation_steps == 0:
                    evaluate(epoch, done)
            epoch_end = (epoch + 1) * steps_per_epoch
            if evaluators and epoch_end > start and not (evaluation_steps > 0
                                                                    and epoch_end % evaluation_steps == 0):
                evaluate(epoch, epoch_end)
        if manager is not None and int(state.step) not in manager.all_steps():
            save_checkpoint(manager, state)
        if load_best_model_at_end and best:
            state = state._replace(params=best["params"])
    finally:
        bar.close()
        model.params = state.params  # on an error or an interrupt too: the last completed step's params
        if any(leaf.is_deleted() for leaf in jax.tree.leaves(state.params) if isinstance(leaf, jax.Array)):
            warnings.warn("fit stopped inside an optimizer step, after it had taken the params to update them in "
                          "place: the model's params are lost; resume from a checkpoint (checkpoint_path=)",
                          RuntimeWarning, stacklevel=2)
    return history


def _shapes(tree) -> tuple:
    """What a jitted function compiles for: the tree's structure and each leaf's shape and dtype."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves)


def _release_free_memory() -> None:
    """Hand the memory the C allocator holds but no longer uses back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). XLA's compiler frees hundreds of MB of scratch per program into the allocator's arenas, where it
    stays resident: a step compiled for a new batch shape would otherwise reach its peak on top of it."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _find_malloc_trim():
    try:
        return getattr(ctypes.CDLL("libc.so.6"), "malloc_trim", None)
    except OSError:  # not glibc (macOS, Windows, musl)
        return None


_malloc_trim = _find_malloc_trim()


def _donatable(tree, *others):
    """``tree`` (a train state) with a leaf copied wherever donating it would break something else: a leaf that
    appears twice (a donated buffer can be given once: an optimizer state that holds the params) or one that a
    pytree in ``others`` also holds (a guide model sharing the trained model's arrays keeps its own); numpy
    leaves become device arrays."""
    held = (jax.tree.leaves(getattr(other, "params", other)) for other in others if other is not None)
    seen = {id(leaf) for leaves in held for leaf in leaves}

    def own(leaf):
        if isinstance(leaf, np.ndarray) or (isinstance(leaf, jax.Array) and id(leaf) in seen):
            return jnp.array(leaf)
        seen.add(id(leaf))
        return leaf

    return jax.tree.map(own, tree)


__all__ = [
    "EmbeddingSimilarityEvaluator",
    "TrainState",
    "batch_order",
    "checkpoint_manager",
    "collate",
    "default_optimizer",
    "fit",
    "linear_schedule_with_warmup",
    "make_loss_fn",
    "make_train_step",
    "pack_chunks",
    "pack_columns",
    "pearson",
    "restore_checkpoint",
    "save_checkpoint",
    "spearman",
    "train_forward",
    "weight_decay_mask",
]
