"""The models people embed with today, at their real sizes: jaxst vs sentence-transformers on this CPU.

    python benchmarks/modern_speed.py [--models qwen3-embedding-0.6b embeddinggemma-300m modernbert-base]
                                      [--sentences 512] [--paragraphs 64] [--long-text]

No real weights are reachable here, so each model is built from its published config with seeded random
weights (transformers' own classes), with a byte-level BPE tokenizer trained on STSb (the real tokenizers
are not on PyPI either: texts split into more tokens than with the real vocabularies, the same tokens for
both libraries). Each library runs in a fresh process of its own, so its peak host memory (VmHWM) while
loading and while encoding is its own: STSb test sentences and ~200-token paragraphs at batch 32, one warm-up
run, then the best of ``--repeats``. The embeddings of both must agree within 1e-4 (float32). ``--long-text``
adds one ~8,192-token text through ModernBERT-base (batch 1; a first run, then one timed run): time and peak
memory on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import cpu_description
from _stsb import read_stsb, unique_sentences  # benchmarks/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Published configs (config.json of each Hub model, the fields that shape the compute).
MODELS = {
    "qwen3-embedding-0.6b": dict(
        config="Qwen3Config", model="Qwen3Model", pooling="lasttoken", dense=(), padding_side="left",
        kwargs=dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                    rms_norm_eps=1e-6, tie_word_embeddings=True,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
    "embeddinggemma-300m": dict(
        config="Gemma3TextConfig", model="Gemma3TextModel", pooling="mean", dense=(3072, 768), padding_side="right",
        kwargs=dict(vocab_size=262144, hidden_size=768, intermediate_size=1152, num_hidden_layers=24,
                    num_attention_heads=3, num_key_value_heads=1, head_dim=256, max_position_embeddings=2048,
                    sliding_window=512, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                    use_bidirectional_attention=True, hidden_activation="gelu_pytorch_tanh",
                    layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 4)),
    "modernbert-base": dict(
        config="ModernBertConfig", model="ModernBertModel", pooling="mean", dense=(), padding_side="right",
        kwargs=dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22,
                    num_attention_heads=12, global_attn_every_n_layers=3, local_attention=128,
                    max_position_embeddings=8192, norm_eps=1e-5)),
}


def build(name: str, folder: Path) -> Path:
    """A sentence-transformers folder of ``name`` at its real size with seeded random weights."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import byte_level_bpe_tokenizer

    spec = MODELS[name]
    base = folder / "base"
    byte_level_bpe_tokenizer(base, padding_side=spec["padding_side"])
    torch.manual_seed(0)
    config = getattr(transformers, spec["config"])(**spec["kwargs"])
    getattr(transformers, spec["model"])(config).eval().save_pretrained(base)
    transformer = Transformer(str(base), max_seq_length=8192 if name == "modernbert-base" else 512)
    dim = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(dim, pooling_mode=spec["pooling"])]
    for out in spec["dense"]:
        modules.append(Dense(dim, out, bias=False, activation_function=torch.nn.Identity()))
        dim = out
    modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder / "st"))
    return folder / "st"


RUN = """
import json, sys, time
import numpy as np
library, folder, texts_file, repeats, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sets = json.load(open(texts_file))
# This process's own peak (VmHWM starts afresh at exec; ru_maxrss would carry the parent's, which built the model).
rss = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024  # MiB
start = time.perf_counter()
if library == "jaxst":
    import jaxst
    model = jaxst.SentenceTransformer(folder)
else:
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(folder, device="cpu")
report = {"load_s": time.perf_counter() - start, "load_peak_mib": rss(), "sets": {}}
for set_name, texts in sets.items():
    bs = 1 if set_name == "long" else 32
    start = time.perf_counter()
    emb = model.encode(texts, batch_size=bs)
    first = time.perf_counter() - start
    best = first
    for _ in range(repeats if set_name != "long" else 1):  # the long text: one run after the first
        start = time.perf_counter()
        model.encode(texts, batch_size=bs)
        best = min(best, time.perf_counter() - start)
    np.save(f"{out}-{set_name}.npy", emb)
    report["sets"][set_name] = {"n": len(texts), "first_s": first, "best_s": best, "peak_mib": rss()}
print(json.dumps(report))
"""


