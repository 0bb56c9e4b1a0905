"""The multi-vector (ColBERT) losses added after MultiVectorMultipleNegativesRankingLoss, against
sentence-transformers 6.3's on the same random token embeddings with padded masks: value and gradient with
respect to each column's token embeddings, within 1e-5; their constructor arguments; and the training step's
refusal of a loss that reads every model output and sets a mini_batch_size (GradCache caches sentence
embeddings only). The originals embed through ``model(features, task=...)``: here a stub model hands back the
given token embeddings and masks (one feature dict per column), so torch autograd reaches them; the cached
loss is compared through its ``calculate_loss`` (the loss of given embeddings, GradCache's first pass)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import max_abs

from jaxst import losses as jl
from jaxst.maxsim import maxsim_scores

TOL = 1e-5
B, D, QUERY_TOKENS = 6, 8, 5
DOC_TOKENS = (7, 4, 9, 6)  # each document column padded to its own width, as ST pads per column


def random_columns(n_documents: int, seed: int = 0):
    """[(token_embeddings (B, T, D), mask (B, T))] for a query column and ``n_documents`` document columns: each
    row keeps a random prefix of real tokens (at least one) and drops one more token inside it sometimes (a
    skiplist's hole), so rows of one column have different lengths."""
    rng = np.random.default_rng(seed)
    columns = []
    for width in (QUERY_TOKENS, *DOC_TOKENS[:n_documents]):
        emb = rng.normal(size=(B, width, D)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=-1, keepdims=True)  # a token-level Normalize, as ColBERT's
        lengths = rng.integers(1, width + 1, size=B)
        mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
        for row in range(B):
            if lengths[row] > 2 and rng.random() < 0.5:
                mask[row, rng.integers(1, lengths[row])] = 0
        assert mask.any(axis=1).all()
        columns.append((emb, mask))
    assert any(not m.all() for _, m in columns), "some padding"
    return columns


def jax_value_and_grads(loss, columns, labels=None):
    masks = [jnp.asarray(m) for _, m in columns]

    def fn(embs):
        outputs = [{"token_embeddings": e, "attention_mask": m} for e, m in zip(embs, masks)]
        return loss(outputs, None if labels is None else jnp.asarray(labels))

    value, grads = jax.value_and_grad(fn)([jnp.asarray(e) for e, _ in columns])
    return float(value), [np.asarray(g) for g in grads]


class StubMultiVectorEncoder(torch.nn.Module):
    """Stands in for sentence-transformers' MultiVectorEncoder: feature dict {"column": i} -> the i-th given
    token embeddings and scoring mask; its similarity and similarity_pairwise score MaxSim (MeanMaxSim when
    ``similarity_fn_name`` is "meanmaxsim"), as the model's."""

    def __init__(self, similarity_fn_name: str = "maxsim"):
        super().__init__()
        self.similarity_fn_name = similarity_fn_name
        self.columns: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, features, task=None):
        emb, mask = self.columns[features["column"]]
        return {"token_embeddings": emb, "attention_mask": mask}

    def similarity(self, a, b, **kwargs):
        from sentence_transformers.util.similarity import maxsim, mean_maxsim

        return (mean_maxsim if self.similarity_fn_name == "meanmaxsim" else maxsim)(a, b, **kwargs)

    def similarity_pairwise(self, a, b, **kwargs):
        from sentence_transformers.util.similarity import maxsim_pairwise, mean_maxsim_pairwise

        score = mean_maxsim_pairwise if self.similarity_fn_name == "meanmaxsim" else maxsim_pairwise
        return score(a, b, **kwargs)


def torch_value_and_grads(make_loss, columns, labels=None, similarity_fn_name="maxsim"):
    """The original loss's forward over the stub model: its value and each column's token-embedding gradient."""
    model = StubMultiVectorEncoder(similarity_fn_name)
    tensors = [torch.tensor(e, requires_grad=True) for e, _ in columns]
    model.columns = [(t, torch.tensor(m)) for t, (_, m) in zip(tensors, columns)]
    features = [{"column": i} for i in range(len(columns))]
    value = make_loss(model)(features, None if labels is None else torch.tensor(labels))
    value.backward()
    return float(value.detach()), [t.grad.numpy() for t in tensors]


