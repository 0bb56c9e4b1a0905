"""Embed a whole corpus into a folder of Parquet shards: streamed, resumable, spread over processes and hosts.

    inputs (JSONL / CSV / Parquet files, globs, or a saved ``datasets`` folder)
      ──read record by record──▶ rows (id, text), numbered 0, 1, 2 ... in input order
      ──cut into shards of ``shard_size`` rows: shard k holds rows [k*S, (k+1)*S)──▶
      ──process p of P takes the shards with k % P == p; a shard already on disk is checked and skipped──▶
      ──tokenize once (counts the tokens) ▸ the engine ▸ postprocess/quantize──▶
      ──OUT/shard-00000k.parquet (id, chunk, embedding), written atomically──▶
      ──when every shard is there: OUT/manifest.json lists them (whichever process finishes last writes it)

Why each rule:

* **Nothing lost, nothing twice.** A shard is one file, written to a temp file and renamed into place
  (``jaxst.io.atomic``), so it exists whole or not at all; its Parquet metadata records which input rows it
  holds and a SHA-256 of their ids and texts. Killed at any moment (``kill -9`` included) and started again
  with the same command, the job reads past the shards on disk, checking each one's rows against the input,
  and goes on with the first one missing: the output equals an uninterrupted run's, row for row.
* **No mixed embeddings.** ``manifest.json`` is written before the first shard with everything that decides
  the numbers (the model's files, dtype, precision, truncation, prompt, normalization, columns, shard size) and
  the inputs' names and sizes. A run whose settings differ from it is refused with the differences named,
  and a shard whose input rows changed is refused too: start a new output folder instead.
* **Bounded memory.** Input is read a record at a time and only one shard's texts and embeddings are held, so
  resident memory depends on ``shard_size``, not on the corpus.
* **Several processes and hosts.** Under ``jax.distributed`` (the same command on every host, with the
  coordinator's address, the process count and each one's id), each process embeds its own shards into the
  one output folder (a shared file system across hosts); a job started again after a process died (the
  whole job, as jax.distributed needs) redoes only the missing shards. The manifest lists shards only once
  all exist, so it is the same whichever process writes it last. On one host with several devices,
  ``encode`` already splits every batch over all of them.
* **int8 / uint8 precision** needs value ranges: they come from the embeddings of the corpus' first
  ``CALIBRATION_ROWS`` texts, computed once and kept in the manifest, so every shard (and every process, and
  a resumed run) quantizes with the same ranges. binary / ubinary need none.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxst.checks import positive_int
from jaxst.io.atomic import AtomicFile
from jaxst.quantization import check_precision, quantization_ranges, quantize_embeddings

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 10_000
CALIBRATION_ROWS = 1_000  # int8/uint8 ranges: the embeddings of the corpus' first rows
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet"}


class CorpusError(ValueError):
    """Input, output folder or settings that the corpus job refuses, with what to do about it."""


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:  # pragma: no cover - the corpus extra installs it
        raise ImportError("the corpus job writes Parquet through pyarrow: pip install 'jaxst[corpus]'") from None
    return pyarrow


# ------------------------------------------------------------------------------------------ input


def expand_inputs(inputs: str | os.PathLike | Iterable) -> list[Path]:
    """The input files (or saved ``datasets`` folders) named by ``inputs``: paths and globs, each glob sorted,
    in the order given. A name that matches nothing, or a file of an unknown kind, is an error."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths: list[Path] = []
    for item in inputs:
        item = os.fspath(item)
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise CorpusError(f"no input file matches {item!r}")
        for m in matches:
            path = Path(m)
            if path.is_dir():
                if not (path / "dataset_info.json").exists() and not (path / "state.json").exists():
                    raise CorpusError(f"{m} is a folder but not a saved datasets.Dataset (no dataset_info.json)")
            elif path.suffix.lower() not in FORMATS:
                raise CorpusError(f"{m}: unknown input kind {path.suffix!r}; expected one of "
                                  f"{', '.join(sorted(FORMATS))} or a saved datasets folder")
            paths.append(path)
    if not paths:
        raise CorpusError("no input files given")
    return paths


def _check_row(path: Path, row_number: int, text, ident, text_column: str, id_column: str | None):
    if not isinstance(text, str):
        raise CorpusError(f"{path}: row {row_number}: column {text_column!r} is {type(text).__name__}, not text: "
                          f"{text!r:.80}")
    if id_column is not None and (not isinstance(ident, (str, int)) or isinstance(ident, bool)):
        raise CorpusError(f"{path}: row {row_number}: id column {id_column!r} is {type(ident).__name__}; ids must "
                          "be integers or strings")
    return ident, text


def _missing_column(path: Path, column: str, present) -> CorpusError:
    return CorpusError(f"{path} has no column {column!r}; its columns: {', '.join(map(str, present))}")


