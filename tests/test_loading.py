"""Reading the sentence-transformers folder format and resolving names, against the original."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from conftest import TEXTS, max_abs

import jaxst


def reference(folder):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(folder), device="cpu")


def test_legacy_and_current_pooling_config_agree(make_tiny_st, tmp_path):
    folder = make_tiny_st(pooling_mode=("cls", "max", "mean"))
    legacy = shutil.copytree(folder, tmp_path / "legacy")
    config = json.loads((legacy / "1_Pooling" / "config.json").read_text())
    assert config["pooling_mode"] == ["cls", "max", "mean"]
    del config["pooling_mode"]
    config.update(pooling_mode_cls_token=True, pooling_mode_max_tokens=True, pooling_mode_mean_tokens=True,
                  pooling_mode_mean_sqrt_len_tokens=False, word_embedding_dimension=32)
    (legacy / "1_Pooling" / "config.json").write_text(json.dumps(config))
    expected = reference(folder).encode(TEXTS)
    assert max_abs(jaxst.SentenceTransformer(legacy).encode(TEXTS), expected) < 1e-5
    assert max_abs(reference(legacy).encode(TEXTS), expected) < 1e-6


def test_pytorch_model_bin_is_read_with_torch(make_tiny_st, tmp_path):
    from safetensors.torch import load_file

    original = make_tiny_st(dense=[(16, torch.nn.Tanh(), True)])
    folder = shutil.copytree(original, tmp_path / "bin")
    for weights in folder.rglob("model.safetensors"):  # the Transformer's and the Dense module's
        torch.save(load_file(weights), weights.with_name("pytorch_model.bin"))
        weights.unlink()
    expected = reference(original).encode(TEXTS)
    assert max_abs(jaxst.SentenceTransformer(folder).encode(TEXTS), expected) < 1e-5


def test_plain_transformers_folder_gets_mean_pooling(tiny_bert_base):
    with pytest.warns(UserWarning, match="mean pooling"):
        ours = jaxst.SentenceTransformer(tiny_bert_base)
    assert max_abs(ours.encode(TEXTS[:4]), reference(tiny_bert_base).encode(TEXTS[:4])) < 1e-5


def test_checkpoint_with_task_prefix(make_tiny_st, tmp_path):
    """Weights saved from a task model carry a ``bert.`` prefix; they load the same."""
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(make_tiny_st(), tmp_path / "prefixed")
    sd = load_file(folder / "model.safetensors")
    save_file({f"bert.{k}": v for k, v in sd.items()}, folder / "model.safetensors")
    assert max_abs(jaxst.SentenceTransformer(folder).encode(TEXTS), reference(make_tiny_st()).encode(TEXTS)) < 1e-5


def test_missing_tensor_is_named(make_tiny_st, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(make_tiny_st(), tmp_path / "broken")
    sd = load_file(folder / "model.safetensors")
    del sd["encoder.layer.1.output.dense.weight"]
    save_file(sd, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        jaxst.SentenceTransformer(folder)


def test_config_sentence_transformers_fields(make_tiny_st, tmp_path):
    folder = shutil.copytree(make_tiny_st(similarity_fn_name="dot", prompts={"query": "q: "}), tmp_path / "cfg")
    model = jaxst.SentenceTransformer(folder)
    assert model.similarity_fn_name == "dot" and model.prompts["query"] == "q: "
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config["truncate_dim"] = 8
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    model = jaxst.SentenceTransformer(folder)
    assert model.encode(TEXTS).shape == (len(TEXTS), 8) and model.get_embedding_dimension() == 8
    # Constructor arguments win over the saved config.
    model = jaxst.SentenceTransformer(folder, truncate_dim=4, similarity_fn_name="manhattan")
    assert model.encode(TEXTS).shape == (len(TEXTS), 4) and model.similarity_fn_name == "manhattan"


def test_hugging_face_cache_is_used(make_tiny_st, tmp_path):
    """A model in the HF cache layout under ``cache_folder`` resolves offline, at a revision too."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-model"
    shutil.copytree(make_tiny_st(), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = jaxst.SentenceTransformer("someone/tiny-model", cache_folder=str(tmp_path / "hub"))
    assert model.model_folder == repo / "snapshots" / commit
    assert max_abs(model.encode(TEXTS), reference(make_tiny_st()).encode(TEXTS)) < 1e-5
    model = jaxst.SentenceTransformer("someone/tiny-model", cache_folder=str(tmp_path / "hub"), revision=commit)
    assert model.model_folder == repo / "snapshots" / commit
    with pytest.raises(OSError, match="tried"):
        jaxst.SentenceTransformer("someone/tiny-model", cache_folder=str(tmp_path / "hub"), revision="v2")


def test_progress_bar(make_tiny_st, capsys):
    model = jaxst.SentenceTransformer(make_tiny_st())
    model.encode(TEXTS, batch_size=3, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "Batches" in err and "4/4" in err
    model.encode(TEXTS, batch_size=3)
    assert "Batches" not in capsys.readouterr().err


def test_tokenize_matches_the_original(make_tiny_st):
    folder = make_tiny_st()
    ours, ref = jaxst.SentenceTransformer(folder).tokenize(TEXTS), reference(folder).tokenize(TEXTS)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(ours[key], ref[key].numpy())


def test_token_budget_splits_long_texts_into_smaller_batches(make_tiny_st, capsys, monkeypatch):
    """``max_batch_tokens`` caps padded token slots per batch: long texts run fewer to a batch (a power
    of two), short ones keep ``batch_size``; the embeddings are those of unbudgeted batches and of
    sentence-transformers; the progress bar counts the batches actually run."""
    from jaxst import sentence_transformer
    from jaxst.base import batch_rows

    assert batch_rows(72, 32, 2048) == 16  # 2048 // 72 = 28 -> 16
    assert batch_rows(16, 32, 2048) == 32
    assert batch_rows(4096, 32, 2048) == 1
    assert batch_rows(300, 32, None) == 32
    folder = make_tiny_st()
    model = jaxst.SentenceTransformer(folder)
    long = [" ".join(["word"] * 40 + [str(i)]) for i in range(6)]  # ~45 tokens: bucket 48
    texts = long + list(TEXTS)
    rows = []
    real_forward = sentence_transformer.forward
    monkeypatch.setattr(sentence_transformer, "forward",
                        lambda g, p, b: rows.append(b["input_ids"].shape) or real_forward(g, p, b))
    budgeted = model.encode(texts, batch_size=8, max_batch_tokens=100, show_progress_bar=True)
    err = capsys.readouterr().err
    assert all(r[0] * r[1] <= 100 or r[0] == 1 for r in rows), rows
    assert (2, 44) in rows and rows[-1][0] == 8, rows  # long texts two at a time, short ones a full batch
    assert f"{len(rows)}/{len(rows)}" in err
    rows.clear()
    whole = model.encode(texts, batch_size=8, max_batch_tokens=None)
    assert rows[0][0] == 8
    assert max_abs(budgeted, whole) < 1e-5
    assert max_abs(budgeted, reference(folder).encode(texts)) < 1e-5
    for bad in (0, -5, 1.5, "many"):
        with pytest.raises(ValueError, match="max_batch_tokens"):
            model.encode(texts, max_batch_tokens=bad)


def with_requirements(folder, path, requirements):
    out = shutil.copytree(folder, path)
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    config["requirements"] = requirements
    (out / "config_sentence_transformers.json").write_text(json.dumps(config))
    return out


def test_declared_requirements_are_checked_before_loading(make_tiny_st, tmp_path):
    """sentence-transformers 6.3's "requirements": an unmet one that jaxst runs with (python, numpy, ...) is the
    same ImportError in both libraries, with the model's reason and a pip command; requirements on the PyTorch
    stack, which jaxst does not run, are not checked; an unreadable one warns."""
    folder = make_tiny_st()
    for i, (requirements, lines) in enumerate((
        ({"python": ">=99"}, ["- python>=99, but python=="]),
        ({"numpy": {"specifier": "<1", "reason": "needs the old API"}, "tokenizers": ">=0.1"},
         ["- numpy<1, but numpy==", "needs the old API", 'pip install -U "numpy<1"']),
    )):
        path = with_requirements(folder, tmp_path / f"unmet-{i}", requirements)
        with pytest.raises(ImportError) as ours:
            jaxst.SentenceTransformer(path)
        with pytest.raises(ImportError) as theirs:
            reference(path)
        assert str(ours.value).splitlines()[1:] == str(theirs.value).splitlines()[1:]
        assert all(any(line in row for row in str(ours.value).splitlines()) for line in lines)
    torch_only = with_requirements(folder, tmp_path / "torch-only", {"torch": ">=99", "transformers": ">=99"})
    with pytest.raises(ImportError):
        reference(torch_only)  # sentence-transformers runs on torch: for it they are unmet
    assert jaxst.SentenceTransformer(torch_only).encode(["a text"]).shape == (1, 32)
    unreadable = with_requirements(folder, tmp_path / "unreadable", {"numpy": "not a specifier", "jax": 3})
    with pytest.warns(UserWarning, match="Could not verify"):
        jaxst.SentenceTransformer(unreadable)


def test_layer_norm_module_loads_encodes_and_saves(tiny_bert_base, tmp_path):
    """sentence-transformers' LayerNorm head (after Pooling, before a Dense), with a trained-looking scale and
    shift: the same embeddings, and a save that sentence-transformers reads back."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Pooling

    torch.manual_seed(4)
    transformer = Transformer(str(tiny_bert_base), max_seq_length=64)
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.norm.weight.uniform_(0.5, 1.5)
        norm.norm.bias.uniform_(-0.3, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = SentenceTransformer(modules=[transformer, Pooling(32), norm, Dense(32, 16)], device="cpu")
    st.save(str(tmp_path / "st"))
    model = jaxst.SentenceTransformer(tmp_path / "st")
    assert max_abs(model.encode(TEXTS), st.encode(TEXTS)) < 1e-5
    model.save(tmp_path / "jx")
    modules = json.loads((tmp_path / "jx" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "LayerNorm", "Dense"]
    assert max_abs(reference(tmp_path / "jx").encode(TEXTS), st.encode(TEXTS)) < 1e-5
    config = json.loads((tmp_path / "st" / "2_LayerNorm" / "config.json").read_text())
    config["dimension"] = 8
    (tmp_path / "st" / "2_LayerNorm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="LayerNorm dimension 8 != input dim 32"):
        jaxst.SentenceTransformer(tmp_path / "st")
