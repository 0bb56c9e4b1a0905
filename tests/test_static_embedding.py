"""Static embedding models (sentence-transformers' StaticEmbedding: one vector per token, a text is the mean of its
tokens' vectors) in jaxst.SentenceTransformer, against sentence-transformers 6.3 on tiny models it builds and saves:
the same embeddings, folders in every layout it reads (model2vec's tables folded), a save it reads back, and
training (value and gradients of a step, and fit)."""

from __future__ import annotations

import json
import shutil
import warnings

import jax
import numpy as np
import pytest
import torch
from conftest import read_stsb, unique_sentences

import jaxst
from jaxst import losses as jl
from jaxst import training

TOL = 1e-6
SENTENCES = unique_sentences(read_stsb("stsb-en-test.csv"))[:300] + ["", "   ", "word " * 400, "Ünïcödé ✓ 東京"]


def st_static_model(minilm_folder, heads: str, dim: int = 64, seed: int = 0):
    """A sentence-transformers static model over all-MiniLM-L6-v2's tokenizer: a random table (scaled so that
    vectors differ clearly), then ``heads`` ("normalize", "dense" or "")."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    torch.manual_seed(seed)
    static = StaticEmbedding(Tokenizer.from_file(str(minilm_folder / "tokenizer.json")), embedding_dim=dim)
    modules = [static] + {"normalize": [Normalize()], "dense": [Dense(dim, 32, activation_function=torch.nn.Tanh())],
                          "": []}[heads]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(modules=modules, device="cpu")


@pytest.fixture(scope="module")
def static_folders(minilm_folder, tmp_path_factory):
    """heads -> (folder sentence-transformers saved, its model)."""
    out = {}
    for heads in ("normalize", "dense", ""):
        st = st_static_model(minilm_folder, heads)
        folder = tmp_path_factory.mktemp(f"static-{heads or 'bare'}")
        st.save(str(folder))
        out[heads] = (folder, st)
    return out


@pytest.mark.parametrize("heads", ["normalize", "dense", ""])
def test_embeddings_equal_sentence_transformers(static_folders, heads):
    """Empty and whitespace-only texts (an empty bag: zeros), a text past the tokenizer's saved truncation, and
    a prompt, at two batch sizes."""
    folder, st = static_folders[heads]
    model = jaxst.SentenceTransformer(folder)
    assert model.get_embedding_dimension() == st.get_embedding_dimension()
    for kwargs in ({"batch_size": 32}, {"batch_size": 7, "prompt": "query: "}):
        ref = st.encode(SENTENCES, **kwargs)
        ours = model.encode(SENTENCES, **kwargs)
        assert ours.shape == ref.shape
        assert float(np.abs(ours - ref).max()) < TOL
    if heads != "dense":  # an empty bag is the zero vector (normalized: still zero), as in PyTorch's EmbeddingBag
        assert not np.abs(model.encode([""])).any()


def test_tokenizes_without_special_tokens_and_keeps_the_saved_truncation(static_folders):
    folder, st = static_folders["normalize"]
    model = jaxst.SentenceTransformer(folder)
    batch = model.tokenize(["a text"])
    assert batch["input_ids"][0].tolist() == st[0].tokenizer.encode("a text", add_special_tokens=False).ids
    saved = json.loads((folder / "tokenizer.json").read_text())["truncation"]
    assert model.max_seq_length == (saved["max_length"] if saved else 1 << 24)
    long = model.tokenize(["word " * 400])
    assert long["input_ids"].shape[1] == len(st.preprocess(["word " * 400])["input_ids"])


def test_saved_folder_is_read_back_by_sentence_transformers(static_folders, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder, st = static_folders["dense"]
    model = jaxst.SentenceTransformer(folder)
    model.save(tmp_path / "saved")
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert modules[0]["path"] == "" and modules[0]["type"].endswith("StaticEmbedding")
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert float(np.abs(reloaded.encode(SENTENCES[:50]) - st.encode(SENTENCES[:50])).max()) == 0.0
    again = jaxst.SentenceTransformer(tmp_path / "saved")
    assert float(np.abs(again.encode(SENTENCES[:50]) - model.encode(SENTENCES[:50])).max()) == 0.0


def test_older_layout_and_model2vec_tables_load_as_sentence_transformers_reads_them(static_folders, tmp_path):
    """A folder with its StaticEmbedding in ``0_StaticEmbedding`` (sentence-transformers 3-5), and a model2vec
    table (``embeddings`` with a token ``mapping`` and per-token ``weights``), which both libraries fold."""
    from safetensors.numpy import save_file
    from sentence_transformers import SentenceTransformer

    folder, _ = static_folders["normalize"]
    old = tmp_path / "old-layout"
    shutil.copytree(folder, old)
    (old / "0_StaticEmbedding").mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        shutil.move(old / name, old / "0_StaticEmbedding" / name)
    modules = json.loads((old / "modules.json").read_text())
    modules[0]["path"] = "0_StaticEmbedding"
    (old / "modules.json").write_text(json.dumps(modules))

    m2v = tmp_path / "model2vec"
    shutil.copytree(folder, m2v)
    rng = np.random.default_rng(3)
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    rows = rng.normal(size=(1000, 48)).astype(np.float32)
    save_file({"embeddings": rows, "mapping": rng.integers(0, 1000, size=len(vocab)).astype(np.int64),
               "weights": rng.uniform(0.1, 2.0, size=len(vocab)).astype(np.float32)}, str(m2v / "model.safetensors"))
    for path in (old, m2v):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = SentenceTransformer(str(path), device="cpu")
        ours = jaxst.SentenceTransformer(path).encode(SENTENCES[:100])
        assert float(np.abs(ours - st.encode(SENTENCES[:100])).max()) < TOL


def test_bad_folders_and_int8_are_clear_errors(static_folders, tmp_path):
    from safetensors.numpy import save_file

    folder, _ = static_folders["normalize"]
    with pytest.raises(ValueError, match="a StaticEmbedding model has none"):
        jaxst.SentenceTransformer(folder, dtype="int8")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    save_file({"table": np.zeros((4, 4), np.float32)}, str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match="holds 'embedding.weight'"):
        jaxst.SentenceTransformer(broken)
    model = jaxst.SentenceTransformer(folder, dtype="bfloat16")
    assert model.dtype == np.dtype(jax.numpy.bfloat16)
    low, full = model.encode(SENTENCES[:40]), jaxst.SentenceTransformer(folder).encode(SENTENCES[:40])
    assert 0 < float(np.abs(low - full).max()) < 2e-2  # cast for real, and still close


def test_train_step_equals_sentence_transformers(static_folders):
    """The static-retrieval-mrl recipe's loss (MultipleNegativesRankingLoss inside MatryoshkaLoss) on one batch:
    value and the table's gradient (only the rows of the batch's tokens are non-zero) equal 6.3's."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    folder, _ = static_folders[""]
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    rows = read_stsb("stsb-en-train.csv")[:12]
    pairs = [(a, b) for a, b, _ in rows]
    st_loss = st_losses.MatryoshkaLoss(st, st_losses.MultipleNegativesRankingLoss(st), [64, 32, 16])
    features = [st.preprocess([p[i] for p in pairs]) for i in range(2)]
    value = st_loss(features, None)
    value.backward()
    model = jaxst.SentenceTransformer(folder)
    loss = jl.MatryoshkaLoss(model, jl.MultipleNegativesRankingLoss(), [64, 32, 16])
    for pack in (False, True):
        ours, grads = jax.jit(jax.value_and_grad(training.make_loss_fn(model, loss, dropout=False)))(
            model.params, training.collate(model, pairs, pack=pack))
        assert abs(float(ours) - float(value.detach())) < 1e-5
        want = st[0].embedding.weight.grad.numpy()
        got = np.asarray(grads["encoder"]["embedding"]["embedding"])
        assert float(np.abs(got - want).max()) < 1e-5 * max(1.0, float(np.abs(want).max()))
        assert np.count_nonzero(np.abs(want).sum(1)) > 50  # the batch's tokens moved


