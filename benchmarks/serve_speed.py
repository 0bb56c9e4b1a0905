"""Serving speed: `jaxst serve` (float32 and int8) vs infinity-emb and a plain sentence-transformers server, under
load over loopback, all serving all-MiniLM-L6-v2 from the same folder on this machine.

    python benchmarks/serve_speed.py [--servers jaxst,jaxst-int8,infinity,st] [--clients 32] [--duration 10]
                                     [--warmup 5] [--rounds 3] [--batches 1,32] [--infinity-venv /work/venvs/infinity]

The servers, each a subprocess on 127.0.0.1 (a free port, its own process group, HF_HUB_OFFLINE=1, the thread
settings this process has: no OMP_NUM_THREADS or the like is set or changed here):

- ``jaxst``: ``python -m jaxst serve FOLDER`` (float32, this interpreter), its defaults (dynamic batching: a model
  call takes up to 256 queued texts / 16384 tokens, sorted by length into forward passes of 8 rows; the shapes of
  inputs up to 64 tokens compiled at start-up, ``--warmup-tokens``);
- ``jaxst-int8``: the same with ``--dtype int8``;
- ``infinity``: ``infinity_emb v2 --engine torch --device cpu`` (infinity-emb's dynamic batching, batch size 32;
  its defaults: no torch.compile, no vector disk cache, BetterTransformer only where optimum is installed, and it
  is not in the venv below), route ``/embeddings``;
- ``st``: the baseline, sentence-transformers behind FastAPI (``ST_APP`` below, run by uvicorn): one endpoint that
  calls ``model.encode(texts)`` for each request as it comes (no batching across requests; FastAPI's threadpool
  runs the encode calls side by side).

infinity-emb pins old packages (numpy < 2, sentence-transformers < 4, click < 8.2, typer 0.12, uvicorn 0.32), so
it and the baseline run from a venv of their own, never from jaxst's. What worked (infinity-emb 0.0.78, torch
2.13.0+cpu, transformers 4.57.6, sentence-transformers 3.4.1, fastapi 0.165.0, Python 3.11):

    python3 -m venv /work/venvs/infinity
    /work/venvs/infinity/bin/pip install torch==2.13.0            # first: the CPU build (torch.version.cuda is None)
    /work/venvs/infinity/bin/pip install "infinity-emb[server,torch]==0.0.78" torch==2.13.0

(the second brings fastapi, uvicorn[standard] and sentence-transformers with it). Here torch==2.13.0 resolved to
2.13.0+cpu from the machine's local wheel folder (pip's find-links); where there is none, the CPU build comes
with ``--index-url https://download.pytorch.org/whl/cpu``, as PyPI's Linux torch wheels pull in CUDA. A server
whose program is missing is skipped with the reason; ``--servers`` picks them. Each server's line says which HTTP
parser its uvicorn uses: httptools where installed (jaxst's serve extra and the infinity venv install it), else
the pure-Python h11, which costs CPU per request.

Load: one client process (this one: raw HTTP/1.1 over asyncio streams with keep-alive, uvloop where installed,
to leave the two cores to the servers), ``--clients`` workers each sending OpenAI-shaped requests ``{"model",
"input": [...]}`` back to back for ``--duration`` seconds; one workload per ``--batches`` entry (sentences per
request), texts drawn from STSb's test and dev sentences with a seeded rng, the same requests for every server.
Every response is checked (status 200, one embedding of 384 floats per input); a failure counts as an error and
is printed, never dropped silently. A run's throughput is what completed over the time until the last worker's
last request came back (requests in flight at the deadline are waited for); latency is per request, send to last
byte. Each server is warmed up right after it starts with ``--warmup`` seconds of each workload (jaxst has
compiled its shapes before it accepts: its start-up time is printed). While one server is
measured the others are stopped (SIGSTOP, resumed with SIGCONT for their turn), so an idle server's threads
cannot take CPU from it.

``--rounds`` rounds, each one run of every (server, workload), the server order flipped every round. Reported
per server and workload: the median over rounds of sentences/s, requests/s, p50 and p99 latency, the errors of all
rounds, and the CPU the server (its process tree) and the client used during the run (in cores); then the
ratios of throughput jaxst / infinity and jaxst / sentence-transformers (median of the per-round ratios), p99s
side by side, and each server's memory (VmRSS of its process tree) after the run. Every server is ended when the
script ends (SIGTERM, then SIGKILL; also on Ctrl-C, SIGTERM, or an error; each one gets SIGKILL from the kernel
if this process dies first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from _machine import header, row
from _stsb import unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
NAME = "all-MiniLM-L6-v2"  # the name every server serves the model under
DIM = 384
SERVERS = ("jaxst", "jaxst-int8", "infinity", "st")
LABELS = {"jaxst": "jaxst fp32", "jaxst-int8": "jaxst int8", "infinity": "infinity", "st": "st+fastapi"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS", "XLA_FLAGS",
               "TOKENIZERS_PARALLELISM")

# The baseline server: sentence-transformers behind FastAPI, one encode call per request, no batching across
# requests. A plain `def` route: FastAPI runs it in its threadpool, so concurrent requests encode side by side.
ST_APP = textwrap.dedent('''
    import os

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.environ["SERVE_SPEED_MODEL"], device="cpu")
    app = FastAPI()


    @app.get("/health")
    def health():
        return {"status": "ok"}


    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        texts = body["input"]
        texts = [texts] if isinstance(texts, str) else texts
        rows = model.encode(texts).tolist()
        return JSONResponse({"object": "list", "model": body.get("model"),
                             "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)]})
''')


# ------------------------------------------------------------------------------------------------ the servers


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when this script's process dies, however it dies."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of ``root``'s live process tree, in seconds."""
    ticks = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss_mib(root: int) -> float:
    """VmRSS of ``root``'s process tree, in MiB."""
    kib = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{pid}/status") as f:
                kib += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    return kib / 1024


