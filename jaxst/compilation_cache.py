"""JAX's persistent compilation cache, on by default, so a second process starts encoding without compiling.

Every padded batch shape ``encode`` meets is compiled once, lazily, when first seen; XLA keeps the
executables on disk, and the next process that meets the same shape (same model, jax version and
backend) loads it in milliseconds instead of compiling it again.

    JAXST_COMPILATION_CACHE unset      ->  $XDG_CACHE_HOME/jaxst/xla  (else ~/.cache/jaxst/xla)
    JAXST_COMPILATION_CACHE=/some/dir  ->  that folder
    JAXST_COMPILATION_CACHE=0          ->  off (also "off", "false", "no")

A cache folder already configured in ``jax.config`` (``jax_compilation_cache_dir`` or the
``JAX_COMPILATION_CACHE_DIR`` environment variable) is left as it is, thresholds included; so is a cache
switched off with ``jax_enable_compilation_cache=False``. As JAX warns, the cache is trusted code: keep
it in a folder only you can write to.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import jax

ENV = "JAXST_COMPILATION_CACHE"
OFF_VALUES = ("0", "off", "false", "no")
# Encoder shapes of small models compile in well under JAX's default threshold of one second, and every
# one of them is worth keeping: cache whatever compiles.
MIN_COMPILE_TIME_SECS = 0.0
MAX_SIZE_BYTES = 2 << 30  # least recently used entries are evicted past this


def jaxst_cache_home() -> Path:
    """``$XDG_CACHE_HOME/jaxst`` (else ``~/.cache/jaxst``): where jaxst keeps what it builds."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxst"


def default_cache_dir() -> Path:
    return jaxst_cache_home() / "xla"


def enable_compilation_cache() -> str | None:
    """Turn on the persistent cache as the module docstring says; returns the folder in use, or None.

    Cheap and idempotent: ``SentenceTransformer`` calls it before it compiles anything."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF_VALUES:
        return None
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return configured
    if not jax.config.jax_enable_compilation_cache:
        return None
    path = Path(setting).expanduser() if setting else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"jaxst: no persistent compilation cache, cannot create {str(path)!r}: {e}; "
                      f"set {ENV}=/writable/folder or {ENV}=0", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default: not chosen by the user
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_SECS)
    if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec("filelock"):
        # JAX's default is unbounded; eviction needs filelock (a dependency of huggingface_hub)
        jax.config.update("jax_compilation_cache_max_size", MAX_SIZE_BYTES)
    return str(path)


__all__ = ["ENV", "default_cache_dir", "enable_compilation_cache"]
