"""Every family is thread-safe: calls running at the same time in two threads give exactly what they give one
after the other (issue 30, item 4). The reproduction: ``MultiVectorEncoder.encode_query`` and ``encode_document``
in two threads once saw each other's truncation length through the shared tokenizer (queries of 12-16 token
vectors instead of ``query_length`` 10: 444 wrong rows in 80 rounds)."""

from __future__ import annotations

import shutil
import threading
import warnings

import numpy as np
import pytest
from conftest import TEXTS, build_late_interaction, save_tiny_splade

ROUNDS = 24  # each round starts both calls together; the old race showed in most rounds


def _one_round(calls) -> list:
    barrier = threading.Barrier(len(calls))
    out, errors = [None] * len(calls), []

    def work(i, call):
        try:
            barrier.wait(timeout=30)
            out[i] = call()
        except BaseException as e:  # reported below, never lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a concurrent call did not come back"
    if errors:
        raise errors[0]
    return out


def run_together(calls, rounds: int = ROUNDS) -> list[list]:
    """Each round, start every call at once in its own thread (a barrier lines them up); results per round."""
    return [_one_round(calls) for _ in range(rounds)]


def assert_same_arrays(ours, ref) -> None:
    if isinstance(ref, list):
        assert len(ours) == len(ref)
        for o, r in zip(ours, ref):
            assert_same_arrays(o, r)
        return
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def assert_concurrent_equals_sequential(calls, rounds: int = ROUNDS) -> None:
    sequential = [call() for call in calls]
    for round_results in run_together(calls, rounds):
        for got, want in zip(round_results, sequential):
            assert_same_arrays(got, want)


QUERIES = ["What is the capital of France?", "hi",
           "a query long enough to be truncated at the query length because it goes on and on and on"]
DOCUMENTS = ["Paris is the capital, of France.", "Berlin!", "A woman is playing violin. " * 12]


@pytest.fixture(scope="module")
def multi_vector(tiny_backbone, tmp_path_factory):
    from jaxst import MultiVectorEncoder

    folder = tmp_path_factory.mktemp("threads-mv")
    build_late_interaction(tiny_backbone, folder, query_length=10, document_length=20)
    return MultiVectorEncoder(str(folder))


def test_multi_vector_query_and_document_lengths_do_not_leak(multi_vector):
    queries = multi_vector.encode_query(QUERIES)
    assert max(len(q) for q in queries) == 10  # positive control: the query length holds alone
    assert max(len(d) for d in multi_vector.encode_document(DOCUMENTS)) == 20
    assert_concurrent_equals_sequential([lambda: multi_vector.encode_query(QUERIES),
                                         lambda: multi_vector.encode_document(DOCUMENTS)])


def test_max_seq_length_changed_while_another_thread_encodes(make_tiny_st):
    """Setting max_seq_length swaps in a new tokenizer backend instead of reconfiguring the one a running call
    uses: every concurrent result is that of one length or the other, never an error or a mixture."""
    from jaxst import SentenceTransformer

    model = SentenceTransformer(str(make_tiny_st()))
    texts = [TEXTS[7], TEXTS[4]]
    at_64 = model.encode(texts)
    model.max_seq_length = 16
    at_16 = model.encode(texts)
    assert len(model.tokenize(texts)["input_ids"][0]) == 16 and not np.array_equal(at_16, at_64)  # it takes effect
    model.max_seq_length = 64
    np.testing.assert_array_equal(model.encode(texts), at_64)

    def flip():
        for _ in range(20):
            model.max_seq_length = 16
            model.max_seq_length = 64

    for _, encoded in run_together([flip, lambda: model.encode(texts)], rounds=8):
        assert np.array_equal(encoded, at_64) or np.array_equal(encoded, at_16)


def test_sentence_transformer_prompts_in_two_threads(make_tiny_st):
    from jaxst import SentenceTransformer

    model = SentenceTransformer(str(make_tiny_st(prompts={"query": "query: ", "doc": "passage: "},
                                                 include_prompt=False)))
    texts = [t for t in TEXTS if t]
    assert_concurrent_equals_sequential([lambda: model.encode(texts, prompt_name="query"),
                                         lambda: model.encode(texts[::-1], prompt_name="doc", batch_size=3),
                                         lambda: model.encode(texts[:4], output_value="token_embeddings")])


def test_cross_encoder_predict_and_rank_in_two_threads(make_tiny_cross_encoder):
    from jaxst import CrossEncoder

    model = CrossEncoder(str(make_tiny_cross_encoder(max_length=24)))
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
    assert_concurrent_equals_sequential([
        lambda: model.predict(pairs),
        lambda: model.predict(pairs[::-1], batch_size=2),
        lambda: [h["score"] for h in model.rank(QUERIES[0], DOCUMENTS)],
    ])


@pytest.fixture(scope="module")
def splade(tmp_path_factory, minilm_folder):
    from jaxst import SparseEncoder

    folder = save_tiny_splade(tmp_path_factory, minilm_folder, "threads-splade")
    return SparseEncoder(str(folder))


def test_sparse_encoder_in_two_threads(splade):
    def dense(rows):
        return np.asarray(splade.encode(rows, convert_to_sparse_tensor=False))

    assert_concurrent_equals_sequential([lambda: dense(QUERIES), lambda: dense(DOCUMENTS),
                                         lambda: np.asarray(splade.encode(DOCUMENTS, max_active_dims=8,
                                                                          convert_to_sparse_tensor=False))])


def test_causal_lm_reranker_in_two_threads(tiny_qwen3_rerankers, tmp_path):
    """A chat-template reranker renders and tokenizes per call (cached suffixes, a deadline tracer per thread)."""
    from jaxst import CrossEncoder

    folder = shutil.copytree(tiny_qwen3_rerankers[True], tmp_path / "reranker")
    (folder / "chat_template.jinja").write_text(
        '{%- for m in messages %}<|im_start|>{{ m["role"] }}\n{{ m["content"] }}<|im_end|>\n{% endfor -%}'
        "<|im_start|>assistant\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CrossEncoder(str(folder), max_length=24)
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS]
    assert_concurrent_equals_sequential([lambda: model.predict(pairs),
                                         lambda: model.predict(pairs[::-1], batch_size=2)], rounds=8)
