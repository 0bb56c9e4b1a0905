"""Nomic BERT (nomic-embed-text-v1.5) and GTE (gte-base-en-v1.5, gte-multilingual-base) against
sentence-transformers on tiny random models with what the real ones use: rotary positions (GTE's scaled as its
checkpoints scale them), fused QKV projections, SwiGLU / GeGLU MLPs, post-norm LayerNorms (gains and biases
perturbed), GTE's biases; mean pooling with nomic's search_query / search_document prompts, CLS pooling for GTE,
Normalize; texts longer than the 64-token limit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TEXTS, assert_cli_encodes_like, check_batch_invariance, check_bf16, check_save_roundtrip, max_abs

import jaxst

TOL = 1e-5
MORE = ["日本語の文章です。", "今天天气很好，我们去公园散步吧。", "🙂🚀 emoji only 🎉 👍🏽",
        "Ünïcödé Straße, München! Die Katze sitzt auf der Matte und schaut aus dem Fenster, während es regnet."]
PROMPTS = {"query": "search_query: ", "document": "search_document: "}
GTE_NTK = {"rope_theta": 20_000.0, "factor": 2.0}  # what gte-*-v1.5's configs say: static NTK on this base
GTE_HEAD_DIM = 16


def _save_tiny(folder, config, minilm_folder):
    """A seeded random encoder of ``config``'s architecture with the all-MiniLM-L6-v2 WordPiece tokenizer.
    Biases and LayerNorm gains are randomized (transformers starts them at 0 and 1), so a weight that is mapped
    wrongly or not at all shows in the embeddings."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.2)
            elif "layernorm" in name.lower():
                param.normal_(1.0, 0.2)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder / name, folder / name)
    return folder


SIZES = dict(vocab_size=30528, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
             initializer_range=0.2, pad_token_id=0)  # large enough that attention is far from uniform


@pytest.fixture(scope="module")
def tiny_nomic_base(tmp_path_factory, minilm_folder):
    """nomic-embed-text-v1.5's layout at hidden 64: SwiGLU, no biases, two token types, RoPE theta 1000."""
    from transformers import NomicBertConfig

    config = NomicBertConfig(**SIZES, type_vocab_size=2, max_position_embeddings=2048,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000.0})
    return _save_tiny(tmp_path_factory.mktemp("tiny-nomic-base"), config, minilm_folder)


def _gte_config(type_vocab_size: int):
    """gte-*-v1.5's layout at hidden 64: GeGLU, biased attention and down projection, static NTK RoPE written as
    transformers writes it (a linear entry on the NTK-scaled base)."""
    from transformers import GteConfig

    factor = GTE_NTK["factor"]
    rope = {"rope_type": "linear", "rope_theta": GTE_NTK["rope_theta"] * factor, "factor": factor ** (2 / GTE_HEAD_DIM)}
    return GteConfig(**SIZES, type_vocab_size=type_vocab_size, max_position_embeddings=8192, rope_parameters=rope)


@pytest.fixture(scope="module")
def tiny_gte_base(tmp_path_factory, minilm_folder):
    return _save_tiny(tmp_path_factory.mktemp("tiny-gte-base"), _gte_config(1), minilm_folder)


