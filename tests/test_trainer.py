"""The Trainer API against sentence-transformers' own trainer: its samplers' batches (the same indices in the
same order for the same seed), whole runs over ``datasets`` giving the same loss on every step and the same
model (NO_DUPLICATES + MNRL, a two-dataset ROUND_ROBIN run with a loss each, GROUP_BY_LABEL + batch-hard
triplets), resume from a checkpoint equal to an uninterrupted run, and clear errors for bad arguments."""

from __future__ import annotations

import json
import shutil
import warnings

import datasets  # the test extra installs it: these parity tests never skip
import jax
import numpy as np
import pytest
import torch
from conftest import max_abs, read_stsb

import jaxst
from jaxst import losses as jl
from jaxst.training import samplers as js
from jaxst.training.trainer import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

TOL = 1e-5
STSB = read_stsb("stsb-en-train.csv")


# ------------------------------------------------------------------------------------------ samplers


def test_generator_draws_torch_randperm():
    for seed in (0, 42, 2**33 + 7):
        g = torch.Generator().manual_seed(seed)
        ours = js.TorchGenerator(seed)
        for n in (1, 2, 7, 1000):
            assert torch.randperm(n, generator=g).tolist() == ours.randperm(n).tolist()
    assert torch.randperm(30, generator=torch.Generator()).tolist() == js.TorchGenerator().randperm(30).tolist()


def _rows(n: int, repeats: int = 3) -> dict:
    """Pairs with repeated anchors (every ``repeats``-th row shares its anchor) and 4 labels."""
    pairs = STSB[:n]
    return {"anchor": [pairs[i - i % repeats][0] for i in range(n)], "positive": [b for _, b, _ in pairs],
            "label": [i % 4 for i in range(n)]}


def _both_samplers(kind: str, data: dict, batch_size: int, drop_last: bool, seed: int = 12):
    from sentence_transformers.base import sampler as st

    dataset = datasets.Dataset.from_dict(data)
    generator = torch.Generator().manual_seed(seed)
    kwargs = dict(batch_size=batch_size, drop_last=drop_last, valid_label_columns=["label"], seed=seed)
    if kind == "batch_sampler":
        from torch.utils.data import RandomSampler

        theirs = st.DefaultBatchSampler(RandomSampler(dataset, generator=generator), generator=generator, **kwargs)
    elif kind == "no_duplicates":
        theirs = st.NoDuplicatesBatchSampler(dataset, generator=generator, **kwargs)
    else:
        theirs = st.GroupByLabelBatchSampler(dataset, generator=generator, **kwargs)
    ours = js.make_batch_sampler(kind, dataset, batch_size, drop_last, ["label"], js.TorchGenerator(seed), seed)
    return dataset, theirs, ours


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("kind", ["batch_sampler", "no_duplicates", "group_by_label"])
def test_samplers_give_sentence_transformers_batches(kind, drop_last):
    dataset, theirs, ours = _both_samplers(kind, _rows(46), 6, drop_last)
    assert len(ours) == len(theirs)
    for epoch in range(3):
        theirs.set_epoch(epoch)
        ours.set_epoch(epoch)
        expected = [list(map(int, b)) for b in theirs]
        assert list(ours) == expected, (kind, epoch)
    if kind == "no_duplicates":  # the property itself: no value twice in a batch
        for batch in expected:
            rows = [dataset[i] for i in batch]
            values = [v for r in rows for v in (r["anchor"], r["positive"])]  # the label is no input
            assert len(values) == len(set(values))
    if kind == "group_by_label":
        for batch in expected:
            labels = [dataset[i]["label"] for i in batch]
            counts = {lab: labels.count(lab) for lab in labels}
            assert len(counts) >= 2 and min(counts.values()) >= 2


