"""Training against PyTorch: dropout where transformers puts it, one optimizer step equal to
sentence-transformers' loss + torch.optim.AdamW, the fit recipe (param groups, warmup/decay schedule,
clipping) over several steps, orbax resume, ``fit``, and the 8-device data-parallel loss."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import ROOT, max_abs, read_stsb

import jaxst
from jaxst import losses as jl
from jaxst import training
from jaxst.io.weights import torch_key

TOL = 1e-5
STSB_TRAIN = read_stsb("stsb-en-train.csv")


def triplets(n: int, offset: int = 0) -> list[tuple[str, str, str]]:
    rows = STSB_TRAIN[offset:offset + 2 * n]
    return [(a, b, rows[i + n][1]) for i, (a, b, _) in enumerate(rows[:n])]


def scored_pairs(n: int, offset: int = 0) -> list[tuple[str, str, float]]:
    return [(a, b, s) for a, b, s in STSB_TRAIN[offset:offset + n]]


@pytest.fixture(scope="module")
def tiny_folder(make_tiny_st):
    return make_tiny_st(pooling_mode="mean")


def load_st(folder):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(folder), device="cpu")


def assert_params_match_torch(params: dict, torch_state: dict, prefixes: dict[str, str]) -> float:
    """Every jaxst param against its PyTorch tensor (names and layouts by jaxst.io.weights); the max diff."""
    worst = 0.0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        key, transpose = torch_key(tuple(names[1:]))
        expected = torch_state[prefixes[names[0]] + key].detach().numpy()
        got = np.asarray(leaf)
        worst = max(worst, max_abs(got.T if transpose else got, expected))
    assert worst < TOL, worst
    return worst


# ----------------------------------------------------------------------------------------- dropout


def test_dropout_function_drops_at_rate_and_rescales():
    from jaxst.models.layers import dropout

    x = jnp.ones((200, 500))
    y = np.asarray(dropout(x, 0.1, jax.random.key(0)))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.9)}
    assert abs((y == 0).mean() - 0.1) < 0.005
    np.testing.assert_array_equal(y, np.asarray(dropout(x, 0.1, jax.random.key(0))))
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, jax.random.key(0)) is x
    np.testing.assert_array_equal(np.asarray(dropout(x, 1.0, jax.random.key(0))), 0.0)


def test_dropout_changes_the_output_reproducibly_and_is_off_at_inference(tiny_folder):
    model = jaxst.SentenceTransformer(tiny_folder)
    batch = training.collate(model, triplets(4))
    forward = jax.jit(training.train_forward, static_argnums=0)
    features = batch["features"]
    off = forward(model.graphdef, model.params, features, None)
    for column, emb in zip(features, off):  # no key: what inference computes
        assert max_abs(emb, model.apply(model.params, column)) < TOL
    assert max_abs(off[0], model.encode([a for a, _, _ in triplets(4)])) < TOL
    on = forward(model.graphdef, model.params, features, jax.random.key(1))
    again = forward(model.graphdef, model.params, features, jax.random.key(1))
    other = forward(model.graphdef, model.params, features, jax.random.key(2))
    for a, b, c, d in zip(off, on, again, other):
        assert max_abs(a, b) > 1e-3  # dropout on changes the embeddings
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))  # same key, same embeddings
        assert max_abs(b, d) > 1e-3  # another key, other embeddings


def _with_config(src: Path, dst: Path, **overrides) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(overrides)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# Dropout at rate 1 zeroes what it touches, in torch and here: a deterministic output that shows where
# each kind of dropout sits. Attention dropout alone zeroes every attention context; hidden dropout
# alone zeroes the embeddings and every dense output before its residual.
DROPOUT_PLACEMENTS = {"attention-only": (0.0, 1.0), "hidden-only": (1.0, 0.0)}


@pytest.mark.parametrize("placement", list(DROPOUT_PLACEMENTS))
@pytest.mark.parametrize("base", ["tiny_bert_base", "tiny_xlmr_base", "tiny_mpnet_base"])
def test_dropout_sits_where_transformers_puts_it(request, tmp_path, base, placement):
    from transformers import AutoModel, AutoTokenizer

    from jaxst.io.weights import params_from_state_dict, read_state_dict
    from jaxst.models import encoder_from_hf_config

    hidden, attention = DROPOUT_PLACEMENTS[placement]
    folder = _with_config(request.getfixturevalue(base), tmp_path / "model", hidden_dropout_prob=hidden,
                          attention_probs_dropout_prob=attention)
    texts = ["A man is eating food.", "The quick brown fox jumps over the lazy dog!", "short"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    torch_model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").train()
    with torch.no_grad():
        expected = torch_model(**tokens).last_hidden_state.numpy()
    assert torch_model.training

    from flax import nnx

    cfg, cls = encoder_from_hf_config(json.loads((folder / "config.json").read_text()))
    module = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
    params = params_from_state_dict(module, read_state_dict(folder), (f"{cls.base_model_prefix}.",))
    graphdef, _ = nnx.split(module, nnx.Param)
    batch = {k: jnp.asarray(v.numpy()) for k, v in tokens.items()}
    encoder = nnx.merge(graphdef, params)
    got = np.asarray(encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                             dropout_rng=jax.random.key(0)))
    mask = tokens["attention_mask"].numpy().astype(bool)
    assert max_abs(got[mask], expected[mask]) < TOL
    inference = np.asarray(encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")))
    assert max_abs(inference[mask], expected[mask]) > 1e-2  # the dropout made a difference


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta"])
@pytest.mark.parametrize("placement", ["classifier", "hidden"])
def test_cross_encoder_head_dropout_sits_where_transformers_puts_it(make_tiny_cross_encoder, tmp_path, arch,
                                                                     placement):
    from transformers import AutoModelForSequenceClassification

    rates = {"classifier": dict(classifier_dropout=1.0, hidden_dropout_prob=0.0),
             "hidden": dict(hidden_dropout_prob=1.0)}[placement]
    folder = _with_config(make_tiny_cross_encoder(arch, num_labels=1), tmp_path / "ce",
                          attention_probs_dropout_prob=0.0, **rates)
    jx = jaxst.CrossEncoder(folder)
    pairs = [("A man is eating food.", "Someone eats."), ("A dog runs.", "The quick brown fox jumps over it.")]
    batch = jx.tokenize(pairs)
    torch_model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager")
    torch_model.train()
    with torch.no_grad():
        expected = torch_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}).logits.numpy()
    got = np.asarray(training.train_forward(jx.graphdef, jx.params, batch, jax.random.key(0)))
    assert max_abs(got, expected) < TOL
    assert max_abs(np.asarray(jx.apply(jx.params, batch)), expected) > 1e-3


# --------------------------------------------------------------------- one step against PyTorch

STEP_LOSSES = {  # columns, label ("score": the gold score / 5, "class": 0, 1, 2 in turn, "binary": score > 2.5)
    "mnrl-hard-negatives": (3, None, lambda m: jl.MultipleNegativesRankingLoss(),
                            lambda st, losses: losses.MultipleNegativesRankingLoss(st)),
    "cosent": (2, "score", lambda m: jl.CoSENTLoss(), lambda st, losses: losses.CoSENTLoss(st)),
    "matryoshka-cosine": (2, "score", lambda m: jl.MatryoshkaLoss(m, jl.CosineSimilarityLoss(), [32, 16, 8]),
                          lambda st, losses: losses.MatryoshkaLoss(st, losses.CosineSimilarityLoss(st), [32, 16, 8])),
    "batch-all-triplet": (1, "class", lambda m: jl.BatchAllTripletLoss(margin=1.0),
                          lambda st, losses: losses.BatchAllTripletLoss(st, margin=1.0)),
    "online-contrastive": (2, "binary", lambda m: jl.OnlineContrastiveLoss(),
                           lambda st, losses: losses.OnlineContrastiveLoss(st)),
    "mse-distillation": (2, "teacher", lambda m: jl.MSELoss(), lambda st, losses: losses.MSELoss(st)),
}
STEP_LABELS = {None: lambda i, r: (), "score": lambda i, r: (r[2] / 5.0,), "class": lambda i, r: (i % 3,),
               "binary": lambda i, r: (int(r[2] > 2.5),),
               "teacher": lambda i, r: (np.random.default_rng(i).normal(size=32).astype(np.float32),)}


def torch_features(st, examples, n_texts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [st.tokenize([e[i] for e in examples]) for i in range(n_texts)]


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("case", list(STEP_LOSSES))
def test_one_train_step_equals_pytorch_adamw(tiny_folder, case, pack):
    """Dropout off (torch in eval mode), the same batch, AdamW with the same settings: same params,
    whether the batch is padded per column or packed (fit's default)."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    n_texts, label, make_jx, make_st = STEP_LOSSES[case]
    rows = triplets(8) if label is None else scored_pairs(8)
    examples = [r[:n_texts] + STEP_LABELS[label](i, r) for i, r in enumerate(rows)]
    labels = torch.tensor(np.array([e[-1] for e in examples])) if label else None
    # eps 1e-4: the keys' biases get gradients that are float noise on both sides (softmax ignores them),
    # which Adam's g / (|g| + eps) would blow up to visible steps with a tiny eps.
    lr, betas, eps, weight_decay = 1e-3, (0.9, 0.98), 1e-4, 0.01

    st = load_st(tiny_folder).eval()
    opt = torch.optim.AdamW(st.parameters(), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    st_loss = make_st(st, st_losses)
    value = st_loss(torch_features(st, examples, n_texts), labels)
    value.backward()
    opt.step()

    jx = jaxst.SentenceTransformer(tiny_folder)
    optimizer = optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay)
    step_fn = training.make_train_step(jx, make_jx(jx), optimizer, dropout=False)
    batch = training.collate(jx, examples, pack=pack)
    assert ("unpack_index" in batch["features"]) == pack
    state, metrics = step_fn(training.TrainState.create(jx.params, optimizer), batch)
    assert abs(float(metrics["loss"]) - float(value.detach())) < TOL
    assert int(state.step) == 1
    moved = assert_params_match_torch(state.params, st[0].auto_model.state_dict(), {"encoder": ""})
    assert max_abs(state.params["encoder"]["embeddings"]["LayerNorm"]["scale"],
                   jx.params["encoder"]["embeddings"]["LayerNorm"]["scale"]) > 5e-4  # the step did move
    assert moved < TOL


def test_softmax_loss_trains_its_classifier_with_the_model(tiny_folder):
    """SoftmaxLoss's classifier is the loss's own params: one AdamW step moves the model and the classifier as
    PyTorch's step over both moves them; fit trains both and hands the classifier back to the loss."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    rows = scored_pairs(8)
    examples = [(a, b, i % 3) for i, (a, b, _) in enumerate(rows)]
    lr, betas, eps, weight_decay = 1e-3, (0.9, 0.98), 1e-4, 0.01
    st = load_st(tiny_folder).eval()
    st_loss = st_losses.SoftmaxLoss(st, st.get_embedding_dimension(), 3)
    kernel, bias = st_loss.classifier.weight.detach().numpy().T.copy(), st_loss.classifier.bias.detach().numpy().copy()
    opt = torch.optim.AdamW(list(st.parameters()) + list(st_loss.classifier.parameters()), lr=lr, betas=betas,
                            eps=eps, weight_decay=weight_decay)
    value = st_loss(torch_features(st, examples, 2), torch.tensor([e[-1] for e in examples]))
    value.backward()
    opt.step()

    jx = jaxst.SentenceTransformer(tiny_folder)
    loss = jl.SoftmaxLoss(jx, num_labels=3)
    loss.params = {"classifier": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}
    optimizer = optax.adamw(lr, b1=betas[0], b2=betas[1], eps=eps, weight_decay=weight_decay)
    step_fn = training.make_train_step(jx, loss, optimizer, dropout=False)
    with pytest.raises(ValueError, match="trainable_params"):
        step_fn(training.TrainState.create(jx.params, optimizer), training.collate(jx, examples))
    state, metrics = step_fn(training.TrainState.create(training.trainable_params(jx, loss), optimizer),
                             training.collate(jx, examples))
    assert abs(float(metrics["loss"]) - float(value.detach())) < TOL
    classifier = state.params["loss"]["classifier"]
    assert max_abs(classifier["kernel"], st_loss.classifier.weight.detach().numpy().T) < TOL
    assert max_abs(classifier["bias"], st_loss.classifier.bias.detach().numpy()) < TOL
    assert max_abs(classifier["kernel"], kernel) > 5e-4  # the step did move it
    model_params = {k: v for k, v in state.params.items() if k != "loss"}
    assert assert_params_match_torch(model_params, st[0].auto_model.state_dict(), {"encoder": ""}) < TOL

    before = jax.tree.map(np.array, loss.params)
    training.fit(jx, examples * 4, loss, batch_size=8, learning_rate=1e-3, warmup_steps=0, show_progress_bar=False)
    assert set(jx.params) == set(model_params)  # the model's params only, the classifier back with the loss
    assert max_abs(loss.params["classifier"]["kernel"], before["classifier"]["kernel"]) > 1e-4


PACK_CASES = {  # encoder, pooling, include_prompt
    "bert-mean": ("tiny_bert_base", "mean", True),
    "bert-all-poolings": ("tiny_bert_base", ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean",
                                             "lasttoken"), True),
    "xlmr-cls": ("tiny_xlmr_base", "cls", True),
    "mpnet-mean-no-prompt": ("tiny_mpnet_base", "mean", False),
}


@pytest.mark.parametrize("case", list(PACK_CASES))
def test_packed_batch_gives_the_padded_loss_and_gradients(request, make_tiny_st, case):
    """Packing texts end to end (attention within each text, positions from 0 per text, token states
    gathered back per text) changes nothing a loss sees: the same value and gradients as the padded
    batch, for every pooling mode and each encoder family; with a prompt excluded from pooling too."""
    base, pooling, include_prompt = PACK_CASES[case]
    folder = make_tiny_st(pooling_mode=pooling, include_prompt=include_prompt, base=request.getfixturevalue(base),
                          prompts={"query": "query: "} if not include_prompt else None)
    jx = jaxst.SentenceTransformer(folder)
    examples = triplets(8, offset=40)
    loss_fn = jax.jit(jax.value_and_grad(training.make_loss_fn(jx, jl.MultipleNegativesRankingLoss(), dropout=False)))
    padded = training.collate(jx, examples)
    packed = training.collate(jx, examples, pack=True)
    if not include_prompt:  # the prompt's tokens are in the text but left out of the pooling
        columns = [jx.tokenize([e[i] for e in examples], prompt="query: ") for i in range(3)]
        assert int(columns[0]["prompt_length"]) > 1
        padded = {"features": columns, "labels": None}
        packed = {"features": training.pack_columns(columns, jx.tokenizer.pad_id), "labels": None}
    feats = packed["features"]
    if include_prompt:  # fewer token slots than collate's padded columns: less to compute
        assert feats["input_ids"].size < sum(f["input_ids"].size for f in padded["features"])
    assert feats["unpack_index"].shape[:2] == (3, 8)
    value, grads = loss_fn(jx.params, padded)
    packed_value, packed_grads = loss_fn(jx.params, packed)
    assert abs(float(value) - float(packed_value)) < TOL
    worst = max(max_abs(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(packed_grads)))
    assert worst < TOL
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-3  # gradients are not all ~0

    # rows narrower than the longest text widen to a multiple of the row; texts never straddle rows
    narrow = training.pack_columns(padded["features"], jx.tokenizer.pad_id, row=8)
    assert narrow["input_ids"].shape[1] % 8 == 0 and narrow["input_ids"].shape[1] >= 16
    narrow_value, narrow_grads = loss_fn(jx.params, {"features": narrow, "labels": None})
    assert abs(float(value) - float(narrow_value)) < TOL
    assert max(max_abs(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(narrow_grads))) < TOL


def test_pack_columns_layout():
    cols = [{"input_ids": np.array([[5, 6, 7, 0], [8, 9, 0, 0]]),
             "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]])},
            {"input_ids": np.array([[1, 2, 3, 4], [3, 0, 0, 0]]),
             "attention_mask": np.array([[1, 1, 1, 1], [1, 0, 0, 0]])}]
    p = training.pack_columns(cols, pad_id=0, row=5)
    assert p["input_ids"].shape == (2, 5)  # 3+2+4+1 = 10 tokens in two rows of five, nothing split
    flat = p["input_ids"].reshape(-1)
    for c, col in enumerate(cols):
        for b in range(2):
            n = col["attention_mask"][b].sum()
            np.testing.assert_array_equal(flat[p["unpack_index"][c, b, :n]], col["input_ids"][b, :n])
            np.testing.assert_array_equal(p["attention_mask"][c, b], (np.arange(5) < n).astype(np.int32))
            seg = p["segment_ids"].reshape(-1)[p["unpack_index"][c, b, :n]]
            assert (seg == 2 * c + b).all()
            np.testing.assert_array_equal(p["positions"].reshape(-1)[p["unpack_index"][c, b, :n]], np.arange(n))
    assert (p["segment_ids"] >= 0).sum() == 10
    with pytest.raises(ValueError, match="batch size"):
        training.pack_columns([cols[0], {k: v[:1] for k, v in cols[1].items()}], pad_id=0)


def test_default_recipe_equals_sentence_transformers_fit_recipe(tiny_folder):
    """Four steps of the default optimizer (AdamW, weight decay except biases/LayerNorm, clipping to norm 1,
    linear warmup then decay) against the same recipe in PyTorch, as sentence-transformers' fit sets it up."""
    from sentence_transformers.sentence_transformer import losses as st_losses
    from transformers import get_linear_schedule_with_warmup

    lr, warmup, total = 2e-3, 2, 4
    batches = [triplets(8, offset=16 * i) for i in range(total)]
    st = load_st(tiny_folder).eval()
    named = list(st.named_parameters())
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    groups = [{"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, eps=1e-4)  # eps: see test_one_train_step_equals_pytorch_adamw
    scheduler = get_linear_schedule_with_warmup(opt, num_warmup_steps=warmup, num_training_steps=total)
    st_loss = st_losses.MultipleNegativesRankingLoss(st)
    grad_norms = []
    for examples in batches:
        st_loss(torch_features(st, examples, 3), None).backward()
        grad_norms.append(float(torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)))
        opt.step()
        scheduler.step()
        opt.zero_grad()
    assert max(grad_norms) > 1.0  # clipping took part

    jx = jaxst.SentenceTransformer(tiny_folder)
    optimizer = training.default_optimizer(lr, total_steps=total, warmup_steps=warmup, eps=1e-4)
    step_fn = training.make_train_step(jx, jl.MultipleNegativesRankingLoss(), optimizer, dropout=False)
    state = training.TrainState.create(jx.params, optimizer)
    jx_norms = []
    for examples in batches:
        state, metrics = step_fn(state, training.collate(jx, examples))
        jx_norms.append(float(metrics["grad_norm"]))
    np.testing.assert_allclose(jx_norms, grad_norms, rtol=1e-5)
    assert_params_match_torch(state.params, st[0].auto_model.state_dict(), {"encoder": ""})


def test_schedule_equals_transformers():
    from transformers import get_linear_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = get_linear_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=10)
    expected = []
    for _ in range(12):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    schedule = training.linear_schedule_with_warmup(0.5, 3, 10)
    np.testing.assert_allclose([float(schedule(s)) for s in range(12)], expected, atol=1e-7)


@pytest.mark.parametrize("warmup", [0, 3])
def test_constant_schedule_equals_transformers(warmup):
    """default_optimizer without total_steps: transformers' constant schedule (full rate at step 0 without
    warmup; it once started at 0, so a one-step run did not move)."""
    from transformers import get_constant_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = get_constant_schedule_with_warmup(opt, num_warmup_steps=warmup)
    expected = []
    for _ in range(6):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    schedule = training.constant_schedule_with_warmup(0.5, warmup)
    np.testing.assert_allclose([float(schedule(s)) for s in range(6)], expected, atol=1e-7)


def test_cross_encoder_train_step_equals_pytorch(make_tiny_cross_encoder):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import losses as ce_losses

    folder = make_tiny_cross_encoder("bert", num_labels=1)
    examples = [(a, b, float(s >= 2.5)) for a, b, s in STSB_TRAIN[:8]]
    lr, eps, weight_decay = 1e-3, 1e-4, 0.01  # eps: see test_one_train_step_equals_pytorch_adamw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ce = CrossEncoder(str(folder), device="cpu")
    ce.model.eval()
    opt = torch.optim.AdamW(ce.model.parameters(), lr=lr, eps=eps, weight_decay=weight_decay)
    value = ce_losses.BinaryCrossEntropyLoss(ce, pos_weight=torch.tensor(2.0))(
        [[a for a, _, _ in examples], [b for _, b, _ in examples]], torch.tensor([s for *_, s in examples]))
    value.backward()
    opt.step()

    jx = jaxst.CrossEncoder(folder)
    optimizer = optax.adamw(lr, eps=eps, weight_decay=weight_decay)
    step_fn = training.make_train_step(jx, jl.BinaryCrossEntropyLoss(jx, pos_weight=2.0), optimizer, dropout=False)
    state, metrics = step_fn(training.TrainState.create(jx.params, optimizer), training.collate(jx, examples))
    assert abs(float(metrics["loss"]) - float(value.detach())) < TOL
    assert_params_match_torch(state.params, ce.model.state_dict(),
                              {"encoder": "bert.", "pooler": "bert.pooler.", "classifier": "classifier."})


# ---------------------------------------------------------------------------------- checkpoints


def test_orbax_save_restore_continue_equals_uninterrupted(tiny_folder, tmp_path):
    jx = jaxst.SentenceTransformer(tiny_folder)
    optimizer = training.default_optimizer(1e-3, total_steps=6, warmup_steps=2)
    step_fn = training.make_train_step(jx, jl.MultipleNegativesRankingLoss(), optimizer)  # dropout on
    batches = [training.collate(jx, triplets(8, offset=16 * i)) for i in range(4)]
    key = jax.random.key(0)

    def run(state, steps):
        for i in steps:
            state, _ = step_fn(state, batches[i], jax.random.fold_in(key, int(state.step)))
        return state

    uninterrupted = run(training.TrainState.create(jx.params, optimizer), range(4))

    manager = training.checkpoint_manager(tmp_path / "ckpt")
    half = run(training.TrainState.create(jx.params, optimizer), range(2))
    assert training.save_checkpoint(manager, half) == 2
    del half
    fresh = training.TrainState.create(jx.params, optimizer)  # a new process would start from this
    restored = training.restore_checkpoint(training.checkpoint_manager(tmp_path / "ckpt"), fresh)
    assert int(restored.step) == 2
    resumed = run(restored, range(2, 4))
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert max_abs(uninterrupted.params["encoder"]["embeddings"]["LayerNorm"]["bias"],
                   jx.params["encoder"]["embeddings"]["LayerNorm"]["bias"]) > 1e-3
    with pytest.raises(FileNotFoundError):
        training.restore_checkpoint(training.checkpoint_manager(tmp_path / "empty"), fresh)


# ------------------------------------------------------------------------------------------ fit


def test_evaluator_equals_sentence_transformers(tiny_folder):
    from scipy.stats import spearmanr
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    dev = read_stsb("stsb-en-dev.csv")[:60]
    s1, s2, scores = [a for a, _, _ in dev], [b for _, b, _ in dev], [s for *_, s in dev]
    expected = EmbeddingSimilarityEvaluator(s1, s2, scores, name="dev")(load_st(tiny_folder))
    evaluator = training.EmbeddingSimilarityEvaluator(s1, s2, scores, name="dev")
    got = evaluator(jaxst.SentenceTransformer(tiny_folder))
    assert set(got) == set(expected) == {"dev_pearson_cosine", "dev_spearman_cosine"}
    for k in got:
        assert abs(got[k] - expected[k]) < TOL, k
    assert evaluator.primary_metric == "dev_spearman_cosine"
    x = np.random.default_rng(0).integers(0, 5, size=50)  # ties
    y = np.random.default_rng(1).normal(size=50)
    assert abs(training.spearman(x, y) - spearmanr(x, y)[0]) < 1e-12


def _fit(folder, seed, **kwargs):
    model = jaxst.SentenceTransformer(folder)
    dev = read_stsb("stsb-en-dev.csv")[:40]
    evaluator = training.EmbeddingSimilarityEvaluator.from_input_examples(dev)
    defaults = dict(epochs=3, batch_size=16, learning_rate=2e-3, warmup_steps=2, seed=seed, evaluator=evaluator,
                    evaluation_steps=4, show_progress_bar=False)
    history = training.fit(model, scored_pairs(48), jl.CoSENTLoss(), **{**defaults, **kwargs})
    return model, history


def test_fit_runs_is_reproducible_and_the_loss_goes_down(tiny_folder):
    model, history = _fit(tiny_folder, seed=0)
    losses = history["loss"]
    assert len(losses) == 9  # 3 epochs of 3 batches
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    assert [e["step"] for e in history["evaluations"]] == [3, 4, 6, 8, 9]
    assert all("spearman_cosine" in e for e in history["evaluations"])
    original = jaxst.SentenceTransformer(tiny_folder)
    assert max_abs(model.encode(["A man is eating."]), original.encode(["A man is eating."])) > 1e-3

    again, history_again = _fit(tiny_folder, seed=0)
    assert history_again["loss"] == losses
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, other = _fit(tiny_folder, seed=1, evaluator=None)
    assert other["loss"] != losses


def test_fit_with_several_evaluators_keeps_the_best(tiny_folder):
    """Several evaluators (metrics merged per evaluation), and load_best_model_at_end: the model ends with the
    params of the best evaluation by metric_for_best_model, for either direction."""
    from jaxst.evaluation import TripletEvaluator

    rows = read_stsb("stsb-en-dev.csv")[40:100]
    triplets = TripletEvaluator([a for a, _, _ in rows], [b for _, b, _ in rows],
                                [b for _, b, _ in rows[5:] + rows[:5]], name="tri")
    for metric, greater in (("sts_spearman_cosine", True), ("tri_cosine_accuracy", False)):
        sts = training.EmbeddingSimilarityEvaluator.from_input_examples(read_stsb("stsb-en-dev.csv")[:40], name="sts")
        model, history = _fit(tiny_folder, seed=0, evaluator=[sts, triplets], evaluation_steps=2,
                              metric_for_best_model=metric, greater_is_better=greater, load_best_model_at_end=True)
        entries = history["evaluations"]
        assert all("sts_spearman_cosine" in e and "tri_cosine_accuracy" in e for e in entries)
        values = [e[metric] for e in entries]
        best = max(values) if greater else min(values)
        assert history["best"][metric] == best and history["best"]["step"] == entries[values.index(best)]["step"]
        again = sts(model) if metric.startswith("sts") else triplets(model)
        assert abs(again[metric] - best) < 1e-6  # the model holds the best evaluation's params
    with pytest.raises(ValueError, match="metric_for_best_model"):
        _fit(tiny_folder, seed=0, metric_for_best_model="nope")
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        _fit(tiny_folder, seed=0, load_best_model_at_end=True)


def test_gist_loss_with_a_guide_model_matches_sentence_transformers(make_tiny_st):
    """GISTEmbedLoss through jaxst.training with a guide model (the batch collated with guide=): the loss and
    gradients of sentence-transformers' GISTEmbedLoss with the same student and guide; fit runs with it."""
    from conftest import assert_same_gradients
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers.sentence_transformer import losses as st_losses

    student_folder, guide_folder = make_tiny_st(), make_tiny_st(pooling_mode="cls", normalize=True)
    st_student = STSentenceTransformer(str(student_folder), device="cpu")
    st_guide = STSentenceTransformer(str(guide_folder), device="cpu")
    st_student.eval()
    st_guide.eval()
    rows = read_stsb("stsb-en-train.csv")[:16]
    triplets = [(a, b, rows[(i + 3) % len(rows)][1]) for i, (a, b, _) in enumerate(rows)]
    options = dict(temperature=0.05, margin=0.02)
    features = [st_student.preprocess([t[i] for t in triplets]) for i in range(3)]
    ref = st_losses.GISTEmbedLoss(st_student, st_guide, **options)(features, None)
    ref.backward()
    student, guide = jaxst.SentenceTransformer(student_folder), jaxst.SentenceTransformer(guide_folder)
    loss = jl.GISTEmbedLoss(guide=guide, **options)
    batch = training.collate(student, triplets, guide=guide)
    value, grads = jax.jit(jax.value_and_grad(training.make_loss_fn(student, loss, dropout=False)))(
        student.params, batch)
    assert abs(float(value) - float(ref.detach())) < 1e-5 * max(1.0, abs(float(ref.detach())))
    assert_same_gradients(st_student, [
        (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"], "encoder.layer.1.output.dense.weight",
         True)])
    cached = jl.CachedGISTEmbedLoss(guide=guide, mini_batch_size=4, **options)  # GradCache: the same numbers
    cached_value, cached_grads = jax.jit(jax.value_and_grad(training.make_loss_fn(student, cached, dropout=False)))(
        student.params, batch)
    assert abs(float(cached_value) - float(value)) < 1e-5 * max(1.0, abs(float(value)))
    for a, b in zip(jax.tree.leaves(cached_grads), jax.tree.leaves(grads)):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) < 1e-5 * max(1.0, float(np.abs(np.asarray(b)).max()))
    history = training.fit(student, triplets, loss, batch_size=8, show_progress_bar=False)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    # a model that guides itself: fit trains in place by donation, but never the arrays the guide reads
    own = jl.GISTEmbedLoss(guide=guide, **options)
    history = training.fit(guide, triplets, own, batch_size=8, show_progress_bar=False)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    with pytest.raises(ValueError, match="guide=loss.guide"):
        training.make_loss_fn(student, loss, dropout=False)(student.params, training.collate(student, triplets))


