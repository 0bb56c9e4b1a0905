"""Qwen3 (Qwen3-Embedding's architecture) against sentence-transformers on a tiny random model with the
features the real one uses: causal grouped-query attention, q/k RMSNorm, RoPE, a left-padding tokenizer
that appends EOS, last-token pooling, Normalize, instruction prompts; plus a sliding-window layer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TEXTS, check_batch_invariance, check_bf16, check_save_roundtrip, max_abs

import jaxst

TOL = 1e-5
MORE = ["日本語の文章です。", "今天天气很好", "🙂🚀 emoji only 🎉", "Ünïcödé Straße, München! ¿Qué tal?"]
PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
           "document": ""}


@pytest.fixture(scope="module")
def qwen3(make_tiny_st, tiny_qwen3_base):
    from sentence_transformers import SentenceTransformer

    folder = make_tiny_st(base=tiny_qwen3_base, pooling_mode="lasttoken", normalize=True, prompts=PROMPTS,
                          max_seq_length=48)
    return folder, SentenceTransformer(str(folder), device="cpu"), jaxst.SentenceTransformer(folder)


def test_tokens_are_those_of_sentence_transformers(qwen3):
    """Same ids per text (EOS appended, over-length texts truncated with it kept), whatever the padding side."""
    _, st, jx = qwen3
    texts = TEXTS + MORE
    ref = st.tokenize(texts)
    assert st.tokenizer.padding_side == "left" and (ref["attention_mask"][:, 0] == 0).any()  # left padded
    ours = jx.tokenize(texts)
    for i in range(len(texts)):
        want = ref["input_ids"][i][ref["attention_mask"][i].bool()].tolist()
        got = ours["input_ids"][i][ours["attention_mask"][i].astype(bool)].tolist()
        assert got == want, texts[i]
        assert got[-1] == st.tokenizer.eos_token_id
    assert max(int(m.sum()) for m in ref["attention_mask"]) == 48  # one text was truncated to the limit


def test_embeddings_match(qwen3):
    _, st, jx = qwen3
    texts = TEXTS + MORE
    ours, ref = jx.encode(texts), st.encode(texts)
    assert ours.shape == ref.shape == (len(texts), 64)
    assert max_abs(ours, ref) < TOL
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)  # Normalize ran


def test_query_and_document_prompts(qwen3):
    _, st, jx = qwen3
    assert jx.prompts["query"] == PROMPTS["query"]
    assert max_abs(jx.encode_query(TEXTS), st.encode_query(TEXTS)) < TOL
    assert max_abs(jx.encode_document(TEXTS), st.encode_document(TEXTS)) < TOL
    assert max_abs(jx.encode_query(TEXTS), jx.encode_document(TEXTS)) > 1e-2  # the prompt changes the embedding


def test_batch_and_padding_invariance(qwen3):
    """A left-padded last-token model is where padding leaks in: each text alone, in batches of every size
    and mixed with texts of other lengths gives the same embedding."""
    _, st, jx = qwen3
    check_batch_invariance(st, jx, TEXTS + MORE, tol=TOL)


def test_token_embeddings_are_each_texts_real_tokens(qwen3):
    """encode(output_value="token_embeddings") of a left-padded model: each text's real tokens only, as
    sentence-transformers 6.3 returns them (``token_emb[attention_mask]``; 6.2 kept a shorter text's leading
    padding)."""
    _, st, jx = qwen3
    texts = TEXTS + MORE
    ours, ref = jx.encode(texts, output_value="token_embeddings"), st.encode(texts, output_value="token_embeddings")
    lengths = [int(m.sum()) for m in st.tokenize(texts)["attention_mask"]]
    assert len(set(lengths)) > 1  # one batch of texts of several lengths: padding to the left of the short ones
    for text, o, r, n in zip(texts, ours, ref, lengths):
        assert np.asarray(o).shape == tuple(r.shape) == (n, 64), text
        assert max_abs(o, r) < TOL, text


def test_left_padded_batches_give_the_same_states(qwen3):
    """apply() takes left-padded batches too (what a Hugging Face tokenizer hands over)."""
    _, st, jx = qwen3
    ref = st.tokenize(TEXTS)
    batch = {"input_ids": ref["input_ids"].numpy().astype(np.int32),
             "attention_mask": ref["attention_mask"].numpy().astype(np.int32)}
    assert max_abs(np.asarray(jx.apply(jx.params, batch)), st.encode(TEXTS)) < TOL


def test_bfloat16_stays_close(qwen3):
    folder, _, jx = qwen3
    check_bf16(folder, jx, TEXTS + MORE, min_cos=0.999)


def test_saved_folder_loads_in_sentence_transformers(qwen3, tmp_path):
    _, _, jx = qwen3
    check_save_roundtrip(jx, tmp_path / "qwen3", TEXTS, tol=TOL)


def test_gradients_flow_through_the_decoder(qwen3):
    """Every weight gets a finite, non-zero gradient (the empty text, just EOS, included)."""
    import jax

    _, _, jx = qwen3
    batch = jx.tokenize(TEXTS[:3])
    grads = jax.grad(lambda p: jx.apply(p, batch)[0] @ jx.apply(p, batch)[1])(jx.params)
    norms = {"/".join(map(str, path)): float(np.abs(np.asarray(g)).max())
             for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(np.isfinite(v) and v > 0 for v in norms.values()), norms


def test_the_sliding_window_is_exercised(qwen3, tmp_path):
    """Control: the same weights without the sliding window give other embeddings for texts longer than the
    window, so the match above checks the window."""
    import json
    import shutil

    folder, st, _ = qwen3
    copy = shutil.copytree(folder, tmp_path / "no-window")
    config = json.loads((copy / "config.json").read_text())
    assert config["sliding_window"] == 6 and config["layer_types"][-1] == "sliding_attention"
    config["use_sliding_window"], config["layer_types"] = False, ["full_attention"] * 3
    (copy / "config.json").write_text(json.dumps(config))
    assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS), st.encode(TEXTS)) > 1e-3


SHARDED = """
import json, sys
import jax
import numpy as np
from jax.sharding import Mesh
from jaxst import SentenceTransformer

