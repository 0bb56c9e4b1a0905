"""``jaxst convert`` and the one family detector (``jaxst.io.family.detect_family``) it shares with
``convert/`` and the facades.

Each family's tiny model is built by sentence-transformers in the session (tests/conftest.py), converted to an
orbax checkpoint and back through ``jaxst.cli.main``, and the folder that comes back is loaded by
sentence-transformers, which must give the original folder's outputs (within 1e-5). Detection is checked on
those folders and on hand-written ones for each rule; bad input is one ``jaxst: error:`` line, exit status 2,
and nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import ROOT, TEXTS, max_abs

from jaxst import cli
from jaxst.io.family import FAMILIES, detect_family, folder_family, modules_family

TOL = 1e-5
PAIRS = [(TEXTS[i], TEXTS[(i + 2) % len(TEXTS)]) for i in range(len(TEXTS))]
MODULES = "sentence_transformers.models."


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def st_folder(make_tiny_st):
    return make_tiny_st(dense=[(16, torch.nn.Tanh(), True)], normalize=True, prompts={"query": "query: "})


@pytest.fixture(scope="module")
def ce_folder(make_tiny_cross_encoder):
    return make_tiny_cross_encoder(arch="bert", num_labels=1, activation=torch.nn.Tanh())


def oracle(folder, family: str):
    """sentence-transformers' own class for ``family`` on ``folder``."""
    import sentence_transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(sentence_transformers, family)(str(folder), device="cpu")


def outputs(folder, family: str) -> list[np.ndarray]:
    """What sentence-transformers computes with the model in ``folder``, as a list of arrays."""
    model = oracle(folder, family)
    with torch.no_grad():
        if family == "CrossEncoder":
            return [np.asarray(model.predict(PAIRS))]
        if family == "SparseEncoder":
            return [model.encode(TEXTS, convert_to_tensor=True).to_dense().numpy()]
        if family == "MultiVectorEncoder":
            return [np.asarray(t) for t in model.encode(TEXTS)]
        return [model.encode(TEXTS)]


def assert_same_outputs(ours: list[np.ndarray], ref: list[np.ndarray]) -> None:
    """Within TOL, relative to max(1, |value|) (sparse sums reach tens, where float32 steps are ~1e-6)."""
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert max_abs(a / np.maximum(1.0, np.abs(b)), b / np.maximum(1.0, np.abs(b))) < TOL


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxst: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------------------ the round trip


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_to_orbax_and_back(family, request, tmp_path, capsys):
    """folder -> `jaxst convert` -> orbax checkpoint -> `jaxst convert` -> a folder sentence-transformers loads
    with the original's outputs; the family is detected both ways."""
    folder = request.getfixturevalue({"SentenceTransformer": "st_folder", "CrossEncoder": "ce_folder",
                                      "SparseEncoder": "splade_folder",
                                      "MultiVectorEncoder": "colbert_folder"}[family])
    assert detect_family(folder) == family

    code, out, err = run_cli(capsys, folder, tmp_path / "ckpt")
    assert code == 0, err
    assert out.strip() == str((tmp_path / "ckpt").resolve())
    assert f"converted {family}" in err and "orbax checkpoint" in err
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "params").is_dir() and (ckpt / "jaxst_orbax.json").is_file()
    assert not list(ckpt.glob("*.safetensors"))  # the params live in the orbax checkpoint
    assert folder_family(ckpt) == family

    code, out, err = run_cli(capsys, ckpt, tmp_path / "back")
    assert code == 0, err
    assert out.strip() == str((tmp_path / "back").resolve())
    assert "sentence-transformers folder" in err
    assert detect_family(tmp_path / "back") == family
    assert_same_outputs(outputs(tmp_path / "back", family), outputs(folder, family))


def test_convert_to_sentence_transformers_from_a_folder(st_folder, tmp_path, capsys):
    """--to sentence-transformers re-saves any model jaxst loads (here a bare transformers folder's mean pooling)."""
    code, _, err = run_cli(capsys, st_folder, tmp_path / "resaved", "--to", "sentence-transformers")
    assert code == 0, err
    assert (tmp_path / "resaved" / "model.safetensors").is_file()
    assert_same_outputs(outputs(tmp_path / "resaved", "SentenceTransformer"),
                        outputs(st_folder, "SentenceTransformer"))