@pytest.mark.parametrize("kind", ["round_robin", "proportional"])
def test_multi_dataset_samplers_give_sentence_transformers_batches(kind):
    from sentence_transformers.base import sampler as st
    from torch.utils.data import ConcatDataset, RandomSampler

    parts = [datasets.Dataset.from_dict(_rows(n)) for n in (14, 23)]
    generator = torch.Generator().manual_seed(5)
    children = [st.DefaultBatchSampler(RandomSampler(d, generator=generator), batch_size=4, drop_last=False,
                                       generator=generator, seed=5) for d in parts]
    cls = st.RoundRobinBatchSampler if kind == "round_robin" else st.ProportionalBatchSampler
    theirs = cls(ConcatDataset(parts), batch_samplers=children, generator=generator, seed=5)
    ours_gen = js.TorchGenerator(5)
    ours = js.make_multi_dataset_batch_sampler(
        kind, parts, [js.DefaultBatchSampler(d, 4, False, generator=ours_gen, seed=5) for d in parts], ours_gen, 5)
    assert len(ours) == len(theirs)
    for epoch in range(2):
        theirs.set_epoch(epoch)
        ours.set_epoch(epoch)
        expected = [list(map(int, b)) for b in theirs]
        assert list(ours) == expected
    if kind == "round_robin":  # turns alternate, and stop when the smaller dataset is exhausted
        assert [0 if b[0] < 14 else 1 for b in expected] == [0, 1] * 4


# ------------------------------------------------------------------------------------------ whole runs


@pytest.fixture(scope="module")
def no_dropout_folder(make_tiny_st, tmp_path_factory):
    """The tiny model with dropout 0 (sentence-transformers' trainer trains in train mode)."""
    folder = tmp_path_factory.mktemp("tiny-no-dropout") / "model"
    shutil.copytree(make_tiny_st(pooling_mode="mean"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _recording(loss, seen: list):
    """A sentence-transformers loss that records each batch's value."""

    class Recording(type(loss)):
        def forward(self, *a, **k):
            value = super().forward(*a, **k)
            seen.append(float(value.detach()))
            return value

    loss.__class__ = Recording
    return loss


def _st_run(folder, tmp_path, train, losses, **arguments):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import SentenceTransformerTrainer as STTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as STArgs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(str(folder), device="cpu")
        seen: list = []
        loss = {k: _recording(make(model), seen) for k, make in losses.items()} if isinstance(losses, dict) \
            else _recording(losses(model), seen)
        args = STArgs(output_dir=str(tmp_path / "st"), save_strategy="no", report_to="none",
                      disable_tqdm=True, **arguments)
        STTrainer(model=model, args=args, train_dataset=train, loss=loss).train()
    return model, seen


def _jx_run(folder, tmp_path, train, losses, **arguments):
    model = jaxst.SentenceTransformer(folder)
    seen: list = []
    loss = {k: make(model) for k, make in losses.items()} if isinstance(losses, dict) else losses(model)
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "jx"), save_strategy="no",
                                                disable_tqdm=True, logging_steps=1, **arguments)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    trainer.train()
    seen = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return model, seen


def _same_model(st_model, jx_model):
    texts = [a for a, _, _ in STSB[200:216]]
    expected = st_model.encode(texts, convert_to_numpy=True)
    assert max_abs(jx_model.encode(texts), expected) < TOL


RUNS = {
    # in-batch negatives over batches without repeated texts
    "mnrl_no_duplicates": dict(
        train=lambda: datasets.Dataset.from_dict({k: v for k, v in _rows(40).items() if k != "label"}),
        st_loss=lambda: (lambda m: __import__("sentence_transformers").sentence_transformer.losses
                         .MultipleNegativesRankingLoss(m)),
        jx_loss=lambda: jl.MultipleNegativesRankingLoss,
        args=dict(batch_sampler="no_duplicates", per_device_train_batch_size=8, num_train_epochs=2)),
    # batch-hard triplets over label groups
    "batch_hard_group_by_label": dict(
        train=lambda: datasets.Dataset.from_dict({"sentence": [a for a, _, _ in STSB[:40]],
                                                  "label": [i % 5 for i in range(40)]}),
        st_loss=lambda: (lambda m: __import__("sentence_transformers").sentence_transformer.losses
                         .BatchHardTripletLoss(m)),
        jx_loss=lambda: jl.BatchHardTripletLoss,
        args=dict(batch_sampler="group_by_label", per_device_train_batch_size=8, num_train_epochs=1)),
}


