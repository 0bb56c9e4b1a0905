"""Tokenization with the ``tokenizers`` library, as sentence-transformers' Transformer module does it.

The padding and truncation settings saved inside a ``tokenizer.json`` are ignored: texts are
truncated to the model's ``max_seq_length`` and padded here, to the lengths the caller asks for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import normalizers


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
        self.max_length = max_length
        self.all_special_ids = {
            tok["id"] for tok in json.loads(backend.to_str())["added_tokens"] if tok.get("special")
        }

    @classmethod
    def from_folder(cls, folder: Path, max_length: int, do_lower_case: bool = False) -> Tokenizer:
        path = Path(folder) / "tokenizer.json"
        if path.is_file():
            backend = HFTokenizer.from_file(str(path))
        elif (Path(folder) / "vocab.txt").is_file():
            from tokenizers.implementations import BertWordPieceTokenizer

            cfg = _read_json(Path(folder) / "tokenizer_config.json")
            backend = BertWordPieceTokenizer(
                str(Path(folder) / "vocab.txt"), lowercase=cfg.get("do_lower_case", True)
            )._tokenizer
        else:
            raise OSError(f"no tokenizer.json (or vocab.txt) in {folder}; jaxst reads fast-tokenizer files only")
        pad_token = _read_json(Path(folder) / "special_tokens_map.json").get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        cfg_pad = _read_json(Path(folder) / "tokenizer_config.json").get("pad_token")
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
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"max_seq_length must be a positive integer, got {value!r}")
        self._max_length = value
        self.backend.enable_truncation(value)

    def encode_ids(self, texts: list, pair: list | None = None, add_special_tokens: bool = True,
                   max_length: int | None = None) -> list:
        """Token ids (and type ids) per text, truncated (to ``max_length`` when given, else the tokenizer's),
        unpadded; ``add_special_tokens=False`` skips the post-processor's special tokens (a rendered chat
        template has its own)."""
        inputs = texts if pair is None else list(zip(texts, pair))
        if max_length is None or max_length == self._max_length:
            return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        self.backend.enable_truncation(max_length)
        try:
            return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            self.backend.enable_truncation(self._max_length)

    def pad(self, encodings, length: int | None = None, rows: int | None = None, types: bool = True) -> dict:
        """Right-pad encodings into (rows, length) int32 arrays; padding rows carry an all-zero mask."""
        longest = max((len(e.ids) for e in encodings), default=0)
        length = longest if length is None else length
        rows = len(encodings) if rows is None else rows
        ids = np.full((rows, length), self.pad_id, dtype=np.int32)
        mask = np.zeros((rows, length), dtype=np.int32)
        type_ids = np.zeros((rows, length), dtype=np.int32)
        for r, e in enumerate(encodings):
            n = len(e.ids)
            ids[r, :n] = e.ids
            mask[r, :n] = 1
            type_ids[r, :n] = e.type_ids
        out = {"input_ids": ids, "attention_mask": mask}
        if types:
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


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