def assert_same(jax_result, torch_result):
    (jv, jg), (tv, tg) = jax_result, torch_result
    assert abs(jv - tv) < TOL * max(1.0, abs(tv)), (jv, tv)
    assert len(jg) == len(tg)
    for i, (a, b) in enumerate(zip(jg, tg)):
        assert a.shape == b.shape
        assert max_abs(a, b) < TOL, (i, max_abs(a, b))
    assert any(np.abs(g).max() > 1e-3 for g in tg), "the oracle's gradient should not vanish"


def st_mv_losses():
    from sentence_transformers.multi_vector_encoder import losses

    return losses


def mean_colbert_pairwise(queries, documents, queries_mask, documents_mask):
    """JAX MeanMaxSim of each (query, document) pair, with 6.3's pairwise similarity_fct convention."""
    one = lambda q, qm, d, dm: maxsim_scores(q[None], qm[None], d[None], dm[None], length_normalize=True)[0, 0]  # noqa: E731
    return jax.vmap(one)(queries, queries_mask, documents, documents_mask)


def mean_colbert_kd(queries, documents, queries_mask, documents_mask):
    """JAX MeanMaxSim of each query against its own (N, T, D) candidates -> (B, N): 6.3's KD convention."""
    one = lambda q, qm, d, dm: maxsim_scores(q[None], qm[None], d, dm, length_normalize=True)[0]  # noqa: E731
    return jax.vmap(one)(queries, queries_mask, documents, documents_mask)


def mean_colbert_contrastive(queries, documents, queries_mask, documents_mask):
    """JAX MeanMaxSim of every query against every (group, N) document -> (Q, groups * N), query-major."""
    flat = documents.reshape(-1, *documents.shape[2:])
    return maxsim_scores(queries, queries_mask, flat, documents_mask.reshape(-1, documents_mask.shape[-1]),
                         length_normalize=True)


class MeanMaxSimModel:
    similarity_fn_name = "meanmaxsim"


# ------------------------------------------------------------------------------ MultiVectorMarginMSELoss


@pytest.mark.parametrize("n_negatives, label_form", [(1, "margins"), (1, "scores"), (1, "flat"), (3, "margins"),
                                                     (3, "scores")])  # a flat (B,) margin goes with one negative
def test_margin_mse_loss(n_negatives, label_form):
    columns = random_columns(n_negatives + 1, seed=n_negatives)
    rng = np.random.default_rng(7)
    width = n_negatives + (label_form == "scores")
    labels = (rng.normal(size=(B,) if label_form == "flat" else (B, width)) * 2).astype(np.float32)
    ours = jax_value_and_grads(jl.MultiVectorMarginMSELoss(), columns, labels)
    ref = torch_value_and_grads(lambda m: st_mv_losses().MultiVectorMarginMSELoss(m), columns, labels)
    assert_same(ours, ref)


def test_margin_mse_loss_meanmaxsim_and_similarity_fct():
    """The model's "meanmaxsim" scores MeanMaxSim by default, and a similarity_fct is called as 6.3 calls it."""
    from sentence_transformers.multi_vector_encoder.scoring import mean_colbert_scores_pairwise

    columns = random_columns(3, seed=3)
    labels = np.random.default_rng(8).normal(size=(B, 3)).astype(np.float32)
    ref = torch_value_and_grads(lambda m: st_mv_losses().MultiVectorMarginMSELoss(m), columns, labels, "meanmaxsim")
    assert_same(jax_value_and_grads(jl.MultiVectorMarginMSELoss(MeanMaxSimModel()), columns, labels), ref)
    assert_same(jax_value_and_grads(jl.MultiVectorMarginMSELoss(similarity_fct=mean_colbert_pairwise), columns,
                                    labels), ref)
    custom = torch_value_and_grads(
        lambda m: st_mv_losses().MultiVectorMarginMSELoss(m, similarity_fct=mean_colbert_scores_pairwise),
        columns, labels)
    assert_same(jax_value_and_grads(jl.MultiVectorMarginMSELoss(similarity_fct=mean_colbert_pairwise), columns,
                                    labels), custom)


