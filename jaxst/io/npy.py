"""An atomic ``.npy`` writer for arrays whose row count is known only at the end.

``encode(..., output_path=...)`` streams embeddings chunk by chunk: rows are appended to a temporary
file next to the target, so memory stays bounded by one chunk whatever the corpus size. The header
is written last. Until then the temporary file starts with zero bytes instead of the ``\\x93NUMPY``
magic, so an interrupted run (an exception, Ctrl-C, a killed process) never leaves a file that loads
as an array: the temporary file is removed on an exception, and ``os.replace`` puts the finished
file at the target name only once it is complete and flushed to disk. Which targets may be written, how
symlinks are followed and how temp files left by a killed run are removed: ``jaxst.io.atomic``.

The header's length does not depend on the row count: numpy pads ``.npy`` headers so the first axis
can grow to 21 digits in place (``numpy.lib.format.GROWTH_AXIS_MAX_DIGITS``), which is what lets
the final header overwrite the placeholder byte for byte.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import numpy as np

from jaxst.io.atomic import AtomicFile
from jaxst.quantization import quantization_ranges, quantize_embeddings


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


class NpyStreamWriter:
    """Append rows of a fixed ``dtype`` and row shape to ``path``; ``commit`` makes the file appear.

        with NpyStreamWriter("emb.npy", np.float32, (384,)) as w:
            for chunk in chunks:
                w.append(chunk)          # (n, 384) float32
            w.commit()                   # header, fsync, os.replace -> emb.npy
        # leaving the block without commit() (an exception) removes the temporary file

    An existing file at ``path`` is untouched until ``commit`` replaces it; ``path`` must be a regular file,
    a new path or a symlink to one (``jaxst.io.atomic.resolve_target``), checked here, before any row.
    """

    def __init__(self, path: str | os.PathLike, dtype, row_shape: tuple[int, ...]):
        self.path = os.fspath(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.rows = 0
        self._header_len = len(_header(self.dtype, (0, *self.row_shape)))
        self._atomic = AtomicFile(self.path)
        self.tmp_path = self._atomic.tmp_path
        self._file = self._atomic.file
        try:
            self._file.write(b"\0" * self._header_len)  # not a .npy until commit() writes the real header
        except BaseException:
            self.abort()
            raise

    def append(self, rows) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"rows of shape {rows.shape[1:]} do not match the file's row shape {self.row_shape}")
        self._file.write(rows.tobytes())
        self.rows += rows.shape[0]

    def written(self) -> np.ndarray:
        """The rows appended so far, memory-mapped read-only (for a second pass over them)."""
        self._file.flush()
        if self.rows == 0:
            return np.zeros((0, *self.row_shape), self.dtype)
        return np.memmap(self.tmp_path, self.dtype, "r", self._header_len, (self.rows, *self.row_shape))

    def commit(self) -> None:
        """Write the real header, flush to disk and move the file into place."""
        header = _header(self.dtype, (self.rows, *self.row_shape))
        if len(header) != self._header_len:  # cannot happen with numpy's growth padding; never write a bad file
            raise RuntimeError(f".npy header grew from {self._header_len} to {len(header)} bytes")
        try:
            self._file.flush()
            self._file.seek(0)
            self._file.write(header)
        except BaseException:
            self.abort()
            raise
        self._atomic.commit()  # fsync, permissions, rename over the target; removes the temp file on failure

    def abort(self) -> None:
        """Drop the temporary file; the target path is left as it was."""
        self._atomic.abort()

    def __enter__(self) -> NpyStreamWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # a no-op after commit()


def write_embeddings_npy(embeddings: Iterator[np.ndarray], path, precision: str, dim: int, chunk_size: int) -> None:
    """Stream float32 embedding chunks into the ``.npy`` at ``path`` in ``precision``, atomically.

    binary/ubinary quantize row by row, chunk by chunk. int8/uint8 need the ranges of the whole set
    (as ``quantize_embeddings`` computes them), so the float32 rows go to a scratch file beside the
    target first, with a running per-dimension min and max, and are quantized from it in a second pass."""
    width = dim if not precision.endswith("binary") else (dim + 7) // 8
    dtype = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}
    two_pass = precision in ("int8", "uint8")
    with NpyStreamWriter(path, np.float32 if two_pass else dtype[precision], (dim if two_pass else width,)) as w:
        lo = hi = None
        for emb in embeddings:
            if two_pass:
                if len(emb):
                    lo = emb.min(axis=0) if lo is None else np.minimum(lo, emb.min(axis=0))
                    hi = emb.max(axis=0) if hi is None else np.maximum(hi, emb.max(axis=0))
                w.append(emb)
            else:
                w.append(emb if precision == "float32" else quantize_embeddings(emb, precision))
        if not two_pass:
            w.commit()
            return
        rows = w.written()
        if w.rows == 1:
            quantization_ranges(np.asarray(rows))  # raises the in-memory path's error for a single embedding
        with NpyStreamWriter(path, dtype[precision], (width,)) as q:
            ranges = None if lo is None else np.stack([lo, hi])
            for start in range(0, w.rows, chunk_size):
                q.append(quantize_embeddings(np.asarray(rows[start : start + chunk_size]), precision, ranges=ranges))
            q.commit()


__all__ = ["NpyStreamWriter", "write_embeddings_npy"]
