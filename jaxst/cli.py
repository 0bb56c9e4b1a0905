"""The ``jaxst`` command line: embed text files to ``.npy``, run semantic search, convert models.

    jaxst encode texts.txt -o embeddings.npy [--model M] [--normalize] [--precision int8]   (streams the file)
    cat texts.txt | jaxst encode -o embeddings.npy
    jaxst search "A man is eating pasta." --corpus corpus.txt [--top-k 5] [--json]
    jaxst search "A man is eating pasta." --corpus corpus.txt --rerank cross-encoder/ms-marco-MiniLM-L6-v2
    jaxst encode texts.txt -o sparse.npz --sparse --model naver/splade-v3     (SparseEncoder: a CSR .npz)
    jaxst search "pasta" --corpus corpus.txt --sparse --model naver/splade-v3
    jaxst convert NAME_OR_FOLDER ckpt        (any family -> a native orbax params checkpoint)
    jaxst convert ckpt st-folder             (... and back to a sentence-transformers folder)
    jaxst encode-corpus docs/*.jsonl -o corpus-emb --id-column id     (Parquet shards + manifest, resumable)
    jaxst serve all-MiniLM-L6-v2 cross-encoder/ms-marco-MiniLM-L6-v2 --port 8080   (HTTP: jaxst.serve)

Input files, stdin and queries must be UTF-8, one text per line (anything else is an error, never a
text with replacement characters). Outputs are written atomically, and only over regular files or new
paths (``jaxst.io.atomic``). Errors print one ``jaxst: error: ...`` line on stderr and exit with status 2.
The heavy imports (jax, the model) happen inside the commands, not at import time.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
from pathlib import Path

from jaxst.io.family import FAMILIES

DEFAULT_MODEL = "all-MiniLM-L6-v2"
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
PROGRESS_THRESHOLD = 256  # show a progress bar when there are more texts than this
DEFAULT_CANDIDATES = 50  # bi-encoder hits a cross-encoder re-scores with --rerank


class CliError(Exception):
    """An error the user can fix: reported as one ``jaxst: error:`` line, exit status 2."""


class _ArgumentParser(argparse.ArgumentParser):
    """Raise usage errors instead of printing the usage block and calling ``sys.exit``."""

    def error(self, message: str):
        raise CliError(f"{message} (see '{self.prog} --help')")


def _positive_int(value: str, minimum: int = 1) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {n}")
    return n


def _non_negative_int(value: str) -> int:
    return _positive_int(value, minimum=0)


@functools.lru_cache(maxsize=4)
def load_model(name: str):
    """Load (once per process) a ``jaxst.SentenceTransformer`` by Hub name or folder."""
    from jaxst import SentenceTransformer

    try:
        return SentenceTransformer(name)
    except Exception as e:  # missing folder, offline, malformed config, unsupported architecture...
        raise CliError(f"cannot load model {name!r}: {_one_line(e)}{_family_hint(name)}") from e


# What to tell a user who gave `encode` / `search` a model of another family.
FAMILY_HINTS = {
    "SparseEncoder": " (pass --sparse for a sparse model)",
    "CrossEncoder": " (a cross-encoder scores pairs: pass it to 'jaxst search --rerank')",
    "MultiVectorEncoder": " (a multi-vector model: load it with jaxst.MultiVectorEncoder in Python)",
}


def _family_hint(name: str) -> str:
    """A hint naming the family of a model that failed to load as a SentenceTransformer, from what is on disk
    (nothing is downloaded); "" when it is one, or cannot be told."""
    from jaxst.io.family import detect_family

    try:
        return FAMILY_HINTS.get(detect_family(name, local_files_only=True), "")
    except Exception:  # no folder, malformed files: the load error says it
        return ""


@functools.lru_cache(maxsize=4)
def load_sparse_model(name: str):
    """Load (once per process) a ``jaxst.SparseEncoder`` by Hub name or folder."""
    from jaxst.sparse_encoder import SparseEncoder

    try:
        return SparseEncoder(name)
    except Exception as e:
        raise CliError(f"cannot load sparse model {name!r}: {_one_line(e)}") from e


def _load(args):
    if getattr(args, "sparse", False):
        return load_sparse_model(args.model)
    return load_model(args.model)


@functools.lru_cache(maxsize=4)
def load_cross_encoder(name: str):
    """Load (once per process) a ``jaxst.CrossEncoder`` by Hub name or folder."""
    from jaxst.cross_encoder import CrossEncoder

    try:
        model = CrossEncoder(name)
    except Exception as e:  # missing folder, offline, an embedding model, unsupported architecture...
        raise CliError(f"cannot load cross-encoder {name!r}: {_one_line(e)}") from e
    if model.num_labels != 1:
        raise CliError(f"cross-encoder {name!r} has {model.num_labels} labels; --rerank needs one relevance score")
    return model


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxst")
    except PackageNotFoundError:
        return "unknown"


def _check_utf8(text: str, where: str, line: int | None = None) -> str:
    """``text`` itself, unless it holds the surrogate escapes Python decodes non-UTF-8 bytes to (stdin and
    argv under a C/POSIX locale): a CliError naming ``where``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        at = f"line {line + 1}" if line is not None else f"character {e.start}"
        raise CliError(f"cannot read {where}: not valid UTF-8 (at {at})") from None
    return text


