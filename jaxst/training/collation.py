"""Collation: a list of examples -> a training batch ``{"features", "labels"}`` of padded (or packed) numpy
arrays. How a family's examples become features is the model's to say, through its training hooks
(``training_examples``, ``training_tasks``, ``training_features``; defaults in ``jaxst.base.BaseModel``); this
module pads, packs and labels what they return."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxst.evaluation import example_parts
from jaxst.training.packing import pack_chunks, pack_columns

SEQ_MULTIPLE = 8  # columns are padded to a multiple of this many tokens: little padding, few shapes to compile
LIST_ROWS = 16  # a listwise batch pads its (query, document) pairs to a multiple of this many rows: few shapes


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
    examples, listwise = model.training_examples(examples, loss, seed)
    if listwise and any(_is_listwise(e) for e in examples):
        return _listwise_batch(model, examples, seq_multiple)
    parts = [example_parts(e) for e in examples]
    n_texts = {len(t) for t, _ in parts}
    if len(n_texts) != 1:
        raise ValueError(f"all examples in a batch need the same number of texts, got {sorted(n_texts)}")
    has_label = {lab is not None for _, lab in parts}
    if len(has_label) != 1:
        raise ValueError("either every example in a batch has a label or none has")
    labels = None
    if has_label == {True}:
        shapes = {np.shape(lab) for _, lab in parts}
        if len(shapes) != 1:
            raise ValueError(f"every example's label needs the same shape (a score, or vectors of one length), "
                             f"got shapes {sorted(shapes)}")
        labels = np.asarray([lab for _, lab in parts], np.float32)
    tasks = model.training_tasks(n_texts.pop(), router_mapping)
    if tasks is not None and pack:
        raise ValueError("a routed batch cannot be packed (its columns take different routes): pack=False")
    features = model.training_features([list(c) for c in zip(*(t for t, _ in parts))], tasks)
    single = isinstance(features, dict)  # one batch for all columns (a cross-encoder's pairs): never packed
    batches = [features] if single else features
    if pack and not single and guide is None:
        if mini_batch_size is not None:
            return {"features": pack_chunks(batches, model.tokenizer.pad_id, mini_batch_size), "labels": labels}
        return {"features": pack_columns(batches, model.tokenizer.pad_id), "labels": labels}
    longest = max(b["input_ids"].shape[1] for b in batches)
    target = _grid_length(longest, seq_multiple, model.max_seq_length)
    batches = [_pad_to(b, target, model.tokenizer.pad_id) for b in batches]
    out = {"features": batches[0] if single else batches, "labels": labels}
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


def batch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The example indices of each batch of an epoch: a permutation seeded by (seed, epoch), so a run
    (or a resumed run) sees the same batches in the same order. The last batch may be smaller."""
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return [order[i:i + batch_size] for i in range(0, n_examples, batch_size)]