def test_margin_mse_loss_bad_input():
    columns = random_columns(3)
    outputs = [{"token_embeddings": e, "attention_mask": m} for e, m in columns]
    loss = jl.MultiVectorMarginMSELoss()
    with pytest.raises(ValueError, match="does not match expected shape"):
        loss(outputs, np.zeros((B, 5), np.float32))
    with pytest.raises(ValueError, match="does not match expected shape"):
        loss(outputs, np.zeros((B,), np.float32))  # 1-D margins with two negatives
    with pytest.raises(ValueError, match="needs labels"):
        loss(outputs)
    with pytest.raises(ValueError, match="at least 3 columns"):
        loss(outputs[:2], np.zeros((B,), np.float32))
    with pytest.raises(TypeError, match="one dict of MultiVectorEncoder outputs"):
        loss([e for e, _ in columns], np.zeros((B, 2), np.float32))
    with pytest.raises(TypeError, match="similarity_fct must be callable"):
        jl.MultiVectorMarginMSELoss(similarity_fct="maxsim")
    with pytest.raises(ValueError, match="mini_batch_size"):
        jl.MultiVectorMarginMSELoss(mini_batch_size=0)


# ---------------------------------------------------------------------------- MultiVectorDistillKLDivLoss


@pytest.mark.parametrize("temperatures", [{}, {"temperature": 0.5},
                                          {"student_temperature": 2.0, "teacher_temperature": 0.25}])
@pytest.mark.parametrize("n_documents", [2, 4])
def test_distill_kl_div_loss(n_documents, temperatures):
    columns = random_columns(n_documents, seed=10 + n_documents)
    labels = (np.random.default_rng(11).normal(size=(B, n_documents)) * 3).astype(np.float32)
    ours = jax_value_and_grads(jl.MultiVectorDistillKLDivLoss(**temperatures), columns, labels)
    ref = torch_value_and_grads(lambda m: st_mv_losses().MultiVectorDistillKLDivLoss(m, **temperatures), columns,
                                labels)
    assert_same(ours, ref)


def test_distill_kl_div_loss_meanmaxsim_and_similarity_fct():
    from sentence_transformers.multi_vector_encoder.scoring import mean_colbert_kd_scores

    columns = random_columns(3, seed=12)
    labels = np.random.default_rng(13).normal(size=(B, 3)).astype(np.float32)
    st_loss = lambda m: st_mv_losses().MultiVectorDistillKLDivLoss(m, temperature=0.1)  # noqa: E731
    ref = torch_value_and_grads(st_loss, columns, labels, "meanmaxsim")
    assert_same(jax_value_and_grads(jl.MultiVectorDistillKLDivLoss(MeanMaxSimModel(), temperature=0.1), columns,
                                    labels), ref)
    custom = torch_value_and_grads(
        lambda m: st_mv_losses().MultiVectorDistillKLDivLoss(m, similarity_fct=mean_colbert_kd_scores,
                                                             temperature=0.1), columns, labels)
    assert_same(jax_value_and_grads(jl.MultiVectorDistillKLDivLoss(similarity_fct=mean_colbert_kd, temperature=0.1),
                                    columns, labels), custom)


def test_distill_kl_div_loss_bad_input():
    columns = random_columns(2)
    outputs = [{"token_embeddings": e, "attention_mask": m} for e, m in columns]
    loss = jl.MultiVectorDistillKLDivLoss()
    with pytest.raises(ValueError, match="teacher scores of shape"):
        loss(outputs, np.zeros((B, 3), np.float32))
    with pytest.raises(ValueError, match="at least 3 columns"):
        loss(outputs[:2], np.zeros((B, 1), np.float32))
    for bad in ({"temperature": 0.0}, {"student_temperature": -1.0}, {"teacher_temperature": float("inf")},
                {"temperature": float("nan"), "student_temperature": 1.0, "teacher_temperature": 1.0}):
        with pytest.raises(ValueError, match="must be a positive finite number"):
            jl.MultiVectorDistillKLDivLoss(**bad)
        with pytest.raises(ValueError):
            st_mv_losses().MultiVectorDistillKLDivLoss(StubMultiVectorEncoder(), **bad)


