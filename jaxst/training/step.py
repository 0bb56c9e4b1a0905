"""The training step as pure functions: ``train_forward`` (the model in training mode, dropout from an explicit
key), ``make_loss_fn`` (``(params, batch, rng) -> loss``, sharded over a mesh when one is given) and
``make_train_step`` (the loss's gradient and any optax optimizer, compiled). What differs by family comes from
the model's training hooks (``training_inputs``, ``training_buffers``, ``frozen_params``)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxst.base import cast_floats
from jaxst.losses import Loss
from jaxst.models.layers import rematerialized, split_rng
from jaxst.pipeline import is_packed
from jaxst.training.gradcache import cached_embeddings
from jaxst.training.optim import TrainState, require_optax

# The flag a SparseEncoder's training_inputs passes (its CSR module then returns what CSRLoss reads): kept under
# its old name; one object, so stacked columns stay stackable
TRAINING_OUTPUTS = np.True_


def _refuse_cached_outputs(name: str, tracked: bool, mini_batch_size) -> None:
    """A ValueError for a loss (``name``) whose forward updates the model's buffers (``tracked``: ``model_state``,
    a CSR model's dead-latent counts) and that sets a ``mini_batch_size``: GradCache runs each mini-batch twice
    (once to cache, once in the backward), so the buffers would not follow the column-by-column updates of one
    forward; it is refused rather than trained with other buffer updates."""
    if tracked and mini_batch_size is not None:
        raise ValueError(
            f"{name} reads the model's outputs on a model whose forward updates buffers (model_state) and sets "
            f"mini_batch_size={mini_batch_size}, but jaxst's GradCache path (jaxst.training.cached_embeddings) runs "
            "each mini-batch twice and cannot carry those updates; build the loss with mini_batch_size=None.")


def train_forward(graphdef: nnx.GraphDef, params, features, dropout_rng=None, full_outputs: bool = False,
                  model_state: dict | None = None, mini_batch_size: int | None = None, inputs: dict | None = None,
                  all_layers: bool = False):
    """The model in training mode, as a pure function.

    ``features``: for a SentenceTransformer, a list of tokenized batches, one per input column ->
    a list of (B, D) sentence embeddings; for a CrossEncoder, one tokenized pair batch -> its raw
    logits (B, num_labels). ``dropout_rng``: a PRNG key for dropout, None for none. ``full_outputs``
    (losses with ``needs_outputs``, e.g. CSRLoss): one dict of every model output per column instead.
    ``model_state`` (with ``full_outputs``; a model's ``buffers``): each entry goes into the first column's
    batch, the module returns it updated under the same key, and that feeds the next column, as PyTorch
    updates a buffer column by column; returns ``(outputs, model_state)`` then. ``mini_batch_size``
    (cached losses): the columns' embeddings through ``cached_embeddings`` (with ``full_outputs``: each column's
    whole output dict, a MultiVectorEncoder's per-token outputs, column by column). ``inputs`` (with ``full_outputs``):
    extra entries for each column's batch, the model's ``training_inputs()`` (a SparseEncoder's ``sae_training``
    flag, so its CSR module returns the reconstructions CSRLoss reads); ``make_loss_fn`` passes them. Passing
    ``model_state`` with a ``mini_batch_size`` is refused (``_refuse_cached_outputs``). ``all_layers`` (losses
    with ``needs_layers``, a SentenceTransformer's): each column's sentence embeddings from every layer of the
    encoder, (S, B, D) (``SentenceEncoder(all_layers=True)``)."""
    _refuse_cached_outputs("a loss", full_outputs and model_state is not None, mini_batch_size)
    if all_layers:
        return _layer_embeddings(nnx.merge(graphdef, params), features, dropout_rng)
    if mini_batch_size is not None and full_outputs:  # each column's output dict, GradCache-style
        if not isinstance(features, (list, tuple)) or is_packed(features):
            raise ValueError("this loss reads every model output per column: build unpacked column batches")
        return [cached_embeddings(graphdef, params, {**f, **(inputs or {})}, mini_batch_size, k, output=None)
                for f, k in zip(features, split_rng(dropout_rng, len(features)))]
    if mini_batch_size is not None and isinstance(features, dict) and not is_packed(features):
        # a cross-encoder's pair batch (listwise losses with a mini_batch_size): its logits, GradCache-style
        return cached_embeddings(graphdef, params, features, mini_batch_size, dropout_rng, output=None)
    if mini_batch_size is not None and is_packed(features) and "order" in features:  # packed mini-batches
        return list(cached_embeddings(graphdef, params, features, mini_batch_size, dropout_rng))
    if mini_batch_size is not None:
        if not isinstance(features, (list, tuple)) or is_packed(features) or not _stackable(features):
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
            out = module({**f, **(inputs or {}), **(state or {})}, dropout_rng=k)
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


def _layer_embeddings(module, features, dropout_rng) -> list[jax.Array]:
    """Each column's (S, B, D) sentence embeddings from every encoder layer (``train_forward(all_layers=True)``)."""
    if not hasattr(module, "token_heads"):
        raise ValueError("a loss that reads every layer (AdaptiveLayerLoss, Matryoshka2dLoss) trains a "
                         f"SentenceTransformer; this model's module is a {type(module).__name__}")
    if module.token_heads:
        raise ValueError("the model's WeightedLayerPooling mixes every layer into its token embeddings, so a "
                         "loss on single layers (AdaptiveLayerLoss, Matryoshka2dLoss) cannot train it")

    def layers(batch, rng):
        return module(dict(batch), dropout_rng=rng, all_layers=True)["layer_embeddings"]

    if is_packed(features):
        if "order" in features:
            raise ValueError("a batch packed into mini-batches needs a cached loss; build it with "
                             "collate(model, examples, pack=True)")
        stacked = layers(features, dropout_rng)  # (S, columns * B, D)
        columns = features["unpack_index"].shape[0]
        return list(jnp.moveaxis(stacked.reshape(stacked.shape[0], columns, -1, stacked.shape[-1]), 1, 0))
    if not isinstance(features, (list, tuple)):
        raise ValueError("a loss that reads every layer takes a list of column batches: collate(model, examples)")
    if _stackable(features):
        merged, rows = _merge_columns(features)
        return jnp.split(layers(merged, dropout_rng), np.cumsum(rows)[:-1], axis=1)
    return [layers(f, k) for f, k in zip(features, split_rng(dropout_rng, len(features)))]


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


LOSS_PARAMS = "loss"  # where a loss's own trainable params (SoftmaxLoss's classifier) sit in the trained params


def trainable_params(model, loss: Loss) -> dict:
    """What a train state trains: the model's params, and a loss's own (``loss.params``, e.g. SoftmaxLoss's
    classifier) under ``"loss"`` beside them when it has any: ``TrainState.create(trainable_params(model, loss),
    optimizer)``."""
    if loss.params is None:
        return model.params
    return {**model.params, LOSS_PARAMS: loss.params}


def split_trained(params, loss: Loss) -> tuple[dict, object]:
    """``(model params, the loss's params or None)`` of params built by ``trainable_params``."""
    if loss.params is None:
        return params, None
    if not isinstance(params, dict) or LOSS_PARAMS not in params:
        raise ValueError(f"{type(loss).__name__} trains params of its own: build the state from "
                         "training.trainable_params(model, loss), which holds them under 'loss'")
    return {k: v for k, v in params.items() if k != LOSS_PARAMS}, params[LOSS_PARAMS]


def make_loss_fn(model, loss: Loss, *, dropout: bool = True, mesh: Mesh | None = None,
                 axis_name: str | None = None, model_state: bool = False, compute_dtype=None,
                 remat: bool = False) -> Callable:
    """``loss_fn(params, batch, rng=None) -> scalar`` (see ``_make_loss_fn``); for a loss with params of its own
    (``loss.params``), ``params`` is ``trainable_params(model, loss)`` and the gradient reaches both.
    ``compute_dtype`` (``jnp.bfloat16``: mixed precision): the model's forward runs on its params cast to that
    dtype and its outputs come back as float32 for the loss; the params (and so gradients and optimizer state)
    stay float32, the gradient flowing through the cast. ``remat=True`` (activation checkpointing): each encoder
    layer's activations are recomputed in the backward pass (``jax.checkpoint`` per layer) instead of kept."""
    if isinstance(loss, Loss) and loss.params is not None:
        if mesh is not None or model_state:
            raise ValueError(f"{type(loss).__name__} (a loss with params of its own) trains on one device")
        if loss.standalone_error:
            raise ValueError(loss.standalone_error)

        def loss_fn(params, batch, rng=None):
            model_params, loss_params = split_trained(params, loss)
            return _make_loss_fn(model, loss.with_params(loss_params), dropout=dropout,
                                 compute_dtype=compute_dtype, remat=remat)(model_params, batch, rng)

        return loss_fn
    return _make_loss_fn(model, loss, dropout=dropout, mesh=mesh, axis_name=axis_name, model_state=model_state,
                         compute_dtype=compute_dtype, remat=remat)


def _make_loss_fn(model, loss: Loss, *, dropout: bool = True, mesh: Mesh | None = None,
                  axis_name: str | None = None, model_state: bool = False, compute_dtype=None,
                  remat: bool = False) -> Callable:
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
    if loss.standalone_error:
        raise ValueError(loss.standalone_error)
    _refuse_cached_outputs(type(loss).__name__, model_state, getattr(loss, "mini_batch_size", None))
    graphdef = model.graphdef
    inputs = model.training_inputs()
    forward = train_forward if compute_dtype is None else _in_dtype(train_forward, compute_dtype)
    if remat:
        forward = _rematerialized(forward)

    def outputs(params, features, rng, device_index=None, state=None):
        drop_rng, loss_rng = split_rng(rng, 2)
        if drop_rng is not None and device_index is not None:
            drop_rng = jax.random.fold_in(drop_rng, device_index)
        return forward(graphdef, params, features, drop_rng if dropout else None,
                       full_outputs=getattr(loss, "needs_outputs", False), model_state=state,
                       mini_batch_size=getattr(loss, "mini_batch_size", None), inputs=inputs,
                       all_layers=getattr(loss, "needs_layers", False)), loss_rng

    if model_state:
        if mesh is not None:
            raise ValueError("model_state is tracked on one device only; build the loss without a mesh")
        if not getattr(loss, "needs_outputs", False):
            raise ValueError(f"{type(loss).__name__} reads embeddings only: its forward updates no model state")

        def loss_fn(params, batch, rng=None):
            (out, state), loss_rng = outputs(params, batch["features"], rng, state=batch["model_state"])
            return loss(out, batch.get("labels"), loss_rng), state

        return loss_fn

    if getattr(loss, "runs_model", False):  # it embeds each column itself (a second copy's params, a decoder)
        if mesh is not None:
            raise ValueError(f"{type(loss).__name__} runs the model itself, on one device; build it without a mesh")

        def embed(params, features, dropout_rng=None):
            """(B, D) sentence embeddings of one tokenized column under ``params`` (the model's, or a copy's)."""
            return forward(graphdef, params, [features], dropout_rng)[0]

        def loss_fn(params, batch, rng=None):
            if is_packed(batch["features"]):
                raise ValueError(f"{type(loss).__name__} embeds each column itself: build the batch unpacked, "
                                 "collate(model, examples)")
            return loss.batch_loss(embed, params, batch, rng if dropout else None)

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


def _in_dtype(forward: Callable, dtype) -> Callable:
    """``forward`` on params cast to ``dtype`` (floating leaves), its floating outputs cast back to float32."""

    def run(graphdef, params, *args, **kwargs):
        return cast_floats(forward(graphdef, cast_floats(params, dtype), *args, **kwargs), jnp.float32)

    return run


def _rematerialized(forward: Callable) -> Callable:
    """``forward`` traced under ``layers.rematerialized()``: each encoder layer checkpointed."""

    def run(*args, **kwargs):
        with rematerialized():
            return forward(*args, **kwargs)

    return run


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
                    axis_name: str | None = None, donate: bool = False, compute_dtype=None,
                    remat: bool = False) -> Callable:
    """``step_fn(state, batch, rng=None) -> (state, metrics)``: one optimizer step, compiled.

    ``optimizer`` is any optax ``GradientTransformation`` (``default_optimizer()`` for the recipe).
    ``rng`` is required when ``dropout`` is on (the default, as the original trains) and by losses that
    draw (Matryoshka with ``n_dims_per_step``); derive one per step, e.g. ``jax.random.fold_in(key,
    step)``, so a resumed run draws what an uninterrupted one would. ``metrics``: ``loss`` and
    ``grad_norm`` (before clipping). ``donate=True`` lets XLA update the state in place (the state passed in
    is invalid after the step, as PyTorch's optimizer overwrites its tensors; ``fit`` donates). Params the
    model lists in ``frozen_params`` (a frozen SparseStaticEmbedding) keep their values. A loss with params of its
    own (SoftmaxLoss) trains them too: the state's params are ``trainable_params(model, loss)``.
    ``compute_dtype=jnp.bfloat16``: mixed precision (see ``make_loss_fn``), float32 master params and moments;
    ``remat=True``: activation checkpointing per encoder layer (see ``make_loss_fn``)."""
    optax = require_optax()

    # A model's buffers (a CSR model's dead-latent counts) are carried in state.model_state and updated by
    # each step's forward, on one device with a loss that reads the model's outputs (CSRLoss)
    track = mesh is None and getattr(loss, "needs_outputs", False) and bool(model.training_buffers())
    loss_fn = make_loss_fn(model, loss, dropout=dropout, mesh=mesh, axis_name=axis_name, model_state=track,
                           compute_dtype=compute_dtype, remat=remat)

    def update(state: TrainState, grads):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state._replace(params=params, opt_state=opt_state, step=state.step + 1), optax.tree.norm(grads)

    frozen = tuple(model.frozen_params)
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
        split_trained(state.params, loss)  # a loss with params of its own: they are in the state
        if rng is None and dropout:
            raise ValueError("dropout needs a PRNG key: call step_fn(state, batch, rng), or build the step "
                             "with make_train_step(..., dropout=False)")
        if track:
            batch = {**batch, "model_state": state.model_state if state.model_state is not None
                     else model.training_buffers()}
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