def venv_versions(python: str, *packages: str) -> str:
    code = (f"from importlib import metadata\nfor p in {packages!r}:\n    try: print(p, metadata.version(p))\n"
            "    except metadata.PackageNotFoundError: pass")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.split("\n")
    return ", ".join(line for line in out if line)


def http_impl(python: str) -> str:
    """What uvicorn's http="auto" picks in that interpreter: httptools where installed, else h11."""
    code = "import importlib.util as u; print('httptools' if u.find_spec('httptools') else 'h11')"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() or "?"


@dataclass
class Server:
    key: str  # one of SERVERS
    command: list[str]
    route: str  # the embeddings route
    describe: str
    env: dict = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    log: Path | None = None
    started_in: float = 0.0

    @property
    def label(self) -> str:
        return LABELS[self.key]

    def start(self, logs: Path, timeout: float) -> None:
        self.log = logs / f"{self.key}.log"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        start = time.perf_counter()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True, preexec_fn=_die_with_parent)
        url = f"http://127.0.0.1:{self.port}/health"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} while starting:\n{self.tail()}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"{self.label} not ready after {timeout:.0f} s:\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            time.sleep(0.5)
        self.started_in = time.perf_counter() - start

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except (OSError, AttributeError):
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (its output was empty)"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        time.sleep(0.5)  # let it settle (timers, keep-alive sweeps) before the load starts

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=15)
        self.signal(signal.SIGKILL)  # anything left in its process group


