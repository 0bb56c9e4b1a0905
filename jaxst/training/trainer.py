"""sentence-transformers' Trainer API over ``datasets``: ``SentenceTransformerTrainer`` (and the cross-encoder,
sparse and multi-vector trainers) with ``SentenceTransformerTrainingArguments``, the names and meanings of
sentence-transformers 6.3 (and of the transformers ``TrainingArguments`` they extend), on jaxst's train step.

    args = SentenceTransformerTrainingArguments(output_dir="out", num_train_epochs=1,
                                                per_device_train_batch_size=32,
                                                batch_sampler=BatchSamplers.NO_DUPLICATES)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=losses.MultipleNegativesRankingLoss(model))
    trainer.train()

Datasets follow sentence-transformers' conventions: a label column by name (``label``, ``labels``, ``score``,
``scores``), every other column an input in order; a ``DatasetDict`` (or a dict of datasets) trains on several
at once, each batch from one of them, with a loss each when ``loss`` is a dict keyed like the datasets.
Batches come from the samplers of ``jaxst.training.samplers``, which draw as sentence-transformers' do (the
same batches in the same order for the same ``seed``). The optimizer is transformers' default: AdamW (weight
decay on all but biases and norms), gradients clipped to ``max_grad_norm``, the learning rate warmed up over
``warmup_steps`` (a float below 1: that share of the steps) and then ``lr_scheduler_type`` (linear by default);
``optimizers=(optax_transformation, None)`` replaces it. Checkpoints (``output_dir/checkpoint-N``) hold the
model as a sentence-transformers folder, the optimizer state (orbax) and ``trainer_state.json``;
``train(resume_from_checkpoint=True)`` goes on from the latest as an uninterrupted run would. ``bf16=True``
trains in mixed precision: the forward in bfloat16, the params, gradients and AdamW moments in float32;
``activation_checkpointing=True`` recomputes each encoder layer's activations in the backward pass.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxst.losses import Loss
from jaxst.training.checkpoints import restore_state, save_state
from jaxst.training.collation import collate
from jaxst.training.fitting import donatable, packable, unrouted
from jaxst.training.optim import (
    TrainState,
    constant_schedule_with_warmup,
    linear_schedule_with_warmup,
    require_optax,
    weight_decay_mask,
)
from jaxst.training.samplers import (
    DEFAULT_LABEL_COLUMNS,
    BatchSamplers,
    MultiDatasetBatchSamplers,
    TorchGenerator,
    make_batch_sampler,
    make_multi_dataset_batch_sampler,
)
from jaxst.training.step import make_train_step, split_trained, trainable_params

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
TRAIN_STATE = "train_state"  # the orbax folder inside a checkpoint
SCHEDULERS = ("linear", "constant", "constant_with_warmup", "cosine")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw")
STRATEGIES = {"eval_strategy": ("no", "steps", "epoch"), "save_strategy": ("no", "steps", "epoch", "best")}


@dataclass
class SentenceTransformerTrainingArguments:
    """sentence-transformers' training arguments (transformers' defaults): what ``SentenceTransformerTrainer``
    reads. Step counts given as a float below 1 (``warmup_steps``, ``eval_steps``, ``save_steps``,
    ``logging_steps``) are that share of the run's steps, as in transformers."""

    output_dir: str | None = None
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    warmup_ratio: float | None = None
    warmup_steps: float = 0
    optim: str = "adamw_torch_fused"
    gradient_accumulation_steps: int = 1
    seed: int = 42
    data_seed: int | None = None
    eval_strategy: str = "no"
    eval_steps: float | None = None
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    logging_steps: float = 500
    logging_first_step: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    dataloader_drop_last: bool = False
    disable_tqdm: bool = False
    bf16: bool = False
    fp16: bool = False
    activation_checkpointing: bool | None = None
    gradient_checkpointing: bool = False
    prompts: str | dict | None = None
    batch_sampler: Any = BatchSamplers.BATCH_SAMPLER
    multi_dataset_batch_sampler: Any = MultiDatasetBatchSamplers.PROPORTIONAL
    router_mapping: dict = field(default_factory=dict)
    learning_rate_mapping: dict = field(default_factory=dict)
    run_name: str | None = None
    report_to: Any = "none"
    push_to_hub: bool = False
    hub_model_id: str | None = None

    def __post_init__(self):
        if self.warmup_ratio is not None and self.warmup_steps == 0:
            self.warmup_steps = self.warmup_ratio  # sentence-transformers' mapping for transformers v5
        if self.activation_checkpointing is None:
            self.activation_checkpointing = bool(self.gradient_checkpointing)
        for name in ("batch_sampler", "multi_dataset_batch_sampler", "prompts", "router_mapping",
                     "learning_rate_mapping"):
            value = getattr(self, name)
            if isinstance(value, str) and value.lstrip().startswith("{"):
                setattr(self, name, json.loads(value))  # a dict given on a command line
        if isinstance(self.batch_sampler, str):
            self.batch_sampler = BatchSamplers(self.batch_sampler)
        if isinstance(self.multi_dataset_batch_sampler, str):
            self.multi_dataset_batch_sampler = MultiDatasetBatchSamplers(self.multi_dataset_batch_sampler)
        for name, allowed in STRATEGIES.items():
            value = getattr(self, name)
            value = getattr(value, "value", value)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
            setattr(self, name, value)
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ValueError(f"lr_scheduler_type {self.lr_scheduler_type!r}: jaxst has {list(SCHEDULERS)}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"optim {self.optim!r}: jaxst's trainer runs AdamW ({list(OPTIMIZERS)}); pass any "
                             f"other optax optimizer as optimizers=(transformation, None) to the trainer")
        if self.fp16:
            raise ValueError("fp16: jaxst trains in float32 or bfloat16 (bf16=True), not float16")
        if self.push_to_hub:
            raise ValueError("push_to_hub: jaxst's trainer does not upload; save the model and push the folder")
        if self.gradient_accumulation_steps != 1:
            raise ValueError("gradient_accumulation_steps > 1 is not supported by jaxst's trainer yet; for large "
                             "in-batch-negative batches use a cached loss (CachedMultipleNegativesRankingLoss)")
        if self.learning_rate_mapping:
            raise ValueError("learning_rate_mapping is not supported by jaxst's trainer yet; pass an optax "
                             "multi_transform as optimizers=(transformation, None)")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps  # transformers' default
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                raise ValueError("load_best_model_at_end needs an eval_strategy other than 'no'")
            if self.save_strategy not in (self.eval_strategy, "best"):
                raise ValueError(f"load_best_model_at_end needs save_strategy ({self.save_strategy!r}) to match "
                                 f"eval_strategy ({self.eval_strategy!r})")
            self.metric_for_best_model = self.metric_for_best_model or "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value if _jsonable(value) else repr(value)
        return out


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class CrossEncoderTrainingArguments(SentenceTransformerTrainingArguments):
    """``SentenceTransformerTrainingArguments`` under the cross-encoder's name."""


