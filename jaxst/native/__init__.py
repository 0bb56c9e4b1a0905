"""Native CPU kernels, built on first use with the system C++ compiler and cached.

- ``int8_top_k.cc``: XLA's CPU backend does not lower an int8 x int8 -> int32 ``dot_general`` to
  AVX-512 VNNI, so the int8 index scans at about float32 speed. This XLA FFI custom call does the whole
  int8 top-k (VNNI dot products, per-query heaps, XLA's intra-op thread pool) in one pass over the
  corpus as stored; ``jaxst.search`` uses it for int8 scans of CPU arrays when the CPU has AVX-512
  VNNI, and XLA's own dot everywhere else. Results are identical either way (tested).
- ``attention.cc``: fused float32 attention (scores, mask, softmax and the value product per tile of
  query rows, in cache). XLA runs attention's small batched matmuls at a fifth of its dense-layer speed
  and writes every score matrix to memory; ``jaxst.models.layers.attention`` calls this kernel on a
  single CPU device at inference and XLA's ops elsewhere (accelerators, meshes, bfloat16, dropout),
  with gradients through XLA's ops. Built for the widest vectors the CPU has (AVX-512, AVX2 + FMA, or
  the compiler's default), the same results within float32 rounding (tested against XLA).

The library is compiled once per source, jaxlib and compiler into ``$XDG_CACHE_HOME/jaxst/native``
(else ``~/.cache/jaxst/native``; ``JAXST_NATIVE_CACHE`` moves it) with the headers jaxlib ships
(``jax.ffi.include_dir()``). ``JAXST_NATIVE=0`` turns it off. Without a compiler, or when the build
fails, jaxst warns once and keeps to XLA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jaxst.compilation_cache import jaxst_cache_home

ENV = "JAXST_NATIVE"
CACHE_ENV = "JAXST_NATIVE_CACHE"
SOURCE = Path(__file__).with_name("int8_top_k.cc")
TARGET = "jaxst_int8_top_k"
VNNI_FLAGS = ("avx512f", "avx512bw", "avx512_vnni")  # as /proc/cpuinfo spells them
VNNI_OPTIONS = ("-mavx512f", "-mavx512bw", "-mavx512vnni")
MAX_DIM = 1024  # int8 sums stay exact in float32 (127 * 128 * 1024 < 2**24)


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and set(VNNI_FLAGS) <= cpu_flags()


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    setting = os.environ.get(CACHE_ENV)
    if setting:
        return Path(setting).expanduser()
    return jaxst_cache_home() / "native"


def compiler() -> str | None:
    found = (shutil.which(name) for name in (os.environ.get("CXX"), "c++", "g++", "clang++") if name)
    return next((path for path in found if path), None)


def build(vnni: bool, directory: Path | None = None) -> Path:
    """The int8 top-k library (built now unless the cache has it), AVX-512 VNNI or portable inner loop."""
    return compile_source(SOURCE, VNNI_OPTIONS if vnni else (), "vnni" if vnni else "portable", directory)


def compile_source(source: Path, options: tuple[str, ...], variant: str, directory: Path | None = None) -> Path:
    """``source`` compiled with ``options`` into the cache, keyed by source, jax, jaxlib, command and compiler.

    Written to a temporary name and renamed into place, so a killed build never leaves a library
    that half loads. Raises RuntimeError with the compiler's message when the build fails."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    command = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", *options, f"-I{jax.ffi.include_dir()}"]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256("\0".join([source.read_text(), jax.__version__, jaxlib.__version__, *command,
                                    *version]).encode())
    directory = Path(directory) if directory is not None else cache_dir()
    target = directory / f"{source.stem}-{variant}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        done = subprocess.run([*command, str(source), "-o", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {source.name} failed:\n{done.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_registered: dict[str, ctypes.CDLL] = {}


def _register(name: str, library: Callable[[], Path], handler: str, check: Callable | None = None) -> str:
    """Load the library ``library()`` builds (or finds) and register its FFI ``handler`` as the CPU target
    ``name``, once per process; ``check(lib)`` raises when the build is not the one asked for."""
    if name not in _registered:
        lib = ctypes.CDLL(str(library()))
        if check is not None:
            check(lib)
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, handler)), platform="cpu")
        _registered[name] = lib
    return name


def _available(make: Callable[[], str], what: str, fallback: str) -> str | None:
    """``make()``'s FFI target, or None with one warning when the build fails (XLA answers instead)."""
    try:
        return make()
    except Exception as e:
        warnings.warn(f"jaxst: the native {what} is unavailable, using {fallback} ({e})", stacklevel=3)
        return None


def single_cpu() -> bool:
    """Whether jax computes on one CPU device by default: where jaxst's native kernels run inside models.
    (Several CPU devices shard the batch, which a custom call does not partition; accelerators have XLA.)"""
    return jax.default_backend() == "cpu" and len(jax.devices("cpu")) == 1