def build_servers(keys: list[str], folder: Path, infinity_venv: Path, logs: Path) -> tuple[list[Server], list[str]]:
    """The servers asked for that can run here, and why the others cannot."""
    servers, skipped = [], []
    jaxst = [sys.executable, "-m", "jaxst", "serve", str(folder), "--served-model-name", NAME, "--log-level",
             "warning"]
    jaxst_http = http_impl(sys.executable)
    has_dtype = "--dtype" in subprocess.run([*jaxst[:4], "--help"], capture_output=True, text=True).stdout
    vpython, infinity = infinity_venv / "bin" / "python", infinity_venv / "bin" / "infinity_emb"
    for key in keys:
        port = free_port()
        if key == "jaxst":
            servers.append(Server(key, [*jaxst, "--port", str(port)], "/v1/embeddings",
                                  f"jaxst serve, float32 (uvicorn http: {jaxst_http})", port=port))
        elif key == "jaxst-int8":
            if not has_dtype:
                skipped.append(f"{key}: `jaxst serve` has no --dtype option in this checkout")
                continue
            servers.append(Server(key, [*jaxst, "--port", str(port), "--dtype", "int8"], "/v1/embeddings",
                                  f"jaxst serve --dtype int8 (uvicorn http: {jaxst_http})", port=port))
        elif key == "infinity":
            if not infinity.exists():
                skipped.append(f"{key}: no {infinity} (see this script's docstring for the venv)")
                continue
            command = [str(infinity), "v2", "--model-id", str(folder), "--served-model-name", NAME, "--engine",
                       "torch", "--device", "cpu", "--no-vector-disk-cache", "--host", "127.0.0.1", "--port",
                       str(port), "--log-level", "warning"]
            servers.append(Server(key, command, "/embeddings", "infinity_emb v2 --engine torch --device cpu ("
                                  + venv_versions(str(vpython), "infinity-emb", "torch", "transformers",
                                                  "sentence-transformers") + f"; http: {http_impl(str(vpython))})",
                                  env={"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}, port=port))
        elif key == "st":
            if not vpython.exists():
                skipped.append(f"{key}: no {vpython} (the baseline runs from the infinity venv)")
                continue
            app = logs / "st_app.py"
            app.write_text(ST_APP)
            command = [str(vpython), "-m", "uvicorn", "st_app:app", "--app-dir", str(logs), "--host", "127.0.0.1",
                       "--port", str(port), "--log-level", "warning", "--no-access-log"]
            servers.append(Server(key, command, "/v1/embeddings", "sentence-transformers + FastAPI, encode per "
                                  "request (" + venv_versions(str(vpython), "sentence-transformers", "torch",
                                                              "fastapi", "uvicorn") + f"; http: "
                                  f"{http_impl(str(vpython))})", env={"SERVE_SPEED_MODEL": str(folder)}, port=port))
    return servers, skipped


# ------------------------------------------------------------------------------------------------ the client


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read the status and the whole body."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=2**22)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        self.writer.write(request)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed by the server")
        status = int(status_line.split(None, 2)[1])
        length, chunked, close = None, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            body = b"".join(parts)
        elif length is not None:
            body = await self.reader.readexactly(length)
        else:
            body = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, body


def check(status: int, body: bytes, n: int) -> str | None:
    """None when the response holds ``n`` embeddings of DIM floats, else what is wrong."""
    if status != 200:
        return f"HTTP {status}: {body[:200].decode(errors='replace')}"
    try:
        data = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError) as e:
        return f"bad JSON ({type(e).__name__}): {body[:200].decode(errors='replace')}"
    if len(data) != n:
        return f"{len(data)} embeddings for {n} inputs"
    bad = next((len(d.get("embedding") or ()) for d in data if len(d.get("embedding") or ()) != DIM), None)
    return None if bad is None else f"an embedding of {bad} floats, not {DIM}"


@dataclass
class Run:
    requests: int = 0
    sentences: int = 0
    errors: int = 0
    error_messages: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    elapsed: float = 0.0
    server_cpu: float = 0.0  # cores
    client_cpu: float = 0.0  # cores

    def note_error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_messages) < 5:
            self.error_messages.append(message)

    def latency_ms(self, q: int) -> float:
        """The ``q``-th percentile of the successful requests' latencies, in ms."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000


def requests_for(server: Server, payloads: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
    """Whole HTTP requests (head and body) for ``server``, one per payload, with the payload's text count."""
    head = (f"POST {server.route} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            "Accept: application/json\r\n")
    return [(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body, n) for body, n in payloads]


async def load(port: int, requests: list[tuple[bytes, int]], clients: int, duration: float) -> Run:
    """``clients`` workers sending ``requests`` back to back (each from its own offset) for ``duration`` s."""
    run = Run()
    conns = [Connection(port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))

    async def worker(i: int, conn: Connection) -> float:
        k = i * len(requests) // clients
        end = time.perf_counter()
        while time.perf_counter() < deadline:
            request, n = requests[k % len(requests)]
            k += 1
            t0 = time.perf_counter()
            try:
                status, body = await conn.post(request)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                conn.close()
                run.note_error(f"{type(e).__name__}: {e}")
                end = time.perf_counter()
                continue
            end = time.perf_counter()
            problem = check(status, body, n)
            if problem is None:
                run.requests += 1
                run.sentences += n
                run.latencies.append(end - t0)
            else:
                run.note_error(problem)
        return end

    start = time.perf_counter()
    deadline = start + duration
    ends = await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    run.elapsed = max(ends) - start
    for c in conns:
        c.close()
    return run


def run_loop(coro):
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def measure(server: Server, requests, clients: int, duration: float) -> Run:
    cpu0, client0, t0 = tree_cpu_seconds(server.proc.pid), time.process_time(), time.perf_counter()
    run = run_loop(load(server.port, requests, clients, duration))
    wall = time.perf_counter() - t0
    run.server_cpu = (tree_cpu_seconds(server.proc.pid) - cpu0) / wall
    run.client_cpu = (time.process_time() - client0) / wall
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.label} died during the load (exit {server.proc.returncode}):\n{server.tail()}")
    return run


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    parser.add_argument("--clients", type=int, default=32, help="concurrent client workers")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of each workload after a server starts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,32", help="sentences per request, one workload each")
    parser.add_argument("--requests", type=int, default=2000, help="distinct requests drawn per workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--infinity-venv", type=Path,
                        default=Path(os.environ.get("INFINITY_VENV", "/work/venvs/infinity")),
                        help="the venv with infinity-emb, fastapi and sentence-transformers (default: $INFINITY_VENV "
                             "or /work/venvs/infinity)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds a server may take to be ready")
    args = parser.parse_args()
    keys = [k.strip() for k in args.servers.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SERVERS]
    if unknown:
        parser.error(f"unknown servers {unknown}; choose from {', '.join(SERVERS)}")
    batches = [int(b) for b in args.batches.split(",")]
    print(header("uvicorn", "starlette"), flush=True)
    threads = [f"{v}={os.environ[v]}" for v in THREAD_VARS if v in os.environ]
    print("thread settings: " + (", ".join(threads) or "process defaults (none of OMP/MKL/XLA_FLAGS set)"))

    from jaxst.io.hub import packaged_model_folder

    folder = packaged_model_folder(MODEL_ID)
    if folder is None:
        sys.exit(f"no packaged {MODEL_ID} installed (pip install the package jaxst.io.hub names for it)")
    rng = random.Random(args.seed)
    sentences = unique_sentences("stsb-en-test.csv", "stsb-en-dev.csv")
    workloads = {b: [[rng.choice(sentences) for _ in range(b)] for _ in range(args.requests)] for b in batches}

    def sigterm(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, sigterm)

    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="serve_speed_") as tmp:
        try:
            servers, skipped = build_servers(keys, folder, args.infinity_venv, Path(tmp))
            for reason in skipped:
                print(f"skipped {reason}")
            if not servers:
                sys.exit("no server to measure")
            reqs = {}
            for s in servers:
                payloads = {b: [(json.dumps({"model": NAME, "input": texts}).encode(), b) for texts in workloads[b]]
                            for b in batches}
                reqs[s.key] = {b: requests_for(s, p) for b, p in payloads.items()}
            shapes = ", ".join(f"{b} sentences/request" for b in batches)
            print(f"model: {NAME} ({folder}); {args.clients} clients; {args.duration:g} s per run after "
                  f"{args.warmup:g} s of warm-up per workload; workloads: {shapes}; medians of {args.rounds} rounds, "
                  "server order flipped every round, the other servers SIGSTOPped meanwhile", flush=True)
            failed = []
            for s in list(servers):
                try:
                    s.start(Path(tmp), args.start_timeout)
                except RuntimeError as e:  # the others still run; the exit status says it
                    print(f"  FAILED: {e}", flush=True)
                    s.stop()
                    servers.remove(s)
                    failed.append(s.label)
                    continue
                for b in batches:
                    warm = measure(s, reqs[s.key][b], args.clients, args.warmup)
                    if warm.errors:
                        print(f"  {s.label}: {warm.errors} errors while warming up batch {b}, e.g. "
                              f"{warm.error_messages[0]}")
                s.pause()
                print(f"  {s.label:<11} {s.describe}: ready in {s.started_in:.1f} s, port {s.port}", flush=True)

            if not servers:
                sys.exit(f"no server started ({', '.join(failed)} failed)")
            runs: dict[tuple[str, int], list[Run]] = {(s.key, b): [] for s in servers for b in batches}
            memory = {}
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for s in order:
                    s.resume()
                    for b in batches:
                        runs[s.key, b].append(measure(s, reqs[s.key][b], args.clients, args.duration))
                    s.pause()
                print(f"  round {r + 1}/{args.rounds} done", flush=True)
            for s in servers:
                s.resume()
            memory = {s.key: tree_rss_mib(s.proc.pid) for s in servers}
        finally:
            for s in servers:
                s.stop()

    report(servers, batches, runs, memory, args.clients)
    if failed:
        sys.exit(f"not measured (failed to start): {', '.join(failed)}")


