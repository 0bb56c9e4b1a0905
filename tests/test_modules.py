"""The module registry (``jaxst.modules``): one file per sentence-transformers module kind, each registering one
kind; the folder reader and writer read it; the head index is assigned in one place."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxst import modules
from jaxst.io import export, folder
from jaxst.io.family import modules_family
from jaxst.modules import ModuleKind

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "jaxst" / "modules"
KIND_FILES = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.name.startswith("_"))

# What jaxst read and wrote before the registry existed (io/folder.py and io/export.py's literals): the registry
# must keep every one of these facts.
READ_BEFORE = {
    "Transformer": "transformer", "Pooling": "pooling", "Dense": "dense", "Normalize": "normalize",
    "Dropout": "dropout", "LogitScore": "logit_score", "MLMTransformer": "transformer",
    "SpladePooling": "splade_pooling", "SparseStaticEmbedding": "sparse_static_embedding",
    "SparseAutoEncoder": "sparse_autoencoder", "Router": "router", "MultiVectorMask": "multi_vector_mask",
    "HierarchicalTokenPooling": "token_pooling", "LambdaTokenPooling": "token_pooling",
}
WRITTEN_BEFORE = {
    "transformer": "sentence_transformers.models.Transformer",
    "pooling": "sentence_transformers.models.Pooling",
    "dense": "sentence_transformers.models.Dense",
    "normalize": "sentence_transformers.models.Normalize",
    "dropout": "sentence_transformers.models.Dropout",
    "logit_score": "sentence_transformers.cross_encoder.modules.logit_score.LogitScore",
    "multi_vector_mask": "sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask",
    "token_pooling": "sentence_transformers.multi_vector_encoder.modules.token_pooling.HierarchicalTokenPooling",
}
SPARSE_WRITTEN_BEFORE = {
    "transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "splade_pooling": "sentence_transformers.sparse_encoder.modules.splade_pooling.SpladePooling",
    "sparse_static_embedding":
        "sentence_transformers.sparse_encoder.modules.sparse_static_embedding.SparseStaticEmbedding",
    "router": "sentence_transformers.base.modules.router.Router",
    "sparse_autoencoder": "sentence_transformers.sparse_encoder.modules.sparse_auto_encoder.SparseAutoEncoder",
}
FOLDERS_BEFORE = {"pooling": "Pooling", "dense": "Dense", "normalize": "Normalize", "dropout": "Dropout",
                  "multi_vector_mask": "MultiVectorMask", "token_pooling": "HierarchicalTokenPooling",
                  "logit_score": "LogitScore", "splade_pooling": "SpladePooling",
                  "sparse_autoencoder": "SparseAutoEncoder"}


@pytest.mark.parametrize("name", KIND_FILES)
def test_every_kind_file_registers_exactly_one_kind(name):
    """Each file holds one ``ModuleKind``, named ``KIND``, whose id is the file's name, and the registry has it."""
    module = importlib.import_module(f"jaxst.modules.{name}")
    found = [value for value in vars(module).values() if isinstance(value, ModuleKind)]
    assert found == [module.KIND], f"jaxst/modules/{name}.py must define exactly one ModuleKind, as KIND"
    assert module.KIND.kind == name
    assert modules.KINDS[name] is module.KIND


def test_the_registry_is_the_package_files():
    """Adding a kind is adding a file: the registry holds exactly the files' kinds, no list to keep in step."""
    assert sorted(modules.KINDS) == KIND_FILES
    assert len(KIND_FILES) >= 13


@pytest.mark.parametrize("kind", KIND_FILES)
def test_every_kind_round_trips(kind):
    """type name -> kind -> the type and folder it is saved under, and that type reads back as the same kind."""
    k = modules.by_kind(kind)
    for name in k.class_names:
        for type_name in (name, f"sentence_transformers.some.module.{name}"):
            assert modules.kind_of_type(type_name) is k
        assert folder.module_kind(f"sentence_transformers.models.{name}", "modules.json") == kind
    for path in (k.type_path, k.v6_type_path):
        if path is not None:
            assert modules.kind_of_type(path) is k, path
            assert folder.module_kind(path, "modules.json") == kind
    if k.type_path is not None:
        assert export.MODULE_TYPES[kind] == k.type_path
    if k.v6_type_path is not None:
        assert export.SPARSE_MODULE_TYPES[kind] == k.v6_type_path
    if k.folder_name is not None:
        assert export.MODULE_CLASS_NAMES[kind] == k.folder_name
        assert modules.kind_of_type(k.folder_name) is k  # a saved module's folder names its class
    if k.forward is not None:
        assert callable(k.resolve_forward())
    assert (k.kind in folder.REQUIRED_CONFIGS) == k.config_required


