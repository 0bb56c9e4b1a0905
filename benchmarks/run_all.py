"""Every side-by-side benchmark in one command, at a size that fits about 25 minutes on 2 cores, as one dated
Markdown section per machine.

    python benchmarks/run_all.py [--readme] [--only encode search ...] [--smoke]
    python benchmarks/run_all.py --extended [--readme]   # mpnet, int8, 1M-row search, decoders: ~25 min more

Runs each script below in turn (a process of its own, nothing else beside it: run it on a quiet machine),
shows its output as it comes, and collects the ``ROW`` lines each prints (``_machine.row``: what ran, jaxst's
speed over the reference as the median of alternating rounds and best over best). Then prints the section:
the machine header (CPU model and vector extensions, cores, commit, versions), the command, and one table
with a row per result. ``--readme`` also writes the section into ``benchmarks/README.md``, replacing the one
for the same CPU and device (AMD EPYC, Intel Xeon, a GPU: one section each). On a GPU (jax's default backend
is not the CPU) encode runs with ``--dtype bfloat16`` against sentence-transformers in fp16.

The sizes (``FULL``) are smaller than each script's defaults where those take longer; each row names its
work. ``--smoke`` runs every script at its smallest size (seconds each; ``tests/test_benchmarks.py`` does, so
that none of them rots) and writes nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_description, header  # benchmarks/ is on sys.path when a script here runs

HERE = Path(__file__).resolve().parent

# name -> (script, arguments of the timed run, arguments of the smoke run)
SCRIPTS = {
    "encode": ("encode_speed.py",
               ["--models", "all-MiniLM-L6-v2", "--sets", "stsb", "long", "--texts", "512", "--paragraphs", "160",
                "--batch-sizes", "8", "16", "32", "--repeats", "3", "--cold-repeats", "1", "--no-onnx"],
               ["--models", "all-MiniLM-L6-v2", "--sets", "stsb", "--texts", "24", "--batch-sizes", "8", "16",
                "--same-call-batch", "8", "--repeats", "1", "--no-cold-start", "--no-onnx", "--no-limit"]),
    "search": ("search_speed.py", ["--corpus", "500000", "--repeats", "5"],
               ["--corpus", "3000", "--queries", "4", "--repeats", "1"]),
    "sparse": ("sparse_speed.py", ["--corpus", "50000", "--encode-texts", "200", "--repeats", "3"],
               ["--corpus", "300", "--queries", "4", "--repeats", "1", "--encode-texts", "8", "--layers", "1",
                "--model-search", "40"]),
    "rerank": ("rerank_speed.py", ["--repeats", "3"], ["--candidates", "6", "--queries", "2", "--repeats", "1"]),
    "multivector": ("multivector_speed.py",
                    ["--corpus", "10000", "--encode-texts", "300", "--repeats", "3", "--encode-repeats", "3"],
                    ["--corpus", "300", "--queries", "4", "--repeats", "1", "--encode-texts", "8",
                     "--encode-repeats", "1", "--layers", "1"]),
    "train": ("train_speed.py", ["--limit", "480", "--test-limit", "700", "--seeds", "0", "1", "2", "3", "4"],
              ["--limit", "32", "--test-limit", "48", "--seeds", "0", "1"]),
    "finetune": ("finetune_speed.py", ["--limit", "256", "--seeds", "0", "1", "2", "3", "4"],
                 ["--limit", "64", "--seeds", "0", "--eval-limit", "200"]),
    "static": ("static_speed.py", ["--texts", "20000", "--repeats", "7"],
               ["--texts", "200", "--repeats", "1", "--large-batch", "64"]),
    "modern": ("modern_speed.py",
               ["--models", "modernbert-base", "--sentences", "128", "--paragraphs", "16", "--rounds", "2"],
               ["--models", "modernbert-base", "--sentences", "4", "--paragraphs", "2", "--rounds", "1",
                "--repeats", "1", "--layers", "1"]),
}

# ``--extended``: the larger work beside the 25-minute set (about 25 minutes more): mpnet, int8 against
# float32 sentence-transformers and its ONNX exports, a 1M-row search, the decoder embedders at real size.
EXTENDED = {
    "encode-mpnet": ("encode_speed.py",
                     ["--models", "all-mpnet-base-v2", "--sets", "stsb", "long", "--texts", "512", "--paragraphs",
                      "64", "--batch-sizes", "16", "32", "--repeats", "3", "--no-cold-start", "--no-onnx"], None),
    "encode-int8": ("encode_speed.py",
                    ["--models", "all-MiniLM-L6-v2", "--sets", "stsb", "long", "--texts", "512", "--paragraphs",
                     "160", "--dtype", "int8", "--batch-sizes", "32", "--repeats", "3", "--no-cold-start"],
                    None),
    "search-1m": ("search_speed.py", ["--corpus", "1000000", "--repeats", "5"], None),
    "decoders": ("modern_speed.py",
                 ["--models", "qwen3-embedding-0.6b", "embeddinggemma-300m", "--sentences", "128", "--paragraphs",
                  "16", "--rounds", "2"], None),
}


def run(name: str, smoke: bool, extra: list[str]) -> tuple[list[dict], int, float]:
    """One script, its output passed through; ``(rows, return code, seconds)``."""
    script, full, quick = {**SCRIPTS, **EXTENDED}[name]
    command = [sys.executable, str(HERE / script), *(quick if smoke else full), *extra]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    rows = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE) as proc:
        for line in proc.stdout:
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
            elif "Warning" not in line:
                print(line, end="", flush=True)
    return rows, proc.returncode, time.perf_counter() - start


def ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


def section(rows: list[dict], machine: str, command: str, seconds: float, device: str, extended: bool) -> str:
    """The dated Markdown section: its heading names the CPU (or device), then header, command, table."""
    cpu = cpu_description().split(":", 1)[0]
    title = f"{cpu}, {device}" if device != "cpu" else cpu
    title += ", extended" if extended else ""
    lines = [f"<!-- run_all: {title} -->", f"### {title} ({datetime.date.today().isoformat()})", "",
             "```", machine, f"$ {command}   # {seconds / 60:.0f} min", "```", "",
             "| benchmark | work | jaxst / reference: median of rounds | best / best | note |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['work']} | {ratio(r['median'])} | {ratio(r['best'])} | {r['note']} |")
    lines.append("<!-- /run_all -->")
    return "\n".join(lines) + "\n"


def write_readme(text: str) -> Path:
    """Replace this machine's section of benchmarks/README.md (or add it under "Results by machine")."""
    readme = HERE / "README.md"
    content = readme.read_text(encoding="utf-8")
    title = text.splitlines()[0]
    pattern = re.compile(re.escape(title) + r".*?<!-- /run_all -->\n", re.S)
    if pattern.search(content):
        content = pattern.sub(lambda _: text, content)
    else:
        anchor = "## Results by machine (`run_all.py`)\n"
        if anchor not in content:
            raise SystemExit(f"{readme} has no '{anchor.strip()}' heading to put the section under")
        content = content.replace(anchor, anchor + "\n" + text, 1)
    readme.write_text(content, encoding="utf-8")
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[*SCRIPTS, *EXTENDED], default=None)
    parser.add_argument("--extended", action="store_true",
                        help="the larger work beside the 25-minute set (its own section)")
    parser.add_argument("--smoke", action="store_true", help="every script at its smallest size; writes nothing")
    parser.add_argument("--readme", action="store_true", help="write the section into benchmarks/README.md")
    args = parser.parse_args()
    table = EXTENDED if args.extended else SCRIPTS
    if args.only is None:
        args.only = list(table)
    if any(name not in table for name in args.only):
        parser.error(f"--only takes {'--extended ' if args.extended else ''}benchmarks: {', '.join(table)}")
    if args.smoke and args.extended:
        parser.error("--smoke runs the 25-minute set's scripts, which --extended reuses at larger sizes")
    import jax

    device = jax.default_backend()
    machine = header()
    print(machine, flush=True)
    rows, failed, start = [], [], time.perf_counter()
    for name in args.only:
        extra = ["--dtype", "bfloat16"] if name == "encode" and device != "cpu" and not args.smoke else []
        got, code, seconds = run(name, args.smoke, extra)
        print(f"=== {name}: {len(got)} rows in {seconds:.0f} s" + (f", exit code {code}" if code else ""), flush=True)
        if code or not got:
            failed.append(name)
        rows += got
    command = "python benchmarks/run_all.py" + (" --smoke" if args.smoke else "") + \
        (" --extended" if args.extended else "") + \
        ("" if args.only == list(table) else " --only " + " ".join(args.only))
    text = section(rows, machine, command, time.perf_counter() - start, device, args.extended)
    print("\n" + text)
    if args.readme and not args.smoke and not failed:
        print(f"written to {write_readme(text)}")
    if failed:
        sys.exit(f"failed or printed no result: {', '.join(failed)}")


if __name__ == "__main__":
    main()
