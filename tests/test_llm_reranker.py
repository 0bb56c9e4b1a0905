"""CrossEncoder for causal-LM rerankers (Qwen3-Reranker style) against sentence-transformers 6.3's CrossEncoder on
seeded tiny random Qwen3ForCausalLM models with what the real ones use: grouped-query attention, q/k RMSNorm,
tied embeddings (0.6B / 4B) or a separate lm_head (8B), a byte-level BPE tokenizer with "yes" and "no" as
single tokens, and a chat template that renders (query, document) pairs as Qwen3-Reranker's prompt.

sentence-transformers builds such a model from a plain *ForCausalLM folder (Transformer with
transformer_task="text-generation" + LogitScore(id("yes"), id("no"))) and saves it with modules.json; both
folder kinds are loaded here, by both libraries."""

from __future__ import annotations

import shutil
import warnings

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import max_abs

import jaxst
from jaxst.cross_encoder import CrossEncoder

TOL = 1e-5
MAX_LENGTH = 224  # the template alone takes ~95 of the tiny tokenizer's tokens; the three long pairs are cut

# Qwen3-Reranker's prompt layout: a system turn, the user turn with <Instruct> (the prompt, rendered as a
# system message, else a default), <Query> and <Document>, then the assistant turn's empty think block after
# which the "yes"/"no" logits are read. The system sentence is shorter than the real one, to leave the
# tiny tokenizer room for the pair.
TEMPLATE = (
    '{%- set instruction = messages | selectattr("role", "eq", "system") | map(attribute="content") | first -%}\n'
    '{%- set query = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}\n'
    '{%- set document = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}\n'
    "<|im_start|>system\n"
    'Answer only "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
    '<Instruct>: {{ instruction or "Find the answer" }}\n'
    "<Query>: {{ query }}\n"
    "<Document>: {{ document }}<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n\n</think>\n\n"
)
# The same prompt from a template written for list-of-parts ("structured") content, with a namespace, a loop
# filter, a filter on the role and a special-token variable.
STRUCTURED_TEMPLATE = (
    '{%- set ns = namespace(instruction="Find the answer") -%}\n'
    "{%- for m in messages if m.role == 'system' %}{% set ns.instruction = m.content[0].text %}{% endfor -%}\n"
    '<|im_start|>system\nAnswer only "yes" or "no".<|im_end|>\n<|im_start|>user\n<Instruct>: {{ ns.instruction }}\n'
    "{%- for m in messages if m.role in ['query', 'document'] %}\n"
    "<{{ m.role | capitalize }}>: {{ m.content[0].text }}\n"
    "{%- endfor %}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n{{ eos_token }}"
)
# A ChatML template that knows only system/user/assistant: a pair's content never reaches the prompt.
CHATML_TEMPLATE = (
    "{%- for m in messages %}{%- if m.role in ['system', 'user', 'assistant'] %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}<|im_start|>assistant\n"
)

LONG = " ".join(["This sentence is repeated to be far longer than the model's maximum sequence length."] * 6)
QUERY = "A man is playing a guitar on stage."
DOCUMENTS = [
    "A man plays the guitar.",
    "A woman is slicing an onion in the kitchen.",
    "",
    "Ein Mann spielt Gitarre auf der Bühne.",
    "一个男人在舞台上弹吉他。",
    "🎸🎤 live music 🎉",
    LONG,
    "What is the capital of France?",
]
PAIRS = [(QUERY, d) for d in DOCUMENTS] + [
    (LONG, "short document"),
    (LONG, LONG + " And a few more words at the end."),
    ("", ""),
    ("Ein Mann isst ein Stück Brot.", "Ein Mann isst Brot."),
    ("日本語の文章です。", "今天天气很好"),
    ("Ünïcödé Straße, München! ¿Qué tal?", "naïve café résumé — ünïcödé"),
]
PROMPT = "Given a web search query, retrieve relevant passages that answer the query"
# Without a chat template the tokenizer's pair encoding adds no special tokens (as Qwen's), so an empty pair
# has no tokens at all, which both libraries refuse (test_an_empty_pair_without_template_is_refused).
TEXT_PAIRS = [pair for pair in PAIRS if pair != ("", "")]