folder, texts = sys.argv[1], json.loads(sys.argv[2])
mesh = Mesh(np.array(jax.devices()), ("model",))
model = SentenceTransformer(folder, mesh=mesh)
split, copied = [], []
for path, array in jax.tree_util.tree_flatten_with_path(model.params)[0]:
    if array.ndim >= 2:
        shard = array.sharding.shard_shape(array.shape)
        pieces = {tuple((s.start or 0, s.stop) for s in shard.index) for shard in array.addressable_shards}
        whole = int(np.prod(shard)) * 8 == array.size and len(pieces) == 8
        (split if whole else copied).append(jax.tree_util.keystr(path))
one = SentenceTransformer(folder, device="cpu:0").encode(texts)
print(json.dumps({"devices": len(jax.devices()), "split": split, "copied": copied,
                  "embeddings": model.encode(texts).tolist(), "one_device": one.tolist()}))
"""


def test_weights_sharded_over_eight_devices(qwen3):
    """8 forced CPU devices: every matrix is split in eight distinct pieces (not copied), and the embeddings
    equal one device's and sentence-transformers'."""
    import json
    import os
    import subprocess
    import sys

    folder, st, _ = qwen3
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SHARDED, str(folder), json.dumps(TEXTS + MORE)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert not report["copied"] and len(report["split"]) == 1 + 3 * 7, report  # embed + 7 matrices per layer
    assert max_abs(report["embeddings"], report["one_device"]) < TOL
    assert max_abs(report["embeddings"], st.encode(TEXTS + MORE)) < TOL


def test_checkpoint_in_several_safetensors_shards(qwen3, tmp_path):
    """A checkpoint saved as model-0000N-of-0000M.safetensors + index (bfloat16-free here) loads the same."""
    import shutil

    from transformers import Qwen3Model

    folder, st, jx = qwen3
    copy = shutil.copytree(folder, tmp_path / "sharded")
    (copy / "model.safetensors").unlink()
    Qwen3Model.from_pretrained(folder).save_pretrained(copy, max_shard_size="100KB")
    shards = sorted(p.name for p in copy.glob("model-*.safetensors"))
    assert len(shards) >= 3 and (copy / "model.safetensors.index.json").is_file(), shards
    assert max_abs(jaxst.SentenceTransformer(copy).encode(TEXTS), st.encode(TEXTS)) < TOL


def test_bfloat16_checkpoint_loads(qwen3, tmp_path):
    """Qwen3-Embedding ships bfloat16 safetensors: they load (as float32 unless dtype= says otherwise) and
    match sentence-transformers on the same bfloat16 weights."""
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import Qwen3Model

    folder, _, _ = qwen3
    copy = shutil.copytree(folder, tmp_path / "bf16")
    Qwen3Model.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(copy)
    ref = SentenceTransformer(str(copy), device="cpu", model_kwargs={"dtype": torch.float32}).encode(TEXTS)
    ours = jaxst.SentenceTransformer(copy)
    assert ours.dtype == np.float32 and max_abs(ours.encode(TEXTS), ref) < TOL


def test_cli_encodes_with_the_model(qwen3, tmp_path):
    """``jaxst encode --model FOLDER`` with a decoder model gives sentence-transformers' embeddings."""
    from jaxst import cli

    folder, st, _ = qwen3
    texts = [t for t in TEXTS + MORE if t and "\n" not in t]  # one text per line
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "emb.npy"), "--model", str(folder)]) == 0
    assert max_abs(np.load(tmp_path / "emb.npy"), st.encode(texts)) < TOL


