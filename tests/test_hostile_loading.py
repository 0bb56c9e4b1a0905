"""Hostile model folders (issue 30, "Nothing silent, nothing lost"): every malformed file or config is an error
that names the file and what is wrong, or a documented repair with a warning naming the file, never NaN, a
hang or a raw AttributeError. Each test copies a tiny model folder, breaks one thing, and keeps the unbroken
folder as its positive control (it loads and encodes as sentence-transformers does)."""

from __future__ import annotations

import json
import shutil
import struct
import time
import warnings

import numpy as np
import pytest
from conftest import TEXTS, build_late_interaction, max_abs

import jaxst

LONG = " ".join(["every word here is a token of a text far longer than any position table"] * 40)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    data = change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def _load_quietly(folder, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jaxst.SentenceTransformer(folder, **kwargs)


def _oracle(folder, max_seq_length=None):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(str(folder), device="cpu")
    if max_seq_length is not None:
        st.max_seq_length = max_seq_length
    return st


@pytest.fixture(scope="module")
def tiny(make_tiny_st):
    """A 2-layer BERT (128 positions, 30522 vocabulary rows) saved by sentence-transformers, max_seq_length 64."""
    return make_tiny_st(pooling_mode="mean")


def test_unbroken_folder_loads_and_encodes_like_the_original(tiny):
    assert max_abs(_load_quietly(tiny).encode(TEXTS + [LONG]), _oracle(tiny).encode(TEXTS + [LONG])) < 1e-5


# ------------------------------------------------------------------ 1. max_seq_length past the position table


@pytest.mark.parametrize("saved", [129, 100_000])
def test_max_seq_length_past_the_position_table_is_capped_with_a_warning(tiny, tmp_path, saved):
    """sentence-transformers keeps the saved length and then fails in torch's lookup on a long text; jaxst caps
    at the table (128 positions) and says so, naming the file. Never NaN: a batch holding the long text
    encodes as sentence-transformers does at 128 tokens."""
    folder = _copy(tiny, tmp_path / "m")
    _edit_json(folder / "sentence_bert_config.json", lambda c: {**c, "max_seq_length": saved})
    with pytest.warns(UserWarning, match=rf"sentence_bert_config.json: max_seq_length {saved} exceeds the 128"):
        model = jaxst.SentenceTransformer(folder)
    assert model.max_seq_length == 128
    out = model.encode([LONG, "short", "A man is eating food."])
    assert np.isfinite(out).all()
    assert max_abs(out, _oracle(tiny, 128).encode([LONG, "short", "A man is eating food."])) < 1e-5


def test_max_seq_length_at_the_table_needs_no_warning(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    _edit_json(folder / "sentence_bert_config.json", lambda c: {**c, "max_seq_length": 128})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = jaxst.SentenceTransformer(folder)
    assert model.max_seq_length == 128
    assert max_abs(model.encode([LONG, "x"]), _oracle(tiny, 128).encode([LONG, "x"])) < 1e-5


def test_position_table_with_an_offset_caps_at_its_tokens(make_tiny_st, tiny_mpnet_base, tmp_path):
    """MPNet's (as RoBERTa's) 514 positions serve 512 tokens: a saved 514 becomes 512."""
    folder = _copy(make_tiny_st(base=tiny_mpnet_base), tmp_path / "m")
    _edit_json(folder / "sentence_bert_config.json", lambda c: {**c, "max_seq_length": 514})
    with pytest.warns(UserWarning, match="max_seq_length 514 exceeds the 512 positions"):
        model = jaxst.SentenceTransformer(folder)
    assert model.max_seq_length == 512
    text = LONG * 2
    assert max_abs(model.encode([text, "x"]), _oracle(folder, 512).encode([text, "x"])) < 1e-5


def test_rotary_models_keep_their_saved_length():
    """Qwen3, Gemma 3, ModernBERT, Nomic and GTE have no position table: nothing to cap."""
    from jaxst.base import BaseModel
    from jaxst.models import Qwen3Config

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert BaseModel._fit_position_table(100_000, Qwen3Config(), "s.json", "c.json") == 100_000


@pytest.mark.parametrize("bad", [0, -5, 3.5, "64", [64], True])
def test_bad_max_seq_length_is_named(tiny, tmp_path, bad):
    folder = _copy(tiny, tmp_path / "m")
    _edit_json(folder / "sentence_bert_config.json", lambda c: {**c, "max_seq_length": bad})
    with pytest.raises(ValueError, match="sentence_bert_config.json: max_seq_length must be a positive integer"):
        _load_quietly(folder)


# ------------------------------------------------------------------ 2. token ids past the embedding table


def _add_tokens(folder, tokens, special=False):
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens([AddedToken(t, special=special, normalized=False) for t in tokens])
    tok.save(str(folder / "tokenizer.json"))
    return [tok.token_to_id(t) for t in tokens]


@pytest.mark.parametrize("special", [False, True])
def test_token_ids_past_the_embedding_table_raise_never_nan(tiny, tmp_path, special):
    """A tokenizer with added tokens the checkpoint lacks (ids 30522+ on a 30522-row table): ordinary added
    tokens warn at load naming tokenizer.json; special ones (Gemma 3's image token) load quietly. A text that
    produces such an id is a ValueError naming the id and the table, in every batch that holds it; texts
    that do not encode as before."""
    folder = _copy(tiny, tmp_path / "m")
    (new_id,) = _add_tokens(folder, ["qqzzxx"], special=special)
    assert new_id == 30522
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = jaxst.SentenceTransformer(folder)
    named = [w for w in caught if "tokenizer.json" in str(w.message) and "30522 embedding rows" in str(w.message)]
    assert bool(named) is not special
    for texts in (["hello qqzzxx"], ["fine", "also fine", "hello qqzzxx world"]):
        with pytest.raises(ValueError, match="id 30522 .*qqzzxx.*table of 30522 rows"):
            model.encode(texts)
    with pytest.raises(ValueError, match="id 30522"):
        model.tokenize(["qqzzxx"])
    assert max_abs(model.encode(TEXTS), _oracle(tiny).encode(TEXTS)) < 1e-5


def test_padding_id_past_the_embedding_table_is_refused_at_load(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    _add_tokens(folder, ["[MYPAD]"], special=True)
    _edit_json(folder / "tokenizer_config.json", lambda c: {**c, "pad_token": "[MYPAD]"})
    with pytest.raises(ValueError, match=r"tokenizer.json: the padding token's id 30522 is past the 30522"):
        _load_quietly(folder)


# ------------------------------------------------------------------ 3. sizes and heads in config.json


@pytest.mark.parametrize("field, value, message", [
    ("num_attention_heads", 0, "num_attention_heads must be a positive integer, got 0"),
    ("num_attention_heads", -4, "num_attention_heads must be a positive integer"),
    ("num_attention_heads", 5, "num_attention_heads 5 does not divide hidden_size 32"),
    ("num_attention_heads", 4.0, "num_attention_heads must be a positive integer, got 4.0"),
    ("num_attention_heads", "4", "num_attention_heads must be a positive integer, got '4'"),
    ("hidden_size", 0, "hidden_size must be a positive integer"),
    ("hidden_size", -32, "hidden_size must be a positive integer"),
    ("intermediate_size", 64.5, "intermediate_size must be a positive integer"),
    ("vocab_size", [30522], "vocab_size must be a positive integer"),
    ("num_hidden_layers", 0, "num_hidden_layers must be a positive integer"),
    ("max_position_embeddings", -1, "max_position_embeddings must be a positive integer"),
    ("type_vocab_size", -1, "type_vocab_size must be a non-negative integer"),
])
def test_bad_sizes_in_config_are_named_at_load(tiny, tmp_path, field, value, message):
    folder = _copy(tiny, tmp_path / "m")
    _edit_json(folder / "config.json", lambda c: {**c, field: value})
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        _load_quietly(folder)


@pytest.mark.parametrize("change, message", [
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
    ({"num_key_value_heads": 3}, "num_key_value_heads 3 does not divide num_attention_heads 4"),
    ({"head_dim": 0}, "head_dim must be a positive integer"),
    ({"hidden_size": None}, "needs 'hidden_size'"),
    ({"layer_types": ["full_attention"] * 1000}, "layer_types has 1000 entries for num_hidden_layers 2"),
])
def test_bad_sizes_are_named_for_every_architecture(change, message):
    """The same check for configs that divide by the head count inside from_hf (Qwen3: hidden // heads)."""
    from jaxst.models import encoder_from_hf_config

    good = {"model_type": "qwen3", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    encoder_from_hf_config(good)
    bad = {k: v for k, v in {**good, **change}.items() if v is not None}
    with pytest.raises(ValueError, match=f"x/config.json: .*{message}"):
        encoder_from_hf_config(bad, "x/config.json")


# ------------------------------------------------------------------ 4. layer counts against the checkpoint


@pytest.mark.parametrize("layers", [3, 10**6])
def test_more_layers_than_the_checkpoint_is_refused_before_building(tiny, tmp_path, layers):
    folder = _copy(tiny, tmp_path / "m")
    _edit_json(folder / "config.json", lambda c: {**c, "num_hidden_layers": layers})
    start = time.monotonic()
    message = rf"config.json: num_hidden_layers is {layers} but .*model.safetensors holds 2 layers"
    with pytest.raises(ValueError, match=message):
        _load_quietly(folder)
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------ 5. module paths leaving the folder


@pytest.mark.parametrize("path", ["../outside", "1_Pooling/../../outside", "/tmp", "..\\outside", "link"])
def test_module_paths_may_not_leave_the_folder(tiny, tmp_path, path):
    folder = _copy(tiny, tmp_path / "m")
    shutil.copytree(folder / "1_Pooling", tmp_path / "outside")
    (folder / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    _edit_json(folder / "modules.json", lambda m: [m[0], {**m[1], "path": path}])
    with pytest.raises(ValueError, match="modules.json: module path .* leaves the model folder"):
        _load_quietly(folder)


# ------------------------------------------------------------------ 6. and 7. damaged safetensors files


def _safetensors(path, header: dict | str, data: bytes):
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _entry(start, end, shape=(2,)):
    return {"dtype": "F32", "shape": list(shape), "data_offsets": [start, end]}


@pytest.mark.parametrize("name, header, nbytes", [
    ("overlap", {"a": _entry(0, 8), "b": _entry(4, 12)}, 12),
    ("same bytes", {"a": _entry(0, 8), "b": _entry(0, 8)}, 8),
    ("gap", {"a": _entry(0, 8), "b": _entry(12, 20)}, 20),
    ("not from 0", {"a": _entry(4, 12)}, 12),
    ("trailing bytes", {"a": _entry(0, 8)}, 12),
    ("wrong size", {"a": _entry(0, 12)}, 12),
    ("negative shape", {"a": _entry(0, 0, (-2, 0))}, 0),
    ("unknown dtype", {"a": {**_entry(0, 8), "dtype": "Q7"}}, 8),
    ("header not an object", [1, 2], 0),
    ("entry not an object", {"a": [0, 8]}, 8),
    ("deeply nested", "[" * 100_000 + "]" * 100_000, 0),
    ("nested metadata", '{"__metadata__": ' + "[" * 100_000 + "]" * 100_000 + "}", 0),
])
def test_damaged_safetensors_are_refused_as_the_safetensors_library_refuses_them(tmp_path, name, header, nbytes):
    from safetensors import safe_open

    from jaxst.io.weights import SafetensorsFile

    good = _safetensors(tmp_path / "good.safetensors", {"a": _entry(0, 8), "b": _entry(8, 16)}, bytes(16))
    assert sorted(SafetensorsFile(good).keys()) == ["a", "b"]
    with safe_open(str(good), "np") as f:
        assert sorted(f.keys()) == ["a", "b"]
    bad = _safetensors(tmp_path / "bad.safetensors", header, bytes(nbytes))
    with pytest.raises(OSError, match="bad.safetensors"):
        SafetensorsFile(bad)
    with pytest.raises(Exception):  # noqa: B017 - the oracle refuses it too (its own error types)
        with safe_open(str(bad), "np") as f:
            [f.get_tensor(k) for k in f.keys()]


def test_overlapping_tensors_in_a_model_folder_name_the_file(tiny, tmp_path):
    folder = _copy(tiny, tmp_path / "m")
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    first, second = header[names[0]], header[names[1]]
    size = second["data_offsets"][1] - second["data_offsets"][0]
    if first["data_offsets"][1] - first["data_offsets"][0] == size:  # point the second at the first's bytes
        second["data_offsets"] = list(first["data_offsets"])
    else:
        second["data_offsets"] = [first["data_offsets"][0], first["data_offsets"][0] + size]
    body = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n :])
    with pytest.raises(OSError, match="model.safetensors.*overlaps"):
        _load_quietly(folder)


# ------------------------------------------------------------------ 7. configs that are not JSON objects


@pytest.mark.parametrize("file, content", [
    ("config.json", [1, 2]),
    ("config.json", "bert"),
    ("config.json", "[" * 100_000 + "]" * 100_000),  # raw text: deeper than the JSON parser recurses
    ("sentence_bert_config.json", [64]),
    ("1_Pooling/config.json", ["mean"]),
    ("tokenizer_config.json", []),
    ("special_tokens_map.json", 3),
    ("config_sentence_transformers.json", ["cosine"]),
    ("modules.json", {"0": "Transformer"}),
    ("modules.json", [["sentence_transformers.models.Transformer", ""]]),
    ("modules.json", [{"idx": 0, "type": 7, "path": ""}]),
    ("modules.json", [{"idx": 0, "type": "sentence_transformers.models.Transformer", "path": ["x"]}]),
    ("config_sentence_transformers.json", {"prompts": ["query: "]}),
    ("tokenizer.json", [1]),
])
def test_malformed_configs_name_the_file(tiny, tmp_path, file, content):
    folder = _copy(tiny, tmp_path / "m")
    raw = content if isinstance(content, str) and content.startswith("[") else json.dumps(content)
    (folder / file).write_text(raw, encoding="utf-8")
    with pytest.raises((ValueError, OSError), match=file.replace(".", r"\.")):
        _load_quietly(folder)


def test_plain_hf_folder_with_a_list_config_names_it(tiny_bert_base, tmp_path):
    folder = _copy(tiny_bert_base, tmp_path / "m")
    (folder / "sentence_bert_config.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sentence_bert_config\.json must hold an object"):
        _load_quietly(folder)


def test_multi_vector_lengths_past_the_position_table_are_capped(tiny_backbone, tmp_path):
    """MultiVectorEncoder's document_length and query_length are sequence lengths too: capped at the 128
    positions with a warning, never NaN; short texts still match sentence-transformers (the positive control)."""
    from jaxst import MultiVectorEncoder

    st = build_late_interaction(tiny_backbone, tmp_path / "mv", query_length=1000, document_length=100_000)
    with pytest.warns(UserWarning, match=r"document_length 100000 exceeds the 128 positions"):
        model = MultiVectorEncoder(str(tmp_path / "mv"))
    assert (model.query_length, model.document_length) == (128, 128)
    long_text = "a long document that goes on " * 200
    for out in (model.encode_document([long_text, "short"]), model.encode_query([long_text])):
        assert all(np.isfinite(np.asarray(rows)).all() for rows in out)
    assert len(model.encode_document([long_text])[0]) == 128
    short = ["Paris is the capital of France.", "Berlin!"]
    ours, ref = model.encode_document(short), st.encode_document(short)
    assert all(np.max(np.abs(np.asarray(o) - r.detach().numpy())) < 1e-5 for o, r in zip(ours, ref))
