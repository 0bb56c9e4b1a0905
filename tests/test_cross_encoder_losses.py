"""The cross-encoder ranking losses (jaxst.cross_encoder_losses) against sentence-transformers' on a tiny
random cross-encoder: the same loss and parameter gradients (within 1e-5) through jaxst.training's listwise
batches, lists of unequal length included; the in-batch lists of MultipleNegativesRankingLoss; GradCache
mini-batches; fit; bad input."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
import torch
from conftest import assert_same_gradients, read_stsb

import jaxst
from jaxst import cross_encoder_losses as cl
from jaxst import training

TOL = 1e-5
ROWS = read_stsb("stsb-en-train.csv")[:60]


@pytest.fixture(scope="module")
def folder(make_tiny_cross_encoder):
    return make_tiny_cross_encoder("bert", num_labels=1)


@pytest.fixture(scope="module")
def st(folder):
    from sentence_transformers import CrossEncoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CrossEncoder(str(folder), device="cpu")
    model.eval()  # no dropout on either side
    return model


@pytest.fixture(scope="module")
def jx(folder):
    return jaxst.CrossEncoder(folder)


def listwise_examples(sizes, seed=0) -> list[tuple[str, list[str], list[float]]]:
    """Queries with lists of the given lengths, graded labels 0..3 (ties included)."""
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for n in sizes:
        query = ROWS[k][0]
        documents = [ROWS[k + 1 + j][1] for j in range(n)]
        out.append((query, documents, [float(x) for x in rng.integers(0, 4, size=n)]))
        k += n + 1
    return out


def grad_pairs(grads):
    layer = grads["encoder"]["encoder"]["layer"][1]
    return [(layer["output"]["dense"]["kernel"], "encoder.layer.1.output.dense.weight", True),
            (grads["encoder"]["embeddings"]["word_embeddings"]["embedding"], "embeddings.word_embeddings.weight",
             False),
            (grads["classifier"]["kernel"], "classifier.weight", True)]


def assert_same_as_sentence_transformers(st, jx, st_loss, jx_loss, batch, st_inputs, st_labels):
    st.zero_grad()
    ref = st_loss(st_inputs, st_labels)
    ref.backward()
    value, grads = jax.jit(jax.value_and_grad(training.make_loss_fn(jx, jx_loss, dropout=False)))(jx.params, batch)
    ref = float(ref.detach())
    assert abs(float(value) - ref) < TOL * max(1.0, abs(ref)), (float(value), ref)
    assert_same_gradients(st, grad_pairs(grads))
    return ref


def st_listwise(examples):
    inputs = [[q for q, _, _ in examples], [d for _, d, _ in examples]]
    return inputs, [torch.tensor(labels) for *_, labels in examples]


@pytest.mark.parametrize("activation", ["identity", "sigmoid"])
def test_listnet_equals_sentence_transformers(st, jx, activation):
    from sentence_transformers.cross_encoder import losses as st_losses

    examples = listwise_examples([3, 5, 1, 4])  # unequal lists: empty slots in the matrix
    torch_act, jax_act = {"identity": (torch.nn.Identity(), None), "sigmoid": (torch.nn.Sigmoid(), jax.nn.sigmoid)}[
        activation]
    batch = training.collate(jx, examples)
    assert batch["features"]["input_ids"].shape[0] == 16  # 13 pairs, padded to LIST_ROWS
    assert_same_as_sentence_transformers(st, jx, st_losses.ListNetLoss(st, activation_fn=torch_act),
                                         cl.ListNetLoss(jx, activation_fn=jax_act), batch, *st_listwise(examples))


SCHEMES = {
    "ndcg2pp": (lambda m: m.NDCGLoss2PPScheme(mu=10.0), {}),
    "ndcg1": (lambda m: m.NDCGLoss1Scheme(), {}),
    "ndcg2": (lambda m: m.NDCGLoss2Scheme(), {}),
    "lambdarank": (lambda m: m.LambdaRankScheme(), {"k": 3}),
    "none": (lambda m: None, {"reduction_log": "natural", "sigma": 2.0}),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_lambda_loss_equals_sentence_transformers(st, jx, scheme):
    from sentence_transformers.cross_encoder import losses as st_losses
    from sentence_transformers.cross_encoder.losses import lambda_loss as st_lambda

    make, options = SCHEMES[scheme]
    examples = listwise_examples([4, 6, 2, 5], seed=3)
    batch = training.collate(jx, examples)
    ref = assert_same_as_sentence_transformers(
        st, jx, st_losses.LambdaLoss(st, weighting_scheme=make(st_lambda), **options),
        cl.LambdaLoss(jx, weighting_scheme=make(cl), **options), batch, *st_listwise(examples))
    assert ref != 0.0


def triplets(n, offset=0):
    return [(a, b, ROWS[offset + n + i][1]) for i, (a, b, _) in enumerate(ROWS[offset:offset + n])]


@pytest.mark.parametrize("options", [{}, {"scale": 1.0, "activation_fn": None}])
def test_multiple_negatives_ranking_equals_sentence_transformers(st, jx, options):
    """num_negatives=None: every in-batch candidate, in sentence-transformers' order (no draw to match)."""
    from sentence_transformers.cross_encoder import losses as st_losses

    examples = triplets(4)
    loss = cl.MultipleNegativesRankingLoss(jx, num_negatives=None, **options)
    batch = training.collate(jx, examples, loss=loss)
    assert batch["labels"]["scores"].shape == (4, 8)  # positive, 6 in-batch candidates, the hard negative
    st_options = {"activation_fn": torch.nn.Identity()} if "activation_fn" in options else {}
    if "scale" in options:
        st_options["scale"] = options["scale"]
    assert_same_as_sentence_transformers(
        st, jx, st_losses.MultipleNegativesRankingLoss(st, num_negatives=None, **st_options), loss, batch,
        [list(c) for c in zip(*examples)], None)


