"""Chat templates are untrusted code from model folders: a causal-LM reranker's template must render within
limits on time and output, and a long prompt must be cut before it is tokenized whole (issue 30).

Before: a template of two nested range(100000) loops hung ``predict`` forever, and a template rendering
170 MB per pair had the process killed at 24 GB (the rendering was tokenized whole, then truncated). Each
hostile template here has a positive control: the same folder layout with a valid template still scores as
sentence-transformers 6.3 does (1e-5), and a 1 MB document is cut exactly where sentence-transformers cuts it.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import max_abs

import jaxst.io.chat_template as chat_template
from jaxst.cross_encoder import CrossEncoder
from jaxst.io.causal_reranker import PREFIX_CHARS_PER_TOKEN, PairPrompts
from jaxst.io.chat_template import ChatTemplate, TemplateLimitError
from jaxst.io.tokenizer import Tokenizer

MAX_LENGTH = 128
TEMPLATE = (  # Qwen3-Reranker's prompt layout (as tests/test_llm_reranker.py's TEMPLATE)
    '{%- set query = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}\n'
    '{%- set document = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}\n'
    '<|im_start|>system\nAnswer only "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    "<Query>: {{ query }}\n<Document>: {{ document }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
HUGE_OUTPUTS = {  # each would allocate 100 MB to tens of GB
    "repeat": '{{ "x" * 100000000 }}',
    "loop": "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "list": "{{ ([0] * 1000000000) | length }}",
    "power": "{{ 10 ** 100000000 }}",
    "ljust": '{{ "x".ljust(10000000000) }}',
    "percent": '{{ "%10000000000s" % "x" }}',
    "format": '{{ "{:>10000000000}".format("x") }}',
}
WORDS = "A man is playing a guitar on stage while the crowd sings along to every song".split()
PAIRS = [("A man is playing a guitar.", "A man plays the guitar."), ("Wer spielt?", "一个男人在舞台上弹吉他。"),
         ("", "")]


def long_text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    text, size = [], 0
    while size < chars:
        text.append(rng.choice(WORDS) + rng.choice([" ", " ", " ", ", ", ".\n", "  ", " 🎸 ", " 日本語 "]))
        size += len(text[-1])
    return "".join(text)[:chars]


def reference(folder):
    from sentence_transformers import CrossEncoder as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(str(folder), device="cpu", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def folder_with(tiny_qwen3_rerankers, tmp_path_factory):
    """(template, where) -> a reranker folder with that chat template in chat_template.jinja or in
    tokenizer_config.json's "chat_template"."""

    def make(template: str, where: str = "jinja"):
        folder = shutil.copytree(tiny_qwen3_rerankers[True], tmp_path_factory.mktemp("hostile"), dirs_exist_ok=True)
        if where == "jinja":
            (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
        else:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}),
                                                          encoding="utf-8")
        return folder

    return make


@pytest.fixture(scope="module")
def valid(folder_with):
    """The positive control: a valid template in chat_template.jinja, by both libraries."""
    folder = folder_with(TEMPLATE)
    return reference(folder), CrossEncoder(folder, max_length=MAX_LENGTH)


# ------------------------------------------------------------------------------------ time


@pytest.mark.parametrize("where", ["jinja", "tokenizer_config"])
def test_a_template_that_never_ends_is_stopped(folder_with, valid, where, monkeypatch):
    """Two nested range(100000) loops (10^10 empty iterations, no output): a ValueError naming the template
    file and the time limit, after RENDER_SECONDS (the default, 5 s, for chat_template.jinja; 1 s else)."""
    if where != "jinja":
        monkeypatch.setattr(chat_template, "RENDER_SECONDS", 1.0)
    folder = folder_with(NESTED_LOOPS + TEMPLATE, where)
    jx = CrossEncoder(folder, max_length=MAX_LENGTH)
    tracer, start = sys.gettrace(), time.monotonic()
    with pytest.raises(TemplateLimitError, match="time limit") as error:
        jx.predict(PAIRS)
    assert time.monotonic() - start < 20
    assert str(folder / ("chat_template.jinja" if where == "jinja" else "tokenizer_config.json")) in str(error.value)
    # the limit is lifted after the render: the thread's tracer is restored, a valid template scores as ST's
    assert sys.gettrace() is tracer
    st, ok = valid
    assert max_abs(ok.predict(PAIRS), st.predict(PAIRS)) < 1e-5


def test_a_valid_template_in_tokenizer_config_matches(folder_with):
    """Positive control of the tokenizer_config.json case."""
    folder = folder_with(TEMPLATE, "tokenizer_config")
    assert not (folder / "chat_template.jinja").exists()
    st, jx = reference(folder), CrossEncoder(folder, max_length=MAX_LENGTH)
    assert max_abs(jx.predict(PAIRS), st.predict(PAIRS)) < 1e-5


# ------------------------------------------------------------------------------------ output size