# ------------------------------------------------------------------ CachedMultiVectorMultipleNegativesRankingLoss


def cached_reference(columns, similarity_fn_name="maxsim", **kwargs):
    """6.3's CachedMultiVectorMultipleNegativesRankingLoss on the given embeddings: ``calculate_loss`` over one
    mini-batch per column (what its first pass computes from the cached embeddings), and autograd through it."""
    loss = st_mv_losses().CachedMultiVectorMultipleNegativesRankingLoss(StubMultiVectorEncoder(similarity_fn_name),
                                                                        **kwargs)
    tensors = [torch.tensor(e, requires_grad=True) for e, _ in columns]
    value = loss.calculate_loss([[t] for t in tensors], [[torch.tensor(m).bool()] for _, m in columns])
    value.backward()
    return float(value.detach()), [t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("n_documents", [1, 3])
@pytest.mark.parametrize("settings", [{}, {"scale": 4.0, "mini_batch_size": 2},
                                      {"mini_batch_size": 4, "score_mini_batch_size": 4}])
def test_cached_multiple_negatives_ranking_loss(n_documents, settings):
    """The original scores the queries score_mini_batch_size at a time: the same loss as one product; and it
    equals jaxst's uncached loss on the same outputs."""
    columns = random_columns(n_documents, seed=20 + n_documents)
    ours = jax_value_and_grads(jl.CachedMultiVectorMultipleNegativesRankingLoss(**settings), columns)
    assert_same(ours, cached_reference(columns, **settings))
    uncached = jl.MultiVectorMultipleNegativesRankingLoss(scale=settings.get("scale", 1.0))
    same = jax_value_and_grads(uncached, columns)
    assert abs(ours[0] - same[0]) < 1e-6
    assert all(max_abs(a, b) < 1e-6 for a, b in zip(ours[1], same[1]))


def test_cached_multiple_negatives_ranking_loss_meanmaxsim_and_similarity_fct():
    from sentence_transformers.multi_vector_encoder.scoring import mean_colbert_scores

    columns = random_columns(2, seed=30)
    ref = cached_reference(columns, "meanmaxsim", scale=8.0, mini_batch_size=2)
    cached = jl.CachedMultiVectorMultipleNegativesRankingLoss(MeanMaxSimModel(), scale=8.0, mini_batch_size=2)
    assert_same(jax_value_and_grads(cached, columns), ref)
    assert_same(jax_value_and_grads(jl.MultiVectorMultipleNegativesRankingLoss(scale=8.0, length_normalize=True),
                                    columns), ref)
    custom = cached_reference(columns, scale=8.0, similarity_fct=mean_colbert_scores)
    loss = jl.CachedMultiVectorMultipleNegativesRankingLoss(scale=8.0, similarity_fct=mean_colbert_contrastive)
    assert_same(jax_value_and_grads(loss, columns), custom)


def test_cached_multiple_negatives_ranking_loss_arguments():
    loss = jl.CachedMultiVectorMultipleNegativesRankingLoss()
    assert (loss.mini_batch_size, loss.score_mini_batch_size, loss.gather_across_devices) == (32, 32, False)
    assert jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=4).score_mini_batch_size == 4
    with pytest.raises(ValueError, match="mini_batch_num_tokens is not supported"):
        jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_num_tokens=512)
    with pytest.raises(ValueError, match="mini_batch_size"):
        jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=0)
    with pytest.raises(ValueError, match="Scale must be a positive value"):
        jl.CachedMultiVectorMultipleNegativesRankingLoss(scale=0.0)


# ------------------------------------------------------------------------------ arguments and training


@pytest.mark.parametrize("name", ["MultiVectorMarginMSELoss", "MultiVectorDistillKLDivLoss",
                                  "CachedMultiVectorMultipleNegativesRankingLoss"])
