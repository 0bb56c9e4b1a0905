"""Every jaxst loss against sentence-transformers' on the same random embeddings: value and gradient
with respect to each embedding column, within 1e-5.

The original losses compute from ``model(features)``; here ``compute_loss_from_embeddings`` is called
where the loss has it, and otherwise the loss runs over a stub model whose forward hands back the
given embeddings (one feature dict per column), so torch autograd reaches them.
"""

from __future__ import annotations

import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import max_abs

from jaxst import losses as jl
from jaxst import util as ju

TOL = 1e-5
B, D = 8, 16


def random_columns(n_columns: int, seed: int = 0, dim: int = D) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, dim)).astype(np.float32) for _ in range(n_columns)]


def jax_value_and_grads(loss, columns, labels=None, rng=None):
    fn = lambda cols: loss([c for c in cols], None if labels is None else jnp.asarray(labels), rng)
    value, grads = jax.value_and_grad(fn)([jnp.asarray(c) for c in columns])
    return float(value), [np.asarray(g) for g in grads]


def torch_value_and_grads(compute, columns, labels=None):
    tensors = [torch.tensor(c, requires_grad=True) for c in columns]
    value = compute(tensors, None if labels is None else torch.tensor(labels))
    value.backward()
    return float(value.detach()), [t.grad.numpy() if t.grad is not None else np.zeros_like(c) for t, c in
                          zip(tensors, columns)]


def assert_same(jax_result, torch_result):
    (jv, jg), (tv, tg) = jax_result, torch_result
    assert abs(jv - tv) < TOL, (jv, tv)
    assert len(jg) == len(tg)
    for i, (a, b) in enumerate(zip(jg, tg)):
        assert max_abs(a, b) < TOL, (i, max_abs(a, b))
    assert any(np.abs(g).max() > 1e-3 for g in tg), "the oracle's gradient should not vanish"


