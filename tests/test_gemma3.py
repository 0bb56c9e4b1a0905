"""Gemma 3 (EmbeddingGemma's architecture) against sentence-transformers on a tiny random model with the
features the real one uses: bidirectional attention, sliding-window layers (symmetric window shorter than the
test texts) between global ones with another RoPE base, grouped-query attention, q/k RMSNorm, Gemma's
(1 + weight) RMSNorm, scaled embeddings, a GeGLU MLP, a tokenizer that adds BOS and EOS, mean pooling, the
bias-free Dense 4x up and back down, Normalize, and EmbeddingGemma's task prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TEXTS,
    assert_cli_encodes_like,
    byte_level_bpe_tokenizer,
    check_batch_invariance,
    check_bf16,
    check_save_roundtrip,
    max_abs,
)

import jaxst
from jaxst.models.gemma3 import Gemma3Config

TOL = 1e-5
MORE = ["日本語の文章です。", "今天天气很好", "🙂🚀 emoji only 🎉", "Ünïcödé Straße, München! ¿Qué tal?"]
PROMPTS = {  # EmbeddingGemma's config_sentence_transformers.json (a subset)
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "STS": "task: sentence similarity | query: ",
    "Clustering": "task: clustering | query: ",
}
LAYER_TYPES = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
WINDOW = 6  # config.json's value; a bidirectional layer then sees |q - k| < 6 // 2 + 1, 3 tokens each way


@pytest.fixture(scope="module")
def tiny_gemma3_base(tmp_path_factory) -> Path:
    """A seeded random 4-layer bidirectional Gemma 3: grouped-query attention (4 query heads on 2 key/value
    heads), head_dim 24 (not hidden / heads), query_pre_attn_scalar 32 (not head_dim), local and global RoPE
    bases, tied embeddings, RMSNorm weights moved away from their zero init, a right-padding tokenizer that
    adds <bos> and <eos>."""
    from transformers import Gemma3TextConfig, Gemma3TextModel

    folder = tmp_path_factory.mktemp("tiny-gemma3-base")
    vocab = byte_level_bpe_tokenizer(folder, eos="<eos>", bos="<bos>", padding_side="right")
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, query_pre_attn_scalar=32, max_position_embeddings=512,
        layer_types=LAYER_TYPES, sliding_window=WINDOW, use_bidirectional_attention=True,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        tie_word_embeddings=True, initializer_range=0.2, pad_token_id=0, eos_token_id=0, bos_token_id=vocab - 1,
    )
    model = Gemma3TextModel(config).eval()
    with torch.no_grad():  # Gemma's RMSNorm weights start at 0 (gain 1): move them, so a mis-mapped gain shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
        model.embed_tokens.weight[0].normal_(0.0, 0.2)  # EOS (= pad) starts as a zero row; trained models' is not
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gemma(make_tiny_st, tiny_gemma3_base):
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_gemma3_base, pooling_mode="mean", normalize=True, prompts=PROMPTS,
                          dense=[(256, torch.nn.Identity(), False), (64, torch.nn.Identity(), False)],
                          max_seq_length=48)
    return folder, SentenceTransformer(str(folder), device="cpu"), jaxst.SentenceTransformer(folder)


def test_the_folder_is_embeddinggemmas_layout(gemma):
    folder, st, _ = gemma
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["use_bidirectional_attention"] is True
    assert config["sliding_window"] == WINDOW and st[0].auto_model.config.sliding_window == WINDOW // 2 + 1
    dense = [json.loads((folder / name / "config.json").read_text()) for name in ("2_Dense", "3_Dense")]
    assert [(d["in_features"], d["out_features"], d["bias"]) for d in dense] == [(64, 256, False), (256, 64, False)]
    assert {d["activation_function"] for d in dense} == {"torch.nn.modules.linear.Identity"}


def test_tokens_are_those_of_sentence_transformers(gemma):
    """Same ids per text: <bos> first, <eos> last, both kept when a text is truncated."""
    _, st, jx = gemma
    texts = TEXTS + MORE
    ref = st.tokenize(texts)
    assert st.tokenizer.padding_side == "right"
    ours = jx.tokenize(texts)
    for i in range(len(texts)):
        want = ref["input_ids"][i][ref["attention_mask"][i].bool()].tolist()
        got = ours["input_ids"][i][ours["attention_mask"][i].astype(bool)].tolist()
        assert got == want, texts[i]
        assert got[0] == st.tokenizer.bos_token_id and got[-1] == st.tokenizer.eos_token_id
    assert max(int(m.sum()) for m in ref["attention_mask"]) == 48  # one text was truncated to the limit
    assert min(int(m.sum()) for m in ref["attention_mask"]) == 2  # the empty text: <bos> <eos>


def test_embeddings_match(gemma):
    _, st, jx = gemma
    texts = TEXTS + MORE
    ours, ref = jx.encode(texts), st.encode(texts)
    assert ours.shape == ref.shape == (len(texts), 64)
    assert max_abs(ours, ref) < TOL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)  # Normalize ran


def test_task_prompts(gemma):
    _, st, jx = gemma
    texts = TEXTS + MORE
    assert jx.prompts["query"] == PROMPTS["query"] and jx.prompts["document"] == PROMPTS["document"]
    assert max_abs(jx.encode_query(texts), st.encode_query(texts)) < TOL
    assert max_abs(jx.encode_document(texts), st.encode_document(texts)) < TOL
    assert max_abs(jx.encode(texts, prompt_name="STS"), st.encode(texts, prompt_name="STS")) < TOL
    assert max_abs(jx.encode_query(texts), jx.encode_document(texts)) > 1e-2  # the prompt changes the embedding


def test_batch_size_invariance(gemma):
    """Each text alone (no padding at all in sentence-transformers), in batches of every size and mixed with
    texts of other lengths gives the same embedding."""
    _, st, jx = gemma
    check_batch_invariance(st, jx, TEXTS + MORE, tol=TOL)


def test_left_padded_batches_give_the_same_embeddings(gemma):
    """apply() takes left-padded batches too: positions count real tokens, the window counts indices."""
    _, st, jx = gemma
    batch = jx.tokenize(TEXTS)
    lengths = batch["attention_mask"].sum(1)  # left padding: each row's tokens moved to its end
    left = {k: np.stack([np.roll(row, len(row) - n) for row, n in zip(batch[k], lengths)])
            for k in ("input_ids", "attention_mask")}
    assert (left["attention_mask"][:, 0] == 0).any()
    assert max_abs(np.asarray(jx.apply(jx.params, left)), st.encode(TEXTS)) < TOL


def test_packed_batch_gives_the_padded_embeddings(gemma):
    """Training's packed rows (several texts end to end, each seeing only itself, positions from 0 in each)
    keep the sliding window within each text."""
    from jaxst import training

    _, _, jx = gemma
    texts = TEXTS + MORE
    packed = training.pack_columns([jx.tokenize(texts)], jx.tokenizer.pad_id, row=64)
    assert packed["input_ids"].shape[0] < len(texts)  # rows hold several texts
    got = jx.forward(jx.params, packed)["sentence_embedding"]
    assert max_abs(got, jx.encode(texts)) < TOL


def test_bfloat16_stays_close(gemma):
    folder, _, jx = gemma
    check_bf16(folder, jx, TEXTS + MORE, min_cos=0.999)


def test_saved_folder_loads_in_sentence_transformers(gemma, tmp_path):
    _, _, jx = gemma
    check_save_roundtrip(jx, tmp_path / "gemma", TEXTS + MORE, queries=TEXTS, tol=TOL)  # the prompts were saved


def test_gradients_flow_through_the_model(gemma):
    """Every weight gets a finite, non-zero gradient (the empty text, just <bos> <eos>, included)."""
    import jax

    _, _, jx = gemma
    batch = jx.tokenize(TEXTS[:3])
    grads = jax.grad(lambda p: jx.apply(p, batch)[0] @ jx.apply(p, batch)[1])(jx.params)
    norms = {"/".join(map(str, path)): float(np.abs(np.asarray(g)).max())
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms


def _edited_copy(folder: Path, dest: Path, **changes) -> Path:
    copy = shutil.copytree(folder, dest)
    config = json.loads((copy / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("change", [
    {"layer_types": ["full_attention"] * 4},  # no sliding window
    {"sliding_window": WINDOW + 2},  # a window one token wider each way: catches an off-by-one
    {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}}},  # bases swapped
], ids=["no-window", "window-plus-one", "rope-bases-swapped"])
def test_controls_the_match_depends_on(gemma, tmp_path, change):
    """Positive controls: the same weights with the window off, one token wider, or the RoPE bases swapped
    give other embeddings for these texts, so the 1e-5 match above checks each of them."""
    folder, st, _ = gemma
    copy = _edited_copy(folder, tmp_path / "changed", **change)
    assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS), st.encode(TEXTS)) > 1e-3


@pytest.mark.parametrize("change", [
    # The published EmbeddingGemma config.json (written by transformers 4.57): legacy RoPE keys.
    {"rope_parameters": None, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0, "rope_scaling": None},
    # transformers' Gemma 3 does not cap attention scores (Gemma 2 did): the setting changes nothing.
    {"attn_logit_softcapping": 0.5, "final_logit_softcapping": 1.0},
    # Gemma 3 as a causal decoder: causal masks, sliding layers see the 6 keys up to the query.
    {"use_bidirectional_attention": False},
], ids=["legacy-rope-keys", "softcapping-set", "causal"])
def test_config_variants_match(gemma, tmp_path, change):
    from sentence_transformers import SentenceTransformer

    folder, st, _ = gemma
    copy = _edited_copy(folder, tmp_path / "variant", **change)
    ref = SentenceTransformer(str(copy), device="cpu")
    texts = TEXTS + MORE
    assert max_abs(jaxst.SentenceTransformer(copy).encode(texts), ref.encode(texts)) < TOL
    same = "use_bidirectional_attention" not in change
    assert (max_abs(ref.encode(texts), st.encode(texts)) < TOL) == same


def test_the_published_embeddinggemma_config_reads_as_transformers_reads_it():
    """EmbeddingGemma-300m's config.json values (no weights): window, RoPE bases and layer kinds as
    transformers' Gemma3TextConfig derives them; dispatch by model_type or by the architecture's name."""
    from transformers import Gemma3TextConfig

    from jaxst.models import Gemma3Model, encoder_from_hf_config, model_type

    published = {
        "model_type": "gemma3_text", "architectures": ["Gemma3TextModel"], "vocab_size": 262144, "hidden_size": 768,
        "intermediate_size": 1152, "num_hidden_layers": 24, "num_attention_heads": 3, "num_key_value_heads": 1,
        "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 2048,
        "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0, "rope_scaling": None, "sliding_window": 512,
        "use_bidirectional_attention": True, "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
    }
    ours, hf = Gemma3Config.from_hf(published), Gemma3TextConfig(**published)
    assert ours.sliding_window == hf.sliding_window == 257
    assert ours.rope_theta == hf.rope_parameters["full_attention"]["rope_theta"] == 1_000_000.0
    assert ours.rope_local_theta == hf.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert list(ours.layer_types) == list(hf.layer_types)
    assert ours.layer_types.count("full_attention") == 4
    assert ours == Gemma3Config()  # the dataclass defaults are EmbeddingGemma-300m's
    assert ours.max_tokens == 2048
    assert encoder_from_hf_config(published) == (ours, Gemma3Model)
    assert model_type({k: v for k, v in published.items() if k != "model_type"}) == "gemma3_text"


def test_cli_encodes_with_the_model(gemma, tmp_path):
    folder, st, _ = gemma
    assert_cli_encodes_like(folder, st, tmp_path)