def test_fit_resumes_from_its_checkpoint(tiny_folder, tmp_path, monkeypatch):
    reference, _ = _fit(tiny_folder, seed=0, evaluator=None)
    saves = []
    real_save = training.save_checkpoint

    def save_then_crash(manager, state):
        step = real_save(manager, state)
        saves.append(step)
        if len(saves) == 2:
            raise KeyboardInterrupt  # the run dies right after its second checkpoint

    monkeypatch.setattr(training.fitting, "save_checkpoint", save_then_crash)  # the name fit() calls
    with pytest.raises(KeyboardInterrupt):
        _fit(tiny_folder, seed=0, evaluator=None, checkpoint_path=tmp_path / "ckpt", checkpoint_save_steps=2)
    assert saves == [2, 4]
    monkeypatch.setattr(training.fitting, "save_checkpoint", real_save)
    resumed, history = _fit(tiny_folder, seed=0, evaluator=None, checkpoint_path=tmp_path / "ckpt",
                            checkpoint_save_steps=2, resume_from_checkpoint=True)
    assert len(history["loss"]) == 5  # steps 5..9
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(reference.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_interrupted_fit_leaves_the_model_at_its_last_step(tiny_folder):
    """fit trains the model in place, as PyTorch does (each step donates the state to the next, so no second
    copy of the params is kept): a run stopped by an interrupt leaves the model usable, with the params of
    its last completed step, those the evaluation at that step saw."""
    model = jaxst.SentenceTransformer(tiny_folder)
    before = model.encode(["A man is eating."])
    evaluator = training.EmbeddingSimilarityEvaluator.from_input_examples(read_stsb("stsb-en-dev.csv")[:20])
    seen = {}

    def crash(entry):
        seen[entry["step"]] = model.encode(["A man is eating."])
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        training.fit(model, scored_pairs(48), jl.CoSENTLoss(), batch_size=8, learning_rate=1e-3, evaluator=evaluator,
                     evaluation_steps=1, callback=crash, show_progress_bar=False)
    assert sorted(seen) == [1, 2]
    after = model.encode(["A man is eating."])
    np.testing.assert_array_equal(after, seen[2])
    assert np.abs(seen[2] - seen[1]).max() > 1e-4 and np.abs(after - before).max() > 1e-4  # it did train


def test_bad_input_is_a_clear_error(tiny_folder):
    model = jaxst.SentenceTransformer(tiny_folder)
    with pytest.raises(ValueError, match="same number of texts"):
        training.collate(model, [("a", "b"), ("a", "b", "c")])
    with pytest.raises(ValueError, match="every example"):
        training.collate(model, [("a", "b", 1.0), ("a", "b")])
    with pytest.raises(ValueError, match=r"label needs the same shape .* got shapes \[\(\), \(3,\)\]"):
        training.collate(model, [("a", "b", 1.0), ("a", "b", np.ones(3, np.float32))])
    assert training.collate(model, [("a", [1.0, 2.0]), ("b", (3.0, 4.0))])["labels"].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="should not be used alone"):
        training.make_train_step(model, jl.SparseMultipleNegativesRankingLoss(), optax.adamw(1e-3))
    with pytest.raises(TypeError, match="texts"):
        training.collate(model, [("a", None)])
    with pytest.raises(TypeError, match="jaxst.losses"):
        training.fit(model, [("a", "b")], "MultipleNegativesRankingLoss")
    with pytest.raises(ValueError, match="batch_size"):
        training.fit(model, [("a", "b")], jl.MultipleNegativesRankingLoss(), batch_size=0)
    optimizer = optax.adamw(1e-3)
    step_fn = training.make_train_step(model, jl.MultipleNegativesRankingLoss(), optimizer)
    state = training.TrainState.create(model.params, optimizer)
    with pytest.raises(ValueError, match="PRNG key"):
        step_fn(state, training.collate(model, [("a", "b")]))
    with pytest.raises(TypeError, match="collate"):
        step_fn(state, [model.tokenize(["a"])], jax.random.key(0))


