"""The ``jaxst`` command line, run in-process through ``jaxst.cli.main`` with the real all-MiniLM-L6-v2.

What ``jaxst encode`` writes and ``jaxst search`` prints is compared with sentence-transformers run in the
same test on the same model folder (the oracle): embeddings within 1e-5, the same top-k ids (ties aside)
and scores within 1e-5 (in the text output, rounded to 4 decimals, within 5e-5 more).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_same_hits, max_abs
from sentence_transformers import util as st_util

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
TOL = 1e-5
PRINTED = 0.5e-4  # the text output rounds scores to 4 decimals

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
def oracle(st_minilm):
    """sentence-transformers' ``SentenceTransformer(folder, device="cpu")`` on the folder the CLI loads."""
    return st_minilm


def oracle_search(oracle, queries, corpus, top_k, score_function=st_util.cos_sim):
    """sentence-transformers' own search, as the CLI does it (encode_query / encode_document, then
    util.semantic_search): its hits per query, and its scores of every document (queries x corpus)."""
    q = oracle.encode_query(list(queries), convert_to_tensor=True)
    c = oracle.encode_document(list(corpus), convert_to_tensor=True)
    hits = st_util.semantic_search(q, c, top_k=top_k, score_function=score_function)
    return hits, score_function(q, c).numpy()


def parse_text_hits(lines, texts):
    """'  0.1234  text' lines -> [(corpus_id, score)], the id found by the (unique) text."""
    out = []
    for line in lines:
        assert line.startswith("  "), line
        score, text = line[2:].split("  ", 1)
        assert len(score.split(".")[1]) == 4, line  # four decimals
        out.append((texts.index(text), float(score)))
    return out


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


def test_encode_file(tmp_path, capsys, cli_model, oracle):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out)]) == 0
    emb = np.load(out)
    expected = oracle.encode(TEXTS)
    assert emb.shape == expected.shape == (len(TEXTS), 384) and emb.dtype == np.float32
    assert max_abs(emb, expected) < TOL
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"{len(TEXTS)} texts" in captured.err and "(6, 384)" in captured.err and str(out) in captured.err
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "texts.txt"]  # no temporary file left


@pytest.mark.parametrize("args", [[], ["-"]])
def test_encode_stdin(tmp_path, monkeypatch, capsys, cli_model, oracle, args):
    texts = ["The cat sits outside", "", "A man is playing guitar"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts)))  # no trailing newline
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", *args, "--output", str(out), "--batch-size", "2"]) == 0
    emb, expected = np.load(out), oracle.encode(texts)
    assert emb.shape == expected.shape == (3, 384) and max_abs(emb, expected) < TOL
    assert "3 texts from stdin" in capsys.readouterr().err


def test_encode_normalize(tmp_path, cli_model, oracle):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out), "--normalize"]) == 0
    emb, expected = np.load(out), oracle.encode(TEXTS, normalize_embeddings=True)
    assert emb.shape == expected.shape and max_abs(emb, expected) < TOL
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("precision, dtype", [("int8", np.int8), ("ubinary", np.uint8)])
def test_encode_precision(tmp_path, capsys, cli_model, oracle, precision, dtype):
    src = write_lines(tmp_path / "texts.txt", TEXTS)
    out, floats_out = tmp_path / "emb.npy", tmp_path / "floats.npy"
    assert cli.main(["encode", str(src), "-o", str(out), "--precision", precision]) == 0
    assert str(np.dtype(dtype)) in capsys.readouterr().err
    assert cli.main(["encode", str(src), "-o", str(floats_out)]) == 0
    emb, floats = np.load(out), np.load(floats_out)
    expected = oracle.encode(TEXTS, precision=precision)
    assert emb.dtype == dtype == expected.dtype and emb.shape == expected.shape
    # The CLI's floats are the oracle's (1e-5), and its quantized output is exactly sentence-transformers'
    # quantizer applied to them ...
    assert max_abs(floats, oracle.encode(TEXTS)) < TOL
    np.testing.assert_array_equal(emb, st_util.quantize_embeddings(floats, precision=precision))
    # ... so against the oracle's own quantized output a value can move only by one int8 step or one sign bit, and
    # only where the oracle's float lies near a bucket edge: the floats agree within 1e-5, and for int8 the edges
    # (from each dimension's min and max over these texts) move by at most 2e-5 with them.
    ref = oracle.encode(TEXTS)
    if precision == "int8":
        steps = np.abs(emb.astype(np.int32) - expected.astype(np.int32))
        lo, width = ref.min(axis=0), (ref.max(axis=0) - ref.min(axis=0)) / 255
        position = (ref - lo) / width  # an edge at every integer
        near_edge = np.abs(position - np.round(position)) * width < 4 * TOL
    else:
        steps = np.unpackbits(emb, axis=1) != np.unpackbits(expected, axis=1)
        near_edge = np.abs(ref) < 2 * TOL
    assert steps.max() <= 1
    assert not np.any((steps != 0) & ~near_edge), "a value far from a bucket edge was quantized differently"


