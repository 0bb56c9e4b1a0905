"""Read the sentence-transformers folder format: ``modules.json`` and each module's config."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

# Last component of a modules.json "type" -> our module kind.
MODULE_KINDS = {
    "Transformer": "transformer",
    "Pooling": "pooling",
    "Dense": "dense",
    "Normalize": "normalize",
    "Dropout": "dropout",  # a no-op at inference
    "LogitScore": "logit_score",  # a causal-LM reranker's score (CrossEncoder)
    # SparseEncoder's modules
    "MLMTransformer": "transformer",  # the pre-v5 name of a fill-mask Transformer
    "SpladePooling": "splade_pooling",
    "SparseStaticEmbedding": "static_embedding",
    "SparseAutoEncoder": "sparse_autoencoder",
    "Router": "router",
    # MultiVectorEncoder's
    "MultiVectorMask": "multi_vector_mask",
    "HierarchicalTokenPooling": "token_pooling",
    "LambdaTokenPooling": "token_pooling",
}
SPARSE_KINDS = ("splade_pooling", "static_embedding", "sparse_autoencoder", "router")
MULTI_VECTOR_KINDS = ("multi_vector_mask", "token_pooling")
# The file each kind keeps its settings in (a Router's structure is in router_config.json).
CONFIG_FILES = {"transformer": "sentence_bert_config.json", "router": "router_config.json"}
REQUIRED_CONFIGS = ("pooling", "dense", "logit_score", "splade_pooling", "router")


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    kind: str
    path: Path
    config: dict


def read_json(path: Path, required: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        if required:
            raise OSError(f"missing {path}")
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def read_modules(folder: Path) -> list[ModuleSpec]:
    """The module pipeline of a model folder, first module first.

    A plain Hugging Face folder (``config.json`` but no ``modules.json``) becomes Transformer + mean
    pooling, as in sentence-transformers.
    """
    specs = read_module_list(folder)
    if not specs or specs[0].kind != "transformer":
        raise ValueError(f"{Path(folder) / 'modules.json'} must start with a Transformer module")
    return specs


def module_spec(kind: str, path: Path) -> ModuleSpec:
    config_name = CONFIG_FILES.get(kind, "config.json")
    config = read_json(path / config_name, required=kind in REQUIRED_CONFIGS and kind != "router")
    if kind == "router" and not config:  # sentence-transformers' legacy name for the Router's file
        config = read_json(path / "config.json")
    return ModuleSpec(kind, path, config)


# Class paths of other libraries whose modules are sentence-transformers' own (as sentence-transformers maps them)
CLASS_ALIASES = {"pylate.models.Dense.Dense": "sentence_transformers.base.modules.dense.Dense"}


def module_kind(type_name: str, where) -> str:
    """Our kind for a modules.json / router_config.json class path; a clear error for anything else."""
    type_name = CLASS_ALIASES.get(type_name, type_name)
    kind = MODULE_KINDS.get(type_name.rsplit(".", 1)[-1])
    if not type_name.startswith("sentence_transformers."):
        raise ValueError(
            f"module {type_name!r} in {where} is custom code; jaxst runs no remote code "
            f"and supports only {sorted(MODULE_KINDS)}"
        )
    if kind is None:
        raise ValueError(f"unsupported module {type_name!r} in {where}; jaxst supports {sorted(MODULE_KINDS)}")
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
    entries = read_json(modules_file)
    if not isinstance(entries, list):
        raise ValueError(f"{modules_file} must hold a list of modules")
    return [module_spec(module_kind(str(entry.get("type", "")), modules_file), folder / entry.get("path", ""))
            for entry in sorted(entries, key=lambda e: e.get("idx", 0))]
