"""``jaxst serve``: an HTTP server for embedding and reranking models, with dynamic batching.

    from jaxst.serve import create_app
    app = create_app({"minilm": SentenceTransformer("all-MiniLM-L6-v2"),
                      "reranker": CrossEncoder("cross-encoder/ms-marco-MiniLM-L6-v2")})
    uvicorn.run(app, host="127.0.0.1", port=8080)

Routes (a request's ``model`` names a served model; it may be left out when one model of the right kind is served):

- ``POST /v1/embeddings``: OpenAI's shape (``input`` a string or a list of strings, ``model``, ``encoding_format``
  ``float`` or ``base64`` (little-endian float32), ``dimensions`` as Matryoshka truncation, ``usage``);
- ``POST /embed``: text-embeddings-inference's shape (``inputs``, ``normalize`` (default true), ``truncate``
  (default false: an input over the model's length is refused with 413), ``prompt_name``, ``dimensions``);
- ``POST /rerank`` (text-embeddings-inference: ``query``, ``texts``, ``raw_scores``, ``return_text``; a list of
  ``{index, score[, text]}``) and ``POST /v1/rerank`` (Cohere / Jina: ``query``, ``documents``, ``top_n``,
  ``return_documents``; ``results`` of ``{index, relevance_score[, document]}``), for CrossEncoders;
- ``GET /health``, ``GET /info``, ``GET /v1/models``, ``GET /metrics`` (Prometheus' text format, one registry per
  app).

Batching: each model has one queue and one worker thread. A request is validated and tokenized (for its token
count; off the event loop) and queued; the worker takes the oldest request and every queued request that can share
its ``encode`` call (the same prompt, or the same score activation) while the batch stays within ``max_batch_size``
texts and ``max_batch_tokens`` tokens, runs them through one ``model.encode`` / ``model.predict`` call (whose
engine sorts by length and runs the length buckets it compiles), and hands each request its own rows. A model's
queue holds at most ``max_concurrent_requests`` requests; past that a request gets 429 with ``Retry-After``.

Bad input is a 4xx JSON error ``{"error": {"message", "type", "code"}}``, never a 500: malformed JSON 400, wrong
types / empty input / too many texts / unknown prompt 422, unknown model 404, body over ``max_body_bytes`` 413,
missing or wrong bearer key (when ``api_key`` is set; ``/health`` stays open) 401. An error inside a batch fails
the requests of that batch, never the worker.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_CONCURRENT_REQUESTS = 512
DEFAULT_MAX_CLIENT_BATCH_SIZE = 64
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
RETRY_AFTER_SECONDS = 1


class ClientError(Exception):
    """A request the client can fix: answered with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


# ---------------------------------------------------------------------------------------- the batching worker


@dataclass(eq=False)
class _Job:
    items: list  # texts, or (query, document) pairs
    key: tuple  # requests with equal keys can share one encode call
    tokens: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


