"""GradCache: CachedMultipleNegativesRankingLoss through jaxst.training equals the uncached loss on the same
big batch (value and parameter gradients) and sentence-transformers' CachedMultipleNegativesRankingLoss,
with memory bounded by the mini-batch."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import assert_same_gradients, read_stsb

from jaxst import SentenceTransformer
from jaxst.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
from jaxst.training import collate, make_loss_fn, make_train_step

TOL = 1e-5


def assert_same_tree(ours, ref) -> None:
    """Every leaf within TOL of its tensor's scale: a gradient entry sums products over the whole batch, whose
    float32 rounding depends on the summation order (mini-batches add them up in another order)."""
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        a, b = np.asarray(a), np.asarray(b)
        assert float(np.abs(a - b).max()) < TOL * max(1.0, float(np.abs(b).max()))


@pytest.fixture(scope="module")
def pairs():
    rows = [r for r in read_stsb("stsb-en-train.csv") if r[2] >= 3.0][:64]
    return [(a, b) for a, b, _ in rows]


def test_cached_equals_uncached_on_64_rows(make_tiny_st, pairs):
    model = SentenceTransformer(str(make_tiny_st()))
    batch = collate(model, pairs)
    plain = jax.jit(jax.value_and_grad(make_loss_fn(model, MultipleNegativesRankingLoss(), dropout=False)))
    cached_loss = CachedMultipleNegativesRankingLoss(mini_batch_size=8)
    cached = jax.jit(jax.value_and_grad(make_loss_fn(model, cached_loss, dropout=False)))
    (v1, g1), (v2, g2) = plain(model.params, batch), cached(model.params, batch)
    assert abs(float(v1) - float(v2)) < TOL * max(1.0, abs(float(v1)))
    assert_same_tree(g2, g1)
    # 64 is not a multiple of 24: the last mini-batch is padded, and the padding adds nothing
    odd = jax.jit(jax.value_and_grad(make_loss_fn(model, CachedMultipleNegativesRankingLoss(mini_batch_size=24),
                                                  dropout=False)))
    v3, g3 = odd(model.params, batch)
    assert abs(float(v1) - float(v3)) < TOL * max(1.0, abs(float(v1)))
    assert_same_tree(g3, g1)
    # with dropout the step runs and draws per mini-batch; the loss stays finite
    import optax

    step = make_train_step(model, cached_loss, optax.sgd(1e-3))
    from jaxst.training import TrainState

    state, metrics = step(TrainState.create(model.params, optax.sgd(1e-3)), batch, jax.random.key(0))
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


@pytest.mark.parametrize("mini_batch_size", [8, 24])
def test_packed_mini_batches_equal_the_padded_batch(make_tiny_st, pairs, mini_batch_size):
    """collate(pack=True, mini_batch_size=) deals the 128 texts to mini-batches packed end to end (what fit
    feeds a cached loss): the loss and gradients of the uncached padded batch (the token slots saved are
    measured by benchmarks/finetune_speed.py)."""
    model = SentenceTransformer(str(make_tiny_st()))
    padded = collate(model, pairs)
    packed = collate(model, pairs, pack=True, mini_batch_size=mini_batch_size)
    features = packed["features"]
    steps = -(-128 // mini_batch_size)
    assert features["input_ids"].shape[0] == steps and features["order"].shape == (2, 64)
    assert sorted(features["order"].ravel().tolist()) == sorted(set(features["order"].ravel().tolist()))
    plain = jax.jit(jax.value_and_grad(make_loss_fn(model, MultipleNegativesRankingLoss(), dropout=False)))
    cached = jax.jit(jax.value_and_grad(make_loss_fn(
        model, CachedMultipleNegativesRankingLoss(mini_batch_size=mini_batch_size), dropout=False)))
    (v1, g1), (v2, g2) = plain(model.params, padded), cached(model.params, packed)
    assert abs(float(v1) - float(v2)) < TOL * max(1.0, abs(float(v1)))
    assert_same_tree(g2, g1)
    with pytest.raises(ValueError, match="needs a cached loss"):
        make_loss_fn(model, MultipleNegativesRankingLoss(), dropout=False)(model.params, packed)


def test_mega_batch_margin_mini_batched_equals_whole(make_tiny_st, pairs):
    from jaxst.losses import MegaBatchMarginLoss

    model = SentenceTransformer(str(make_tiny_st()))
    batch = collate(model, pairs)
    whole = jax.jit(jax.value_and_grad(make_loss_fn(model, MegaBatchMarginLoss(use_mini_batched_version=False),
                                            dropout=False)))(model.params, batch)
    mini = jax.jit(jax.value_and_grad(make_loss_fn(model, MegaBatchMarginLoss(mini_batch_size=8), dropout=False)))(
        model.params, batch)
    assert abs(float(whole[0]) - float(mini[0])) < TOL * max(1.0, abs(float(whole[0])))
    assert_same_tree(mini[1], whole[1])


def test_cached_memory_is_bounded_by_the_mini_batch(make_tiny_st, pairs):
    """XLA's own accounting of the compiled gradient: the cached program's temporary buffers are a fraction
    of the uncached one's for the same 64-row batch."""
    model = SentenceTransformer(str(make_tiny_st(max_seq_length=128)))
    batch = collate(model, [(a * 4, b * 4) for a, b in pairs])  # longer texts: activations dominate

    def temp_bytes(loss):
        fn = jax.jit(jax.grad(make_loss_fn(model, loss, dropout=False)))
        return fn.lower(model.params, batch).compile().memory_analysis().temp_size_in_bytes

    plain = temp_bytes(MultipleNegativesRankingLoss())
    cached = temp_bytes(CachedMultipleNegativesRankingLoss(mini_batch_size=8))
    print(f"temporary bytes: uncached {plain:,}, cached (mini-batch 8) {cached:,}")
    assert cached < plain / 3, (cached, plain)


def test_cached_matches_sentence_transformers(make_tiny_st, pairs):
    import torch
    from sentence_transformers import SentenceTransformer as STSentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss as STCached

    folder = make_tiny_st()
    st = STSentenceTransformer(str(folder), device="cpu")
    st.eval()  # no dropout on either side
    features = [st.preprocess([p[i] for p in pairs]) for i in range(2)]
    ref = STCached(st, mini_batch_size=8)(features, None)
    ref.backward()
    model = SentenceTransformer(str(folder))
    value, grads = jax.jit(jax.value_and_grad(make_loss_fn(model, CachedMultipleNegativesRankingLoss(mini_batch_size=8),
                                                   dropout=False)))(model.params, collate(model, pairs))
    assert abs(float(value) - float(ref.detach())) < TOL * max(1.0, abs(float(ref.detach())))
    assert_same_gradients(st, [
        (grads["encoder"]["encoder"]["layer"][1]["output"]["dense"]["kernel"], "encoder.layer.1.output.dense.weight",
         True),
        (grads["encoder"]["embeddings"]["word_embeddings"]["embedding"], "embeddings.word_embeddings.weight", False),
    ])
    assert isinstance(ref, torch.Tensor)


def test_fit_with_a_cached_loss(make_tiny_st, pairs):
    """fit feeds a cached loss unpacked columns (packing would mix the columns' rows)."""
    from jaxst.training import fit

    model = SentenceTransformer(str(make_tiny_st()))
    history = fit(model, pairs[:32], CachedMultipleNegativesRankingLoss(mini_batch_size=8), batch_size=16,
                  show_progress_bar=False)
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))


def test_bad_mini_batch_size():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="mini_batch_size"):
            CachedMultipleNegativesRankingLoss(mini_batch_size=bad)
