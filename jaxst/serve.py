"""``jaxst serve``: an HTTP server for the four model families, with dynamic batching.

    from jaxst.serve import create_app
    app = create_app({"minilm": SentenceTransformer("all-MiniLM-L6-v2"),
                      "reranker": CrossEncoder("cross-encoder/ms-marco-MiniLM-L6-v2")})
    uvicorn.run(app, host="127.0.0.1", port=8080)

Routes (a request's ``model`` names a served model; it may be left out when one model of the right kind is served).
Which family a route takes is its kind in ``FAMILIES``: embedding (SentenceTransformer), sparse (SparseEncoder),
multi_vector (MultiVectorEncoder), reranker (CrossEncoder, LLM rerankers included).

- ``POST /v1/embeddings`` (also ``/embeddings``), embedding: OpenAI's shape (``input`` a string, a list of strings,
  a list of token ids or a list of such lists; ``model``, ``encoding_format`` ``float`` or ``base64``
  (little-endian float32), ``dimensions`` as Matryoshka truncation, ``usage``); texts are truncated to the
  model's length, token ids over it are refused (413);
- ``POST /embed``, embedding: text-embeddings-inference's shape (``inputs``, ``normalize`` (default true),
  ``truncate`` (default false: an input over the model's length is refused with 413), ``prompt_name``,
  ``dimensions``);
- ``POST /embed_sparse``, sparse: per text a list of ``{index, value}`` (its non-zero dimensions, by index);
- ``POST /embed_all``, multi_vector or embedding: per text its token embeddings (a multi-vector model's kept
  tokens; ``task`` "query" / "document" as ``encode_query`` / ``encode_document``);
- ``POST /similarity``, embedding: ``{"inputs": {"source_sentence", "sentences"}}``, the model's similarity of
  the source to each sentence;
- ``POST /tokenize``, any: per text ``{id, text, special, start, stop}`` (character offsets;
  ``add_special_tokens``, ``prompt_name``);
- ``POST /rerank`` (text-embeddings-inference: ``query``, ``texts``, ``raw_scores``, ``return_text``; a list of
  ``{index, score[, text]}``) and ``POST /v1/rerank`` (Cohere / Jina: ``query``, ``documents``, ``top_n``,
  ``return_documents``; ``results`` of ``{index, relevance_score[, document]}``), reranker;
- ``GET /health``, ``GET /info``, ``GET /v1/models``, ``GET /metrics`` (Prometheus' text format, one registry per
  app).

Batching: each model has one queue and one worker thread. A request is validated and tokenized (off the event
loop) and queued; the worker takes the oldest request and every queued request that can share its call (the same
output and prompt, or the same score activation) while the batch stays within ``max_batch_size`` texts and
``max_batch_tokens`` tokens, runs them through one call of the model (whose engine sorts them by length into
forward passes of at most ``batch_size`` rows, on the length buckets it compiles), and hands each request its own
rows. Sentence embeddings run the encodings the
request was counted with (``SentenceTransformer.encode_tokenized``): a text is tokenized once. A model's queue
holds at most ``max_concurrent_requests`` requests; past that a request gets 429 with ``Retry-After``.

Start: with ``warmup_tokens`` every model runs, before the server accepts a request, batches of 1, 2, 4 ...
``batch_size`` inputs at every padded length of the engine's grid up to that many tokens, so the shapes such
requests meet are compiled, not met under load; JAX's persistent compilation cache (``jaxst.compilation_cache``,
on by default) keeps the compiled programs for the next start.

Bad input is a 4xx JSON error ``{"error": {"message", "type", "code"}}``, never a 500: malformed JSON 400, wrong
types / empty input / too many texts / unknown prompt / a route the model's family does not serve 422, unknown
model 404, body over ``max_body_bytes`` or an input over the model's length (unless truncated) 413, missing or
wrong bearer key (when ``api_key`` is set; ``/health`` stays open) 401. An error inside a batch fails the requests
of that batch, never the worker.
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
DEFAULT_MAX_BATCH_SIZE = 256  # texts one model call takes from the queue (its engine splits them, sorted by length)
# Rows of one forward pass (the engine's batch_size). Small: the engine sorts a call's texts by length, so small
# forward batches pad little; measured on 2 AMD EPYC cores (AVX2), 32 to 128 STSb sentences encode 1.2-1.8x faster
# 8 rows at a time than 32 (benchmarks/README.md, Serving).
DEFAULT_BATCH_SIZE = 8
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


def _identity(x):
    return x


@dataclass
class TokenIds:
    """Token ids a client sent in place of a text: what the engine pads, as a tokenizer's encoding."""

    ids: list[int]

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)


