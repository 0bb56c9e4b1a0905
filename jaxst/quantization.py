"""Embedding quantization to int8 / uint8 / binary / ubinary, bit-exact with sentence-transformers.

Works on numpy arrays (computed with numpy on the host) and on jax Arrays (computed with jax.numpy,
so it can sit inside ``jax.jit`` when ``precision`` is static). numpy's result is bit-exact with
sentence-transformers. binary/ubinary are bit-exact on both paths; for int8/uint8 the jax path can put a
value lying on a bucket edge one level off, because XLA's float32 division is not correctly rounded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; expected one of {PRECISIONS}")


def check_ranges(ranges, name: str = "ranges") -> None:
    """Refuse int8 / uint8 ``ranges`` (2, dim) holding NaN or inf, or spanning past float32 (``max - min``
    overflows: infinite steps): every level of every quantized row would be garbage. Inside ``jax.jit``
    the values are unknown and not checked."""
    if ranges is None or isinstance(ranges, jax.core.Tracer):
        return
    ranges = np.asarray(ranges, np.float32)
    bad = ~np.isfinite(ranges)
    if ranges.ndim == 2 and ranges.shape[0] == 2:
        with np.errstate(over="ignore", invalid="ignore"):
            bad = bad.any(axis=0) | ~np.isfinite(ranges[1] - ranges[0])
    if bad.any():
        column = int(np.argwhere(bad)[0][-1])
        raise ValueError(f"{name} column {column} is not finite (NaN or inf, or a span past float32): "
                         f"int8 / uint8 calibration data must be finite")


def check_calibration_embeddings(calibration_embeddings) -> None:
    """Refuse a calibration set holding NaN or inf (its ranges would be NaN), naming the first such row."""
    if calibration_embeddings is None or isinstance(calibration_embeddings, jax.core.Tracer):
        return
    bad = ~np.isfinite(np.asarray(calibration_embeddings, np.float32))
    if bad.any():
        raise ValueError(f"calibration_embeddings row {int(np.argwhere(bad)[0][0])} holds NaN or inf: "
                         f"int8 / uint8 calibration data must be finite")


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def quantization_ranges(embeddings, calibration_embeddings=None):
    """Per-dimension ``[min; max]`` (2, dim) from the calibration set, else from ``embeddings``."""
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(
                "cannot compute int8/uint8 quantization ranges from a single embedding; "
                "pass `ranges` or `calibration_embeddings` from a representative set"
            )
        calibration_embeddings = embeddings
    xp = _xp(calibration_embeddings)
    calibration_embeddings = xp.asarray(calibration_embeddings)
    return xp.stack((calibration_embeddings.min(axis=0), calibration_embeddings.max(axis=0)))


def quantize_embeddings(embeddings, precision: str, ranges=None, calibration_embeddings=None):
    """Quantize float embeddings (rows) to ``precision``; see sentence-transformers' function."""
    check_precision(precision)
    if isinstance(embeddings, (list, tuple)):
        embeddings = np.stack([np.asarray(e) for e in embeddings]) if len(embeddings) else np.zeros((0, 0))
    xp = _xp(embeddings)
    embeddings = xp.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise TypeError("embeddings to quantize must be float, not int8 or uint8")
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        dim = embeddings.shape[1]
        if precision.endswith("binary"):
            dim = (dim + 7) // 8
        dtype = np.float32 if precision == "float32" else np.int8 if precision in ("int8", "binary") else np.uint8
        return xp.zeros((0, dim), dtype=dtype)
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        check_ranges(ranges)
        check_calibration_embeddings(calibration_embeddings if ranges is None else None)
        if ranges is None:
            ranges = quantization_ranges(embeddings, calibration_embeddings)
        ranges = xp.asarray(ranges).astype(np.float32)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = xp.where(steps == 0, 1, steps)
        q = xp.clip(xp.floor((embeddings - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    packed = xp.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed - 128).astype(np.int8)