def run(library: str, folder: Path, texts_file: Path, repeats: int, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", RUN, library, str(folder), str(texts_file), str(repeats), str(out)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{library} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sentences", type=int, default=512, help="STSb test sentences per run")
    parser.add_argument("--paragraphs", type=int, default=64, help="~200-token paragraphs per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--long-text", action="store_true", help="one 8,192-token text through ModernBERT-base")
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}", flush=True)

    import numpy as np
    import torch

    print(f"torch {torch.__version__}", flush=True)
    sentences = [s for a, b, _ in read_stsb("stsb-en-test.csv") for s in (a, b)][: args.sentences]
    pool = unique_sentences("stsb-en-test.csv")
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"jaxst-{name}-") as tmp:
            folder = build(name, Path(tmp))
            from jaxst.io.tokenizer import Tokenizer

            tok = Tokenizer.from_folder(folder, 8192)
            count = lambda text, tok=tok: len(tok.encode_ids([text])[0].ids)
            paragraphs, i = [], 0
            while len(paragraphs) < args.paragraphs:
                parts = []
                while count(" ".join(parts)) < 190:
                    parts.append(pool[i % len(pool)])
                    i += 1
                paragraphs.append(" ".join(parts))
            sets = {"stsb": sentences, "paragraphs": paragraphs}
            if args.long_text and name == "modernbert-base":
                # The whole pool is ~35k tokens; the tokenizer truncates to 8,192 (so a loop on its count
                # would never end), and the first 8,190 tokens decode to the text both libraries get.
                sets["long"] = [tok.backend.decode(tok.encode_ids([" ".join(pool)])[0].ids[:8190])]
            texts_file = Path(tmp) / "texts.json"
            texts_file.write_text(json.dumps(sets))
            results = {lib: run(lib, folder, texts_file, args.repeats, Path(tmp) / lib)
                       for lib in ("sentence-transformers", "jaxst")}
            ref, ours = results["sentence-transformers"], results["jaxst"]
            print(f"{name}: load {ref['load_s']:.1f} s / {ours['load_s']:.1f} s, peak after load "
                  f"{ref['load_peak_mib']:.0f} / {ours['load_peak_mib']:.0f} MiB (sentence-transformers / jaxst)")
            for set_name in sets:
                a = np.load(Path(tmp) / f"jaxst-{set_name}.npy")
                b = np.load(Path(tmp) / f"sentence-transformers-{set_name}.npy")
                r, o = ref["sets"][set_name], ours["sets"][set_name]
                tokens = sum(count(t) for t in sets[set_name]) / len(sets[set_name])
                if set_name == "long":
                    print(f"  long       1 text of {tokens:.0f} tokens: sentence-transformers {r['best_s']:.1f} s  "
                          f"jaxst {o['best_s']:.1f} s  ratio {r['best_s'] / o['best_s']:.2f}x  (first runs "
                          f"{r['first_s']:.1f} s / {o['first_s']:.1f} s)  peak {r['peak_mib']:.0f} / "
                          f"{o['peak_mib']:.0f} MiB  max |diff| {np.abs(a - b).max():.1e}", flush=True)
                    assert np.abs(a - b).max() < 1e-4, np.abs(a - b).max()
                    continue
                print(f"  {set_name:10} {r['n']} texts, {tokens:.0f} tokens avg: sentence-transformers "
                      f"{r['n'] / r['best_s']:7.1f}/s  jaxst {o['n'] / o['best_s']:7.1f}/s  "
                      f"ratio {r['best_s'] / o['best_s']:.2f}x  (jaxst first run {o['first_s']:.1f} s)  "
                      f"peak {r['peak_mib']:.0f} / {o['peak_mib']:.0f} MiB  max |diff| {np.abs(a - b).max():.1e}",
                      flush=True)
                assert np.abs(a - b).max() < 1e-4, np.abs(a - b).max()


if __name__ == "__main__":
    main()