@pytest.fixture(scope="module")
def tiny_gte_no_types_base(tmp_path_factory, minilm_folder):
    """gte-base-en-v1.5 sets type_vocab_size 0: no token type table at all."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-gte-no-types"), _gte_config(0), minilm_folder)


@pytest.fixture(scope="module", params=["nomic_bert", "gte"])
def model(request, make_tiny_st):
    """(arch, folder, sentence-transformers model, jaxst model): nomic with mean pooling, GTE with CLS."""
    from sentence_transformers import SentenceTransformer

    base = request.getfixturevalue("tiny_nomic_base" if request.param == "nomic_bert" else "tiny_gte_base")
    pooling = "mean" if request.param == "nomic_bert" else "cls"
    folder = make_tiny_st(base=base, pooling_mode=pooling, normalize=True, prompts=PROMPTS, max_seq_length=64)
    return request.param, folder, SentenceTransformer(str(folder), device="cpu"), jaxst.SentenceTransformer(folder)


def test_the_tiny_models_have_what_the_real_ones_use(tiny_nomic_base, tiny_gte_base, tiny_gte_no_types_base):
    """The checkpoints hold the published layouts (transformers writes them back so): fused QKV, nomic's fc11 /
    fc12 and GTE's fused up_gate_proj; biases in GTE only."""
    from jaxst.io.weights import read_state_dict

    nomic = read_state_dict(tiny_nomic_base)
    assert nomic["encoder.layers.0.attn.Wqkv.weight"].shape == (3 * 64, 64)
    assert {"emb_ln.weight", "encoder.layers.2.mlp.fc11.weight", "encoder.layers.2.mlp.fc12.weight",
            "encoder.layers.2.norm2.bias", "embeddings.token_type_embeddings.weight"} <= set(nomic)
    assert not any(k.endswith(".bias") and "norm" not in k and "emb_ln" not in k for k in nomic)
    gte = read_state_dict(tiny_gte_base)
    assert gte["encoder.layer.0.attention.qkv_proj.bias"].shape == (3 * 64,)
    assert gte["encoder.layer.0.mlp.up_gate_proj.weight"].shape == (2 * 96, 64)
    assert {"encoder.layer.0.attention.o_proj.bias", "encoder.layer.0.mlp.down_proj.bias",
            "encoder.layer.0.attn_ln.weight", "encoder.layer.0.mlp_ln.bias", "embeddings.LayerNorm.weight"} <= set(gte)
    assert "encoder.layer.0.mlp.up_gate_proj.bias" not in gte
    assert gte["embeddings.token_type_embeddings.weight"].shape == (1, 64)
    assert not any("token_type" in k for k in read_state_dict(tiny_gte_no_types_base))
    config = json.loads((tiny_gte_base / "config.json").read_text())
    assert config["model_type"] == "gte" and config["rope_parameters"]["rope_type"] == "linear"


def test_embeddings_match(model):
    _, _, st, jx = model
    texts = TEXTS + MORE
    ours, ref = jx.encode(texts), st.encode(texts)
    assert ours.shape == ref.shape == (len(texts), 64)
    assert max_abs(ours, ref) < TOL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)  # Normalize ran
    assert max(int(m.sum()) for m in st.tokenize(texts)["attention_mask"]) == 64  # one text was truncated


def test_query_and_document_prompts(model):
    _, _, st, jx = model
    texts = TEXTS + MORE
    assert jx.prompts["query"] == PROMPTS["query"] and jx.prompts["document"] == PROMPTS["document"]
    assert max_abs(jx.encode_query(texts), st.encode_query(texts)) < TOL
    assert max_abs(jx.encode_document(texts), st.encode_document(texts)) < TOL
    assert max_abs(jx.encode_query(texts), jx.encode_document(texts)) > 1e-2  # the prompt changes the embedding


def test_batch_size_invariance(model):
    """Each text alone, in batches of every size and padded beside longer texts gives the same embedding."""
    _, _, st, jx = model
    check_batch_invariance(st, jx, TEXTS + MORE, tol=TOL)


def test_bfloat16_stays_close(model):
    _, folder, _, jx = model
    check_bf16(folder, jx, TEXTS + MORE, min_cos=0.999)


def test_saved_folder_loads_in_sentence_transformers(model, tmp_path):
    arch, _, _, jx = model
    check_save_roundtrip(jx, tmp_path / arch, TEXTS, queries=TEXTS, tol=TOL)
    assert json.loads((tmp_path / arch / "config.json").read_text())["model_type"] == arch