def register(vnni: bool) -> str:
    """Build (or find) and register the kernel; returns its FFI target name."""

    def check(lib):
        if bool(lib.JaxstInt8TopKVnni()) != vnni:
            raise RuntimeError(f"{TARGET}: the library was built for the other inner loop")

    return _register(TARGET if vnni else TARGET + "_portable", lambda: build(vnni), "JaxstInt8TopK", check)


@functools.cache
def int8_kernel() -> str | None:
    """The FFI target jaxst's int8 search uses on this machine, or None (no AVX-512 VNNI, turned off
    with ``JAXST_NATIVE=0``, or the build failed: warned once)."""
    if not (enabled() and has_vnni()):
        return None
    return _available(lambda: register(vnni=True), "int8 search kernel", "XLA's dot")


@functools.partial(jax.jit, static_argnames=("k", "target"))
def _call(queries, corpus, bounds, *, k: int, target: str):
    shapes = (jax.ShapeDtypeStruct((queries.shape[0], k), jnp.float32),
              jax.ShapeDtypeStruct((queries.shape[0], k), jnp.int32))
    return jax.ffi.ffi_call(target, shapes)(queries, corpus, bounds)


def usable(queries, corpus, n_valid, first, k: int) -> bool:
    """Whether ``int8_top_k`` can answer this scan (concrete bounds, int8 2-D arrays, a dimension
    that is a multiple of 4 up to ``MAX_DIM``, at least ``k`` rows)."""
    concrete = all(isinstance(x, (int, np.integer)) for x in (n_valid, first))
    return (concrete and getattr(queries, "dtype", None) == np.int8 and getattr(corpus, "dtype", None) == np.int8
            and queries.ndim == 2 and corpus.ndim == 2 and queries.shape[1] == corpus.shape[1]
            and queries.shape[1] % 4 == 0 and queries.shape[1] <= MAX_DIM
            and 1 <= k <= min(n_valid, corpus.shape[0]) - first)


def int8_top_k(queries, corpus, n_valid: int, first: int = 0, offset: int = 0, *, k: int, target: str | None = None):
    """The ``k`` best (scores, ids) per query by int8 dot product over rows ``first <= row < n_valid``,
    ties to the lower row, ids ``offset + row``: ``jaxst.search``'s int8 scan, in one native pass.
    ``target`` picks a registered kernel (default: this machine's, see ``int8_kernel``)."""
    target = target or int8_kernel()
    if target is None:
        raise RuntimeError("the native int8 kernel is not available on this machine")
    if not usable(queries, corpus, n_valid, first, k):
        raise ValueError(f"int8_top_k needs int8 (Q, D) queries and (N, D) corpus with D % 4 == 0 and "
                         f"D <= {MAX_DIM}, and k <= rows to scan; got {getattr(queries, 'shape', None)}, "
                         f"{getattr(corpus, 'shape', None)}, k={k}, rows [{first}, {n_valid})")
    bounds = np.asarray([n_valid, first, offset], np.int32)
    return _call(queries, corpus, bounds, k=k, target=target)


# ---------------------------------------------------------------------------------------------- attention

ATTENTION_SOURCE = Path(__file__).with_name("attention.cc")
ATTENTION_TARGET = "jaxst_attention"
# FMA contraction is off by default in ISO C++ mode; the kernel's multiply-adds are meant as FMAs.
ATTENTION_OPTIONS = {
    "avx512": ("-mavx512f", "-mavx2", "-mfma", "-ffp-contract=fast"),
    "avx2": ("-mavx2", "-mfma", "-ffp-contract=fast"),
    "generic": ("-ffp-contract=fast",),
}


def vector_isa() -> str:
    """The widest vector instruction set the attention kernel is built for on this CPU."""
    if platform.machine() in ("x86_64", "AMD64"):
        flags = cpu_flags()
        if {"avx512f", "avx2", "fma"} <= flags:
            return "avx512"
        if {"avx2", "fma"} <= flags:
            return "avx2"
    return "generic"


def register_attention(isa: str) -> str:
    """Build (or find) and register the attention kernel for ``isa``; returns its FFI target name."""

    def check(lib):
        bits = int(lib.JaxstAttentionVectorBits())
        if bits != {"avx512": 512, "avx2": 256}.get(isa, bits):
            raise RuntimeError(f"{ATTENTION_TARGET}_{isa}: the library was built for {bits}-bit vectors")

    return _register(f"{ATTENTION_TARGET}_{isa}",
                     lambda: compile_source(ATTENTION_SOURCE, ATTENTION_OPTIONS[isa], isa), "JaxstAttention", check)