def _read_jsonl(path: Path, text_column: str, id_column: str | None) -> Iterator[tuple]:
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CorpusError(f"{path}: line {line_number} is not a JSON object: {e}") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}: line {line_number} is {type(record).__name__}, not a JSON object")
            for column in (text_column, id_column):
                if column is not None and column not in record:
                    raise CorpusError(f"{path}: line {line_number} has no {column!r}; its keys: "
                                      f"{', '.join(record)}")
            yield record.get(id_column), record[text_column], line_number


def _read_csv(path: Path, text_column: str, id_column: str | None, delimiter: str) -> Iterator[tuple]:
    csv.field_size_limit(1 << 30)  # documents longer than csv's 128 KiB default are still one field
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            for column in (text_column, id_column):
                if column is not None and column not in (reader.fieldnames or []):
                    raise _missing_column(path, column, reader.fieldnames or [])
            for record in reader:
                ident = record.get(id_column) if id_column is not None else None
                yield ident, record[text_column], reader.line_num
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8: {e}") from None


def _read_parquet(path: Path, text_column: str, id_column: str | None) -> Iterator[tuple]:
    _require_pyarrow()
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    names = source.schema_arrow.names
    columns = [c for c in (text_column, id_column) if c is not None]
    for column in columns:
        if column not in names:
            raise _missing_column(path, column, names)
    row = 0
    for batch in source.iter_batches(batch_size=4096, columns=columns):
        texts = batch.column(text_column).to_pylist()
        ids = batch.column(id_column).to_pylist() if id_column is not None else itertools.repeat(None)
        for ident, text in zip(ids, texts):
            row += 1
            yield ident, text, row


def _read_dataset(path: Path, text_column: str, id_column: str | None) -> Iterator[tuple]:
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"{path} is a saved datasets folder; reading it needs `pip install datasets`") from None
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        raise CorpusError(f"{path} is a DatasetDict ({', '.join(data)}); point at one split's folder")
    for column in (text_column, id_column):
        if column is not None and column not in data.column_names:
            raise _missing_column(path, column, data.column_names)
    columns = [c for c in (text_column, id_column) if c is not None]
    row = 0
    for batch in data.select_columns(columns).iter(batch_size=4096):
        ids = batch[id_column] if id_column is not None else itertools.repeat(None)
        for ident, text in zip(ids, batch[text_column]):
            row += 1
            yield ident, text, row


def read_rows(paths: list[Path], text_column: str = "text", id_column: str | None = None) -> Iterator[tuple]:
    """``(id, text)`` per record of every input in order, read a record at a time; without ``id_column`` the id
    is the row number over all inputs (0, 1, ...). A record whose text is not a string, or whose id is neither
    an integer nor a string, is an error naming its file and row."""
    number, id_type = 0, None
    for path in paths:
        if path.is_dir():
            records = _read_dataset(path, text_column, id_column)
        else:
            kind = FORMATS[path.suffix.lower()]
            if kind == "jsonl":
                records = _read_jsonl(path, text_column, id_column)
            elif kind == "parquet":
                records = _read_parquet(path, text_column, id_column)
            else:
                records = _read_csv(path, text_column, id_column, "\t" if kind == "tsv" else ",")
        for ident, text, where in records:
            ident, text = _check_row(path, where, text, ident, text_column, id_column)
            if id_column is not None:
                id_type = id_type or type(ident)
                if type(ident) is not id_type:
                    raise CorpusError(f"{path}: row {where}: id {ident!r} is {type(ident).__name__} but the first "
                                      f"id was {id_type.__name__}; one corpus' ids are all integers or all strings")
            yield (number if id_column is None else ident), text
            number += 1


def _input_facts(paths: list[Path]) -> list[dict]:
    facts = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        facts.append({"path": str(path.resolve()), "bytes": sum(p.stat().st_size for p in files)})
    return facts


# ------------------------------------------------------------------------------------------ settings


def model_fingerprint(folder: str | os.PathLike | None) -> str:
    """SHA-256 over a model folder's files: the names and sizes of all, and the contents of every file under
    1 MiB (configs, tokenizer files, pooling and dense configs) plus the first and last MiB of the larger ones
    (weights). Two folders with the same fingerprint hold the same model for the corpus job's purpose."""
    if folder is None:
        return "unknown"
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 1 << 20:
                digest.update(f.read())
            else:
                digest.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                digest.update(f.read())
    return digest.hexdigest()


