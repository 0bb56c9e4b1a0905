"""Saving and converting: ``SentenceTransformer.save`` / ``CrossEncoder.save`` write folders that
sentence-transformers and transformers load unchanged, with the CURRENT params; orbax checkpoints convert
both ways; saves are atomic.

Every model here is a tiny random one built by tests/conftest.py, loaded by jaxst, and "fine-tuned" by
adding seeded noise to every leaf of ``model.params``, so a save that wrote the original weights (or copied
files) would fail the comparisons.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import ROOT, TEXTS, max_abs

import jaxst
from jaxst.cross_encoder import identity
from jaxst.io import export

TOL = 1e-5

# name -> (HF base folder fixture, make_tiny_st spec): every architecture, each with Dense + Normalize heads.
ST_MODELS = {
    "bert": ("tiny_bert_base", dict(pooling_mode="mean", dense=[(16, torch.nn.Tanh(), True)], normalize=True,
                                    prompts={"query": "query: "}, similarity_fn_name="dot")),
    "mpnet": ("tiny_mpnet_base", dict(pooling_mode="cls", dense=[(24, torch.nn.ReLU(), False)], normalize=True,
                                      max_seq_length=128)),
    "xlm-roberta": ("tiny_xlmr_base", dict(pooling_mode=("mean", "max"), dense=[(16, torch.nn.Tanh(), True)],
                                           normalize=True, max_seq_length=128)),
}

# name -> make_tiny_cross_encoder spec
CE_MODELS = {
    "bert-1-tanh": dict(arch="bert", num_labels=1, activation=torch.nn.Tanh()),
    "bert-3": dict(arch="bert", num_labels=3),
    "xlm-roberta-1": dict(arch="xlm-roberta", num_labels=1),
    "mpnet-1": dict(arch="mpnet", num_labels=1),
}
PAIRS = [(TEXTS[i], TEXTS[(i + 3) % len(TEXTS)]) for i in range(len(TEXTS))]


def perturbed(params, seed: int = 0):
    """params + N(0, 0.02) noise on every leaf: a stand-in for fine-tuning."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    noisy = [x + jnp.asarray(rng.normal(0.0, 0.02, x.shape), x.dtype) for x in leaves]
    return jax.tree.unflatten(tree, noisy)