class SparseEncoderTrainingArguments(SentenceTransformerTrainingArguments):
    """``SentenceTransformerTrainingArguments`` under the sparse encoder's name."""


class MultiVectorEncoderTrainingArguments(SentenceTransformerTrainingArguments):
    """``SentenceTransformerTrainingArguments`` under the multi-vector encoder's name."""


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict


@dataclass
class TrainerState:
    """What a run has done so far (transformers' ``TrainerState``); saved in each checkpoint."""

    global_step: int = 0
    epoch: float = 0.0
    max_steps: int = 0
    num_train_epochs: int = 0
    log_history: list = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    total_loss: float = 0.0  # the sum of every step's loss (train_loss at the end is its mean)


def _scaled_steps(value, total: int) -> int:
    """A step count that may be a share of ``total`` (a float below 1), as transformers reads it."""
    if value is None:
        return 0
    return math.ceil(total * value) if 0 < value < 1 else int(value)


def _schedule(args, total_steps: int):
    warmup = _scaled_steps(args.warmup_steps, total_steps)
    lr = args.learning_rate
    if args.lr_scheduler_type == "linear":
        return linear_schedule_with_warmup(lr, warmup, total_steps)
    if args.lr_scheduler_type == "constant":
        return constant_schedule_with_warmup(lr, 0)
    if args.lr_scheduler_type == "constant_with_warmup":
        return constant_schedule_with_warmup(lr, warmup)

    def cosine(step):  # transformers' get_cosine_schedule_with_warmup, half a cycle
        step = jnp.asarray(step, jnp.float32)
        progress = (step - warmup) / max(1, total_steps - warmup)
        decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return lr * jnp.where(step < warmup, step / max(1, warmup), decay)

    return cosine