class StubModel(torch.nn.Module):
    """Stands in for a SentenceTransformer: feature dict {"column": i} -> the i-th given embeddings."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.columns: list[torch.Tensor] = []

    def forward(self, features):
        return {"sentence_embedding": self.columns[features["column"]]}

    device = torch.device("cpu")

    def get_embedding_dimension(self):
        return self.dim

    def _get_untruncated_embedding_dimension(self):  # what 6.3's MatryoshkaLoss asks
        return self.dim


def st_losses():
    from sentence_transformers.sentence_transformer import losses

    return losses


# ------------------------------------------------------------------------ MultipleNegativesRankingLoss

MNRL_CASES = {
    "pairs": (2, {}),
    "hard-negatives": (4, {}),
    "dot-scale-1": (3, {"scale": 1.0, "similarity_fct": "dot"}),
    "scale-50": (2, {"scale": 50.0}),
    "gte-all-directions": (3, {"directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")}),
    "symmetric-per-direction": (3, {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}),
    "hardness-in-batch": (3, {"hardness_mode": "in_batch_negatives", "hardness_strength": 9.0}),
    "hardness-hard-negatives": (4, {"hardness_mode": "hard_negatives", "hardness_strength": 5.0}),
    "hardness-all-negatives": (3, {"hardness_mode": "all_negatives", "hardness_strength": 5.0}),
}


def _similarity(kwargs, for_torch: bool):
    kwargs = dict(kwargs)
    if kwargs.get("similarity_fct") == "dot":
        from sentence_transformers import util as st_util

        kwargs["similarity_fct"] = st_util.dot_score if for_torch else ju.dot_score
    return kwargs


@pytest.mark.parametrize("case", list(MNRL_CASES))
def test_multiple_negatives_ranking_loss(case):
    n_columns, kwargs = MNRL_CASES[case]
    columns = random_columns(n_columns, seed=list(MNRL_CASES).index(case))
    st_loss = st_losses().MultipleNegativesRankingLoss(StubModel(D), **_similarity(kwargs, True))
    jx_loss = jl.MultipleNegativesRankingLoss(**_similarity(kwargs, False))
    assert_same(jax_value_and_grads(jx_loss, columns),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns))


@pytest.mark.parametrize("n_columns", [2, 3])
def test_multiple_negatives_symmetric_ranking_loss(n_columns):
    columns = random_columns(n_columns, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses().MultipleNegativesSymmetricRankingLoss(StubModel(D))
    jx_loss = jl.MultipleNegativesSymmetricRankingLoss()
    assert_same(jax_value_and_grads(jx_loss, columns),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns))


def test_mnrl_defaults_match():
    st_loss = st_losses().MultipleNegativesRankingLoss(StubModel(D))
    jx_loss = jl.MultipleNegativesRankingLoss()
    assert (jx_loss.scale, jx_loss.directions, jx_loss.partition_mode, jx_loss.hardness_mode) == (
        st_loss.scale, st_loss.directions, st_loss.partition_mode, st_loss.hardness_mode)


# ------------------------------------------------------------------------------ CoSENT, AnglE, Cosine


def _scores(seed: int, ties: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 4, size=B) if ties else rng.uniform(0, 5, size=B)).astype(np.float32)


@pytest.mark.parametrize("ties", [False, True], ids=["float-labels", "tied-labels"])
@pytest.mark.parametrize("scale", [20.0, 5.0])
def test_cosent_loss(ties, scale):
    columns, labels = random_columns(2, seed=3), _scores(4, ties)
    st_loss = st_losses().CoSENTLoss(StubModel(D), scale=scale)
    assert_same(jax_value_and_grads(jl.CoSENTLoss(scale=scale), columns, labels),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns, labels))


@pytest.mark.parametrize("ties", [False, True], ids=["float-labels", "tied-labels"])
@pytest.mark.parametrize("dim", [D, D - 1], ids=["even-dim", "odd-dim"])
def test_angle_loss_pairs(ties, dim):
    columns, labels = random_columns(2, seed=5, dim=dim), _scores(6, ties)
    st_loss = st_losses().AnglELoss(StubModel(dim))
    assert_same(jax_value_and_grads(jl.AnglELoss(), columns, labels),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns, labels))


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("n_columns", [3, 4])
def test_angle_loss_n_tuples(with_labels, n_columns):
    columns = random_columns(n_columns, seed=8)
    labels = np.random.default_rng(9).uniform(0, 1, size=B).astype(np.float32) if with_labels else None
    st_loss = st_losses().AnglELoss(StubModel(D))
    assert_same(jax_value_and_grads(jl.AnglELoss(), columns, labels),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns, labels))


def test_cosine_similarity_loss():
    columns = random_columns(2, seed=10)
    labels = np.random.default_rng(11).uniform(-1, 1, size=B).astype(np.float32)
    st_loss = st_losses().CosineSimilarityLoss(StubModel(D))
    assert_same(jax_value_and_grads(jl.CosineSimilarityLoss(), columns, labels),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns, labels))


def test_cosine_similarity_loss_custom_functions():
    columns = random_columns(2, seed=12)
    labels = np.random.default_rng(13).uniform(0, 1, size=B).astype(np.float32)
    st_loss = st_losses().CosineSimilarityLoss(StubModel(D), loss_fct=torch.nn.L1Loss(),
                                               cos_score_transformation=torch.nn.ReLU())
    jx_loss = jl.CosineSimilarityLoss(loss_fct=lambda p, t: jnp.mean(jnp.abs(p - t)),
                                      cos_score_transformation=jax.nn.relu)
    assert_same(jax_value_and_grads(jx_loss, columns, labels),
                torch_value_and_grads(st_loss.compute_loss_from_embeddings, columns, labels))


# ------------------------------------------------------------------------------------- MatryoshkaLoss


def st_matryoshka_value_and_grads(st_loss, stub, columns, labels):
    def compute(tensors, labels_t):
        stub.columns = tensors
        features = [{"column": i} for i in range(len(tensors))]
        return st_loss(features, labels_t)

    return torch_value_and_grads(compute, columns, labels)


MATRYOSHKA_CASES = {
    "mnrl": (3, "MultipleNegativesRankingLoss", {}, False),
    "cosent": (2, "CoSENTLoss", {}, True),
    "cosine": (2, "CosineSimilarityLoss", {}, True),
    "angle": (2, "AnglELoss", {}, True),
    "gte-mnrl": (2, "MultipleNegativesRankingLoss",
                 {"directions": ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")}, False),
}


@pytest.mark.parametrize("case", list(MATRYOSHKA_CASES))
@pytest.mark.parametrize("weights", [None, (0.25, 1.0, 0.5)], ids=["default-weights", "weights"])
def test_matryoshka_loss(case, weights):
    n_columns, name, kwargs, with_labels = MATRYOSHKA_CASES[case]
    dims = (4, 16, 8)  # unsorted on purpose: both sort largest first with the weights
    columns = random_columns(n_columns, seed=14)
    labels = _scores(15, ties=False) if with_labels else None
    stub = StubModel(D)
    st_loss = st_losses().MatryoshkaLoss(stub, getattr(st_losses(), name)(stub, **kwargs), dims,
                                         matryoshka_weights=weights)
    jx_loss = jl.MatryoshkaLoss(None, getattr(jl, name)(**kwargs), dims, matryoshka_weights=weights)
    assert jx_loss.matryoshka_dims == st_loss.matryoshka_dims
    assert jx_loss.matryoshka_weights == st_loss.matryoshka_weights
    assert_same(jax_value_and_grads(jx_loss, columns, labels),
                st_matryoshka_value_and_grads(st_loss, stub, columns, labels))


def test_matryoshka_n_dims_per_step(monkeypatch):
    """With the same dims drawn (the original's random.sample patched to jaxst's draw), the same loss."""
    dims, n_per_step = (16, 8, 4, 2), 2
    columns = random_columns(2, seed=16)
    key = jax.random.key(3)
    jx_loss = jl.MatryoshkaLoss(None, jl.MultipleNegativesRankingLoss(), dims, n_dims_per_step=n_per_step)
    picked = sorted(int(i) for i in jax.random.choice(key, len(dims), (n_per_step,), replace=False))
    monkeypatch.setattr(random, "sample", lambda population, k: list(picked))
    stub = StubModel(D)
    st_loss = st_losses().MatryoshkaLoss(stub, st_losses().MultipleNegativesRankingLoss(stub), dims,
                                         n_dims_per_step=n_per_step)
    assert_same(jax_value_and_grads(jx_loss, columns, rng=key),
                st_matryoshka_value_and_grads(st_loss, stub, columns, None))
    all_dims = jl.MatryoshkaLoss(None, jl.MultipleNegativesRankingLoss(), dims)
    assert abs(jax_value_and_grads(jx_loss, columns, rng=key)[0] - jax_value_and_grads(all_dims, columns)[0]) > 1e-3
    with pytest.raises(ValueError, match="rng"):
        jx_loss([jnp.asarray(c) for c in columns])


# ----------------------------------------------------------------------------- BinaryCrossEntropyLoss


@pytest.fixture(scope="module")
def tiny_cross_encoder(make_tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CrossEncoder(str(make_tiny_cross_encoder("bert", num_labels=1)), device="cpu")


@pytest.mark.parametrize("pos_weight", [None, 3.0])
@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_binary_cross_entropy_loss(tiny_cross_encoder, monkeypatch, pos_weight, activation):
    from sentence_transformers.cross_encoder import losses as ce_losses

    rng = np.random.default_rng(17)
    logits = (3 * rng.normal(size=B)).astype(np.float32)
    labels = rng.integers(0, 2, size=B).astype(np.float32)
    labels[:3] = rng.uniform(0, 1, size=3)  # soft labels too
    torch_act, jax_act = {"identity": (torch.nn.Identity(), lambda x: x), "tanh": (torch.nn.Tanh(), jnp.tanh)}[
        activation]
    st_loss = ce_losses.BinaryCrossEntropyLoss(
        tiny_cross_encoder, activation_fn=torch_act,
        pos_weight=None if pos_weight is None else torch.tensor(pos_weight))
    jx_loss = jl.BinaryCrossEntropyLoss(activation_fn=jax_act, pos_weight=pos_weight)

    def compute(tensors, labels_t):  # the cross-encoder's forward hands back the given logits, as (B, 1)
        monkeypatch.setattr(tiny_cross_encoder, "preprocess", lambda pairs, **kw: {})
        monkeypatch.setattr(tiny_cross_encoder, "forward", lambda features, **kw: {"scores": tensors[0][:, None]})
        pairs = [["q"] * B, ["d"] * B]
        return st_loss(pairs, labels_t)

    for shape in [(B,), (B, 1)]:
        jx = jax_value_and_grads(lambda e, y, r, shape=shape: jx_loss(e[0].reshape(shape), y), [logits], labels)
        assert_same(jx, torch_value_and_grads(compute, [logits], labels))


def test_binary_cross_entropy_refuses_multi_label_models():
    class ThreeLabels:
        num_labels = 3

    with pytest.raises(ValueError, match="1 output label"):
        jl.BinaryCrossEntropyLoss(ThreeLabels())


# ----------------------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error():
    a, b = (jnp.asarray(c) for c in random_columns(2))
    with pytest.raises(TypeError, match="list of"):
        jl.MultipleNegativesRankingLoss()(a)
    with pytest.raises(ValueError, match="at least 2"):
        jl.MultipleNegativesRankingLoss()([a])
    with pytest.raises(ValueError, match="rows"):
        jl.MultipleNegativesRankingLoss()([a, b[:3]])
    with pytest.raises(ValueError, match="labels"):
        jl.CoSENTLoss()([a, b])
    with pytest.raises(ValueError, match="expects 8 labels"):
        jl.CosineSimilarityLoss()([a, b], jnp.ones(3))
    with pytest.raises(ValueError, match="requires labels"):
        jl.AnglELoss()([a, b])
    with pytest.raises(ValueError, match="Invalid directions"):
        jl.MultipleNegativesRankingLoss(directions=("doc_to_everything",))
    with pytest.raises(ValueError, match="per_direction"):
        jl.MultipleNegativesRankingLoss(directions=("query_to_doc", "query_to_query"), partition_mode="per_direction")
    with pytest.raises(ValueError, match="Scale"):
        jl.MultipleNegativesRankingLoss(scale=0)
    with pytest.raises(ValueError, match="cannot be greater"):
        jl.MatryoshkaLoss(None, jl.CoSENTLoss(), (32, 8))([a, b], jnp.ones(B))
    with pytest.raises(TypeError, match="wraps a jaxst loss"):
        jl.MatryoshkaLoss(None, "CoSENTLoss", (8,))
    with pytest.raises(ValueError, match="same length"):
        jl.MatryoshkaLoss(None, jl.CoSENTLoss(), (16, 8), matryoshka_weights=(1.0,))


# ------------------------------------------------------------------ triplet and distillation losses


@pytest.mark.parametrize("metric", ["COSINE", "EUCLIDEAN", "MANHATTAN"])
@pytest.mark.parametrize("margin", [5.0, 0.3])
def test_triplet_loss(metric, margin):
    losses = st_losses()
    columns = random_columns(3, seed=11)
    ours = jl.TripletLoss(distance_metric=getattr(jl.TripletDistanceMetric, metric), triplet_margin=margin)
    ref = losses.TripletLoss(StubModel(D), distance_metric=getattr(losses.TripletDistanceMetric, metric),
                             triplet_margin=margin)
    assert_same(jax_value_and_grads(ours, columns), torch_value_and_grads(ref.compute_loss_from_embeddings, columns))


@pytest.mark.parametrize("n_negatives, label_form", [(1, "margin"), (1, "scores"), (3, "margins"), (3, "scores")])
@pytest.mark.parametrize("similarity", ["dot", "cos"])
def test_margin_mse_loss(n_negatives, label_form, similarity):
    from sentence_transformers import util as st_util

    losses = st_losses()
    columns = random_columns(2 + n_negatives, seed=12)
    rng = np.random.default_rng(13)
    shape = {"margin": (B,), "margins": (B, n_negatives), "scores": (B, n_negatives + 1)}[label_form]
    labels = rng.normal(size=shape).astype(np.float32) * 3
    ours = jl.MarginMSELoss(similarity_fct=ju.pairwise_dot_score if similarity == "dot" else ju.pairwise_cos_sim)
    ref = losses.MarginMSELoss(StubModel(D), similarity_fct=st_util.pairwise_dot_score if similarity == "dot"
                               else st_util.pairwise_cos_sim)
    assert_same(jax_value_and_grads(ours, columns, labels),
                torch_value_and_grads(ref.compute_loss_from_embeddings, columns, labels))
    with pytest.raises(ValueError, match="does not match expected shape"):
        ours(columns, np.zeros((B, n_negatives + 2), np.float32))


@pytest.mark.parametrize("temperatures", [{}, {"temperature": 2.0}, {"student_temperature": 0.5,
                                                                       "teacher_temperature": 3.0}])
@pytest.mark.parametrize("n_columns", [3, 5])
def test_distill_kl_div_loss(temperatures, n_columns):
    losses = st_losses()
    columns = random_columns(n_columns, seed=14)
    labels = np.random.default_rng(15).normal(size=(B, n_columns - 1)).astype(np.float32) * 4
    ours = jl.DistillKLDivLoss(**temperatures)
    ref = losses.DistillKLDivLoss(StubModel(D), **temperatures)
    assert_same(jax_value_and_grads(ours, columns, labels),
                torch_value_and_grads(ref.compute_loss_from_embeddings, columns, labels))
    with pytest.raises(ValueError, match="teacher scores of shape"):
        ours(columns, labels[:, :1])


@pytest.mark.parametrize("margins", [{}, {"positive_margin": 0.5, "negative_margin": -0.2}])
def test_mega_batch_margin_loss(margins):
    losses = st_losses()
    columns = random_columns(2, seed=16)
    ours = jl.MegaBatchMarginLoss(**margins)
    ref = losses.MegaBatchMarginLoss(StubModel(D), use_mini_batched_version=False, **margins)  # the same loss
    assert_same(jax_value_and_grads(ours, columns),
                torch_value_and_grads(lambda cols, labels: ref.calculate_loss([[cols[0]], [cols[1]]]), columns))
    assert ours.mini_batch_size == 50 and jl.MegaBatchMarginLoss(use_mini_batched_version=False).mini_batch_size is None


@pytest.mark.parametrize("n_columns", [2, 3])
@pytest.mark.parametrize("options", [{}, {"margin_strategy": "relative", "margin": 0.05, "temperature": 0.05},
                                     {"contrast_anchors": False, "contrast_positives": False, "margin": 0.1},
                                     {"margin": -1.0}])
def test_gist_embed_loss(minilm_folder, n_columns, options):
    """A guide's similarities mask the likely false negatives: stub model and guide (with MiniLM's tokenizer, so
    nothing is re-tokenized) hand back random embeddings; the guide's are the model's plus noise, so some
    in-batch candidates pass the pair's own guide score. A margin of -1 lifts the threshold above every guide
    score: only sentence-transformers 6.3's rule drops the anchor-anchor and positive-positive self-pairs."""
    from transformers import AutoTokenizer

    losses = st_losses()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder))
    student, guide = StubModel(D), StubModel(D)
    for stub in (student, guide):
        stub.tokenizer, stub.max_seq_length = tokenizer, 128
    columns = random_columns(n_columns, seed=17)
    noise = np.random.default_rng(18)
    guide_columns = [(c + noise.normal(scale=0.8, size=c.shape)).astype(np.float32) for c in columns]
    guide.columns = [torch.tensor(g) for g in guide_columns]
    ref = losses.GISTEmbedLoss(student, guide, **options)
    reference = torch_value_and_grads(
        lambda tensors, labels: (setattr(student, "columns", tensors),
                                 ref([{"column": i} for i in range(len(tensors))], labels))[1], columns)
    ours = jl.GISTEmbedLoss(**options)
    value, grads = jax.value_and_grad(lambda cols: ours(cols, None, guide_embeddings=[jnp.asarray(g)
                                                                                      for g in guide_columns]))(
        [jnp.asarray(c) for c in columns])
    assert_same((float(value), [np.asarray(g) for g in grads]), reference)


