"""The ``jaxst`` command line, run in-process through ``jaxst.cli.main`` with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxst import cli
from jaxst.io.npy import NpyStreamWriter

CORPUS = [
    "A man is eating a plate of spaghetti.",
    "The new movie is awesome and the actors were great.",
    "The stock market fell sharply on Monday.",
    "A cheetah is running behind its prey.",
    "It will rain heavily in the mountains tomorrow.",
]
FOOD = 0

# An empty text in the middle, unicode, punctuation and a long line.
TEXTS = [
    "A man is eating food.",
    "",
    "naïve café résumé — ünïcödé",
    "What is the capital of France?",
    " leading and trailing spaces ",
    " ".join(["This sentence is repeated to be longer than the model's maximum sequence length."] * 12),
]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def cli_model():
    """The model the CLI uses, loaded once (``cli.load_model`` caches it for the whole process)."""
    return cli.load_model(cli.DEFAULT_MODEL)


@pytest.fixture(scope="module")
def reference(jx_minilm):
    """An independently loaded ``SentenceTransformer("all-MiniLM-L6-v2")`` to compare against."""
    return jx_minilm


def write_lines(path, lines, trailing_newline=True):
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


def assert_one_line_error(err: str, *needles: str):
    assert err.startswith("jaxst: error: "), err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------ input lines


@pytest.mark.parametrize(
    "data, expected",
    [
        ("a\nb\n", ["a", "b"]),
        ("a\nb", ["a", "b"]),
        ("a\n\nb\n", ["a", "", "b"]),
        ("a\n\n", ["a", ""]),
        ("\n", [""]),
        ("", []),
        ("  x  \r\ny\r\n", ["  x  ", "y"]),
    ],
)
def test_read_lines_stdin(monkeypatch, data, expected):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode()), encoding="utf-8"))
    assert cli.read_lines("-") == expected


def test_read_lines_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("één\n\ntwo\r\n".encode())
    assert cli.read_lines(str(path)) == ["één", "", "two"]


# ------------------------------------------------------------------------------------ encode


def test_encode_file(tmp_path, capsys, cli_model, reference):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out)]) == 0
    emb = np.load(out)
    expected = reference.encode(TEXTS)
    assert emb.shape == (len(TEXTS), 384) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, atol=1e-6, rtol=0)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"{len(TEXTS)} texts" in captured.err and "(6, 384)" in captured.err and str(out) in captured.err
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "texts.txt"]  # no temporary file left


@pytest.mark.parametrize("args", [[], ["-"]])
def test_encode_stdin(tmp_path, monkeypatch, capsys, cli_model, reference, args):
    texts = ["The cat sits outside", "", "A man is playing guitar"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts)))  # no trailing newline
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", *args, "--output", str(out), "--batch-size", "2"]) == 0
    np.testing.assert_allclose(np.load(out), reference.encode(texts), atol=1e-6, rtol=0)
    assert "3 texts from stdin" in capsys.readouterr().err


def test_encode_normalize(tmp_path, cli_model, reference):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out), "--normalize"]) == 0
    emb = np.load(out)
    np.testing.assert_allclose(emb, reference.encode(TEXTS, normalize_embeddings=True), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("precision, dtype", [("int8", np.int8), ("ubinary", np.uint8)])
def test_encode_precision(tmp_path, capsys, cli_model, reference, precision, dtype):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out), "--precision", precision]) == 0
    emb = np.load(out)
    expected = reference.encode(TEXTS, precision=precision)
    assert emb.dtype == dtype == expected.dtype
    np.testing.assert_array_equal(emb, expected)
    assert str(np.dtype(dtype)) in capsys.readouterr().err


def test_encode_prompt_name(tmp_path, monkeypatch, cli_model, reference):
    monkeypatch.setitem(cli_model.prompts, "query", "query: ")
    src = write_lines(tmp_path / "texts.txt", TEXTS[:3])
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out), "--prompt-name", "query"]) == 0
    expected = reference.encode(["query: " + t for t in TEXTS[:3]])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6, rtol=0)


def test_encode_progress_bar_only_for_many_texts(tmp_path, monkeypatch, cli_model):
    seen = []

    def fake_encode(texts, **kwargs):
        seen.append(kwargs["show_progress_bar"])
        return np.zeros((len(texts), 4), np.float32)

    monkeypatch.setattr(cli_model, "encode", fake_encode)
    for n in (256, 257):
        src = write_lines(tmp_path / "texts.txt", [f"text {i}" for i in range(n)])
        assert cli.main(["encode", str(src), "-o", str(tmp_path / "e.npy")]) == 0
    assert seen == [False, True]


# ------------------------------------------------------------------------------------ atomic write


@pytest.mark.parametrize("exc, code", [(OSError(28, "No space left on device"), 2), (KeyboardInterrupt(), 130)])
@pytest.mark.parametrize("existing", [False, True])
def test_encode_atomic_write(tmp_path, monkeypatch, capsys, cli_model, exc, code, existing):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "emb.npy"
    if existing:
        out.write_bytes(b"previous contents")

    def failing_append(self, rows):
        self._file.write(b"\x93NUMPY partial rows")  # something was written before the failure
        raise exc

    monkeypatch.setattr(NpyStreamWriter, "append", failing_append)
    assert cli.main(["encode", str(src), "-o", str(out)]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert_one_line_error(err, "No space left on device")
    if existing:
        assert out.read_bytes() == b"previous contents"
    else:
        assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["texts.txt"] + (["emb.npy"] if existing else []))


def test_encode_failure_before_write_leaves_nothing(tmp_path, monkeypatch, cli_model):
    def failing_encode(texts, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_model, "encode", failing_encode)
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "emb.npy")]) == 130
    assert os.listdir(tmp_path) == ["texts.txt"]


def test_encode_writes_exact_path_with_usual_permissions(tmp_path, cli_model):
    src = write_lines(tmp_path / "texts.txt", TEXTS[:2])
    out = tmp_path / "embeddings.bin"  # np.save(path) would append .npy; the CLI writes what it is told
    assert cli.main(["encode", str(src), "-o", str(out)]) == 0
    assert np.load(out).shape == (2, 384)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------ search


@pytest.fixture
def corpus_file(tmp_path):
    # blank and whitespace-only lines are not documents
    return write_lines(tmp_path / "corpus.txt", [CORPUS[0], "", *CORPUS[1:3], "   ", *CORPUS[3:]])


def test_search_best_hit(corpus_file, capsys, cli_model, reference):
    from jaxst.util import cos_sim

    query = "A man is eating pasta."
    assert cli.main(["search", query, "--corpus", str(corpus_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Query: {query}"
    assert len(lines) == 1 + len(CORPUS)  # top-k 5, corpus of 5
    best_score, best_text = lines[1].strip().split("  ", 1)
    assert best_text == CORPUS[FOOD]
    expected = np.asarray(cos_sim(reference.encode([query]), reference.encode(CORPUS)))[0]
    assert best_score == f"{expected[FOOD]:.4f}"
    assert float(best_score) == pytest.approx(float(expected.max()), abs=1e-4)
    scores = [float(line.split()[0]) for line in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    for line in lines[1:]:
        score, text = line.strip().split("  ", 1)
        assert line.startswith("  ")
        assert score == f"{expected[CORPUS.index(text)]:.4f}"


def test_search_top_k_and_several_queries(corpus_file, capsys, cli_model):
    queries = ["A man is eating pasta.", "Will it be sunny tomorrow?"]
    assert cli.main(["search", *queries, "--corpus", str(corpus_file), "--top-k", "2"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2
    for query, block, best in zip(queries, blocks, (CORPUS[0], CORPUS[4]), strict=True):
        lines = block.splitlines()
        assert lines[0] == f"Query: {query}" and len(lines) == 3
        assert lines[1].endswith(f"  {best}")


def test_search_json(corpus_file, capsys, cli_model, reference):
    from jaxst.util import cos_sim

    queries = ["A man is eating pasta.", "A leopard chases an antelope."]
    assert cli.main(["search", *queries, "--corpus", str(corpus_file), "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 2 and all(len(hits) == 3 for hits in result)
    expected = np.asarray(cos_sim(reference.encode(queries), reference.encode(CORPUS)))
    for q, hits in enumerate(result):
        for hit in hits:
            assert set(hit) == {"corpus_id", "score", "text", "line"}
            assert hit["text"] == CORPUS[hit["corpus_id"]]
            assert hit["score"] == pytest.approx(float(expected[q, hit["corpus_id"]]), abs=1e-5)
        assert [h["corpus_id"] for h in hits] == list(np.argsort(-expected[q])[:3])
    assert result[0][0]["corpus_id"] == FOOD and result[0][0]["line"] == 1
    assert result[1][0]["text"] == CORPUS[3] and result[1][0]["line"] == 6  # line numbers count blank lines


def test_search_score_function_follows_model():
    from jaxst import util

    assert cli._score_function("cosine") is util.cos_sim
    assert cli._score_function("dot") is util.dot_score


def test_search_uses_dot_score_for_dot_models(corpus_file, monkeypatch, capsys, cli_model, reference):
    from jaxst.util import dot_score

    monkeypatch.setattr(cli_model, "similarity_fn_name", "dot")
    query = "A man is eating pasta."
    assert cli.main(["search", query, "--corpus", str(corpus_file), "-k", "1", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0][0]
    expected = np.asarray(dot_score(reference.encode([query]), reference.encode(CORPUS)))[0]
    assert hit["corpus_id"] == int(expected.argmax())
    assert hit["score"] == pytest.approx(float(expected.max()), abs=1e-5)


# ------------------------------------------------------------------------------------ errors


def test_missing_input_file(tmp_path, capsys):
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(tmp_path / "nope.txt"), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, "nope.txt", "does not exist")
    assert captured.out == "" and not out.exists()


def test_missing_corpus_file(tmp_path, capsys):
    assert cli.main(["search", "q", "--corpus", str(tmp_path / "nope.txt")]) == 2
    assert_one_line_error(capsys.readouterr().err, "nope.txt")


@pytest.mark.parametrize("content", ["", "\n\n", "  \n\t\n"])
def test_empty_corpus(tmp_path, capsys, content):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(content)
    assert cli.main(["search", "q", "--corpus", str(corpus)]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, "corpus")
    assert captured.out == ""


def test_empty_encode_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli.main(["encode", "-o", str(tmp_path / "emb.npy")]) == 2
    assert_one_line_error(capsys.readouterr().err, "no texts")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["encode", "IN", "-o", "OUT", "--precision", "float16"], "--precision"),
        (["encode", "IN"], "-o/--output"),
        (["encode", "IN", "-o", "OUT", "--batch-size", "0"], "--batch-size"),
        (["search", "q", "--corpus", "IN", "--top-k", "-1"], "--top-k"),
        (["search", "--corpus", "IN"], "QUERY"),
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
    ],
)
def test_usage_errors(tmp_path, capsys, argv, needle):
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    argv = [str(src) if a == "IN" else str(tmp_path / "out.npy") if a == "OUT" else a for a in argv]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, needle)
    assert captured.out == ""
    assert not (tmp_path / "out.npy").exists()


def test_bad_model(tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    missing = tmp_path / "no-such-model"
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "out.npy"), "--model", str(missing)]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot load model", "no-such-model")
    not_a_model = tmp_path / "empty-folder"
    not_a_model.mkdir()
    assert cli.main(["search", "q", "--corpus", str(src), "--model", str(not_a_model)]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot load model")
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "out.npy"), "--model", "no-org/no-such-model-xyz"]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot load model")


def test_unknown_prompt_name(tmp_path, capsys, cli_model):
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "out.npy"), "--prompt-name", "nope"]) == 2
    assert_one_line_error(capsys.readouterr().err, "nope")
    assert os.listdir(tmp_path) == ["in.txt"]


def test_int8_of_a_single_text_is_an_error(tmp_path, capsys, cli_model):
    src = write_lines(tmp_path / "in.txt", ["only one"])
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "out.npy"), "--precision", "int8"]) == 2
    assert_one_line_error(capsys.readouterr().err, "single embedding")


def test_bad_output_location(tmp_path, capsys):
    src = write_lines(tmp_path / "in.txt", ["a", "b"])
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "missing-dir" / "out.npy")]) == 2
    assert_one_line_error(capsys.readouterr().err, "missing-dir")
    assert cli.main(["encode", str(src), "-o", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "is a directory")


def test_help_exits_zero(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "encode" in out and "search" in out
    assert cli.main(["encode", "--help"]) == 0
    assert "--precision" in capsys.readouterr().out


def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxst", "search", "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: jaxst search")
    result = subprocess.run(
        [sys.executable, "-m", "jaxst", "encode", str(tmp_path / "nope.txt"), "-o", "x.npy"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "nope.txt")


# ------------------------------------------------------------------------------------ search --rerank

RERANK_CORPUS = [
    "A man is eating a plate of spaghetti.",
    "A man is eating pasta in a restaurant.",
    "Someone is cooking noodles in the kitchen.",
    "The new movie is awesome and the actors were great.",
    "The stock market fell sharply on Monday.",
    "A cheetah is running behind its prey.",
    "It will rain heavily in the mountains tomorrow.",
    "A woman is eating a sandwich on a bench.",
]


@pytest.fixture(scope="module")
def tiny_reranker(make_tiny_cross_encoder):
    return make_tiny_cross_encoder(arch="bert", num_labels=1)


def expected_rerank(reference, reranker_folder, query, k, candidates):
    """The same flow by hand: jaxst's bi-encoder top-`candidates`, sentence-transformers' CrossEncoder.rank."""
    import warnings

    from sentence_transformers import CrossEncoder as Reference

    from jaxst.util import semantic_search

    hits = semantic_search(reference.encode([query]), reference.encode(RERANK_CORPUS), top_k=candidates)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = Reference(str(reranker_folder), device="cpu").rank(
            query, [RERANK_CORPUS[h["corpus_id"]] for h in hits], top_k=k
        )
    return [(hits[r["corpus_id"]]["corpus_id"], r["score"], hits[r["corpus_id"]]["score"]) for r in ranked]


def test_search_rerank_text(tmp_path, capsys, cli_model, reference, tiny_reranker):
    corpus = write_lines(tmp_path / "corpus.txt", RERANK_CORPUS)
    query = "A man is eating pasta."
    assert cli.main(["search", query, "--corpus", str(corpus), "--rerank", str(tiny_reranker), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Query: {query}" and len(lines) == 4
    expected = expected_rerank(reference, tiny_reranker, query, 3, 50)
    for line, (corpus_id, score, _) in zip(lines[1:], expected, strict=True):
        assert line == f"  {score:.4f}  {RERANK_CORPUS[corpus_id]}"


def test_search_rerank_json_and_candidates(tmp_path, capsys, cli_model, reference, tiny_reranker):
    corpus = write_lines(tmp_path / "corpus.txt", [RERANK_CORPUS[0], "", *RERANK_CORPUS[1:]])
    queries = ["A man is eating pasta.", "Will it rain tomorrow?"]
    argv = ["search", *queries, "--corpus", str(corpus), "--rerank", str(tiny_reranker), "-k", "2",
            "--candidates", "4", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 2
    for query, hits in zip(queries, result, strict=True):
        expected = expected_rerank(reference, tiny_reranker, query, 2, 4)
        assert [h["corpus_id"] for h in hits] == [e[0] for e in expected]
        for hit, (corpus_id, score, retrieval_score) in zip(hits, expected, strict=True):
            assert set(hit) == {"corpus_id", "score", "retrieval_score", "text", "line"}
            assert hit["text"] == RERANK_CORPUS[corpus_id]
            assert hit["line"] == corpus_id + 1 + (corpus_id > 0)  # the blank line 2 is no document
            assert hit["score"] == pytest.approx(score, abs=1e-5)
            assert hit["retrieval_score"] == pytest.approx(retrieval_score, abs=1e-5)
    # Fewer candidates than --top-k: the bi-encoder still fetches top-k for the cross-encoder to order.
    assert cli.main(["search", queries[0], "--corpus", str(corpus), "--rerank", str(tiny_reranker), "-k", "6",
                     "--candidates", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]) == 6


def test_search_rerank_errors(tmp_path, capsys, make_tiny_st, make_tiny_cross_encoder):
    corpus = write_lines(tmp_path / "corpus.txt", RERANK_CORPUS)
    embedding_model, three = make_tiny_st(), make_tiny_cross_encoder(arch="bert", num_labels=3)
    capsys.readouterr()  # building them printed progress bars
    assert cli.main(["search", "q", "--corpus", str(corpus), "--candidates", "10"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--candidates", "--rerank")
    assert cli.main(["search", "q", "--corpus", str(corpus), "--rerank", str(tmp_path / "no-such-model")]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot load cross-encoder", "no-such-model")
    assert cli.main(["search", "q", "--corpus", str(corpus), "--rerank", str(embedding_model)]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot load cross-encoder", "SentenceTransformer")
    assert cli.main(["search", "q", "--corpus", str(corpus), "--rerank", str(three)]) == 2
    assert_one_line_error(capsys.readouterr().err, "3 labels")
    assert cli.main(["search", "q", "--corpus", str(corpus), "--rerank", "x", "--candidates", "0"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--candidates")


def test_search_help_mentions_rerank(capsys):
    assert cli.main(["search", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--rerank" in out and "--candidates" in out
