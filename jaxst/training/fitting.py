"""``fit``: sentence-transformers' fine-tuning loop over the step, collation, checkpoints and evaluators."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from jaxst.checks import positive_int
from jaxst.evaluation import example_parts
from jaxst.losses import Loss
from jaxst.training.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from jaxst.training.collation import batch_order, collate
from jaxst.training.optim import TrainState, default_optimizer
from jaxst.training.step import make_train_step, split_trained, trainable_params


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
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
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
    trained = trainable_params(model, loss)  # the model's params, and a loss's own (SoftmaxLoss's classifier)
    state = donatable(TrainState(trained, optimizer.init(trained), jnp.zeros((), jnp.int32)),
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
        model.params, loss_params = split_trained(state.params, loss)
        if loss_params is not None:
            loss.params = loss_params  # an evaluator reading the loss (LabelAccuracyEvaluator) sees this step's
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

    pack = mesh is None and packable(loss)
    mini_batch_size = getattr(loss, "mini_batch_size", None)
    start = int(state.step)
    bar = tqdm(total=total_steps, initial=start, desc="Training", disable=not show_progress_bar)
    try:
        for epoch in range(epochs):
            for i, idx in enumerate(batch_order(len(examples), batch_size, seed, epoch)):
                step = epoch * steps_per_epoch + i
                if step < start:
                    continue  # resumed: this batch was trained on before the checkpoint
                chosen = [examples[j] for j in idx]
                batch = collate(model, chosen, pack=pack and unrouted(model, chosen),
                                guide=getattr(loss, "guide", None), loss=loss, seed=(seed, step),
                                mini_batch_size=mini_batch_size)
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
        # on an error or an interrupt too: the last completed step's params (and the loss's own, if it has any)
        model.params, loss_params = split_trained(state.params, loss)
        if loss_params is not None:
            loss.params = loss_params
        if any(leaf.is_deleted() for leaf in jax.tree.leaves(state.params) if isinstance(leaf, jax.Array)):
            warnings.warn("fit stopped inside an optimizer step, after it had taken the params to update them in "
                          "place: the model's params are lost; resume from a checkpoint (checkpoint_path=)",
                          RuntimeWarning, stacklevel=2)
    return history


def donatable(tree, *others):
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


def packable(loss) -> bool:
    """Whether batches for ``loss`` may be packed (texts end to end): losses that read embeddings (cached ones
    in packed mini-batches) may; full-output losses (CSR, multi-vector), guided losses and losses that run the
    model themselves (runs_model: ContrastiveTension, DenoisingAutoEncoder) may not. Columns tokenized per task
    are ``unrouted``'s to check."""
    return not any(getattr(loss, flag, False) for flag in ("needs_outputs", "needs_guide", "runs_model"))


def unrouted(model, examples) -> bool:
    """Whether the model tokenizes these examples' columns alike, so that ``fit`` may pack them: no per-column
    tasks (``training_tasks``: a MultiVectorEncoder's query and document columns). Listwise examples, and those
    ``collate`` refuses, are left to ``collate``."""
    try:
        n_columns = len(example_parts(examples[0])[0])
    except TypeError:
        return True
    return model.training_tasks(n_columns) is None
