"""ModernBERT (gte-modernbert-base, modernbert-embed-base) against sentence-transformers on a tiny random model
with the features the real ones use: rotary positions with distinct global and local thetas, a fused QKV
projection, a GeGLU MLP, bias-free LayerNorms (gains perturbed from 1), no attn_norm in layer 0, and local
layers whose window (8 tokens: 4 on either side) is shorter than the test texts, with global attention on
every third layer; mean and CLS pooling, Normalize, the 8,192-token context."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import TEXTS, assert_cli_encodes_like, check_batch_invariance, check_bf16, check_save_roundtrip, max_abs

import jaxst

TOL = 1e-5
MORE = ["日本語の文章です。", "今天天气很好", "🙂🚀 emoji only 🎉", "Ünïcödé Straße, München! ¿Qué tal?",
        "Die Katze sitzt auf der Matte und schaut aus dem Fenster, während draußen der Regen fällt."]
LOCAL_ATTENTION = 8  # the whole window: |q - k| <= 4


@pytest.fixture(scope="module")
def tiny_modernbert_base(tmp_path_factory, minilm_folder):
    """A seeded random 4-layer ModernBERT (hidden 64, layers global, local, local, global) with the
    all-MiniLM-L6-v2 WordPiece tokenizer ([PAD] 0, [CLS] 101, [SEP] 102), its model_max_length raised to
    ModernBERT's 8192."""
    import torch
    from transformers import ModernBertConfig, ModernBertModel

    folder = tmp_path_factory.mktemp("tiny-modernbert-base")
    torch.manual_seed(0)
    config = ModernBertConfig(
        vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        global_attn_every_n_layers=3, local_attention=LOCAL_ATTENTION, global_rope_theta=160_000.0,
        local_rope_theta=10_000.0, max_position_embeddings=8192, initializer_range=0.2,
        pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
    )
    model = ModernBertModel(config).eval()
    with torch.no_grad():  # LayerNorm gains start at 1: make them differ, so a mis-mapped gain shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
        model.embeddings.tok_embeddings.weight[0].normal_(0.0, 0.2)  # [PAD] starts as a zero row (padding_idx)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder / name, folder / name)
    tok_config = json.loads((minilm_folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok_config, "model_max_length": 8192}))
    return folder


@pytest.fixture(scope="module", params=["mean", "cls"])
def modernbert(request, make_tiny_st, tiny_modernbert_base):
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_modernbert_base, pooling_mode=request.param, normalize=True, max_seq_length=48)
    return folder, SentenceTransformer(str(folder), device="cpu"), jaxst.SentenceTransformer(folder)