def test_convert_overwrite_keeps_other_files(st_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "NOTES.md").write_text("mine")
    code, _, err = run_cli(capsys, st_folder, out)
    assert code == 2
    assert_one_line_error(err, "already exists", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["NOTES.md"]
    code, _, err = run_cli(capsys, st_folder, out, "--overwrite")
    assert code == 0, err
    assert (out / "NOTES.md").read_text() == "mine" and (out / "params").is_dir()


def test_convert_as_python_dash_m(st_folder, tmp_path):
    """`python -m jaxst convert` in a fresh process: the path on stdout; a missing folder is one error line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "jaxst", "convert", str(st_folder), str(tmp_path / "ckpt")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str((tmp_path / "ckpt").resolve())
    failed = subprocess.run([sys.executable, "-m", "jaxst", "convert", str(tmp_path / "missing"),
                             str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2
    assert_one_line_error(failed.stderr, "does not exist")
    assert not (tmp_path / "x").exists()


def test_convert_scripts_are_thin_entries(splade_folder, ce_folder, st_folder, tmp_path):
    """convert/'s commands run the same code: they now convert every family, and --kind names the family."""
    import convert
    from convert import to_orbax, to_sentence_transformers

    assert convert.model_kind(str(splade_folder)) == "sparse-encoder"
    assert convert.model_kind(str(ce_folder)) == "cross-encoder"
    assert convert.model_kind(str(st_folder)) == "sentence-transformer"
    assert type(convert.load_model(str(ce_folder))).__name__ == "CrossEncoder"
    with pytest.raises(ValueError, match="kind must be one of"):
        convert.load_model(str(st_folder), "reranker")
    assert to_orbax.main([str(splade_folder), str(tmp_path / "ckpt"), "--kind", "sparse-encoder"]) \
        == tmp_path / "ckpt"
    to_sentence_transformers.main([str(tmp_path / "ckpt"), str(tmp_path / "back")])
    assert_same_outputs(outputs(tmp_path / "back", "SparseEncoder"), outputs(splade_folder, "SparseEncoder"))
    with pytest.raises(ValueError, match="already a jaxst orbax checkpoint"):
        to_orbax.main([str(tmp_path / "ckpt"), str(tmp_path / "again")])
    assert not (tmp_path / "again").exists()


# ------------------------------------------------------------------------------------ bad input


def test_convert_bad_input(st_folder, ce_folder, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert run_cli(capsys, st_folder, ckpt)[0] == 0
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    cases = [
        ((tmp_path / "missing", tmp_path / "x"), ("does not exist",)),
        ((tmp_path / "empty", tmp_path / "x"), ("not a model folder",)),
        (("no-org/no-such-model-xyz", tmp_path / "x"), ("could not find model",)),
        ((st_folder, a_file), ("is a file",)),
        ((st_folder, st_folder), ("overlaps",)),
        ((st_folder, st_folder / "inside"), ("overlaps",)),
        ((st_folder, ""), ("OUT is empty",)),
        ((ckpt, tmp_path / "x", "--to", "orbax"), ("already a jaxst orbax checkpoint",)),
        ((ckpt, tmp_path / "x", "--family", "cross-encoder"), ("SentenceTransformer checkpoint, not a CrossEncoder",)),
        ((st_folder, tmp_path / "x", "--family", "CrossEncoder"), ("cannot convert", "not a cross-encoder")),
        ((st_folder, tmp_path / "x", "--family", "reranker"), ("unknown model family 'reranker'",)),
        ((st_folder, tmp_path / "x", "--to", "onnx"), ("invalid choice",)),
    ]
    (tmp_path / "empty").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    st_before = sorted(p.name for p in st_folder.iterdir())
    for argv, needles in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        assert out == ""
        assert_one_line_error(err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp folder left
    assert sorted(p.name for p in st_folder.iterdir()) == st_before
    assert a_file.read_text() == "keep me"


def test_unknown_model_type_is_an_error(st_folder, tmp_path, capsys):
    folder = tmp_path / "future"
    shutil.copytree(st_folder, folder)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    (folder / "config_sentence_transformers.json").write_text(json.dumps({**config, "model_type": "Reranker9000"}))
    with pytest.raises(ValueError, match="model_type 'Reranker9000' is not a family jaxst knows"):
        detect_family(folder)
    code, _, err = run_cli(capsys, folder, tmp_path / "x")
    assert code == 2
    assert_one_line_error(err, "Reranker9000")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ detection


def hand_written(folder, modules: list[str], st_config: dict | None = None, architectures=("BertModel",)):
    """A folder with just the JSON detection reads: modules.json of ``modules`` (class names), each module's
    config, config.json with ``architectures``, and config_sentence_transformers.json when given."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": list(architectures), "model_type": "bert"}))
    if st_config is not None:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    if not modules:
        return folder
    entries = []
    for i, name in enumerate(modules):
        path = "" if i == 0 else f"{i}_{name}"
        entries.append({"idx": i, "name": str(i), "path": path, "type": MODULES + name})
        if path:
            (folder / path).mkdir()
            (folder / path / "config.json").write_text("{}")
    (folder / "modules.json").write_text(json.dumps(entries))
    return folder


@pytest.mark.parametrize("modules, st_config, architectures, family", [
    # module kinds say it outright
    (["Transformer", "SpladePooling"], None, ("BertForMaskedLM",), "SparseEncoder"),
    (["Transformer", "Pooling", "SparseAutoEncoder"], {"model_type": "SparseEncoder"}, ("BertModel",),
     "SparseEncoder"),
    (["Transformer", "Dense", "MultiVectorMask", "Normalize"], None, ("BertModel",), "MultiVectorEncoder"),
    (["Transformer", "LogitScore"], {"model_type": "CrossEncoder"}, ("Qwen3ForCausalLM",), "CrossEncoder"),
    # one Transformer over a classifier (convert/'s old rule), with or without modules.json
    (["Transformer"], None, ("BertForSequenceClassification",), "CrossEncoder"),
    ([], None, ("XLMRobertaForSequenceClassification",), "CrossEncoder"),
    (["Transformer", "Pooling"], None, ("BertForSequenceClassification",), "SentenceTransformer"),
    # PyLate's settings and no Pooling
    (["Transformer", "Dense"], {"query_prefix": "[Q] ", "document_prefix": "[D] "}, ("BertModel",),
     "MultiVectorEncoder"),
    (["Transformer", "Dense"], {"model_type": "ColBERT"}, ("BertModel",), "MultiVectorEncoder"),
    # model_type
    (["Transformer", "Dense", "Normalize"], {"model_type": "MultiVectorEncoder"}, ("BertModel",),
     "MultiVectorEncoder"),
    (["Transformer", "Pooling"], {"model_type": "SentenceTransformer"}, ("BertModel",), "SentenceTransformer"),
    (["Transformer", "Pooling", "Normalize"], {"__version__": {}}, ("BertModel",), "SentenceTransformer"),
    # bare transformers folders
    ([], None, ("HF_ColBERT",), "MultiVectorEncoder"),
    ([], None, ("BertForMaskedLM",), "SentenceTransformer"),
    ([], None, ("Qwen3ForCausalLM",), "SentenceTransformer"),
])
def test_detection_rules(tmp_path, modules, st_config, architectures, family):
    assert detect_family(hand_written(tmp_path / "m", modules, st_config, architectures)) == family


def test_detection_of_saved_folders(make_tiny_cross_encoder, tiny_bert_base, splade_folder, colbert_folder,
                                    st_folder, ce_folder):
    assert detect_family(st_folder) == "SentenceTransformer"
    assert detect_family(tiny_bert_base) == "SentenceTransformer"  # a bare BertModel folder
    assert detect_family(ce_folder) == "CrossEncoder"
    assert detect_family(make_tiny_cross_encoder(arch="bert", num_labels=1, saved="hf")) == "CrossEncoder"
    assert detect_family(splade_folder) == "SparseEncoder"
    assert detect_family(colbert_folder) == "MultiVectorEncoder"
    assert modules_family(["transformer", "pooling", "dense"]) is None


def test_detection_bad_input(tmp_path, st_folder):
    with pytest.raises(OSError, match="does not exist"):
        detect_family(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="not a model folder"):
        detect_family(tmp_path / "empty")
    with pytest.raises(OSError, match="is a file"):
        folder_family(st_folder / "modules.json")
    custom = hand_written(tmp_path / "custom", ["Transformer"])
    (custom / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "my_lib.Encoder"}]))
    with pytest.raises(ValueError, match="custom code"):
        detect_family(custom)
    (custom / "jaxst_orbax.json").write_text(json.dumps({"format": "jaxst-orbax-params", "model_class": "Foo"}))
    (custom / "params").mkdir()
    with pytest.raises(ValueError, match="unknown model class 'Foo'"):
        detect_family(custom)


def test_cli_names_the_family_of_a_model_it_cannot_encode(splade_folder, ce_folder, tmp_path, capsys):
    """`jaxst encode` with another family's model: the error says what the folder is (the same detector)."""
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    for folder, needle in ((splade_folder, "pass --sparse"), (ce_folder, "--rerank")):
        assert cli.main(["encode", str(src), "-o", str(tmp_path / "out.npy"), "--model", str(folder)]) == 2
        assert_one_line_error(capsys.readouterr().err, "cannot load model", needle)
    assert not (tmp_path / "out.npy").exists()


def test_facades_name_the_detected_family(splade_folder, colbert_folder, st_folder):
    """A folder loaded with the wrong class: the error names the class ``detect_family`` picks."""
    import jaxst

    for cls, folder in (("SentenceTransformer", splade_folder), ("SentenceTransformer", colbert_folder),
                        ("CrossEncoder", splade_folder), ("CrossEncoder", colbert_folder),
                        ("CrossEncoder", st_folder)):
        with pytest.raises(ValueError, match=f"load it with jaxst.{detect_family(folder)}"):
            getattr(jaxst, cls)(folder)
    with pytest.raises(ValueError, match="not a multi-vector model"):
        jaxst.MultiVectorEncoder(splade_folder)
