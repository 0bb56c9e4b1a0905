"""Streaming encode: any iterable of texts, chunk by chunk, optionally into a memory-mapped ``.npy``.

The oracle here is jaxst's own in-memory ``encode`` (itself checked against sentence-transformers in
test_tiny_bert.py and test_minilm.py) plus one direct comparison with sentence-transformers: streaming
must not change a single embedding, whatever the chunking, and must never leave a file that passes
for complete.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import TEXTS

WORDS = ["cat", "dog", "market", "river", "violin", "bread", "storm", "engine", "garden", "planet"]


def corpus(n: int):
    """``n`` short, varied texts, generated lazily."""
    for i in range(n):
        yield f"text {i}: the {WORDS[i % 10]} and the {WORDS[(i * 7) % 10]} " + "very " * (i % 13) + "long"


@pytest.fixture(scope="module")
def folder(make_tiny_st):
    # a Dense head to 384 dims, so that 200,000 embeddings (293 MiB of float32) would show in memory
    return make_tiny_st(dense=((384, torch.nn.Tanh(), True),))


@pytest.fixture(scope="module")
def model(folder):
    from jaxst import SentenceTransformer

    return SentenceTransformer(str(folder))


def test_generator_equals_list_and_sentence_transformers(model, folder):
    from sentence_transformers import SentenceTransformer as ST

    texts = list(corpus(300)) + TEXTS
    expected = model.encode(texts)  # one chunk: sorted and batched as sentence-transformers does
    oracle = ST(str(folder), device="cpu").encode(texts)
    np.testing.assert_allclose(expected, oracle, atol=1e-5, rtol=0)
    streamed = model.encode(iter(texts), batch_size=16)
    np.testing.assert_allclose(streamed, model.encode(texts, batch_size=16), atol=0, rtol=0)
    for chunk_size in (1, 7, 64, 309, 310, 1000):  # chunk boundaries inside, at and past the end
        got = model.encode((t for t in texts), chunk_size=chunk_size)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_output_path_equals_in_memory(model, tmp_path, precision):
    texts = list(corpus(500))
    expected = model.encode(texts, precision=precision, normalize_embeddings=True, truncate_dim=100)
    out = tmp_path / "emb.npy"
    got = model.encode(iter(texts), precision=precision, normalize_embeddings=True, truncate_dim=100,
                       chunk_size=128, output_path=out)
    assert isinstance(got, np.memmap) and not got.flags.writeable  # returned memory-mapped, read-only
    loaded = np.load(out)
    assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
    if precision == "float32":
        np.testing.assert_allclose(loaded, expected, atol=1e-6, rtol=0)
    else:  # the same bits, int8/uint8 with the ranges of the whole set rather than of one chunk
        float_rows = model.encode(texts, normalize_embeddings=True, truncate_dim=100, chunk_size=128)
        from jaxst.quantization import quantize_embeddings

        np.testing.assert_array_equal(loaded, quantize_embeddings(float_rows, precision))
    assert sorted(os.listdir(tmp_path)) == ["emb.npy"]  # no scratch or temporary file left


def test_output_path_edge_cases(model, tmp_path):
    one = model.encode("only one", output_path=tmp_path / "one.npy")
    np.testing.assert_allclose(one, model.encode("only one"), atol=1e-6, rtol=0)
    assert np.load(tmp_path / "one.npy").shape == (1, 384)
    empty = model.encode(iter([]), output_path=tmp_path / "empty.npy")
    assert empty.shape == (0, 384) and np.load(tmp_path / "empty.npy").dtype == np.float32
    with pytest.raises(ValueError, match="single embedding"):
        model.encode(iter(["one text"]), precision="int8", output_path=tmp_path / "q.npy")
    with pytest.raises(ValueError, match="output_value"):
        model.encode(["a"], output_value="token_embeddings", output_path=tmp_path / "t.npy")
    with pytest.raises(ValueError, match="convert_to_tensor"):
        model.encode(["a"], convert_to_tensor=True, output_path=tmp_path / "t.npy")
    with pytest.raises(ValueError, match="directory"):
        model.encode(["a"], output_path=tmp_path)
    with pytest.raises(ValueError, match="chunk_size"):
        model.encode(["a"], chunk_size=0)
    with pytest.raises(TypeError, match="input 3 is int"):
        model.encode(iter(["a", "b", "c", 4]), output_path=tmp_path / "bad.npy")
    assert sorted(os.listdir(tmp_path)) == ["empty.npy", "one.npy"]


def test_progress_bar_without_a_total(model, capsys):
    model.encode(corpus(50), batch_size=8, chunk_size=16, show_progress_bar=True)
    err = capsys.readouterr().err
    assert "Batches" in err and "7it" in err  # 16 + 16 + 16 + 2 texts: 2 + 2 + 2 + 1 batches, no total known
    model.encode(list(corpus(50)), batch_size=8, chunk_size=16, show_progress_bar=True)
    assert "7/7" in capsys.readouterr().err


@pytest.mark.parametrize("existing", [False, True])
def test_exception_midway_leaves_no_file(model, tmp_path, existing):
    out = tmp_path / "emb.npy"
    if existing:
        np.save(out, np.arange(3.0))

    def failing():
        yield from corpus(1000)
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        model.encode(failing(), chunk_size=256, output_path=out)
    with pytest.raises(KeyboardInterrupt):
        model.encode(_interrupt_after(corpus(1000), 600), chunk_size=256, output_path=out)
    if existing:
        np.testing.assert_array_equal(np.load(out), np.arange(3.0))  # the old file, untouched
        assert os.listdir(tmp_path) == ["emb.npy"]
    else:
        assert os.listdir(tmp_path) == []


def _interrupt_after(texts, n):
    for i, t in enumerate(texts):
        if i == n:
            raise KeyboardInterrupt
        yield t


# The generator above, for the subprocesses (importing this module there would import torch and pytest).
CORPUS_SOURCE = textwrap.indent(f"WORDS = {WORDS!r}\n" + inspect.getsource(corpus), " " * 8).lstrip()


def _run_python(code: str, timeout: int = 400, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "JAXST_COMPILATION_CACHE": "0", **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=os.path.dirname(__file__))


def test_killed_process_leaves_nothing_that_loads(folder, tmp_path):
    out = tmp_path / "emb.npy"
    code = f"""
        import os, signal
        from jaxst import SentenceTransformer
        {CORPUS_SOURCE}

        def killed_midway():
            for i, t in enumerate(corpus(5000)):
                if i == 3000:  # two chunks written, the third being read
                    os.kill(os.getpid(), signal.SIGKILL)
                yield t

        SentenceTransformer({str(folder)!r}).encode(killed_midway(), chunk_size=1024, output_path={str(out)!r})
    """
    result = _run_python(code)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not out.exists()
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".emb.npy.") and leftovers[0].endswith(".tmp")
    leftover = tmp_path / leftovers[0]
    assert leftover.stat().st_size > 2 * 1024 * 384 * 4  # rows were written ...
    with pytest.raises(ValueError):  # ... but no .npy header: it loads as nothing
        np.load(leftover)


# 200,000 texts of 384 float32 dims are 293 MiB; streamed, memory holds one chunk (16,384 rows: 24 MiB of
# embeddings plus the batch buffers). Peak RSS may grow by at most this much from 20,000 to 200,000 texts.
RSS_GROWTH_BOUND_MIB = 64


def test_streaming_200k_texts_keeps_memory_bounded(folder, tmp_path):
    code = f"""
        import json, resource
        import numpy as np
        from jaxst import SentenceTransformer
        {CORPUS_SOURCE}

        model = SentenceTransformer({str(folder)!r})
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
        small = model.encode(corpus(20_000), batch_size=256, output_path={str(tmp_path / "small.npy")!r})
        after_small = peak()
        big = model.encode(corpus(200_000), batch_size=256, output_path={str(tmp_path / "big.npy")!r})
        after_big = peak()
        same_first_chunk = bool(np.array_equal(big[:16_384], small[:16_384]))  # the same texts, batched alike
        prefix_diff = float(np.abs(big[:20_000] - small).max())  # later chunks: other batch neighbours
        in_memory = model.encode(list(corpus(20_000)), batch_size=256)
        equal = bool(np.array_equal(in_memory, small))
        print(json.dumps(dict(after_small=after_small, after_big=after_big, shape=list(big.shape),
                              same_first_chunk=same_first_chunk, prefix_diff=prefix_diff, equal=equal)))
    """
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["shape"] == [200_000, 384]
    assert report["equal"] and report["same_first_chunk"]  # bit for bit what the in-memory encode returns
    assert report["prefix_diff"] < 1e-6
    growth = report["after_big"] - report["after_small"]
    assert growth < RSS_GROWTH_BOUND_MIB, f"peak RSS grew {growth:.0f} MiB from 20k to 200k texts"
    assert np.load(tmp_path / "big.npy", mmap_mode="r").shape == (200_000, 384)