@functools.cache
def attention_kernel() -> str | None:
    """The FFI target of the fused attention kernel on this machine, or None (``JAXST_NATIVE=0``, or the
    build failed: warned once)."""
    if not enabled():
        return None
    return _available(lambda: register_attention(vector_isa()), "attention kernel", "XLA's ops")


def attention(q, k, v, mask, bias=None, *, scale: float, causal: bool = False, window: int | None = None,
              target: str | None = None, heads_last: bool = False):
    """Fused ``softmax(where(allowed, scale * q k^T + bias, -inf)) v`` on the CPU (float32).

    q (B, N, T, D); k, v (B, KV, S, D) with N a multiple of KV; ``mask`` (B, 1 or T, S) booleans (the keys
    each query may see); ``bias`` (1 or B, 1 or N, 1 or T, S) or None; ``causal``: keys j <= i;
    ``window``: keys with |i - j| < window. A query that may see no key gets the mean of the values.
    ``heads_last``: q (B, T, N, D), k and v (B, S, KV, D) and the output (B, T, N, D), the layout the
    projections produce, so no transposes are needed around the call."""
    target = target or attention_kernel()
    if target is None:
        raise RuntimeError("the native attention kernel is not available on this machine")
    has_bias = bias is not None
    if bias is None:
        bias = jnp.zeros((1, 1, 1, k.shape[1 if heads_last else 2]), jnp.float32)
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(q.shape, jnp.float32), vmap_method="sequential")
    return call(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask.astype(bool),
                bias.astype(jnp.float32), scale=np.float32(scale), causal=bool(causal),
                window=np.int64(window or 0), has_bias=has_bias, heads_last=bool(heads_last))


# ------------------------------------------------------------------------------------------ int8 matmul

INT8_MATMUL_SOURCE = Path(__file__).with_name("int8_matmul.cc")
INT8_MATMUL_TARGET = "jaxst_int8_matmul"
INT8_PANEL = 32  # columns per packed panel (two vectors of 16 int32 sums)
INT8_MAX_K = 1 << 16  # 255 * 127 * 65,536 < 2**31: the kernel's int32 sums cannot overflow


def int8_panels(k: int, n: int) -> tuple[int, int]:
    """(panels, groups of 4 rows) of a packed (K, N) int8 kernel."""
    return -(-n // INT8_PANEL), -(-k // 4)


def pack_int8_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) int8 -> the VNNI panels (P, G, 128) int8 (panel p, group g: w[4g .. 4g + 3, 32p + c] for the
    32 columns c, 4 bytes each, zero past K and N) and the (P * 32,) int32 ``128 * column sums``."""
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise ValueError(f"expected a (K, N) int8 matrix, got {w.dtype} {w.shape}")
    k, n = w.shape
    panels, groups = int8_panels(k, n)
    padded = np.zeros((groups * 4, panels * INT8_PANEL), np.int8)
    padded[:k, :n] = w
    packed = padded.reshape(groups, 4, panels, INT8_PANEL).transpose(2, 0, 3, 1).reshape(panels, groups, -1)
    correction = 128 * padded.astype(np.int32).sum(axis=0)
    return np.ascontiguousarray(packed), correction.astype(np.int32)


def unpack_int8_weights(packed, k: int, n: int):
    """The (K, N) int8 matrix back from its panels (jnp: XLA's int8 dot reads it this way)."""
    panels, groups, _ = packed.shape
    w = packed.reshape(panels, groups, INT8_PANEL, 4).transpose(1, 3, 0, 2)
    return w.reshape(groups * 4, panels * INT8_PANEL)[:k, :n]


@functools.cache
def int8_matmul_kernel() -> str | None:
    """The FFI target of the VNNI int8 matmul on this machine, or None (no AVX-512 VNNI, ``JAXST_NATIVE=0``,
    or the build failed: warned once)."""
    if not (enabled() and has_vnni()):
        return None
    return _available(register_int8_matmul, "int8 matmul", "XLA's int8 dot")


def register_int8_matmul() -> str:
    """Build (or find) and register the VNNI int8 matmul; returns its FFI target name."""
    return _register(INT8_MATMUL_TARGET, lambda: compile_source(INT8_MATMUL_SOURCE, VNNI_OPTIONS, "vnni"),
                     "JaxstInt8Matmul")


def int8_matmul(x, packed, correction, n: int, *, target: str | None = None):
    """The exact int32 (M, N) product of int8 rows ``x`` (M, K) and a packed int8 (K, N) kernel."""
    target = target or int8_matmul_kernel()
    if target is None:
        raise RuntimeError("the native int8 matmul is not available on this machine")
    if x.shape[-1] > INT8_MAX_K:
        raise ValueError(f"int8_matmul: K = {x.shape[-1]} above {INT8_MAX_K} could overflow int32 sums")
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((x.shape[0], n), jnp.int32), vmap_method="sequential")
    return call(x, packed, correction)