def test_packed_training_rows_give_the_padded_embeddings(qwen3):
    """Training's packed rows (several texts end to end, each causal within itself, positions from 0 in
    each, the sliding window inside each text) give every text's own embedding."""
    from jaxst import training

    _, _, jx = qwen3
    texts = TEXTS + MORE
    packed = training.pack_columns([jx.tokenize(texts)], jx.tokenizer.pad_id, row=64)
    assert packed["input_ids"].shape[0] < len(texts)  # rows hold several texts
    assert max_abs(jx.forward(jx.params, packed)["sentence_embedding"], jx.encode(texts)) < TOL


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_one_train_step_equals_pytorch_adamw(qwen3, pack):
    """jaxst.training on the decoder: MultipleNegativesRankingLoss, one AdamW step from the same params, the
    same loss and the same updated weights as sentence-transformers' loss + torch.optim.AdamW."""
    import optax
    import torch
    from conftest import read_stsb
    from sentence_transformers.sentence_transformer import losses as st_losses
    from test_training import assert_params_match_torch, load_st

    from jaxst import losses as jl
    from jaxst import training

    folder, _, jx = qwen3
    examples = [(a, b) for a, b, _ in read_stsb("stsb-en-dev.csv")[:8]]
    lr, betas, eps, weight_decay = 1e-3, (0.9, 0.98), 1e-4, 0.01
    st = load_st(folder).eval()
    opt = torch.optim.AdamW(st.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    value = st_losses.MultipleNegativesRankingLoss(st)([st.tokenize([e[i] for e in examples]) for i in (0, 1)], None)
    value.backward()
    opt.step()

    optimizer = optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay)
    step_fn = training.make_train_step(jx, jl.MultipleNegativesRankingLoss(), optimizer, dropout=False)
    state, metrics = step_fn(training.TrainState.create(jx.params, optimizer),
                             training.collate(jx, examples, pack=pack))
    assert abs(float(metrics["loss"]) - float(value.detach())) < TOL
    assert assert_params_match_torch(state.params, st[0].auto_model.state_dict(), {"encoder": ""}) < TOL
    assert max_abs(state.params["encoder"]["norm"]["scale"], jx.params["encoder"]["norm"]["scale"]) > 5e-4
