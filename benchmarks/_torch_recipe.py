"""The PyTorch side of the fine-tuning benchmarks: sentence-transformers' model and loss in the loop its
``fit`` / trainer runs, written out (the Trainer needs ``accelerate``)."""

from __future__ import annotations

import time


def torch_epoch(model, loss, batches, lr: float, warmup: int, weight_decay: float = 0.01,
                dropout: bool = True) -> float:
    """One epoch over ``batches`` (lists of (text, text[, label]) rows) -> seconds: AdamW with ``weight_decay``
    except biases and LayerNorm, ``get_linear_schedule_with_warmup``, gradients clipped to norm 1, dropout
    on (off with ``dropout=False``). Rows with a label pass their labels to the loss; pairs without pass None."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    named = list(model.named_parameters())
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ], lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, len(batches))
    model.train(dropout)
    start = time.perf_counter()
    for rows in batches:
        features = [model.preprocess([r[0] for r in rows]), model.preprocess([r[1] for r in rows])]
        labels = torch.tensor([r[2] for r in rows]) if len(rows[0]) > 2 else None
        loss(features, labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - start
    model.eval()
    return seconds
