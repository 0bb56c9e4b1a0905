"""The corpus job (``jaxst.corpus.encode_corpus`` / ``jaxst encode-corpus``): shards equal ``encode``, killed runs
resume to the uninterrupted output, changed settings or input are refused, two processes under
``jax.distributed`` give the one-process output, and memory does not grow with the corpus."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_stsb, unique_sentences
from test_distributed import free_port

from jaxst import SentenceTransformer
from jaxst.corpus import CorpusError, encode_corpus, read_chunks, read_corpus, read_manifest
from jaxst.quantization import quantize_embeddings

N = 2000
SHARD = 150  # 14 shards, the last one short


@pytest.fixture(scope="module")
def texts() -> list[str]:
    sentences = unique_sentences(read_stsb("stsb-en-test.csv"))
    assert len(sentences) >= N
    return sentences[:N]


@pytest.fixture(scope="module")
def folder(make_tiny_st):
    return make_tiny_st(prompts={"query": "query: ", "document": "passage: "})


@pytest.fixture(scope="module")
def model(folder):
    return SentenceTransformer(str(folder))


@pytest.fixture(scope="module")
def reference(model, texts) -> np.ndarray:
    return model.encode(texts, batch_size=32)


def write_jsonl(path: Path, texts: list[str], ids: list | None = None) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"text": text, **({"doc_id": ids[i]} if ids else {})}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory, texts) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", texts)


def cli(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxst", "encode-corpus", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def test_every_input_kind_gives_encode_row_for_row(model, texts, reference, tmp_path):
    """JSONL, CSV, Parquet and a saved datasets folder, ids from a column or row numbers: the shards hold
    ``model.encode``'s embeddings within 1e-6, in input order, with their ids."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"doc-{i:05d}" for i in range(N)]
    inputs = {"jsonl": write_jsonl(tmp_path / "c.jsonl", texts, ids)}
    with open(tmp_path / "c.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["doc_id", "text"])
        writer.writerows(zip(ids, texts))
    inputs["csv"] = tmp_path / "c.csv"
    half = N // 2  # two Parquet files through one glob: rows numbered across files
    pq.write_table(pa.table({"doc_id": ids[:half], "text": texts[:half]}), tmp_path / "p-0.parquet")
    pq.write_table(pa.table({"doc_id": ids[half:], "text": texts[half:]}), tmp_path / "p-1.parquet")
    inputs["parquet"] = tmp_path / "p-*.parquet"
    datasets.Dataset.from_dict({"doc_id": ids, "text": texts}).save_to_disk(tmp_path / "ds")
    inputs["datasets"] = tmp_path / "ds"
    for kind, source in inputs.items():
        out = tmp_path / f"out-{kind}"
        summary = encode_corpus(model, source, out, id_column="doc_id", shard_size=SHARD, show_progress_bar=False)
        assert summary["complete"] and summary["texts"] == N and summary["shards"] == -(-N // SHARD), (kind, summary)
        got_ids, emb = read_corpus(out)
        assert list(got_ids) == ids, kind
        assert emb.shape == reference.shape and emb.dtype == np.float32
        np.testing.assert_allclose(emb, reference, atol=1e-6, rtol=0, err_msg=kind)
        manifest = read_manifest(out)
        assert manifest["rows"] == N and [s["rows"] for s in manifest["shards"]][-1] == N - (N // SHARD) * SHARD
        tokens = sum(len(e.ids) for e in model.tokenizer.encode_ids(texts))
        assert manifest["tokens"] == summary["tokens"] == tokens
    # without an id column, the ids are the row numbers
    encode_corpus(model, tmp_path / "c.jsonl", tmp_path / "numbered", shard_size=SHARD, show_progress_bar=False)
    got_ids, emb = read_corpus(tmp_path / "numbered")
    assert got_ids.dtype == np.int64 and list(got_ids) == list(range(N))
    np.testing.assert_allclose(emb, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_options_and_precisions_equal_encode(model, texts, jsonl, tmp_path, precision):
    """prompt_name, normalization, Matryoshka truncation and a quantized precision: what ``encode`` gives with
    the same options; int8 with ranges from the corpus' first 1000 texts, kept in the manifest."""
    options = dict(prompt_name="document", normalize_embeddings=True, truncate_dim=16)
    encode_corpus(model, jsonl, tmp_path, shard_size=SHARD, precision=precision, show_progress_bar=False, **options)
    _, emb = read_corpus(tmp_path)
    floats = model.encode(texts, **options)
    calibration = floats[:1000] if precision == "int8" else None
    expected = quantize_embeddings(floats, precision, calibration_embeddings=calibration)
    assert emb.dtype == expected.dtype and emb.shape == expected.shape
    np.testing.assert_array_equal(emb, expected)
    manifest = read_manifest(tmp_path)
    assert manifest["settings"]["prompt"] == "passage: " and manifest["settings"]["dimension"] == 16
    assert (manifest.get("ranges") is not None) == (precision == "int8")


def shards_on_disk(out: Path) -> int:
    return len(list(out.glob("shard-*.parquet")))


def test_killed_runs_resume_to_the_uninterrupted_output(folder, model, texts, reference, jsonl, tmp_path):
    """``kill -9`` at random moments while shards are being written, three times, then the same command again:
    the output equals an uninterrupted run's exactly, no temp file is left, and each restart skipped the
    shards already there."""
    out = tmp_path / "out"
    command = [jsonl, "-o", out, "--model", folder, "--shard-size", SHARD, "--quiet"]
    rng = random.Random(35)
    for at_least in (2, 6, 10):
        process = subprocess.Popen([sys.executable, "-m", "jaxst", "encode-corpus", *map(str, command)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while shards_on_disk(out) < at_least and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next shard
        assert process.poll() is None, f"the job ended before it was killed: {process.stderr.read()}"
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert at_least <= shards_on_disk(out) < -(-N // SHARD)
    before = shards_on_disk(out)
    done = cli(*command)
    assert done.returncode == 0, done.stderr
    assert f"{before} already there" in done.stderr
    ids, emb = read_corpus(out)
    assert list(ids) == list(range(N))
    uninterrupted = tmp_path / "uninterrupted"
    encode_corpus(model, jsonl, uninterrupted, shard_size=SHARD, show_progress_bar=False)
    np.testing.assert_array_equal(emb, read_corpus(uninterrupted)[1])
    np.testing.assert_allclose(emb, reference, atol=1e-6, rtol=0)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".jaxst.tmp")]


def test_changed_settings_model_or_input_are_refused(model, make_tiny_st, texts, jsonl, tmp_path):
    out = tmp_path / "out"
    encode_corpus(model, jsonl, out, shard_size=SHARD, show_progress_bar=False)
    first = read_corpus(out)[1]
    with pytest.raises(CorpusError, match="normalize_embeddings: False in the manifest, True now"):
        encode_corpus(model, jsonl, out, shard_size=SHARD, normalize_embeddings=True, show_progress_bar=False)
    with pytest.raises(CorpusError, match="shard_size"):
        encode_corpus(model, jsonl, out, shard_size=SHARD + 1, show_progress_bar=False)
    other = SentenceTransformer(str(make_tiny_st(pooling_mode="cls")))
    with pytest.raises(CorpusError, match="model_fingerprint"):
        encode_corpus(other, jsonl, out, shard_size=SHARD, show_progress_bar=False)
    # an edit that keeps the file's size is caught by the shards' digests of their rows
    edited, row = list(texts), SHARD + 3
    assert edited[row][-1].isascii()
    edited[row] = edited[row][:-1] + ("x" if edited[row][-1] != "x" else "y")
    source, partial = tmp_path / "edited.jsonl", tmp_path / "partial"
    encode_corpus(model, write_jsonl(source, edited), partial, shard_size=SHARD, show_progress_bar=False)
    write_jsonl(source, texts)  # back to the original rows: the file's size is the same
    with pytest.raises(CorpusError, match="shard-000001.parquet was written from other input rows"):
        encode_corpus(model, source, partial, shard_size=SHARD, show_progress_bar=False)
    np.testing.assert_array_equal(read_corpus(out)[1], first)  # the refused runs changed nothing
    # the CLI says it in one line
    result = cli(jsonl, "-o", out, "--model", make_tiny_st(pooling_mode="cls"), "--shard-size", SHARD, "--quiet")
    assert result.returncode == 2 and "jaxst: error:" in result.stderr and "model_fingerprint" in result.stderr


def test_bad_input_is_named(model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl: row 2: column 'text' is int"):
        encode_corpus(model, bad, tmp_path / "o1", show_progress_bar=False)
    bad.write_text('{"body": "fine"}\n')
    with pytest.raises(CorpusError, match="line 1 has no 'text'; its keys: body"):
        encode_corpus(model, bad, tmp_path / "o2", show_progress_bar=False)
    bad.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": "2"}\n')
    with pytest.raises(CorpusError, match="all integers or all strings"):
        encode_corpus(model, bad, tmp_path / "o3", id_column="id", show_progress_bar=False)
    with pytest.raises(CorpusError, match="no input file matches"):
        encode_corpus(model, tmp_path / "missing-*.jsonl", tmp_path / "o4", show_progress_bar=False)
    (tmp_path / "x.txt").write_text("a\n")
    with pytest.raises(CorpusError, match="unknown input kind '.txt'"):
        encode_corpus(model, tmp_path / "x.txt", tmp_path / "o5", show_progress_bar=False)


def _distributed(folder, jsonl, out, port) -> list[subprocess.Popen]:
    """The same encode-corpus command in 2 local processes under jax.distributed."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return [subprocess.Popen([sys.executable, "-m", "jaxst", "encode-corpus", str(jsonl), "-o", str(out), "--model",
                              str(folder), "--shard-size", str(SHARD), "--quiet", "--coordinator-address",
                              f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(2)]


def _same_as_one_process(model, jsonl, out, tmp_path) -> None:
    one = tmp_path / "one"
    if not one.exists():
        encode_corpus(model, jsonl, one, shard_size=SHARD, show_progress_bar=False)
    ids, emb = read_corpus(out)
    assert list(ids) == list(range(N))
    # within 1e-6, not bit for bit: XLA compiles a process under jax.distributed differently (last-bit differences)
    np.testing.assert_allclose(emb, read_corpus(one)[1], atol=1e-6, rtol=0)
    assert read_manifest(out)["shards"] == read_manifest(one)["shards"]


def test_two_processes_under_jax_distributed_give_the_one_process_output(folder, model, jsonl, tmp_path):
    """The same command twice with --coordinator-address / --num-processes / --process-id: each process embeds
    every other shard; together they write the one-process output, no row missing or repeated."""
    out = tmp_path / "out"
    processes = _distributed(folder, jsonl, out, free_port())
    results = [p.communicate(timeout=600) for p in processes]
    for p, (_, err) in zip(processes, results):
        assert p.returncode == 0, err
    shards = -(-N // SHARD)
    written = sorted(int(err.split(" written")[0].rsplit(" ", 1)[-1]) for _, err in results)
    assert written == [shards // 2, shards - shards // 2], [err for _, err in results]
    _same_as_one_process(model, jsonl, out, tmp_path)


def test_a_distributed_process_killed_and_the_job_restarted_loses_nothing(folder, model, jsonl, tmp_path):
    """Process 1 of 2 is SIGKILLed once it has written a shard, and process 0 ten seconds later if it is still
    running (a jax.distributed job that loses a process is restarted whole); the same command started again on
    both writes only the missing shards, and the output is the one-process output."""
    out = tmp_path / "out"
    processes = _distributed(folder, jsonl, out, free_port())
    deadline = time.monotonic() + 300
    while not any(int(p.stem.split("-")[1]) % 2 == 1 for p in out.glob("shard-*.parquet")):
        assert time.monotonic() < deadline and processes[1].poll() is None, "process 1 wrote no shard"
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGKILL)
    try:
        processes[0].communicate(timeout=10)
    except subprocess.TimeoutExpired:  # still embedding, or waiting on its lost peer: the job is restarted whole
        processes[0].kill()
        processes[0].communicate()
    processes[1].communicate()
    before = {p.name for p in out.glob("shard-*.parquet")}
    assert 0 < len(before) < -(-N // SHARD)  # the kill left the job unfinished
    assert not read_manifest(out).get("complete")
    restarted = _distributed(folder, jsonl, out, free_port())
    results = [p.communicate(timeout=600) for p in restarted]
    for p, (_, err) in zip(restarted, results):
        assert p.returncode == 0, err
    skipped = sum(int(err.split(" already there")[0].rsplit(" ", 1)[-1]) for _, err in results)
    assert skipped == len(before), [err for _, err in results]
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*"))
    _same_as_one_process(model, jsonl, out, tmp_path)


MEMORY_WORKER = textwrap.dedent("""
    import json, resource, sys
    from jaxst import SentenceTransformer
    from jaxst.corpus import encode_corpus

    folder, source, out = sys.argv[1:4]
    model = SentenceTransformer(folder)
    model.encode(["warm up"] * 256, batch_size=256)
    def rss():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
    start = rss()
    summary = encode_corpus(model, source, out, shard_size=2000, batch_size=256, show_progress_bar=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"start": start, "peak": peak, "texts": summary["texts"]}))
""")


def test_memory_does_not_grow_with_the_corpus(make_tiny_st, tmp_path):
    """200,000 streamed texts of ~300 characters (with their ids about 90 MB of Python objects, which a job
    holding its corpus would keep) grow the process' peak memory no more than 20,000 of them do, within 40 MB.
    The model reads 8 tokens of each (what is measured is the job's memory, not the model's speed)."""
    folder = make_tiny_st(max_seq_length=8)
    words = unique_sentences(read_stsb("stsb-en-test.csv"))
    rng = random.Random(0)
    peaks = {}
    for n in (20_000, 200_000):
        source = tmp_path / f"c{n}.jsonl"
        with open(source, "w") as f:
            for i in range(n):
                f.write(json.dumps({"text": f"{i} " + " ".join(rng.choices(words, k=5))[:300]}) + "\n")
        worker = [sys.executable, "-c", MEMORY_WORKER, str(folder), str(source), str(tmp_path / f"o{n}")]
        result = subprocess.run(worker, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["texts"] == n
        peaks[n] = report["peak"] - report["start"]
        source.unlink()
    assert peaks[200_000] - peaks[20_000] < 40 * 2**20, peaks


def test_long_texts_are_cut_into_token_windows(folder, model, texts, tmp_path):
    """``chunk_tokens`` / ``chunk_overlap``: each chunk's span is the window of the transformers tokenizer's
    offsets (computed here on their own), its row is ``model.encode`` of that span's text, and mean pooling
    gives the mean of a document's chunk vectors; the CLI writes the same."""
    from transformers import AutoTokenizer

    documents = [" ".join(texts[i : i + 1 + i % 13]) for i in range(0, 240, 4)]  # 1 to 13 sentences each
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    size, overlap = 40, 12
    encode_corpus(model, source, tmp_path / "chunked", shard_size=25, chunk_tokens=size, chunk_overlap=overlap,
                  show_progress_bar=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    expected_owner, expected_spans = [], []
    for d, document in enumerate(documents):
        offsets = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts = [0] if len(offsets) <= size else list(range(0, len(offsets) - overlap, size - overlap))
        for start in starts:
            last = min(start + size, len(offsets)) - 1
            expected_spans.append((0, len(document)) if len(offsets) <= size
                                  else (offsets[start][0], offsets[last][1]))
            expected_owner.append(d)
    assert max(expected_owner.count(d) for d in range(len(documents))) >= 4  # long documents were cut
    ids, emb = read_corpus(tmp_path / "chunked")
    table = [read_chunks(tmp_path / "chunked" / s["file"]) for s in read_manifest(tmp_path / "chunked")["shards"]]
    spans = [(int(a), int(b)) for t in table for a, b in zip(t["char_start"], t["char_end"])]
    chunk_index = [int(c) for t in table for c in t["chunk"]]
    assert list(ids) == expected_owner and spans == expected_spans
    assert chunk_index == [expected_owner[:i].count(o) for i, o in enumerate(expected_owner)]
    pieces = [documents[o][a:b] for o, (a, b) in zip(expected_owner, expected_spans)]
    direct = model.encode(pieces)
    np.testing.assert_allclose(emb, direct, atol=1e-6, rtol=0)

    result = cli(source, "-o", tmp_path / "pooled", "--model", folder, "--shard-size", 25, "--chunk-tokens", size,
                 "--overlap", overlap, "--chunk-pooling", "mean", "--normalize", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"{len(documents)} texts, {len(documents)} chunks" in result.stderr
    ids, pooled = read_corpus(tmp_path / "pooled")
    owners = np.asarray(expected_owner)
    means = np.stack([direct[owners == d].mean(0) for d in range(len(documents))])
    assert list(ids) == list(range(len(documents)))
    np.testing.assert_allclose(pooled, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6, rtol=0)
    with pytest.raises(CorpusError, match="more than the model's window"):
        encode_corpus(model, source, tmp_path / "too-long", chunk_tokens=model.max_seq_length)


def test_late_chunking_pools_token_states_of_one_forward(folder, model, texts, tmp_path):
    """Late chunking: each document (cut into window-sized pieces where it is longer than the model's 64
    tokens) is read once by sentence-transformers (``output_value="token_embeddings"``, the oracle here), its
    content tokens' offsets come from transformers' tokenizer, and each chunk is the mean of its window's token
    states: what the corpus job wrote, within 1e-6."""
    from sentence_transformers import SentenceTransformer as Reference
    from transformers import AutoTokenizer

    documents = [" ".join(texts[i : i + 1 + i % 9]) for i in range(0, 120, 3)] + [""]
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    size, overlap = 20, 5
    summary = encode_corpus(model, source, tmp_path / "late", chunk_tokens=size, chunk_overlap=overlap,
                            late_chunking=True, prompt_name="document", show_progress_bar=False)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    reference = Reference(str(folder), device="cpu")
    prompt, window = "passage: ", 64 - len(tokenizer("passage: ")["input_ids"])
    expected, pieces = [], []
    for d, document in enumerate(documents):
        offsets = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        starts = [0] if len(offsets) <= window else list(range(0, len(offsets), window))
        for start in starts:
            a = 0 if start == 0 else offsets[start][0]
            b = len(document) if start + window >= len(offsets) else offsets[start + window - 1][1]
            pieces.append((d, a, document[a:b]))
    states = reference.encode([prompt + p for _, _, p in pieces], output_value="token_embeddings")
    for (d, a, piece), state in zip(pieces, states):
        e = tokenizer(prompt + piece, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True,
                      max_length=64)
        content = [t for t, (special, (s, _)) in enumerate(zip(e["special_tokens_mask"], e["offset_mapping"]))
                   if not special and s >= len(prompt)]
        state = state.numpy()
        if not content:
            expected.append((d, a, a, state.mean(0)))
        for first in range(0, max(len(content) - overlap, 1), size - overlap):
            chosen = content[first : first + size]
            span = (e["offset_mapping"][chosen[0]][0], e["offset_mapping"][chosen[-1]][1]) if chosen else None
            if chosen:
                expected.append((d, a + span[0] - len(prompt), a + span[1] - len(prompt), state[chosen].mean(0)))
    ids, emb = read_corpus(tmp_path / "late")
    table = [read_chunks(tmp_path / "late" / s["file"]) for s in read_manifest(tmp_path / "late")["shards"]]
    got = [(int(i), int(a), int(b)) for t in table for i, a, b in zip(t["id"], t["char_start"], t["char_end"])]
    assert got == [(d, a, b) for d, a, b, _ in expected]
    assert summary["chunks"] == len(expected) > 2 * len(documents)
    np.testing.assert_allclose(emb, np.stack([v for *_, v in expected]), atol=1e-6, rtol=0)


def test_an_index_from_the_shards_and_search_index(folder, model, make_tiny_st, texts, jsonl, tmp_path):
    """``build_index`` adds the shards one by one: its hits equal an index of the whole matrix added at once
    (float32 and ubinary), and ``jaxst search --index`` prints them; another model's queries are refused."""
    from jaxst import EmbeddingIndex
    from jaxst.corpus import build_index

    out = tmp_path / "out"
    encode_corpus(model, jsonl, out, id_column=None, shard_size=SHARD, show_progress_bar=False)
    ids, emb = read_corpus(out)
    queries = ["A man is playing a guitar.", "Stock markets fell.", "A dog runs on the grass."]
    for precision in ("float32", "ubinary"):
        whole = EmbeddingIndex(emb.shape[1], precision=precision)
        whole.add(emb, ids=ids.tolist())
        hits = build_index(out, precision=precision).search(queries, top_k=5, model=model)
        expected = whole.search(queries, top_k=5, model=model)
        for row, ref in zip(hits, expected):
            assert len({h["id"] for h in row}) == len(row) == 5
            assert {h["id"] for h in row} == {h["id"] for h in ref}, precision
            scores = {r["id"]: r["score"] for r in ref}
            assert all(abs(scores[h["id"]] - h["score"]) < 1e-5 for h in row)
    result = subprocess.run([sys.executable, "-m", "jaxst", "search", *queries[:1], "--index", str(out), "--model",
                             str(folder), "--top-k", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)[0]
    best = build_index(out).search(queries[:1], top_k=3, model=model)[0]
    assert [h["id"] for h in printed] == [h["id"] for h in best]
    np.testing.assert_allclose([h["score"] for h in printed], [h["score"] for h in best], atol=1e-5)
    other = make_tiny_st(pooling_mode="cls")
    result = subprocess.run([sys.executable, "-m", "jaxst", "search", "x", "--index", str(out), "--model", str(other)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "was embedded with the model" in result.stderr


def test_sparse_and_multi_vector_corpora_equal_encode(splade_folder, colbert_folder, texts, jsonl, tmp_path):
    """A SparseEncoder's shards are CSR matrices (``indices`` / ``values`` lists) equal to ``encode``'s active
    dimensions (each shard's texts encoded together); a MultiVectorEncoder's hold each document's token matrix,
    equal to ``encode`` (as documents) within 1e-6; the CLI detects the family from the model's files."""
    from jaxst import MultiVectorEncoder, SparseEncoder
    from jaxst.sparse import stored_rows

    sparse = SparseEncoder(str(splade_folder))
    summary = encode_corpus(sparse, jsonl, tmp_path / "sparse", shard_size=700, show_progress_bar=False)
    assert summary["complete"] and summary["shards"] == 3
    ids, csr = read_corpus(tmp_path / "sparse")
    assert list(ids) == list(range(N)) and csr["shape"] == (N, sparse.get_embedding_dimension())
    assert 5 < np.diff(csr["indptr"]).mean() < csr["shape"][1] / 4
    # encoded shard by shard as the job does (the same batches: whole-corpus batches differ in the last bits)
    row = 0
    for start in range(0, N, 700):
        values, indices, dim = stored_rows(sparse.encode(texts[start : start + 700], task="document"))
        for v, i in zip(np.asarray(values), np.asarray(indices)):
            keep = (i < dim) & (v != 0)
            a, b = csr["indptr"][row], csr["indptr"][row + 1]
            order = np.argsort(i[keep])
            assert csr["indices"][a:b].tolist() == i[keep][order].tolist(), row
            np.testing.assert_allclose(csr["values"][a:b], v[keep][order], atol=1e-6, rtol=0)
            row += 1
    assert row == N
    with pytest.raises(CorpusError, match="precision, normalize_embeddings and truncate_dim do not apply"):
        encode_corpus(sparse, jsonl, tmp_path / "refused", precision="int8", show_progress_bar=False)

    colbert = MultiVectorEncoder(str(colbert_folder))
    result = cli(jsonl, "-o", tmp_path / "mv", "--model", colbert_folder, "--shard-size", 700, "--quiet")
    assert result.returncode == 0, result.stderr
    ids, matrices = read_corpus(tmp_path / "mv")
    expected = [m for i in range(0, N, 700)
                for m in colbert.encode(texts[i : i + 700], task="document", convert_to_numpy=True)]
    assert list(ids) == list(range(N)) and len(matrices) == len(expected)
    assert [m.shape for m in matrices] == [e.shape for e in expected]
    np.testing.assert_allclose(np.concatenate(matrices), np.concatenate(expected), atol=1e-6, rtol=0)
