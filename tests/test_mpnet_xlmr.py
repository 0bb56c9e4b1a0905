"""Tiny random MPNet, XLM-RoBERTa and RoBERTa sentence-transformers models against sentence-transformers
run on the same saved folder: embeddings, tokenization and truncation, every encode option, prompts, the
functional contract, bucketing and bad input, as tests/test_tiny_bert.py checks them for BERT.

Each tiny model is configured like a real one:

- mpnet: multi-qa-mpnet-base-dot-v1 (CLS pooling, no Normalize, dot similarity, max_seq_length 512);
- xlm-roberta: an XLM-R encoder with paraphrase-multilingual-MiniLM-L12-v2's pipeline (mean pooling,
  max_seq_length 128) and a trained SentencePiece-style Unigram tokenizer;
- multilingual-bert: paraphrase-multilingual-MiniLM-L12-v2's real layout, a BERT encoder behind the
  same XLM-R tokenizer;
- roberta: all-distilroberta-v1 (mean pooling, Normalize, max_seq_length 512) with byte-level BPE.
"""

from __future__ import annotations

import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import NON_LATIN_TEXTS, TEXTS, check_padding_invariance, max_abs, read_stsb, unique_sentences

import jaxst
from jaxst.io.weights import params_from_state_dict, read_state_dict
from jaxst.models import ARCHITECTURES, MPNetModel, XLMRobertaModel, encoder_from_hf_config
from jaxst.models.mpnet import MPNetConfig, relative_position_bucket

TOL = 1e-5

# name -> (HF base folder fixture, model_type, make_tiny_st spec)
ARCHS = {
    "mpnet": ("tiny_mpnet_base", "mpnet",
              dict(pooling_mode="cls", similarity_fn_name="dot", max_seq_length=512)),
    "xlm-roberta": ("tiny_xlmr_base", "xlm-roberta", dict(pooling_mode="mean", max_seq_length=128)),
    "multilingual-bert": ("tiny_multilingual_bert_base", "bert", dict(pooling_mode="mean", max_seq_length=128)),
    "roberta": ("tiny_roberta_base", "roberta", dict(pooling_mode="mean", normalize=True, max_seq_length=512)),
}
ALL_TEXTS = TEXTS + NON_LATIN_TEXTS
LONG_TEXT = " ".join(unique_sentences(read_stsb("stsb-de-test.csv"))[:80])  # far beyond 512 tokens


def same(x) -> float:
    """Bound for one computation run at two shapes (batch, padded length): a few float32 ulps of the
    largest value. CLS embeddings are not small like mean-pooled ones, so the bound scales with them."""
    return 1e-6 * max(1.0, float(np.max(np.abs(np.asarray(x)))))


def load_both(folder, **kwargs):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(str(folder), device="cpu", **kwargs)
    return st, jaxst.SentenceTransformer(folder, **kwargs)


def st_input_ids(st, texts) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tokenize() is deprecated in favour of preprocess()
        return st.tokenize(texts)["input_ids"].numpy()


@pytest.fixture(scope="module")
def make(request, make_tiny_st):
    """make(arch, **spec overrides) -> folder of a tiny sentence-transformers model of that architecture."""

    def build(arch, **overrides):
        base, _, spec = ARCHS[arch]
        return make_tiny_st(base=request.getfixturevalue(base), **{**spec, **overrides})

    return build


@pytest.fixture(scope="module", params=list(ARCHS))
def pair(request, make):
    """(arch, sentence-transformers model, jaxst model) for each architecture's reference configuration."""
    st, jx = load_both(make(request.param))
    return request.param, st, jx


# ---------------------------------------------------------------- parity


def test_loads_the_right_architecture(pair):
    arch, st, jx = pair
    _, model_type, spec = ARCHS[arch]
    assert jx.hf_config["model_type"] == model_type
    assert jx.max_seq_length == st.max_seq_length == spec["max_seq_length"]
    assert jx.similarity_fn_name == st.similarity_fn_name
    assert jx.get_embedding_dimension() == st.get_embedding_dimension() == 32