def test_the_tiny_model_has_what_the_real_ones_use(tiny_modernbert_base):
    from jaxst.io.weights import read_state_dict

    config = json.loads((tiny_modernbert_base / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["norm_bias"] is False
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    thetas = {kind: p["rope_theta"] for kind, p in config["rope_parameters"].items()}
    assert thetas == {"full_attention": 160_000.0, "sliding_attention": 10_000.0}
    keys = set(read_state_dict(tiny_modernbert_base))
    assert not any(k.endswith(".bias") for k in keys)  # no biases anywhere, LayerNorms included
    assert "layers.0.attn_norm.weight" not in keys and "layers.1.attn_norm.weight" in keys  # layer 0: Identity


def test_hub_config_maps_as_transformers_reads_it():
    """gte-modernbert-base's config.json spells the rotary thetas and the layer pattern the old way."""
    from transformers import ModernBertConfig as HFConfig

    from jaxst.models import encoder_from_hf_config
    from jaxst.models.modernbert import ModernBertModel

    hub = {"architectures": ["ModernBertModel"], "model_type": "modernbert", "vocab_size": 50368,
           "hidden_size": 768, "intermediate_size": 1152, "num_hidden_layers": 22, "num_attention_heads": 12,
           "hidden_activation": "gelu", "max_position_embeddings": 8192, "norm_eps": 1e-05, "norm_bias": False,
           "global_rope_theta": 160000.0, "local_rope_theta": 10000.0, "global_attn_every_n_layers": 3,
           "local_attention": 128, "attention_bias": False, "mlp_bias": False, "pad_token_id": 50283}
    cfg, cls = encoder_from_hf_config(hub)
    hf = HFConfig(**{k: v for k, v in hub.items() if k not in ("architectures", "model_type")})
    assert cls is ModernBertModel and cfg.max_tokens == 8192  # not limited to 512
    assert list(cfg.layer_types) == hf.layer_types
    assert cfg.global_rope_theta == hf.rope_parameters["full_attention"]["rope_theta"] == 160_000.0
    assert cfg.local_rope_theta == hf.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert cfg.local_attention // 2 == hf.sliding_window == 64
    assert encoder_from_hf_config({**hub, "model_type": None})[1] is ModernBertModel  # from the class name alone
    with pytest.raises(ValueError, match="rope_type"):
        encoder_from_hf_config({**hub, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})


def test_tokens_are_those_of_sentence_transformers(modernbert):
    _, st, jx = modernbert
    texts = TEXTS + MORE
    ref = st.tokenize(texts)
    ours = jx.tokenize(texts)
    assert "token_type_ids" not in ours
    for i in range(len(texts)):
        want = ref["input_ids"][i][ref["attention_mask"][i].bool()].tolist()
        assert ours["input_ids"][i][ours["attention_mask"][i].astype(bool)].tolist() == want, texts[i]
    lengths = ref["attention_mask"].sum(1)
    assert lengths.max() == 48  # one text was truncated to the limit
    assert (lengths > LOCAL_ATTENTION + 1).sum() >= 5  # texts whose tokens do not all see each other locally


def test_embeddings_match(modernbert):
    _, st, jx = modernbert
    texts = TEXTS + MORE
    ours, ref = jx.encode(texts), st.encode(texts)
    assert ours.shape == ref.shape == (len(texts), 64)
    assert max_abs(ours, ref) < TOL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)  # Normalize ran


def test_eager_attention_gives_the_same_embeddings(modernbert):
    """sentence-transformers runs transformers' SDPA attention by default; its eager path agrees."""
    from sentence_transformers import SentenceTransformer

    folder, st, jx = modernbert
    assert st[0].auto_model.config._attn_implementation == "sdpa"
    eager = SentenceTransformer(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"})
    assert eager[0].auto_model.config._attn_implementation == "eager"
    assert max_abs(jx.encode(TEXTS + MORE), eager.encode(TEXTS + MORE)) < TOL


def test_batch_and_padding_invariance(modernbert):
    """Each text alone (no padding at all: what ModernBERT's original unpadded path computes), in batches of
    every size, and right- or left-padded gives the same embedding."""
    _, st, jx = modernbert
    alone, batch = check_batch_invariance(st, jx, TEXTS + MORE, tol=TOL)
    lengths = batch["attention_mask"].sum(1)  # left padding: each row's tokens moved to its end
    left = {k: np.stack([np.roll(row, len(row) - n) for row, n in zip(batch[k], lengths)])
            for k in ("input_ids", "attention_mask")}
    assert (left["attention_mask"][:, 0] == 0).any()
    assert max_abs(np.asarray(jx.apply(jx.params, left)), alone) < TOL


def test_packed_batch_gives_the_padded_embeddings(modernbert):
    """Training's packed rows (several texts end to end, each seeing only itself) keep the local window
    within each text: ModernBERT's unpadded layout."""
    from jaxst import training

    _, _, jx = modernbert
    texts = TEXTS + MORE
    packed = training.pack_columns([jx.tokenize(texts)], jx.tokenizer.pad_id, row=64)
    assert packed["input_ids"].shape[0] < len(texts)  # rows hold several texts
    got = jx.forward(jx.params, packed)["sentence_embedding"]
    assert max_abs(got, jx.encode(texts)) < TOL


def test_bfloat16_stays_close(modernbert):
    folder, _, jx = modernbert
    check_bf16(folder, jx, TEXTS + MORE, min_cos=0.999)


def test_saved_folder_loads_in_sentence_transformers(modernbert, tmp_path):
    _, _, jx = modernbert
    check_save_roundtrip(jx, tmp_path / "modernbert", TEXTS + MORE, tol=TOL)


def test_task_checkpoint_keys_load(modernbert, tmp_path):
    """ModernBertForMaskedLM / ForSequenceClassification checkpoints prefix the encoder's keys with "model."."""
    from safetensors.numpy import save_file

    from jaxst.io.weights import read_state_dict

    folder, _, jx = modernbert
    copy = shutil.copytree(folder, tmp_path / "prefixed")
    save_file({f"model.{k}": v for k, v in read_state_dict(copy).items()}, str(copy / "model.safetensors"))
    assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS), jx.encode(TEXTS)) < 1e-6