def test_matryoshka_shrinks_half_precision_in_float32():
    """sentence-transformers 6.3 normalizes a float16 / bfloat16 sub-embedding in float32 and casts it back (6.2
    normalized in half precision, where float16's sum of squares overflows these rows to inf and zeroes them)."""
    from sentence_transformers.sentence_transformer.losses.matryoshka import shrink as st_shrink

    r = np.random.default_rng(5)
    x = (r.normal(size=(64, 768)) * r.uniform(0.1, 30, size=(64, 1))).astype(np.float32)
    for ours_dtype, torch_dtype, mantissa in ((jnp.bfloat16, torch.bfloat16, 7), (jnp.float16, torch.float16, 10)):
        ours = jl.shrink(jnp.asarray(x, ours_dtype), 256)
        ref = st_shrink(torch.tensor(x).to(torch_dtype), 256).float().numpy()
        assert ours.dtype == ours_dtype and ours.shape == (64, 256)
        ours = np.asarray(ours, np.float32)
        ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref), 1e-30))) - mantissa)  # one step of the half type
        assert np.all(np.abs(ours - ref) <= ulp), float(np.max(np.abs(ours - ref) / ulp))
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=2.0 ** -mantissa * 4)


# ------------------------------------------------------------ batch triplet losses (one column, class labels)