# ---------------------------------------------------------------------------------- data parallel

MULTI_DEVICE = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh
import jaxst
from jaxst import losses as jl, training

model = jaxst.SentenceTransformer(sys.argv[1])
examples = json.loads(sys.argv[2])
assert jax.device_count() == 8, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
cases = {
    "mnrl-hard-negatives": (jl.MultipleNegativesRankingLoss(), 3, False),
    "mnrl-gte": (jl.MultipleNegativesRankingLoss(
        directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")), 3, False),
    "mnrl-symmetric": (jl.MultipleNegativesSymmetricRankingLoss(), 2, False),
    "cosent": (jl.CoSENTLoss(), 2, True),
    "cosine": (jl.CosineSimilarityLoss(), 2, True),
    "matryoshka-mnrl": (jl.MatryoshkaLoss(None, jl.MultipleNegativesRankingLoss(), (32, 8)), 3, False),
    "mnrl-per-device-negatives": (jl.MultipleNegativesRankingLoss(gather_across_devices=False), 2, False),
}
out = {}
for name, (loss, n_texts, scored) in cases.items():
    batch = training.collate(model, [e[:n_texts] + (e[3:] if scored else []) for e in examples])
    one = jax.jit(jax.value_and_grad(training.make_loss_fn(model, loss)))
    eight = jax.jit(jax.value_and_grad(training.make_loss_fn(model, loss, mesh=mesh)))
    (v1, g1), (v8, g8) = one(model.params, batch), eight(model.params, batch)
    out[name] = {"one": float(v1), "eight": float(v8),
                 "grad_diff": max(float(jnp.abs(a - b).max())
                                  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8))),
                 "grad_max": max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g1))}

