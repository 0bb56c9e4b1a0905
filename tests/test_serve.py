"""``jaxst serve``: the real server (uvicorn on a loopback port, in a background thread), the official ``openai``
client and ``httpx``; no mocks. One tiny model of each family from conftest: dense, sparse (SPLADE), multi-vector,
cross-encoder, and an LLM reranker (Qwen3 with a chat template)."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import socket
import threading
import time

import httpx  # the test extra installs the serve stack: a missing package fails here, never a silent skip
import numpy as np
import openai
import pytest
import uvicorn
from conftest import build_late_interaction, save_tiny_splade
from prometheus_client.parser import text_string_to_metric_families
from test_llm_reranker import TEMPLATE

from jaxst.serve import create_app, served_name

TIMEOUT = 20.0
TEXTS = ["A man is eating pasta.", "A woman plays the violin on a stage in front of a large crowd.",
         "Two dogs run across a snowy field.", "The stock market fell sharply today.", "Hi"]
DOCS = ["A man is eating food.", "A monkey plays drums.", "Someone is riding a white horse.",
        "The new movie is awesome.", "A man is eating a piece of bread.", "Pasta with tomato sauce."]


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 (a port the OS picks) in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module")
def folders(make_tiny_st, make_tiny_cross_encoder, tmp_path_factory, minilm_folder, tiny_backbone,
            tiny_qwen3_rerankers):
    import shutil

    llm = tmp_path_factory.mktemp("serve-llm-reranker")
    shutil.copytree(tiny_qwen3_rerankers[True], llm, dirs_exist_ok=True)
    (llm / "chat_template.jinja").write_text(TEMPLATE, encoding="utf-8")
    mv = tmp_path_factory.mktemp("serve-multi-vector")
    build_late_interaction(tiny_backbone, mv, expansion={"strategy": "fixed", "length": 16}, skiplist=[".", ","])
    return {"dense": make_tiny_st(prompts={"query": "query: "}), "ce": make_tiny_cross_encoder(),
            "sparse": save_tiny_splade(tmp_path_factory, minilm_folder, "serve-splade"), "mv": mv, "llm": llm}


@pytest.fixture(scope="module")
def models(folders):
    from jaxst import CrossEncoder, MultiVectorEncoder, SentenceTransformer, SparseEncoder

    return {"dense": SentenceTransformer(str(folders["dense"])), "ce": CrossEncoder(str(folders["ce"])),
            "sparse": SparseEncoder(str(folders["sparse"])), "mv": MultiVectorEncoder(str(folders["mv"])),
            "llm": CrossEncoder(str(folders["llm"]), max_length=224)}


@pytest.fixture(scope="module")
def server(models):
    app = create_app(models, max_client_batch_size=8, max_body_bytes=64 * 1024, max_batch_size=64)
    with running(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=TIMEOUT) as c:
        yield c


def test_openai_client_embeddings_equal_encode(server, models):
    url, _ = server
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    expected = models["dense"].encode(TEXTS)
    for fmt in ("float", "base64", openai.NOT_GIVEN):  # the client asks for base64 by default and decodes it
        response = oa.embeddings.create(model="dense", input=TEXTS, encoding_format=fmt)
        rows = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
        if fmt == "base64":  # asked for explicitly, the client hands the strings over as they came
            rows = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]
        got = np.array(rows, np.float32)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert response.model == "dense"
        n_tokens = sum(len(e.ids) for e in models["dense"].tokenizer.encode_ids(TEXTS))
        assert response.usage.prompt_tokens == response.usage.total_tokens == n_tokens
    single = oa.embeddings.create(model="dense", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-6)


def test_base64_and_dimensions_round_trip(client, models):
    model = models["dense"]
    r = client.post("/v1/embeddings", json={"model": "dense", "input": TEXTS, "encoding_format": "base64",
                                            "dimensions": 8})
    assert r.status_code == 200, r.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
    assert all(row.shape == (8,) for row in rows)
    np.testing.assert_allclose(np.stack(rows), model.encode(TEXTS, truncate_dim=8), atol=1e-6)
    # TEI's /embed: normalized by default, prompt_name, dimensions
    r = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "query", "dimensions": 16})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        np.array(r.json()), model.encode(TEXTS, prompt_name="query", truncate_dim=16, normalize_embeddings=True),
        atol=1e-6)
    r = client.post("/embed", json={"inputs": TEXTS[0], "normalize": False})
    np.testing.assert_allclose(np.array(r.json()), model.encode(TEXTS[:1]), atol=1e-6)


def test_concurrent_single_text_requests_get_their_own_rows_in_batches(server, models):
    url, app = server
    n = 200
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'the weather'} " + "word " * (i % 7)
             for i in range(n)]
    expected = models["dense"].encode(texts)
    batcher = app.state.batchers["dense"]

    def count_batches() -> float:
        text = httpx.get(f"{url}/metrics", timeout=TIMEOUT).text
        return sum(s.value for f in text_string_to_metric_families(text) if f.name == "jaxst_batch_size"
                   for s in f.samples if s.name == "jaxst_batch_size_count" and s.labels["model"] == "dense")

    before = count_batches()
    batcher.pause()  # hold the worker until all 200 requests are queued: they must then run as a few batches

    async def one(c: httpx.AsyncClient, i: int):
        r = await c.post("/v1/embeddings", json={"model": "dense", "input": texts[i], "encoding_format": "float"})
        assert r.status_code == 200, r.text
        return i, np.array(r.json()["data"][0]["embedding"], np.float32)

    async def all_requests():  # 200 connections at once, from one event loop
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT, limits=httpx.Limits(max_connections=n)) as c:
            tasks = [asyncio.create_task(one(c, i)) for i in range(n)]
            deadline = time.monotonic() + TIMEOUT
            while batcher.pending < n and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert batcher.pending == n
            batcher.resume()
            return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(all_requests())
    finally:
        batcher.resume()
    for i, row in results:
        np.testing.assert_allclose(row, expected[i], atol=1e-6, err_msg=f"request {i}")
    assert len({i for i, _ in results}) == n
    # 200 texts of ~10-20 tokens, max_batch_size 64, within the token budget: four model calls
    assert count_batches() - before == 4


def test_rerank_equals_cross_encoder_rank(client, models):
    ce = models["ce"]
    query = "A man is eating pasta."
    expected = ce.rank(query, DOCS, return_documents=True)
    r = client.post("/v1/rerank", json={"model": "ce", "query": query, "documents": DOCS, "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [e["corpus_id"] for e in expected]
    np.testing.assert_allclose([x["relevance_score"] for x in results], [e["score"] for e in expected], atol=1e-6)
    assert [x["document"]["text"] for x in results] == [e["text"] for e in expected]
    assert r.json()["usage"]["total_tokens"] > 0
    r = client.post("/v1/rerank", json={"model": "ce", "query": query, "documents": [{"text": d} for d in DOCS],
                                        "top_n": 2})
    assert [x["index"] for x in r.json()["results"]] == [e["corpus_id"] for e in expected[:2]]
    # TEI's /rerank: texts, raw_scores, return_text
    r = client.post("/rerank", json={"model": "ce", "query": query, "texts": DOCS, "return_text": True})
    assert r.status_code == 200, r.text
    assert [(x["index"], x["text"]) for x in r.json()] == [(e["corpus_id"], e["text"]) for e in expected]
    np.testing.assert_allclose([x["score"] for x in r.json()], [e["score"] for e in expected], atol=1e-6)
    r = client.post("/rerank", json={"model": "ce", "query": query, "texts": DOCS, "raw_scores": True})
    raw = ce.predict([(query, d) for d in DOCS], activation_fn=lambda x: x)
    np.testing.assert_allclose(sorted((x["score"] for x in r.json()), reverse=True), np.sort(raw)[::-1], atol=1e-6)


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/embeddings", b"{not json", 400, "malformed JSON"),
    ("/v1/embeddings", b"[1, 2]", 422, "JSON object"),
    ("/v1/embeddings", {"model": "dense", "input": 5}, 422, "string or a list"),
    ("/v1/embeddings", {"model": "dense", "input": ["ok", None]}, 422, "[1] must be a string"),
    ("/v1/embeddings", {"model": "dense", "input": [[101, 10**9]]}, 422, "outside the model's vocabulary"),
    ("/v1/embeddings", {"model": "dense", "input": [[101] * 200]}, 413, "token ids"),
    ("/v1/embeddings", {"model": "dense", "input": ["ok", [101]]}, 422, "mixes"),
    ("/v1/embeddings", {"model": "dense", "input": [[101]], "prompt_name": "query"}, 422, "needs text"),
    ("/embed", {"model": "dense", "inputs": [[101, 102]]}, 422, "token-id"),
    ("/embed_sparse", {"model": "dense", "inputs": "x"}, 422, "sparse"),
    ("/embed_all", {"model": "ce", "inputs": "x"}, 422, "multi_vector or embedding"),
    ("/embed_all", {"model": "mv", "inputs": "x", "task": "both"}, 422, "task"),
    ("/similarity", {"model": "dense", "inputs": "x"}, 422, "source_sentence"),
    ("/similarity", {"model": "dense", "inputs": {"source_sentence": "x", "sentences": "y"}}, 422, "list"),
    ("/tokenize", {"inputs": "x"}, 422, "`model` is required"),
    ("/v1/embeddings", {"model": "dense", "input": []}, 422, "empty"),
    ("/v1/embeddings", {"model": "dense", "input": ""}, 422, "empty"),
    ("/v1/embeddings", {"model": "dense", "input": ["x"] * 9}, 422, "at most 8"),
    ("/v1/embeddings", {"model": "dense", "input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"model": "dense", "input": "x", "dimensions": 0}, 422, "dimensions"),
    ("/v1/embeddings", {"model": "dense", "input": "x", "dimensions": 10_000}, 422, "dimensions"),
    ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "not served"),
    ("/v1/embeddings", {"model": "ce", "input": "x"}, 422, "reranker"),
    ("/embed", {"inputs": "x", "prompt_name": "nope"}, 422, "prompt_name"),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 422, "boolean"),
    ("/embed", {"inputs": "word " * 200}, 413, "truncate"),
    ("/v1/rerank", {"model": "ce", "query": "q", "documents": "one doc"}, 422, "list"),
    ("/v1/rerank", {"model": "ce", "documents": ["d"]}, 422, "query"),
    ("/v1/rerank", {"model": "ce", "query": "q", "documents": ["d"], "top_n": -1}, 422, "top_n"),
    ("/v1/rerank", {"query": "q", "documents": ["d"]}, 422, "2 reranker models"),
    ("/rerank", {"model": "dense", "query": "q", "texts": ["d"]}, 422, "embedding model"),
])
def test_bad_input_is_a_4xx_with_a_message(client, path, body, status, words):
    r = client.post(path, content=body, headers={"content-type": "application/json"}) if isinstance(body, bytes) \
        else client.post(path, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]


def test_overlong_input_is_truncated_when_asked(client, models):
    text = "word " * 200
    r = client.post("/embed", json={"inputs": text, "truncate": True, "normalize": False})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()), models["dense"].encode([text]), atol=1e-6)


def test_body_over_the_limit_is_413(client):
    r = client.post("/v1/embeddings", json={"model": "dense", "input": "x" * (100 * 1024)})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(100):
            yield b" " * 1024

    r = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_health_info_models_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert {m["id"]: m["kind"] for m in info["models"]} == {
        "dense": "embedding", "ce": "reranker", "sparse": "sparse", "mv": "multi_vector", "llm": "reranker"}
    assert {m["id"]: m.get("dimension") for m in info["models"]} == {
        "dense": 32, "ce": None, "sparse": 30522, "mv": None, "llm": None}
    assert info["max_client_batch_size"] == 8
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["dense", "ce", "sparse", "mv", "llm"]
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("jaxst_requests", "jaxst_request_duration_seconds", "jaxst_batch_size", "jaxst_batch_tokens",
                 "jaxst_queue_depth", "jaxst_input_tokens", "jaxst_queue_duration_seconds",
                 "jaxst_inference_duration_seconds"):
        assert name in families, name
    ok = [s for s in families["jaxst_requests"].samples
          if s.labels.get("route") == "/v1/embeddings" and s.labels.get("status") == "200"]
    assert ok and ok[0].value > 0


def test_api_key_and_full_queue(folders):
    from jaxst import SentenceTransformer

    app = create_app({"dense": SentenceTransformer(str(folders["dense"]))}, api_key="s3cret",
                     max_concurrent_requests=2)
    batcher = app.state.batchers["dense"]
    with running(app) as url:
        body = {"model": "dense", "input": "A man is eating pasta."}
        with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
            assert c.post("/v1/embeddings", json=body).status_code == 401
            r = c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
            assert c.get("/metrics").status_code == 401
            assert c.get("/health").status_code == 200  # probes stay open
            oa = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", timeout=TIMEOUT, max_retries=0)
            assert len(oa.embeddings.create(model="dense", input="hello").data[0].embedding) == 32

            auth = {"Authorization": "Bearer s3cret"}
            batcher.pause()
            try:
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    def post():
                        with httpx.Client(base_url=url, timeout=TIMEOUT) as c2:
                            return c2.post("/v1/embeddings", json=body, headers=auth)

                    held = [pool.submit(post) for _ in range(2)]
                    deadline = time.monotonic() + TIMEOUT
                    while batcher.pending < 2 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    r = c.post("/v1/embeddings", json=body, headers=auth)
                    assert r.status_code == 429, r.text
                    assert r.headers["retry-after"] == "1" and "retry" in r.json()["error"]["message"]
                    with pytest.raises(openai.RateLimitError):
                        oa.embeddings.create(model="dense", input="hello")
                    batcher.resume()
                    assert [f.result(timeout=TIMEOUT).status_code for f in held] == [200, 200]
            finally:
                batcher.resume()
            assert c.post("/v1/embeddings", json=body, headers=auth).status_code == 200


def test_create_app_and_cli_refuse_bad_setups(folders, tmp_path, capsys):
    from jaxst.cli import main

    with pytest.raises(ValueError, match="non-empty dict"):
        create_app({})
    with pytest.raises(ValueError, match="max_batch_size"):
        create_app({"x": object()}, max_batch_size=0)
    with pytest.raises(ValueError, match="'x' is a object"):
        create_app({"x": object()})
    with pytest.raises(ValueError, match="warmup_tokens"):
        create_app({"x": object()}, warmup_tokens=-1)
    with pytest.raises(ValueError, match="batch_size"):
        create_app({"x": object()}, batch_size=0)
    assert served_name(str(folders["dense"])) == folders["dense"].name
    assert served_name("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert main(["serve", str(folders["dense"]), "--served-model-name", "a", "--served-model-name", "b"]) == 2
    assert "once per model" in capsys.readouterr().err
    assert main(["serve", str(folders["dense"]), str(folders["dense"])]) == 2
    assert "one name" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "cannot load model" in capsys.readouterr().err
    from jaxst.cli import build_parser, load_family_model

    args = build_parser().parse_args(["serve", "m", "--dtype", "int8", "--warmup-tokens", "0"])
    assert (args.dtype, args.warmup_tokens, args.batch_size, args.max_batch_size) == ("int8", 0, 8, 256)
    for bad in (["--warmup-tokens", "x"], ["--warmup-tokens", "-8"], ["--dtype", "int4"], ["--batch-size", "0"]):
        assert main(["serve", "m", *bad]) == 2
        assert bad[0] in capsys.readouterr().err
    assert load_family_model(str(folders["dense"]), dtype="int8").dtype == np.int8  # what --dtype int8 serves


def test_json_error_bodies_are_json(client):
    r = client.post("/v1/embeddings", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert json.loads(r.text)["error"]["code"] == 400


def test_shutdown_drains_in_flight_requests(folders, models):
    """What uvicorn does on SIGTERM (``should_exit``): stop accepting, let a queued request finish, then stop."""
    from jaxst import SentenceTransformer

    app = create_app({"dense": SentenceTransformer(str(folders["dense"]))})
    batcher = app.state.batchers["dense"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        batcher.pause()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, f"{url}/v1/embeddings", json={"model": "dense", "input": TEXTS[1],
                               "encoding_format": "float"}, timeout=TIMEOUT)
            while batcher.pending < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            server.should_exit = True
            time.sleep(0.3)
            assert thread.is_alive()  # waiting for the request in flight
            batcher.resume()
            r = held.result(timeout=TIMEOUT)
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["data"][0]["embedding"], models["dense"].encode(TEXTS[1]), atol=1e-6)
        thread.join(TIMEOUT)
        assert not thread.is_alive() and not batcher.alive
    finally:
        batcher.resume()
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()


def test_cli_serves_and_exits_on_sigterm(folders):
    import os
    import signal
    import subprocess
    import sys

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "jaxst", "serve", str(folders["dense"]), "--port", str(port),
                             "--served-model-name", "tiny", "--log-level", "warning", "--warmup-tokens", "8",
                             "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "JAXST_API_KEY": "k"})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate(timeout=TIMEOUT)[1].decode()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "jaxst serve did not come up"
            time.sleep(0.1)
        headers = {"Authorization": "Bearer k"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "tiny", "input": "hello"},
                       headers=headers, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": "tiny", "input": "hello"},
                          timeout=TIMEOUT).status_code == 401
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: the process ends by SIGTERM
        assert proc.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM)
        # the warm-up ran before the server accepted: padded lengths 4 and 8 x batches of 1, 2 and 4 texts
        assert "warmed up tiny (6 batch shapes)" in proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


def test_token_id_input_equals_encode(server, models):
    url, _ = server
    model = models["dense"]
    ids = [e.ids for e in model.tokenizer.encode_ids(TEXTS)]
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
    response = oa.embeddings.create(model="dense", input=ids, encoding_format="float")
    got = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], np.float32)
    np.testing.assert_allclose(got, model.encode(TEXTS), atol=1e-6)
    assert response.usage.prompt_tokens == sum(len(i) for i in ids)
    single = oa.embeddings.create(model="dense", input=ids[1], encoding_format="float")  # one text as ids
    np.testing.assert_allclose(single.data[0].embedding, model.encode(TEXTS[1]), atol=1e-6)


def test_sparse_embeddings_equal_encode(client, models):
    model = models["sparse"]
    r = client.post("/embed_sparse", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    dense = np.asarray(model.encode(TEXTS, convert_to_sparse_tensor=False))
    assert len(r.json()) == len(TEXTS)
    for row, want in zip(r.json(), dense):
        index = [x["index"] for x in row]
        assert index == sorted(index) and index == np.flatnonzero(want).tolist()
        np.testing.assert_allclose([x["value"] for x in row], want[index], atol=1e-6)
    r = client.post("/embed_sparse", json={"inputs": "word " * 100})
    assert r.status_code == 413 and "truncate" in r.json()["error"]["message"]
    r = client.post("/embed_sparse", json={"inputs": "word " * 100, "truncate": True})
    want = np.asarray(model.encode(["word " * 100], convert_to_sparse_tensor=False))[0]
    assert [x["index"] for x in r.json()[0]] == np.flatnonzero(want).tolist()


def test_token_embeddings_equal_encode(client, models):
    mv = models["mv"]
    for task, expected in ((None, mv.encode(TEXTS, convert_to_numpy=True)),
                           ("query", mv.encode_query(TEXTS, convert_to_numpy=True))):
        r = client.post("/embed_all", json={"model": "mv", "inputs": TEXTS} | ({"task": task} if task else {}))
        assert r.status_code == 200, r.text
        assert len(r.json()) == len(TEXTS)
        for got, want in zip(r.json(), expected):
            np.testing.assert_allclose(np.array(got, np.float32), want, atol=1e-6)
    dense = models["dense"]
    r = client.post("/embed_all", json={"model": "dense", "inputs": TEXTS[:2]})
    for got, want in zip(r.json(), dense.encode(TEXTS[:2], output_value="token_embeddings")):
        np.testing.assert_allclose(np.array(got, np.float32), np.asarray(want), atol=1e-6)


def test_llm_reranker_equals_rank(client, models):
    llm = models["llm"]
    query = "A man is eating something."
    expected = llm.rank(query, DOCS, return_documents=True)
    r = client.post("/v1/rerank", json={"model": "llm", "query": query, "documents": DOCS, "top_n": 4,
                                        "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [e["corpus_id"] for e in expected[:4]]
    np.testing.assert_allclose([x["relevance_score"] for x in results], [e["score"] for e in expected[:4]],
                               atol=1e-6)
    assert [x["document"]["text"] for x in results] == [e["text"] for e in expected[:4]]


def test_similarity_and_tokenize(client, models):
    model = models["dense"]
    r = client.post("/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}})
    assert r.status_code == 200, r.text
    want = np.asarray(model.similarity(model.encode(TEXTS[:1]), model.encode(TEXTS[1:])))[0]
    np.testing.assert_allclose(r.json(), want, atol=1e-6)
    for name in ("dense", "sparse", "ce"):
        tokenizer = models[name].tokenizer
        for special in (True, False):
            r = client.post("/tokenize", json={"model": name, "inputs": TEXTS[:2], "add_special_tokens": special})
            assert r.status_code == 200, r.text
            for row, text, e in zip(r.json(), TEXTS, tokenizer.backend.encode_batch(TEXTS[:2],
                                                                                     add_special_tokens=special)):
                assert [t["id"] for t in row] == e.ids
                assert [t["special"] for t in row] == [i in tokenizer.all_special_ids for i in e.ids]
                assert any(t["special"] for t in row) == special
                assert all(text[t["start"]: t["stop"]] == t["text"] for t in row if not t["special"])
    r = client.post("/tokenize", json={"model": "dense", "inputs": "hello", "prompt_name": "query"})
    assert [t["id"] for t in r.json()[0]] == models["dense"].tokenizer.encode_ids(["query: hello"])[0].ids


def test_warm_up_compiles_before_the_first_request(folders, caplog):
    from jaxst import SentenceTransformer

    model = SentenceTransformer(str(folders["dense"]))
    app = create_app({"dense": model}, warmup_tokens=8, batch_size=2)
    with caplog.at_level("WARNING", logger="jaxst.serve"), running(app) as url:
        r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS[:3]}, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], model.encode(TEXTS[:3]), atol=1e-6)
    # the padded lengths 4 and 8 x batches of 1 and 2 texts, before the server took its first request
    assert "warmed up dense (4 batch shapes)" in caplog.text
