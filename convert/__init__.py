"""Command-line conversion between sentence-transformers folders and jaxst's native orbax checkpoints.

    python -m convert.to_orbax NAME_OR_FOLDER OUT               # Hub name or folder -> orbax params + configs
    python -m convert.to_sentence_transformers SRC OUT          # orbax folder (or any model) -> ST folder

Thin entries over ``jaxst convert`` (``jaxst.cli.convert``), kept for their command lines: the family is found
by ``jaxst.io.family.detect_family``, the same rule the ``jaxst`` command uses, and the work happens in
``jaxst.io.export``; these modules only parse arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

# --kind's values: the kebab form of each family's class name (jaxst.io.family.FAMILIES)
KINDS = ("auto", "sentence-transformer", "cross-encoder", "sparse-encoder", "multi-vector-encoder")


def _family(kind: str) -> str:
    """"auto" or the class name for a --kind value."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    from jaxst.cli import family_name

    return family_name(kind)


def _kind(family: str) -> str:
    """"SparseEncoder" -> "sparse-encoder"."""
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in family).lstrip("-")


def model_kind(name_or_path: str, revision: str | None = None, cache_folder: str | None = None) -> str:
    """The --kind of a Hub name or folder (``jaxst.io.family.detect_family``): "cross-encoder" for a
    sequence-classification checkpoint (one Transformer module, or no modules.json) or a causal-LM reranker,
    "sparse-encoder", "multi-vector-encoder", else "sentence-transformer"."""
    from jaxst.io.family import detect_family

    return _kind(detect_family(name_or_path, revision=revision, cache_folder=cache_folder))


def load_model(name_or_path: str, kind: str = "auto", revision: str | None = None, cache_folder: str | None = None):
    """A jaxst model of the --kind ``kind`` (``"auto"``: detected) for a Hub name or folder."""
    from jaxst.cli import load_family_model

    return load_family_model(name_or_path, _family(kind), revision=revision, cache_folder=cache_folder)


def convert(args: argparse.Namespace, to: str):
    """The folder ``jaxst.cli.convert`` writes for parsed arguments."""
    from jaxst.cli import convert as convert_model

    return convert_model(args.src, args.out, to=to, family=_family(args.kind), revision=args.revision,
                         cache_folder=args.cache_folder, overwrite=args.overwrite)[0]


def parser(prog: str, description: str, src_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("src", help=src_help)
    p.add_argument("out", help="the folder to write (written beside itself and renamed into place)")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="the model class to load SRC as (default: detected from its files, as `jaxst convert` "
                        "does: a sequence-classification checkpoint is a cross-encoder, a SPLADE model a "
                        "sparse-encoder, a ColBERT model a multi-vector-encoder, anything else a "
                        "sentence-transformer)")
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
