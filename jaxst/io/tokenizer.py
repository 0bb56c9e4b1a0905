"""Tokenization with the ``tokenizers`` library, as sentence-transformers' Transformer module does it.

The padding and truncation settings saved inside a ``tokenizer.json`` are ignored: texts are
truncated to the model's ``max_seq_length`` and padded here, to the lengths the caller asks for.

Thread safety: a ``tokenizers.Tokenizer`` keeps its truncation length as state, so a call that needs
another length (``MultiVectorEncoder``'s query and document lengths) must not change it under a
concurrent call. Each length gets a backend of its own, made once and never changed afterwards; changing
``max_length`` swaps in a new backend instead of reconfiguring the one other threads are using.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers

from jaxst.checks import positive_int
from jaxst.io.folder import read_json


def _has_lowercase(normalizer) -> bool:
    if normalizer is None:
        return False
    state = json.loads(normalizer.__getstate__())

    def walk(node) -> bool:
        if isinstance(node, dict):
            if node.get("type") == "Lowercase" or (node.get("type") == "BertNormalizer" and node.get("lowercase")):
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(state)


UNTRUNCATED = 1 << 30  # a truncation length no text reaches


class Tokenizer:
    """Texts -> numpy int32 ``input_ids``/``attention_mask`` (and ``token_type_ids``), right-padded."""

    def __init__(self, backend: HFTokenizer, max_length: int, do_lower_case: bool = False, pad_id: int = 0):
        self.backend = backend
        self.backend.no_padding()
        self.backend.no_truncation()
        if do_lower_case and not _has_lowercase(backend.normalizer):
            parts = [normalizers.Lowercase()] + ([backend.normalizer] if backend.normalizer is not None else [])
            self.backend.normalizer = normalizers.Sequence(parts)
        self.pad_id = pad_id
        self._lock = threading.Lock()
        self._other_lengths: dict[int, HFTokenizer] = {}  # truncation length -> its own backend, never changed
        self.max_length = max_length
        self.all_special_ids = {
            tok["id"] for tok in json.loads(backend.to_str())["added_tokens"] if tok.get("special")
        }

    @classmethod
    def from_folder(cls, folder: Path, max_length: int, do_lower_case: bool = False) -> Tokenizer:
        path = Path(folder) / "tokenizer.json"
        if path.is_file():
            try:
                backend = HFTokenizer.from_file(str(path))
            except Exception as e:  # the tokenizers library raises a bare Exception that names no file
                raise ValueError(f"{path} is not a valid tokenizer file: {e}") from e
        elif (Path(folder) / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            cfg = read_json(Path(folder) / "tokenizer_config.json", required=False)
            backend = BertWordPieceTokenizer(
                str(Path(folder) / "vocab.txt"), lowercase=cfg.get("do_lower_case", True)
            )._tokenizer
        else:
            raise OSError(f"no tokenizer.json (or vocab.txt) in {folder}; jaxst reads fast-tokenizer files only")
        pad_token = read_json(Path(folder) / "special_tokens_map.json", required=False).get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        cfg_pad = read_json(Path(folder) / "tokenizer_config.json", required=False).get("pad_token")
        if isinstance(cfg_pad, dict):
            cfg_pad = cfg_pad.get("content")
        pad_id = None
        for tok in (pad_token, cfg_pad, "[PAD]", "<pad>"):
            if isinstance(tok, str) and backend.token_to_id(tok) is not None:
                pad_id = backend.token_to_id(tok)
                break
        return cls(backend, max_length, do_lower_case, pad_id if pad_id is not None else 0)

    @property
    def max_length(self) -> int:
        return self._max_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        value = positive_int("max_seq_length", value)
        with self._lock:
            if getattr(self, "_max_length", value) != value:  # another thread may be encoding with the old one
                self.backend = _copy(self.backend)
            self.backend.enable_truncation(value)
            self._max_length = value

    def _truncating_at(self, length: int) -> HFTokenizer:
        """A backend that truncates to ``length``: ``self.backend`` for ``max_length``, else one of its own."""
        if length == self._max_length:
            return self.backend
        backend = self._other_lengths.get(length)
        if backend is None:
            with self._lock:
                backend = self._other_lengths.get(length)
                if backend is None:
                    backend = _copy(self.backend)
                    backend.enable_truncation(length)
                    self._other_lengths[length] = backend
        return backend

    def encode_spans(self, texts: list, add_special_tokens: bool = False, max_length: int | None = None) -> list:
        """Each text's tokens with their character offsets (``Encoding.offsets``; ``special_tokens_mask`` marks
        the special ones): by default every token, untruncated and without special tokens, what cutting a long
        text into token windows reads (``jaxst.corpus``); with ``add_special_tokens`` and ``max_length``, the
        tokens a model reads, as ``encode_ids`` gives them."""
        backend = self._truncating_at(UNTRUNCATED if max_length is None else max_length)
        return backend.encode_batch(texts, add_special_tokens=add_special_tokens)

    def add_special_tokens(self, tokens: list) -> None:
        """Add special tokens to the vocabulary (at load time); backends of other lengths are made anew."""
        with self._lock:
            self.backend.add_special_tokens(tokens)
            self._other_lengths.clear()
            self.all_special_ids.update(self.backend.token_to_id(getattr(t, "content", t)) for t in tokens)

    # Whether encoding adds the post-processor's special tokens unless a call says: False for a static model's
    # tokenizer (StaticEmbedding tokenizes without them), set by its loader
    special_tokens: bool = True

    def encode_ids(self, texts: list, pair: list | None = None, add_special_tokens: bool | None = None,
                   max_length: int | None = None) -> list:
        """Token ids (and type ids) per text, truncated (to ``max_length`` when given, else the tokenizer's),
        unpadded; ``add_special_tokens=False`` skips the post-processor's special tokens (a rendered chat
        template has its own); None: the tokenizer's ``special_tokens``."""
        if add_special_tokens is None:
            add_special_tokens = self.special_tokens
        inputs = texts if pair is None else list(zip(texts, pair))
        backend = self.backend if max_length is None else self._truncating_at(max_length)
        # encode_batch_fast: the same ids and type ids without the character offsets nothing here reads (about
        # 15% of the tokenizer's time); encode_batch on a tokenizers release without it
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        encodings = encode(inputs, add_special_tokens=add_special_tokens)
        if self.id_rows is not None:
            self.check_ids(encodings)
        return encodings

    # Set (by the model loader) only when the vocabulary holds ids past the model's embedding rows: then every
    # encoding is checked, so such an id is a ValueError, never a NaN embedding; None (the rule) checks nothing.
    id_rows: int | None = None

    def check_ids(self, encodings) -> None:
        """A ValueError naming the first token id at or past ``id_rows`` in ``encodings`` (and its text)."""
        for i, e in enumerate(encodings):
            if e.ids and max(e.ids) >= self.id_rows:
                bad = next(t for t in e.ids if t >= self.id_rows)
                raise ValueError(
                    f"text {i} tokenizes to id {bad} ({self.backend.id_to_token(bad)!r}), past the model's embedding "
                    f"table of {self.id_rows} rows: the tokenizer has tokens the checkpoint lacks")

    def pad(self, encodings, length: int | None = None, rows: int | None = None, types: bool = True) -> dict:
        """Right-pad encodings into (rows, length) int32 arrays; padding rows carry an all-zero mask."""
        token_ids = [e.ids for e in encodings]  # each .ids call builds a Python list: once per encoding
        rows = len(token_ids) if rows is None else rows
        lengths = np.zeros(rows, dtype=np.int64)
        lengths[: len(token_ids)] = [len(t) for t in token_ids]
        length = int(lengths.max(initial=0)) if length is None else length
        filled = np.arange(length)[None, :] < lengths[:, None]  # row-major, as the concatenated ids run
        ids = np.full((rows, length), self.pad_id, dtype=np.int32)
        ids[filled] = np.fromiter(itertools.chain.from_iterable(token_ids), np.int32, int(lengths.sum()))
        out = {"input_ids": ids, "attention_mask": filled.astype(np.int32)}
        if types:
            type_ids = np.zeros((rows, length), dtype=np.int32)
            type_ids[filled] = np.fromiter(itertools.chain.from_iterable(e.type_ids for e in encodings), np.int32,
                                           int(lengths.sum()))
            out["token_type_ids"] = type_ids
        return out

    def prompt_length(self, prompt: str) -> int:
        """Tokens a prompt takes at the start of a text, without its trailing special token."""
        ids = self.backend.encode(prompt).ids
        n = len(ids)
        if ids and ids[-1] in self.all_special_ids:
            n -= 1
        return n

    def __call__(self, texts: list[str], length: int | None = None, types: bool = True) -> dict:
        return self.pad(self.encode_ids(texts), length, types=types)


def _copy(backend: HFTokenizer) -> HFTokenizer:
    return HFTokenizer.from_str(backend.to_str())


