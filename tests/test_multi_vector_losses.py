"""The multi-vector (ColBERT) losses added after MultiVectorMultipleNegativesRankingLoss, against
sentence-transformers 6.3's on the same random token embeddings with padded masks: value and gradient with
respect to each column's token embeddings, within 1e-5; their constructor arguments. The originals embed through
``model(features, task=...)``: here a stub model hands back the given token embeddings and masks (one feature dict
per column), so torch autograd reaches them; the cached loss is compared through its ``calculate_loss`` (the loss
of given embeddings, GradCache's first pass). The wrappers (MultiVectorMatryoshkaLoss, MultiVectorTokenPoolingLoss)
go through the stub's forward as the originals patch it. On a tiny late-interaction model, through
jaxst.training: the parameter gradients of 6.3's forward, GradCache with per-token outputs (the cached loss
trained with a mini_batch_size) included, and one ``fit`` step with each new loss."""

from __future__ import annotations

import inspect
import warnings

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


@pytest.fixture(scope="module")
def late_model(tiny_backbone, tmp_path_factory):
    """The folder of a tiny late-interaction model (8-dim token vectors, documents up to 20 tokens)."""
    from conftest import build_late_interaction

    folder = tmp_path_factory.mktemp("mv-losses")
    build_late_interaction(tiny_backbone, folder, query_length=10, document_length=20)
    return folder


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
    """The loss's value and each column's token-embedding gradient, compiled (one program: faster than eager)."""
    masks = [jnp.asarray(m) for _, m in columns]

    def fn(embs, labels):
        outputs = [{"token_embeddings": e, "attention_mask": m} for e, m in zip(embs, masks)]
        return loss(outputs, labels)

    value, grads = jax.jit(jax.value_and_grad(fn))([jnp.asarray(e) for e, _ in columns],
                                                   None if labels is None else jnp.asarray(labels))
    return float(value), [np.asarray(g) for g in grads]


class StubMultiVectorEncoder(torch.nn.Module):
    """Stands in for sentence-transformers' MultiVectorEncoder: feature dict {"column": i} -> the i-th given
    token embeddings and scoring mask; its similarity and similarity_pairwise score MaxSim (MeanMaxSim when
    ``similarity_fn_name`` is "meanmaxsim"), as the model's."""

    use_kernels = False  # read by 6.3's MultiVectorTokenPoolingLoss
    _token_pooling_kernel_config = None

    def __init__(self, similarity_fn_name: str = "maxsim"):
        super().__init__()
        self.similarity_fn_name = similarity_fn_name
        self.columns: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _get_untruncated_embedding_dimension(self):  # read by 6.3's MultiVectorMatryoshkaLoss
        return D

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


def test_training_takes_outputs_losses_with_a_mini_batch_size():
    """A loss that reads every model output per column and sets a mini_batch_size trains through GradCache (the
    per-token outputs cached): no longer refused. Refused: such a loss on a model whose forward updates buffers
    (model_state: GradCache runs each mini-batch twice), and a packed batch for it."""
    from jaxst.training import make_loss_fn, train_forward

    class NoModel:  # the checks come before the model is read
        graphdef = None

        def training_inputs(self):
            return None

        def training_buffers(self):
            return {}

    for loss in (jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=4),
                 jl.MultiVectorMarginMSELoss(mini_batch_size=4), jl.MultiVectorDistillKLDivLoss(mini_batch_size=4),
                 jl.MultiVectorMatryoshkaLoss(None, jl.CachedMultiVectorMultipleNegativesRankingLoss(), [8, 4])):
        assert callable(make_loss_fn(NoModel(), loss))
        with pytest.raises(ValueError, match=f"{type(loss).__name__} reads the model's outputs .*\\(model_state\\)"):
            make_loss_fn(NoModel(), loss, model_state=True)
    with pytest.raises(ValueError, match="updates buffers"):
        train_forward(None, None, [{}], full_outputs=True, model_state={}, mini_batch_size=4)
    with pytest.raises(ValueError, match="unpacked column batches"):
        train_forward(None, None, {"unpack_index": np.zeros((2, 4), np.int32)}, full_outputs=True, mini_batch_size=4)