@dataclass
class Settings:
    """What decides a corpus job's numbers: a resumed run (or another process) must have the same."""

    model: str
    model_fingerprint: str
    family: str
    dtype: str
    precision: str
    normalize_embeddings: bool
    truncate_dim: int | None
    prompt: str | None
    text_column: str
    id_column: str | None
    shard_size: int
    dimension: int
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    chunk_pooling: str | None = None
    late_chunking: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _compare(stored: dict, settings: dict, inputs: list[dict], output: Path) -> None:
    changed = [f"{key}: {stored['settings'].get(key)!r} in the manifest, {value!r} now"
               for key, value in settings.items() if stored["settings"].get(key) != value]
    if stored.get("inputs") != inputs:
        changed.append(f"inputs: {stored.get('inputs')} in the manifest, {inputs} now")
    if changed:
        raise CorpusError(f"{output} holds a corpus job with other settings; its embeddings would be mixed with "
                          "these. Use a new output folder (or remove this one). Differences: " + "; ".join(changed))


# ------------------------------------------------------------------------------------------ shards


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.parquet"


def _rows_digest(ids: list, texts: list[str]) -> str:
    digest = hashlib.sha256()
    for ident, text in zip(ids, texts):
        digest.update(f"{type(ident).__name__}:{ident}\0".encode())
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0\0")
    return digest.hexdigest()


def _shard_meta(path: Path) -> dict:
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if b"jaxst" not in metadata:
        raise CorpusError(f"{path} is not a shard of a jaxst corpus job (no jaxst metadata)")
    return json.loads(metadata[b"jaxst"])


def _write_shard(path: Path, ids: list, chunks: np.ndarray, spans: np.ndarray, columns: dict, meta: dict) -> None:
    """One shard, atomically: ``id``, ``chunk``, ``char_start``, ``char_end`` and the family's ``columns``
    (``_Dense.columns`` ...), with ``meta`` as the Parquet schema's ``jaxst`` metadata."""
    pa = _require_pyarrow()
    import pyarrow.parquet as pq

    id_array = pa.array(ids, type=pa.string() if ids and isinstance(ids[0], str) else pa.int64())
    table = pa.table({"id": id_array, "chunk": pa.array(np.asarray(chunks, np.int32)),
                      "char_start": pa.array(np.asarray(spans[:, 0], np.int64)),
                      "char_end": pa.array(np.asarray(spans[:, 1], np.int64)), **columns})
    table = table.replace_schema_metadata({b"jaxst": json.dumps(meta).encode()})
    with AtomicFile(path) as f:
        pq.write_table(table, f.file)
        f.commit()


def read_chunks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One shard's ``id``, ``chunk``, ``char_start`` and ``char_end`` columns (numpy), without the embeddings."""
    _require_pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "chunk", "char_start", "char_end"])
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _list_parts(column) -> tuple[np.ndarray, object]:
    """A list column's (offsets (n+1,), flat values array) with the offsets starting at 0."""
    column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    return offsets - offsets[0], column.flatten()


