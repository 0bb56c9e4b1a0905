"""The models people embed with today, at their real sizes: jaxst vs sentence-transformers on this CPU.

    python benchmarks/modern_speed.py [--models qwen3-embedding-0.6b embeddinggemma-300m modernbert-base]
                                      [--sentences 512] [--paragraphs 64] [--rounds 2] [--long-text]

No real weights are reachable here, so each model is built from its published config with seeded random
weights (transformers' own classes), with a byte-level BPE tokenizer trained on STSb (the real tokenizers
are not on PyPI either: texts split into more tokens than with the real vocabularies, the same tokens for
both libraries). Each library runs in fresh processes of its own, ``--rounds`` of them, the two libraries'
processes alternating (order flipped each round): STSb test sentences and ~200-token paragraphs at batch 32,
one warm-up run, then ``--repeats`` timed runs per process; rates are medians over all timed runs, the ratio
is the median of the per-round ratios (best over best in brackets). Memory, per library, labelled: the
growth while loading (peak resident set over the size just after importing the library), the growth while
encoding a set (the peak during it, Linux's VmHWM reset through /proc/self/clear_refs, over the resident set
just before it), and the whole-process peak (VmHWM over the process's life, imports included). The
embeddings of both must agree within 1e-4 (float32). ``--long-text`` adds one ~8,192-token text through
ModernBERT-base (batch 1; a first run, then one timed run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import header, row
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


def build(name: str, folder: Path, layers: int | None = None) -> Path:
    """A sentence-transformers folder of ``name`` at its real size with seeded random weights (``layers``: only
    that many of its layers, for a quick check)."""
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
    kwargs = dict(spec["kwargs"])
    if layers is not None:
        kwargs["num_hidden_layers"] = layers
        if "layer_types" in kwargs:
            kwargs["layer_types"] = kwargs["layer_types"][:layers]
    config = getattr(transformers, spec["config"])(**kwargs)
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


def status(key):  # MiB, from this process's own /proc/self/status (VmHWM starts afresh at exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024


def reset_peak():  # VmHWM back to the current resident set (Linux: clear_refs 5); False where not allowed
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


if library == "jaxst":
    import jaxst
else:
    from sentence_transformers import SentenceTransformer
base = status("VmRSS")
start = time.perf_counter()
model = jaxst.SentenceTransformer(folder) if library == "jaxst" else SentenceTransformer(folder, device="cpu")
report = {"load_s": time.perf_counter() - start, "load_growth_mib": status("VmHWM") - base, "sets": {}}
process_peak = status("VmHWM")
for set_name, texts in sets.items():
    bs = 1 if set_name == "long" else 32
    before = status("VmRSS")
    resettable = reset_peak()
    start = time.perf_counter()
    emb = model.encode(texts, batch_size=bs)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats if set_name != "long" else 1):  # the long text: one run after the first
        start = time.perf_counter()
        model.encode(texts, batch_size=bs)
        times.append(time.perf_counter() - start)
    np.save(f"{out}-{set_name}.npy", emb)
    peak = status("VmHWM")
    process_peak = max(process_peak, peak)
    report["sets"][set_name] = {"n": len(texts), "first_s": first, "times": times,
                                "growth_mib": peak - before if resettable else None}
report["process_peak_mib"] = process_peak
print(json.dumps(report))
"""


def run(library: str, folder: Path, texts_file: Path, repeats: int, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", RUN, library, str(folder), str(texts_file), str(repeats), str(out)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{library} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def mib(value) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sentences", type=int, default=512, help="STSb test sentences per run")
    parser.add_argument("--paragraphs", type=int, default=64, help="~200-token paragraphs per run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per library, alternating")
    parser.add_argument("--layers", type=int, default=None, help="build only this many layers (a quick check)")
    parser.add_argument("--long-text", action="store_true", help="one 8,192-token text through ModernBERT-base")
    args = parser.parse_args()
    print(header(), flush=True)

    import numpy as np
    sentences = [s for a, b, _ in read_stsb("stsb-en-test.csv") for s in (a, b)][: args.sentences]
    pool = unique_sentences("stsb-en-test.csv")
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix=f"jaxst-{name}-") as tmp:
            folder = build(name, Path(tmp), args.layers)
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
            libraries = ["sentence-transformers", "jaxst"]
            rounds = []
            for r in range(args.rounds):
                order = libraries if r % 2 == 0 else libraries[::-1]
                rounds.append({lib: run(lib, folder, texts_file, args.repeats, Path(tmp) / lib) for lib in order})
            ref, ours = rounds[0]["sentence-transformers"], rounds[0]["jaxst"]
            print(f"{name}: load {statistics.median(x['sentence-transformers']['load_s'] for x in rounds):.1f} s / "
                  f"{statistics.median(x['jaxst']['load_s'] for x in rounds):.1f} s; memory growth while loading "
                  f"{mib(ref['load_growth_mib'])} / {mib(ours['load_growth_mib'])}; whole-process peak "
                  f"{mib(ref['process_peak_mib'])} / {mib(ours['process_peak_mib'])} (sentence-transformers / jaxst, "
                  f"first round)")
            for set_name in sets:
                a = np.load(Path(tmp) / f"jaxst-{set_name}.npy")
                b = np.load(Path(tmp) / f"sentence-transformers-{set_name}.npy")
                assert np.abs(a - b).max() < 1e-4, np.abs(a - b).max()
                r, o = ref["sets"][set_name], ours["sets"][set_name]
                per_round = [tuple(x[lib]["sets"][set_name]["times"] for lib in libraries) for x in rounds]
                med = statistics.median(statistics.median(rt) / statistics.median(ot) for rt, ot in per_round)
                best = min(t for rt, _ in per_round for t in rt) / min(t for _, ot in per_round for t in ot)
                r_s = statistics.median(t for rt, _ in per_round for t in rt)
                o_s = statistics.median(t for _, ot in per_round for t in ot)
                tokens = sum(count(t) for t in sets[set_name]) / len(sets[set_name])
                what = f"1 text of {tokens:.0f} tokens" if set_name == "long" else \
                    f"{r['n']} texts, {tokens:.0f} tokens avg: sentence-transformers {r['n'] / r_s:7.1f}/s  " \
                    f"jaxst {o['n'] / o_s:7.1f}/s"
                print(f"  {set_name:10} {what}  ({r_s:.1f} s / {o_s:.1f} s)  ratio {med:.2f}x ({best:.2f}x)  "
                      f"(first runs {r['first_s']:.1f} s / {o['first_s']:.1f} s)  memory growth while encoding "
                      f"{mib(r['growth_mib'])} / {mib(o['growth_mib'])}  max |diff| {np.abs(a - b).max():.1e}",
                      flush=True)
                row("modern models", f"{name} {set_name}, {what.split(':')[0]}", med, best,
                    f"memory growth while encoding {mib(r['growth_mib'])} / {mib(o['growth_mib'])} "
                    "(sentence-transformers / jaxst)")


if __name__ == "__main__":
    main()