def assert_same_params(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def reference_st(folder):
    from sentence_transformers import SentenceTransformer

    return quiet(SentenceTransformer, str(folder), device="cpu")


def reference_ce(folder):
    from sentence_transformers import CrossEncoder

    return quiet(CrossEncoder, str(folder), device="cpu")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ------------------------------------------------------------------------------ SentenceTransformer


@pytest.fixture(scope="module", params=list(ST_MODELS))
def saved_st(request, make_tiny_st, tmp_path_factory):
    """(original folder, fine-tuned jaxst model, the folder jaxst saved it to)."""
    base, spec = ST_MODELS[request.param]
    original = make_tiny_st(base=request.getfixturevalue(base), **spec)
    model = jaxst.SentenceTransformer(original)
    model.params = perturbed(model.params)
    out = tmp_path_factory.mktemp(f"saved-{request.param}") / "model"
    model.save(out)
    return original, model, out


def test_saved_folder_loads_in_sentence_transformers(saved_st):
    original, model, out = saved_st
    st = reference_st(out)
    ours = model.encode(TEXTS)
    assert max_abs(st.encode(TEXTS), ours) < TOL
    assert max_abs(reference_st(original).encode(TEXTS), ours) > 1e-3  # the fine-tuned params were saved
    if "query" in model.prompts and model.prompts["query"]:
        assert max_abs(st.encode(TEXTS, prompt_name="query"), model.encode(TEXTS, prompt_name="query")) < TOL
    assert st.max_seq_length == model.max_seq_length
    assert st.similarity_fn_name == model.similarity_fn_name
    assert {k: v for k, v in st.prompts.items() if v} == {k: v for k, v in model.prompts.items() if v}
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Dense", "Normalize"]


def test_saved_folder_loads_in_transformers(saved_st):
    """AutoModel finds every tensor it expects and nothing else, and its token states are jaxst's."""
    from safetensors.numpy import load_file
    from transformers import AutoModel

    _, model, out = saved_st
    auto, info = quiet(AutoModel.from_pretrained, str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        hidden = auto.eval()(**{k: torch.from_numpy(v).long() for k, v in batch.items()}).last_hidden_state.numpy()
    ours = np.asarray(model.forward(model.params, batch)["token_embeddings"])
    mask = batch["attention_mask"].astype(bool)
    assert max_abs(hidden[mask], ours[mask]) < TOL

    dense = load_file(str(out / "2_Dense" / "model.safetensors"))
    kernel = np.asarray(model.params["heads"][0]["linear"]["kernel"])  # Flax [in, out]
    np.testing.assert_array_equal(dense["linear.weight"], kernel.T)  # PyTorch [out, in]


def test_jaxst_loads_its_own_folder_exactly(saved_st):
    _, model, out = saved_st
    again = jaxst.SentenceTransformer(out)
    assert_same_params(again.params, model.params)
    np.testing.assert_array_equal(again.encode(TEXTS), model.encode(TEXTS))
    for attr in ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim", "max_seq_length"):
        assert getattr(again, attr) == getattr(model, attr), attr


def test_settings_round_trip(make_tiny_st, tmp_path):
    """prompts, default_prompt_name, similarity_fn_name, truncate_dim and max_seq_length as set after loading."""
    model = jaxst.SentenceTransformer(make_tiny_st(dense=[(16, torch.nn.Tanh(), True)], normalize=True))
    model.prompts = {"query": "query: ", "document": "passage: ", "topic": "topic: "}
    model.default_prompt_name = "query"
    model.similarity_fn_name = "euclidean"
    model.truncate_dim = 8
    model.max_seq_length = 40
    model.save_pretrained(tmp_path / "m")

    st = reference_st(tmp_path / "m")
    assert (st.prompts, st.default_prompt_name) == (model.prompts, "query")
    assert (st.similarity_fn_name, st.truncate_dim, st.max_seq_length) == ("euclidean", 8, 40)
    assert max_abs(st.encode(TEXTS), model.encode(TEXTS)) < TOL  # the default prompt, truncation and length apply
    assert model.encode(TEXTS).shape == (len(TEXTS), 8)

    again = jaxst.SentenceTransformer(tmp_path / "m")
    assert (again.prompts, again.default_prompt_name) == (model.prompts, "query")
    assert (again.similarity_fn_name, again.truncate_dim, again.max_seq_length) == ("euclidean", 8, 40)
    np.testing.assert_array_equal(again.encode(TEXTS), model.encode(TEXTS))
    written = json.loads((tmp_path / "m" / "config_sentence_transformers.json").read_text())
    assert written["__version__"] == {"jaxst": jaxst.__version__}


def test_plain_hugging_face_folder_saves_as_a_full_sentence_transformers_folder(tiny_bert_base, tmp_path):
    """A folder without modules.json loads as Transformer + mean pooling and saves with every module file."""
    model = quiet(jaxst.SentenceTransformer, tiny_bert_base)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "modules.json").is_file() and (tmp_path / "m" / "1_Pooling" / "config.json").is_file()
    st = reference_st(tmp_path / "m")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling"]
    assert max_abs(st.encode(TEXTS), model.encode(TEXTS)) < TOL


def test_saved_config_names_the_float32_weights(make_tiny_st, tmp_path):
    """A source config.json that names float16 (many Hub models) would make transformers 5 load the saved
    float32 weights as float16; the saved config says float32."""
    from transformers import AutoModel

    folder = shutil.copytree(make_tiny_st(), tmp_path / "half")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "float16", "torch_dtype": "float16"}))
    model = jaxst.SentenceTransformer(folder)
    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (saved["dtype"], saved["torch_dtype"]) == ("float32", "float32")
    assert quiet(AutoModel.from_pretrained, str(tmp_path / "m")).dtype == torch.float32
    assert max_abs(reference_st(tmp_path / "m").encode(TEXTS), model.encode(TEXTS)) < TOL


# ------------------------------------------------------------------------------ CrossEncoder


