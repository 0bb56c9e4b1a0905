"""Which of the four model families a folder holds: the one rule that the ``jaxst`` command, ``convert/`` and
the facades' "load it with ..." checks share.

    name or folder ──resolve (io.hub)──▶ folder ──▶ "SentenceTransformer" | "CrossEncoder" | "SparseEncoder"
                                                     | "MultiVectorEncoder"

The rules, first match wins (sentence-transformers' own, ``BaseModel._get_model_type`` and the
MultiVectorEncoder's override, plus what jaxst's loaders refuse):

1. a jaxst orbax checkpoint (``jaxst_orbax.json``): the model class its manifest names;
2. with ``modules.json``, the module kinds when they say it outright: a sparse module (SpladePooling,
   SparseStaticEmbedding, SparseAutoEncoder, Router) -> SparseEncoder, a multi-vector one (MultiVectorMask,
   token pooling) -> MultiVectorEncoder, a LogitScore -> CrossEncoder;
3. a single Transformer module over a ``*ForSequenceClassification`` checkpoint -> CrossEncoder;
4. PyLate's settings (``query_prefix``, ``query_length``, ...) in ``config_sentence_transformers.json`` and no
   Pooling -> MultiVectorEncoder;
5. ``config_sentence_transformers.json``'s ``model_type``: one of the four ("ColBERT", PyLate 3's, is a
   MultiVectorEncoder); any other value is an error, never a guess;
6. ``architectures`` HF_ColBERT (a Stanford-NLP ColBERT checkpoint) -> MultiVectorEncoder;
7. without ``modules.json`` (a bare transformers folder): a ``*ForSequenceClassification`` checkpoint ->
   CrossEncoder; anything else (a plain encoder, a masked or causal LM) -> SentenceTransformer, as
   sentence-transformers loads a folder without ``model_type``.

It reads JSON only (no model code, nothing loaded), so the CLI can ask it before loading a model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from jaxst import modules
from jaxst.io.folder import ModuleSpec, read_json, read_module_list

FAMILIES = ("SentenceTransformer", "CrossEncoder", "SparseEncoder", "MultiVectorEncoder")
# config_sentence_transformers.json "model_type" values of other libraries -> the family that loads them
MODEL_TYPE_ALIASES = {"ColBERT": "MultiVectorEncoder"}  # PyLate 3
# PyLate's top-level settings in config_sentence_transformers.json (what MultiVectorEncoder reads from a PyLate save)
PYLATE_KEYS = ("query_length", "document_length", "query_expansion", "do_query_expansion",
               "attend_to_expansion_tokens", "attend_to_mask_tokens", "query_prefix", "document_prefix",
               "skiplist_words")


def modules_family(specs: Iterable[ModuleSpec | str]) -> str | None:
    """The family a module list names outright (rule 2), from its specs or kinds; None when the kinds alone do
    not say (Transformer, Pooling, Dense, Normalize... are shared)."""
    kinds = [s if isinstance(s, str) else s.kind for s in specs]
    if any(k in modules.family_kinds("SparseEncoder") for k in kinds):
        return "SparseEncoder"
    if any(k in modules.family_kinds("MultiVectorEncoder") for k in kinds):
        return "MultiVectorEncoder"
    if "logit_score" in kinds:
        return "CrossEncoder"
    return None


def _architectures(folder: Path) -> list[str]:
    archs = read_json(folder / "config.json", required=False).get("architectures") or []
    return [str(a) for a in archs] if isinstance(archs, list) else []


def _is_classifier(archs: list[str]) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in archs)


def folder_family(folder: str | os.PathLike) -> str:
    """The family of the model in a local ``folder`` (see the module docstring). A missing folder or one that
    holds no model is an OSError; a model_type that names no family a ValueError."""
    from jaxst.io.export import ORBAX_MANIFEST, read_orbax_manifest  # the writer owns the manifest's format

    folder = Path(folder)
    if not folder.is_dir():
        raise OSError(f"model folder {str(folder)!r} does not exist" if not folder.exists()
                      else f"{str(folder)!r} is a file, not a model folder")
    if (folder / ORBAX_MANIFEST).is_file():
        family = read_orbax_manifest(folder).get("model_class")
        if family not in FAMILIES:
            raise ValueError(f"{folder / ORBAX_MANIFEST} names an unknown model class {family!r}; "
                             f"jaxst knows {', '.join(FAMILIES)}")
        return family
    if not (folder / "modules.json").is_file():
        if not (folder / "config.json").is_file():
            raise OSError(f"{folder} is not a model folder: it has neither modules.json nor config.json")
        archs = _architectures(folder)
        if "HF_ColBERT" in archs:
            return "MultiVectorEncoder"
        return "CrossEncoder" if _is_classifier(archs) else "SentenceTransformer"

    specs = read_module_list(folder)
    family = modules_family(specs)
    if family is not None:
        return family
    if len(specs) == 1 and specs[0].kind == "transformer" and _is_classifier(_architectures(specs[0].path)):
        return "CrossEncoder"
    st_config = read_json(folder / "config_sentence_transformers.json", required=False)
    if "pooling" not in {s.kind for s in specs} and any(key in st_config for key in PYLATE_KEYS):
        return "MultiVectorEncoder"
    model_type = st_config.get("model_type")
    if model_type is not None:
        family = MODEL_TYPE_ALIASES.get(model_type, model_type) if isinstance(model_type, str) else None
        if family not in FAMILIES:
            raise ValueError(f"{folder / 'config_sentence_transformers.json'}: model_type {model_type!r} is not a "
                             f"family jaxst knows ({', '.join(FAMILIES)})")
        return family
    if "HF_ColBERT" in _architectures(folder):
        return "MultiVectorEncoder"
    return "SentenceTransformer"


def detect_family(name_or_path: str | os.PathLike, *, revision: str | None = None, cache_folder: str | None = None,
                  token: bool | str | None = None, local_files_only: bool = False) -> str:
    """The family of a model by Hub name or folder: ``"SentenceTransformer"``, ``"CrossEncoder"``,
    ``"SparseEncoder"`` or ``"MultiVectorEncoder"`` (the class of ``jaxst`` that loads it). A Hub name is
    resolved as loading resolves it (``jaxst.io.hub``)."""
    from jaxst.io.hub import resolve_model_folder

    folder = resolve_model_folder(name_or_path, revision=revision, cache_folder=cache_folder, token=token,
                                  local_files_only=local_files_only)
    return folder_family(folder)


__all__ = ["FAMILIES", "detect_family", "folder_family", "modules_family"]