def test_every_type_jaxst_reads_and_writes_is_covered():
    """The registry keeps every modules.json class jaxst read, and every type and folder name it wrote, before it
    existed; the old names of io/folder.py and io/export.py are derived from it."""
    for name, kind in READ_BEFORE.items():
        assert modules.CLASS_KINDS[name] == kind
        assert folder.MODULE_KINDS[name] == kind
    assert folder.MODULE_KINDS["StaticEmbedding"] == "static_embedding"  # read since: static models
    assert folder.MODULE_KINDS["LayerNorm"] == "layer_norm"  # and LayerNorm heads
    assert folder.MODULE_KINDS["WeightedLayerPooling"] == "weighted_layer_pooling"  # and the layer mixer
    assert set(folder.MODULE_KINDS) == set(READ_BEFORE) | {"StaticEmbedding", "LayerNorm", "WeightedLayerPooling"}
    for kind, path in WRITTEN_BEFORE.items():
        assert export.MODULE_TYPES[kind] == path
    for kind, path in SPARSE_WRITTEN_BEFORE.items():
        assert export.SPARSE_MODULE_TYPES[kind] == path
    for kind, name in FOLDERS_BEFORE.items():
        assert export.MODULE_CLASS_NAMES[kind] == name
    assert set(folder.SPARSE_KINDS) == {"splade_pooling", "sparse_static_embedding", "sparse_autoencoder", "router"}
    assert set(folder.MULTI_VECTOR_KINDS) == {"multi_vector_mask", "token_pooling"}
    assert folder.CONFIG_FILES == {"transformer": "sentence_bert_config.json", "router": "router_config.json"}
    assert set(folder.REQUIRED_CONFIGS) == {"pooling", "dense", "logit_score", "splade_pooling", "router", "layer_norm",
                                            "weighted_layer_pooling"}
    assert modules_family(["transformer", "logit_score"]) == "CrossEncoder"
    assert modules.family_kinds("CrossEncoder") == ("logit_score",)


@pytest.mark.filterwarnings("ignore:Importing from 'sentence_transformers.models' is deprecated")
def test_saved_types_are_sentence_transformers_classes():
    """Every type jaxst writes names a class sentence-transformers imports, of the name the kind claims."""
    for k in modules.KINDS.values():
        for path in {k.type_path, k.v6_type_path} - {None}:
            module, _, name = path.rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            assert isinstance(cls, type) and cls.__name__ in k.class_names, path


def test_unknown_kinds_and_types():
    with pytest.raises(KeyError, match="unknown module kind"):
        modules.by_kind("nope")
    assert modules.kind_of_type("sentence_transformers.models.Nope") is None
    with pytest.raises(ValueError, match="unsupported module"):
        folder.module_kind("sentence_transformers.models.Nope", "modules.json")
    with pytest.raises(ValueError, match="custom code"):
        folder.module_kind("my_package.Dense", "modules.json")
    with pytest.raises(ValueError, match="no module kind marks"):
        modules.family_kinds("SentenceTransformer")
    with pytest.raises(ValueError, match="head_params without head"):
        ModuleKind("x", head_params=True)


def test_head_indices_are_assigned_once():
    """Dense, Normalize and a Stanford projection take head slots in pipeline order; only the ones with params
    appear in ``param_heads``. Specs or kind names alike."""
    kinds = ["transformer", "pooling", "dense", "dropout", "normalize", "dense", "multi_vector_mask"]
    assert modules.head_indices(kinds) == [None, None, 0, None, 1, 2, None]
    assert modules.param_heads(kinds) == [(0, "dense"), (2, "dense")]
    specs = [folder.ModuleSpec(k, Path("."), {}) for k in ["transformer", "stanford_projection", "normalize"]]
    assert modules.head_indices(specs) == [None, 0, 1]
    assert modules.param_heads(specs) == [(0, specs[1])]
    assert modules.head_indices([]) == [] and modules.param_heads([]) == []


SAVE_CONTEXT = {  # what a family hands each kind when saving, beyond the shared hf_config / length / head
    "router": {"settings": {"types": {"q": "T"}, "structure": {"query": ["q"]},
                            "parameters": {"default_route": "query"}}},
    "stanford_projection": {"head_params": {"linear": {"kernel": np.zeros((6, 4), np.float32)}}},
    "sparse_autoencoder": {"buffers": {"stats_last_nonzero": np.zeros(3, np.int64)}},
}