def test_embeddings_and_input_ids(pair):
    _, st, jx = pair
    np.testing.assert_array_equal(jx.tokenize(ALL_TEXTS)["input_ids"], st_input_ids(st, ALL_TEXTS))
    expected = st.encode(ALL_TEXTS)
    got = jx.encode(ALL_TEXTS)
    assert got.shape == expected.shape
    assert max_abs(got, expected) < TOL


@pytest.mark.parametrize("csv", ["stsb-en-test.csv", "stsb-de-test.csv"])
def test_stsb_sentences(pair, csv):
    """Every unique sentence of the STSb test set, English and German, for every architecture: same ids,
    embeddings within 1e-5. German is the multilingual tokenizers' own ground; through the English-only
    ones it is what users feed them anyway: umlauts and ß lower-cased and accent-stripped by MPNet's
    WordPiece, split into multi-byte UTF-8 pieces by RoBERTa's byte-level BPE."""
    _, st, jx = pair
    sentences = unique_sentences(read_stsb(csv))
    for start in range(0, len(sentences), 256):
        chunk = sentences[start : start + 256]
        np.testing.assert_array_equal(jx.tokenize(chunk)["input_ids"], st_input_ids(st, chunk))
    assert max_abs(jx.encode(sentences), st.encode(sentences)) < TOL


def test_non_latin_text_uses_the_trained_pieces(make):
    """The multilingual tokenizer really covers the scripts (not all <unk>) and marks unseen ones <unk>."""
    _, jx = load_both(make("xlm-roberta"))
    ids = jx.tokenize(NON_LATIN_TEXTS)["input_ids"]
    unk, real = 3, jx.tokenize(NON_LATIN_TEXTS)["attention_mask"].astype(bool)
    assert (ids[:7] == unk)[real[:7]].mean() < 0.05  # trained scripts: Chinese, Arabic, emoji, Cyrillic
    assert (ids[7] == unk).any()  # Japanese kana and Thai were never seen


def test_truncation_to_max_seq_length(pair):
    """Longer texts truncate exactly like the original, at the model's own and at a changed limit."""
    _, st, jx = pair
    n = st.max_seq_length
    ids = jx.tokenize([LONG_TEXT])["input_ids"]
    assert ids.shape == (1, n)
    np.testing.assert_array_equal(ids, st_input_ids(st, [LONG_TEXT]))
    texts = [LONG_TEXT, "word " * 3000, *TEXTS[:3]]
    assert max_abs(jx.encode(texts), st.encode(texts)) < TOL
    jx.max_seq_length = st.max_seq_length = 16
    try:
        np.testing.assert_array_equal(jx.tokenize(ALL_TEXTS)["input_ids"], st_input_ids(st, ALL_TEXTS))
        assert max_abs(jx.encode(ALL_TEXTS), st.encode(ALL_TEXTS)) < TOL
    finally:
        jx.max_seq_length = st.max_seq_length = n


def test_dot_similarity_like_multi_qa_mpnet(make):
    st, jx = load_both(make("mpnet"))
    assert jx.similarity_fn_name == st.similarity_fn_name == "dot"
    queries, docs = ALL_TEXTS[:6], ALL_TEXTS[6:]
    q_st, d_st = st.encode(queries), st.encode(docs)
    q_jx, d_jx = jx.encode(queries), jx.encode(docs)
    assert np.linalg.norm(q_jx, axis=1).std() > 1e-3  # not normalized: dot differs from cosine
    assert max_abs(jx.similarity(q_st, d_st), st.similarity(q_st, d_st).numpy()) < TOL
    assert max_abs(jx.similarity_pairwise(q_st, d_st[:6]), st.similarity_pairwise(q_st, d_st[:6]).numpy()) < TOL
    ours, theirs = np.asarray(jx.similarity(q_jx, d_jx)), st.similarity(q_st, d_st).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(np.argsort(-ours, axis=1), np.argsort(-theirs, axis=1))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_pooling_mode(make, arch):
    modes = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
    st, jx = load_both(make(arch, pooling_mode=modes))
    assert jx.get_embedding_dimension() == 32 * len(modes)
    assert max_abs(jx.encode(ALL_TEXTS), st.encode(ALL_TEXTS)) < TOL


