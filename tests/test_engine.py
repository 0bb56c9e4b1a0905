"""One engine under the four families (jaxst.engine): the same texts through ``SentenceTransformer``,
``CrossEncoder``, ``SparseEncoder`` and ``MultiVectorEncoder`` with ``batch_size``, ``max_batch_tokens``,
``chunk_size``, ``show_progress_bar`` and ``dtype="bfloat16"``; each honours them the same way: the batches
each family runs (recorded at the engine) follow one rule, results do not depend on the batching, the
progress bar counts the batches that ran, and bfloat16 really computes in bfloat16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import build_late_interaction, save_tiny_splade

import jaxst
from jaxst import engine

# short and long texts: the long ones pad to the tiny models' 48-64 token limits, where the token cap bites
TEXTS = [
    "A man is playing a guitar.",
    "Tea.",
    " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 6),
    "Two dogs run across a snowy field while children watch from the fence.",
    " ".join(["Markets rallied after the central bank held rates steady."] * 5),
    "A woman slices an onion.",
    "Stocks fell sharply in early trading as investors weighed new data on inflation and jobs.",
] * 3


@pytest.fixture(scope="module")
def family_folders(make_tiny_st, make_tiny_cross_encoder, tiny_backbone, minilm_folder, tmp_path_factory):
    """family name -> a tiny saved model folder of that family."""
    sparse = save_tiny_splade(tmp_path_factory, minilm_folder, "engine-splade")
    multi = tmp_path_factory.mktemp("engine-colbert")
    build_late_interaction(tiny_backbone, multi)
    return {
        "SentenceTransformer": make_tiny_st(max_seq_length=64),
        "CrossEncoder": make_tiny_cross_encoder(),
        "SparseEncoder": sparse,
        "MultiVectorEncoder": multi,
    }


FAMILIES = ["SentenceTransformer", "CrossEncoder", "SparseEncoder", "MultiVectorEncoder"]


def run(model, **kw) -> list[np.ndarray]:
    """The family's main call over TEXTS, as one float32 numpy array per text."""
    if isinstance(model, jaxst.CrossEncoder):
        return list(np.asarray(model.predict([(t, TEXTS[0]) for t in TEXTS], **kw), np.float32))
    if isinstance(model, jaxst.SparseEncoder):
        return list(np.asarray(model.encode(TEXTS, convert_to_sparse_tensor=False, **kw), np.float32))
    if isinstance(model, jaxst.MultiVectorEncoder):
        return [np.asarray(e, np.float32) for e in model.encode(TEXTS, convert_to_numpy=True, **kw)]
    return list(np.asarray(model.encode(TEXTS, **kw), np.float32))


