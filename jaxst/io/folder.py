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
}


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
    specs = []
    for entry in sorted(entries, key=lambda e: e.get("idx", 0)):
        type_name = str(entry.get("type", ""))
        kind = MODULE_KINDS.get(type_name.rsplit(".", 1)[-1])
        if not type_name.startswith("sentence_transformers."):
            raise ValueError(
                f"module {type_name!r} in {modules_file} is custom code; jaxst runs no remote code "
                f"and supports only {sorted(MODULE_KINDS)}"
            )
        if kind is None:
            raise ValueError(
                f"unsupported module {type_name!r} in {modules_file}; jaxst supports {sorted(MODULE_KINDS)}"
            )
        path = folder / entry.get("path", "")
        config_name = "sentence_bert_config.json" if kind == "transformer" else "config.json"
        required = kind in ("pooling", "dense", "logit_score")
        specs.append(ModuleSpec(kind, path, read_json(path / config_name, required=required)))
    if not specs or specs[0].kind != "transformer":
        raise ValueError(f"{modules_file} must start with a Transformer module")
    return specs