def test_dense_and_normalize(make):
    """Dense and Normalize do not depend on the encoder; one architecture shows they compose with it."""
    st, jx = load_both(make("xlm-roberta", dense=[(16, torch.nn.Tanh(), True)], normalize=True))
    assert max_abs(jx.encode(ALL_TEXTS), st.encode(ALL_TEXTS)) < TOL


PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "Classify the topic: "}


# include_prompt=False needs each tokenizer's prompt length without its trailing special token.
@pytest.mark.parametrize("arch,include_prompt", [(a, False) for a in ARCHS] + [("mpnet", True)])
def test_prompts(make, arch, include_prompt):
    st, jx = load_both(make(arch, pooling_mode="mean", include_prompt=include_prompt, prompts=PROMPTS))
    assert jx.prompts == st.prompts
    assert max_abs(jx.encode_query(ALL_TEXTS), st.encode_query(ALL_TEXTS)) < TOL
    assert max_abs(jx.encode_document(ALL_TEXTS), st.encode_document(ALL_TEXTS)) < TOL
    assert max_abs(jx.encode(TEXTS, prompt_name="classification"), st.encode(TEXTS, prompt_name="classification")) < TOL
    assert max_abs(jx.encode(TEXTS, prompt="Represent this: "), st.encode(TEXTS, prompt="Represent this: ")) < TOL
    if include_prompt:
        assert max_abs(jx.encode_query(TEXTS), jx.encode(TEXTS)) > 1e-3


def test_encode_options(pair):
    _, st, jx = pair
    for batch_size in (7, 32):
        for kwargs in ({}, {"normalize_embeddings": True}, {"truncate_dim": 7},
                       {"truncate_dim": 7, "normalize_embeddings": True}):
            expected = st.encode(ALL_TEXTS, batch_size=batch_size, **kwargs)
            got = jx.encode(ALL_TEXTS, batch_size=batch_size, **kwargs)
            assert got.dtype == np.float32 and got.shape == expected.shape, kwargs
            assert max_abs(got, expected) < TOL, (batch_size, kwargs)
    from sentence_transformers.util import quantize_embeddings

    floats = jx.encode(ALL_TEXTS, normalize_embeddings=True)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        expected = st.encode(ALL_TEXTS, precision=precision, normalize_embeddings=True)
        got = jx.encode(ALL_TEXTS, precision=precision, normalize_embeddings=True)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        # Exactly sentence-transformers' quantizer on our floats. Against its own output a value within
        # float rounding (1e-7) of a bucket edge may land one step over, nothing more.
        np.testing.assert_array_equal(got, quantize_embeddings(floats, precision=precision))
        steps = np.abs(got.astype(np.int32) - expected.astype(np.int32))
        assert steps.max() <= (1 if precision in ("int8", "uint8") else 0) and (steps > 0).mean() < 0.01


def test_output_values(pair):
    _, st, jx = pair
    expected = st.encode(ALL_TEXTS, output_value="token_embeddings")
    got = jx.encode(ALL_TEXTS, output_value="token_embeddings")
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        assert max_abs(g, e.numpy()) < TOL
    tensor = jx.encode(ALL_TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, jax.Array) and max_abs(tensor, st.encode(ALL_TEXTS)) < TOL
    single = jx.encode(NON_LATIN_TEXTS[0])
    assert single.shape == (32,) and max_abs(single, st.encode(NON_LATIN_TEXTS[0])) < TOL


# ---------------------------------------------------------------- functional contract and bucketing