def largest_difference(family: str, ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """Checks a low-precision run against float32 per text (sigmoid scores within 0.05; sparse values within 5%
    of the row's largest; dense vectors at cosine > 0.99) and returns the largest absolute difference."""
    differs = 0.0
    for a, b in zip(ours, ref):
        assert a.dtype == np.float32 and a.shape == b.shape
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        differs = max(differs, float(np.max(np.abs(a - b))))
        if family == "CrossEncoder":
            assert abs(a - b).max() < 0.05  # sigmoid scores
        elif family == "SparseEncoder":
            assert np.abs(a - b).max() <= 0.05 * max(1.0, np.abs(b).max())
        else:
            assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
    return differs


@pytest.fixture
def plans(monkeypatch):
    """Every batch the engine plans, as (rows, padded length, rows it may hold), per call."""
    recorded = []
    plan = engine.plan_batches

    def record(lengths, batch_size, budget, max_length, secondary=None):
        batches = plan(lengths, batch_size, budget, max_length, secondary)
        recorded.append([(len(idx), length, rows) for idx, rows, length in batches])
        return batches

    monkeypatch.setattr(engine, "plan_batches", record)
    return recorded


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_size_and_token_cap_follow_one_rule(family, family_folders, plans):
    model = getattr(jaxst, family)(str(family_folders[family]))
    reference = run(model, batch_size=64, max_batch_tokens=None)
    assert plans[-1] and all(rows == 64 for _, _, rows in plans[-1])  # no cap: batch_size rows per batch
    for batch_size, cap in ((4, None), (64, 128), (3, 100), (64, "auto")):
        plans.clear()
        out = run(model, batch_size=batch_size, max_batch_tokens=cap)
        limit = engine.CPU_BATCH_TOKENS if cap == "auto" else cap  # "auto" on CPU, the same for every family
        batches = [b for p in plans for b in p]
        assert sum(n for n, _, _ in batches) == len(TEXTS)
        for n, length, rows in batches:
            assert n <= rows == engine.batch_rows(length, batch_size, limit)
            assert rows <= batch_size
            if limit is not None and rows > 1:
                assert rows * length <= limit
        if cap in (128, 100):
            assert any(rows < batch_size for _, _, rows in batches)  # the cap really split batches
        assert len(out) == len(reference)
        for a, b in zip(out, reference):  # the batching never changes a number
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunk_size_reads_inputs_in_chunks(family, family_folders, plans):
    model = getattr(jaxst, family)(str(family_folders[family]))
    whole = run(model, batch_size=4)
    plans.clear()
    chunked = run(model, batch_size=4, chunk_size=5)
    assert len(plans) == -(-len(TEXTS) // 5)  # one plan per chunk of 5 inputs
    for a, b in zip(chunked, whole):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        run(model, chunk_size=0)
    with pytest.raises(ValueError, match="max_batch_tokens must be a positive integer"):
        run(model, max_batch_tokens=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        run(model, batch_size=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_progress_bar_counts_the_batches_that_ran(family, family_folders, plans, monkeypatch):
    bars = []

    class Recording(engine.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.shown = not self.disable  # close() sets disable
            bars.append(self)

    monkeypatch.setattr(engine, "tqdm", Recording)
    model = getattr(jaxst, family)(str(family_folders[family]))
    for shown in (True, False):
        bars.clear()
        plans.clear()
        run(model, batch_size=8, max_batch_tokens=128, show_progress_bar=shown)
        (bar,) = bars
        assert bar.shown is shown
        ran = sum(len(p) for p in plans)
        assert ran > -(-len(TEXTS) // 8)  # the cap made more batches than batch_size alone would
        if shown:
            assert bar.n == bar.total == ran  # the total is the planned count, not the batch_size estimate


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_for_every_family(family, family_folders):
    cls = getattr(jaxst, family)
    full = cls(str(family_folders[family]))
    half = cls(str(family_folders[family]), dtype="bfloat16")
    assert full.dtype == np.float32
    assert half.dtype == jnp.bfloat16  # the one place a model reports its dtype
    floats = [x.dtype for x in jax.tree.leaves(half.params) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(d == jnp.bfloat16 for d in floats)
    assert largest_difference(family, run(half, batch_size=8), run(full, batch_size=8)) > 0  # bfloat16 computed


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_for_every_family(family, family_folders):
    """dtype="int8" through the one path (BaseModel.apply_dtype: calibration on the family's own batch, the
    encoder's dense layers swapped for Int8Linear): the model says int8 in one place, its encoder holds int8
    weights, and what it computes stays close to float32 without being float32."""
    cls = getattr(jaxst, family)
    full = cls(str(family_folders[family]))
    quantized = cls(str(family_folders[family]), dtype="int8")
    assert quantized.dtype == np.int8 and quantized.int8 and not full.int8
    assert any(x.dtype == jnp.int8 for x in jax.tree.leaves(quantized.params["encoder"]))
    assert largest_difference(family, run(quantized, batch_size=8), run(full, batch_size=8)) > 0  # int8 computed
    with pytest.raises(ValueError, match="int8"):
        quantized.to_dtype("float32")  # its float weights are gone