def test_constructor_arguments_match_sentence_transformers(name):
    """The same argument names in the same order, of the same kind (keyword-only after the model), with the
    same defaults; the model alone is optional in jaxst (the losses run on outputs given directly)."""
    ours = list(inspect.signature(getattr(jl, name)).parameters.values())
    theirs = list(inspect.signature(getattr(st_mv_losses(), name)).parameters.values())
    assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in theirs]
    assert ours[0].name == "model" and ours[0].default is None
    assert [p.default for p in ours[1:]] == [p.default for p in theirs[1:]]


def test_training_refuses_outputs_losses_with_a_mini_batch_size():
    """jaxst's GradCache caches sentence embeddings, not per-token outputs: a loss with needs_outputs and a
    mini_batch_size is refused by name and reason at the training step, never trained without its
    mini-batches; the same losses with mini_batch_size None pass that check."""
    from jaxst.training import make_loss_fn, make_train_step, train_forward

    class NoModel:  # the refusal comes before the model is read
        graphdef = None

        def training_inputs(self):
            return None

        def training_buffers(self):
            return {}

    for loss in (jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=4),
                 jl.MultiVectorMarginMSELoss(mini_batch_size=4), jl.MultiVectorDistillKLDivLoss(mini_batch_size=4)):
        with pytest.raises(ValueError, match=f"{type(loss).__name__} reads every model output .* GradCache"):
            make_loss_fn(NoModel(), loss)
        with pytest.raises(ValueError, match="GradCache"):
            make_train_step(NoModel(), loss, None)
    with pytest.raises(ValueError, match="cannot embed these columns mini-batch by mini-batch"):
        train_forward(None, None, [{}], full_outputs=True, mini_batch_size=4)
    for loss in (jl.MultiVectorMarginMSELoss(), jl.MultiVectorDistillKLDivLoss()):
        assert callable(make_loss_fn(NoModel(), loss))


def test_distillation_losses_train_like_sentence_transformers(tiny_backbone, tmp_path):
    """Through jaxst.training (collate's vector labels, the model's per-token outputs): the value and the
    parameter gradients of 6.3's forward on a tiny late-interaction model, for both distillation losses."""
    from conftest import assert_same_gradients, build_late_interaction, read_stsb
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    from jaxst import MultiVectorEncoder
    from jaxst.training import collate, make_loss_fn

    build_late_interaction(tiny_backbone, tmp_path, query_length=10, document_length=20)
    rows = read_stsb("stsb-en-train.csv")[:4]
    scores = np.random.default_rng(40).normal(size=(len(rows), 3)).astype(np.float32) * 3
    examples = [(a, b, rows[(i + 1) % 4][1], rows[(i + 2) % 4][0], list(map(float, s)))
                for i, ((a, b, _), s) in enumerate(zip(rows, scores))]
    model = MultiVectorEncoder(str(tmp_path))
    batch = collate(model, examples)
    for ours, theirs in [(jl.MultiVectorDistillKLDivLoss(temperature=0.5), "MultiVectorDistillKLDivLoss"),
                         (jl.MultiVectorMarginMSELoss(), "MultiVectorMarginMSELoss")]:
        st = STMultiVectorEncoder(str(tmp_path), device="cpu")
        st.eval()
        features = []
        for i, task in enumerate(["query", "document", "document", "document"]):
            f = st.preprocess([e[i] for e in examples], task=task)
            f["task"] = task
            features.append(f)
        kwargs = {"temperature": 0.5} if theirs == "MultiVectorDistillKLDivLoss" else {}
        ref = getattr(st_mv_losses(), theirs)(st, **kwargs)(features, torch.tensor(scores))
        ref.backward()
        ref = float(ref.detach())
        value, grads = jax.value_and_grad(make_loss_fn(model, ours, dropout=False))(model.params, batch)
        assert abs(float(value) - ref) < TOL * max(1.0, abs(ref)), theirs
        assert_same_gradients(st, [
            (grads["heads"][0]["linear"]["kernel"], "1.linear.weight", True),
            (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"],
             "encoder.layer.1.output.dense.weight", True),
        ])