@pytest.mark.parametrize("name", list(HUGE_OUTPUTS))
def test_a_template_that_renders_without_bound_is_stopped(folder_with, name):
    """A ValueError naming the template and the output limit, with bounded memory and time: the output is
    counted as it streams, and one-step allocations past the cap are refused before they happen."""
    folder = folder_with(HUGE_OUTPUTS[name] + TEMPLATE)
    jx = CrossEncoder(folder, max_length=MAX_LENGTH)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(TemplateLimitError, match="output cap|output limit") as error:
            jx.tokenize(PAIRS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(folder / "chat_template.jinja") in str(error.value)
    assert peak < 64 * 2**20 and time.monotonic() - start < 20


def test_small_uses_of_the_guarded_operators_render_as_transformers(folder_with):
    """Positive control of the operator checks: small repeats, powers and format widths are untouched."""
    from transformers import AutoTokenizer

    template = ('{{ "=" * 20 }}{{ 3 * "ab" }}{{ [1, 2] * 2 }}{{ 2 ** 10 }}{{ "%05d|%-6s|%.3f" % (7, "a", 2.5) }}'
                '{{ "{:>6}{}".format("x", 1) }}{{ "y".ljust(4) }}|{{ "z" | center(7) }}|' + TEMPLATE)
    folder = folder_with(template)
    messages = [{"role": "query", "content": "q " * 1000}, {"role": "document", "content": "d"}]
    expected = AutoTokenizer.from_pretrained(folder).apply_chat_template(messages, tokenize=False)
    assert ChatTemplate.from_folder(folder).render(messages) == expected


def test_output_cap_grows_with_the_input():
    """The cap is 1 Mi characters plus 4x the given text: a template repeating a 2 MB document thrice renders,
    five times is refused."""
    document = "word " * 400_000
    for times, ok in ((3, True), (5, False)):
        template = ChatTemplate("{% for m in messages %}" + "{{ m.content }}" * times + "{% endfor %}", where="x")
        messages = [{"role": "document", "content": document}]
        if ok:
            assert template.render(messages) == document * times
        else:
            with pytest.raises(TemplateLimitError, match="x rendered more than its output limit"):
                template.render(messages)


# ------------------------------------------------------------------------------------ long documents


def test_a_long_document_is_cut_before_it_is_tokenized(valid):
    """A 1 MB document (and a long query) give sentence-transformers' tokens and scores, while only a prefix
    of ~PREFIX_CHARS_PER_TOKEN x max_seq_length characters of each rendering reaches the tokenizer."""
    st, jx = valid
    pairs = [("A man is playing a guitar.", long_text(1_000_000)), (long_text(300_000, 1), "short"),
             ("Who sings?", long_text(300_000, 2) + "The end.")] + PAIRS
    prompts = jx._pair_prompts
    seen = []

    class Recorder:  # records what the untruncated tokenizer is given
        def __init__(self, backend):
            self.backend = backend

        def encode_batch(self, texts, **kwargs):
            seen.extend(map(len, texts))
            return self.backend.encode_batch(texts, **kwargs)

        def encode(self, text, **kwargs):
            seen.append(len(text))
            return self.backend.encode(text, **kwargs)

    prompts._untruncated = Recorder(prompts._untruncated_backend())
    try:
        ours = jx.tokenize(pairs)
        scores = jx.predict(pairs)
    finally:
        prompts._untruncated = prompts._untruncated.backend
    assert seen and max(seen) <= PREFIX_CHARS_PER_TOKEN * MAX_LENGTH
    ref = st.preprocess(pairs)
    for i in range(len(pairs)):
        want = ref["input_ids"][i][ref["attention_mask"][i].bool()].tolist()
        assert ours["input_ids"][i][ours["attention_mask"][i].astype(bool)].tolist() == want
    assert (ours["attention_mask"].sum(1)[:3] == MAX_LENGTH).all()
    assert max_abs(scores, st.predict(pairs)) < 1e-5


def test_prefix_tokenization_equals_whole_tokenization(tiny_qwen3_rerankers):
    """The first max_seq_length tokens of a settled prefix are those of the whole text, across cut positions
    inside words, whitespace runs, multi-byte characters, special tokens, and one endless word (which never
    settles, so it is tokenized whole)."""
    folder = tiny_qwen3_rerankers[True]
    rng = random.Random(0)
    pieces = [*WORDS, " ", "  ", "\n", "\n\n ", "\t", "日本語", "🎸🎤", "ünïcödé", "<|im_end|>", "<|im_start|>",
              "1234", "!!", "'s", " " * 40, "a" * 50]
    for length in (1, 7, 32):
        tokenizer = Tokenizer.from_folder(folder, length)
        prompts = PairPrompts(tokenizer, ChatTemplate(TEMPLATE), "flat", None, folder)
        texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 400))) for _ in range(150)]
        texts += ["x" * 5000, "日本" * 3000, " " * 5000 + "end", "word " * 2000]
        whole = [list(e.ids) for e in tokenizer.encode_ids(texts, add_special_tokens=False)]
        assert any(len(t) > PREFIX_CHARS_PER_TOKEN * length for t in texts)
        assert prompts.truncated_ids(texts) == whole


def test_scores_with_long_documents_match_in_batches(valid):
    """Long and short rows mixed in one batch, batch sizes 1 and 4: the same scores as sentence-transformers."""
    st, jx = valid
    pairs = [("Who plays?", long_text(200_000, i)) if i % 2 else PAIRS[i % 3] for i in range(6)]
    ref = st.predict(pairs)
    for batch_size in (1, 4):
        assert max_abs(np.asarray(jx.predict(pairs, batch_size=batch_size)), ref) < 1e-5
