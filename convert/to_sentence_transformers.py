"""``python -m convert.to_sentence_transformers SRC OUT``: a jaxst orbax checkpoint folder (from
``convert.to_orbax``, ``jaxst convert`` or ``jaxst.io.export.save_orbax``) back to a standard sentence-transformers
folder; SRC may also be any model jaxst loads (Hub name or folder), which is then re-saved by jaxst. The same as
``jaxst convert SRC OUT --to sentence-transformers``."""

from __future__ import annotations

import sys

from convert import convert, parser, run


def main(argv: list[str] | None = None):
    args = parser(
        "python -m convert.to_sentence_transformers",
        "Write a standard sentence-transformers folder (model.safetensors in PyTorch names and layouts, "
        "tokenizer and config files) that sentence-transformers and transformers load unchanged.",
        "a jaxst orbax checkpoint folder, or a Hub model name or folder jaxst loads",
    ).parse_args(argv)
    return convert(args, "sentence-transformers")


if __name__ == "__main__":
    sys.exit(run(main, None))