# name -> how the folder is built: tied embeddings?, chat template, saved by sentence-transformers?, LogitScore
MODELS = {
    "chat": dict(tied=True, template=TEMPLATE, saved=True),  # Qwen3-Reranker-0.6B / 4B as saved by ST 6
    "chat-plain": dict(tied=True, template=TEMPLATE, saved=False),  # a bare Qwen3ForCausalLM folder
    "untied": dict(tied=False, template=TEMPLATE, saved=True),  # Qwen3-Reranker-8B: its own lm_head.weight
    "structured": dict(tied=True, template=STRUCTURED_TEMPLATE, saved=False),
    "text": dict(tied=True, template=None, saved=True),  # no chat template: the tokenizer's pair encoding
    "yes-only": dict(tied=True, template=TEMPLATE, saved=True, false_token=False),  # LogitScore(true_token_id)
}


def pairs_of(name: str) -> list[tuple[str, str]]:
    return TEXT_PAIRS if MODELS[name]["template"] is None else PAIRS


def reference(folder, **kwargs):
    from sentence_transformers import CrossEncoder as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(str(folder), device="cpu", **kwargs)


@pytest.fixture(scope="module")
def make_folder(tiny_qwen3_rerankers, tmp_path_factory):
    cache = {}

    def make(name):
        if name in cache:
            return cache[name]
        spec = MODELS[name]
        folder = tmp_path_factory.mktemp(f"reranker-{name}")
        shutil.copytree(tiny_qwen3_rerankers[spec["tied"]], folder, dirs_exist_ok=True)
        if spec["template"] is not None:  # the shared folders have no chat template
            (folder / "chat_template.jinja").write_text(spec["template"], encoding="utf-8")
        if spec["saved"]:
            from sentence_transformers import CrossEncoder as Reference
            from sentence_transformers.base.modules import Transformer
            from sentence_transformers.cross_encoder.modules import LogitScore

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if spec.get("false_token", True):
                    ce = Reference(str(folder), device="cpu", max_length=MAX_LENGTH)
                else:
                    transformer = Transformer(str(folder), transformer_task="text-generation",
                                              max_seq_length=MAX_LENGTH)
                    yes = transformer.tokenizer.convert_tokens_to_ids("yes")
                    ce = Reference(modules=[transformer, LogitScore(true_token_id=yes)], device="cpu")
                out = tmp_path_factory.mktemp(f"reranker-{name}-st")
                ce.save(str(out))
            folder = out
        cache[name] = folder
        return folder

    return make


@pytest.fixture(scope="module")
def models(make_folder):
    """name -> (sentence-transformers CrossEncoder, jaxst CrossEncoder) of one folder."""
    cache = {}

    def get(name):
        if name not in cache:
            folder = make_folder(name)
            kwargs = {} if MODELS[name]["saved"] else {"max_length": MAX_LENGTH}
            cache[name] = (reference(folder, **kwargs), CrossEncoder(folder, **kwargs))
        return cache[name]

    return get


# ------------------------------------------------------------------------------------ prompts and tokens


@pytest.mark.parametrize("name", list(MODELS))
def test_tokens_are_those_of_sentence_transformers(models, name):
    """The same ids per pair: the chat template rendered as transformers renders it, cut to max_length with
    the template's tail written back over the end of a cut row; or the tokenizer's pair encoding."""
    st, jx = models(name)
    pairs = pairs_of(name)
    assert jx.max_seq_length == st.max_seq_length == MAX_LENGTH
    for prompt in (None, PROMPT):
        ref = st.preprocess(pairs, prompt=prompt)
        assert ref["modality"] == ("text" if MODELS[name]["template"] is None else "message")
        assert (ref["attention_mask"][:, 0] == 0).any()  # sentence-transformers pads on the left
        ours = jx.tokenize(pairs, prompt=prompt)
        assert set(ours) == {"input_ids", "attention_mask"} and ours["input_ids"].dtype == np.int32
        lengths = []
        for i, pair in enumerate(pairs):
            want = ref["input_ids"][i][ref["attention_mask"][i].bool()].tolist()
            got = ours["input_ids"][i][ours["attention_mask"][i].astype(bool)].tolist()
            assert got == want, (prompt, pair)
            lengths.append(len(got))
        assert sum(n == MAX_LENGTH for n in lengths) >= 3 and sum(n < MAX_LENGTH for n in lengths) >= 10