def test_distillation_losses_train_like_sentence_transformers(late_model):
    """Through jaxst.training (collate's vector labels, the model's per-token outputs): the value and the
    parameter gradients of 6.3's forward on a tiny late-interaction model, for both distillation losses, in one
    forward and (the KL loss) through GradCache with its mini_batch_size."""
    from conftest import assert_same_gradients, read_stsb
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    from jaxst import MultiVectorEncoder
    from jaxst.training import collate, make_loss_fn

    tmp_path = late_model
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
        for chunked in (None, 3) if kwargs else (None,):  # 3 of 4 rows: GradCache, a padded last mini-batch
            ours.mini_batch_size = chunked
            value, grads = jax.jit(jax.value_and_grad(make_loss_fn(model, ours, dropout=False)))(model.params, batch)
            assert abs(float(value) - ref) < TOL * max(1.0, abs(ref)), theirs
            assert_same_gradients(st, [
                (grads["heads"][0]["linear"]["kernel"], "1.linear.weight", True),
                (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"],
                 "encoder.layer.1.output.dense.weight", True),
            ])


# ------------------------------------------------- MultiVectorMatryoshkaLoss, MultiVectorTokenPoolingLoss


def st_pooling(**kwargs):
    from sentence_transformers.multi_vector_encoder.modules import HierarchicalTokenPooling

    return HierarchicalTokenPooling(**kwargs)


def jx_pooling(**kwargs):
    from jaxst.multi_vector_encoder import HierarchicalTokenPooling

    return HierarchicalTokenPooling(**kwargs)


# each pooling's settings: clustering by factor (fractional too), by a token budget, by a distance cut; no
# protected token with raw means; pooled queries; and the factor-1 pooling that only normalizes
POOLINGS = [{"pool_factor": 2}, {"pool_factor": 1.5, "num_protected_tokens": 0, "normalize_embeddings": False},
            {"max_tokens": 3}, {"distance_threshold": 1.2}, {"pool_factor": 3, "tasks": ["query", "document"]}, {}]


@pytest.mark.parametrize("inner", ["mnrl", "kl"])
def test_matryoshka_loss(inner):
    """Each column's token vectors cut to each dim and L2-normalized, the wrapped loss summed with the weights (dims
    given in any order: sorted largest first with their weights)."""
    columns = random_columns(3, seed=50)
    labels = None if inner == "mnrl" else np.random.default_rng(51).normal(size=(B, 3)).astype(np.float32)
    ours_inner = jl.MultiVectorMultipleNegativesRankingLoss() if inner == "mnrl" else jl.MultiVectorDistillKLDivLoss()
    ours = jl.MultiVectorMatryoshkaLoss(None, ours_inner, [3, 8, 5], [2.0, 1.0, 0.5])
    assert ours.matryoshka_dims == (8, 5, 3) and ours.matryoshka_weights == (1.0, 0.5, 2.0)

    def theirs(m):
        wrapped = (st_mv_losses().MultiVectorMultipleNegativesRankingLoss(m) if inner == "mnrl"
                   else st_mv_losses().MultiVectorDistillKLDivLoss(m))
        return st_mv_losses().MultiVectorMatryoshkaLoss(m, wrapped, [3, 8, 5], [2.0, 1.0, 0.5])

    ref = torch_value_and_grads(theirs, columns, labels)
    assert_same(jax_value_and_grads(ours, columns, labels), ref)
    full = jax_value_and_grads(ours_inner, columns, labels)
    assert abs(full[0] - ref[0]) > 1e-3  # the cut dims count


@pytest.mark.parametrize("settings", POOLINGS)
def test_token_pooling_loss_each_pooling(settings):
    """One pooling variant at a time against 6.3's: documents (or, with tasks, queries too) clustered by Ward
    linkage, each cluster its mean (straight-through gradient: each member gets the full gradient), normalized."""
    columns = random_columns(2, seed=60)
    ours = jl.MultiVectorTokenPoolingLoss(None, jl.MultiVectorMultipleNegativesRankingLoss(), [jx_pooling(**settings)])
    ref = torch_value_and_grads(lambda m: st_mv_losses().MultiVectorTokenPoolingLoss(
        m, st_mv_losses().MultiVectorMultipleNegativesRankingLoss(m), [st_pooling(**settings)]), columns)
    assert_same(jax_value_and_grads(ours, columns), ref)