def _resolve(future: asyncio.Future, value, error: BaseException | None) -> None:
    if future.done():  # the request was cancelled (client gone)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Batcher:
    """One model's bounded queue and the worker thread that runs its requests in batches.

    ``run(key, items)`` returns one result row per item (a numpy array or a list); each job gets its own slice.
    ``pause()`` / ``resume()`` hold the worker (operations: drain a replica; tests: a full queue)."""

    def __init__(self, name: str, run, *, max_batch_tokens: int, max_batch_size: int, max_queue: int, metrics=None):
        self.name, self.run = name, run
        self.max_batch_tokens, self.max_batch_size, self.max_queue = max_batch_tokens, max_batch_size, max_queue
        self.metrics = metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._pending = 0  # queued or running
        self._cond = threading.Condition()
        self._paused = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name=f"jaxst-serve-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued (unless paused), then end the worker."""
        with self._cond:
            self._stopping = True
            self._paused = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def submit(self, job: _Job) -> None:
        with self._cond:
            if self._stopping:
                raise ClientError(503, f"model {self.name!r} is shutting down", "unavailable",
                                  {"Retry-After": str(RETRY_AFTER_SECONDS)})
            if self._pending >= self.max_queue:
                if self.metrics is not None:
                    self.metrics.rejected.labels(self.name).inc()
                raise ClientError(429, f"model {self.name!r} has {self._pending} requests queued (the limit is "
                                       f"{self.max_queue}); retry later", "overloaded",
                                  {"Retry-After": str(RETRY_AFTER_SECONDS)})
            self._pending += 1
            self._queue.append(job)
            self._set_depth()
            self._cond.notify()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(self.name).set(len(self._queue))

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest job and the queued jobs that share its key, within the size and token caps."""
        with self._cond:
            while not self._queue or (self._paused and not self._stopping):
                if self._stopping and not self._queue:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, n, tokens = [first], len(first.items), first.tokens
            kept = collections.deque()
            while self._queue:
                job = self._queue.popleft()
                if (job.key == first.key and n + len(job.items) <= self.max_batch_size
                        and tokens + job.tokens <= self.max_batch_tokens):
                    batch.append(job)
                    n += len(job.items)
                    tokens += job.tokens
                else:
                    kept.append(job)
            self._queue = kept
            self._set_depth()
            return batch

    def _work(self) -> None:
        while (batch := self._take()) is not None:
            live = [job for job in batch if not job.future.done()]
            try:
                if live:
                    self._run_batch(live)
            finally:
                with self._cond:
                    self._pending -= len(batch)

    def _run_batch(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        start = time.perf_counter()
        try:
            out = self.run(jobs[0].key, items)
            error = None
        except (ValueError, TypeError) as e:  # input the checks did not catch: the client's requests fail, not us
            out, error = None, ClientError(422, f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - the worker must survive anything a batch raises
            out, error = None, e
        if self.metrics is not None:
            self.metrics.batch_size.labels(self.name).observe(len(items))
            self.metrics.batch_tokens.labels(self.name).observe(sum(job.tokens for job in jobs))
            self.metrics.inference_seconds.labels(self.name).observe(time.perf_counter() - start)
            for job in jobs:
                self.metrics.queue_seconds.labels(self.name).observe(start - job.queued_at)
        offset = 0
        for job in jobs:
            rows = None if error is not None else out[offset: offset + len(job.items)]
            offset += len(job.items)
            try:
                job.loop.call_soon_threadsafe(_resolve, job.future, rows, error)
            except RuntimeError:  # the event loop is closed: nobody waits for this answer
                pass


# ---------------------------------------------------------------------------------------- metrics


class _Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        self.requests = Counter("jaxst_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("jaxst_request_duration_seconds", "Request latency by route", ["route"], registry=r)
        self.inputs = Counter("jaxst_inputs", "Texts (or pairs) received", ["model"], registry=r)
        self.tokens = Counter("jaxst_input_tokens", "Input tokens received (after truncation)", ["model"],
                              registry=r)
        self.queue_depth = Gauge("jaxst_queue_depth", "Requests waiting in a model's queue", ["model"], registry=r)
        self.rejected = Counter("jaxst_rejected_requests", "Requests refused with 429 (queue full)", ["model"],
                                registry=r)
        self.batch_size = Histogram("jaxst_batch_size", "Texts per batch", ["model"], buckets=sizes, registry=r)
        self.batch_tokens = Histogram("jaxst_batch_tokens", "Tokens per batch", ["model"],
                                      buckets=(16, 64, 256, 1024, 4096, 16384, 65536), registry=r)
        self.queue_seconds = Histogram("jaxst_queue_duration_seconds", "Time a request waits in the queue",
                                       ["model"], registry=r)
        self.inference_seconds = Histogram("jaxst_inference_duration_seconds", "Time of one batch's encode call",
                                           ["model"], registry=r)


# ---------------------------------------------------------------------------------------- served models


def _family(model) -> str:
    from jaxst.cross_encoder import CrossEncoder
    from jaxst.sentence_transformer import SentenceTransformer

    if isinstance(model, SentenceTransformer):
        return "embedding"
    if isinstance(model, CrossEncoder):
        return "reranker"
    raise ValueError(f"jaxst serve serves SentenceTransformer and CrossEncoder models; {type(model).__name__} "
                     "is not served yet")


def _identity(x):
    return x


class _Served:
    """A model with its family and its batcher."""

    def __init__(self, name: str, model, limits: dict, metrics: _Metrics):
        self.name, self.model, self.kind = name, model, _family(model)
        self.batch_size = limits["max_batch_size"]
        self.batcher = Batcher(name, self._run, metrics=metrics, **limits)

    @property
    def max_input_length(self) -> int:
        return int(self.model.max_seq_length)

    def info(self) -> dict:
        out = {"id": self.name, "kind": self.kind, "family": type(self.model).__name__,
               "max_input_length": self.max_input_length}
        if self.kind == "embedding":
            out["dimension"] = int(self.model.get_embedding_dimension())
            out["prompts"] = sorted(self.model.prompts)
        return out

    def _run(self, key: tuple, items: list):
        if self.kind == "embedding":
            (prompt,) = key
            return self.model.encode(items, prompt=prompt, batch_size=self.batch_size, convert_to_numpy=True)
        (raw,) = key
        return self.model.predict(items, batch_size=self.batch_size, activation_fn=_identity if raw else None,
                                  convert_to_numpy=True)

    # tokenizing, off the event loop: token counts for usage and the token budget, and what was truncated

    def count_text_tokens(self, texts: list[str], prompt: str | None) -> tuple[list[int], list[bool]]:
        encodings = self.model.tokenizer.encode_ids([prompt + t for t in texts] if prompt else texts)
        return [len(e.ids) for e in encodings], [bool(e.overflowing) for e in encodings]

    def count_pair_tokens(self, pairs: list[tuple[str, str]]) -> list[int]:
        batch = self.model.tokenize(pairs)
        return [int(n) for n in batch["attention_mask"].sum(axis=1)]


# ---------------------------------------------------------------------------------------- request parsing


async def _read_json(request, limit: int):
    length = request.headers.get("content-length")
    if length is not None:
        try:
            too_big = int(length) > limit
        except ValueError:
            raise ClientError(400, f"invalid Content-Length {length!r}") from None
        if too_big:
            raise ClientError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes",
                              "payload_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ClientError(413, f"request body is over the limit of {limit} bytes", "payload_too_large")
    try:
        data = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise ClientError(400, f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ClientError(422, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _texts(value, field_name: str, limit: int) -> tuple[list[str], bool]:
    """A string or a non-empty list of non-empty strings (at most ``limit``); returns (texts, single)."""
    if isinstance(value, str):
        texts, single = [value], True
    elif isinstance(value, list):
        texts, single = value, False
    elif value is None:
        raise ClientError(422, f"`{field_name}` is required")
    else:
        raise ClientError(422, f"`{field_name}` must be a string or a list of strings, got {type(value).__name__}")
    if not texts:
        raise ClientError(422, f"`{field_name}` is empty")
    if len(texts) > limit:
        raise ClientError(422, f"`{field_name}` holds {len(texts)} texts; at most {limit} per request "
                               "(max_client_batch_size)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            if isinstance(t, int) or (isinstance(t, list) and all(isinstance(x, int) for x in t)):
                raise ClientError(422, f"`{field_name}`: token-id input is not supported; send text")
            raise ClientError(422, f"`{field_name}`[{i}] must be a string, got {type(t).__name__}")
        if not t:
            raise ClientError(422, f"`{field_name}`[{i}] is an empty string")
    return texts, single


def _flag(data: dict, name: str, default: bool) -> bool:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ClientError(422, f"`{name}` must be a boolean, got {type(value).__name__}")
    return value


def _optional_int(data: dict, name: str, minimum: int = 1) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ClientError(422, f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return value


def _string(data: dict, name: str, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise ClientError(422, f"`{name}` is required")
        return None
    if not isinstance(value, str):
        raise ClientError(422, f"`{name}` must be a string, got {type(value).__name__}")
    return value


def _normalize(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------------------- the app


def create_app(
    models: dict,
    *,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
):
    """A Starlette app serving ``models`` (``{name: SentenceTransformer | CrossEncoder}``); see the module doc.

    Each model gets a worker thread, started and stopped with the app's lifespan (uvicorn runs it; on SIGTERM
    uvicorn stops accepting, lets in-flight requests finish, then the workers finish their queues and end).
    ``app.state.batchers`` maps each name to its ``Batcher``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    if not isinstance(models, dict) or not models:
        raise ValueError("create_app needs a non-empty dict {name: model}")
    for name, value in (("max_batch_tokens", max_batch_tokens), ("max_batch_size", max_batch_size),
                        ("max_concurrent_requests", max_concurrent_requests),
                        ("max_client_batch_size", max_client_batch_size), ("max_body_bytes", max_body_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ValueError("api_key must be a non-empty string or None")

    metrics = _Metrics()
    limits = dict(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                  max_queue=max_concurrent_requests)
    served = {}
    for name, model in models.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"model names must be non-empty strings, got {name!r}")
        served[name] = _Served(name, model, limits, metrics)
    expected_auth = None if api_key is None else f"Bearer {api_key}".encode()

    def pick(data: dict, kind: str) -> _Served:
        name = _string(data, "model")
        if name is None:
            of_kind = [s for s in served.values() if s.kind == kind]
            if len(of_kind) == 1:
                return of_kind[0]
            raise ClientError(422, f"`model` is required: this server has {len(of_kind)} {kind} models "
                                   f"({', '.join(s.name for s in of_kind)})")
        s = served.get(name)
        if s is None:
            raise ClientError(404, f"model {name!r} is not served here; served: {', '.join(served)}",
                              "model_not_found")
        if s.kind != kind:
            raise ClientError(422, f"model {name!r} is a {s.kind} model; this route needs a {kind} model")
        return s

    async def submit(s: _Served, items: list, key: tuple, tokens: int):
        loop = asyncio.get_running_loop()
        job = _Job(items, key, tokens, loop, loop.create_future())
        s.batcher.submit(job)
        metrics.inputs.labels(s.name).inc(len(items))
        metrics.tokens.labels(s.name).inc(tokens)
        return await job.future

    async def embed_rows(data: dict, s: _Served, texts: list[str], *, truncate: bool, prompt_name: str | None,
                         dimensions: int | None, normalize: bool) -> tuple[np.ndarray, int]:
        model = s.model
        if prompt_name is not None:
            if prompt_name not in model.prompts:
                raise ClientError(422, f"prompt_name {prompt_name!r} is not one of the model's prompts "
                                       f"{sorted(model.prompts)}")
            prompt = model.prompts[prompt_name]
        elif model.default_prompt_name is not None:
            prompt = model.prompts.get(model.default_prompt_name)
        else:
            prompt = None
        dim = int(model.get_embedding_dimension())
        if dimensions is not None and dimensions > dim:
            raise ClientError(422, f"`dimensions` {dimensions} is over the model's {dim}")
        lengths, truncated = await run_in_threadpool(s.count_text_tokens, texts, prompt)
        if not truncate and any(truncated):
            i = truncated.index(True)
            raise ClientError(413, f"input {i} is over the model's {s.max_input_length} tokens; send "
                                   "`truncate: true` to truncate it", "input_too_long")
        rows = await submit(s, texts, (prompt,), sum(lengths))
        rows = np.asarray(rows, dtype=np.float32)
        if dimensions is not None:
            rows = rows[:, :dimensions]
        if normalize:
            rows = _normalize(rows)
        return rows, sum(lengths)

    # ------------------------------------------------------------------ handlers

    async def openai_embeddings(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, "embedding")
        texts, _ = _texts(data.get("input"), "input", max_client_batch_size)
        fmt = _string(data, "encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ClientError(422, f"`encoding_format` must be 'float' or 'base64', got {fmt!r}")
        dimensions = _optional_int(data, "dimensions")
        rows, tokens = await embed_rows(data, s, texts, truncate=True, prompt_name=_string(data, "prompt_name"),
                                        dimensions=dimensions, normalize=False)
        if fmt == "base64":
            encoded = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in rows]
        else:
            encoded = rows.tolist()
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": s.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def tei_embed(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, "embedding")
        texts, _ = _texts(data.get("inputs"), "inputs", max_client_batch_size)
        rows, _ = await embed_rows(data, s, texts, truncate=_flag(data, "truncate", False),
                                   prompt_name=_string(data, "prompt_name"),
                                   dimensions=_optional_int(data, "dimensions"),
                                   normalize=_flag(data, "normalize", True))
        return JSONResponse(rows.tolist())

    async def scores(data: dict, s: _Served, docs_field: str) -> tuple[str, list[str], np.ndarray, int]:
        query = _string(data, "query", required=True)
        if not query:
            raise ClientError(422, "`query` is an empty string")
        raw_docs = data.get(docs_field)
        if isinstance(raw_docs, list):  # Cohere also takes {"text": ...} objects
            raw_docs = [d["text"] if isinstance(d, dict) and isinstance(d.get("text"), str) else d
                        for d in raw_docs]
        docs, single = _texts(raw_docs, docs_field, max_client_batch_size)
        if single:
            raise ClientError(422, f"`{docs_field}` must be a list of strings")
        pairs = [(query, d) for d in docs]
        lengths = await run_in_threadpool(s.count_pair_tokens, pairs)
        raw = _flag(data, "raw_scores", False)
        result = await submit(s, pairs, (raw,), sum(lengths))
        return query, docs, np.asarray(result, dtype=np.float32).reshape(len(docs)), sum(lengths)

    def reranker(data: dict) -> _Served:
        s = pick(data, "reranker")
        if s.model.num_labels != 1:
            raise ClientError(422, f"model {s.name!r} has {s.model.num_labels} labels; reranking needs one")
        return s

    async def tei_rerank(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = reranker(data)
        field_name = "texts" if "texts" in data or "documents" not in data else "documents"
        top_n = _optional_int(data, "top_n", 0)
        return_text = _flag(data, "return_text", False) or _flag(data, "return_documents", False)
        _, docs, score, _ = await scores(data, s, field_name)
        order = sorted(range(len(docs)), key=lambda i: -float(score[i]))[:top_n]
        out = [{"index": i, "score": float(score[i])} | ({"text": docs[i]} if return_text else {}) for i in order]
        return JSONResponse(out)

    async def v1_rerank(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = reranker(data)
        top_n = _optional_int(data, "top_n", 0)
        return_documents = _flag(data, "return_documents", False)
        _, docs, score, tokens = await scores(data, s, "documents")
        order = sorted(range(len(docs)), key=lambda i: -float(score[i]))[:top_n]
        results = [{"index": i, "relevance_score": float(score[i])}
                   | ({"document": {"text": docs[i]}} if return_documents else {}) for i in order]
        return JSONResponse({"model": s.name, "results": results, "usage": {"total_tokens": tokens}})

    async def health(request: Request):
        alive = all(s.batcher.alive for s in served.values())
        return JSONResponse({"status": "ok" if alive else "starting"}, status_code=200 if alive else 503)

    async def info(request: Request):
        from jaxst import __version__

        first = next(iter(served.values()))
        return JSONResponse({
            "model_id": first.name, "model_type": first.kind, "max_input_length": first.max_input_length,
            "models": [s.info() for s in served.values()],
            "max_batch_tokens": max_batch_tokens, "max_batch_size": max_batch_size,
            "max_concurrent_requests": max_concurrent_requests, "max_client_batch_size": max_client_batch_size,
            "max_body_bytes": max_body_bytes, "version": __version__,
        })

    async def list_models(request: Request):
        return JSONResponse({"object": "list", "data": [
            {"id": s.name, "object": "model", "owned_by": "jaxst", "created": 0} for s in served.values()]})

    async def prometheus(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def endpoint(route: str, handler, open_route: bool = False):
        async def wrapped(request: Request):
            start = time.perf_counter()
            try:
                if expected_auth is not None and not open_route:
                    given = request.headers.get("authorization", "").encode()
                    if not hmac.compare_digest(given, expected_auth):
                        raise ClientError(401, "missing or wrong API key (send `Authorization: Bearer <key>`)",
                                          "unauthorized", {"WWW-Authenticate": "Bearer"})
                response = await handler(request)
            except ClientError as e:
                response = JSONResponse({"error": {"message": e.message, "type": e.kind, "code": e.status}},
                                        status_code=e.status, headers=e.headers)
            except Exception as e:  # noqa: BLE001 - a server fault: a 500 with its message, the server lives on
                response = JSONResponse({"error": {"message": f"{type(e).__name__}: {e}", "type": "server_error",
                                                   "code": 500}}, status_code=500)
            metrics.requests.labels(route, str(response.status_code)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - start)
            return response

        return wrapped

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for s in served.values():
            s.batcher.start()
        try:
            yield
        finally:
            await run_in_threadpool(lambda: [s.batcher.stop() for s in served.values()])

    routes = [
        Route("/v1/embeddings", endpoint("/v1/embeddings", openai_embeddings), methods=["POST"]),
        Route("/embeddings", endpoint("/embeddings", openai_embeddings), methods=["POST"]),
        Route("/embed", endpoint("/embed", tei_embed), methods=["POST"]),
        Route("/rerank", endpoint("/rerank", tei_rerank), methods=["POST"]),
        Route("/v1/rerank", endpoint("/v1/rerank", v1_rerank), methods=["POST"]),
        Route("/health", endpoint("/health", health, open_route=True), methods=["GET"]),
        Route("/info", endpoint("/info", info), methods=["GET"]),
        Route("/v1/models", endpoint("/v1/models", list_models), methods=["GET"]),
        Route("/metrics", endpoint("/metrics", prometheus), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.batchers = {name: s.batcher for name, s in served.items()}
    app.state.metrics_registry = metrics.registry
    return app


def served_name(name_or_path: str) -> str:
    """The name a model is served under: a folder by its last path component, a Hub name as written."""
    import os
    from pathlib import Path

    return Path(name_or_path).resolve().name if os.path.isdir(name_or_path) else name_or_path