# Jinja features chat templates use beyond the ones above: tojson, loop variables, a {% generation %} block,
# raise_exception on a branch not taken, whitespace control and a trailing newline.
FEATURES_TEMPLATE = (
    "{%- for m in messages %}\n"
    "  {%- if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}\n"
    "  <|im_start|>{{ m.role }}{{ loop.index }}/{{ loop.length }}\n"
    "  {%- if m.role == 'assistant' %}{% generation %}{{ m.content | tojson }}{% endgeneration %}\n"
    "  {%- else %}{{ m.content | trim }}{% endif %}{{ '<|im_end|>' if not loop.last }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}\n"
)


@pytest.mark.parametrize("template", [TEMPLATE, STRUCTURED_TEMPLATE, CHATML_TEMPLATE, FEATURES_TEMPLATE])
def test_templates_render_as_transformers_renders_them(make_folder, template):
    from transformers import AutoTokenizer

    from jaxst.io.chat_template import ChatTemplate, special_tokens_map

    folder = make_folder("chat-plain")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ours = ChatTemplate(template, special_tokens_map(folder))
    structured = template is STRUCTURED_TEMPLATE
    for roles in (("system", "query", "document"), ("system", "user", "assistant"), ("user", "assistant")):
        for texts in (("Be brief. ", "Was ist das?", 'Eine "Frage" — 日本語 🎉'), ("", "", "")):
            messages = [{"role": r, "content": [{"type": "text", "text": t}] if structured else t}
                        for r, t in zip(roles, texts)]
            for add in (False, True):
                expected = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                         add_generation_prompt=add)
                assert ours.render(messages, add_generation_prompt=add) == expected