@pytest.mark.parametrize("settings", POOLINGS[:4])
def test_token_pooling_pools_like_the_original_module(settings):
    """``pool_token_outputs`` gives 6.3's module output in training: the same pooled tokens in the same slots and
    the same mask (their width may differ: ours keeps the input's, masked), and the straight-through gradient."""
    from jaxst.losses.multi_vector import pool_token_outputs

    emb, mask = random_columns(1, seed=61)[1]
    module = st_pooling(**settings)
    x = torch.tensor(emb, requires_grad=True)
    out = module({"token_embeddings": x, "attention_mask": torch.tensor(mask)}, task="document")
    width = out["attention_mask"].shape[1]
    weights = np.random.default_rng(62).normal(size=(B, width, D)).astype(np.float32)
    (out["token_embeddings"] * torch.tensor(weights)).sum().backward()

    def pooled(e):
        return pool_token_outputs(jx_pooling(**settings), e, jnp.asarray(mask))

    tokens, new_mask = pooled(jnp.asarray(emb))
    grad = jax.grad(lambda e: jnp.sum(pooled(e)[0][:, :width] * weights))(jnp.asarray(emb))
    np.testing.assert_array_equal(np.asarray(new_mask[:, :width]), out["attention_mask"].numpy())
    assert not np.asarray(new_mask[:, width:]).any()
    assert max_abs(np.where(np.asarray(new_mask)[:, :width, None], tokens[:, :width], 0),
                   out["token_embeddings"].detach()) < TOL
    assert max_abs(grad, x.grad) < TOL and np.abs(x.grad.numpy()).max() > 1e-2
    assert out["attention_mask"].sum() < mask.sum()  # it pooled


def test_token_pooling_loss_variants_with_matryoshka_inside():
    """Several variants (None: unpooled) with weights over a MultiVectorMatryoshkaLoss: pooling first, then the
    cut, as 6.3 composes them (and as encode applies them)."""
    columns = random_columns(3, seed=70)
    settings = [None, {"pool_factor": 2}, {"max_tokens": 2, "num_protected_tokens": 0}]
    ours = jl.MultiVectorTokenPoolingLoss(
        None, jl.MultiVectorMatryoshkaLoss(None, jl.MultiVectorMultipleNegativesRankingLoss(scale=4.0), [8, 4]),
        [None if k is None else jx_pooling(**k) for k in settings], weights=[1.0, 0.5, 2.0])

    def theirs(m):
        inner = st_mv_losses().MultiVectorMatryoshkaLoss(
            m, st_mv_losses().MultiVectorMultipleNegativesRankingLoss(m, scale=4.0), [8, 4])
        return st_mv_losses().MultiVectorTokenPoolingLoss(
            m, inner, [None if k is None else st_pooling(**k) for k in settings], weights=[1.0, 0.5, 2.0])

    assert_same(jax_value_and_grads(ours, columns), torch_value_and_grads(theirs, columns))


def subset_sums(parts: list[float], k: int) -> dict:
    from itertools import combinations

    return {c: sum(parts[i] for i in c) for c in combinations(range(len(parts)), k)}


def test_n_dims_and_n_poolings_per_step_draw_from_the_key():
    """n_dims_per_step / n_poolings_per_step > 0: each key sums exactly that many variants (the value is one of
    the sums of that many single-variant losses), different keys draw different ones, the same key the same;
    -1 or a count >= the variants sums all of them; no key is refused."""
    columns = random_columns(2, seed=80)
    outputs = [{"token_embeddings": jnp.asarray(e), "attention_mask": jnp.asarray(m)} for e, m in columns]
    mnrl = jl.MultiVectorMultipleNegativesRankingLoss()
    dims, weights = [8, 6, 4, 2], [1.0, 0.7, 0.4, 0.3]
    poolings = [None, jx_pooling(pool_factor=2), jx_pooling(max_tokens=2), jx_pooling(pool_factor=1.5)]
    cases = [
        (lambda n: jl.MultiVectorMatryoshkaLoss(None, mnrl, dims, weights, n_dims_per_step=n),
         [float(jl.MultiVectorMatryoshkaLoss(None, mnrl, [d], [w])(outputs)) for d, w in zip(dims, weights)]),
        (lambda n: jl.MultiVectorTokenPoolingLoss(None, mnrl, poolings, weights=weights, n_poolings_per_step=n),
         [float(jl.MultiVectorTokenPoolingLoss(None, mnrl, [p], weights=[w])(outputs))
          for p, w in zip(poolings, weights)]),
    ]
    for make, parts in cases:
        assert len({round(v, 4) for v in parts}) == len(parts)  # the variants differ
        for k in (1, 2):
            sums = subset_sums(parts, k)
            drawn = set()
            step = jax.jit(lambda key, k=k: make(k)(outputs, rng=key))  # noqa: B023 (called in this iteration)
            for seed in range(8):
                value = float(step(jax.random.key(seed)))
                (picked,) = [c for c, v in sums.items() if abs(v - value) < 1e-4]
                drawn.add(picked)
                assert float(step(jax.random.key(seed))) == value
            assert len(drawn) > 1, k
            with pytest.raises(ValueError, match="needs an rng key"):
                make(k)(outputs)
        for k in (-1, 4):
            assert abs(float(make(k)(outputs)) - sum(parts)) < 1e-4