# A whole train step on the mesh (dropout off) gives the one-device params.
optimizer = training.default_optimizer(1e-3, total_steps=10, warmup_steps=0, eps=1e-4)  # eps: key-bias noise
batch = training.collate(model, [e[:3] for e in examples])
states = []
for mesh_ in (None, mesh):
    step_fn = training.make_train_step(model, jl.MultipleNegativesRankingLoss(), optimizer, dropout=False, mesh=mesh_)
    state, _ = step_fn(training.TrainState.create(model.params, optimizer), batch)
    states.append(state)
out["train_step_param_diff"] = max(float(jnp.abs(a - b).max()) for a, b in
                                   zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)))
print("RESULT" + json.dumps(out))
"""


def test_eight_devices_give_the_one_device_loss_and_gradients(tiny_folder):
    rows = triplets(16)
    examples = [[a, p, n, s] for (a, p, n), (*_, s) in zip(rows, scored_pairs(16, offset=200))]
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE, str(tiny_folder), json.dumps(examples)],
                          capture_output=True, text=True, timeout=480, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name, r in result.items():
        if name in ("train_step_param_diff", "mnrl-per-device-negatives"):
            continue
        assert abs(r["one"] - r["eight"]) < TOL, (name, r)
        assert r["grad_diff"] < TOL, (name, r)
        assert r["grad_max"] > 1e-2, (name, r)
    local = result["mnrl-per-device-negatives"]  # DDP's default: each device sees only its own negatives
    assert abs(local["one"] - local["eight"]) > 0.1
    assert result["train_step_param_diff"] < TOL