@pytest.mark.parametrize("case", list(RUNS))
def test_run_equals_sentence_transformers_trainer(no_dropout_folder, tmp_path, case):
    """Several steps with sentence-transformers' own sampler: the same loss at every step, the same model."""
    run = RUNS[case]
    common = dict(learning_rate=1e-3, adam_epsilon=1e-4, warmup_steps=0.2, seed=7, **run["args"])
    st_model, st_losses = _st_run(no_dropout_folder, tmp_path, run["train"](), run["st_loss"](), **common)
    jx_model, jx_losses = _jx_run(no_dropout_folder, tmp_path, run["train"](), run["jx_loss"](), **common)
    assert len(jx_losses) == len(st_losses) >= 4
    np.testing.assert_allclose(jx_losses, st_losses, atol=TOL, rtol=TOL)
    _same_model(st_model, jx_model)


def test_two_datasets_round_robin_with_a_loss_each(no_dropout_folder, tmp_path):
    from sentence_transformers.sentence_transformer import losses as st_losses

    def train():
        pairs = datasets.Dataset.from_dict({"anchor": [a for a, _, _ in STSB[:24]],
                                            "positive": [b for _, b, _ in STSB[:24]]})
        scored = datasets.Dataset.from_dict({"s1": [a for a, _, _ in STSB[100:130]],
                                             "s2": [b for _, b, _ in STSB[100:130]],
                                             "score": [s / 5 for _, _, s in STSB[100:130]]})
        return datasets.DatasetDict({"pairs": pairs, "scored": scored})

    common = dict(learning_rate=1e-3, adam_epsilon=1e-4, seed=3, per_device_train_batch_size=6,
                  multi_dataset_batch_sampler="round_robin", num_train_epochs=2)
    st_model, st_seen = _st_run(no_dropout_folder, tmp_path, train(),
                                {"pairs": st_losses.MultipleNegativesRankingLoss, "scored": st_losses.CoSENTLoss},
                                **common)
    jx_model, jx_seen = _jx_run(no_dropout_folder, tmp_path, train(),
                                {"pairs": jl.MultipleNegativesRankingLoss, "scored": jl.CoSENTLoss}, **common)
    assert len(jx_seen) == len(st_seen) == 16  # 4 batches of each dataset per epoch, in turn
    np.testing.assert_allclose(jx_seen, st_seen, atol=TOL, rtol=TOL)
    _same_model(st_model, jx_model)


def test_resume_from_checkpoint_equals_an_uninterrupted_run(no_dropout_folder, tmp_path):
    data = datasets.Dataset.from_dict({k: v for k, v in _rows(48).items() if k != "label"})

    def trainer(out, **extra):
        model = jaxst.SentenceTransformer(no_dropout_folder)
        args = SentenceTransformerTrainingArguments(output_dir=str(out), per_device_train_batch_size=8,
                                                    num_train_epochs=2, learning_rate=1e-3, disable_tqdm=True,
                                                    batch_sampler="no_duplicates", **extra)
        return model, SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                                 loss=jl.MultipleNegativesRankingLoss(model))

    whole, t = trainer(tmp_path / "out", save_steps=4, save_total_limit=2)
    t.train()  # 12 steps: checkpoints 4, 8 and 12, the limit keeps the last two
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-12", "checkpoint-8"]
    shutil.rmtree(tmp_path / "out" / "checkpoint-12")  # as if killed after step 8
    resumed, t = trainer(tmp_path / "out", save_steps=4, save_total_limit=2)
    out = t.train(resume_from_checkpoint=True)
    assert out.global_step == 12 and t.state.log_history[-1]["step"] == 12
    texts = [a for a, _, _ in STSB[300:310]]
    assert max_abs(resumed.encode(texts), whole.encode(texts)) < 1e-6
    checkpoint = jaxst.SentenceTransformer(tmp_path / "out" / "checkpoint-8")  # a checkpoint is a model folder
    assert checkpoint.encode(texts).shape == (10, 32)


