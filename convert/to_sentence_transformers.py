"""``python -m convert.to_sentence_transformers SRC OUT``: a jaxst orbax checkpoint folder (from
``convert.to_orbax`` or ``jaxst.io.export.save_orbax``) back to a standard sentence-transformers folder;
SRC may also be any model jaxst loads (Hub name or folder), which is then re-saved by jaxst."""

from __future__ import annotations

import sys
from pathlib import Path

from convert import load_model, parser, run


def main(argv: list[str] | None = None):
    args = parser(
        "python -m convert.to_sentence_transformers",
        "Write a standard sentence-transformers folder (model.safetensors in PyTorch names and layouts, "
        "tokenizer and config files) that sentence-transformers and transformers load unchanged.",
        "a jaxst orbax checkpoint folder, or a Hub model name or folder jaxst loads",
    ).parse_args(argv)
    from jaxst.io.export import ORBAX_MANIFEST, orbax_to_folder, save_model

    if (Path(args.src) / ORBAX_MANIFEST).is_file():
        return orbax_to_folder(args.src, args.out, overwrite=args.overwrite)
    model = load_model(args.src, args.kind, args.revision, args.cache_folder)
    return save_model(model.folder_plan(), model.params, args.out, overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(run(main, None))