def test_in_batch_lists_draw_other_rows_candidates():
    loss = cl.MultipleNegativesRankingLoss(num_negatives=3)
    examples = triplets(6)
    lists = loss.lists(examples, seed=7)
    assert lists == loss.lists(examples, seed=7)  # seeded
    assert lists != loss.lists(examples, seed=8)
    for (anchor, positive, negative), (query, documents, labels) in zip(examples, lists):
        assert query == anchor and documents[0] == positive and documents[-1] == negative
        assert labels == [1.0, 0.0, 0.0, 0.0, 0.0] and len(documents) == 5
        drawn = documents[1:4]
        assert len(set(drawn)) == 3 and positive not in drawn and negative not in drawn
        assert set(drawn) <= {t for row in examples for t in row[1:]}
    everything = cl.MultipleNegativesRankingLoss(num_negatives=None).lists(examples[:3])
    assert everything[1][1] == [examples[1][1], examples[0][1], examples[2][1], examples[0][2], examples[2][2],
                                examples[1][2]]


@pytest.mark.parametrize("loss_class", [cl.ListNetLoss, cl.LambdaLoss])
def test_mini_batches_give_the_same_loss_and_gradients(jx, loss_class):
    examples = listwise_examples([3, 5, 2, 4], seed=5)
    batch = training.collate(jx, examples)
    whole = jax.jit(jax.value_and_grad(training.make_loss_fn(jx, loss_class(jx), dropout=False)))(jx.params, batch)
    mini = jax.jit(jax.value_and_grad(training.make_loss_fn(jx, loss_class(jx, mini_batch_size=5), dropout=False)))(
        jx.params, batch)
    assert abs(float(whole[0]) - float(mini[0])) < TOL
    for a, b in zip(jax.tree.leaves(whole[1]), jax.tree.leaves(mini[1])):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) < TOL * max(1.0, float(np.abs(np.asarray(a)).max()))


def test_fit_with_listwise_and_in_batch_losses(folder):
    margins = [(*t, float(i % 3)) for i, t in enumerate(triplets(8))]
    for loss_class, examples in ((cl.ListNetLoss, listwise_examples([3, 4, 2, 3, 5, 1, 2, 4])),
                                 (cl.MultipleNegativesRankingLoss, triplets(16)), (cl.MarginMSELoss, margins),
                                 (cl.MSELoss, [(a, b, s / 5) for a, b, s in ROWS[:8]])):
        model = jaxst.CrossEncoder(folder)
        before = jax.tree.map(np.array, model.params)  # fit trains in place: keep a copy
        history = training.fit(model, examples, loss_class(model), batch_size=8, learning_rate=1e-3, warmup_steps=0,
                               show_progress_bar=False)
        assert len(history["loss"]) == len(examples) // 8 and all(np.isfinite(history["loss"]))
        changed = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), model.params, before)
        assert max(jax.tree.leaves(changed)) > 0