def test_bad_arguments_are_clear_errors(no_dropout_folder, tmp_path):
    model = jaxst.SentenceTransformer(no_dropout_folder)
    pairs = datasets.Dataset.from_dict({"anchor": ["a", "b"], "positive": ["c", "d"]})
    with pytest.raises(ValueError, match="batch_sampler must be one of"):
        js.make_batch_sampler("nope", pairs, 2, False, ["label"], js.TorchGenerator(0), 0)
    with pytest.raises(ValueError, match="eval_strategy must be one of"):
        SentenceTransformerTrainingArguments(output_dir="x", eval_strategy="sometimes")
    with pytest.raises(ValueError, match="not supported by jaxst's trainer yet"):
        SentenceTransformerTrainingArguments(output_dir="x", gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="needs an eval_dataset or an evaluator"):
        SentenceTransformerTrainer(model=model, args=SentenceTransformerTrainingArguments(
            output_dir="x", eval_strategy="steps"), train_dataset=pairs)
    with pytest.raises(ValueError, match=r"has datasets \['b'\] that loss"):
        SentenceTransformerTrainer(model=model, train_dataset={"a": pairs, "b": pairs},
                                   loss={"a": jl.MultipleNegativesRankingLoss(model)})
    with pytest.raises(ValueError, match="several label columns"):
        SentenceTransformerTrainer(model=model, train_dataset=datasets.Dataset.from_dict(
            {"a": ["x"], "b": ["y"], "label": [1], "score": [0.5]}))
    with pytest.raises(ValueError, match="even batch_size"):
        js.GroupByLabelBatchSampler(datasets.Dataset.from_dict({"s": list("abcd"), "label": [0, 0, 1, 1]}), 5)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        SentenceTransformerTrainer(model=model, args=SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / "none")), train_dataset=pairs,
            loss=jl.MultipleNegativesRankingLoss(model)).train(resume_from_checkpoint=True)