def test_encode_prompt_name(tmp_path, monkeypatch, cli_model, oracle):
    monkeypatch.setitem(cli_model.prompts, "query", "query: ")
    src = write_lines(tmp_path / "texts.txt", TEXTS[:3])
    out = tmp_path / "emb.npy"
    assert cli.main(["encode", str(src), "-o", str(out), "--prompt-name", "query"]) == 0
    emb, expected = np.load(out), oracle.encode(TEXTS[:3], prompt="query: ")
    assert emb.shape == expected.shape and max_abs(emb, expected) < TOL
    assert max_abs(expected, oracle.encode(TEXTS[:3])) > 1e-3  # the prompt changes the embeddings


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


def test_search_best_hit(corpus_file, capsys, cli_model, oracle):
    query = "A man is eating pasta."
    assert cli.main(["search", query, "--corpus", str(corpus_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Query: {query}"
    assert len(lines) == 1 + len(CORPUS)  # top-k 5, corpus of 5
    got = parse_text_hits(lines[1:], CORPUS)
    ref, scores = oracle_search(oracle, [query], CORPUS, top_k=5)
    assert_same_hits([got], [ref[0]], [scores[0]], tol=PRINTED + TOL, relative=False)
    assert got[0][0] == ref[0][0]["corpus_id"] == FOOD


def test_search_top_k_and_several_queries(corpus_file, capsys, cli_model, oracle):
    queries = ["A man is eating pasta.", "Will it be sunny tomorrow?"]
    assert cli.main(["search", *queries, "--corpus", str(corpus_file), "--top-k", "2"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2
    ref, scores = oracle_search(oracle, queries, CORPUS, top_k=2)
    for i, (query, block) in enumerate(zip(queries, blocks, strict=True)):
        lines = block.splitlines()
        assert lines[0] == f"Query: {query}" and len(lines) == 3
        assert_same_hits([parse_text_hits(lines[1:], CORPUS)], [ref[i]], [scores[i]], tol=PRINTED + TOL,
                         relative=False)
    assert [r[0]["corpus_id"] for r in ref] == [0, 4]  # food, weather: the query set is not degenerate


def test_search_json(corpus_file, capsys, cli_model, oracle):
    queries = ["A man is eating pasta.", "A leopard chases an antelope."]
    assert cli.main(["search", *queries, "--corpus", str(corpus_file), "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 2 and all(len(hits) == 3 for hits in result)
    ref, scores = oracle_search(oracle, queries, CORPUS, top_k=3)
    for q, hits in enumerate(result):
        for hit in hits:
            assert set(hit) == {"corpus_id", "score", "text", "line"}
            assert hit["text"] == CORPUS[hit["corpus_id"]]
        assert_same_hits([hits], [ref[q]], [scores[q]], relative=False)
    assert result[0][0]["corpus_id"] == FOOD and result[0][0]["line"] == 1
    assert result[1][0]["text"] == CORPUS[3] and result[1][0]["line"] == 6  # line numbers count blank lines


def test_search_score_function_follows_model():
    from jaxst import util

    assert cli._score_function("cosine") is util.cos_sim
    assert cli._score_function("dot") is util.dot_score


def test_search_uses_dot_score_for_dot_models(corpus_file, monkeypatch, capsys, cli_model, oracle):
    monkeypatch.setattr(cli_model, "similarity_fn_name", "dot")
    monkeypatch.setattr(cli_model, "encode_query", lambda texts, **kw: cli_model.encode(texts, **kw) * 2)
    query = "A man is eating pasta."
    assert cli.main(["search", query, "--corpus", str(corpus_file), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]
    ref, scores = oracle_search(oracle, [query], CORPUS, top_k=3, score_function=st_util.dot_score)
    # Queries scaled by 2 (the model normalizes): dot scores are twice the oracle's, cosine would not be.
    assert_same_hits([[(h["corpus_id"], h["score"] / 2) for h in hits]], [ref[0]], [scores[0]], relative=False)
    assert hits[0]["score"] > 1.2


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


def expected_rerank(oracle, reranker_folder, query, k, candidates):
    """The same flow in sentence-transformers: its bi-encoder's top-`candidates` (util.semantic_search), then
    its CrossEncoder.rank. Returns the top-k [(corpus_id, cross-encoder score)], the cross-encoder's score
    of every candidate and the bi-encoder's score of every document, both by corpus_id."""
    import warnings

    from sentence_transformers import CrossEncoder as Reference

    ref, scores = oracle_search(oracle, [query], RERANK_CORPUS, top_k=candidates)
    hits = ref[0]
    if candidates < len(RERANK_CORPUS):  # no tie at the cut: the candidate set is well defined
        assert hits[-1]["score"] - np.sort(scores[0])[::-1][candidates] > 10 * TOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = Reference(str(reranker_folder), device="cpu").rank(
            query, [RERANK_CORPUS[h["corpus_id"]] for h in hits], top_k=None
        )
    ce = {hits[r["corpus_id"]]["corpus_id"]: r["score"] for r in ranked}
    top = [{"corpus_id": hits[r["corpus_id"]]["corpus_id"], "score": r["score"]} for r in ranked[:k]]
    return top, ce, scores[0]


def test_search_rerank_text(tmp_path, capsys, cli_model, oracle, tiny_reranker):
    corpus = write_lines(tmp_path / "corpus.txt", RERANK_CORPUS)
    query = "A man is eating pasta."
    assert cli.main(["search", query, "--corpus", str(corpus), "--rerank", str(tiny_reranker), "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Query: {query}" and len(lines) == 4
    top, ce, _ = expected_rerank(oracle, tiny_reranker, query, 3, 50)
    assert_same_hits([parse_text_hits(lines[1:], RERANK_CORPUS)], [top], [ce], tol=PRINTED + TOL, relative=False)


def test_search_rerank_json_and_candidates(tmp_path, capsys, cli_model, oracle, tiny_reranker):
    corpus = write_lines(tmp_path / "corpus.txt", [RERANK_CORPUS[0], "", *RERANK_CORPUS[1:]])
    queries = ["A man is eating pasta.", "Will it rain tomorrow?"]
    argv = ["search", *queries, "--corpus", str(corpus), "--rerank", str(tiny_reranker), "-k", "2",
            "--candidates", "4", "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 2
    for query, hits in zip(queries, result, strict=True):
        top, ce, bi = expected_rerank(oracle, tiny_reranker, query, 2, 4)
        assert_same_hits([hits], [top], [ce], relative=False)
        for hit in hits:
            assert set(hit) == {"corpus_id", "score", "retrieval_score", "text", "line"}
            assert hit["text"] == RERANK_CORPUS[hit["corpus_id"]]
            assert hit["line"] == hit["corpus_id"] + 1 + (hit["corpus_id"] > 0)  # the blank line 2 is no document
            assert abs(hit["retrieval_score"] - float(bi[hit["corpus_id"]])) <= TOL
    # Fewer candidates than --top-k: the bi-encoder still fetches top-k for the cross-encoder to order.
    assert cli.main(["search", queries[0], "--corpus", str(corpus), "--rerank", str(tiny_reranker), "-k", "6",
                     "--candidates", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)[0]
    top, ce, _ = expected_rerank(oracle, tiny_reranker, queries[0], 6, 6)
    assert_same_hits([hits], [top], [ce], relative=False)


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