BATCH_TRIPLET = ["BatchHardTripletLoss", "BatchHardSoftMarginTripletLoss", "BatchAllTripletLoss",
                 "BatchSemiHardTripletLoss"]
CLASS_LABELS = {
    "pairs-of-four": np.repeat(np.arange(4), 3),  # 12 texts in 4 classes
    "uneven-with-singletons": np.array([0, 0, 0, 0, 0, 1, 1, 2, 3, 3, 4, 5]),  # texts with no positive
}


@pytest.mark.parametrize("labels", list(CLASS_LABELS))
@pytest.mark.parametrize("metric, margin", [("euclidean_distance", None), ("euclidean_distance", 0.5),
                                            ("cosine_distance", 0.2)])
@pytest.mark.parametrize("name", BATCH_TRIPLET)
def test_batch_triplet_losses(name, metric, margin, labels):
    """Value and gradient on 12 random embeddings with class labels, for each distance and a margin that
    leaves some triplets inactive (the euclidean default of 5 leaves none)."""
    losses = st_losses()
    rng = np.random.default_rng(BATCH_TRIPLET.index(name))
    columns = [rng.normal(size=(12, D)).astype(np.float32)]
    label_values = CLASS_LABELS[labels][rng.permutation(12)]
    kwargs = {} if margin is None or name == "BatchHardSoftMarginTripletLoss" else {"margin": margin}
    ours = getattr(jl, name)(distance_metric=getattr(jl.BatchHardTripletLossDistanceFunction, metric), **kwargs)
    ref = getattr(losses, name)(StubModel(D), distance_metric=getattr(losses.BatchHardTripletLossDistanceFunction,
                                                                      metric), **kwargs)
    assert_same(jax_value_and_grads(ours, columns, label_values),
                torch_value_and_grads(ref.compute_loss_from_embeddings, columns, label_values))