def test_evaluation_and_best_model(no_dropout_folder, tmp_path):
    """eval_loss equals sentence-transformers' trainer.evaluate() on the same model and data; evaluators' metrics
    are logged under eval_; load_best_model_at_end ends with the checkpoint that scored best."""
    from sentence_transformers import SentenceTransformer as STModel
    from sentence_transformers import SentenceTransformerTrainer as STTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments as STArgs
    from sentence_transformers.sentence_transformer import losses as st_losses

    from jaxst.evaluation import EmbeddingSimilarityEvaluator

    rows = STSB[400:410]
    scored = datasets.Dataset.from_dict({"s1": [a for a, _, _ in rows], "s2": [b for _, b, _ in rows],
                                         "score": [s / 5 for _, _, s in rows]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_model = STModel(str(no_dropout_folder), device="cpu")
        expected = STTrainer(model=st_model, args=STArgs(output_dir=str(tmp_path / "st"), per_device_eval_batch_size=4,
                                                         report_to="none"),
                             eval_dataset=scored, loss=st_losses.CoSENTLoss(st_model)).evaluate()["eval_loss"]
    model = jaxst.SentenceTransformer(no_dropout_folder)
    scoring = SentenceTransformerTrainer(model=model, args=SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "e"), per_device_eval_batch_size=4), eval_dataset=scored, loss=jl.CoSENTLoss(model))
    assert abs(scoring.evaluate()["eval_loss"] - expected) < TOL

    evaluator = EmbeddingSimilarityEvaluator([a for a, _, _ in rows], [b for _, b, _ in rows],
                                             [s for _, _, s in rows], name="sts")
    pairs = datasets.Dataset.from_dict({"anchor": [a for a, _, _ in STSB[:64]],
                                        "positive": [b for _, b, _ in STSB[:64]]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "jx"), per_device_train_batch_size=8, per_device_eval_batch_size=4,
        num_train_epochs=1, learning_rate=5e-3, eval_strategy="steps", eval_steps=2, save_steps=2,
        load_best_model_at_end=True, metric_for_best_model="eval_sts_spearman_cosine", disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs.select(range(48)),
                                         eval_dataset=pairs.select(range(48, 64)),
                                         loss=jl.MultipleNegativesRankingLoss(model), evaluator=evaluator)
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_sts_spearman_cosine" in e]
    assert [e["step"] for e in evaluations] == [2, 4, 6] and all("eval_loss" in e for e in evaluations)
    best = max(evaluations, key=lambda e: e["eval_sts_spearman_cosine"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    assert abs(evaluator(model)["sts_spearman_cosine"] - best["eval_sts_spearman_cosine"]) < 1e-9


def test_bf16_mixed_precision_tracks_float32(no_dropout_folder, tmp_path):
    """bf16=True: the forward in bfloat16 on float32 master params; over 8 steps each step's loss stays within 2%
    of the float32 run's (the README's stated tolerance), and the params and optimizer state stay float32."""
    data = datasets.Dataset.from_dict({"anchor": [a for a, _, _ in STSB[:64]],
                                       "positive": [b for _, b, _ in STSB[:64]]})
    runs = {}
    for bf16 in (False, True):
        model = jaxst.SentenceTransformer(no_dropout_folder)
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / str(bf16)), bf16=bf16,
                                                    logging_steps=1, per_device_train_batch_size=8, num_train_epochs=1,
                                                    learning_rate=1e-3, save_strategy="no", disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=jl.MultipleNegativesRankingLoss(model))
        trainer.train()
        runs[bf16] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        assert {str(leaf.dtype) for leaf in jax.tree.leaves(model.params)} == {"float32"}
    assert len(runs[True]) == 8
    np.testing.assert_allclose(runs[True], runs[False], rtol=0.02)
    assert runs[True] != runs[False]  # it did run in bfloat16


def test_activation_checkpointing_gives_the_same_loss_and_gradients(no_dropout_folder, tmp_path):
    """activation_checkpointing (remat=True: jax.checkpoint per encoder layer): the same loss and gradients; the
    trainer's flag gives the same run. (Its memory effect needs a real-size model: on this 2-layer one XLA's
    compiled temporaries are the same size either way, so it is a benchmark's to measure.)"""
    from jaxst import training

    model = jaxst.SentenceTransformer(no_dropout_folder)
    loss = jl.MultipleNegativesRankingLoss(model)
    batch = training.collate(model, [(a, b) for a, b, _ in STSB[:32]])
    plain = jax.jit(jax.value_and_grad(training.make_loss_fn(model, loss, dropout=False)))
    remat = jax.jit(jax.value_and_grad(training.make_loss_fn(model, loss, dropout=False, remat=True)))
    (value, grads), (value_remat, grads_remat) = plain(model.params, batch), remat(model.params, batch)
    assert abs(float(value) - float(value_remat)) < 1e-6
    assert max(max_abs(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat))) < 1e-6

    data = datasets.Dataset.from_dict({"anchor": [a for a, _, _ in STSB[:16]],
                                       "positive": [b for _, b, _ in STSB[:16]]})
    seen = {}
    for flag in (False, True):
        m = jaxst.SentenceTransformer(no_dropout_folder)
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / str(flag)), logging_steps=1,
                                                    activation_checkpointing=flag, per_device_train_batch_size=8,
                                                    num_train_epochs=1, save_strategy="no", disable_tqdm=True)
        t = SentenceTransformerTrainer(model=m, args=args, train_dataset=data,
                                       loss=jl.MultipleNegativesRankingLoss(m))
        t.train()
        seen[flag] = [e["loss"] for e in t.state.log_history if "loss" in e]
    np.testing.assert_allclose(seen[True], seen[False], atol=1e-6)