def read_lines(path: str | None) -> list[str]:
    """One text per line from ``path`` (``-``/``None``: stdin).

    Only the newline is removed from each line; empty lines are empty texts. A trailing newline at the
    end of the input does not make a final empty text. ``\\r\\n`` line ends are read as newlines."""
    try:
        if path is None or path == "-":
            data = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                data = f.read()
    except FileNotFoundError:
        raise CliError(f"input file {path!r} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"input {path!r} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        where = "stdin" if path in (None, "-") else repr(path)
        raise CliError(f"cannot read {where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CliError(f"cannot read {path!r}: {e.strerror or e}") from None
    if not data:
        return []
    if path is None or path == "-":
        _check_utf8(data, "stdin")
    lines = data.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _check_output_path(path: str) -> None:
    """Before any work: the output must be a regular file, a new path or a symlink to one (``jaxst.io.atomic``)."""
    from jaxst.io.atomic import resolve_target

    if os.path.isdir(path):
        raise CliError(f"output {path!r} is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CliError(f"output directory {parent!r} does not exist")
    try:
        resolve_target(path)
    except OSError as e:
        raise CliError(f"cannot write {path!r}: {e.strerror or _one_line(e)}") from None


class _FileLines:
    """The lines of a UTF-8 text file, read lazily (one text per line, as ``read_lines`` splits them).

    ``len()`` counts the newlines in one binary pass, so that the progress bar knows the total while
    the texts themselves stream through ``encode`` without being held in memory."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, encoding="utf-8")  # closed by close(), once streamed
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            count, last = 0, b"\n"
            with open(self.path, "rb") as f:
                while block := f.read(1 << 20):
                    count += block.count(b"\n")
                    last = block[-1:]
            self._count = count + (last != b"\n")
        return self._count

    def __iter__(self):
        return _strip_newlines(self.file, repr(self.path))

    def close(self) -> None:
        self.file.close()


def _strip_newlines(stream, where: str):
    lines_read = 0
    try:
        for line in stream:
            yield _check_utf8(line[:-1] if line.endswith("\n") else line, where, lines_read)
            lines_read += 1
    except UnicodeDecodeError as e:
        raise CliError(f"cannot read {where}: not valid UTF-8 ({e.reason}, after line {lines_read})") from None


def open_lines(path: str | None):
    """The texts of ``path`` (``-``/``None``: stdin), one per line, as a lazy iterable.

    A file is opened now, so that a missing or unreadable file is reported before any work; the
    result has a length (see ``_FileLines``). stdin is read as ``encode`` consumes it and has none."""
    if path is None or path == "-":
        return _strip_newlines(sys.stdin, "stdin")
    try:
        return _FileLines(path)
    except FileNotFoundError:
        raise CliError(f"input file {path!r} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"input {path!r} is a directory, not a file") from None
    except OSError as e:
        raise CliError(f"cannot read {path!r}: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------- commands


def cmd_encode(args: argparse.Namespace) -> int:
    """Stream the input's lines through ``encode`` into ``args.output``: memory stays bounded by one chunk
    of texts whatever the input's size, and the output appears only once complete."""
    lines = open_lines(args.input)
    source = "stdin" if args.input in (None, "-") else args.input
    try:
        if isinstance(lines, _FileLines):
            texts, empty, progress = lines, len(lines) == 0, len(lines) > PROGRESS_THRESHOLD
        else:  # stdin has no length: peek, so that empty input fails before the model loads
            first = next(lines, None)
            texts, empty, progress = itertools.chain([first], lines), first is None, sys.stderr.isatty()
        if empty:
            raise CliError(f"no texts to encode in {source}")
        _check_output_path(args.output)
        if args.sparse:
            return _encode_sparse(args, texts, source, progress)
        model = load_model(args.model)
        try:
            embeddings = model.encode(
                texts,
                batch_size=args.batch_size,
                normalize_embeddings=args.normalize,
                precision=args.precision,
                prompt_name=args.prompt_name,
                show_progress_bar=progress,
                output_path=args.output,
            )
        except ValueError as e:  # unknown prompt name, int8 ranges from a single text, ...
            raise CliError(_one_line(e)) from e
        except OSError as e:
            raise CliError(f"cannot write {args.output!r}: {e.strerror or _one_line(e)}") from e
    finally:
        if isinstance(lines, _FileLines):
            lines.close()
    n = len(embeddings)
    print(
        f"jaxst: encoded {n} text{'s' if n != 1 else ''} from {source} -> {args.output} "
        f"(shape {tuple(embeddings.shape)}, {embeddings.dtype})",
        file=sys.stderr,
    )
    return 0


def cmd_encode_corpus(args: argparse.Namespace) -> int:
    """``jaxst.corpus.encode_corpus`` over the inputs into ``args.output`` (Parquet shards and a manifest),
    resuming a run that stopped; under ``jax.distributed`` when a coordinator is given."""
    from jaxst import corpus

    distributed = (args.coordinator_address, args.num_processes, args.process_id)
    if any(v is not None for v in distributed):
        if any(v is None for v in distributed):
            raise CliError("--coordinator-address, --num-processes and --process-id go together")
        if not args.process_id < args.num_processes:
            raise CliError(f"--process-id {args.process_id} must be below --num-processes {args.num_processes}")
        import jax

        jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                                   process_id=args.process_id)
    try:
        paths = corpus.expand_inputs(args.inputs)
    except corpus.CorpusError as e:
        raise CliError(str(e)) from e
    try:
        model = load_family_model(args.model, args.family, dtype=args.dtype if args.dtype != "float32" else None)
    except Exception as e:
        raise CliError(f"cannot load model {args.model!r}: {_one_line(e)}") from e
    try:
        summary = corpus.encode_corpus(
            model, paths, args.output, text_column=args.text_column, id_column=args.id_column,
            shard_size=args.shard_size, batch_size=args.batch_size, precision=args.precision,
            normalize_embeddings=args.normalize, truncate_dim=args.truncate_dim, prompt_name=args.prompt_name,
            chunk_tokens=args.chunk_tokens, chunk_overlap=args.overlap, chunk_pooling=args.chunk_pooling,
            late_chunking=args.late_chunking, show_progress_bar=not args.quiet, model_name=args.model,
        )
    except (corpus.CorpusError, ValueError, TypeError) as e:
        raise CliError(_one_line(e)) from e
    rate = summary["texts"] / max(summary["seconds"], 1e-9)
    state = "complete" if summary["complete"] else "this process' shards done, waiting for the others' shards"
    print(f"jaxst: {summary['texts']} texts, {summary['chunks']} chunks ({summary['tokens']} tokens) embedded in "
          f"{summary['seconds']:.1f} s "
          f"({rate:.1f} texts/s); shards: {summary['shards_written']} written, {summary['shards_skipped']} already "
          f"there, {summary['shards']} in all -> {args.output} ({state})", file=sys.stderr)
    return 0


SPARSE_CHUNK = 16384  # texts per encode call when writing sparse embeddings


def _encode_sparse(args: argparse.Namespace, texts, source: str, progress: bool) -> int:
    """Sparse embeddings into a scipy ``.npz`` (CSR: ``scipy.sparse.load_npz`` reads it), chunk by chunk;
    written beside the target and renamed into place once complete."""
    import scipy.sparse

    from jaxst.io.atomic import AtomicFile
    from jaxst.sparse import to_scipy

    if args.normalize or args.precision != "float32":
        raise CliError("--normalize and --precision apply to dense embeddings, not with --sparse")
    if not args.output.endswith(".npz"):
        raise CliError(f"--sparse writes a scipy .npz file; name the output OUT.npz, not {args.output!r}")
    model = load_sparse_model(args.model)
    pieces, chunk = [], []
    try:
        for text in itertools.chain(texts, [None]):
            if text is not None:
                chunk.append(text)
            if chunk and (text is None or len(chunk) == SPARSE_CHUNK):
                pieces.append(to_scipy(model.encode(chunk, batch_size=args.batch_size, prompt_name=args.prompt_name,
                                                    show_progress_bar=progress)))
                chunk = []
    except ValueError as e:
        raise CliError(_one_line(e)) from e
    matrix = scipy.sparse.vstack(pieces, format="csr")
    try:
        with AtomicFile(args.output) as out:
            scipy.sparse.save_npz(out.file, matrix)
            out.commit()
    except OSError as e:
        raise CliError(f"cannot write {args.output!r}: {e.strerror or _one_line(e)}") from e
    n = matrix.shape[0]
    print(f"jaxst: encoded {n} text{'s' if n != 1 else ''} from {source} -> {args.output} "
          f"(sparse CSR {matrix.shape}, {matrix.nnz / max(n, 1):.1f} active dimensions per text)", file=sys.stderr)
    return 0


def _score_function(name: str):
    from jaxst import util

    return {
        "dot": util.dot_score,
        "euclidean": util.euclidean_sim,
        "manhattan": util.manhattan_sim,
    }.get(name, util.cos_sim)


def cmd_search(args: argparse.Namespace) -> int:
    if args.candidates is not None and args.rerank is None:
        raise CliError("--candidates only applies with --rerank MODEL (see 'jaxst search --help')")
    for i, query in enumerate(args.queries):
        _check_utf8(query, f"query {i + 1}")
    if (args.corpus is None) == (args.index is None):
        raise CliError("search needs one of --corpus FILE or --index PATH (see 'jaxst search --help')")
    if args.index is not None:
        return _search_index(args)
    lines = read_lines(args.corpus)
    corpus = [(i + 1, t) for i, t in enumerate(lines) if t.strip()]
    if not corpus:
        where = "stdin" if args.corpus == "-" else repr(args.corpus)
        raise CliError(f"the corpus {where} has no non-empty lines")
    model = _load(args)
    reranker = load_cross_encoder(args.rerank) if args.rerank is not None else None
    from jaxst.util import semantic_search

    texts = [t for _, t in corpus]
    try:
        corpus_emb = model.encode_document(
            texts, batch_size=args.batch_size, show_progress_bar=len(texts) > PROGRESS_THRESHOLD
        )
        query_emb = model.encode_query(list(args.queries), batch_size=args.batch_size, show_progress_bar=False)
    except ValueError as e:
        raise CliError(_one_line(e)) from e
    candidates = DEFAULT_CANDIDATES if args.candidates is None else args.candidates
    hits = semantic_search(
        query_emb, corpus_emb, top_k=max(args.top_k, candidates) if reranker else args.top_k,
        score_function=_score_function(model.similarity_fn_name),
    )
    if reranker is not None:
        hits = [rerank(reranker, query, query_hits, texts, args.top_k, args.batch_size)
                for query, query_hits in zip(args.queries, hits, strict=True)]
    if args.json:
        out = [
            [
                {"corpus_id": h["corpus_id"], "score": h["score"], "text": texts[h["corpus_id"]],
                 "line": corpus[h["corpus_id"]][0],
                 **({"retrieval_score": h["retrieval_score"]} if reranker else {})}
                for h in query_hits
            ]
            for query_hits in hits
        ]
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    _print_hits(args.queries, hits, lambda h: texts[h["corpus_id"]])
    return 0


def _print_hits(queries, hits, label) -> None:
    """Each query and its hits, one ``score  label(hit)`` line each, a blank line between queries."""
    for i, (query, query_hits) in enumerate(zip(queries, hits, strict=True)):
        if i:
            print()
        print(f"Query: {query}")
        for h in query_hits:
            print(f"  {h['score']:.4f}  {label(h)}")


def _search_index(args: argparse.Namespace) -> int:
    """``search --index``: an ``encode-corpus`` output folder (its float32 shards into an index, shard by shard)
    or a saved ``EmbeddingIndex`` file, searched with the queries embedded by ``--model``."""
    from jaxst import corpus
    from jaxst.index import EmbeddingIndex

    if args.rerank is not None or args.sparse:
        raise CliError("--index searches dense embeddings without --rerank or --sparse")
    model = load_model(args.model)
    try:
        if os.path.isdir(args.index):
            corpus.check_model(args.index, model)
            index = corpus.build_index(args.index)
        else:
            index = EmbeddingIndex.load(args.index)
        hits = index.search(list(args.queries), top_k=args.top_k, model=model)
    except (corpus.CorpusError, ValueError, OSError) as e:
        raise CliError(_one_line(e)) from e
    if args.json:
        print(json.dumps([[{"corpus_id": h["corpus_id"], "id": h.get("id"), "score": h["score"],
                            **({"text": h["text"]} if "text" in h else {})} for h in row] for row in hits],
                         indent=2, ensure_ascii=False))
        return 0
    _print_hits(args.queries, hits, lambda h: h.get("text", h.get("id", h["corpus_id"])))
    return 0


def rerank(reranker, query: str, hits: list[dict], texts: list[str], top_k: int, batch_size: int) -> list[dict]:
    """Bi-encoder hits re-scored by a cross-encoder: the ``top_k`` best, each with its ``retrieval_score``."""
    ranked = reranker.rank(query, [texts[h["corpus_id"]] for h in hits], top_k=top_k, batch_size=batch_size)
    return [
        {"corpus_id": hits[r["corpus_id"]]["corpus_id"], "score": r["score"],
         "retrieval_score": hits[r["corpus_id"]]["score"]}
        for r in ranked
    ]


# ---------------------------------------------------------------------------------------- convert

CONVERT_TARGETS = ("auto", "orbax", "sentence-transformers")


def family_name(value: str) -> str:
    """``"auto"`` or one of ``FAMILIES``, from its class name or the kebab form (``sparse-encoder``), any case."""
    key = value.replace("-", "").replace("_", "").lower()
    for name in ("auto", *FAMILIES):
        if name.lower() == key:
            return name
    raise ValueError(f"unknown model family {value!r}; use one of auto, {', '.join(FAMILIES)}")


def load_family_model(name_or_path, family: str = "auto", *, revision: str | None = None,
                      cache_folder: str | None = None, dtype: str | None = None):
    """A jaxst model of ``family`` (``"auto"``: ``jaxst.io.family.detect_family``) by Hub name or folder;
    ``dtype`` as the families' constructors take it (None: float32)."""
    import jaxst
    from jaxst.io.family import detect_family

    family = family_name(family)
    if family == "auto":
        family = detect_family(name_or_path, revision=revision, cache_folder=cache_folder)
    return getattr(jaxst, family)(name_or_path, revision=revision, cache_folder=cache_folder, dtype=dtype)


def convert(src, out, *, to: str = "auto", family: str = "auto", revision: str | None = None,
            cache_folder: str | None = None, overwrite: bool = False) -> tuple[Path, str, str]:
    """``src`` (Hub name, model folder, or a jaxst orbax checkpoint) written to ``out`` as ``to``: ``"orbax"``
    (``model.params`` as an orbax checkpoint beside the folder's config and tokenizer files,
    ``jaxst.io.export.save_orbax``) or ``"sentence-transformers"`` (a folder PyTorch users load unchanged). ``"auto"``:
    a checkpoint goes back to sentence-transformers, anything else to orbax. ``family`` forces the class to load
    ``src`` as (default: detected). Returns (the folder written, the format, the family). ``overwrite``: write
    into a non-empty folder that holds no model (``jaxst.io.export.atomic_folder``; every write is atomic)."""
    from jaxst.io.export import ORBAX_MANIFEST, orbax_to_folder, save_model, save_orbax
    from jaxst.io.family import folder_family

    if to not in CONVERT_TARGETS:
        raise ValueError(f"to must be one of {CONVERT_TARGETS}, got {to!r}")
    family = family_name(family)
    checkpoint = isinstance(src, (str, os.PathLike)) and (Path(src) / ORBAX_MANIFEST).is_file()
    if to == "auto":
        to = "sentence-transformers" if checkpoint else "orbax"
    if checkpoint:
        if to == "orbax":
            raise ValueError(f"{os.fspath(src)!r} is already a jaxst orbax checkpoint")
        saved = folder_family(src)
        if family not in ("auto", saved):
            raise ValueError(f"{os.fspath(src)!r} is a {saved} checkpoint, not a {family}")
        return orbax_to_folder(src, out, overwrite=overwrite), to, saved
    model = load_family_model(src, family, revision=revision, cache_folder=cache_folder)
    if to == "orbax":
        path = save_orbax(model, out, overwrite=overwrite)
    else:
        path = save_model(model.folder_plan(), model.params, out, overwrite=overwrite)
    return path, to, type(model).__name__


def _check_convert_paths(src: str, out: str, overwrite: bool) -> None:
    """Before any work: OUT is a new path or an empty folder (a non-empty one only with --overwrite), and it
    neither is nor lies inside or around a local SRC."""
    if not out:
        raise CliError("OUT is empty: name the folder to write")
    target = Path(os.path.realpath(os.path.expanduser(out)))
    source = Path(os.path.realpath(os.path.expanduser(src)))
    if source.is_dir() and (target.is_relative_to(source) or source.is_relative_to(target)):
        raise CliError(f"output {out!r} overlaps the model folder {src!r}; write it somewhere else")
    if target.exists() and not target.is_dir():
        raise CliError(f"output {out!r} is a file, not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise CliError(f"output {out!r} already exists and is not empty; pass --overwrite to write into it "
                       "(a model there is replaced, other files are kept)")


def cmd_convert(args: argparse.Namespace) -> int:
    _check_convert_paths(args.src, args.out, args.overwrite)
    try:
        path, to, family = convert(args.src, args.out, to=args.to, family=args.family, revision=args.revision,
                                   cache_folder=args.cache_folder, overwrite=args.overwrite)
    except Exception as e:  # missing folder, offline, unknown family, unsupported model, unwritable output...
        raise CliError(f"cannot convert {args.src!r}: {_one_line(e)}") from e
    what = "an orbax checkpoint" if to == "orbax" else "a sentence-transformers folder"
    print(f"jaxst: converted {family} {args.src} -> {what} at {path}", file=sys.stderr)
    print(os.fspath(path))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from jaxst.serve import create_app, served_name
    except ImportError as e:
        raise CliError(f"jaxst serve needs the serve extra (pip install 'jaxst[serve]'): {_one_line(e)}") from e
    if args.served_model_name and len(args.served_model_name) != len(args.models):
        raise CliError(f"--served-model-name was given {len(args.served_model_name)} times for "
                       f"{len(args.models)} models; give it once per model, in order")
    names = args.served_model_name or [served_name(m) for m in args.models]
    if len(set(names)) != len(names):
        raise CliError(f"two models would be served under one name: {names}; use --served-model-name")
    models = {}
    for name, src in zip(names, args.models):
        try:
            models[name] = load_family_model(src, args.family, dtype=args.dtype)
        except Exception as e:  # missing folder, offline, unsupported model...
            raise CliError(f"cannot load model {src!r}: {_one_line(e)}") from e
    api_key = args.api_key or os.environ.get("JAXST_API_KEY") or None
    try:
        app = create_app(models, max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
                         max_concurrent_requests=args.max_concurrent_requests,
                         max_client_batch_size=args.max_client_batch_size, api_key=api_key,
                         max_body_bytes=args.max_body_bytes, batch_size=args.batch_size,
                         warmup_tokens=args.warmup_tokens)
    except ValueError as e:  # e.g. a family the server does not serve yet
        raise CliError(str(e)) from e
    print(f"jaxst: serving {', '.join(names)} on http://{args.host}:{args.port}", file=sys.stderr)
    # uvicorn's own SIGINT/SIGTERM handling: stop accepting, finish in-flight requests (at most
    # --graceful-timeout seconds), then the app's lifespan ends the batch workers
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.graceful_timeout)
    return 0


SERVE_DTYPES = ("float32", "bfloat16", "float16", "int8")
DEFAULT_WARMUP_TOKENS = 64


def _family_arg(value: str) -> str:
    try:
        return family_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="jaxst",
        description="Sentence embeddings with JAX: encode text files, run semantic search, convert models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_model(p):
        p.add_argument(
            "--model", "-m", default=DEFAULT_MODEL,
            help=f"Hub name or local folder of a sentence-transformers model (default: {DEFAULT_MODEL})",
        )
        p.add_argument("--batch-size", type=_positive_int, default=32, help="texts per batch (default: 32)")
        p.add_argument("--sparse", action="store_true",
                       help="the model is a SparseEncoder (SPLADE, inference-free): sparse embeddings")

    enc = sub.add_parser(
        "encode", help="embed texts (one per line) into a .npy file",
        description="Embed texts, one per line, into a .npy file. The input is streamed chunk by chunk, so "
                    "memory does not grow with its size; the output appears only once complete.",
    )
    enc.add_argument("input", nargs="?", default="-", metavar="INPUT",
                     help="text file, one text per line (default or '-': stdin)")
    enc.add_argument("-o", "--output", required=True, metavar="OUT.npy",
                     help="where to write the embeddings (with --sparse: a scipy CSR OUT.npz)")
    add_model(enc)
    enc.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    enc.add_argument("--precision", choices=PRECISIONS, default="float32",
                     help="output precision (default: float32); int8/uint8 ranges come from the input itself")
    enc.add_argument("--prompt-name", default=None, help="name of one of the model's prompts, e.g. 'query'")
    enc.set_defaults(func=cmd_encode)

    corp = sub.add_parser(
        "encode-corpus", help="embed a corpus (JSONL/CSV/Parquet files) into Parquet shards, resumably",
        description="Embed every text of the inputs into OUTPUT: Parquet shards (id, chunk, embedding) and a "
                    "manifest.json. Streamed shard by shard (memory does not grow with the corpus); each shard is "
                    "written atomically, so the same command after a crash or kill goes on where it stopped. A run "
                    "with other settings than the manifest's is refused. Several processes or hosts: the same "
                    "command on each with --coordinator-address, --num-processes and its --process-id "
                    "(jax.distributed); each embeds its own shards.",
    )
    corp.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="JSONL, CSV, TSV or Parquet files, globs, or saved datasets folders")
    corp.add_argument("-o", "--output", required=True, metavar="DIR", help="the output folder")
    corp.add_argument("--model", "-m", default=DEFAULT_MODEL,
                      help=f"Hub name or local folder of a sentence-transformers model (default: {DEFAULT_MODEL})")
    corp.add_argument("--family", type=_family_arg, default="auto", metavar="FAMILY",
                      help="load MODEL as SentenceTransformer (dense rows), SparseEncoder (CSR rows) or "
                           "MultiVectorEncoder (token matrices) (default: detected from its files)")
    corp.add_argument("--text-column", default="text", help="the column holding the texts (default: text)")
    corp.add_argument("--id-column", default=None,
                      help="the column holding the ids (default: none; ids are the row numbers 0, 1, ...)")
    corp.add_argument("--shard-size", type=_positive_int, default=10_000,
                      help="texts per shard: the unit of resuming and of memory (default: 10000)")
    corp.add_argument("--batch-size", type=_positive_int, default=32, help="texts per batch (default: 32)")
    corp.add_argument("--precision", choices=PRECISIONS, default="float32",
                      help="output precision (default: float32); int8/uint8 ranges come from the corpus' first "
                           "1000 texts")
    corp.add_argument("--normalize", action="store_true", help="L2-normalize the embeddings")
    corp.add_argument("--truncate-dim", type=_positive_int, default=None, help="Matryoshka truncation")
    corp.add_argument("--prompt-name", default=None, help="name of one of the model's prompts, e.g. 'document'")
    corp.add_argument("--dtype", choices=SERVE_DTYPES, default="float32",
                      help="weights: float32 (default), bfloat16, float16, or int8 (see the README's int8 section)")
    corp.add_argument("--chunk-tokens", type=_positive_int, default=None, metavar="N",
                      help="cut texts longer than N tokens into windows of N tokens, each embedded on its own as "
                           "a row with its chunk index and character span (N at most the model's window)")
    corp.add_argument("--overlap", type=_non_negative_int, default=0, metavar="M",
                      help="with --chunk-tokens: tokens each window shares with the previous one (default: 0)")
    corp.add_argument("--late-chunking", action="store_true",
                      help="with --chunk-tokens: one forward over each text (up to the model's window), each chunk's "
                           "vector the mean of its tokens' states, so every chunk sees its context")
    corp.add_argument("--chunk-pooling", choices=("mean",), default=None,
                      help="with --chunk-tokens: one row per text, the mean of its chunks' vectors")
    corp.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                      help="jax.distributed: process 0's address, the same on every process")
    corp.add_argument("--num-processes", type=_positive_int, default=None, help="jax.distributed: process count")
    corp.add_argument("--process-id", type=_non_negative_int, default=None, help="jax.distributed: this process")
    corp.add_argument("--quiet", action="store_true", help="no progress bar")
    corp.set_defaults(func=cmd_encode_corpus)

    srch = sub.add_parser(
        "search", help="find the corpus lines most similar to each query",
        description="Embed a corpus (its non-empty lines) and each query; print the best matches. With "
                    "--rerank, a cross-encoder re-scores the best bi-encoder hits (retrieve and rerank).",
    )
    srch.add_argument("queries", nargs="+", metavar="QUERY", help="query text(s)")
    srch.add_argument("--corpus", "-c", default=None, metavar="FILE",
                      help="corpus file, one document per line ('-': stdin)")
    srch.add_argument("--index", default=None, metavar="PATH",
                      help="instead of --corpus: an encode-corpus output folder (indexed shard by shard) or a "
                           "saved EmbeddingIndex file; prints each hit's id")
    add_model(srch)
    srch.add_argument("--top-k", "-k", type=_positive_int, default=5, help="matches per query (default: 5)")
    srch.add_argument("--json", action="store_true",
                      help="print JSON: per query a list of {corpus_id, score, text, line} "
                           "(with --rerank also retrieval_score)")
    srch.add_argument("--rerank", metavar="MODEL", default=None,
                      help="re-score the best bi-encoder hits with this cross-encoder (Hub name or folder, "
                           "e.g. cross-encoder/ms-marco-MiniLM-L6-v2) and print its top-k")
    srch.add_argument("--candidates", type=_positive_int, default=None, metavar="N",
                      help=f"with --rerank: bi-encoder hits per query to re-score (default: {DEFAULT_CANDIDATES})")
    srch.set_defaults(func=cmd_search)

    conv = sub.add_parser(
        "convert", help="a model to a native orbax checkpoint, or a checkpoint back to sentence-transformers",
        description="Convert between sentence-transformers folders and jaxst's native checkpoints: a model (Hub "
                    "name or folder, any of the four families, detected) becomes OUT/params, an orbax checkpoint "
                    "of its params, beside its config and tokenizer files; such a checkpoint becomes a standard "
                    "sentence-transformers folder again. OUT is written beside itself and renamed into place.",
    )
    conv.add_argument("src", metavar="SRC", help="a Hub model name, a model folder, or a jaxst orbax checkpoint")
    conv.add_argument("out", metavar="OUT", help="the folder to write (a new path or an empty folder)")
    conv.add_argument("--to", choices=CONVERT_TARGETS, default="auto",
                      help="what to write (default: an orbax checkpoint goes back to sentence-transformers, "
                           "anything else to orbax)")
    conv.add_argument("--family", type=_family_arg, default="auto", metavar="FAMILY",
                      help=f"load SRC as this class: {', '.join(FAMILIES)} (default: detected from its files)")
    conv.add_argument("--revision", default=None, help="Hub revision of SRC")
    conv.add_argument("--cache-folder", default=None, help="Hugging Face cache folder")
    conv.add_argument("--overwrite", action="store_true",
                      help="write into OUT even if it is a non-empty folder (a model there is replaced, "
                           "other files are kept)")
    conv.set_defaults(func=cmd_convert)

    srv = sub.add_parser(
        "serve", help="serve embedding and reranking models over HTTP, with dynamic batching",
        description="Serve models over HTTP (OpenAI /v1/embeddings, text-embeddings-inference /embed and /rerank, "
                    "Cohere-style /v1/rerank, /health, /info, /metrics). Concurrent requests are batched per model "
                    "within a token budget and a size cap. SIGTERM stops accepting and drains in-flight requests.",
    )
    srv.add_argument("models", nargs="+", metavar="MODEL",
                     help="Hub names or folders (SentenceTransformer or CrossEncoder, detected)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    srv.add_argument("--served-model-name", action="append", default=None, metavar="NAME",
                     help="the name a request's `model` uses, once per MODEL in order (default: the Hub name as "
                          "written, a folder's last path component)")
    srv.add_argument("--api-key", default=None,
                     help="require `Authorization: Bearer KEY` (default: $JAXST_API_KEY; none: open)")
    srv.add_argument("--family", type=_family_arg, default="auto", metavar="FAMILY",
                     help="load every MODEL as this class (default: detected from its files)")
    srv.add_argument("--max-batch-tokens", type=_positive_int, default=16384,
                     help="tokens one batch may hold (default: 16384)")
    srv.add_argument("--max-batch-size", type=_positive_int, default=256,
                     help="texts one model call takes from the queue, split by length into forward passes "
                          "(default: 256)")
    srv.add_argument("--batch-size", type=_positive_int, default=8,
                     help="rows of one forward pass: small batches of texts sorted by length pad little "
                          "(default: 8)")
    srv.add_argument("--max-concurrent-requests", type=_positive_int, default=512,
                     help="requests a model's queue holds before answering 429 (default: 512)")
    srv.add_argument("--max-client-batch-size", type=_positive_int, default=64,
                     help="texts one request may send (default: 64)")
    srv.add_argument("--max-body-bytes", type=_positive_int, default=2 * 1024 * 1024,
                     help="request body limit in bytes (default: 2 MiB)")
    srv.add_argument("--dtype", choices=SERVE_DTYPES, default="float32",
                     help="weights: float32 (default), bfloat16, float16, or int8 (dense layers in int8 on the "
                          "CPU; see the README's int8 section)")
    srv.add_argument("--warmup-tokens", type=_non_negative_int, default=DEFAULT_WARMUP_TOKENS, metavar="N",
                     help="before accepting requests, compile the batch shapes of inputs up to N tokens (every "
                          "padded length, batches of 1, 2, 4 ... --batch-size), so they are not compiled under "
                          "load; the persistent compilation cache keeps them for the next start; 0: no warm-up "
                          f"(default: {DEFAULT_WARMUP_TOKENS})")
    srv.add_argument("--graceful-timeout", type=_positive_int, default=30,
                     help="seconds SIGTERM waits for in-flight requests (default: 30)")
    srv.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    srv.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version
            return e.code if isinstance(e.code, int) else 0
        return args.func(args)
    except CliError as e:
        print(f"jaxst: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxst: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `jaxst search ... | head -1`
        try:
            sys.stdout = open(os.devnull, "w")  # keep the flush at interpreter exit from failing again
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