def test_wrapper_arguments_and_bad_input():
    """6.3's argument names, kinds and defaults (jaxst's model, loss and dims default to None / empty, as
    MatryoshkaLoss's: the wrappers run on outputs given directly); the checks of 6.3 with its messages."""
    for name in ("MultiVectorMatryoshkaLoss", "MultiVectorTokenPoolingLoss"):
        ours = list(inspect.signature(getattr(jl, name)).parameters.values())
        theirs = list(inspect.signature(getattr(st_mv_losses(), name)).parameters.values())
        assert [(p.name, p.kind) for p in ours] == [(p.name, p.kind) for p in theirs]
        assert [p.default for p in ours if p.name in ("model", "loss")] == [None, None]
        assert [p.default for p in ours[3:]] == [p.default for p in theirs[3:]]
    mnrl = jl.MultiVectorMultipleNegativesRankingLoss()
    pooled = jl.MultiVectorTokenPoolingLoss(None, mnrl, [None])
    with pytest.raises(ValueError, match="MultiVectorTokenPoolingLoss must wrap MultiVectorMatryoshkaLoss"):
        jl.MultiVectorMatryoshkaLoss(None, pooled, [8])
    for bad in (jl.MultipleNegativesRankingLoss(), None):
        with pytest.raises(TypeError, match="wraps a multi-vector loss"):
            jl.MultiVectorMatryoshkaLoss(None, bad, [8])
        with pytest.raises(TypeError, match="wraps a multi-vector loss"):
            jl.MultiVectorTokenPoolingLoss(None, bad, [None])
    with pytest.raises(ValueError, match="at least one dimension"):
        jl.MultiVectorMatryoshkaLoss(None, mnrl, [])
    with pytest.raises(ValueError, match="must be > 0"):
        jl.MultiVectorMatryoshkaLoss(None, mnrl, [8, 0])
    with pytest.raises(ValueError, match="same length as matryoshka_dims"):
        jl.MultiVectorMatryoshkaLoss(None, mnrl, [8, 4], [1.0])

    class Truncated:  # a model of 8-dim token vectors truncated to 4: the untruncated dimension counts, as in 6.3
        _embedding_dim = 8

        def get_embedding_dimension(self):
            return 4

    with pytest.raises(ValueError, match="cannot exceed the model's embedding dimension of 8"):
        jl.MultiVectorMatryoshkaLoss(Truncated(), mnrl, [16, 8])
    with pytest.warns(UserWarning, match="embedding dimension 8 is not included"):
        jl.MultiVectorMatryoshkaLoss(Truncated(), mnrl, [6, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the full dimension included: no warning
        jl.MultiVectorMatryoshkaLoss(Truncated(), mnrl, [8, 4])
    with pytest.raises(ValueError, match="at least one token pooling"):
        jl.MultiVectorTokenPoolingLoss(None, mnrl, [])
    with pytest.raises(ValueError, match="must be a HierarchicalTokenPooling .* or None, got str"):
        jl.MultiVectorTokenPoolingLoss(None, mnrl, [None, "hierarchical"])
    with pytest.raises(ValueError, match="one weight per pooling variant"):
        jl.MultiVectorTokenPoolingLoss(None, mnrl, [None, jx_pooling(pool_factor=2)], weights=[1.0])
    with pytest.raises(TypeError, match="one dict of MultiVectorEncoder outputs"):
        pooled([np.zeros((2, 3, 4), np.float32)])
    cached = jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=3)
    wrapped = jl.MultiVectorTokenPoolingLoss(None, jl.MultiVectorMatryoshkaLoss(None, cached, [8]), [None])
    assert wrapped.mini_batch_size == 3 and wrapped.needs_outputs  # the training step runs GradCache for it
    assert pooled.mini_batch_size is None


# ------------------------------------------------------------------ through jaxst.training on a tiny model


def st_reference(st, loss, texts_per_column):
    """6.3's loss forward and backward on the model ``st`` (gradients zeroed first; columns: query, documents)."""
    st.zero_grad()
    features = []
    for i, texts in enumerate(texts_per_column):
        task = "query" if i == 0 else "document"
        f = st.preprocess(texts, task=task)
        f["task"] = task
        features.append(f)
    value = loss(features, None)
    value.backward()
    return float(value.detach())


def triplets(n: int) -> list[tuple[str, str, str]]:
    from conftest import read_stsb

    rows = read_stsb("stsb-en-train.csv")[:n]
    return [(a, b, rows[(i + 1) % n][1]) for i, (a, b, _) in enumerate(rows)]


def loss_pairs():
    """(name, jaxst loss, 6.3 loss from its model): the new losses composed (pooling, then the Matryoshka cut), the
    cached loss with a mini_batch_size of 2 (5 rows: a padded last mini-batch) alone and inside both wrappers."""
    L = st_mv_losses()
    return [
        ("pooling-matryoshka", jl.MultiVectorTokenPoolingLoss(None, jl.MultiVectorMatryoshkaLoss(
            None, jl.MultiVectorMultipleNegativesRankingLoss(), [8, 4], [1, 2]),
            [None, jx_pooling(pool_factor=2), jx_pooling(max_tokens=4)]),
         lambda m: L.MultiVectorTokenPoolingLoss(m, L.MultiVectorMatryoshkaLoss(
             m, L.MultiVectorMultipleNegativesRankingLoss(m), [8, 4], [1, 2]),
             [None, st_pooling(pool_factor=2), st_pooling(max_tokens=4)])),
        ("cached", jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=2),
         lambda m: L.CachedMultiVectorMultipleNegativesRankingLoss(m, mini_batch_size=2)),
        ("cached-wrapped", jl.MultiVectorTokenPoolingLoss(None, jl.MultiVectorMatryoshkaLoss(
            None, jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=2), [8, 4]),
            [None, jx_pooling(pool_factor=2)], weights=[1, 0.5]),
         lambda m: L.MultiVectorTokenPoolingLoss(m, L.MultiVectorMatryoshkaLoss(
             m, L.CachedMultiVectorMultipleNegativesRankingLoss(m, mini_batch_size=2), [8, 4]),
             [None, st_pooling(pool_factor=2)], weights=[1, 0.5])),
    ]


