"""The persistent compilation cache: on by default in a per-user folder, overridable, off with one setting.

Each case runs fresh processes (the cache is process state) that load a tiny model and encode; JAX's
own monitoring events count cache hits and misses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from jax import monitoring

    events = {"hits": 0, "misses": 0}
    def listen(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            events["hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            events["misses"] += 1
    monitoring.register_event_listener(listen)

    if sys.argv[2:] == ["cross-encoder"]:
        from jaxst import CrossEncoder
        model = CrossEncoder(sys.argv[1])
        model.predict([("a query", "a short text"), ("a query", "a somewhat longer text for another length")] * 3,
                      batch_size=4)
    else:
        from jaxst import SentenceTransformer
        model = SentenceTransformer(sys.argv[1])
        model.encode(["a short text", "a somewhat longer text to get another length", "x"] * 3, batch_size=4)
    print(json.dumps(dict(events, cache_dir=jax.config.jax_compilation_cache_dir,
                          min_secs=jax.config.jax_persistent_cache_min_compile_time_secs,
                          max_size=jax.config.jax_compilation_cache_max_size)))
""")


# The native kernels (jaxst.native: fused attention on every CPU encode) are built once into their own cache,
# $XDG_CACHE_HOME/jaxst/native unless JAXST_NATIVE_CACHE says where. These tests are about the XLA
# compilation cache, so the kernels go to a folder of their own (built once for the module).
NATIVE_CACHE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _native_cache(tmp_path_factory):
    NATIVE_CACHE["path"] = str(tmp_path_factory.mktemp("native-kernels"))
    yield
    NATIVE_CACHE.clear()


def run(folder, *args, **env) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("JAXST_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
    environ.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", JAXST_NATIVE_CACHE=NATIVE_CACHE["path"], **env)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), *args], capture_output=True, text=True,
                            timeout=300, env=environ)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def entries(path) -> list[str]:
    return sorted(f for f in os.listdir(path) if f.endswith("-cache")) if os.path.isdir(path) else []


@pytest.fixture(scope="module")
def folder(make_tiny_st):
    return make_tiny_st()


def test_second_process_finds_what_the_first_compiled(folder, tmp_path):
    first = run(folder, XDG_CACHE_HOME=str(tmp_path))  # default folder: $XDG_CACHE_HOME/jaxst/xla
    cache = tmp_path / "jaxst" / "xla"
    assert first["cache_dir"] == str(cache)
    assert first["min_secs"] == 0.0  # small encoder shapes compile fast and are cached all the same
    assert first["max_size"] == 2 * 1024**3  # README: capped at 2 GiB (JAX's default, -1, is unbounded)
    written = entries(cache)
    forward = [f for f in written if f.startswith("jit_forward-")]
    assert len(forward) >= 2 and first["misses"] >= len(forward)  # two batch shapes at least
    second = run(folder, XDG_CACHE_HOME=str(tmp_path))
    assert second["hits"] >= len(forward) and second["misses"] == 0
    assert entries(cache) == written  # nothing compiled anew


def test_cross_encoder_uses_the_cache_too(make_tiny_cross_encoder, tmp_path):
    folder = make_tiny_cross_encoder()
    first = run(folder, "cross-encoder", XDG_CACHE_HOME=str(tmp_path))
    cache = tmp_path / "jaxst" / "xla"
    assert first["cache_dir"] == str(cache) and first["misses"] >= 1
    written = entries(cache)
    second = run(folder, "cross-encoder", XDG_CACHE_HOME=str(tmp_path))
    assert second["hits"] >= 1 and second["misses"] == 0
    assert entries(cache) == written


def test_folder_from_the_environment(folder, tmp_path):
    chosen = tmp_path / "my-cache"
    out = run(folder, JAXST_COMPILATION_CACHE=str(chosen), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out["cache_dir"] == str(chosen) and entries(chosen)
    assert not (tmp_path / "xdg").exists()
    # the kernels went to their own cache, not beside the XLA programs
    assert any(f.startswith("attention-") for f in os.listdir(NATIVE_CACHE["path"])) and not entries(
        NATIVE_CACHE["path"])


@pytest.mark.parametrize("off", ["0", "off", "false"])
def test_off_switch_writes_nothing(folder, tmp_path, off):
    out = run(folder, JAXST_COMPILATION_CACHE=off, XDG_CACHE_HOME=str(tmp_path))
    assert out["cache_dir"] is None and out["hits"] == out["misses"] == 0
    assert out["min_secs"] == 1.0 and out["max_size"] == -1  # README: every JAX setting untouched (its defaults)
    assert not (tmp_path / "jaxst").exists() and os.listdir(tmp_path) == []


def test_a_cache_the_user_configured_is_left_alone(folder, tmp_path):
    users = tmp_path / "users-own"
    out = run(folder, JAX_COMPILATION_CACHE_DIR=str(users), JAXST_COMPILATION_CACHE=str(tmp_path / "ours"),
              XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert out["cache_dir"] == str(users)
    assert out["min_secs"] == 1.0 and out["max_size"] == -1  # the user's thresholds too (JAX's defaults here)
    assert not (tmp_path / "ours").exists() and not (tmp_path / "xdg").exists()


def test_a_threshold_and_size_the_user_set_are_kept(folder, tmp_path):
    """README: jaxst lowers the compile-time threshold to 0 and caps the cache at 2 GiB only where they are JAX's
    defaults; a threshold or size set by the user (here through JAX's environment variables) is kept, in
    jaxst's own cache folder."""
    out = run(folder, XDG_CACHE_HOME=str(tmp_path), JAX_COMPILATION_CACHE_MAX_SIZE=str(3 << 20),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.25")
    assert out["cache_dir"] == str(tmp_path / "jaxst" / "xla")
    assert out["max_size"] == 3 << 20 and out["min_secs"] == 0.25