def read_shard(path: str | os.PathLike):
    """``(ids, embeddings)`` of one shard; ids as a numpy array (int64 or object strings). Embeddings: dense,
    an (n, D) array; sparse, a CSR ``{"indptr", "indices", "values", "shape"}``; multi-vector, a list of
    (tokens_i, D) arrays."""
    _require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    if "indices" in table.column_names:  # sparse: CSR
        indptr, indices = _list_parts(table.column("indices"))
        _, values = _list_parts(table.column("values"))
        meta = json.loads(table.schema.metadata[b"jaxst"])
        return ids, {"indptr": indptr.astype(np.int64), "indices": indices.to_numpy().astype(np.int32),
                     "values": values.to_numpy().astype(np.float32), "shape": (len(ids), meta["dimension"])}
    column = table.column("embedding")
    if pa.types.is_fixed_size_list(column.type):
        flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return ids, flat.reshape(-1, column.type.list_size)
    offsets, tokens = _list_parts(column)  # multi-vector: a list of token vectors per row
    width = tokens.type.list_size
    matrix = tokens.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    return ids, [matrix[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _concat(parts: list):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    if isinstance(parts[0], list):
        return [m for part in parts for m in part]
    shift = np.cumsum([0] + [p["indptr"][-1] for p in parts[:-1]])
    return {"indptr": np.concatenate([parts[0]["indptr"][:1]] + [p["indptr"][1:] + s for p, s in zip(parts, shift)]),
            "indices": np.concatenate([p["indices"] for p in parts]),
            "values": np.concatenate([p["values"] for p in parts]),
            "shape": (sum(p["shape"][0] for p in parts), parts[0]["shape"][1])}


def read_corpus(output: str | os.PathLike):
    """``(ids, embeddings)`` of a finished corpus job, every shard in order (``read_shard``'s forms; for tests
    and small corpora: a large one is read shard by shard with ``read_shard``)."""
    manifest = read_manifest(output)
    if not manifest.get("complete"):
        raise CorpusError(f"{output}: the corpus job has not finished (the manifest lists no complete run)")
    parts = [read_shard(Path(output) / s["file"]) for s in manifest["shards"]]
    if not parts:
        return np.zeros(0, np.int64), np.zeros((0, manifest["settings"]["dimension"]), np.float32)
    return np.concatenate([p[0] for p in parts]), _concat([p[1] for p in parts])


def build_index(output: str | os.PathLike, precision: str = "float32", similarity: str = "cosine", ranges=None,
                **options):
    """An ``EmbeddingIndex`` (any of its precisions; ``options`` are its other arguments) over a finished corpus
    job's float32 shards, added shard by shard, so the float corpus is never held whole (an int8 index keeps a
    quarter of it, a binary one a 32nd). Row ids are the corpus ids, or ``"{id}#{chunk}"`` where the job wrote
    a row per chunk."""
    from jaxst.index import EmbeddingIndex

    manifest = read_manifest(output)
    if not manifest.get("complete"):
        raise CorpusError(f"{output}: the corpus job has not finished; run it to the end first")
    settings = manifest["settings"]
    if settings["family"] != "SentenceTransformer":
        raise CorpusError(f"{output} holds {settings['family']} embeddings; build_index indexes dense ones")
    if settings["precision"] != "float32":
        raise CorpusError(f"{output} holds {settings['precision']} embeddings; an index is built from float32 "
                          "shards (it quantizes them itself: pass precision= here)")
    index = EmbeddingIndex(settings["dimension"], precision=precision, similarity=similarity, ranges=ranges,
                           **options)
    per_chunk = settings.get("chunk_tokens") is not None and settings.get("chunk_pooling") is None
    for shard in manifest["shards"]:
        ids, embeddings = read_shard(Path(output) / shard["file"])
        if per_chunk:
            chunks = read_chunks(Path(output) / shard["file"])["chunk"]
            ids = [f"{i}#{c}" for i, c in zip(ids.tolist(), chunks.tolist())]
        index.add(embeddings, ids=ids if per_chunk else ids.tolist())
        del embeddings
    return index


def check_model(output: str | os.PathLike, model) -> None:
    """Refuse to search a corpus job's output with another model than the one that embedded it."""
    manifest = read_manifest(output)
    settings = manifest["settings"]
    if model_fingerprint(getattr(model, "model_folder", None)) != settings["model_fingerprint"]:
        raise CorpusError(f"{output} was embedded with the model {settings['model']!r}; its queries must be "
                          f"embedded with the same model, not {str(getattr(model, 'model_folder', model))!r}")


def read_manifest(output: str | os.PathLike) -> dict:
    path = Path(output) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CorpusError(f"{output} has no {MANIFEST}: not a corpus job's output") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{path} is not valid JSON: {e}") from None


def _write_json(path: Path, data: dict) -> None:
    with AtomicFile(path) as f:
        f.file.write((json.dumps(data, indent=2) + "\n").encode())
        f.commit()


# ------------------------------------------------------------------------------------------ chunks


def token_windows(offsets: list[tuple[int, int]], length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of the token windows of a text of ``length`` characters whose tokens
    (no special tokens) have the character ``offsets``: windows of ``size`` tokens, each starting ``size -
    overlap`` tokens after the previous one, the last ending with the text. A text of at most ``size`` tokens
    is one span, the whole text."""
    n = len(offsets)
    if n <= size:
        return [(0, length)]
    spans, start = [], 0
    while True:
        end = min(start + size, n)
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end == n:
            return spans
        start += size - overlap


def _content_window(model, prompt: str | None) -> int:
    """Tokens of text one forward reads: ``max_seq_length`` less the special tokens and the prompt's."""
    return model.max_seq_length - len(model.tokenizer.encode_ids([prompt or ""])[0].ids)


def _check_chunking(model, chunk_tokens, chunk_overlap, chunk_pooling, late_chunking, prompt: str | None) -> None:
    if chunk_tokens is None:
        if chunk_overlap or chunk_pooling is not None or late_chunking:
            raise CorpusError("chunk_overlap, chunk_pooling and late_chunking apply only with chunk_tokens")
        return
    positive_int("chunk_tokens", chunk_tokens)
    if isinstance(chunk_overlap, bool) or not isinstance(chunk_overlap, int) or not 0 <= chunk_overlap < chunk_tokens:
        raise CorpusError(f"chunk_overlap must be an integer in [0, chunk_tokens={chunk_tokens}), "
                          f"got {chunk_overlap!r}")
    if chunk_pooling not in (None, "mean"):
        raise CorpusError(f"chunk_pooling must be None (a row per chunk) or 'mean' (a row per text), got "
                          f"{chunk_pooling!r}")
    if late_chunking:
        width = np.asarray(model.encode("x", output_value="token_embeddings")).shape[-1]
        if width != model._embedding_dim:
            raise CorpusError(f"late chunking pools the Transformer's token states ({width} wide), but this model's "
                              f"sentence embeddings ({model._embedding_dim} wide) pass through modules after "
                              "pooling; use chunk_tokens without late_chunking")
    window = _content_window(model, prompt)
    if chunk_tokens > window:
        raise CorpusError(f"chunk_tokens {chunk_tokens} is more than the model's window: max_seq_length "
                          f"{model.max_seq_length} less {model.max_seq_length - window} special"
                          f"{' and prompt' if prompt else ''} tokens = {window}")


def late_chunks(model, texts: list[str], size: int, overlap: int, prompt: str | None, batch_size: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Late chunking: ``(owner text, (start, end) span, vector, ...)`` per chunk and the token count. Each text
    (or, past the model's window, each window-sized piece of it, cut at token boundaries) is read by the model in
    one forward; its content tokens (not special, not the prompt's) are grouped into windows of ``size`` tokens
    overlapping by ``overlap``, and a chunk's vector is the mean of its tokens' states (the token embeddings the
    Transformer outputs)."""
    lead = len(prompt or "")
    window = _content_window(model, prompt)
    pieces, piece_owner, piece_start = [], [], []
    for i, (text, e) in enumerate(zip(texts, model.tokenizer.encode_spans(texts))):
        for a, b in token_windows(e.offsets, len(text), window, 0):
            pieces.append(text[a:b])
            piece_owner.append(i)
            piece_start.append(a)
    inputs = [prompt + p for p in pieces] if prompt else pieces
    encodings = model.tokenizer.encode_spans(inputs, add_special_tokens=True, max_length=model.max_seq_length)
    states = model.encode(inputs, output_value="token_embeddings", batch_size=batch_size)
    owners, spans, vectors, tokens = [], [], [], 0
    for owner, start, e, state in zip(piece_owner, piece_start, encodings, states):
        state = np.asarray(state, np.float32)
        if len(state) != len(e.ids):
            raise RuntimeError(f"the model read {len(state)} tokens where the tokenizer gave {len(e.ids)}")
        tokens += len(e.ids)
        content = [t for t, (special, (a, _)) in enumerate(zip(e.special_tokens_mask, e.offsets))
                   if not special and a >= lead]
        if not content:  # an empty text: its only vector is the mean of all its (special) tokens
            owners.append(owner)
            spans.append((start, start))
            vectors.append(state.mean(0))
            continue
        offsets = [(e.offsets[t][0] - lead, e.offsets[t][1] - lead) for t in content]
        first = 0
        while True:
            last = min(first + size, len(content))
            owners.append(owner)
            spans.append((start + offsets[first][0], start + offsets[last - 1][1]))
            vectors.append(state[content[first:last]].mean(0))
            if last == len(content):
                break
            first += size - overlap
    dim = model._embedding_dim if not vectors else len(vectors[0])
    return (np.asarray(owners, np.int64), np.asarray(spans, np.int64).reshape(-1, 2),
            np.asarray(vectors, np.float32).reshape(-1, dim), tokens)


# ------------------------------------------------------------------------------------------ the job


class _Output:
    """How one family's model embeds a shard's texts and how its rows become Parquet columns; a family's
    options (``encode``'s ``prompt``, batch size, ``truncate_dim``, normalization) are fixed at the start."""

    def __init__(self, model, prompt, batch_size, truncate_dim, normalize):
        self.model, self.prompt, self.batch_size = model, prompt, batch_size
        self.truncate_dim, self.normalize = truncate_dim, normalize

    def dimension(self) -> int:
        full = self.model._embedding_dim
        return full if self.truncate_dim is None else min(self.truncate_dim, full)

    def check(self, precision) -> None:
        """Refuse options that this family's output does not take."""

    def finish(self, rows):
        """Rows as written (after any pooling of raw chunk vectors)."""
        return rows

    def token_count(self, texts: list[str]) -> int:
        prompt = self.prompt
        return sum(len(e.ids) for e in self.model.tokenizer.encode_ids([prompt + t for t in texts] if prompt
                                                                         else texts))


class _Dense(_Output):
    """A SentenceTransformer's rows: an (n, D) float32 matrix, in an ``embedding`` column of fixed-size lists
    (float32, or the quantized precision's int8/uint8)."""

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Raw (untruncated, unnormalized) embeddings of ``texts`` and their token count: tokenized once, the
        encodings run by the engine (``encode_tokenized``)."""
        prompt = self.prompt
        encodings = self.model.tokenizer.encode_ids([prompt + t for t in texts] if prompt else texts)
        tokens = sum(len(e.ids) for e in encodings)
        return self.model.encode_tokenized(encodings, prompt=prompt, batch_size=self.batch_size), tokens

    def finish(self, rows):
        return self.model._postprocess(rows, self.truncate_dim, self.normalize)

    @staticmethod
    def columns(rows: np.ndarray) -> dict:
        import pyarrow as pa

        flat = pa.array(np.ascontiguousarray(rows).reshape(-1))
        return {"embedding": pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])}


class _Sparse(_Output):
    """A SparseEncoder's rows (its "document" route): per text the active (index, value) pairs, in ``indices``
    and ``values`` list columns (a CSR matrix per shard: the lists' offsets are its row pointers)."""

    def dimension(self):
        return self.model.get_embedding_dimension()

    def check(self, precision) -> None:
        if precision != "float32" or self.normalize or self.truncate_dim is not None:
            raise CorpusError("a SparseEncoder's corpus is written as float32 (index, value) pairs: precision, "
                              "normalize_embeddings and truncate_dim do not apply")

    def embed(self, texts: list[str]) -> tuple[list, int]:
        from jaxst.sparse import stored_rows

        values, indices, dim = stored_rows(self.model.encode(texts, prompt=self.prompt, batch_size=self.batch_size,
                                                             task="document"))
        values, indices = np.asarray(values, np.float32), np.asarray(indices, np.int64)
        rows = []
        for v, i in zip(values, indices):
            keep = (i < dim) & (v != 0)
            order = np.argsort(i[keep], kind="stable")
            rows.append((i[keep][order].astype(np.int32), v[keep][order]))
        return rows, self.token_count(texts)

    @staticmethod
    def columns(rows: list) -> dict:
        import pyarrow as pa

        offsets = pa.array(np.concatenate([[0], np.cumsum([len(i) for i, _ in rows])]).astype(np.int32))
        flat_i = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, np.int32)
        flat_v = np.concatenate([v for _, v in rows]) if rows else np.zeros(0, np.float32)
        return {"indices": pa.ListArray.from_arrays(offsets, pa.array(flat_i, pa.int32())),
                "values": pa.ListArray.from_arrays(offsets, pa.array(flat_v, pa.float32()))}


class _MultiVector(_Output):
    """A MultiVectorEncoder's rows (documents): per text its (tokens, D) matrix, in an ``embedding`` column of
    lists of fixed-size vectors (the lists' offsets say where each text's tokens start)."""

    def check(self, precision) -> None:
        if precision != "float32":
            raise CorpusError("a MultiVectorEncoder's corpus is written as float32 token vectors; precision "
                              f"{precision!r} does not apply")

    def embed(self, texts: list[str]) -> tuple[list, int]:
        """Each text's token matrix, truncated and normalized by ``encode`` itself (as a document)."""
        rows = self.model.encode(texts, prompt=self.prompt, batch_size=self.batch_size, task="document",
                                 convert_to_numpy=True, truncate_dim=self.truncate_dim,
                                 normalize_embeddings=self.normalize)
        return rows, self.token_count(texts)

    @staticmethod
    def columns(rows: list) -> dict:
        import pyarrow as pa

        width = rows[0].shape[1] if rows else 0
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(m) for m in rows])]).astype(np.int32))
        flat = np.concatenate([np.asarray(m, np.float32) for m in rows]).reshape(-1) if rows else np.zeros(0)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)
        return {"embedding": pa.ListArray.from_arrays(offsets, vectors)}


FAMILY_OUTPUTS = {"SentenceTransformer": _Dense, "SparseEncoder": _Sparse, "MultiVectorEncoder": _MultiVector}


def _family(model) -> str:
    name = type(model).__name__
    if name not in FAMILY_OUTPUTS:
        raise CorpusError(f"the corpus job embeds with a {', '.join(FAMILY_OUTPUTS)}, not a {name}")
    return name


class _Progress:
    """A tqdm bar over texts (total when the input's size is known) with tokens/s, and the summary's counts."""

    def __init__(self, show: bool, total: int | None):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="text", desc="Embedding", disable=not show, smoothing=0.1)
        self.start = time.perf_counter()
        self.texts = self.chunks = self.tokens = self.shards_written = self.shards_skipped = 0

    def done(self, texts: int, chunks: int, tokens: int) -> None:
        self.texts += texts
        self.chunks += chunks
        self.tokens += tokens
        self.bar.update(texts)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(tokens_per_s=f"{self.tokens / elapsed:,.0f}", refresh=False)

    def skipped(self, texts: int) -> None:
        self.bar.update(texts)

    def close(self) -> None:
        self.bar.close()