def test_new_losses_train_like_sentence_transformers(late_model):
    """Through jaxst.training on a tiny late-interaction model: the value and parameter gradients of 6.3's
    forward (its GradCache for the cached loss), each within 1e-5; the cached loss trained through jaxst's
    GradCache (per-token outputs cached, mini-batches of 2) also equals jaxst's uncached loss."""
    from conftest import assert_same_gradients
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder

    from jaxst import MultiVectorEncoder
    from jaxst.training import collate, make_loss_fn

    examples = triplets(5)
    model = MultiVectorEncoder(str(late_model))
    batch = collate(model, examples)
    st = STMultiVectorEncoder(str(late_model), device="cpu")
    st.eval()  # no dropout on either side
    columns = [[e[i] for e in examples] for i in range(3)]

    def ours(loss):
        return jax.jit(jax.value_and_grad(make_loss_fn(model, loss, dropout=False)))(model.params, batch)

    for name, loss, theirs in loss_pairs():
        ref = st_reference(st, theirs(st), columns)
        value, grads = ours(loss)
        assert abs(float(value) - ref) < TOL * max(1.0, abs(ref)), name
        assert_same_gradients(st, [
            (grads["heads"][0]["linear"]["kernel"], "1.linear.weight", True),
            (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"],
             "encoder.layer.1.output.dense.weight", True),
            (grads["encoder"]["embeddings"]["word_embeddings"]["embedding"], "embeddings.word_embeddings.weight",
             False),
        ])
        if name == "cached":
            uncached_value, uncached = ours(jl.MultiVectorMultipleNegativesRankingLoss())
            assert abs(float(value) - float(uncached_value)) < 1e-6
            gaps = [max_abs(a, b) / max(1.0, float(np.abs(np.asarray(b)).max()))
                    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(uncached))]
            assert max(gaps) < 1e-5


def test_fit_runs_a_step_with_each_new_loss(late_model):
    """``fit`` trains one step (dropout on, the draws from its keys) with the new losses composed:
    MultiVectorTokenPoolingLoss (n_poolings_per_step) over MultiVectorMatryoshkaLoss (n_dims_per_step) over the
    cached loss, whose mini_batch_size of 2 runs GradCache with per-token outputs; a finite loss, and the
    params move."""
    from jaxst import MultiVectorEncoder
    from jaxst.training import fit

    loss = jl.MultiVectorTokenPoolingLoss(None, jl.MultiVectorMatryoshkaLoss(
        None, jl.CachedMultiVectorMultipleNegativesRankingLoss(mini_batch_size=2), [8, 4, 2], n_dims_per_step=1),
        [None, jx_pooling(pool_factor=2)], n_poolings_per_step=1)
    model = MultiVectorEncoder(str(late_model))
    before = np.asarray(model.params["heads"][0]["linear"]["kernel"]).copy()
    history = fit(model, triplets(4), loss, batch_size=4, warmup_steps=0, learning_rate=1e-3,
                  show_progress_bar=False)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert np.abs(np.asarray(model.params["heads"][0]["linear"]["kernel"]) - before).max() > 0