def test_gradients_are_finite(model):
    """Every weight gets a finite, non-zero gradient (the empty text included)."""
    import jax

    _, _, _, jx = model
    batch = jx.tokenize(TEXTS[:3])
    grads = jax.grad(lambda p: jx.apply(p, batch)[0] @ jx.apply(p, batch)[1])(jx.params)
    norms = {jax.tree_util.keystr(path): float(np.abs(np.asarray(g)).max())
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms


def test_rope_is_exercised(model, tmp_path):
    """Control: the same weights with another RoPE base give other embeddings, so the match above checks the
    rotary positions (GTE's scaling included)."""
    arch, folder, st, _ = model
    copy = shutil.copytree(folder, tmp_path / "other-theta")
    config = json.loads((copy / "config.json").read_text())
    rope = config["rope_parameters"]
    config["rope_parameters"] = {**rope, "rope_theta": 10.0 * rope["rope_theta"]}
    (copy / "config.json").write_text(json.dumps(config))
    assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS), st.encode(TEXTS)) > 1e-3
    if arch == "gte":
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": GTE_NTK["rope_theta"] * GTE_NTK["factor"]}
        (copy / "config.json").write_text(json.dumps(config))
        assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS), st.encode(TEXTS)) > 1e-3  # the factor counts


def test_gte_ntk_config_as_the_original_checkpoints_write_it(make_tiny_st, tiny_gte_base, tmp_path):
    """gte-*-v1.5's own config.json says rope_theta + rope_scaling {"type": "ntk"} (static NTK: base times the
    factor, frequencies divided by factor ** (2 / head_dim)). transformers 5.24 cannot build that (no "ntk" in
    ROPE_INIT_FUNCTIONS); jaxst reads it as the linear entry later transformers write, and matches
    sentence-transformers on the converted config."""
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_gte_base, pooling_mode="cls", normalize=True, prompts=PROMPTS, max_seq_length=64)
    st = SentenceTransformer(str(folder), device="cpu")
    copy = shutil.copytree(folder, tmp_path / "ntk")
    config = json.loads((copy / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=GTE_NTK["rope_theta"], rope_scaling={"type": "ntk", "factor": GTE_NTK["factor"]})
    (copy / "config.json").write_text(json.dumps(config))
    assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS + MORE), st.encode(TEXTS + MORE)) < TOL


def test_gte_without_token_types(make_tiny_st, tiny_gte_no_types_base):
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_gte_no_types_base, pooling_mode="cls", normalize=True, max_seq_length=64)
    jx = jaxst.SentenceTransformer(folder)
    assert "token_type_embeddings" not in jx.params["encoder"]["embeddings"]
    texts = TEXTS + MORE
    assert max_abs(jx.encode(texts), SentenceTransformer(str(folder), device="cpu").encode(texts)) < TOL


def _encoder(folder):
    """The bare NNX encoder of a Hugging Face folder, with its weights."""
    from flax import nnx

    from jaxst.io.weights import params_from_state_dict, read_state_dict
    from jaxst.models import encoder_from_hf_config

    cfg, cls = encoder_from_hf_config(json.loads((folder / "config.json").read_text()))
    module = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    params = params_from_state_dict(module, read_state_dict(folder), (f"{cls.base_model_prefix}.",))
    return nnx.merge(nnx.split(module, nnx.Param)[0], params)


def test_packed_rows_give_each_text_its_own_states(model):
    """Two texts packed in one row (a (B, T, T) mask, positions restarting at 0) give the states each has alone."""
    import jax.numpy as jnp

    _, folder, _, jx = model
    encoder = _encoder(folder)
    a, b = (jx.tokenize([t])["input_ids"][0] for t in (TEXTS[2], TEXTS[4]))
    ids = jnp.asarray(np.concatenate([a, b]))[None]
    segment = np.repeat([0, 1], [len(a), len(b)])
    mask = jnp.asarray(segment[:, None] == segment[None, :])[None]  # (1, T, T)
    positions = jnp.asarray(np.concatenate([np.arange(len(a)), np.arange(len(b))]))[None]
    packed = np.asarray(encoder(ids, mask, positions=positions))[0]
    for start, part in ((0, a), (len(a), b)):
        alone = np.asarray(encoder(jnp.asarray(part)[None], jnp.ones((1, len(part)), jnp.int32)))[0]
        assert max_abs(packed[start:start + len(part)], alone) < TOL