def test_cut_rows_end_with_the_template_tail(models):
    """restore_suffix: a row cut to max_length still ends with the assistant prefix the score is read after,
    as an uncut row does ("<|im_end|>", then the assistant turn)."""
    st, jx = models("chat")
    batch = jx.tokenize([(LONG, LONG), ("short", "pair")])
    ids, lengths = batch["input_ids"], batch["attention_mask"].sum(1)
    assert lengths[0] == MAX_LENGTH > lengths[1]
    uncut = ids[1, : lengths[1]].tolist()
    end_of_turn = len(uncut) - 1 - uncut[::-1].index(st.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    tail = uncut[end_of_turn:]
    assert len(tail) > 5 and ids[0, MAX_LENGTH - len(tail) :].tolist() == tail


def test_a_template_without_query_and_document_roles_is_refused(make_folder, tmp_path):
    """As in sentence-transformers: a template that drops the pair's content would score the bare template."""
    folder = shutil.copytree(make_folder("chat-plain"), tmp_path / "chatml")
    (folder / "chat_template.jinja").write_text(CHATML_TEMPLATE, encoding="utf-8")
    st, jx = reference(folder, max_length=MAX_LENGTH), CrossEncoder(folder, max_length=MAX_LENGTH)
    with pytest.raises(ValueError, match="query'/'document"):
        st.predict(PAIRS[:2])
    with pytest.raises(ValueError, match="query'/'document"):
        jx.predict(PAIRS[:2])


# ------------------------------------------------------------------------------------ predict and rank


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_matches(models, name):
    st, jx = models(name)
    pairs = pairs_of(name)
    assert jx.num_labels == st.num_labels == 1
    assert type(st.activation_fn).__name__ == "Sigmoid" and jx.activation_fn is jax.nn.sigmoid
    expected = st.predict(pairs)
    got = jx.predict(pairs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == expected.shape == (len(pairs),)
    assert max_abs(got, expected) < TOL
    raw = jx.predict(pairs, activation_fn=lambda x: x)  # logit(yes) - logit(no): sigmoid gives the scores
    assert max_abs(jax.nn.sigmoid(raw), got) < 1e-6
    assert np.ptp(raw) > 0.5  # the content reaches the score
    assert np.mean((got > 0.02) & (got < 0.98)) > 0.75  # mostly where the sigmoid is not flat


@pytest.mark.parametrize("name", ["chat", "text", "structured"])
def test_prompt(models, name):
    """A prompt is the system message of the conversation (the template's <Instruct>), or prepended to the
    query when there is no chat template."""
    st, jx = models(name)
    pairs = pairs_of(name)
    expected = st.predict(pairs, prompt=PROMPT)
    assert max_abs(jx.predict(pairs, prompt=PROMPT), expected) < TOL
    assert max_abs(expected, st.predict(pairs)) > 1e-3


@pytest.mark.parametrize("name", ["chat", "untied", "yes-only"])
def test_rank_matches(models, name):
    st, jx = models(name)
    for query in (QUERY, LONG, "一个男人"):
        expected = st.rank(query, DOCUMENTS, return_documents=True)
        got = jx.rank(query, DOCUMENTS, return_documents=True)
        assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in expected]
        assert [r["text"] for r in got] == [r["text"] for r in expected]
        assert max_abs([r["score"] for r in got], [r["score"] for r in expected]) < TOL
    top = jx.rank(QUERY, DOCUMENTS, top_k=3)
    assert [r["corpus_id"] for r in top] == [r["corpus_id"] for r in st.rank(QUERY, DOCUMENTS, top_k=3)]


def test_batch_size_invariance(models):
    """Each pair alone, in batches of every size and mixed with pairs of other lengths scores the same."""
    st, jx = models("chat")
    together = jx.predict(PAIRS, batch_size=64)
    for batch_size in (1, 3, 5):
        assert max_abs(jx.predict(PAIRS, batch_size=batch_size), together) < TOL
    alone = np.array([st.predict([pair])[0] for pair in PAIRS])  # sentence-transformers with no padding at all
    assert max_abs(together, alone) < TOL


# ------------------------------------------------------------------------------------ functional core


def test_apply_on_either_padding_side(models):
    """apply() gives the same scores on jaxst's right-padded batches and sentence-transformers' left-padded ones."""
    st, jx = models("chat")
    ref = st.preprocess(PAIRS)
    left = {"input_ids": ref["input_ids"].numpy().astype(np.int32),
            "attention_mask": ref["attention_mask"].numpy().astype(np.int32)}
    right = jx.tokenize(PAIRS)
    assert (left["attention_mask"][:, 0] == 0).any() and (right["attention_mask"][:, -1] == 0).any()
    expected = st.predict(PAIRS)
    scores = [jax.jit(jx.apply)(jx.params, batch) for batch in (left, right)]
    assert scores[0].shape == scores[1].shape == (len(PAIRS), 1)
    assert max_abs(scores[0], scores[1]) < TOL
    assert max_abs(jax.nn.sigmoid(scores[0][:, 0]), expected) < TOL


@pytest.mark.parametrize("name", ["chat", "untied"])
def test_params_and_no_vocabulary_projection(models, name):
    """The LM head is read only at the scored tokens' rows: no matmul in the scorer has a vocabulary-sized
    output. The tied model's params are the decoder's alone; the untied one's add lm_head."""
    _, jx = models(name)
    assert set(jx.params) == ({"encoder"} if MODELS[name]["tied"] else {"encoder", "lm_head"})
    vocab = jx.params["encoder"]["embed_tokens"]["embedding"].shape[0]
    jaxpr = jax.make_jaxpr(jx.apply)(jx.params, jx.tokenize(PAIRS[:3]))

    def shapes(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield from (tuple(v.aval.shape) for v in eqn.outvars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from shapes(sub)

    dots = list(shapes(jaxpr.jaxpr))
    assert dots and not any(vocab in shape for shape in dots), dots


@pytest.mark.parametrize("name", ["chat", "untied"])
def test_gradients(models, name):
    """A binary cross-entropy loss on apply() gives finite gradients, non-zero on every decoder weight; of an
    untied LM head only the two scored rows get any."""
    st, jx = models(name)
    batch = jx.tokenize(PAIRS[:4])
    labels = jnp.array([1.0, 0.0, 0.0, 1.0])

    def loss(params):
        logits = jx.apply(params, batch)[:, 0]
        return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits)

    grads = jax.grad(loss)(jx.params)
    flat = {jax.tree_util.keystr(path): np.asarray(g) for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]}
    assert all(np.isfinite(g).all() for g in flat.values())
    assert all(np.abs(g).max() > 0 for k, g in flat.items() if "lm_head" not in k), flat.keys()
    if "lm_head" in jx.params:
        head = grads["lm_head"]["embedding"]
        rows = np.flatnonzero(np.abs(np.asarray(head)).sum(1))
        yes, no = (st.tokenizer.convert_tokens_to_ids(t) for t in ("yes", "no"))
        assert sorted(rows.tolist()) == sorted([yes, no])


def test_bfloat16_stays_close(models, make_folder):
    _, jx = models("chat")
    low = CrossEncoder(make_folder("chat"), dtype="bfloat16")
    assert low.dtype == jnp.bfloat16
    raw, raw_low = (m.predict(PAIRS, activation_fn=lambda x: x) for m in (jx, low))
    assert max_abs(low.predict(PAIRS), jx.predict(PAIRS)) < 0.02
    assert max_abs(raw_low, raw) < 0.1
    centered = raw - raw.mean(), raw_low - raw_low.mean()
    assert np.dot(*centered) / np.linalg.norm(centered[0]) / np.linalg.norm(centered[1]) > 0.999  # 0.99991


# ------------------------------------------------------------------------------------ loading and saving


@pytest.mark.parametrize("name", ["chat", "chat-plain", "untied", "text", "yes-only", "structured"])
def test_saved_folder_loads_in_sentence_transformers(models, name, tmp_path):
    st, jx = models(name)
    pairs = pairs_of(name)
    jx.save(tmp_path / name)
    again = reference(tmp_path / name)
    assert [type(m).__name__ for m in again] == ["Transformer", "LogitScore"]
    assert again.max_seq_length == MAX_LENGTH
    assert (again[1].true_token_id, again[1].false_token_id) == (st[1].true_token_id, st[1].false_token_id)
    assert max_abs(again.predict(pairs), jx.predict(pairs)) < TOL
    assert max_abs(again.predict(pairs), st.predict(pairs)) < TOL
    assert max_abs(again.predict(pairs, prompt=PROMPT), st.predict(pairs, prompt=PROMPT)) < TOL
    ours = CrossEncoder(tmp_path / name)
    raw = jx.predict(pairs, activation_fn=lambda x: x)
    assert max_abs(ours.predict(pairs, activation_fn=lambda x: x), raw) < 1e-6


def test_an_empty_pair_without_template_is_refused(models):
    st, jx = models("text")
    with pytest.raises((ValueError, IndexError)):  # a batch of padding only, or of nothing
        st.predict([("", "")])
    with pytest.raises(ValueError, match="padding"):
        st.predict([("", ""), ("a", "b")])
    with pytest.raises(ValueError, match="no tokens"):
        jx.predict([("", "")])


def test_lazy_export_and_errors(make_folder):
    assert jaxst.CrossEncoder is CrossEncoder
    with pytest.raises(ValueError, match="one score"):
        CrossEncoder(make_folder("chat"), num_labels=3)