def test_functional_contract(pair):
    arch, st, jx = pair
    batch = jx.tokenize(ALL_TEXTS)
    expected_keys = {"input_ids", "attention_mask"} | ({"token_type_ids"} if ARCHS[arch][1] == "bert" else set())
    assert set(batch) == expected_keys
    assert all(v.dtype == np.int32 for v in batch.values())
    out = jax.jit(jx.apply)(jx.params, batch)
    assert isinstance(out, jax.Array)
    assert max_abs(out, jx.encode(ALL_TEXTS)) < same(out)
    assert max_abs(out, st.encode(ALL_TEXTS)) < TOL
    tokens = jx.forward(jx.params, batch)["token_embeddings"]
    assert tokens.shape == (*batch["input_ids"].shape, 32)


def test_grad_and_optax_step(pair):
    import optax

    arch, _, jx = pair
    batch = jx.tokenize(["a cat sits on the mat", "a dog lies on the rug", "一个男人在吃东西。"])

    def loss(params):
        e = jaxst.util.normalize_embeddings(jx.apply(params, batch))
        return jnp.sum(e[0] * e[1]) - jnp.sum(e[0] * e[2])

    grads = jax.grad(loss)(jx.params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    if arch == "mpnet":  # the shared relative position bias table is trained like any other weight
        assert float(jnp.abs(grads["encoder"]["encoder"]["relative_attention_bias"]["embedding"]).sum()) > 0
    updates, _ = optax.adam(1e-2).update(grads, optax.adam(1e-2).init(jx.params), jx.params)
    new_params = optax.apply_updates(jx.params, updates)
    assert float(loss(new_params)) < float(loss(jx.params))


def test_bucket_and_batch_independence(pair):
    """Padding (RoBERTa/MPNet position ids count non-pad tokens) and batch-mates change nothing."""
    _, _, jx = pair
    check_padding_invariance(jx, ALL_TEXTS, batch_sizes=(7, 32), tol=same, pad_id=jx.tokenizer.pad_id)


def test_pad_ids(pair):
    """XLM-R, RoBERTa and MPNet tokenizers pad with id 1, and position ids rely on it."""
    _, st, jx = pair
    assert jx.tokenizer.pad_id == st.tokenizer.pad_token_id == 1


# ---------------------------------------------------------------- MPNet internals


def test_relative_position_buckets_match_pytorch():
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    relative = np.arange(-1100, 1100)
    expected = MPNetEncoder.relative_position_bucket(torch.from_numpy(relative)).numpy()
    np.testing.assert_array_equal(relative_position_bucket(relative), expected)


def test_relative_position_bias_matters(make):
    """The parity tests would notice a wrong bias: zeroing the table moves the embeddings far."""
    _, jx = load_both(make("mpnet"))
    batch = jx.tokenize(ALL_TEXTS)
    params = jax.tree.map(lambda x: x, jx.params)
    params["encoder"]["encoder"]["relative_attention_bias"]["embedding"] = jnp.zeros_like(
        params["encoder"]["encoder"]["relative_attention_bias"]["embedding"]
    )
    assert max_abs(jx.apply(params, batch), jx.apply(jx.params, batch)) > 1e-2


def test_mpnet_token_states_match_pytorch(tiny_mpnet_base):
    """The bare encoder against PyTorch's MPNetModel, padding included (relative bias over padded length)."""
    from flax import nnx
    from transformers import AutoModel

    hf = json.loads((tiny_mpnet_base / "config.json").read_text())
    cfg, cls = encoder_from_hf_config(hf)
    assert cls is MPNetModel and isinstance(cfg, MPNetConfig)
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(model)
    params = params_from_state_dict(model, read_state_dict(tiny_mpnet_base))
    torch_model = AutoModel.from_pretrained(tiny_mpnet_base).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, cfg.vocab_size, size=(3, 300)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[1, 200:], mask[1, 200:] = 1, 0
    ids[2, 7:], mask[2, 7:] = 1, 0
    with torch.no_grad():
        expected = torch_model(input_ids=torch.from_numpy(ids).long(),
                               attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    got = np.asarray(nnx.merge(graphdef, params)(jnp.asarray(ids), jnp.asarray(mask)))
    assert max_abs(got * mask[..., None], expected * mask[..., None]) < TOL


# ---------------------------------------------------------------- dispatch and checkpoints


@pytest.mark.parametrize(
    "architectures,model_type,cls",
    [
        (["BertModel"], "bert", None),
        (["MPNetForMaskedLM"], "mpnet", MPNetModel),
        (["RobertaModel"], "roberta", XLMRobertaModel),
        (["XLMRobertaForMaskedLM"], "xlm-roberta", XLMRobertaModel),
        (["DistilBertForMaskedLM"], "distilbert", None),
    ],
)
def test_dispatch_by_architectures_when_model_type_is_missing(architectures, model_type, cls):
    # 4 heads: the defaults' 12 do not divide 32, a config no model runs, refused at load since issue 30
    cfg, model_cls = encoder_from_hf_config({"architectures": architectures, "hidden_size": 32,
                                             "num_attention_heads": 4, "n_heads": 4, "dim": 32})
    assert model_cls is ARCHITECTURES[model_type][1]
    if cls is not None:
        assert model_cls is cls
    if model_type in ("roberta", "xlm-roberta"):
        assert cfg.position_offset and not model_cls.uses_token_types


@pytest.mark.parametrize("config", [
    {"model_type": "deberta-v2", "architectures": ["DebertaV2Model"]},
    {"model_type": "t5", "architectures": ["T5EncoderModel"]},
    {"architectures": ["RobertaPreLayerNormModel"]},
    {},
])
def test_unsupported_architecture_names_it_and_the_supported_ones(config):
    with pytest.raises(ValueError, match="unsupported architecture") as e:
        encoder_from_hf_config(config)
    message = str(e.value)
    for name in [*config.get("architectures", []), "bert", "mpnet", "roberta", "xlm-roberta"]:
        assert name in message


def test_unsupported_architecture_through_the_facade(make, tmp_path):
    folder = shutil.copytree(make("xlm-roberta"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "deberta-v2", ["DebertaV2Model"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="deberta-v2.*DebertaV2Model.*supports.*mpnet.*xlm-roberta"):
        jaxst.SentenceTransformer(folder)


@pytest.mark.parametrize("arch", ["mpnet", "xlm-roberta", "roberta"])
def test_task_checkpoint_prefix(request, arch):
    """Checkpoints saved from task models (XLMRobertaForMaskedLM, ...) prefix keys like PyTorch does."""
    import transformers
    from flax import nnx

    base = request.getfixturevalue(ARCHS[arch][0])
    hf = json.loads((base / "config.json").read_text())
    cfg, cls = encoder_from_hf_config(hf)
    torch_cls = getattr(transformers, hf["architectures"][0])
    assert cls.base_model_prefix == torch_cls.base_model_prefix
    model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    state = read_state_dict(base)
    prefixed = {f"{cls.base_model_prefix}.{k}": v for k, v in state.items()}
    direct = params_from_state_dict(model, state)
    via_prefix = params_from_state_dict(model, prefixed, (f"{cls.base_model_prefix}.",))
    jax.tree.map(np.testing.assert_array_equal, direct, via_prefix)


def test_missing_relative_attention_bias_is_named(make, tmp_path):
    from safetensors.numpy import save_file

    folder = shutil.copytree(make("mpnet"), tmp_path / "m")
    state = read_state_dict(folder)
    del state["encoder.relative_attention_bias.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match="relative_attention_bias"):
        jaxst.SentenceTransformer(folder)


def test_too_few_relative_buckets_is_refused():
    with pytest.raises(ValueError, match="relative_attention_num_buckets"):
        MPNetConfig.from_hf({"model_type": "mpnet", "relative_attention_num_buckets": 16})


# ---------------------------------------------------------------- bad input


def test_bad_input(pair):
    _, st, jx = pair
    assert jx.encode([]).shape == (0, 32)
    assert max_abs(jx.encode(["", " ", "\u200b"]), st.encode(["", " ", "\u200b"])) < TOL
    with pytest.raises(TypeError, match="input 1"):
        jx.encode(["ok", None])
    with pytest.raises(TypeError, match="string"):
        jx.encode(3)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        jx.max_seq_length = 10_000
