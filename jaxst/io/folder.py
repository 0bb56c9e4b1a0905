"""Read the sentence-transformers folder format: ``modules.json`` and each module's config."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

from jaxst import modules


def __getattr__(name: str):
    """Tables derived from the registry (``jaxst.modules``), built on first access so that importing io imports
    no JAX: ``MODULE_KINDS`` (last component of a modules.json "type" -> our module kind), ``SPARSE_KINDS`` and
    ``MULTI_VECTOR_KINDS`` (the kinds that mark those families), ``CONFIG_FILES`` (the file each kind keeps its
    settings in, where it is not config.json: a Router's structure is in router_config.json), ``REQUIRED_CONFIGS``."""
    if name == "MODULE_KINDS":
        return dict(modules.CLASS_KINDS)
    if name == "SPARSE_KINDS":
        return modules.family_kinds("SparseEncoder")
    if name == "MULTI_VECTOR_KINDS":
        return modules.family_kinds("MultiVectorEncoder")
    if name == "CONFIG_FILES":
        return {k.kind: k.config_files[0] for k in modules.KINDS.values() if k.config_files[0] != "config.json"}
    if name == "REQUIRED_CONFIGS":
        return tuple(k.kind for k in modules.KINDS.values() if k.config_required)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    kind: str
    path: Path
    config: dict


def read_json(path: Path, required: bool = True, expect: type = dict):
    """The JSON in ``path``, whose top level must be an ``expect`` (an object unless told otherwise): a
    config that is a list, a string or a number is a ValueError naming the file, never an AttributeError
    later. A missing file is an OSError when ``required``, else an empty ``expect``."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise OSError(f"missing {path}")
        return expect()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, expect):
        what = "an object" if expect is dict else f"a {expect.__name__}"
        raise ValueError(f"{path} must hold {what} at its top level, not {type(data).__name__}")
    return data


INPUT_KINDS = ("transformer", "static_embedding")  # the module kinds a sentence pipeline can start with


def read_modules(folder: Path) -> list[ModuleSpec]:
    """The module pipeline of a model folder, first module first.

    A plain Hugging Face folder (``config.json`` but no ``modules.json``) becomes Transformer + mean
    pooling, as in sentence-transformers.
    """
    specs = read_module_list(folder)
    if not specs or specs[0].kind not in INPUT_KINDS:
        raise ValueError(f"{Path(folder) / 'modules.json'} must start with a Transformer (or StaticEmbedding) module")
    return specs


def module_spec(kind: str, path: Path) -> ModuleSpec:
    """The spec of a ``kind`` module in ``path``: its config from the files its registry entry names, the first
    non-empty one (a Router's router_config.json, else config.json, sentence-transformers' legacy name)."""
    *earlier, last = modules.by_kind(kind).config_files
    for name in earlier:
        if config := read_json(path / name, required=False):
            return ModuleSpec(kind, path, config)
    return ModuleSpec(kind, path, read_json(path / last, required=modules.by_kind(kind).config_required))


# Class paths of other libraries whose modules are sentence-transformers' own (as sentence-transformers maps them)
CLASS_ALIASES = {"pylate.models.Dense.Dense": "sentence_transformers.base.modules.dense.Dense"}


def module_kind(type_name: str, where) -> str:
    """Our kind for a modules.json / router_config.json class path; a clear error for anything else."""
    type_name = CLASS_ALIASES.get(type_name, type_name)
    described = modules.kind_of_type(type_name)
    kind = None if described is None else described.kind
    if not type_name.startswith("sentence_transformers."):
        raise ValueError(
            f"module {type_name!r} in {where} is custom code; jaxst runs no remote code "
            f"and supports only {sorted(modules.CLASS_KINDS)}"
        )
    if kind is None:
        raise ValueError(f"unsupported module {type_name!r} in {where}; jaxst supports {sorted(modules.CLASS_KINDS)}")
    return kind


def read_router(spec: ModuleSpec) -> tuple[dict[str, list[ModuleSpec]], dict]:
    """A Router's routes (name -> its modules, in order) and its parameters (default_route, ...)."""
    config = spec.config
    where = spec.path / "router_config.json"
    types, structure = config.get("types"), config.get("structure")
    if not isinstance(types, dict) or not isinstance(structure, dict) or not structure:
        raise ValueError(f"{where} must hold the Router's 'types' and 'structure'")
    routes = {}
    for route, ids in structure.items():
        specs = []
        for module_id in ids:
            if module_id not in types or "/" in module_id or "\\" in module_id or module_id.startswith("."):
                raise ValueError(f"{where}: route {route!r} names an unknown module {module_id!r}")
            specs.append(module_spec(module_kind(str(types[module_id]), where), spec.path / module_id))
        routes[route] = specs
    return routes, dict(config.get("parameters") or {})


def read_module_list(folder: Path) -> list[ModuleSpec]:
    """The modules of a folder in modules.json order, whatever they are (``read_modules`` checks the
    first is a Transformer)."""
    folder = Path(folder)
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        if not (folder / "config.json").is_file():
            raise OSError(f"{folder} is not a model folder: it has neither modules.json nor config.json")
        warnings.warn(f"{folder} has no modules.json; using a Transformer with mean pooling", stacklevel=3)
        return [
            ModuleSpec("transformer", folder, read_json(folder / "sentence_bert_config.json", required=False)),
            ModuleSpec("pooling", folder, {"pooling_mode": "mean"}),
        ]
    entries = read_json(modules_file, expect=list)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) \
                or not isinstance(entry.get("path", ""), str) or not isinstance(entry.get("idx", 0), int):
            raise ValueError(f"{modules_file}: entry {i} must be an object with a string 'type', a string 'path' "
                             f"and an integer 'idx', got {entry!r}")
    return [module_spec(module_kind(entry["type"], modules_file), module_folder(folder, entry.get("path", ""),
                                                                                  modules_file))
            for entry in sorted(entries, key=lambda e: e.get("idx", 0))]


def module_folder(folder: Path, sub: str, where: Path) -> Path:
    """``folder / sub`` for a module path of ``where``; a path that leaves the model folder (absolute, ``..``,
    a drive or a link pointing out) is refused: a model folder describes itself, never files beside it."""
    path = folder / sub
    if Path(sub).is_absolute() or PureWindowsPath(sub).drive or ".." in PurePosixPath(sub.replace("\\", "/")).parts \
            or not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{where}: module path {sub!r} leaves the model folder {folder}")
    return path
