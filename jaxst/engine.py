"""The one encode engine under the four families: texts in, batched device work, host results out.

    inputs ──text_stream: checked lazily──▶ chunks of ``chunk_size`` ──tokenize (family hook)──▶ items
           ──plan: sorted by token count, padded on the ``seq_bucket`` grid, rows within the token cap──▶
           ──pad (hook) ▸ prepare (hook) ▸ put on the device / split over a mesh ▸ forward ▸ after (hook)──▶
           ──fetch (hook), READ_BEHIND batches behind, so the host reads batch k while the device runs k+1, k+2──▶
           (positions in the input, host batch, result)

Every family (``SentenceTransformer``, ``CrossEncoder``, ``SparseEncoder``, ``MultiVectorEncoder``) runs its
texts through ``encode`` here, so ``batch_size``, ``max_batch_tokens``, ``chunk_size`` and
``show_progress_bar`` mean the same thing in each: at most ``batch_size`` texts per batch, at most
``max_batch_tokens`` padded token slots per device (``"auto"``: ``CPU_BATCH_TOKENS`` on CPU, no cap on
accelerators, resolved once by ``batch_token_cap``), inputs read ``chunk_size`` at a time, and a progress
bar of batches whose total is the planned count. What differs between families is a hook: how a chunk
becomes items (``tokenize``), how items pad into a batch (``pad``), what is read back (``after``, ``fetch``).

The engine knows nothing of which family calls it, of files or of module kinds.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxst.checks import positive_int
from jaxst.parallel import shard_batch

# On CPU a batch holds at most this many padded token slots (and at most batch_size texts): measured on
# 2 cores, ~220-token paragraphs encode ~1.45x faster 8 at a time than 32 at a time (the (B, N, T, T)
# attention scores fall out of cache), while short sentences keep their full batches.
CPU_BATCH_TOKENS = 2048

# Batches dispatched ahead of the one being read back: the host pads and dispatches while the device works.
READ_BEHIND = 2

# Texts read, tokenized and sorted together: long enough that length sorting pads little, short enough
# that a generator over millions of lines is never held in memory.
DEFAULT_CHUNK_SIZE = 16384


# ------------------------------------------------------------------------------------------ batch shapes


def seq_bucket(longest: int, max_length: int) -> int:
    """Padded length for a batch whose longest text has ``longest`` tokens: the next multiple of 4 up
    to 64 tokens, of 8 up to 128, of 16 up to 256, then of 32. Batches are sorted by token count, so
    a fine grid wastes little compute on padding; each length compiles once (and the persistent
    compilation cache keeps it for the next process)."""
    step = 4 if longest <= 64 else 8 if longest <= 128 else 16 if longest <= 256 else 32
    return min(max(step, -(-longest // step) * step), max_length)


def batch_rows(padded_length: int, batch_size: int, max_tokens: int | None) -> int:
    """Texts per batch when the longest is padded to ``padded_length`` tokens: ``batch_size``, or fewer
    to stay within ``max_tokens`` token slots (a power of two, so few batch shapes compile)."""
    if max_tokens is None:
        return batch_size
    fit = max(1, max_tokens // max(padded_length, 1))
    return batch_size if fit >= batch_size else 1 << (fit.bit_length() - 1)


def batch_bucket(n: int, batch_size: int, multiple: int = 1) -> int:
    """Rows to pad a batch of ``n`` to: ``batch_size`` for full batches, else the next power of two; then
    rounded up to a ``multiple`` (the device count, so every device gets the same number of rows)."""
    rows = batch_size if n >= batch_size else min(batch_size, 1 << max(n - 1, 0).bit_length())
    return -(-rows // multiple) * multiple


def n_batches(total: int, chunk_size: int, batch_size: int) -> int:
    """Batches of ``batch_size`` in ``total`` texts read ``chunk_size`` at a time (a progress bar's first
    estimate; the plan of each chunk corrects it)."""
    full, rest = divmod(total, chunk_size)
    return full * math.ceil(chunk_size / batch_size) + math.ceil(rest / batch_size)


# ------------------------------------------------------------------------------------------ text input


def _checked_texts(texts: Iterable) -> Iterator[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode() input {i} is {type(t).__name__}, not str: {t!r:.80}")
        yield t


def text_stream(inputs) -> tuple[Iterator[str], bool, int | None]:
    """``(texts, single, total)``: a lazy iterator over the texts, checked one by one as they are read;
    whether the input was one string; the number of texts when the input has a length, else None."""
    if inputs is None:
        raise TypeError("encode() needs a string or a list of strings, got None")
    if isinstance(inputs, str):
        return iter([inputs]), True, 1
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if isinstance(inputs, (dict, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(f"encode() needs a string or a list of strings, got {type(inputs).__name__}")
    return _checked_texts(inputs), False, len(inputs) if isinstance(inputs, Sized) else None


def text_list(inputs) -> tuple[list[str], bool]:
    texts, single, _ = text_stream(inputs)
    return list(texts), single


def chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


# ------------------------------------------------------------------------------------------ options


def check_batching(batch_size, max_batch_tokens, chunk_size) -> int:
    """Validate the batching arguments every family's encode takes; returns ``chunk_size`` resolved
    (None: ``DEFAULT_CHUNK_SIZE``)."""
    positive_int("batch_size", batch_size)
    if max_batch_tokens is not None and max_batch_tokens != "auto":
        positive_int("max_batch_tokens", max_batch_tokens)
    return DEFAULT_CHUNK_SIZE if chunk_size is None else positive_int("chunk_size", chunk_size)


def batch_token_cap(max_batch_tokens, params) -> int | None:
    """``max_batch_tokens`` for a call whose weights are ``params``: ``"auto"`` is ``CPU_BATCH_TOKENS`` when
    they live on CPU devices, no cap on accelerators; an integer or None as given."""
    if max_batch_tokens != "auto":
        return max_batch_tokens
    on_cpu = all(d.platform == "cpu" for d in jax.tree.leaves(params)[0].devices())
    return CPU_BATCH_TOKENS if on_cpu else None


def fetch_host(result):
    """The default read-back: every array of ``result`` as numpy."""
    return jax.tree.map(np.asarray, result)


@dataclass
class Hooks:
    """What a family tells the engine. ``tokenize(chunk) -> items``; ``lengths(items) -> token counts``;
    ``pad(items, length, rows) -> host batch`` (numpy dict); optional ``order(items) -> secondary sort key``
    (ascending; ties of length only); ``prepare(batch, items) -> batch`` before it goes to the device;
    ``after(output, batch) -> result`` on the device, dispatched; ``fetch(result) -> host result`` (None:
    the device result as is, nothing read back); ``max_length``: no batch pads past it (unless a text
    is longer)."""

    tokenize: Callable[[list], list]
    pad: Callable[[list, int, int], dict]
    max_length: int
    lengths: Callable[[list], np.ndarray] = lambda items: np.asarray([len(e.ids) for e in items], np.int64)
    order: Callable[[list], np.ndarray] | None = None
    prepare: Callable[[dict, list], dict] | None = None
    after: Callable | None = None
    fetch: Callable | None = fetch_host


# ------------------------------------------------------------------------------------------ the engine


def plan_batches(lengths: np.ndarray, batch_size: int, budget: int | None, max_length: int,
                 secondary: np.ndarray | None = None) -> list[tuple[np.ndarray, int, int]]:
    """``(indices, rows, padded length)`` per batch: longest first (then ``secondary`` ascending), each
    batch's first text setting its padded length on the ``seq_bucket`` grid, rows within ``budget`` token
    slots."""
    lengths = np.asarray(lengths, np.int64)
    order = (np.argsort(-lengths, kind="stable") if secondary is None
             else np.lexsort((np.asarray(secondary), -lengths)))
    plan, start = [], 0
    while start < len(order):
        longest = int(lengths[order[start]])
        length = seq_bucket(longest, max(max_length, longest))
        rows = batch_rows(length, batch_size, budget)
        plan.append((order[start : start + rows], rows, length))
        start += rows
    return plan


def run_batches(items: list, hooks: Hooks, forward: Callable, params, *, batch_size: int,
                token_cap: int | None, mesh=None, put: Callable | None = None, bar=None) -> Iterator:
    """``forward(params, device batch)`` over ``items`` in planned batches; yields ``(indices into items,
    host batch, result)`` per batch, results read back ``READ_BEHIND`` batches behind the dispatch. ``mesh``: split each
    batch by rows over its devices; else ``put`` places the batch (None: where jax puts it)."""
    devices = 1 if mesh is None else mesh.size
    plan = plan_batches(hooks.lengths(items), batch_size, None if token_cap is None else token_cap * devices,
                        hooks.max_length, None if hooks.order is None else hooks.order(items))
    estimated = -(-len(items) // batch_size)  # what the bar's total counted for these items
    if bar is not None and bar.total is not None and len(plan) != estimated:
        bar.total += len(plan) - estimated
        bar.refresh()
    pending: deque = deque()
    for idx, rows, length in plan:
        chosen = [items[i] for i in idx]
        batch = hooks.pad(chosen, length, batch_bucket(len(idx), rows, devices))
        if hooks.prepare is not None:
            batch = hooks.prepare(batch, chosen)
        if mesh is not None:
            device_batch = shard_batch(batch, mesh)
        else:
            device_batch = batch if put is None else put(batch)
        out = forward(params, device_batch)
        pending.append((idx, batch, out if hooks.after is None else hooks.after(out, batch)))
        if len(pending) > READ_BEHIND:
            yield _fetched(pending.popleft(), hooks.fetch)
        if bar is not None:
            bar.update(1)
    while pending:
        yield _fetched(pending.popleft(), hooks.fetch)


def _fetched(pending, fetch):
    idx, batch, result = pending
    return idx, batch, result if fetch is None else fetch(result)


def encode(inputs: Iterator, total: int | None, hooks: Hooks, forward: Callable, params, *, batch_size: int,
           token_cap: int | None, chunk_size: int, show_progress_bar: bool | None, mesh=None,
           put: Callable | None = None) -> Iterator[tuple[int, int, Iterator]]:
    """The inputs ``chunk_size`` at a time through ``hooks.tokenize`` and ``run_batches``. Yields per chunk
    ``(offset of its first input, its input count, its batches)``; a chunk's batches must be consumed before
    the next chunk is read. The progress bar (shown with ``show_progress_bar``) counts batches."""
    estimate = None if total is None else n_batches(total, chunk_size, batch_size)
    with tqdm(total=estimate, desc="Batches", disable=not show_progress_bar) as bar:
        offset = 0
        for chunk in chunks(iter(inputs), chunk_size):
            items = hooks.tokenize(chunk)
            yield offset, len(chunk), run_batches(items, hooks, forward, params, batch_size=batch_size,
                                                  token_cap=token_cap, mesh=mesh, put=put, bar=bar)
            offset += len(chunk)


__all__ = [
    "CPU_BATCH_TOKENS",
    "DEFAULT_CHUNK_SIZE",
    "Hooks",
    "batch_bucket",
    "batch_rows",
    "batch_token_cap",
    "check_batching",
    "chunks",
    "encode",
    "fetch_host",
    "n_batches",
    "plan_batches",
    "run_batches",
    "seq_bucket",
    "text_list",
    "text_stream",
]