def default_trainer_optimizer(args, total_steps: int):
    """transformers' Trainer optimizer for ``args``: AdamW with weight decay on all but biases and norms,
    clipped to ``max_grad_norm``, over the learning-rate schedule."""
    optax = require_optax()
    adamw = optax.adamw(_schedule(args, total_steps), b1=args.adam_beta1, b2=args.adam_beta2, eps=args.adam_epsilon,
                        weight_decay=args.weight_decay, mask=weight_decay_mask)
    if args.max_grad_norm is None or args.max_grad_norm <= 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(args.max_grad_norm), adamw)


def _is_dataset(value) -> bool:
    return hasattr(value, "column_names") and hasattr(value, "__getitem__") and hasattr(value, "__len__")


def _named_datasets(dataset, role: str) -> dict[str | None, Any] | None:
    """``{name: dataset}`` for a DatasetDict / dict of datasets, ``{None: dataset}`` for one dataset."""
    if dataset is None:
        return None
    if isinstance(dataset, Mapping):  # a DatasetDict or a dict of datasets (a Dataset is no Mapping)
        if not dataset:
            raise ValueError(f"{role}_dataset is an empty dict")
        for name, each in dataset.items():
            if not _is_dataset(each):
                raise TypeError(f"{role}_dataset[{name!r}] must be a datasets.Dataset, got {type(each).__name__}")
        return dict(dataset)
    if not _is_dataset(dataset):
        raise TypeError(f"{role}_dataset must be a datasets.Dataset, a DatasetDict or a dict of them, got "
                        f"{type(dataset).__name__} (an IterableDataset has no length: call .to_list() or load "
                        f"it without streaming)")
    return {None: dataset}


