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

The package, one file per concern (each name below is importable from ``jaxst.training`` itself):

    optim.py        TrainState, default_optimizer, the learning-rate schedules, weight_decay_mask
    step.py         train_forward, make_loss_fn, make_train_step, trainable_params (a loss's own params too)
    gradcache.py    cached_embeddings (the cached losses' mini-batched forward)
    collation.py    collate, batch_order (padding; the family's part through the model's training hooks)
    packing.py      pack_columns, pack_chunks
    checkpoints.py  checkpoint_manager, save_checkpoint, restore_checkpoint (orbax)
    fitting.py      fit
    samplers.py     sentence-transformers' batch samplers (BatchSamplers, ...), drawing as torch does
    trainer.py      SentenceTransformerTrainer and the other families' trainers, their training arguments

``EmbeddingSimilarityEvaluator``, ``pearson`` and ``spearman`` live in ``jaxst.evaluation`` and are re-exported
here under their old names.
"""

from __future__ import annotations

# the names outside __all__ (constants, cached_embeddings, ...) are re-exported as `X as X`: importable as before
from jaxst.evaluation import EmbeddingSimilarityEvaluator, pearson, spearman
from jaxst.training.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from jaxst.training.collation import LIST_ROWS as LIST_ROWS
from jaxst.training.collation import SEQ_MULTIPLE as SEQ_MULTIPLE
from jaxst.training.collation import batch_order, collate
from jaxst.training.fitting import fit
from jaxst.training.gradcache import cached_embeddings as cached_embeddings
from jaxst.training.optim import TrainState, default_optimizer, linear_schedule_with_warmup, weight_decay_mask
from jaxst.training.optim import constant_schedule_with_warmup as constant_schedule_with_warmup
from jaxst.training.packing import PACK_ROW as PACK_ROW
from jaxst.training.packing import pack_chunks, pack_columns
from jaxst.training.samplers import BatchSamplers, MultiDatasetBatchSamplers
from jaxst.training.step import TRAINING_OUTPUTS as TRAINING_OUTPUTS
from jaxst.training.step import make_loss_fn, make_train_step, train_forward, trainable_params
from jaxst.training.trainer import (
    CrossEncoderTrainer,
    CrossEncoderTrainingArguments,
    MultiVectorEncoderTrainer,
    MultiVectorEncoderTrainingArguments,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    SparseEncoderTrainer,
    SparseEncoderTrainingArguments,
)

__all__ = [
    "BatchSamplers",
    "CrossEncoderTrainer",
    "CrossEncoderTrainingArguments",
    "EmbeddingSimilarityEvaluator",
    "MultiDatasetBatchSamplers",
    "MultiVectorEncoderTrainer",
    "MultiVectorEncoderTrainingArguments",
    "SentenceTransformerTrainer",
    "SentenceTransformerTrainingArguments",
    "SparseEncoderTrainer",
    "SparseEncoderTrainingArguments",
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
    "trainable_params",
    "weight_decay_mask",
]