def test_gradients_flow_through_the_encoder(modernbert):
    """Every weight gets a finite, non-zero gradient (the empty text, just [CLS] [SEP], included)."""
    import jax

    _, _, jx = modernbert
    batch = jx.tokenize(TEXTS[:3])
    grads = jax.grad(lambda p: jx.apply(p, batch)[0] @ jx.apply(p, batch)[1])(jx.params)
    norms = {"/".join(map(str, path)): float(np.abs(np.asarray(g)).max())
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms


# Each change of the config makes the same weights give other embeddings, so the match above checks it:
# no local window at all, a window one token wider on either side, the two rotary thetas swapped.
CONTROLS = {
    "no-local-window": {"layer_types": ["full_attention"] * 4, "global_attn_every_n_layers": 1},
    "window-one-wider": {"local_attention": LOCAL_ATTENTION + 2},
    "thetas-swapped": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                           "sliding_attention": {"rope_type": "default", "rope_theta": 160_000.0}}},
}


@pytest.mark.parametrize("control", list(CONTROLS))
def test_the_local_window_and_thetas_are_exercised(make_tiny_st, tiny_modernbert_base, tmp_path, control):
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_modernbert_base, pooling_mode="mean", normalize=True, max_seq_length=48)
    copy = shutil.copytree(folder, tmp_path / control)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **CONTROLS[control]}))
    changed = jaxst.SentenceTransformer(copy).encode(TEXTS + MORE)
    assert max_abs(changed, SentenceTransformer(str(copy), device="cpu").encode(TEXTS + MORE)) < TOL
    assert max_abs(changed, jaxst.SentenceTransformer(folder).encode(TEXTS + MORE)) > 1e-3


def test_the_8192_token_context(make_tiny_st, tiny_modernbert_base):
    """max_seq_length up to max_position_embeddings (8192, not BERT's 512); a text truncated to all 8192
    tokens, batched with a short one padded to that length, matches sentence-transformers."""
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_modernbert_base, pooling_mode="cls", normalize=True, max_seq_length=8192)
    st, jx = SentenceTransformer(str(folder), device="cpu"), jaxst.SentenceTransformer(folder)
    assert jx.max_seq_length == st.max_seq_length == 8192
    with pytest.raises(ValueError, match="8192"):
        jx.max_seq_length = 8193
    texts = [" ".join(["Stock prices fell sharply on Monday, as investors worried about rising rates."] * 700),
             "short"]
    assert int(st.tokenize(texts)["attention_mask"].sum(1).max()) == 8192
    assert max_abs(jx.encode(texts), st.encode(texts)) < TOL


# Dropout at rate 1 zeroes what it touches, in torch and here: a deterministic output that shows where each
# kind sits. Embedding dropout zeroes everything after it; attention dropout every attention output (probabilities
# and Wo's output); MLP dropout every GeGLU product.
DROPOUT_PLACEMENTS = {"embedding": "embedding_dropout", "attention": "attention_dropout", "mlp": "mlp_dropout"}


@pytest.mark.parametrize("placement", list(DROPOUT_PLACEMENTS))
def test_dropout_sits_where_transformers_puts_it(tiny_modernbert_base, tmp_path, placement):
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import AutoModel, AutoTokenizer

    from jaxst.io.weights import params_from_state_dict, read_state_dict
    from jaxst.models import encoder_from_hf_config

    folder = shutil.copytree(tiny_modernbert_base, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update({name: 1.0 if name == DROPOUT_PLACEMENTS[placement] else 0.0 for name in DROPOUT_PLACEMENTS.values()})
    (folder / "config.json").write_text(json.dumps(config))
    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog!", "short"]
    tokens = AutoTokenizer.from_pretrained(str(folder))(texts, padding=True, return_tensors="pt",
                                                        return_token_type_ids=False)
    torch_model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").train()
    with torch.no_grad():
        expected = torch_model(**tokens).last_hidden_state.numpy()

    cfg, cls = encoder_from_hf_config(config)
    module = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    params = params_from_state_dict(module, read_state_dict(folder), (f"{cls.base_model_prefix}.",))
    encoder = nnx.merge(nnx.split(module, nnx.Param)[0], params)
    ids, mask = jnp.asarray(tokens["input_ids"].numpy()), jnp.asarray(tokens["attention_mask"].numpy())
    got = np.asarray(encoder(ids, mask, dropout_rng=jax.random.key(0)))
    real = tokens["attention_mask"].numpy().astype(bool)
    assert max_abs(got[real], expected[real]) < TOL
    assert max_abs(np.asarray(encoder(ids, mask))[real], expected[real]) > 1e-2  # the dropout made a difference


def test_cli_encodes_with_the_model(modernbert, tmp_path):
    folder, st, _ = modernbert
    assert_cli_encodes_like(folder, st, tmp_path)