@pytest.mark.parametrize("kind", KIND_FILES)
def test_every_kind_says_what_it_saves(kind):
    """The save plan is the kind file's: every kind answers ``files`` with JSON files (its config, updated by
    the family's settings), params subtrees for its model.safetensors, and the kind it is written as, one that
    has a sentence-transformers type."""
    k = modules.by_kind(kind)
    spec = folder.ModuleSpec(kind, Path("."), {"loaded": 1})
    context = modules.SaveContext(hf_config={"hidden_size": 6, "torch_dtype": "bfloat16"}, max_seq_length=9,
                                  head=0 if k.head else None, **SAVE_CONTEXT.get(kind, {}))
    files = k.files(spec, context)
    assert isinstance(files, modules.ModuleFiles)
    assert all(isinstance(v, dict) for v in files.json_files.values())
    if kind == "static_embedding":  # no config, as sentence-transformers saves it: its table and tokenizer only
        assert not files.json_files and files.weights == ((("encoder",), ""),) and files.tokenizer
        return
    assert files.json_files
    written = modules.by_kind(files.kind or kind)
    assert written.type_path is not None
    for path, prefix in files.weights:
        assert isinstance(path, tuple) and isinstance(prefix, str)
    if k.head_params:
        assert files.weights == ((("heads", 0), ""),)
    if kind == "transformer":
        assert files.json_files["config.json"]["torch_dtype"] == "float32"  # the weights are written in float32
        assert files.json_files["sentence_bert_config.json"]["max_seq_length"] == 9 and files.tokenizer
    if kind == "sparse_autoencoder":
        assert set(files.unmapped) == {"stats_last_nonzero"}
    if kind not in ("router", "stanford_projection"):
        assert files.json_files[k.config_files[0]]["loaded"] == 1  # the loaded config is kept, where it is read
        with_settings = k.files(spec, dataclasses.replace(context, settings={"current": 2}))
        assert with_settings.json_files[k.config_files[0]]["current"] == 2


def test_a_new_kind_is_saved_by_its_file_alone(monkeypatch, tmp_path):
    """The folder writer has no list of kinds: a kind it has never seen (here slipped into the registry as a
    new file's would be) is written under its type and folder name, with its config and head params."""
    fancy = ModuleKind("fancy", class_names=("Fancy",), type_path="my_kinds.Fancy", folder_name="Fancy",
                       head=True, head_params=True)
    monkeypatch.setitem(modules._registry()[0], "fancy", fancy)
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    specs = [folder.ModuleSpec("transformer", tmp_path, {}), folder.ModuleSpec("pooling", tmp_path, {"x": 1}),
             folder.ModuleSpec("fancy", tmp_path, {"width": 3})]
    plan = export.sentence_transformer_plan(
        hf_config={"hidden_size": 4}, module_specs=specs, max_seq_length=8, prompts={}, default_prompt_name=None,
        similarity_fn_name="cosine", truncate_dim=None, unmapped={})
    assert plan.json_files["modules.json"][2] == {"idx": 2, "name": "2", "path": "2_Fancy", "type": "my_kinds.Fancy"}
    assert plan.json_files["2_Fancy/config.json"] == {"width": 3}
    assert [(w.file, w.params) for w in plan.weights] == [("model.safetensors", ("encoder",)),
                                                          ("2_Fancy/model.safetensors", ("heads", 0))]


def test_the_folder_writer_has_no_per_kind_code():
    """io/export.py lays folders out; what a module writes is its kind file's: no branch on a kind id there."""
    source = (ROOT / "jaxst" / "io" / "export.py").read_text()
    assert not re.findall(r"kind\s*(==|!=|in)\s*[(\"']", source)


def test_router_config_falls_back_to_config_json(tmp_path):
    """A Router's settings: router_config.json, else (sentence-transformers' legacy name) config.json, which must
    then exist."""
    (tmp_path / "config.json").write_text('{"types": {}}')
    assert folder.module_spec("router", tmp_path).config == {"types": {}}
    (tmp_path / "router_config.json").write_text('{"structure": {}}')
    assert folder.module_spec("router", tmp_path).config == {"structure": {}}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match="missing"):
        folder.module_spec("router", empty)
    assert folder.module_spec("normalize", empty).config == {}
    with pytest.raises(OSError, match="missing"):
        folder.module_spec("dense", empty)


def test_reading_folders_imports_no_jax():
    """io reads the registry before any model is loaded (``jaxst.io.family``, ``jaxst --help``): importing the
    registry, io's folder reader and the CLI imports no JAX; the kind files (which hold NNX modules) are
    scanned on first use."""
    code = ("import sys, jaxst.modules, jaxst.io.family, jaxst.cli; "
            "assert 'jax' not in sys.modules and 'flax' not in sys.modules, 'imported at import time'; "
            "from jaxst import modules; modules.by_kind('dense'); "
            "assert 'flax' in sys.modules, 'the scan should have imported the kind files'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_readme_names_the_registry():
    """README's map names jaxst/modules/ and says a new module kind is one file there."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in table.splitlines() if "`jaxst/modules/`" in line)
    assert re.search(r"new module kind is one (new )?file", row)
    for name in KIND_FILES:
        assert f"`{name}.py`" in row, name