@pytest.fixture(scope="module", params=list(CE_MODELS))
def saved_ce(request, make_tiny_cross_encoder, tmp_path_factory):
    original = make_tiny_cross_encoder(**CE_MODELS[request.param])
    model = jaxst.CrossEncoder(original)
    model.params = perturbed(model.params, seed=1)
    out = tmp_path_factory.mktemp(f"saved-ce-{request.param}") / "model"
    model.save(out)
    return original, model, out


def test_saved_cross_encoder_loads_in_sentence_transformers(saved_ce):
    original, model, out = saved_ce
    ce = reference_ce(out)
    ours = model.predict(PAIRS)
    assert max_abs(ce.predict(PAIRS), ours) < TOL
    assert max_abs(ce.predict(PAIRS, activation_fn=torch.nn.Identity()),
                   model.predict(PAIRS, activation_fn=identity)) < TOL
    assert max_abs(reference_ce(original).predict(PAIRS), ours) > 1e-3  # the fine-tuned params were saved
    assert type(ce.activation_fn).__name__ == type(reference_ce(original).activation_fn).__name__
    assert ce.num_labels == model.num_labels and ce.max_seq_length == model.max_seq_length


def test_saved_cross_encoder_loads_in_transformers(saved_ce):
    from transformers import AutoModelForSequenceClassification

    _, model, out = saved_ce
    auto, info = quiet(AutoModelForSequenceClassification.from_pretrained, str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    batch = model.tokenize(PAIRS)
    with torch.no_grad():
        logits = auto.eval()(**{k: torch.from_numpy(v).long() for k, v in batch.items()}).logits.numpy()
    assert max_abs(logits, model.apply(model.params, batch)) < TOL


def test_jaxst_loads_its_own_cross_encoder_exactly(saved_ce):
    _, model, out = saved_ce
    again = jaxst.CrossEncoder(out)
    assert_same_params(again.params, model.params)
    assert again.activation_fn is model.activation_fn
    assert (again.num_labels, again.max_length, again.prompts) == (model.num_labels, model.max_length, model.prompts)
    np.testing.assert_array_equal(again.predict(PAIRS), model.predict(PAIRS))


def test_plain_hugging_face_cross_encoder_saves_as_sentence_transformers_does(make_tiny_cross_encoder, tmp_path):
    """A bare *ForSequenceClassification folder (no sentence-transformers files) saves as a CrossEncoder folder."""
    original = make_tiny_cross_encoder(arch="bert", num_labels=1, saved="hf")
    model = jaxst.CrossEncoder(original)
    model.save(tmp_path / "m")
    written = json.loads((tmp_path / "m" / "config_sentence_transformers.json").read_text())
    assert (written["model_type"], written["activation_fn"]) == ("CrossEncoder", "torch.nn.modules.activation.Sigmoid")
    assert max_abs(reference_ce(tmp_path / "m").predict(PAIRS), model.predict(PAIRS)) < TOL
    assert max_abs(reference_ce(original).predict(PAIRS), model.predict(PAIRS)) < TOL


@pytest.mark.parametrize("fn", [jax.nn.sigmoid, jnp.tanh, jax.nn.relu, jax.nn.silu, jax.nn.softplus])
def test_cross_encoder_activation_round_trip(make_tiny_cross_encoder, tmp_path, fn):
    model = jaxst.CrossEncoder(make_tiny_cross_encoder(arch="bert", num_labels=1))
    model.activation_fn = fn
    model.save(tmp_path / "m")
    assert jaxst.CrossEncoder(tmp_path / "m").activation_fn is fn
    assert max_abs(reference_ce(tmp_path / "m").predict(PAIRS), model.predict(PAIRS)) < TOL


def test_cross_encoder_unsaveable_activation_is_refused(make_tiny_cross_encoder, tmp_path):
    model = jaxst.CrossEncoder(make_tiny_cross_encoder(arch="bert", num_labels=1))
    model.activation_fn = lambda x: 2 * x
    with pytest.raises(ValueError, match="activation_fn"):
        model.save(tmp_path / "m")
    assert not (tmp_path / "m").exists() and not leftovers(tmp_path, "m")


# ------------------------------------------------------------------------------ atomic saves


@pytest.fixture
def small_model(make_tiny_st):
    model = jaxst.SentenceTransformer(make_tiny_st(dense=[(16, torch.nn.Tanh(), True)], normalize=True))
    model.params = perturbed(model.params, seed=2)
    return model


def fail_on_second_weights_file(monkeypatch):
    """Make the writer raise after it has written one safetensors file: an interrupted save."""
    real = export._write_safetensors
    calls = []

    def flaky(path, tensors):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(path, tensors)

    monkeypatch.setattr(export, "_write_safetensors", flaky)
    return calls


def test_interrupted_save_leaves_no_folder(small_model, tmp_path, monkeypatch):
    calls = fail_on_second_weights_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        small_model.save(tmp_path / "m")
    assert len(calls) == 2  # it failed midway, after writing a file
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind either


def test_interrupted_save_keeps_the_previous_folder(small_model, tmp_path, monkeypatch):
    small_model.save(tmp_path / "m")
    before = folder_bytes(tmp_path / "m")
    previous = small_model.params
    small_model.params = perturbed(previous, seed=3)
    fail_on_second_weights_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        small_model.save(tmp_path / "m")
    assert folder_bytes(tmp_path / "m") == before
    assert not leftovers(tmp_path, "m")
    assert_same_params(jaxst.SentenceTransformer(tmp_path / "m").params, previous)


def test_interrupted_orbax_save_leaves_no_folder(small_model, tmp_path, monkeypatch):
    real = export._write_json

    def broken(path, data):  # the manifest is written last, after the orbax checkpoint
        if path.name == export.ORBAX_MANIFEST:
            raise OSError("checkpoint write failed (simulated)")
        real(path, data)

    monkeypatch.setattr(export, "_write_json", broken)
    with pytest.raises(OSError, match="simulated"):
        export.save_orbax(small_model, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_save_over_a_model_folder_replaces_the_model_and_keeps_other_files(small_model, make_tiny_st, tmp_path):
    target = shutil.copytree(make_tiny_st(pooling_mode="cls"), tmp_path / "m")  # another model, with extras
    (target / "NOTES.md").write_text("mine")
    (target / "pytorch_model.bin").write_bytes(b"stale weights")
    (target / "onnx").mkdir()
    (target / "onnx" / "model.onnx").write_bytes(b"stale export")
    small_model.save(target)
    assert (target / "NOTES.md").read_text() == "mine"
    assert not (target / "pytorch_model.bin").exists() and not (target / "onnx").exists()
    again = jaxst.SentenceTransformer(target)
    assert_same_params(again.params, small_model.params)
    assert max_abs(reference_st(target).encode(TEXTS), small_model.encode(TEXTS)) < TOL
    assert not leftovers(tmp_path, "m")


def test_save_into_the_folder_it_was_loaded_from(make_tiny_st, tmp_path):
    folder = shutil.copytree(make_tiny_st(dense=[(16, torch.nn.Tanh(), True)]), tmp_path / "m")
    model = jaxst.SentenceTransformer(folder)
    model.params = perturbed(model.params, seed=4)
    model.save(folder)
    assert_same_params(jaxst.SentenceTransformer(folder).params, model.params)
    assert max_abs(reference_st(folder).encode(TEXTS), model.encode(TEXTS)) < TOL


def test_save_refuses_a_foreign_folder_unless_asked(small_model, tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ValueError, match="holds no model.*overwrite=True"):
        small_model.save(target)
    assert sorted(p.name for p in target.iterdir()) == ["cat.jpg"]
    small_model.save(target, overwrite=True)
    assert (target / "cat.jpg").read_bytes() == b"meow"
    assert_same_params(jaxst.SentenceTransformer(target).params, small_model.params)


def test_save_bad_targets_and_options(small_model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        small_model.save(tmp_path / "file")
    with pytest.raises(TypeError, match="path must be"):
        small_model.save(42)
    with pytest.raises(ValueError, match="safetensors only"):
        small_model.save(tmp_path / "m", safe_serialization=False)
    assert not (tmp_path / "m").exists()
    (tmp_path / "empty").mkdir()
    small_model.save(tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / "modules.json").is_file()


def test_saved_folder_has_the_permissions_of_a_new_folder(small_model, tmp_path):
    """Not the owner-only mode of a temp folder: a saved model is readable by whoever may read its parent."""
    small_model.save(tmp_path / "m")
    (tmp_path / "plain").mkdir()
    assert (tmp_path / "m").stat().st_mode == (tmp_path / "plain").stat().st_mode
    os.chmod(tmp_path / "m", 0o750)
    small_model.save(tmp_path / "m")  # replacing a folder keeps its mode
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o750


# ------------------------------------------------------------------------------ orbax and convert/


def test_orbax_round_trip(small_model, tmp_path):
    """model -> orbax params + configs -> sentence-transformers folder: the same params, bit for bit."""
    export.save_orbax(small_model, tmp_path / "ckpt")
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "params").is_dir() and (ckpt / "modules.json").is_file() and (ckpt / "tokenizer.json").is_file()
    # params live in the orbax checkpoint only; unmapped/ holds what jaxst does not model (BERT's pooler)
    assert [str(p.relative_to(ckpt)) for p in ckpt.rglob("*.safetensors")] == ["unmapped/model.safetensors"]
    assert_same_params(export.restore_orbax_params(ckpt, small_model.params), small_model.params)
    restored = export.restore_orbax_params(ckpt)  # no target: string keys, the same arrays
    np.testing.assert_array_equal(np.asarray(restored["heads"]["0"]["linear"]["kernel"]),
                                  np.asarray(small_model.params["heads"][0]["linear"]["kernel"]))

    export.orbax_to_folder(ckpt, tmp_path / "back")
    again = jaxst.SentenceTransformer(tmp_path / "back")
    assert_same_params(again.params, small_model.params)
    assert max_abs(reference_st(tmp_path / "back").encode(TEXTS), small_model.encode(TEXTS)) < TOL
    assert folder_bytes(tmp_path / "back").keys() >= {"model.safetensors", "2_Dense/model.safetensors"}


def test_orbax_bad_input(tmp_path, small_model):
    with pytest.raises(ValueError, match="not a jaxst orbax checkpoint"):
        export.orbax_to_folder(tmp_path, tmp_path / "out")
    small_model.save(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a jaxst orbax checkpoint"):
        export.restore_orbax_params(tmp_path / "plain")


def test_convert_commands_round_trip_a_cross_encoder(make_tiny_cross_encoder, tmp_path):
    """convert.to_orbax / convert.to_sentence_transformers in process: the model class is detected."""
    from convert import to_orbax, to_sentence_transformers

    original = make_tiny_cross_encoder(arch="bert", num_labels=1, activation=torch.nn.Tanh())
    assert to_orbax.main([str(original), str(tmp_path / "ckpt")]) == tmp_path / "ckpt"
    to_sentence_transformers.main([str(tmp_path / "ckpt"), str(tmp_path / "back")])
    assert_same_params(jaxst.CrossEncoder(tmp_path / "back").params, jaxst.CrossEncoder(original).params)
    assert max_abs(reference_ce(tmp_path / "back").predict(PAIRS), reference_ce(original).predict(PAIRS)) < TOL


def test_convert_commands_as_python_dash_m(make_tiny_st, tmp_path):
    """The documented command lines, in a fresh process: folder -> orbax -> folder, and a clear error."""
    original = make_tiny_st(dense=[(16, torch.nn.Tanh(), True)], normalize=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)

    done = run("convert.to_orbax", str(original), str(tmp_path / "ckpt"))
    assert done.returncode == 0, done.stderr
    done = run("convert.to_sentence_transformers", str(tmp_path / "ckpt"), str(tmp_path / "back"))
    assert done.returncode == 0, done.stderr
    assert_same_params(jaxst.SentenceTransformer(tmp_path / "back").params,
                       jaxst.SentenceTransformer(original).params)
    assert max_abs(reference_st(tmp_path / "back").encode(TEXTS), reference_st(original).encode(TEXTS)) < TOL

    failed = run("convert.to_orbax", str(tmp_path / "missing"), str(tmp_path / "x"))
    assert failed.returncode == 2 and "does not exist" in failed.stderr
    assert not (tmp_path / "x").exists()
