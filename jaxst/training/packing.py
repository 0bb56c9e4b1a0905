"""Packing: the texts of a batch's columns laid end to end in rows of ``PACK_ROW`` tokens, so the encoder
computes on real tokens only (``pack_columns``), or dealt to packed GradCache mini-batches (``pack_chunks``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PACK_ROW = 128  # tokens per row of a packed batch: rows stay few (few shapes), attention per row stays cheap


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