def _total_rows(paths: list[Path]) -> int | None:
    """The input's row count for the progress bar's ETA, where it comes cheaply: Parquet and saved datasets from
    their metadata, JSONL by counting its non-blank lines (one read of the file); None with a CSV/TSV among the
    inputs (a quoted field may span lines)."""
    total = 0
    for path in paths:
        if path.is_dir():
            import datasets

            rows = datasets.load_from_disk(str(path)).num_rows
            if not isinstance(rows, int):  # a DatasetDict: reading it refuses it with the reason
                return None
            total += rows
            continue
        kind = FORMATS[path.suffix.lower()]
        if kind == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
        elif kind == "jsonl":
            with open(path, "rb") as f:
                total += sum(1 for line in f if line.strip())
        else:
            return None
    return total


def encode_corpus(model, inputs, output: str | os.PathLike, *, text_column: str = "text",
                  id_column: str | None = None, shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 32,
                  precision: str = "float32", normalize_embeddings: bool = False, truncate_dim: int | None = None,
                  prompt_name: str | None = None, prompt: str | None = None, show_progress_bar: bool | None = None,
                  chunk_tokens: int | None = None, chunk_overlap: int = 0, chunk_pooling: str | None = None,
                  late_chunking: bool = False, process_index: int | None = None, process_count: int | None = None,
                  model_name: str | None = None) -> dict:
    """Embed every text of ``inputs`` (JSONL, CSV/TSV or Parquet files, globs, or saved ``datasets`` folders;
    ``text_column``, optional ``id_column``) with ``model`` into ``output``: Parquet shards of ``shard_size``
    rows (columns ``id``, ``chunk``, ``embedding``) and ``manifest.json``; see the module's docstring for
    resuming, refusals and several processes. Returns this process' summary (texts and tokens embedded, shards
    written and skipped, seconds, and whether the whole job is complete).

    ``chunk_tokens``: texts longer than that many tokens are cut into windows of ``chunk_tokens`` tokens
    overlapping by ``chunk_overlap`` (``token_windows``), each embedded on its own as the text of its character
    span; a row per chunk (``chunk`` 0, 1, ... and its ``char_start`` / ``char_end``), or with
    ``chunk_pooling="mean"`` a row per text, the mean of its chunks' vectors (before truncation and
    normalization). ``late_chunking``: instead, each text (or each window of the model's whole context, for
    a text longer than that) goes through the model once, and a chunk's vector is the mean of the token
    states of its span (``late_chunks``): every chunk sees the context around it.

    ``process_index`` / ``process_count``: this process' share (default: ``jax.process_index()`` and
    ``jax.process_count()``, i.e. all of it unless ``jax.distributed`` was initialized)."""
    _require_pyarrow()
    family = _family(model)
    positive_int("shard_size", shard_size)
    positive_int("batch_size", batch_size)
    positive_int("truncate_dim", truncate_dim, optional=True)
    check_precision(precision)
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise CorpusError(f"process_index {process_index} is not in [0, {process_count})")
    paths = expand_inputs(inputs)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CorpusError(f"output {output} exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)

    if truncate_dim is None:
        truncate_dim = getattr(model, "truncate_dim", None)
    prompt = model._resolve_prompt(prompt, prompt_name)
    kind = FAMILY_OUTPUTS[family](model, prompt, batch_size, truncate_dim, bool(normalize_embeddings))
    kind.check(precision)
    if family != "SentenceTransformer" and (chunk_pooling is not None or late_chunking):
        raise CorpusError(f"chunk_pooling and late_chunking pool dense vectors; a {family} writes a row per chunk")
    _check_chunking(model, chunk_tokens, chunk_overlap, chunk_pooling, late_chunking, prompt)
    dimension = kind.dimension()
    settings = Settings(
        model=model_name or str(getattr(model, "model_folder", "")),
        model_fingerprint=model_fingerprint(getattr(model, "model_folder", None)),
        family=family, dtype=str(model.dtype), precision=precision, normalize_embeddings=bool(normalize_embeddings),
        truncate_dim=truncate_dim, prompt=prompt, text_column=text_column, id_column=id_column,
        shard_size=shard_size, dimension=dimension, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap,
        chunk_pooling=chunk_pooling, late_chunking=bool(late_chunking),
    ).as_dict()
    facts = _input_facts(paths)

    def embed_rows(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(owner row, chunk index, (start, end) spans, embeddings)`` and the token count: a row per text, or
        per chunk of a text with ``chunk_tokens``."""
        if late_chunking:
            owners, spans, emb, tokens = late_chunks(model, texts, chunk_tokens, chunk_overlap, prompt, batch_size)
        elif chunk_tokens is None:
            owners = np.arange(len(texts))
            spans = np.asarray([(0, len(t)) for t in texts], np.int64).reshape(-1, 2)
        else:
            windows = [token_windows(e.offsets, len(t), chunk_tokens, chunk_overlap)
                       for t, e in zip(texts, model.tokenizer.encode_spans(texts))]
            owners = np.repeat(np.arange(len(texts)), [len(w) for w in windows])
            spans = np.asarray([span for w in windows for span in w], np.int64).reshape(-1, 2)
        if not late_chunking:
            pieces = texts if chunk_tokens is None else [texts[o][a:b] for o, (a, b) in zip(owners, spans)]
            emb, tokens = kind.embed(pieces)
        counts = np.bincount(owners, minlength=len(texts))
        chunks = np.arange(len(owners)) - np.repeat(np.cumsum(counts) - counts, counts)
        if chunk_pooling == "mean":
            pooled = np.zeros((len(texts), emb.shape[1]), np.float64)
            np.add.at(pooled, owners, emb)
            emb = (pooled / counts[:, None]).astype(np.float32)
            owners, chunks = np.arange(len(texts)), np.zeros(len(texts), np.int64)
            spans = np.asarray([(0, len(t)) for t in texts], np.int64).reshape(-1, 2)
        return owners, chunks, spans, kind.finish(emb), tokens

    manifest_path = output / MANIFEST
    if manifest_path.exists():
        manifest = read_manifest(output)
        if manifest.get("format") != FORMAT_VERSION:
            raise CorpusError(f"{manifest_path} has format {manifest.get('format')!r}; this jaxst writes "
                              f"{FORMAT_VERSION}")
        _compare(manifest, settings, facts, output)
    else:
        if any(output.glob("shard-*.parquet")):
            raise CorpusError(f"{output} holds shards but no {MANIFEST}; use a new output folder")
        manifest = {"format": FORMAT_VERSION, "settings": settings, "inputs": facts, "complete": False}
        if precision in ("int8", "uint8"):
            first = [text for _, text in itertools.islice(read_rows(paths, text_column, id_column), CALIBRATION_ROWS)]
            ranges = quantization_ranges(embed_rows(first)[3]) if first else None
            manifest["ranges"] = None if ranges is None else np.asarray(ranges, np.float32).tolist()
        _write_json(manifest_path, manifest)
        manifest = read_manifest(output)  # another process may have written it first: its ranges hold
        _compare(manifest, settings, facts, output)
    ranges = manifest.get("ranges")
    ranges = None if ranges is None else np.asarray(ranges, np.float32)

    rows = read_rows(paths, text_column, id_column)
    show = show_progress_bar if show_progress_bar is not None else True
    progress = _Progress(show, _total_rows(paths))
    shards = 0
    try:
        for index in itertools.count():
            chunk = list(itertools.islice(rows, shard_size))
            if not chunk:
                break
            shards = index + 1
            if index % process_count != process_index:
                continue
            ids = [ident for ident, _ in chunk]
            texts = [text for _, text in chunk]
            path = output / shard_name(index)
            digest = _rows_digest(ids, texts)
            if path.exists():
                meta = _shard_meta(path)
                if meta.get("rows_sha256") != digest or meta.get("first_row") != index * shard_size:
                    raise CorpusError(f"{path} was written from other input rows than the input's rows "
                                      f"{index * shard_size}..{index * shard_size + len(chunk) - 1} now: the input "
                                      "changed; use a new output folder")
                progress.skipped(len(chunk))
                progress.shards_skipped += 1
                continue
            owners, chunks, spans, emb, tokens = embed_rows(texts)
            if precision != "float32":
                emb = quantize_embeddings(emb, precision, ranges=ranges)
            meta = {"shard": index, "first_row": index * shard_size, "rows": len(chunk), "chunks": len(owners),
                    "tokens": tokens, "dimension": dimension, "rows_sha256": digest}
            _write_shard(path, [ids[o] for o in owners], chunks, spans, kind.columns(emb), meta)
            progress.done(len(chunk), len(owners), tokens)
            progress.shards_written += 1
    finally:
        progress.close()

    complete = _finish(output, manifest, shards)
    return {"texts": progress.texts, "chunks": progress.chunks, "tokens": progress.tokens,
            "shards_written": progress.shards_written, "shards_skipped": progress.shards_skipped,
            "shards": shards, "seconds": time.perf_counter() - progress.start, "complete": complete}


def _finish(output: Path, manifest: dict, shards: int) -> bool:
    """Write the final manifest if every shard 0..shards-1 is on disk (any process may; the content is the same
    whichever does). Returns whether the job is complete."""
    listed = []
    for index in range(shards):
        path = output / shard_name(index)
        if not path.exists():
            return False
        meta = _shard_meta(path)
        listed.append({"file": path.name, "first_row": meta["first_row"], "rows": meta["rows"],
                       "chunks": meta["chunks"], "tokens": meta["tokens"]})
    final = {**manifest, "complete": True, "shards": listed, "rows": sum(s["rows"] for s in listed),
             "chunks": sum(s["chunks"] for s in listed), "tokens": sum(s["tokens"] for s in listed)}
    _write_json(output / MANIFEST, final)
    return True


__all__ = ["DEFAULT_SHARD_SIZE", "CorpusError", "build_index", "check_model", "encode_corpus", "expand_inputs",
           "late_chunks", "model_fingerprint", "read_chunks", "read_corpus", "read_manifest", "read_rows", "read_shard",
           "token_windows"]