def test_bad_input(jx):
    pairs = training.collate(jx, [(a, b, s / 5) for a, b, s in ROWS[:4]])
    with pytest.raises(ValueError, match="listwise batch"):
        training.make_loss_fn(jx, cl.ListNetLoss(jx), dropout=False)(jx.params, pairs)
    with pytest.raises(ValueError, match="2 documents but 3 labels"):
        training.collate(jx, [("q", ["a", "b"], [1.0, 0.0, 0.0])])
    with pytest.raises(ValueError, match="listwise batch takes"):
        training.collate(jx, [("q", ["a", "b"], [1.0, 0.0]), ("q", "a", 1.0)])
    with pytest.raises(ValueError, match="one device"):
        training.make_loss_fn(jx, cl.LambdaLoss(jx), mesh=jax.make_mesh((1,), ("data",)))
    with pytest.raises(ValueError, match="CrossEncoder"):
        training.collate(jaxst.SentenceTransformer.__new__(jaxst.SentenceTransformer), triplets(2),
                         loss=cl.MultipleNegativesRankingLoss())

    class ThreeLabels:
        num_labels = 3

    for loss_class in (cl.ListNetLoss, cl.LambdaLoss, cl.MultipleNegativesRankingLoss):
        with pytest.raises(ValueError, match="1 output label"):
            loss_class(ThreeLabels())
    with pytest.raises(ValueError, match="reduction_log"):
        cl.LambdaLoss(reduction_log="ten")
    with pytest.raises(ValueError, match="num_negatives"):
        cl.MultipleNegativesRankingLoss(num_negatives=-1)


# ------------------------------------------------------------ sentence-transformers 6.3's other cross-encoder losses


def distinct_label_examples(sizes, seed=0):
    """Listwise examples whose labels never tie (a list sorted by label then has one order)."""
    return [(q, d, [float(x) for x in np.random.default_rng([seed, i]).permutation(len(d)) / 2])
            for i, (q, d, _) in enumerate(listwise_examples(sizes, seed))]


LISTWISE_63 = {
    "ranknet": (lambda m: m.RankNetLoss, {}, False),
    "ranknet-k2-natural": (lambda m: m.RankNetLoss, {"k": 2, "reduction_log": "natural"}, False),
    "listmle": (lambda m: m.ListMLELoss, {}, False),
    "listmle-by-label": (lambda m: m.ListMLELoss, {"respect_input_order": False}, True),
    "plistmle": (lambda m: m.PListMLELoss, {}, False),
    "plistmle-by-label": (lambda m: m.PListMLELoss, {"respect_input_order": False}, True),
    "plistmle-unweighted": (lambda m: m.PListMLELoss, {"lambda_weight": None}, False),
    "adrmse": (lambda m: m.ADRMSELoss, {}, False),
    "adrmse-alpha-3": (lambda m: m.ADRMSELoss, {"alpha": 3.0}, False),
}


@pytest.mark.parametrize("case", list(LISTWISE_63))
def test_listwise_losses_of_6_3_equal_sentence_transformers(st, jx, case):
    from sentence_transformers.cross_encoder import losses as st_losses

    make, options, distinct = LISTWISE_63[case]
    sizes = [4, 6, 2, 5]
    examples = distinct_label_examples(sizes, seed=9) if distinct else listwise_examples(sizes, seed=9)
    batch = training.collate(jx, examples)
    ref = assert_same_as_sentence_transformers(st, jx, make(st_losses)(st, **options), make(cl)(jx, **options),
                                               batch, *st_listwise(examples))
    assert ref != 0.0