# Dropout at rate 1 zeroes what it touches, in torch and here: a deterministic output that shows where each kind
# sits. Hidden dropout: the embeddings and every sublayer's output (and GTE's gated product); attention dropout:
# the attention probabilities.
@pytest.mark.parametrize("placement", ["hidden_dropout_prob", "attention_probs_dropout_prob"])
def test_dropout_sits_where_transformers_puts_it(model, tmp_path, placement):
    import jax
    import jax.numpy as jnp
    import torch
    from transformers import AutoModel, AutoTokenizer

    arch, folder, _, _ = model
    base = shutil.copytree(folder, tmp_path / "model")
    config = json.loads((base / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config[placement] = 1.0
    (base / "config.json").write_text(json.dumps(config))
    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog!", "short"]
    tokens = AutoTokenizer.from_pretrained(str(base))(texts, padding=True, return_tensors="pt")
    torch_model = AutoModel.from_pretrained(str(base), attn_implementation="eager").train()
    with torch.no_grad():
        expected = torch_model(**tokens).last_hidden_state.numpy()

    encoder = _encoder(base)
    batch = {k: jnp.asarray(v.numpy()) for k, v in tokens.items()}
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = tokens["attention_mask"].numpy().astype(bool)
    assert max_abs(np.asarray(encoder(*args, dropout_rng=jax.random.key(0)))[real], expected[real]) < TOL
    assert max_abs(np.asarray(encoder(*args))[real], expected[real]) > 1e-2  # the dropout made a difference


@pytest.mark.parametrize("arch", ["nomic_bert", "gte"])
@pytest.mark.parametrize("rope", [{"rope_type": "dynamic", "factor": 2.0}, {"rope_type": "yarn", "factor": 4.0},
                                  {"rope_type": "default", "partial_rotary_factor": 0.5}])
def test_unsupported_rope_is_refused_by_name(arch, rope):
    from jaxst.models import encoder_from_hf_config

    with pytest.raises(ValueError, match=rope["rope_type"] if rope["rope_type"] != "default" else "partial_rotary"):
        encoder_from_hf_config({"model_type": arch, "rope_parameters": {**rope, "rope_theta": 1000.0}})


def test_configs_read_as_transformers_reads_them():
    """Defaults where config.json is silent are transformers' (nomic's RoPE base 1000, GTE's 160000, ...)."""
    from transformers import GteConfig as HFGte
    from transformers import NomicBertConfig as HFNomic

    from jaxst.models import encoder_from_hf_config, model_type

    assert model_type({"architectures": ["NomicBertModel"]}) == "nomic_bert"
    assert model_type({"architectures": ["GteForMaskedLM"]}) == "gte"
    for name, hf_cls in (("nomic_bert", HFNomic), ("gte", HFGte)):
        cfg, _ = encoder_from_hf_config({"model_type": name})
        hf = hf_cls()
        assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size, cfg.type_vocab_size,
                cfg.hidden_act, cfg.max_position_embeddings, cfg.layer_norm_eps) == (
            hf.hidden_size, hf.num_hidden_layers, hf.intermediate_size, hf.vocab_size, hf.type_vocab_size,
            hf.hidden_act, hf.max_position_embeddings, hf.layer_norm_eps)
        assert (cfg.rope_theta, cfg.rope_factor) == (hf.rope_parameters["rope_theta"], 1.0)
        assert cfg.head_dim == hf.hidden_size // hf.num_attention_heads


def test_cli_encodes_with_the_model(model, tmp_path):
    _, folder, st, _ = model
    assert_cli_encodes_like(folder, st, tmp_path)