def test_fit_trains_a_static_model_and_saves_it(static_folders, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder, _ = static_folders["normalize"]
    model = jaxst.SentenceTransformer(folder)
    before = model.encode(SENTENCES[:20])
    pairs = [(a, b) for a, b, s in read_stsb("stsb-en-train.csv")[:256] if s >= 3.0][:96]
    loss = jl.MatryoshkaLoss(model, jl.MultipleNegativesRankingLoss(), [64, 32])
    loss_fn = jax.jit(training.make_loss_fn(model, loss, dropout=False))
    batch = training.collate(model, pairs)
    start = float(loss_fn(model.params, batch))
    history = training.fit(model, pairs, loss, batch_size=32, epochs=3, learning_rate=0.05, warmup_steps=0,
                           show_progress_bar=False)
    assert len(history["loss"]) == 9 and float(loss_fn(model.params, batch)) < 0.8 * start
    after = model.encode(SENTENCES[:20])
    assert float(np.abs(after - before).max()) > 1e-3
    model.save(tmp_path / "trained")
    st = SentenceTransformer(str(tmp_path / "trained"), device="cpu")
    assert float(np.abs(st.encode(SENTENCES[:20]) - after).max()) < TOL


# ---------------------------------------------------------------------------- built from model2vec


LONG = "word " * 600  # past model2vec's 512-token truncation, which both keep
M2V_TEXTS = SENTENCES + [LONG]


@pytest.fixture(scope="module")
def model2vec_folders(minilm_folder, tmp_path_factory):
    """layout -> a model2vec folder (model2vec's own save_pretrained) over all-MiniLM-L6-v2's tokenizer: "plain"
    (a row per token) and "quantized" (vocabulary-quantized: rows picked by a token mapping, per-token weights)."""
    from model2vec import StaticModel
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_folder / "tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    rng = np.random.default_rng(5)
    models = {
        "plain": StaticModel(rng.normal(size=(vocab, 24)).astype(np.float32), tokenizer),
        "quantized": StaticModel(rng.normal(size=(700, 24)).astype(np.float32), tokenizer,
                                 token_mapping=rng.integers(0, 700, size=vocab),
                                 weights=rng.uniform(0.1, 2.0, size=vocab).astype(np.float32)),
    }
    out = {}
    for name, model in models.items():
        out[name] = tmp_path_factory.mktemp(f"model2vec-{name}")
        model.save_pretrained(out[name])
    return out


@pytest.mark.parametrize("layout", ["plain", "quantized"])
def test_from_model2vec_equals_sentence_transformers(model2vec_folders, layout, tmp_path):
    """6.3's ``StaticEmbedding.from_model2vec`` in a SentenceTransformer, and jaxst's module saved and loaded: the
    same table, tokenizer (no padding, model2vec's 512-token truncation) and embeddings."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStaticEmbedding

    from jaxst.modules.static_embedding import StaticEmbedding

    folder = model2vec_folders[layout]
    st = SentenceTransformer(modules=[STStaticEmbedding.from_model2vec(str(folder))], device="cpu")
    static = StaticEmbedding.from_model2vec(folder)
    assert np.array_equal(np.asarray(static.embedding.embedding[...]), st[0].embedding.weight.detach().numpy())
    assert static.tokenizer.padding is None and static.tokenizer.truncation["max_length"] == 512
    assert static.save(tmp_path / "jx") == (tmp_path / "jx").resolve()
    model = jaxst.SentenceTransformer(tmp_path / "jx")
    assert model.max_seq_length == 512 and model.get_embedding_dimension() == 24
    ref, ours = st.encode(M2V_TEXTS), model.encode(M2V_TEXTS)
    assert ours.shape == ref.shape and float(np.abs(ours - ref).max()) < TOL
    assert model.tokenize([LONG])["input_ids"].shape == (1, 512)  # truncated where model2vec truncates
    reread = SentenceTransformer(str(tmp_path / "jx"), device="cpu")  # the saved folder, as 6.3 reads it
    assert float(np.abs(reread.encode(M2V_TEXTS) - ref).max()) < TOL


def test_from_model2vec_gives_a_hub_name_to_model2vecs_loader(model2vec_folders, monkeypatch):
    """A name that is no local folder goes to model2vec's ``StaticModel.from_pretrained`` as given (offline here:
    the loader is replaced by one that records the name and reads a local folder)."""
    import model2vec

    from jaxst.modules.static_embedding import StaticEmbedding

    load, asked = model2vec.StaticModel.from_pretrained, []

    def from_pretrained(path, *args, **kwargs):
        asked.append(path)
        return load(model2vec_folders["quantized"])

    monkeypatch.setattr(model2vec.StaticModel, "from_pretrained", from_pretrained)
    static = StaticEmbedding.from_model2vec("minishlab/potion-base-8M")
    assert asked == ["minishlab/potion-base-8M"]
    assert np.array_equal(np.asarray(static.embedding.embedding[...]),
                          np.asarray(StaticEmbedding.from_model2vec(model2vec_folders["quantized"])
                                     .embedding.embedding[...]))


@pytest.fixture(scope="module")
def small_vocab_bert(minilm_folder, tmp_path_factory):
    """A seeded random 2-layer BERT (hidden 32) with all-MiniLM-L6-v2's tokenizer cut to its first 3,000 ids
    (special and [unusedN] tokens, single characters and the commonest words): distill runs one forward pass per
    token, so a small vocabulary keeps it fast."""
    from transformers import BertConfig, BertModel

    vocab_size = 3000
    folder = tmp_path_factory.mktemp("small-vocab-bert")
    tokenizer = json.loads((minilm_folder / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {t: i for t, i in tokenizer["model"]["vocab"].items() if i < vocab_size}
    assert all(t["id"] < vocab_size for t in tokenizer["added_tokens"])
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    lines = (minilm_folder / "vocab.txt").read_text().splitlines()[:vocab_size]
    (folder / "vocab.txt").write_text("\n".join(lines) + "\n")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_folder / name, folder / name)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
              ).eval().save_pretrained(folder)
    return folder


def test_from_distillation_equals_sentence_transformers(small_vocab_bert, tmp_path):
    """model2vec's distill of a small BERT folder (offline: a local folder asks the Hub nothing), called by 6.3
    and by jaxst with the same arguments: the same table bit for bit (distill is deterministic: a forward pass
    per token in eval mode, PCA by an eigendecomposition), embeddings within 1e-5. model2vec 0.10's distill
    takes neither ``apply_zipf`` nor ``use_subword``: both drop them with a warning."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStaticEmbedding

    from jaxst.modules.static_embedding import StaticEmbedding

    options = {"pca_dims": 16, "sif_coefficient": 1e-3}
    st = SentenceTransformer(modules=[STStaticEmbedding.from_distillation(str(small_vocab_bert), **options)],
                             device="cpu")
    with pytest.warns(UserWarning, match="takes no 'apply_zipf', 'use_subword'"):
        static = StaticEmbedding.from_distillation(small_vocab_bert, **options)
    table = np.asarray(static.embedding.embedding[...])
    assert table.shape == (st[0].num_embeddings, 16) and table.shape[0] < 2100  # the ~990 [unusedN] removed
    assert np.array_equal(table, st[0].embedding.weight.detach().numpy())
    static.save(tmp_path / "distilled")
    model = jaxst.SentenceTransformer(tmp_path / "distilled")
    texts = M2V_TEXTS[:100] + ["", LONG]
    ref, ours = st.encode(texts), model.encode(texts)
    assert float(np.abs(ref).max()) > 0.1 and float(np.abs(ours - ref).max()) < 1e-5


