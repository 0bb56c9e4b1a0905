"""Bad input gets a clear error or a documented result, never a silent wrong answer or a hang."""

from __future__ import annotations

import json
import shutil
import time
import warnings

import numpy as np
import pytest
from conftest import TEXTS, max_abs

import jaxst


@pytest.fixture(scope="module")
def tiny(make_tiny_st):
    folder = make_tiny_st(pooling_mode="mean")
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(str(folder), device="cpu")
    return folder, st, jaxst.SentenceTransformer(folder)


def test_empty_list_gives_empty_matrix(tiny):
    _, _, jx = tiny
    out = jx.encode([])
    assert isinstance(out, np.ndarray) and out.shape == (0, 32) and out.dtype == np.float32
    assert jx.encode([], convert_to_tensor=True).shape == (0, 32)
    assert jx.encode([], truncate_dim=8).shape == (0, 8)
    assert jx.encode([], precision="ubinary").shape == (0, 4)


def test_empty_string_encodes_like_the_original(tiny):
    _, st, jx = tiny
    assert max_abs(jx.encode(""), st.encode("")) < 1e-5
    assert max_abs(jx.encode(["", "x"]), st.encode(["", "x"])) < 1e-5


@pytest.mark.parametrize("bad", [None, 3, 3.5, b"bytes", {"text": "a"}])
def test_non_text_inputs_raise_type_error(tiny, bad):
    _, _, jx = tiny
    with pytest.raises(TypeError, match="string"):
        jx.encode(bad)


@pytest.mark.parametrize("bad", [["ok", None], ["ok", 3], ["ok", ["nested"]], ("ok", b"x")])
def test_non_string_items_raise_type_error_naming_the_item(tiny, bad):
    _, _, jx = tiny
    with pytest.raises(TypeError, match="input 1"):
        jx.encode(bad)


def test_unknown_keyword_argument(tiny):
    _, _, jx = tiny
    with pytest.raises(ValueError, match="convert_to_torch"):
        jx.encode(["a"], convert_to_torch=True)


@pytest.mark.parametrize("precision", ["int4", "float16", "", None])
def test_unknown_precision(tiny, precision):
    _, _, jx = tiny
    with pytest.raises(ValueError, match="precision"):
        jx.encode(["a", "b"], precision=precision)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"batch_size": -1}, {"truncate_dim": 0},
                                    {"output_value": "logits"}, {"prompt_name": "nope"}])
def test_bad_options(tiny, kwargs):
    _, _, jx = tiny
    with pytest.raises(ValueError):
        jx.encode(["a", "b"], **kwargs)


def test_prompt_must_be_a_string(tiny):
    _, _, jx = tiny
    with pytest.raises(TypeError, match="prompt"):
        jx.encode(["a"], prompt=3)


def test_int8_of_one_embedding_needs_ranges(tiny):
    _, _, jx = tiny
    with pytest.raises(ValueError, match="single embedding"):
        jx.encode("just one", precision="int8")


def test_deprecated_sentences_keyword(tiny):
    _, st, jx = tiny
    with pytest.warns(DeprecationWarning, match="sentences"):
        out = jx.encode(sentences=TEXTS[:3])
    assert max_abs(out, st.encode(TEXTS[:3])) < 1e-5
    with pytest.raises(TypeError):
        jx.encode(TEXTS[:3], sentences=TEXTS[:3])


def test_long_text_is_truncated_like_the_original(tiny):
    _, st, jx = tiny
    text = "word " * 5000
    assert jx.tokenize([text])["input_ids"].shape == (1, 64)
    assert max_abs(jx.encode(text), st.encode(text)) < 1e-5


def test_max_seq_length_setter_validates(tiny):
    _, _, jx = tiny
    with pytest.raises(ValueError):
        jx.max_seq_length = 0
    with pytest.raises(ValueError, match="max_position_embeddings"):
        jx.max_seq_length = 10_000


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_corrupt_weights_file_is_named(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated download
    with pytest.raises(OSError, match="model.safetensors"):
        jaxst.SentenceTransformer(folder)
    weights.write_bytes(b"\x00garbage")
    with pytest.raises(OSError, match="model.safetensors"):
        jaxst.SentenceTransformer(folder)


def test_missing_weights(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "m")
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match="no weights"):
        jaxst.SentenceTransformer(folder)


def test_unknown_module_type_is_refused(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "m")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "", "type": "sentence_transformers.models.LSTM"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="LSTM"):
        jaxst.SentenceTransformer(folder)


def test_custom_module_needs_remote_code(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "m")
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 9, "name": "9", "path": "", "type": "my_package.CustomPooling"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="remote code"):
        jaxst.SentenceTransformer(folder)


def test_auto_map_model_loads_natively_without_remote_code_and_is_refused_with_it(tiny, tmp_path):
    """A config with auto_map (custom code on the Hub) for an architecture jaxst implements: without
    trust_remote_code it loads jaxst's own implementation, as sentence-transformers / transformers load their
    native class (same numbers); with trust_remote_code=True, which asks for that code, it is refused; an
    architecture jaxst does not implement is refused either way."""
    from sentence_transformers import SentenceTransformer

    folder = copy_folder(tiny[0], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    reference = SentenceTransformer(str(folder), device="cpu", trust_remote_code=False)
    assert max_abs(jaxst.SentenceTransformer(folder).encode(TEXTS), reference.encode(TEXTS)) < 1e-5
    with pytest.raises(ValueError, match="remote code.*trust_remote_code=False"):
        jaxst.SentenceTransformer(folder, trust_remote_code=True)
    config["model_type"], config["architectures"] = "custom-bert", ["CustomModel"]
    (folder / "config.json").write_text(json.dumps(config))
    for trust in (False, True):
        with pytest.raises(ValueError, match="remote code"):
            jaxst.SentenceTransformer(folder, trust_remote_code=trust)


def test_unsupported_architecture_is_named(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"], config["architectures"] = "gpt2", ["GPT2Model"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="gpt2.*supports.*bert"):
        jaxst.SentenceTransformer(folder)


def test_invalid_json_is_named(tiny, tmp_path):
    folder = copy_folder(tiny[0], tmp_path / "m")
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="1_Pooling"):
        jaxst.SentenceTransformer(folder)


def test_missing_model_fails_fast_offline_with_what_was_tried():
    start = time.monotonic()
    with pytest.raises(OSError, match="(?s)cache.*offline"):
        jaxst.SentenceTransformer("no-such-org/no-such-model-xyz")
    with pytest.raises(OSError, match="tried"):
        jaxst.SentenceTransformer("definitely-not-a-model", local_files_only=True)
    assert time.monotonic() - start < 10


def test_missing_local_folder_and_file_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        jaxst.SentenceTransformer(str(tmp_path / "nope"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a model folder"):
        jaxst.SentenceTransformer(str(f))
    with pytest.raises(ValueError):
        jaxst.SentenceTransformer()
    with pytest.raises(TypeError):
        jaxst.SentenceTransformer(42)


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        jaxst.SentenceTransformer("all-MiniLM-L6-v2", device="quantum")
    with pytest.raises(TypeError):
        jaxst.SentenceTransformer("all-MiniLM-L6-v2", device=3)


def test_bad_similarity_name(tiny):
    _, _, jx = tiny
    with pytest.raises(ValueError, match="similarity_fn_name"):
        jx.similarity_fn_name = "jaccard"