def test_pointwise_mse_equals_sentence_transformers(st, jx):
    from sentence_transformers.cross_encoder import losses as st_losses

    rows = ROWS[:8]
    for torch_act, jax_act in ((torch.nn.Identity(), None), (torch.nn.Sigmoid(), jax.nn.sigmoid)):
        examples = [(a, b, s / 5) for a, b, s in rows]
        batch = training.collate(jx, examples)
        assert_same_as_sentence_transformers(
            st, jx, st_losses.MSELoss(st, activation_fn=torch_act), cl.MSELoss(jx, activation_fn=jax_act), batch,
            [[a for a, _, _ in rows], [b for _, b, _ in rows]], torch.tensor([s / 5 for *_, s in rows]))


@pytest.mark.parametrize("label_form", ["margin", "margins", "scores"])
def test_margin_mse_equals_sentence_transformers(st, jx, label_form):
    """(query, positive, negative[, negative], label) examples: the margin, the margins, or the teacher's scores."""
    from sentence_transformers.cross_encoder import losses as st_losses

    n_negatives = 1 if label_form == "margin" else 2
    rng = np.random.default_rng(11)
    rows = [(a, b, *(ROWS[20 + 3 * i + j][1] for j in range(n_negatives))) for i, (a, b, _) in enumerate(ROWS[:6])]
    labels = {"margin": rng.normal(size=6), "margins": rng.normal(size=(6, 2)),
              "scores": rng.normal(size=(6, 3))}[label_form].astype(np.float32) * 2
    examples = [(*r, lab if lab.ndim else float(lab)) for r, lab in zip(rows, labels)]
    loss = cl.MarginMSELoss(jx)
    batch = training.collate(jx, examples, loss=loss)
    assert batch["labels"]["scores"].shape == (6, n_negatives + 1)
    assert_same_as_sentence_transformers(st, jx, st_losses.MarginMSELoss(st), loss, batch,
                                         [list(c) for c in zip(*rows)], torch.from_numpy(labels))
    with pytest.raises(ValueError, match="does not match expected shape"):
        loss.lists([(*rows[0], np.zeros(n_negatives + 2, np.float32))])


@pytest.fixture(scope="module")
def three_labels(make_tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    folder = make_tiny_cross_encoder("bert", num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st = CrossEncoder(str(folder), device="cpu")
    st.eval()
    return st, jaxst.CrossEncoder(folder)


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "weight": [0.5, 1.0, 2.0]},
                                     {"reduction": "sum", "ignore_index": 2}])
def test_cross_entropy_equals_sentence_transformers(three_labels, options):
    from sentence_transformers.cross_encoder import losses as st_losses

    st, jx = three_labels
    rows = ROWS[:9]
    classes = [i % 3 for i in range(9)]
    batch = training.collate(jx, [(a, b, c) for (a, b, _), c in zip(rows, classes)])
    st_options = {k: torch.tensor(v) if k == "weight" else v for k, v in options.items()}
    assert_same_as_sentence_transformers(
        st, jx, st_losses.CrossEntropyLoss(st, **st_options), cl.CrossEntropyLoss(jx, **options), batch,
        [[a for a, _, _ in rows], [b for _, b, _ in rows]], torch.tensor(classes))


def test_cached_multiple_negatives_ranking_equals_sentence_transformers(st, jx):
    from sentence_transformers.cross_encoder import losses as st_losses

    examples = triplets(4)
    loss = cl.CachedMultipleNegativesRankingLoss(jx, num_negatives=None, mini_batch_size=5)
    batch = training.collate(jx, examples, loss=loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses.CachedMultipleNegativesRankingLoss(st, num_negatives=None, mini_batch_size=5)
    assert_same_as_sentence_transformers(st, jx, st_loss, loss, batch, [list(c) for c in zip(*examples)], None)


def test_6_3_cross_encoder_losses_keep_sentence_transformers_arguments():
    import inspect

    from sentence_transformers.cross_encoder import losses as st_losses

    for name in ("RankNetLoss", "ListMLELoss", "PListMLELoss", "ADRMSELoss", "MSELoss", "MarginMSELoss",
                 "CrossEntropyLoss", "CachedMultipleNegativesRankingLoss"):
        theirs = inspect.signature(getattr(st_losses, name).__init__).parameters
        ours = inspect.signature(getattr(cl, name).__init__).parameters
        named = [a for a, p in theirs.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        assert list(ours)[:len(named)] == named, name
        for arg in named:
            if isinstance(theirs[arg].default, (int, float, str, type(None))):
                assert ours[arg].default == theirs[arg].default, (name, arg)
