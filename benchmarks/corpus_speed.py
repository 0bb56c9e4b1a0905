"""Embedding a whole corpus: ``jaxst encode-corpus``'s job against sentence-transformers' recommended way.

    python benchmarks/corpus_speed.py [--sentences 200000] [--documents 20000] [--rounds 2]
                                      [--model all-MiniLM-L6-v2] [--kill-at 0.5]

Two corpora, written once as JSONL: ``sentences`` (STSb test sentences, cycled, each with its row number in
front so that no two are equal) and ``documents`` (~1,000-token documents of random STSb sentences; the model
reads its first ``max_seq_length`` tokens, 256 for all-MiniLM-L6-v2, on both sides).

Sides, each a fresh process per run (so that its memory is its own):

* **jaxst**: ``jaxst.corpus.encode_corpus`` over the JSONL into Parquet shards of 10,000 texts.
* **sentence-transformers**: what its documentation recommends for a large corpus on several workers: read
  the texts, ``model.encode(texts, pool=model.start_multi_process_pool(["cpu"] * workers))`` (``--workers``,
  default: the core count), ``numpy.save`` the matrix.

Rounds alternate the order (jaxst first, then sentence-transformers first, ...); rates are medians over
rounds. Peak memory growth is the largest resident size of the process *and its children* (the pool's
workers load their own model copies) over the size when the job started (after imports and model load),
sampled every 50 ms from /proc.

Resume: each side's time to a finished output after a SIGKILL at ``--kill-at`` of the way through. jaxst is
killed once that share of its shards exists and restarted with the same call (it goes on from the shards on
disk; the time counted is the restart's). sentence-transformers' ``encode`` keeps nothing between runs, so
its time after a kill is a whole run (its median), stated as such rather than measured again.

The first lines name the CPU, the commit and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import header, row
from _stsb import unique_sentences

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    sizes: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as f:
                sizes[int(entry)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += sizes.get(p, 0)
        stack.extend(children.get(p, []))
    return total


class PeakMemory:
    """Samples ``tree_rss`` of this process every 50 ms from ``start`` until ``stop``: the peak growth."""

    def __init__(self):
        self.base = tree_rss(os.getpid())
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss(os.getpid()))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(os.getpid()))
        return self.peak - self.base


def worker(args) -> None:
    """One side's run in this (fresh) process; prints a JSON line."""
    texts_path, out = Path(args.input), Path(args.output)
    if args.worker == "jaxst":
        from jaxst import SentenceTransformer
        from jaxst.corpus import encode_corpus

        model = SentenceTransformer(args.model)
        memory = PeakMemory()
        start = time.perf_counter()
        summary = encode_corpus(model, texts_path, out, shard_size=args.shard_size, batch_size=32,
                                show_progress_bar=False)
        seconds = time.perf_counter() - start
        texts = summary["texts"]
    else:
        import numpy as np
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(args.model, device="cpu")
        memory = PeakMemory()
        start = time.perf_counter()
        with open(texts_path) as f:
            texts_list = [json.loads(line)["text"] for line in f]
        pool = model.start_multi_process_pool(["cpu"] * args.workers)
        try:
            embeddings = model.encode(texts_list, pool=pool, batch_size=32)
        finally:
            model.stop_multi_process_pool(pool)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "embeddings.npy", embeddings)
        seconds = time.perf_counter() - start
        texts = len(texts_list)
    print(json.dumps({"seconds": seconds, "texts": texts, "growth": memory.stop()}))


def run_side(side: str, source: Path, out: Path, args) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", side, "--input", str(source), "--output", str(out),
               "--model", args.model, "--workers", str(args.workers), "--shard-size", str(args.shard_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def jaxst_resume(source: Path, out: Path, total_shards: int, args) -> float:
    """Seconds for jaxst's job to finish when restarted after a SIGKILL at ``--kill-at`` of its shards."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, __file__, "--worker", "jaxst", "--input", str(source), "--output", str(out),
               "--model", args.model, "--shard-size", str(args.shard_size)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = max(1, int(total_shards * args.kill_at))
    while len(list(out.glob("shard-*.parquet"))) < target and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"jaxst resume failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def write_corpora(folder: Path, n_sentences: int, n_documents: int) -> dict[str, Path]:
    sentences = unique_sentences("stsb-en-test.csv")
    rng = random.Random(0)
    paths = {}
    if n_sentences:
        paths["sentences"] = folder / "sentences.jsonl"
        with open(paths["sentences"], "w") as f:
            for i in range(n_sentences):
                f.write(json.dumps({"text": f"{i} {sentences[i % len(sentences)]}"}) + "\n")
    if n_documents:
        paths["documents"] = folder / "documents.jsonl"
        with open(paths["documents"], "w") as f:
            for _ in range(n_documents):
                f.write(json.dumps({"text": " ".join(rng.choices(sentences, k=75))}) + "\n")  # ~1,000 tokens
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=200_000)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--kill-at", type=float, default=0.5)
    parser.add_argument("--worker", choices=("jaxst", "st"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.model == "all-MiniLM-L6-v2":
        from jaxst.io.hub import packaged_model_folder

        folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
        if folder is not None:
            args.model = str(folder)  # both sides read the same installed weights, offline
    print(header("pyarrow"))
    print(f"model: {args.model}; sentence-transformers workers: {args.workers}; jaxst shards of {args.shard_size}")
    work = Path(tempfile.mkdtemp(prefix="corpus_speed."))
    try:
        for name, source in write_corpora(work, args.sentences, args.documents).items():
            results: dict[str, list[dict]] = {"jaxst": [], "st": []}
            for r in range(args.rounds):
                for side in (("jaxst", "st") if r % 2 == 0 else ("st", "jaxst")):
                    results[side].append(run_side(side, source, work / f"out-{side}", args))
            rate = {s: statistics.median(x["texts"] / x["seconds"] for x in v) for s, v in results.items()}
            growth = {s: statistics.median(x["growth"] for x in v) / 2**20 for s, v in results.items()}
            texts = results["jaxst"][0]["texts"]
            shards = -(-texts // args.shard_size)
            resume = jaxst_resume(source, work / "out-resume", shards, args) if shards > 1 else float("nan")
            st_whole = statistics.median(x["seconds"] for x in results["st"])
            print(f"\n{name}: {texts} texts, {args.rounds} rounds (medians)")
            for side, label in (("jaxst", "jaxst encode-corpus"), ("st", "sentence-transformers")):
                print(f"  {label:24s} {rate[side]:9.1f} texts/s   peak memory growth {growth[side]:8.0f} MiB")
            print(f"  ratio: {rate['jaxst'] / rate['st']:.2f}x the throughput at "
                  f"{growth['jaxst'] / max(growth['st'], 1e-9):.2f}x the memory growth")
            row("corpus", f"{name}: {texts} texts, jaxst encode-corpus vs sentence-transformers' pool",
                rate["jaxst"] / rate["st"], None, f"memory growth {growth['jaxst']:.0f} vs {growth['st']:.0f} MiB")
            print(f"  finished after a SIGKILL at {args.kill_at:.0%}: jaxst {resume:.1f} s (resumed from its "
                  f"shards); sentence-transformers {st_whole:.1f} s (a whole run: it keeps nothing)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
