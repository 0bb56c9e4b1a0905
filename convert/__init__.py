"""Command-line conversion between sentence-transformers folders and jaxst's native orbax checkpoints.

    python -m convert.to_orbax NAME_OR_FOLDER OUT               # Hub name or folder -> orbax params + configs
    python -m convert.to_sentence_transformers SRC OUT          # orbax folder (or any model) -> ST folder

The work happens in ``jaxst.io.export``; these modules only parse arguments and pick the model class.
"""

from __future__ import annotations

import argparse
import os
import sys

KINDS = ("auto", "sentence-transformer", "cross-encoder")


def model_kind(name_or_path: str, revision: str | None = None, cache_folder: str | None = None) -> str:
    """"cross-encoder" for a sequence-classification checkpoint (one Transformer module, or no modules.json),
    else "sentence-transformer"."""
    from jaxst.io.folder import read_json, read_modules
    from jaxst.io.hub import resolve_model_folder

    folder = resolve_model_folder(name_or_path, revision=revision, cache_folder=cache_folder)
    has_modules = (folder / "modules.json").is_file()
    specs = read_modules(folder) if has_modules else None
    config_folder = specs[0].path if specs else folder
    archs = [str(a) for a in read_json(config_folder / "config.json", required=False).get("architectures") or []]
    classifier = any(a.endswith("ForSequenceClassification") for a in archs)
    if classifier and (specs is None or len(specs) == 1):
        return "cross-encoder"
    return "sentence-transformer"


def load_model(name_or_path: str, kind: str = "auto", revision: str | None = None, cache_folder: str | None = None):
    """A jaxst ``SentenceTransformer`` or ``CrossEncoder`` for a Hub name or folder."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = model_kind(name_or_path, revision, cache_folder)
    if kind == "cross-encoder":
        from jaxst import CrossEncoder

        return CrossEncoder(name_or_path, revision=revision, cache_folder=cache_folder)
    from jaxst import SentenceTransformer

    return SentenceTransformer(name_or_path, revision=revision, cache_folder=cache_folder)


def parser(prog: str, description: str, src_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("src", help=src_help)
    p.add_argument("out", help="the folder to write (written beside itself and renamed into place)")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="the model class to load SRC as (default: a sequence-classification checkpoint is a "
                        "cross-encoder, anything else a sentence-transformer)")
    p.add_argument("--revision", default=None, help="Hub revision of SRC")
    p.add_argument("--cache-folder", default=None, help="Hugging Face cache folder")
    p.add_argument("--overwrite", action="store_true",
                   help="write into OUT even if it is a non-empty folder that holds no model")
    return p


def run(main, argv: list[str] | None) -> int:
    """Run ``main(argv)``; bad input prints one line on stderr and exits with status 2."""
    try:
        out = main(argv)
    except (ValueError, TypeError, OSError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(os.fspath(out))
    return 0