class SentenceTransformerTrainer:
    """sentence-transformers' ``SentenceTransformerTrainer`` for a jaxst model (see the module docstring).

    ``loss``: a jaxst loss, a callable ``model -> loss``, or a dict of either keyed by dataset name;
    sentence-transformers' default when None. ``evaluator``: a jaxst evaluator or a list of them, run at
    each evaluation (``eval_strategy``) with its metrics logged under ``eval_``; ``eval_dataset`` adds the
    loss on it as ``eval_loss``. ``callbacks``: objects with any of transformers' callback methods
    (``on_train_begin``, ``on_step_end``, ``on_log``, ``on_evaluate``, ``on_save``, ``on_train_end``), called
    as ``method(args, state, control=None, **kwargs)``. ``optimizers``: ``(optax transformation, None)`` in
    place of the default AdamW and schedule (transformers' ``(optimizer, scheduler)`` pair)."""

    training_args_class = SentenceTransformerTrainingArguments
    valid_label_columns = DEFAULT_LABEL_COLUMNS

    def __init__(self, model=None, args: SentenceTransformerTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss=None, evaluator=None, callbacks=None, optimizers=(None, None),
                 data_collator=None):
        if model is None:
            raise ValueError(f"{type(self).__name__} needs a model")
        if args is None:
            args = self.training_args_class(output_dir="tmp_trainer")
        if not isinstance(args, SentenceTransformerTrainingArguments):
            raise TypeError(f"args must be a {self.training_args_class.__name__}, got {type(args).__name__}")
        if data_collator is not None:
            raise ValueError("data_collator: jaxst collates with the model's own training hooks; leave it None")
        self.model = model
        self.args = args
        self.train_dataset = _named_datasets(train_dataset, "train")
        self.eval_dataset = _named_datasets(eval_dataset, "eval")
        if evaluator is not None and not isinstance(evaluator, (list, tuple)):
            evaluator = [evaluator]
        self.evaluators = list(evaluator or [])
        if args.eval_strategy != "no" and self.eval_dataset is None and not self.evaluators:
            raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset or an evaluator")
        self.loss = self._prepare_losses(loss)
        self.callbacks = list(callbacks or [])
        self.optimizer = optimizers[0] if optimizers else None
        if optimizers and len(optimizers) > 1 and optimizers[1] is not None:
            raise ValueError("optimizers: jaxst takes (optax transformation, None): put the schedule in the "
                             "transformation (optax.adamw(learning_rate=schedule))")
        self.state = TrainerState()
        self._eval_fns: dict = {}
        for datasets in (self.train_dataset, self.eval_dataset):
            for name, dataset in (datasets or {}).items():
                self._check_columns(dataset, name)

    # ------------------------------------------------------------------ losses and data

    def get_default_loss(self, model) -> Loss:
        from jaxst.losses import CoSENTLoss

        return CoSENTLoss(model)

    def _prepare_losses(self, loss) -> Loss | dict[str, Loss]:
        def build(each):
            if each is None:
                each = self.get_default_loss(self.model)
            elif not isinstance(each, Loss) and callable(each):
                each = each(self.model)
            if not isinstance(each, Loss):
                raise TypeError(f"loss must be a jaxst loss (jaxst.losses), got {type(each).__name__}")
            return each

        if not isinstance(loss, Mapping):
            return build(loss)
        losses = {name: build(each) for name, each in loss.items()}
        for role, datasets in (("train", self.train_dataset), ("eval", self.eval_dataset)):
            if datasets is None:
                continue
            if None in datasets:
                raise ValueError(f"loss is a dict keyed by dataset name, so {role}_dataset must be a DatasetDict "
                                 f"(or a dict of datasets) with those names")
            if missing := sorted(set(datasets) - set(losses)):
                raise ValueError(f"{role}_dataset has datasets {missing} that loss (a dict) has no loss for; "
                                 f"it has {sorted(losses)}")
        if any(each.params is not None for each in losses.values()):
            raise ValueError("a loss with params of its own (SoftmaxLoss) trains as the only loss, not in a dict")
        return losses

    def loss_for(self, name: str | None) -> Loss:
        return self.loss[name] if isinstance(self.loss, dict) else self.loss

    def _check_columns(self, dataset, name) -> None:
        label = [c for c in dataset.column_names if c in self.valid_label_columns]
        inputs = [c for c in dataset.column_names if c not in self.valid_label_columns and c != "dataset_name"]
        where = f"dataset {name!r}" if name is not None else "the dataset"
        if len(label) > 1:
            raise ValueError(f"{where} has several label columns {label}: keep one of {list(self.valid_label_columns)}")
        if not inputs:
            raise ValueError(f"{where} has no input columns, only {dataset.column_names}")

    def _prompt(self, dataset_name: str | None, column: str) -> str | None:
        prompts = self.args.prompts
        if not prompts:
            return None
        if isinstance(prompts, str):
            return prompts
        if dataset_name is not None and dataset_name in prompts:
            prompts = prompts[dataset_name]
            return prompts if isinstance(prompts, str) else prompts.get(column)
        if any(isinstance(v, dict) for v in prompts.values()):
            if dataset_name is None:
                raise ValueError("prompts is a dict of dicts (dataset name -> column -> prompt), but the dataset "
                                 "is a single Dataset: pass a DatasetDict, or prompts per column")
            return None
        return prompts.get(column)

    def _routes(self, dataset_name: str | None, columns: list[str]) -> dict[int, str] | None:
        mapping = self.args.router_mapping
        if mapping and any(isinstance(v, dict) for v in mapping.values()):
            mapping = mapping.get(dataset_name, {}) if dataset_name is not None else {}
        routes = {i: mapping[c] for i, c in enumerate(columns) if c in mapping}
        return routes or None

    def examples(self, dataset, dataset_name: str | None, indices) -> list[tuple]:
        """Rows ``indices`` of a dataset as training examples: (input columns in order..., label)."""
        columns = [c for c in dataset.column_names if c != "dataset_name"]
        label = next((c for c in columns if c in self.valid_label_columns), None)
        inputs = [c for c in columns if c != label]
        rows = dataset[list(map(int, indices))]
        values = []
        for column in inputs:
            texts = list(rows[column])
            prompt = self._prompt(dataset_name, column)
            if prompt:
                self._check_prompt_pooling()
                texts = [prompt + t for t in texts]
            values.append(texts)
        if label is not None:
            values.append([_label(v) for v in rows[label]])
        return list(zip(*values))

    def _check_prompt_pooling(self) -> None:
        if getattr(self.model, "_include_prompt", True) is False:
            raise ValueError("prompts: this model's pooling leaves the prompt's tokens out (include_prompt=False), "
                             "which jaxst's trainer does not do yet; train without prompts, or on a model whose "
                             "pooling includes them")

    def _batch(self, dataset_name, dataset, indices, loss: Loss, seed) -> dict:
        chosen = self.examples(dataset, dataset_name, indices)
        columns = [c for c in dataset.column_names if c != "dataset_name" and c not in self.valid_label_columns]
        routes = self._routes(dataset_name, columns)
        pack = routes is None and packable(loss) and unrouted(self.model, chosen)
        return collate(self.model, chosen, pack=pack, router_mapping=routes,
                       guide=getattr(loss, "guide", None), loss=loss, seed=seed,
                       mini_batch_size=getattr(loss, "mini_batch_size", None))

    @property
    def _data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def batch_sampler_for(self, datasets: dict, batch_size: int, generator: TorchGenerator):
        """The batch sampler over ``datasets`` (one, or several concatenated): what sentence-transformers'
        trainer builds from ``batch_sampler`` and ``multi_dataset_batch_sampler``, for training and (with a
        fresh generator each time) for the loss on evaluation data."""
        seed = self._data_seed
        samplers = [make_batch_sampler(self.args.batch_sampler, d, batch_size, self.args.dataloader_drop_last,
                                       list(self.valid_label_columns), generator, seed) for d in datasets.values()]
        if len(samplers) == 1 and None in datasets:
            return samplers[0]
        return make_multi_dataset_batch_sampler(self.args.multi_dataset_batch_sampler, list(datasets.values()),
                                                samplers, generator, seed)

    # ------------------------------------------------------------------ training

    def _callback(self, event: str, **kwargs) -> None:
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                method(self.args, self.state, None, **kwargs)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train the model in place (its ``params`` are the trained ones at the end, or the last completed
        step's after an error); returns ``TrainOutput(global_step, training_loss, metrics)``."""
        if self.train_dataset is None:
            raise ValueError("train() needs a train_dataset")
        args = self.args
        names = list(self.train_dataset)
        sizes = [len(d) for d in self.train_dataset.values()]
        if any(n == 0 for n in sizes):
            raise ValueError(f"train_dataset has an empty dataset: sizes {dict(zip(names, sizes))}")
        generator = TorchGenerator(self._data_seed)
        sampler = self.batch_sampler_for(self.train_dataset, args.per_device_train_batch_size, generator)
        steps_per_epoch = len(sampler)
        if steps_per_epoch == 0:
            raise ValueError("the batch sampler gives no batch (a dataset smaller than the batch size with "
                             "dataloader_drop_last=True?)")
        if args.max_steps > 0:
            total_steps, epochs = args.max_steps, math.ceil(args.max_steps / steps_per_epoch)
        else:
            total_steps, epochs = math.ceil(args.num_train_epochs * steps_per_epoch), math.ceil(args.num_train_epochs)
        optimizer = self.optimizer if self.optimizer is not None else default_trainer_optimizer(args, total_steps)
        self._schedule = None if self.optimizer is not None else _schedule(args, total_steps)

        single = not isinstance(self.loss, dict)
        step_fns = {}
        for name in names:
            loss = self.loss_for(name)
            if id(loss) not in step_fns:
                step_fns[id(loss)] = make_train_step(self.model, loss, optimizer, dropout=True, donate=True,
                                                     compute_dtype=jnp.bfloat16 if args.bf16 else None,
                                                     remat=bool(args.activation_checkpointing))
        first = self.loss_for(names[0])
        trained = trainable_params(self.model, first) if single else self.model.params
        state = donatable(TrainState(trained, optimizer.init(trained), jnp.zeros((), jnp.int32)),
                           *[getattr(self.loss_for(n), "guide", None) for n in names])
        self.state = TrainerState(max_steps=total_steps, num_train_epochs=epochs)
        if resume_from_checkpoint:
            state = self._resume(resume_from_checkpoint, state)
        start = self.state.global_step
        key = jax.random.key(args.seed)
        eval_every = _scaled_steps(args.eval_steps, total_steps) if args.eval_strategy == "steps" else 0
        save_every = _scaled_steps(args.save_steps, total_steps) if args.save_strategy == "steps" else 0
        log_every = max(1, _scaled_steps(args.logging_steps, total_steps))
        offsets = np.cumsum([0, *sizes])
        window: list[float] = []  # losses since the last log
        started = time.perf_counter()
        self._callback("on_train_begin")
        bar = tqdm(total=total_steps, initial=start, desc="Training", disable=args.disable_tqdm)
        try:
            step = 0
            for epoch in range(epochs):
                sampler.set_epoch(epoch)
                # transformers takes len(sampler) batches an epoch (NO_DUPLICATES may form more: they are left)
                batches = list(sampler)[:steps_per_epoch]
                for i, indices in enumerate(batches):
                    if step >= total_steps:
                        break
                    step += 1
                    if step <= start:
                        continue  # resumed: this batch was trained on before the checkpoint
                    d = int(np.searchsorted(offsets, indices[0], side="right") - 1)
                    name, dataset = names[d], self.train_dataset[names[d]]
                    loss = self.loss_for(name)
                    batch = self._batch(name, dataset, np.asarray(indices) - offsets[d], loss, (args.seed, step - 1))
                    state, metrics = step_fns[id(loss)](state, batch, jax.random.fold_in(key, step - 1))
                    value = float(metrics["loss"])
                    window.append(value)
                    self.state.total_loss += value
                    self.state.global_step = step
                    self.state.epoch = epoch + (i + 1) / steps_per_epoch
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                    self._callback("on_step_end")
                    if step % log_every == 0 or (args.logging_first_step and step == 1):
                        self._log({"loss": float(np.mean(window)), "grad_norm": float(metrics["grad_norm"]),
                                   "learning_rate": self._learning_rate(step - 1)})
                        window = []
                    end_of_epoch = i + 1 == len(batches) or step == total_steps
                    evaluate = (eval_every and step % eval_every == 0) or (
                        args.eval_strategy == "epoch" and end_of_epoch)
                    metrics_now = self._evaluate_during(state) if evaluate else None
                    save = (save_every and step % save_every == 0) or (args.save_strategy == "epoch" and end_of_epoch) \
                        or (args.save_strategy == "best" and metrics_now is not None and self._improved(metrics_now))
                    if metrics_now is not None:
                        self._track_best(metrics_now, save)
                    if save:
                        self._save_checkpoint(state)
            if args.load_best_model_at_end and self.state.best_model_checkpoint:
                state = self._restore_params(self.state.best_model_checkpoint, state)
        finally:
            bar.close()
            self._install(state.params)
        runtime = time.perf_counter() - started
        done = self.state.global_step - start
        train_loss = self.state.total_loss / max(1, self.state.global_step)
        metrics = {"train_runtime": round(runtime, 4),
                   "train_samples_per_second": round(done * args.per_device_train_batch_size / max(runtime, 1e-9), 3),
                   "train_steps_per_second": round(done / max(runtime, 1e-9), 3),
                   "train_loss": train_loss, "epoch": self.state.epoch}
        self._log(metrics)
        self._callback("on_train_end")
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def _learning_rate(self, step: int) -> float:
        """The learning rate step ``step`` (from 0) ran at, as transformers logs it; nan for an optimizer of
        one's own."""
        return float("nan") if self._schedule is None else float(self._schedule(step))

    def _log(self, logs: dict) -> None:
        entry = {**logs, "epoch": self.state.epoch, "step": self.state.global_step}
        self.state.log_history.append(entry)
        self._callback("on_log", logs=entry)

    # ------------------------------------------------------------------ evaluation

    def _install(self, params) -> None:
        """Give the model (and a single loss with params of its own) the train state's ``params``."""
        if isinstance(self.loss, dict):
            self.model.params = params
            return
        self.model.params, loss_params = split_trained(params, self.loss)
        if loss_params is not None:
            self.loss.params = loss_params

    def _with_params(self, params, fn):
        """``fn()`` with the model holding ``params`` (the train state's), then the model's own again."""
        held = self.model.params
        self._install(params)
        try:
            return fn()
        finally:
            self.model.params = held

    def _evaluate_during(self, state) -> dict:
        metrics = self._with_params(state.params, lambda: self._evaluate_now())
        self._log(metrics)
        self._callback("on_evaluate", metrics=metrics)
        return metrics

    def evaluate(self, eval_dataset=None, metric_key_prefix: str = "eval") -> dict:
        """The loss on ``eval_dataset`` (the trainer's by default) as ``{prefix}_loss`` (per dataset of a
        DatasetDict: ``{prefix}_{name}_loss``) and the evaluators' metrics under ``{prefix}_``."""
        datasets = _named_datasets(eval_dataset, "eval") if eval_dataset is not None else self.eval_dataset
        metrics = self._evaluate_now(datasets, metric_key_prefix)
        self._log(metrics)
        return metrics

    def _evaluate_now(self, datasets=None, prefix: str = "eval") -> dict:
        from jaxst.training.step import make_loss_fn

        datasets = self.eval_dataset if datasets is None else datasets
        metrics = {}
        for name, dataset in (datasets or {}).items():
            loss = self.loss_for(name)
            if id(loss) not in self._eval_fns:  # compiled once per loss (and batch shape), not per evaluation
                self._eval_fns[id(loss)] = jax.jit(make_loss_fn(self.model, loss, dropout=False))
            loss_fn = self._eval_fns[id(loss)]
            params = trainable_params(self.model, loss)
            total, count = 0.0, 0
            # batches drawn as for training, from a generator seeded afresh: sentence-transformers' eval batches
            sampler = self.batch_sampler_for({None: dataset}, self.args.per_device_eval_batch_size,
                                             TorchGenerator(self._data_seed))
            for i, indices in enumerate(sampler):
                batch = self._batch(name, dataset, np.asarray(indices), loss, (self.args.seed, i))
                total += float(loss_fn(params, batch)) * len(indices)
                count += len(indices)
            key = f"{prefix}_loss" if name is None else f"{prefix}_{name}_loss"
            metrics[key] = total / max(1, count)
        for i, evaluator in enumerate(self.evaluators):
            result = evaluator(self.model, epoch=self.state.epoch, steps=self.state.global_step)
            result = result if isinstance(result, dict) else {f"evaluator_{i}": result}
            metrics.update({k if k.startswith(f"{prefix}_") else f"{prefix}_{k}": float(v) for k, v in result.items()})
        return metrics

    def _metric(self, metrics: dict) -> float | None:
        name = self.args.metric_for_best_model
        if name is None:
            return None
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise ValueError(f"metric_for_best_model {name!r}: the evaluation reported {sorted(metrics)}")
        return float(metrics[key])

    def _improved(self, metrics: dict) -> bool:
        value = self._metric(metrics)
        if value is None:
            return False
        best = self.state.best_metric
        return best is None or (value > best if self.args.greater_is_better else value < best)

    def _track_best(self, metrics: dict, saving: bool) -> None:
        if self._improved(metrics):
            self.state.best_metric = self._metric(metrics)
            self.state.best_global_step = self.state.global_step
            if saving:
                self.state.best_model_checkpoint = str(self._checkpoint_dir(self.state.global_step))

    # ------------------------------------------------------------------ checkpoints

    def _output_dir(self) -> Path:
        if self.args.output_dir is None:
            raise ValueError("saving checkpoints needs args.output_dir (or save_strategy='no')")
        return Path(self.args.output_dir)

    def _checkpoint_dir(self, step: int) -> Path:
        return self._output_dir() / f"{CHECKPOINT_PREFIX}{step}"

    def _save_checkpoint(self, state) -> Path:
        """``output_dir/checkpoint-N``: the model (a sentence-transformers folder), the train state (orbax)
        and ``trainer_state.json``; written beside and renamed into place, so a kill leaves no half checkpoint.
        Keeps ``save_total_limit`` checkpoints (never the best one)."""
        target = self._checkpoint_dir(self.state.global_step)
        temp = target.with_name(target.name + ".tmp")
        shutil.rmtree(temp, ignore_errors=True)
        self._with_params(state.params, lambda: self.model.save(temp))
        save_state(temp / TRAIN_STATE, state)
        (temp / TRAINER_STATE).write_text(json.dumps(dataclasses.asdict(self.state), indent=2))
        shutil.rmtree(target, ignore_errors=True)
        temp.rename(target)
        self._callback("on_save")
        self._rotate_checkpoints()
        return target

    def _checkpoints(self) -> list[Path]:
        folder = self._output_dir()
        found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):]
                 .isdigit() and (p / TRAINER_STATE).is_file()] if folder.is_dir() else []
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def _rotate_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        keep = self._checkpoints()[-limit:]
        best = self.state.best_model_checkpoint
        for path in self._checkpoints():
            if path not in keep and str(path) != best:
                shutil.rmtree(path)

    def _resume(self, checkpoint: str | bool, like):
        if checkpoint is True:
            found = self._checkpoints()
            if not found:
                raise FileNotFoundError(f"resume_from_checkpoint=True: no checkpoint in {self._output_dir()}")
            path = found[-1]
        else:
            path = Path(checkpoint)
            if not (path / TRAINER_STATE).is_file():
                raise FileNotFoundError(f"{path} is not a checkpoint of this trainer (no {TRAINER_STATE})")
        saved = json.loads((path / TRAINER_STATE).read_text())
        if saved.get("max_steps") != self.state.max_steps:
            raise ValueError(f"{path} is from a run of {saved.get('max_steps')} steps; this one has "
                             f"{self.state.max_steps}: the same arguments and datasets are needed to resume")
        self.state = TrainerState(**saved)
        return restore_state(path / TRAIN_STATE, like)

    def _restore_params(self, checkpoint: str, like):
        return like._replace(params=restore_state(Path(checkpoint) / TRAIN_STATE, like).params)

    def save_model(self, output_dir: str | None = None) -> None:
        """Save the model (as a sentence-transformers folder) to ``output_dir`` (the arguments' by default)."""
        target = output_dir if output_dir is not None else self._output_dir()
        self.model.save(target, overwrite=True)


