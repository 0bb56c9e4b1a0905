"""util.mine_hard_negatives against sentence-transformers' on the same data and options (all-MiniLM-L6-v2,
STSb pairs scoring at least 4.0 plus a corpus of other STSb sentences): the same negatives, rows and scores."""

from __future__ import annotations

import random

import pytest
from conftest import read_stsb

from jaxst import util

SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def data():
    from datasets import Dataset

    rows = [r for r in read_stsb("stsb-en-train.csv") if r[2] >= 4.0][:150]
    pairs = [(a, b) for a, b, _ in rows]
    pairs += [(pairs[0][0], pairs[5][1])]  # one query with two positives
    corpus = list(dict.fromkeys(b for _, b, _ in read_stsb("stsb-en-dev.csv")))[:500]
    return pairs, Dataset.from_dict({"query": [a for a, _ in pairs], "answer": [b for _, b in pairs]}), corpus


def assert_same_dataset(ours, ref) -> None:
    ours, ref = ours.to_dict(), ref.to_dict()
    assert list(ours) == list(ref)
    for column in ref:
        assert len(ours[column]) == len(ref[column]), column
        for a, b in zip(ours[column], ref[column]):
            if column in ("scores", "score"):
                a, b = (a, b) if isinstance(a, list) else ([a], [b])
                assert max(abs(x - y) for x, y in zip(a, b)) < SCORE_TOL
            else:
                assert a == b, column


CASES = {
    "triplet": {},
    "n-tuple-margin-scores": dict(num_negatives=5, range_min=2, absolute_margin=0.0, output_format="n-tuple",
                                  output_scores=True),
    "labeled-pair-relative": dict(relative_margin=0.05, max_score=0.9, output_format="labeled-pair"),
    "labeled-list-min-score": dict(min_score=0.3, output_format="labeled-list", output_scores=True),
    "random": dict(sampling_strategy="random", num_negatives=2, range_max=12),
    "include-positives": dict(include_positives=True, num_negatives=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mine_hard_negatives_matches_sentence_transformers(jx_minilm, st_minilm, data, case):
    from sentence_transformers.util import mine_hard_negatives as st_mine

    pairs, dataset, corpus = data
    kwargs = dict(corpus=corpus, verbose=False, **CASES[case])
    random.seed(7)
    ours = util.mine_hard_negatives(dataset, jx_minilm, **kwargs)
    random.seed(7)
    ref = st_mine(dataset, st_minilm, **kwargs)
    assert_same_dataset(ours, ref)
    assert len(ours) > 0
    if case == "triplet":  # a list of pairs gives the same rows, as tuples
        assert util.mine_hard_negatives(pairs, jx_minilm, **kwargs) == list(zip(*ref.to_dict().values()))


def test_cross_encoder_rescoring(jx_minilm, st_minilm, data, make_tiny_cross_encoder):
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from jaxst import CrossEncoder

    folder = make_tiny_cross_encoder()
    _, dataset, corpus = data
    kwargs = dict(corpus=corpus[:200], verbose=False, max_score=0.0, output_format="n-tuple", output_scores=True,
                  num_negatives=2)
    ours = util.mine_hard_negatives(dataset.select(range(40)), jx_minilm, cross_encoder=CrossEncoder(str(folder)),
                                    **kwargs)
    ref = st_mine(dataset.select(range(40)), st_minilm, cross_encoder=STCrossEncoder(str(folder), device="cpu"),
                  **kwargs)
    assert_same_dataset(ours, ref)
    # sentence-transformers 6.3: a given cross-encoder rescores (and so orders) the candidates with no filter set
    kwargs = dict(corpus=corpus[:200], verbose=False, output_format="n-tuple", output_scores=True, num_negatives=2)
    ours = util.mine_hard_negatives(dataset.select(range(40)), jx_minilm, cross_encoder=CrossEncoder(str(folder)),
                                    **kwargs)
    ref = st_mine(dataset.select(range(40)), st_minilm, cross_encoder=STCrossEncoder(str(folder), device="cpu"),
                  **kwargs)
    assert_same_dataset(ours, ref)
    plain = util.mine_hard_negatives(dataset.select(range(40)), jx_minilm, **kwargs)
    assert ours.to_dict()["scores"] != plain.to_dict()["scores"]


@pytest.mark.parametrize("include_positives", [False, True])
def test_a_query_is_never_its_own_negative(jx_minilm, st_minilm, data, include_positives):
    """sentence-transformers 6.3: when the corpus holds a query's own text, it is not among that query's
    candidates (6.2 mined it as the hardest negative); a pair whose positive is its query keeps it as the
    positive when positives are included."""
    from sentence_transformers.util import mine_hard_negatives as st_mine

    pairs, dataset, corpus = data
    queries = [a for a, _ in pairs[:30]]
    rows = dataset.select(range(40)).to_dict()
    rows["query"].append(pairs[40][1])  # a pair whose positive is its own query text
    rows["answer"].append(pairs[40][1])
    from datasets import Dataset

    kwargs = dict(corpus=corpus[:200] + queries, verbose=False, num_negatives=3, include_positives=include_positives)
    ours = util.mine_hard_negatives(Dataset.from_dict(rows), jx_minilm, **kwargs)
    ref = st_mine(Dataset.from_dict(rows), st_minilm, **kwargs)
    assert_same_dataset(ours, ref)
    out = ours.to_dict()
    negatives = [out[c] for c in out if c.startswith("negative")]
    for i, anchor in enumerate(out["query"]):
        if not (include_positives and out["answer"][i] == anchor):  # that one's own text is its positive
            assert anchor not in [n[i] for n in negatives]


def test_bad_input(jx_minilm, data):
    pairs, _, _ = data
    with pytest.raises(ValueError, match="output_format"):
        util.mine_hard_negatives(pairs, jx_minilm, output_format="quadruplet")
    with pytest.raises(ValueError, match="range_min must be smaller"):
        util.mine_hard_negatives(pairs, jx_minilm, range_min=5, range_max=5)
    with pytest.raises(ValueError, match="Cannot mine 9 negatives"):
        util.mine_hard_negatives(pairs, jx_minilm, num_negatives=9, range_max=4)
    with pytest.raises(TypeError, match="list of \\(anchor, positive\\)"):
        util.mine_hard_negatives(["just text"], jx_minilm)
