"""A persistent, growable embedding index: exact float search and quantized search with rescoring.

    index = EmbeddingIndex(384, precision="int8", ranges=ranges)
    index.add(corpus_embeddings, texts=corpus)
    index.search(query_embeddings, top_k=10)          # [{"corpus_id", "score", "text"}, ...] per query
    index.search("how do I bake bread?", model=model) # text queries are embedded with encode_query
    index.save("corpus.jxi"); EmbeddingIndex.load("corpus.jxi")

Storage is host numpy in rows of the storage dtype (float32, bfloat16, int8 levels, or packed bits),
grown by doubling so the compiled search sees few shapes; a device copy is refreshed after ``add``.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxst.checks import positive_int
from jaxst.io.atomic import AtomicFile
from jaxst.pooling import normalize
from jaxst.quantization import check_ranges, quantization_ranges, quantize_embeddings
from jaxst.search import check_finite, first_nonfinite_row, refuse_nonfinite_scores
from jaxst.sparse import row_width, stored_rows, to_bcoo
from jaxst.topk import (
    aligned_empty,
    chunked_top_k,
    hamming_corpus,
    hamming_top_k,
    hamming_words,
    merge_top_k,
    scan_chunk,
    scan_words,
    sharded_top_k,
    sparse_top_k,
    streamed_top_k,
)

FORMAT = "jaxst-embedding-index"
VERSION = 2  # 2: binary rows saved as packed bytes (1 saved uint32 words; still read)
PRECISIONS = ("float32", "bfloat16", "int8", "uint8", "binary", "ubinary")
SIMILARITIES = ("cosine", "dot")
MIN_CAPACITY = 1024
DEVICE_ROWS = 131072  # the device copy is padded to a multiple of this many rows


class _Labelled:
    """What both indexes keep beside their rows: optional ids and texts, one per row."""

    _n: int
    ids: list | None
    texts: list[str] | None

    def _check_labels(self, n: int, ids, texts) -> None:
        for name, values, current in (("ids", ids, self.ids), ("texts", texts, self.texts)):
            if values is not None and len(values) != n:
                raise ValueError(f"{name} has {len(values)} entries for {n} embeddings")
            if self._n and (values is None) != (current is None):
                raise ValueError(f"this index {'has' if current is not None else 'has no'} {name}; "
                                 f"add() must {'pass' if current is not None else 'not pass'} them too")
        if texts is not None and not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be strings")
        if ids is not None and not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids):
            raise TypeError("ids must be ints or strings")

    def _append_labels(self, ids, texts) -> None:
        if ids is not None:
            self.ids = (self.ids or []) + list(ids)
        if texts is not None:
            self.texts = (self.texts or []) + list(texts)

    def _first_nonfinite_row(self) -> int | None:
        raise NotImplementedError

    def _hits(self, scores, ids) -> list[list[dict]]:
        """Every slot a real hit: a non-finite score is refused, never dropped (``jaxst.search``'s rule;
        ``add`` keeps non-finite rows out, so only a float32 overflow, or a damaged file, gets here)."""
        scores, ids = np.asarray(scores), np.asarray(ids)
        refuse_nonfinite_scores(scores, ids, self._first_nonfinite_row, "index")
        out = []
        for row_s, row_i in zip(scores.tolist(), ids.tolist()):
            row = []
            for s, c in zip(row_s, row_i):
                hit = {"corpus_id": int(c), "score": float(s)}
                if self.ids is not None:
                    hit["id"] = self.ids[c]
                if self.texts is not None:
                    hit["text"] = self.texts[c]
                row.append(hit)
            out.append(row)
        return out


class EmbeddingIndex(_Labelled):
    """Corpus embeddings (and optionally their ids and texts) to search with top-k."""

    def __init__(self, dim: int, precision: str = "float32", similarity: str = "cosine", ranges=None,
                 chunk_size: int | None = None, max_device_rows: int | None = None, mesh=None):
        dim = positive_int("dim", dim)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported; expected one of {PRECISIONS}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity {similarity!r} is not supported; expected one of {SIMILARITIES}")
        chunk_size = positive_int("chunk_size", chunk_size, optional=True)
        max_device_rows = positive_int("max_device_rows", max_device_rows, optional=True)
        # Rows per scan step; None picks the measured best for the scorer (jaxst.search.SCAN_CHUNKS).
        self.dim, self.precision, self.similarity, self.chunk_size = dim, precision, similarity, chunk_size
        # More rows than this stay in host memory and are streamed to the device per search.
        self.max_device_rows = max_device_rows
        # A jax.sharding.Mesh: rows are split over its first axis, each device scans its own shard.
        if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        if mesh is not None and max_device_rows is not None:
            raise ValueError("an index is either sharded over a mesh or streamed from host memory, not both")
        self.mesh = mesh
        self.ranges = None if ranges is None else np.asarray(ranges, np.float32)
        if self.ranges is not None and self.ranges.shape != (2, dim):
            raise ValueError(f"ranges must have shape (2, {dim}), got {self.ranges.shape}")
        if self.ranges is not None:
            check_ranges(self.ranges)
        self._data = aligned_empty((0, self._width), self._dtype)
        self._n = 0
        self.ids: list | None = None
        self.texts: list[str] | None = None
        self._device = None

    # ---------------------------------------------------------------- storage

    @property
    def _binary(self) -> bool:
        return self.precision.endswith("binary")

    @property
    def _width(self) -> int:
        return -(-self.dim // 64) if self._binary else self.dim

    @property
    def _dtype(self):
        return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "int8": np.int8, "uint8": np.int8,
                "binary": np.uint64, "ubinary": np.uint64}[self.precision]

    def __len__(self) -> int:
        return self._n

    @property
    def embeddings(self) -> np.ndarray:
        """The stored rows: float32/bfloat16 vectors, int8/uint8 levels, or packed bits (uint8 bytes)."""
        rows = self._data[: self._n]
        if self.precision == "uint8":
            return (rows.astype(np.int16) + 128).astype(np.uint8)
        if self._binary:
            packed = rows.view(np.uint8)[:, : -(-self.dim // 8)]
            return (packed.astype(np.int16) - 128).astype(np.int8) if self.precision == "binary" else packed
        return rows

    def _encode_rows(self, embeddings: np.ndarray) -> np.ndarray:
        if self.similarity == "cosine":
            embeddings = np.asarray(normalize(jnp.asarray(embeddings)))
        if self.precision == "float32":
            return embeddings.astype(np.float32)
        if self.precision == "bfloat16":
            rows = embeddings.astype(ml_dtypes.bfloat16)
            check_finite(rows, "embeddings (rounded to bfloat16)")  # float32 beyond bfloat16's range is inf
            return rows
        if self._binary:
            return hamming_words(quantize_embeddings(embeddings, "ubinary"))
        if self.ranges is None:  # calibrate once, on the first batch (finite: add checked it), then keep them
            ranges = quantization_ranges(embeddings).astype(np.float32)
            check_ranges(ranges, "the ranges calibrated on the first add()")
            self.ranges = ranges
        return quantize_embeddings(embeddings, "int8", ranges=self.ranges)

    def add(self, embeddings, ids=None, texts=None) -> None:
        """Append float embeddings (n, dim), with optional ids and texts of the same length. A row holding
        NaN or inf is refused before anything is stored (``jaxst.search``'s rule)."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim == 1:
            embeddings = embeddings[None, :]
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of shape (n, {self.dim}), got {embeddings.shape}")
        n = embeddings.shape[0]
        self._check_labels(n, ids, texts)
        if n == 0:
            return
        check_finite(embeddings, "embeddings")
        rows = self._encode_rows(embeddings)
        if self._n + n > self._data.shape[0]:
            capacity = max(MIN_CAPACITY, self._data.shape[0])
            while capacity < self._n + n:
                capacity *= 2
            grown = aligned_empty((capacity, self._width), self._dtype)  # aligned: the CPU device aliases it
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : self._n + n] = rows
        self._n += n
        self._append_labels(ids, texts)
        self._device = None

    # ---------------------------------------------------------------- search

    def _first_nonfinite_row(self) -> int | None:
        return first_nonfinite_row(self._data[: self._n])

    def _streamed(self) -> bool:
        return self.max_device_rows is not None and self._n > self.max_device_rows

    def _chunk(self, kind: str) -> int:
        return self.chunk_size or scan_chunk(kind)

    def _corpus_on_device(self):
        """The rows up to the next multiple of ``DEVICE_ROWS`` on device (binary rows transposed to
        words-major for the popcount scan), capped at the storage capacity: a growing index gives the
        compiled search a new shape only when its storage doubles or it passes a multiple of
        ``DEVICE_ROWS``, never per size. On the CPU backend float and int8 rows are the host storage
        itself (aligned, not copied)."""
        if self._device is None:
            quantum = max(DEVICE_ROWS, self.chunk_size or 0)
            rows = min(-(-self._n // quantum) * quantum, self._data.shape[0])
            target = None
            if self.mesh is not None:  # whole rows per device: pad with zero rows (never valid)
                devices = self.mesh.shape[self.mesh.axis_names[0]]
                rows = -(-rows // devices) * devices
                spec = P(None, self.mesh.axis_names[0]) if self._binary else P(self.mesh.axis_names[0])
                target = NamedSharding(self.mesh, spec)
            data = self._data[:rows]
            if rows > data.shape[0]:
                data = np.concatenate([data, np.zeros((rows - data.shape[0], self._width), self._dtype)])
            self._device = hamming_corpus(data, target) if self._binary else jax.device_put(data, target)
        return self._device

    def _first_pass(self, q, k, kind):
        """Top ``k`` of the device scan, or of the host stream when the index outgrows ``max_device_rows``."""
        if not self._streamed():
            corpus = self._corpus_on_device()
            if self.mesh is not None:
                axis = self.mesh.axis_names[0]
                if kind != "hamming":
                    return sharded_top_k(jnp.asarray(q), corpus, self._n, k=k, kind=kind, chunk=self._chunk(kind),
                                         mesh=self.mesh, axis=axis)
                return sharded_top_k(scan_words(hamming_words(q)), corpus, self._n, k=k, kind=kind,
                                     chunk=self._chunk(kind), mesh=self.mesh, axis=axis, words_major=True)
            if kind == "hamming":
                return hamming_top_k(q, corpus, self._n, k=k, chunk=self._chunk(kind))
            return chunked_top_k(jnp.asarray(q), corpus, self._n, k=k, kind=kind, chunk=self._chunk(kind))
        piece = self.max_device_rows
        if kind != "hamming":
            return streamed_top_k(jnp.asarray(q), self._data, self._n, k=k, kind=kind, chunk=self._chunk(kind),
                                  piece=piece)
        best = None
        for start in range(0, self._n, piece):
            lo = min(start, self._n - piece)
            block = hamming_corpus(self._data[lo : lo + piece])
            found = hamming_top_k(q, block, piece, k=min(k, piece), chunk=self._chunk(kind), first=start - lo,
                                  offset=lo)
            best = found if best is None else merge_top_k(*best, *found, k=k)
        return best

    def _query_rows(self, queries, model):
        if isinstance(queries, str) or (isinstance(queries, (list, tuple)) and queries and
                                        all(isinstance(q, str) for q in queries)):
            if model is None:
                raise TypeError("text queries need a model: index.search(texts, model=model)")
            queries = model.encode_query(list(queries) if not isinstance(queries, str) else [queries])
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"expected queries of shape (n, {self.dim}), got {q.shape}")
        check_finite(q, "queries")
        if self.similarity == "cosine":
            q = np.asarray(normalize(jnp.asarray(q)))
        return q

    def search(self, queries, top_k: int = 10, rescore_multiplier: int | None = 4, model=None) -> list[list[dict]]:
        """Top ``top_k`` hits per query, best first: ``{"corpus_id", "score"[, "id"][, "text"]}``.

        ``queries``: float embeddings, or text(s) embedded with ``model.encode_query``. On a quantized
        index the first pass fetches ``top_k * rescore_multiplier`` candidates by the quantized score
        and rescores them with the float query against the dequantized rows (None or 1: no rescoring;
        scores are then the quantized ones: approximate dot products, or minus the Hamming distance).
        Returns ``min(top_k, len(index))`` hits per query; a non-finite query is refused with its row named
        (``jaxst.search``'s rule)."""
        top_k = positive_int("top_k", top_k)
        rescore_multiplier = positive_int("rescore_multiplier", rescore_multiplier, optional=True)
        q = self._query_rows(queries, model)
        if self._n == 0:
            return [[] for _ in range(q.shape[0])]
        k = min(top_k, self._n)
        quantized = self.precision not in ("float32", "bfloat16")
        rescore = quantized and rescore_multiplier not in (None, 1)
        first_k = min(k * rescore_multiplier, self._n) if rescore else k
        if not quantized:
            scores, ids = self._first_pass(q, first_k, "dot")
        elif self._binary:
            scores, ids = self._first_pass(quantize_embeddings(q, "ubinary"), first_k, "hamming")
        else:
            scores, ids, offset = self._int8_first_pass(q, first_k)
            if not rescore:
                scores = scores + offset
        if rescore:
            scores, ids = self._rescore(q, ids, k)
        return self._hits(np.asarray(scores), np.asarray(ids))

    def _int8_first_pass(self, q, k):
        """q . dequant(c) = sum_d (q_d step_d) c_d + sum_d q_d (start_d + 128 step_d); the first sum is
        taken in int8 x int8 -> int32 with the scaled query rounded to int8."""
        starts, steps = self._steps()
        w = q * steps  # (Q, D)
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-30) / 127
        wq = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        scores, ids = self._first_pass(wq, k, "int8")
        offset = (q * (starts + 128 * steps)).sum(axis=1, keepdims=True)
        return np.asarray(scores) * scale, ids, offset

    def _steps(self):
        starts = self.ranges[0]
        steps = (self.ranges[1] - starts) / 255
        return starts, np.where(steps == 0, 1, steps).astype(np.float32)

    def _rescore(self, q, ids, k):
        """Rescore candidates with the float query against their dequantized rows (host, float64 sum
        like sentence-transformers' rescoring)."""
        ids = np.asarray(ids)
        valid = ids >= 0
        rows = self._data[np.where(valid, ids, 0)]  # (Q, K', W)
        if self._binary:
            bits = np.unpackbits(rows.view(np.uint8), axis=-1)[..., : self.dim].astype(np.float64)
        else:
            starts, steps = self._steps()
            bits = (rows.astype(np.float64) + 128) * steps + starts
        scores = np.einsum("qd,qkd->qk", q.astype(np.float64), bits)
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to one file, atomically: a crash or a full disk leaves any previous file intact."""
        path = Path(path)
        header = {"format": FORMAT, "version": VERSION, "dim": self.dim, "precision": self.precision,
                  "similarity": self.similarity, "count": self._n, "chunk_size": self.chunk_size,
                  "max_device_rows": self.max_device_rows,
                  "has_ids": self.ids is not None, "has_texts": self.texts is not None,
                  "has_ranges": self.ranges is not None}
        rows = self._data[: self._n]
        if self.precision == "bfloat16":
            rows = rows.view(np.uint16)
        if self._binary:  # packed bytes: independent of the word size the scan uses
            rows = rows.view(np.uint8)[:, : -(-self.dim // 8)]
        members = {"header.json": json.dumps(header), "embeddings.npy": _npy_bytes(rows)}
        if self.ranges is not None:
            members["ranges.npy"] = _npy_bytes(self.ranges)
        _write_zip(path, members, self.ids, self.texts)

    @classmethod
    def load(cls, path: str | os.PathLike, mesh=None) -> EmbeddingIndex:
        """Read a file written by ``save``; a damaged or foreign file is a ValueError saying what is wrong.
        ``mesh``: shard the loaded index over the devices of this mesh."""
        path = Path(path)
        header, arrays, ids, texts = _read_zip(path, FORMAT, (1, VERSION), "embedding index", _dense_members)
        try:
            index = cls(header["dim"], header["precision"], header["similarity"],
                        arrays["ranges"] if header["has_ranges"] else None, header.get("chunk_size"),
                        None if mesh is not None else header.get("max_device_rows"), mesh)
            rows = arrays["embeddings"]
        except KeyError as e:
            raise ValueError(f"{path} is damaged or not a jaxst embedding index: missing {e}") from e
        except ValueError as e:  # a header value the constructor refuses
            raise ValueError(f"{path}: {e}") from e
        n = header["count"]
        width, dtype = index._width, np.dtype(np.uint16 if index.precision == "bfloat16" else index._dtype)
        if index._binary:  # version 2 holds packed bytes, version 1 uint32 words
            width, dtype = (-(-index.dim // 8), np.dtype(np.uint8)) if header["version"] == 2 else \
                (-(-index.dim // 32), np.dtype(np.uint32))
        if rows.shape != (n, width) or rows.dtype != dtype:
            raise ValueError(f"{path}: embeddings have shape {rows.shape} and dtype {rows.dtype}, "
                             f"expected ({n}, {width}) {dtype}")
        if index.precision == "bfloat16":  # saved as their uint16 bits
            rows = rows.view(ml_dtypes.bfloat16)
        if index._binary:
            rows = hamming_words(np.ascontiguousarray(rows).view(np.uint8)[:, : -(-index.dim // 8)])
        for name, values in (("ids", ids), ("texts", texts)):
            if values is not None and len(values) != n:
                raise ValueError(f"{path}: {len(values)} {name} for {n} embeddings")
        index._data = aligned_empty(rows.shape, rows.dtype)
        index._data[...] = rows
        index._n, index.ids, index.texts = n, ids, texts
        return index


SPARSE_FORMAT = "jaxst-sparse-index"
SPARSE_VERSION = 1


class SparseEmbeddingIndex(_Labelled):
    """Sparse embeddings (``SparseEncoder.encode``'s BCOO, scipy sparse or dense rows) to search exactly
    by dot or cosine score, growable and saved to one file like ``EmbeddingIndex``.

    Storage is host numpy fixed-width rows (values float32, indices int32; unused slots point past the
    vocabulary), grown by doubling; the width grows to the widest row added. The device copy is padded
    to a multiple of ``DEVICE_ROWS`` rows, so a growing index recompiles its search rarely."""

    def __init__(self, dim: int, similarity: str = "dot"):
        dim = positive_int("dim", dim)
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity {similarity!r} is not supported; expected one of {SIMILARITIES}")
        self.dim, self.similarity = dim, similarity
        self._values = np.zeros((0, 16), np.float32)
        self._indices = np.full((0, 16), dim, np.int32)
        self._n = 0
        self.ids: list | None = None
        self.texts: list[str] | None = None
        self._device = None

    def __len__(self) -> int:
        return self._n

    @property
    def embeddings(self):
        """The stored rows as a BCOO (n, dim)."""
        return to_bcoo(self._values[: self._n], self._indices[: self._n], self.dim)

    def add(self, embeddings, ids=None, texts=None) -> None:
        """Append sparse embeddings (n, dim), with optional ids and texts of the same length. A row storing
        NaN or inf is refused before anything is stored (``jaxst.search``'s rule)."""
        values, indices, dim = stored_rows(embeddings)
        if dim != self.dim:
            raise ValueError(f"expected embeddings of dimension {self.dim}, got {dim}")
        values, indices = np.asarray(values, np.float32), np.asarray(indices, np.int32)
        n = values.shape[0]
        self._check_labels(n, ids, texts)
        if n == 0:
            return
        check_finite(values, "embeddings")
        used = int((values != 0).sum(axis=1).max(initial=0))
        order = np.argsort(values == 0, axis=1, kind="stable")[:, :used]  # active entries first
        values, indices = np.take_along_axis(values, order, 1), np.take_along_axis(indices, order, 1)
        indices[values == 0] = self.dim
        width = max(self._values.shape[1], row_width(used))
        capacity = self._values.shape[0]
        if self._n + n > capacity or width > self._values.shape[1]:
            capacity = max(MIN_CAPACITY, capacity)
            while capacity < self._n + n:
                capacity *= 2
            grown_v = np.zeros((capacity, width), np.float32)
            grown_i = np.full((capacity, width), self.dim, np.int32)
            grown_v[: self._n, : self._values.shape[1]] = self._values[: self._n]
            grown_i[: self._n, : self._indices.shape[1]] = self._indices[: self._n]
            self._values, self._indices = grown_v, grown_i
        self._values[self._n : self._n + n, :used] = values
        self._indices[self._n : self._n + n, :used] = indices
        self._n += n
        self._append_labels(ids, texts)
        self._device = None

    def _first_nonfinite_row(self) -> int | None:
        return first_nonfinite_row(self._values[: self._n])

    def _corpus_on_device(self):
        if self._device is None:
            rows = min(-(-self._n // DEVICE_ROWS) * DEVICE_ROWS, self._values.shape[0])
            self._device = (jax.device_put(self._values[:rows]), jax.device_put(self._indices[:rows]))
        return self._device

    def search(self, queries, top_k: int = 10, model=None) -> list[list[dict]]:
        """Top ``top_k`` hits per query, best first: ``{"corpus_id", "score"[, "id"][, "text"]}``.
        ``queries``: sparse embeddings, or text(s) embedded with ``model.encode_query``. Non-finite queries are
        refused with the row named (``jaxst.search``'s rule)."""
        top_k = positive_int("top_k", top_k)
        if isinstance(queries, str) or (isinstance(queries, (list, tuple)) and queries and
                                        all(isinstance(q, str) for q in queries)):
            if model is None:
                raise TypeError("text queries need a model: index.search(texts, model=model)")
            queries = model.encode_query([queries] if isinstance(queries, str) else list(queries))
        q_values, q_indices, dim = stored_rows(queries)
        if dim != self.dim:
            raise ValueError(f"expected queries of dimension {self.dim}, got {dim}")
        check_finite(q_values, "queries")
        if self._n == 0:
            return [[] for _ in range(q_values.shape[0])]
        scores, ids = sparse_top_k(q_values, q_indices, self._corpus_on_device(), self._n, k=min(top_k, self._n),
                                   cosine=self.similarity == "cosine", dim=self.dim)
        return self._hits(np.asarray(scores), np.asarray(ids))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to one file, atomically."""
        header = {"format": SPARSE_FORMAT, "version": SPARSE_VERSION, "dim": self.dim, "similarity": self.similarity,
                  "count": self._n, "has_ids": self.ids is not None, "has_texts": self.texts is not None}
        members = {"header.json": json.dumps(header), "values.npy": _npy_bytes(self._values[: self._n]),
                   "indices.npy": _npy_bytes(self._indices[: self._n])}
        _write_zip(Path(path), members, self.ids, self.texts)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseEmbeddingIndex:
        """Read a file written by ``save``; a damaged or foreign file is a ValueError saying what is wrong."""
        path = Path(path)
        header, arrays, ids, texts = _read_zip(path, SPARSE_FORMAT, (SPARSE_VERSION,), "sparse index",
                                             _sparse_members)
        try:
            index = cls(header["dim"], header["similarity"])
            values, indices = arrays["values"], arrays["indices"]
        except KeyError as e:
            raise ValueError(f"{path} is damaged or not a jaxst sparse index: missing {e}") from e
        except ValueError as e:  # a header value the constructor refuses
            raise ValueError(f"{path}: {e}") from e
        n = header["count"]
        if values.shape != indices.shape or values.shape[0] != n or values.dtype != np.float32 \
                or indices.dtype != np.int32:
            raise ValueError(f"{path}: rows have shapes {values.shape} / {indices.shape} and dtypes {values.dtype} / "
                             f"{indices.dtype}, expected ({n}, W) float32 / int32")
        if n and (indices.min() < 0 or indices.max() > index.dim):
            raise ValueError(f"{path}: indices outside [0, {index.dim}]")
        for name, labels in (("ids", ids), ("texts", texts)):
            if labels is not None and len(labels) != n:
                raise ValueError(f"{path}: {len(labels)} {name} for {n} embeddings")
        index.add(to_bcoo(values, indices, index.dim), ids, texts)
        return index


NPY_HEADER_MAX = 4096  # the .npy header np.save writes for a 2-d array of a plain dtype: 128 bytes
HEADER_MAX = 1 << 20  # header.json: a few hundred bytes in practice


def _header_int(header: dict, key: str, path, minimum: int) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{path}: header field {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _dense_members(header: dict, path) -> dict[str, int]:
    """The .npy members an embedding index's header says it has, with their largest possible size in bytes."""
    dim, count = _header_int(header, "dim", path, 1), _header_int(header, "count", path, 0)
    precision = header.get("precision")
    if precision not in PRECISIONS:
        raise ValueError(f"{path}: precision {precision!r} is not one of {PRECISIONS}")
    row = {"float32": 4 * dim, "bfloat16": 2 * dim, "int8": dim, "uint8": dim}.get(precision)
    if row is None:  # binary: version 2 packed bytes, version 1 uint32 words
        row = -(-dim // 8) if header.get("version") == 2 else 4 * -(-dim // 32)
    members = {"embeddings.npy": count * row + NPY_HEADER_MAX}
    if header.get("has_ranges"):
        members["ranges.npy"] = 2 * dim * 8 + NPY_HEADER_MAX
    return members


def _sparse_members(header: dict, path) -> dict[str, int]:
    """The .npy members a sparse index's header says it has, with their largest possible size in bytes."""
    dim, count = _header_int(header, "dim", path, 1), _header_int(header, "count", path, 0)
    most = count * row_width(dim) * 4 + NPY_HEADER_MAX  # a row holds at most dim active entries
    return {"values.npy": most, "indices.npy": most}


def _read_member(z: zipfile.ZipFile, name: str, limit: int, path, what: str) -> bytes:
    """A member's bytes, refused before reading when it is missing, compressed (jaxst writes members stored,
    so a compressed one is foreign: its declared size cannot be trusted before inflating it), or larger than
    ``limit`` (at most the file's own size)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise ValueError(f"{path} is damaged or not a jaxst {what}: member {name} is missing") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: member {name} is compressed (method {info.compress_type}); jaxst {what} files "
                         "store their members uncompressed, re-save it with jaxst")
    if info.file_size > limit or info.file_size != info.compress_size:
        raise ValueError(f"{path}: member {name} declares {info.file_size} bytes, more than its header and the "
                         f"file's size allow ({limit})")
    return z.read(name)


def _read_labels(data: bytes, name: str, path, kinds: tuple) -> list:
    values = json.loads(data)
    if not isinstance(values, list):
        raise ValueError(f"{path}: {name} holds a {type(values).__name__}, expected a list")
    if not all(isinstance(v, kinds) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{path}: {name} holds entries that are not {' or '.join(k.__name__ for k in kinds)}")
    return values


def _read_zip(path: Path, fmt: str, versions: tuple, what: str, members) -> tuple[dict, dict, list | None, list | None]:
    """(header, {name: array} of the .npy members ``members(header, path)`` names, ids, texts) of a file
    ``_write_zip`` wrote; a damaged or foreign file is a ValueError naming ``path`` and ``what`` it should have
    been. Only the members the header calls for are read, each only after its declared size was checked
    against what the header allows; anything else in the zip is never decompressed."""
    try:
        with zipfile.ZipFile(path) as z:
            size = os.fstat(z.fp.fileno()).st_size

            def read(name: str, limit: int) -> bytes:
                return _read_member(z, name, min(limit, size), path, what)

            if "header.json" not in z.NameToInfo:
                raise ValueError(f"{path} is not a jaxst {what} (no header)")
            header = json.loads(read("header.json", HEADER_MAX))
            if not isinstance(header, dict):
                raise ValueError(f"{path} is not a jaxst {what} (its header is a {type(header).__name__})")
            if header.get("format") != fmt:
                raise ValueError(f"{path} is not a jaxst {what} (format {header.get('format')!r})")
            if header.get("version") not in versions:
                raise ValueError(f"{path} has {what} format version {header.get('version')}; "
                                 f"this jaxst reads version {versions[-1]}")
            arrays = {}
            for name, limit in members(header, path).items():
                data = read(name, limit)
                try:
                    arrays[name[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
                except (ValueError, TypeError) as e:
                    raise ValueError(f"{path}: member {name} is not a valid .npy array: {e}") from e
            ids = _read_labels(read("ids.json", size), "ids.json", path, (int, str)) if header.get("has_ids") else None
            texts = _read_labels(read("texts.json", size), "texts.json", path, (str,)) if header.get("has_texts") \
                else None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, json.JSONDecodeError, UnicodeDecodeError,
            zlib.error, NotImplementedError, RuntimeError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{path} is damaged or not a jaxst {what}: {e}") from e
    return header, arrays, ids, texts


def _write_zip(path: Path, members: dict, ids, texts) -> None:
    """One uncompressed zip of ``members`` (name -> bytes or str) plus ids.json / texts.json, written beside
    ``path`` and renamed over it (``jaxst.io.atomic``): a crash or a full disk leaves any previous file intact,
    and only a regular file, a new path or a symlink to one is written."""
    if ids is not None:
        members["ids.json"] = json.dumps(ids)
    if texts is not None:
        members["texts.json"] = json.dumps(texts, ensure_ascii=False)
    with AtomicFile(path) as out:
        with zipfile.ZipFile(out.file, "w", compression=zipfile.ZIP_STORED) as z:
            for name, data in members.items():
                z.writestr(name, data)
        out.commit()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