class _Served:
    """A served model: its family's kind (which routes take it), its batcher, and how a batch runs.

    One subclass per family, in ``FAMILIES``. ``run(key, items)`` runs one batch: ``key`` is the tuple that
    lets requests share a call (its first entry names the output), ``items`` the requests' texts (or pairs,
    or encodings) in order; it returns one row per item."""

    kind = ""
    has_dimension = False  # one embedding dimension to report in /info

    def __init__(self, name: str, model, limits: dict, metrics: _Metrics, batch_size: int):
        self.name, self.model = name, model
        self.batch_size = batch_size
        self.batcher = Batcher(name, self.run, metrics=metrics, **limits)

    @property
    def max_input_length(self) -> int:
        return int(self.model.max_seq_length)

    def info(self) -> dict:
        out = {"id": self.name, "kind": self.kind, "family": type(self.model).__name__,
               "max_input_length": self.max_input_length, "prompts": sorted(getattr(self.model, "prompts", {}))}
        if self.has_dimension:
            out["dimension"] = int(self.model.get_embedding_dimension())
        return out

    def run(self, key: tuple, items: list):
        raise NotImplementedError

    def prompt(self, prompt_name: str | None) -> str | None:
        """The prompt text of ``prompt_name`` (422 if the model has none such), else the model's default: what
        the model's ``encode`` resolves."""
        try:
            return self.model._resolve_prompt(None, prompt_name)
        except ValueError as e:
            raise ClientError(422, f"prompt_name: {e}") from None

    def tokenize(self, texts: list[str], prompt: str | None) -> list:
        """The texts' encodings (``prompt`` in front), as the model's ``encode`` tokenizes them; off the loop."""
        return self.model.tokenizer.encode_ids([prompt + t for t in texts] if prompt else texts)

    def warm_key_items(self, length: int, rows: int) -> tuple[tuple, list]:
        """A batch of ``rows`` inputs of about ``length`` tokens, in the shape ``run`` takes (warm-up)."""
        return (None, None), [_words(length - 2)] * rows

    def warm_up(self, max_tokens: int) -> int:
        """Compile the shapes requests of up to ``max_tokens`` tokens meet: every padded length of the engine's
        grid up to there (``jaxst.engine.seq_bucket``), in batches of 1, 2, 4 ... ``batch_size`` rows. Returns
        the batches run."""
        from jaxst.engine import seq_bucket

        top = min(max_tokens, self.max_input_length)
        lengths = sorted({seq_bucket(n, top) for n in range(1, top + 1)})
        runs = 0
        for length in lengths:
            rows = 1
            while True:
                self.run(*self.warm_key_items(length, min(rows, self.batch_size)))
                runs += 1
                if rows >= self.batch_size:
                    break
                rows *= 2
        return runs