def test_batch_triplet_defaults_and_input_checks():
    losses = st_losses()
    for name in BATCH_TRIPLET:
        ours, ref = getattr(jl, name)(), getattr(losses, name)(StubModel(D))
        assert ours.triplet_margin == getattr(ref, "triplet_margin", getattr(ref, "margin", None)) == 5
        assert ours.distance_metric is jl.BatchHardTripletLossDistanceFunction.euclidean_distance
    semi_hard = losses.BatchSemiHardTripletLoss(StubModel(D), margin=2.0)
    assert jl.BatchSemiHardTripletLoss(margin=2.0).margin == semi_hard.margin
    columns = random_columns(2)
    with pytest.raises(ValueError, match="one column of texts"):
        jl.BatchHardTripletLoss()(columns, np.arange(B))
    with pytest.raises(ValueError, match="expects 8 labels"):
        jl.BatchAllTripletLoss()(columns[:1], np.arange(B + 1))
    with pytest.raises(ValueError, match="needs labels"):
        jl.BatchSemiHardTripletLoss()(columns[:1])


def test_batch_all_triplet_loss_is_computed_anchor_by_anchor():
    """A batch of 300 (27 million triplets) with no (B, B, B) array: the same value as the oracle."""
    losses = st_losses()
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(300, D)).astype(np.float32)
    labels = rng.integers(0, 30, size=300)
    ours = float(jl.BatchAllTripletLoss(margin=1.0)([jnp.asarray(emb)], jnp.asarray(labels)))
    ref = float(losses.BatchAllTripletLoss(StubModel(D), margin=1.0).compute_loss_from_embeddings(
        [torch.from_numpy(emb)], torch.from_numpy(labels)))
    assert abs(ours - ref) < TOL * max(1.0, abs(ref)), (ours, ref)


