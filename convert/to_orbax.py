"""``python -m convert.to_orbax NAME_OR_FOLDER OUT``: a sentence-transformers model (Hub name or folder) as
an orbax checkpoint of its params (``OUT/params``) beside its config and tokenizer files; the same as
``jaxst convert NAME_OR_FOLDER OUT --to orbax``."""

from __future__ import annotations

import sys

from convert import convert, parser, run


def main(argv: list[str] | None = None):
    args = parser(
        "python -m convert.to_orbax",
        "Save a sentence-transformers model (SentenceTransformer, CrossEncoder, SparseEncoder or "
        "MultiVectorEncoder) as jaxst's native checkpoint: model.params as an orbax StandardCheckpointer "
        "checkpoint in OUT/params, with the model's config and tokenizer files and a jaxst_orbax.json manifest.",
        "a Hub model name or a local sentence-transformers / Hugging Face folder",
    ).parse_args(argv)
    return convert(args, "orbax")


if __name__ == "__main__":
    sys.exit(run(main, None))