def report(servers: list[Server], batches: list[int], runs, memory, clients: int) -> None:
    med = statistics.median
    for b in batches:
        print(f"\nworkload: {b} sentence{'s' if b > 1 else ''} per request")
        print(f"  {'server':<11} {'sentences/s':>11} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'server cpu':>10} {'client cpu':>10}")
        for s in servers:
            rs = runs[s.key, b]
            print(f"  {s.label:<11} {med(r.sentences / r.elapsed for r in rs):11.1f} "
                  f"{med(r.requests / r.elapsed for r in rs):10.1f} {med(r.latency_ms(50) for r in rs):8.1f} "
                  f"{med(r.latency_ms(99) for r in rs):8.1f} {sum(r.errors for r in rs):6d} "
                  f"{med(r.server_cpu for r in rs):10.2f} {med(r.client_cpu for r in rs):10.2f}")
            messages = list(dict.fromkeys(m for r in rs for m in r.error_messages))
            for m in messages[:3]:
                print(f"      error: {m}")
        keys = {s.key for s in servers}
        for ours in ("jaxst", "jaxst-int8"):
            for ref in ("infinity", "st"):
                if ours in keys and ref in keys:
                    per_round = [o.sentences / o.elapsed / (t.sentences / t.elapsed) if t.sentences else float("nan")
                                 for o, t in zip(runs[ours, b], runs[ref, b])]
                    ratio = med(per_round)
                    p99 = (med(r.latency_ms(99) for r in runs[ours, b]), med(r.latency_ms(99) for r in runs[ref, b]))
                    print(f"  throughput {LABELS[ours]} / {LABELS[ref]}: {ratio:.2f}x (rounds: "
                          f"{', '.join(f'{x:.2f}' for x in per_round)}); p99 {p99[0]:.1f} ms vs {p99[1]:.1f} ms")
                    if ref == "infinity":
                        row("serve", f"all-MiniLM-L6-v2, {b} sentences/request, {clients} clients, {LABELS[ours]} vs "
                            "infinity-emb (torch, CPU)", ratio, None, f"p99 {p99[0]:.0f} ms vs {p99[1]:.0f} ms")
    print("\nmemory after the run (VmRSS, process tree): "
          + ", ".join(f"{s.label} {memory[s.key]:.0f} MiB" for s in servers))


if __name__ == "__main__":
    main()