def _label(value):
    """A dataset's label as the collator takes it: a number, or a vector of numbers (lists stay lists for
    listwise labels)."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


class CrossEncoderTrainer(SentenceTransformerTrainer):
    """sentence-transformers' ``CrossEncoderTrainer``: pairs (and lists) of texts with labels."""

    training_args_class = CrossEncoderTrainingArguments

    def get_default_loss(self, model) -> Loss:
        from jaxst.cross_encoder_losses import CrossEntropyLoss
        from jaxst.losses import BinaryCrossEntropyLoss

        return BinaryCrossEntropyLoss(model) if model.num_labels == 1 else CrossEntropyLoss(model)


class SparseEncoderTrainer(SentenceTransformerTrainer):
    """sentence-transformers' ``SparseEncoderTrainer``."""

    training_args_class = SparseEncoderTrainingArguments

    def get_default_loss(self, model) -> Loss:
        from jaxst.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

        return SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), query_regularizer_weight=5e-5,
                          document_regularizer_weight=3e-5)


class MultiVectorEncoderTrainer(SentenceTransformerTrainer):
    """sentence-transformers' ``MultiVectorEncoderTrainer``."""

    training_args_class = MultiVectorEncoderTrainingArguments

    def get_default_loss(self, model) -> Loss:
        from jaxst.losses import MultiVectorMultipleNegativesRankingLoss

        return MultiVectorMultipleNegativesRankingLoss(model)


__all__ = ["CrossEncoderTrainer", "CrossEncoderTrainingArguments", "MultiVectorEncoderTrainer",
           "MultiVectorEncoderTrainingArguments", "SentenceTransformerTrainer",
           "SentenceTransformerTrainingArguments", "SparseEncoderTrainer", "SparseEncoderTrainingArguments",
           "TrainOutput", "TrainerState", "default_trainer_optimizer"]