# ------------------------------------------------------------------- Contrastive and OnlineContrastive


@pytest.mark.parametrize("metric", ["COSINE_DISTANCE", "EUCLIDEAN", "MANHATTAN"])
@pytest.mark.parametrize("kwargs", [{}, {"margin": 3.0, "size_average": False}])
def test_contrastive_loss(metric, kwargs):
    losses = st_losses()
    columns = random_columns(2, seed=21)
    labels = np.array([1, 0, 0, 1, 1, 0, 1, 0], np.float32)
    if metric != "COSINE_DISTANCE":
        kwargs = {**kwargs, "margin": 6.0}  # euclidean distances of N(0, 1) rows in 16 dims are about 5.7
    ours = jl.ContrastiveLoss(distance_metric=getattr(jl.SiameseDistanceMetric, metric), **kwargs)
    ref = losses.ContrastiveLoss(StubModel(D), distance_metric=getattr(losses.SiameseDistanceMetric, metric), **kwargs)
    assert_same(jax_value_and_grads(ours, columns, labels),
                torch_value_and_grads(ref.compute_loss_from_embeddings, columns, labels))


ONLINE_LABELS = {
    "mixed": [1, 0, 0, 1, 1, 0, 1, 0],
    "positives-only": [1] * 8,
    "negatives-only": [0] * 8,
    "with-a-non-binary-label": [1, 0, 2, 1, 1, 0, 1, 0],
}