class _Dense(_Served):
    """A SentenceTransformer: sentence embeddings (``/v1/embeddings``, ``/embed``, ``/similarity``) and token
    embeddings (``/embed_all``). Sentence embeddings run the encodings the request was counted with
    (``encode_tokenized``): each text is tokenized once."""

    kind = "embedding"
    has_dimension = True

    def run(self, key: tuple, items: list):
        output, prompt = key
        if output == "tokens":
            return self.model.encode(items, prompt=prompt, batch_size=self.batch_size,
                                     output_value="token_embeddings")
        return self.model.encode_tokenized(items, prompt, batch_size=self.batch_size)

    def warm_key_items(self, length: int, rows: int) -> tuple[tuple, list]:
        ids = self.tokenize(["hello"], None)[0].ids  # exactly ``length`` ids: [first] hello ... hello [last]
        return ("sentence", None), [TokenIds(ids[:1] + [ids[len(ids) // 2]] * max(length - 2, 0) + ids[-1:])] * rows


class _Sparse(_Served):
    """A SparseEncoder: ``/embed_sparse``, each row the (index, value) pairs of its non-zero dimensions."""

    kind = "sparse"
    has_dimension = True

    def run(self, key: tuple, items: list):
        _, prompt = key
        out = self.model.encode(items, prompt=prompt, batch_size=self.batch_size)  # a BCOO, fixed-width rows
        values, indices = np.asarray(out.data, np.float32), np.asarray(out.indices)[..., 0]
        vocab = out.shape[1]
        rows = []
        for v, i in zip(values, indices):
            keep = (i < vocab) & (v != 0)
            order = np.argsort(i[keep], kind="stable")
            rows.append((i[keep][order], v[keep][order]))
        return rows


class _MultiVector(_Served):
    """A MultiVectorEncoder: ``/embed_all``, one (tokens, dim) matrix per text (the tokens its mask keeps)."""

    kind = "multi_vector"

    def run(self, key: tuple, items: list):
        _, prompt, task = key
        return self.model.encode(items, prompt=prompt, batch_size=self.batch_size, convert_to_numpy=True,
                                 task=task)

    def warm_key_items(self, length: int, rows: int) -> tuple[tuple, list]:
        return ("tokens", None, None), [_words(length - 2)] * rows


class _Reranker(_Served):
    """A CrossEncoder (LLM rerankers included): ``/rerank``, ``/v1/rerank``; items are (query, document)."""

    kind = "reranker"

    def run(self, key: tuple, items: list):
        _, raw = key
        return self.model.predict(items, batch_size=self.batch_size, activation_fn=_identity if raw else None,
                                  convert_to_numpy=True)

    def warm_key_items(self, length: int, rows: int) -> tuple[tuple, list]:
        half = _words((length - 3) // 2)
        return ("scores", False), [(half, half)] * rows

    def count_pair_tokens(self, pairs: list[tuple[str, str]]) -> list[int]:
        batch = self.model.tokenize(pairs)
        return [int(n) for n in batch["attention_mask"].sum(axis=1)]


# family class name -> how it is served
FAMILIES = {"SentenceTransformer": _Dense, "SparseEncoder": _Sparse, "MultiVectorEncoder": _MultiVector,
            "CrossEncoder": _Reranker}


def _words(n: int) -> str:
    """A text of about ``n`` tokens for most tokenizers (warm-up input)."""
    return " ".join(["hello"] * max(n, 1))


def _served(name: str, model, limits: dict, metrics: _Metrics, batch_size: int) -> _Served:
    import jaxst

    for family, cls in FAMILIES.items():
        if isinstance(model, getattr(jaxst, family)):
            return cls(name, model, limits, metrics, batch_size)
    raise ValueError(f"jaxst serve serves {', '.join(FAMILIES)} models; {name!r} is a {type(model).__name__}")


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


def _texts(value, field_name: str, limit: int, token_ids: bool = False) -> tuple[list, bool]:
    """A string or a non-empty list of non-empty strings (at most ``limit``); returns (texts, single). With
    ``token_ids`` (OpenAI's ``input``) also a list of token ids, or a list of such lists: ``TokenIds`` items."""
    if token_ids and isinstance(value, list) and value and all(_is_id(x) for x in value):
        value = [value]  # one text as token ids
        single = True
    else:
        single = isinstance(value, str)
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list):
        texts = value
    elif value is None:
        raise ClientError(422, f"`{field_name}` is required")
    else:
        raise ClientError(422, f"`{field_name}` must be a string or a list of strings, got {type(value).__name__}")
    if not texts:
        raise ClientError(422, f"`{field_name}` is empty")
    if len(texts) > limit:
        raise ClientError(422, f"`{field_name}` holds {len(texts)} texts; at most {limit} per request "
                               "(max_client_batch_size)")
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, list) and all(_is_id(x) for x in t):
            if not token_ids:
                raise ClientError(422, f"`{field_name}`: token-id input is not supported here; send text")
            if not t:
                raise ClientError(422, f"`{field_name}`[{i}] is an empty list of token ids")
            out.append(TokenIds(list(t)))
            continue
        if not isinstance(t, str):
            raise ClientError(422, f"`{field_name}`[{i}] must be a string"
                                   f"{' or a list of token ids' if token_ids else ''}, got {type(t).__name__}")
        if not t:
            raise ClientError(422, f"`{field_name}`[{i}] is an empty string")
        out.append(t)
    if len({isinstance(t, TokenIds) for t in out}) > 1:
        raise ClientError(422, f"`{field_name}` mixes texts and token ids; send one kind per request")
    return out, single


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
    batch_size: int = DEFAULT_BATCH_SIZE,
    warmup_tokens: int = 0,
):
    """A Starlette app serving ``models`` (``{name: model}``, any of the four families); see the module doc.

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
                        ("max_client_batch_size", max_client_batch_size), ("max_body_bytes", max_body_bytes),
                        ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(warmup_tokens, int) or isinstance(warmup_tokens, bool) or warmup_tokens < 0:
        raise ValueError(f"warmup_tokens must be an integer >= 0, got {warmup_tokens!r}")
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise ValueError("api_key must be a non-empty string or None")

    metrics = _Metrics()
    limits = dict(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                  max_queue=max_concurrent_requests)
    served = {}
    for name, model in models.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"model names must be non-empty strings, got {name!r}")
        served[name] = _served(name, model, limits, metrics, batch_size)
    expected_auth = None if api_key is None else f"Bearer {api_key}".encode()

    def pick(data: dict, *kinds: str) -> _Served:
        name = _string(data, "model")
        if name is None:
            of_kind = [s for s in served.values() if s.kind in kinds]
            if len(of_kind) == 1:
                return of_kind[0]
            raise ClientError(422, f"`model` is required: this server has {len(of_kind)} {' or '.join(kinds)} "
                                   f"models ({', '.join(s.name for s in of_kind)})")
        s = served.get(name)
        if s is None:
            raise ClientError(404, f"model {name!r} is not served here; served: {', '.join(served)}",
                              "model_not_found")
        if s.kind not in kinds:
            raise ClientError(422, f"model {name!r} is a {s.kind} model ({type(s.model).__name__}); this route "
                                   f"needs a {' or '.join(kinds)} model")
        return s

    async def submit(s: _Served, items: list, key: tuple, tokens: int):
        loop = asyncio.get_running_loop()
        job = _Job(items, key, tokens, loop, loop.create_future())
        s.batcher.submit(job)
        metrics.inputs.labels(s.name).inc(len(items))
        metrics.tokens.labels(s.name).inc(tokens)
        return await job.future

    def check_ids(s: _Served, items: list) -> None:
        tokenizer = s.model.tokenizer
        rows = tokenizer.id_rows or tokenizer.backend.get_vocab_size(with_added_tokens=True)
        for i, item in enumerate(items):
            bad = next((t for t in item.ids if not 0 <= t < rows), None)
            if bad is not None:
                raise ClientError(422, f"input {i}: token id {bad} is outside the model's vocabulary of {rows}")
            if len(item.ids) > s.max_input_length:
                raise ClientError(413, f"input {i} has {len(item.ids)} token ids, over the model's "
                                       f"{s.max_input_length}", "input_too_long")

    async def encodings(s: _Served, texts: list, prompt: str | None, truncate: bool) -> list:
        """The request's texts tokenized (off the event loop; 413 for a text over the model's length unless
        ``truncate``), or its token ids checked."""
        if isinstance(texts[0], TokenIds):
            check_ids(s, texts)
            return texts
        out = await run_in_threadpool(s.tokenize, texts, prompt)
        if not truncate:
            over = next((i for i, e in enumerate(out) if e.overflowing), None)
            if over is not None:
                raise ClientError(413, f"input {over} is over the model's {s.max_input_length} tokens; send "
                                       "`truncate: true` to truncate it", "input_too_long")
        return out

    async def embed_rows(s: _Served, texts: list, *, truncate: bool, prompt_name: str | None,
                         dimensions: int | None, normalize: bool) -> tuple[np.ndarray, int]:
        if isinstance(texts[0], TokenIds) and prompt_name is not None:
            raise ClientError(422, "`prompt_name` needs text input; token ids are encoded as they are")
        prompt = None if isinstance(texts[0], TokenIds) else s.prompt(prompt_name)
        dim = int(s.model.get_embedding_dimension())
        if dimensions is not None and dimensions > dim:
            raise ClientError(422, f"`dimensions` {dimensions} is over the model's {dim}")
        items = await encodings(s, texts, prompt, truncate)
        tokens = sum(len(e.ids) for e in items)
        rows = np.asarray(await submit(s, items, ("sentence", prompt), tokens), dtype=np.float32)
        if dimensions is not None:
            rows = rows[:, :dimensions]
        if normalize:
            rows = _normalize(rows)
        return rows, tokens

    # ------------------------------------------------------------------ handlers

    async def openai_embeddings(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, "embedding")
        texts, _ = _texts(data.get("input"), "input", max_client_batch_size, token_ids=True)
        fmt = _string(data, "encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ClientError(422, f"`encoding_format` must be 'float' or 'base64', got {fmt!r}")
        dimensions = _optional_int(data, "dimensions")
        rows, tokens = await embed_rows(s, texts, truncate=True, prompt_name=_string(data, "prompt_name"),
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
        rows, _ = await embed_rows(s, texts, truncate=_flag(data, "truncate", False),
                                   prompt_name=_string(data, "prompt_name"),
                                   dimensions=_optional_int(data, "dimensions"),
                                   normalize=_flag(data, "normalize", True))
        return JSONResponse(rows.tolist())

    async def tei_embed_sparse(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, "sparse")
        texts, _ = _texts(data.get("inputs"), "inputs", max_client_batch_size)
        prompt = s.prompt(_string(data, "prompt_name"))
        items = await encodings(s, texts, prompt, _flag(data, "truncate", False))
        rows = await submit(s, texts, ("sparse", prompt), sum(len(e.ids) for e in items))
        return JSONResponse([[{"index": int(i), "value": float(v)} for i, v in zip(*row)] for row in rows])

    async def tei_embed_all(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, "multi_vector", "embedding")
        texts, _ = _texts(data.get("inputs"), "inputs", max_client_batch_size)
        prompt = s.prompt(_string(data, "prompt_name"))
        items = await encodings(s, texts, prompt, _flag(data, "truncate", False))
        if s.kind == "multi_vector":
            task = _string(data, "task")
            if task not in (None, "query", "document"):
                raise ClientError(422, f"`task` must be 'query' or 'document', got {task!r}")
            key = ("tokens", prompt, task)
        else:
            key = ("tokens", prompt)
        rows = await submit(s, texts, key, sum(len(e.ids) for e in items))
        return JSONResponse([np.asarray(row, np.float32).tolist() for row in rows])

    async def tei_similarity(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, "embedding")
        inputs = data.get("inputs")
        if not isinstance(inputs, dict):
            raise ClientError(422, "`inputs` must be an object {source_sentence, sentences}")
        source = _string(inputs, "source_sentence", required=True)
        if not source:
            raise ClientError(422, "`source_sentence` is an empty string")
        sentences, single = _texts(inputs.get("sentences"), "sentences", max_client_batch_size - 1)
        if single:
            raise ClientError(422, "`sentences` must be a list of strings")
        rows, _ = await embed_rows(s, [source, *sentences], truncate=_flag(data, "truncate", False),
                                   prompt_name=_string(data, "prompt_name"), dimensions=None, normalize=False)
        sim = np.asarray(s.model.similarity(rows[:1], rows[1:]), np.float32)[0]
        return JSONResponse([float(x) for x in sim])

    async def tei_tokenize(request: Request):
        data = await _read_json(request, max_body_bytes)
        s = pick(data, *{x.kind for x in served.values()})
        texts, _ = _texts(data.get("inputs"), "inputs", max_client_batch_size)
        prompt = s.prompt(_string(data, "prompt_name")) if s.kind != "reranker" else None
        special = _flag(data, "add_special_tokens", True)
        tokenizer = s.model.tokenizer

        def tokenize():
            full = [prompt + t for t in texts] if prompt else texts
            out = []
            for text, e in zip(full, tokenizer.backend.encode_batch(full, add_special_tokens=special)):
                out.append([{"id": int(i), "text": text[a:b] if b > a else tok,
                             "special": int(i) in tokenizer.all_special_ids, "start": a, "stop": b}
                            for i, tok, (a, b) in zip(e.ids, e.tokens, e.offsets)])
            return out

        return JSONResponse(await run_in_threadpool(tokenize))

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
        result = await submit(s, pairs, ("scores", raw), sum(lengths))
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
            "max_batch_tokens": max_batch_tokens, "max_batch_size": max_batch_size, "batch_size": batch_size,
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

    def warm_up():
        import logging

        log = logging.getLogger("jaxst.serve")
        for s in served.values():
            start = time.perf_counter()
            runs = s.warm_up(warmup_tokens)
            log.warning("jaxst serve: warmed up %s (%d batch shapes) in %.1f s", s.name, runs,
                        time.perf_counter() - start)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if warmup_tokens:
            await run_in_threadpool(warm_up)
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
        Route("/embed_sparse", endpoint("/embed_sparse", tei_embed_sparse), methods=["POST"]),
        Route("/embed_all", endpoint("/embed_all", tei_embed_all), methods=["POST"]),
        Route("/similarity", endpoint("/similarity", tei_similarity), methods=["POST"]),
        Route("/tokenize", endpoint("/tokenize", tei_tokenize), methods=["POST"]),
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