def test_model2vec_missing_and_a_module_without_tokenizer_are_clear_errors(monkeypatch, tmp_path):
    import sys

    from jaxst.modules.static_embedding import StaticEmbedding

    monkeypatch.setitem(sys.modules, "model2vec.distill", None)  # an import of it raises ImportError
    with pytest.raises(ImportError, match=r"`pip install model2vec\[distill\]`"):
        StaticEmbedding.from_distillation("any-model")
    monkeypatch.setitem(sys.modules, "model2vec", None)
    with pytest.raises(ImportError, match=r"`pip install model2vec`"):
        StaticEmbedding.from_model2vec("any-model")
    with pytest.raises(ValueError, match="has no tokenizer"):
        StaticEmbedding(4, 2).save(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_a_built_static_embedding_saves_into_a_new_folder_only(model2vec_folders, tmp_path):
    from jaxst.modules.static_embedding import StaticEmbedding

    static = StaticEmbedding.from_model2vec(model2vec_folders["plain"])
    (tmp_path / "empty").mkdir()
    static.save(tmp_path / "empty")  # an empty folder is a new one
    before = (tmp_path / "empty" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="not an empty folder"):
        static.save(tmp_path / "empty")
    assert (tmp_path / "empty" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["model.safetensors", "modules.json",
                                                                     "tokenizer.json"]