@pytest.mark.parametrize("labels", list(ONLINE_LABELS))
@pytest.mark.parametrize("metric, margin", [("COSINE_DISTANCE", 1.0), ("EUCLIDEAN", 6.0)])
def test_online_contrastive_loss(metric, margin, labels):
    losses = st_losses()
    columns = random_columns(2, seed=22)
    label_values = np.asarray(ONLINE_LABELS[labels], np.float32)
    ours = jl.OnlineContrastiveLoss(distance_metric=getattr(jl.SiameseDistanceMetric, metric), margin=margin)
    ref = losses.OnlineContrastiveLoss(StubModel(D), distance_metric=getattr(losses.SiameseDistanceMetric, metric),
                                       margin=margin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_same(jax_value_and_grads(ours, columns, label_values),
                    torch_value_and_grads(ref.compute_loss_from_embeddings, columns, label_values))


def test_contrastive_losses_warn_once_on_non_binary_labels():
    columns = random_columns(2, seed=23)
    for loss in (jl.ContrastiveLoss(), jl.OnlineContrastiveLoss()):
        with pytest.warns(UserWarning, match="expects binary labels"):
            loss(columns, np.array([0, 1, 0.5, 1, 0, 1, 0, 1], np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss(columns, np.array([0, 1, 0.5, 1, 0, 1, 0, 1], np.float32))  # once per loss, as the original


# --------------------------------------------------------------------- GlobalOrthogonalRegularizationLoss


@pytest.mark.parametrize("kwargs", [{}, {"aggregation": "sum", "mean_weight": 0.5},
                                    {"second_moment_weight": None}, {"mean_weight": 0, "similarity_fct": "dot"}])
@pytest.mark.parametrize("n_columns", [1, 3])
def test_global_orthogonal_regularization_loss(kwargs, n_columns):
    losses = st_losses()
    columns = [c + 0.5 for c in random_columns(n_columns, seed=24)]  # a shared direction: the mean term matters
    st_kwargs, jx_kwargs = _similarity(kwargs, True), _similarity(kwargs, False)
    ours = jl.GlobalOrthogonalRegularizationLoss(**jx_kwargs)
    ref = losses.GlobalOrthogonalRegularizationLoss(StubModel(D), **st_kwargs)
    assert_same(jax_value_and_grads(ours, columns),
                torch_value_and_grads(lambda t, _: sum(ref.compute_loss_from_embeddings(t).values()), columns))
    ref_parts = ref.compute_loss_from_embeddings([torch.from_numpy(c) for c in columns])
    our_parts = ours.components([jnp.asarray(c) for c in columns])
    assert set(our_parts) == set(ref_parts)
    for key in ref_parts:
        assert abs(float(our_parts[key]) - float(ref_parts[key])) < TOL


def test_global_orthogonal_regularization_checks_its_settings():
    with pytest.raises(ValueError, match="At least one of mean_weight or second_moment_weight"):
        jl.GlobalOrthogonalRegularizationLoss(mean_weight=0, second_moment_weight=None)
    with pytest.raises(ValueError, match="aggregation must be 'mean' or 'sum'"):
        jl.GlobalOrthogonalRegularizationLoss(aggregation="max")
    one_row = [jnp.asarray(random_columns(1)[0][:1])]
    assert float(jl.GlobalOrthogonalRegularizationLoss()(one_row)) == 0.0  # a batch of one: 0, not nan


# ------------------------------------------------------------------- CachedMultipleNegativesSymmetricRankingLoss


def test_cached_symmetric_ranking_loss_is_the_symmetric_loss():
    """On embeddings given directly, the cached loss is the symmetric loss (GradCache changes how the model is
    run, tested in test_cached_losses.py), with sentence-transformers' defaults and directions."""
    import inspect

    losses = st_losses()
    columns = random_columns(3, seed=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = losses.MultipleNegativesSymmetricRankingLoss(StubModel(D))
    ours = jl.CachedMultipleNegativesSymmetricRankingLoss()
    defaults = inspect.signature(losses.CachedMultipleNegativesSymmetricRankingLoss.__init__).parameters
    assert (ours.scale, ours.mini_batch_size) == (defaults["scale"].default, defaults["mini_batch_size"].default)
    assert (ours.directions, ours.partition_mode) == (plain.directions, plain.partition_mode)
    assert_same(jax_value_and_grads(ours, columns), torch_value_and_grads(plain.compute_loss_from_embeddings, columns))
    with pytest.raises(ValueError, match="mini_batch_num_tokens is not supported"):
        jl.CachedMultipleNegativesSymmetricRankingLoss(mini_batch_num_tokens=512)


# ------------------------------------------------------------------------------- EmbedDistillLoss, MSELoss


@pytest.mark.parametrize("label_shape", ["broadcast", "per-column"])
@pytest.mark.parametrize("name, kwargs", [("MSELoss", {}), ("EmbedDistillLoss", {}),
                                          ("EmbedDistillLoss", {"distance_metric": "l2"}),
                                          ("EmbedDistillLoss", {"distance_metric": "mse"})])
def test_embedding_distillation_losses(name, kwargs, label_shape):
    """The student's columns against the teacher's embeddings given as labels, (B, D) for every column or
    (B, C, D) one per column, as sentence-transformers' forward reads them."""
    losses = st_losses()
    columns = random_columns(2, seed=26)
    rng = np.random.default_rng(27)
    labels = rng.normal(size=(B, D) if label_shape == "broadcast" else (B, 2, D)).astype(np.float32)
    teachers = [labels] * 2 if labels.ndim == 2 else [labels[:, i] for i in range(2)]
    ref = getattr(losses, name)(StubModel(D), **kwargs)
    ours = getattr(jl, name)(**kwargs)
    assert_same(jax_value_and_grads(ours, columns, labels),
                torch_value_and_grads(lambda t, _: ref.compute_loss_from_embeddings(
                    t, [torch.from_numpy(x) for x in teachers]), columns))


def test_embedding_distillation_checks_its_labels():
    columns = random_columns(2, seed=28)
    with pytest.raises(ValueError, match="requires pre-computed teacher embeddings as labels"):
        jl.MSELoss()(columns)
    with pytest.raises(ValueError, match=r"Number of label columns \(3\) does not match number of input text columns"):
        jl.MSELoss()(columns, np.zeros((B, 3, D), np.float32))
    with pytest.raises(ValueError, match="the student's embeddings have 16 dimensions, the teacher's 8"):
        jl.MSELoss()(columns, np.zeros((B, 8), np.float32))
    with pytest.raises(ValueError, match="distance_metric must be one of 'mse', 'l2', 'cosine'"):
        jl.EmbedDistillLoss(distance_metric="dot")
    with pytest.raises(ValueError, match="with projection_dim needs the model"):
        jl.MSELoss(projection_dim=32)


@pytest.mark.parametrize("distance_metric", ["mse", "cosine"])
def test_embedding_distillation_with_a_learned_projection(distance_metric, tmp_path):
    """projection_dim: the loss's own linear map (its params), value and gradients (embeddings' and the
    projection's) equal 6.3's with its weights; saved and loaded in PyTorch's layout both ways."""
    losses = st_losses()
    columns = random_columns(2, seed=30)
    labels = np.random.default_rng(31).normal(size=(B, 8)).astype(np.float32)
    ref = losses.EmbedDistillLoss(StubModel(D), distance_metric=distance_metric, projection_dim=8)
    tensors = [torch.tensor(c, requires_grad=True) for c in columns]
    value = ref.compute_loss_from_embeddings(tensors, [torch.from_numpy(labels)] * 2)
    value.backward()
    ref.save_projection(tmp_path / "theirs.safetensors")
    ours = jl.EmbedDistillLoss(StubModel(D), distance_metric=distance_metric, projection_dim=8)
    assert jax.tree.map(np.shape, ours.params) == {"projection": {"kernel": (D, 8), "bias": (8,)}}
    ours.load_projection(tmp_path / "theirs.safetensors")
    fn = lambda p, cols: ours.with_params(p)(cols, jnp.asarray(labels))
    got, (g_params, g_cols) = jax.value_and_grad(fn, argnums=(0, 1))(ours.params, [jnp.asarray(c) for c in columns])
    assert abs(float(got) - float(value)) < TOL
    for g, t in zip(g_cols, tensors):
        assert max_abs(g, t.grad.numpy()) < TOL
    assert max_abs(g_params["projection"]["kernel"], ref.projection.weight.grad.numpy().T) < TOL
    assert max_abs(g_params["projection"]["bias"], ref.projection.bias.grad.numpy()) < TOL
    ours.save_projection(tmp_path / "ours.safetensors")
    again = losses.EmbedDistillLoss(StubModel(D), distance_metric=distance_metric, projection_dim=8)
    again.load_projection(tmp_path / "ours.safetensors")
    assert max_abs(again.projection.weight.detach().numpy(), ref.projection.weight.detach().numpy()) == 0.0
    with pytest.raises(ValueError, match="does not match the configured projection shape"):
        jl.EmbedDistillLoss(StubModel(D), projection_dim=4).load_projection(tmp_path / "ours.safetensors")


# ------------------------------------------------------------------- SoftmaxLoss (a loss with its own params)


@pytest.mark.parametrize("kwargs", [{}, {"concatenation_sent_multiplication": True},
                                    {"concatenation_sent_rep": False, "concatenation_sent_difference": True}])
def test_softmax_loss(kwargs):
    """Value and gradients, the embeddings' and the classifier's, equal 6.3's with its classifier's weights."""
    losses = st_losses()
    columns = random_columns(2, seed=29)
    labels = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    stub = StubModel(D)
    ref = losses.SoftmaxLoss(stub, D, 3, **kwargs)
    tensors = [torch.tensor(c, requires_grad=True) for c in columns]
    stub.columns = tensors
    value = ref([{"column": 0}, {"column": 1}], torch.tensor(labels))
    value.backward()
    ours = jl.SoftmaxLoss(embedding_dimension=D, num_labels=3, **kwargs)
    assert jax.tree.map(np.shape, ours.params) == {"classifier": {"kernel": tuple(ref.classifier.weight.T.shape),
                                                                  "bias": (3,)}}
    params = {"classifier": {"kernel": jnp.asarray(ref.classifier.weight.detach().numpy().T),
                             "bias": jnp.asarray(ref.classifier.bias.detach().numpy())}}
    fn = lambda p, cols: ours.with_params(p)(cols, jnp.asarray(labels))
    got, (g_params, g_cols) = jax.value_and_grad(fn, argnums=(0, 1))(params, [jnp.asarray(c) for c in columns])
    assert abs(float(got) - float(value)) < TOL
    for g, t in zip(g_cols, tensors):
        assert max_abs(g, t.grad.numpy()) < TOL
    assert max_abs(g_params["classifier"]["kernel"], ref.classifier.weight.grad.numpy().T) < TOL
    assert max_abs(g_params["classifier"]["bias"], ref.classifier.bias.grad.numpy()) < TOL


def test_softmax_loss_initializes_as_pytorch_and_checks_its_settings():
    loss = jl.SoftmaxLoss(embedding_dimension=D, num_labels=3, seed=1)
    bound = 1 / np.sqrt(3 * D)
    kernel = np.asarray(loss.params["classifier"]["kernel"])
    assert kernel.shape == (3 * D, 3) and np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.8 * bound
    assert not np.array_equal(kernel, np.asarray(jl.SoftmaxLoss(embedding_dimension=D, num_labels=3).params[
        "classifier"]["kernel"]))  # the seed draws it
    assert jl.SoftmaxLoss(StubModel(D), num_labels=2).embedding_dimension == D  # the model's, when not given
    assert jl.SoftmaxLoss(sentence_embedding_dimension=D, num_labels=2).embedding_dimension == D  # the old name
    with pytest.raises(ValueError, match="At least one of concatenation_sent_rep"):
        jl.SoftmaxLoss(embedding_dimension=D, num_labels=2, concatenation_sent_rep=False,
                       concatenation_sent_difference=False)
