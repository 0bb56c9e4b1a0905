"""ContrastiveTensionLoss (and its in-batch-negatives form) and DenoisingAutoEncoderLoss (TSDAE) against
sentence-transformers 6.3 on a tiny BERT: the loss of a collated batch and the gradient of every trained param
(the model's, the copy ``model1``'s, ``logit_scale``'s, the decoder's) within 1e-5, the decoder tied and untied;
ContrastiveTensionDataLoader's and DenoisingAutoEncoderDataset's output (seeded) equal to 6.3's; ``fit`` trains
each loss."""

from __future__ import annotations

import importlib.util
import random
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import read_stsb, unique_sentences

import jaxst
from jaxst import losses as jl
from jaxst import training
from jaxst.io.weights import torch_key

TOL = 1e-5
SENTENCES = unique_sentences(read_stsb("stsb-en-train.csv")[:40])


@pytest.fixture(scope="module")
def folder(make_tiny_st):
    return make_tiny_st(pooling_mode="mean")


def load_st(path):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SentenceTransformer(str(path), device="cpu")


def torch_features(st, examples, n_texts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [st.tokenize([e[i] for e in examples]) for i in range(n_texts)]


def flat(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def from_torch(template: dict, state_dict: dict) -> dict:
    """``template``'s tree (jaxst names) filled from a PyTorch state dict."""
    out: dict = {}
    for path, _ in flat(template):
        key, transpose = torch_key(path)
        array = state_dict[key].detach().numpy()
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jnp.asarray(array.T if transpose else array)
    return out


def assert_grads(ours: dict, module: torch.nn.Module, prefix: str = "") -> None:
    """Every gradient leaf of ``ours`` equals the grad of ``module``'s param of the same PyTorch name, within 1e-5
    of the tensor's scale (a gradient entry sums many float32 products); each tensor is checked."""
    named = dict(module.named_parameters(remove_duplicate=False))
    moved = 0.0
    for path, leaf in flat(ours):
        key, transpose = torch_key(path)
        param = named[prefix + key]
        assert param.grad is not None, key
        want = param.grad.numpy().T if transpose else param.grad.numpy()
        got = np.asarray(leaf)
        assert got.shape == want.shape, key
        assert float(np.abs(got - want).max()) < TOL * max(1.0, float(np.abs(want).max())), key
        moved = max(moved, float(np.abs(want).max()))
    assert moved > 1e-3, "the oracle's gradients should not vanish"


def value_and_grads(jx, loss, examples):
    batch = training.collate(jx, examples)
    fn = training.make_loss_fn(jx, loss, dropout=False)
    value, grads = jax.jit(jax.value_and_grad(fn))(training.trainable_params(jx, loss), batch)
    return float(value), grads


def perturb(module: torch.nn.Module, seed: int, keep=lambda name: True) -> None:
    """Random offsets on the params ``keep`` selects: copies that start equal (model1, a decoder loaded from the
    encoder's folder) differ, and zero biases or unit LayerNorm gains cannot hide a mis-mapped tensor."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if keep(name):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


# --------------------------------------------------------------------------------------- ContrastiveTension


def test_contrastive_tension_loss_equals_sentence_transformers(folder):
    """With the loader's labels; without labels, both libraries label a pair 1 when its texts tokenize alike."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    random.seed(3)
    examples = next(iter(jl.ContrastiveTensionDataLoader(SENTENCES, batch_size=8, pos_neg_ratio=4)))
    assert {e[2] for e in examples} == {0, 1}
    st = load_st(folder)
    st_loss = st_losses.ContrastiveTensionLoss(st).eval()
    perturb(st_loss.model1, seed=0)
    features = torch_features(st, examples, 2)
    with torch.no_grad():  # 6.3's labels from the tokens are the loader's
        assert float(st_loss(features, None)) == float(st_loss(features, torch.tensor([float(e[2]) for e in examples])))
    value = st_loss(features, torch.tensor([float(e[2]) for e in examples]))
    value.backward()

    jx = jaxst.SentenceTransformer(folder)
    loss = jl.ContrastiveTensionLoss(jx)
    assert set(loss.params) == {"model1"}
    loss.params = {"model1": from_torch(loss.params["model1"], {f"encoder.{k}": v for k, v in
                                                                   st_loss.model1[0].auto_model.state_dict().items()})}
    ours, grads = value_and_grads(jx, loss, examples)
    assert abs(ours - float(value.detach())) < TOL * max(1.0, abs(float(value.detach()))), (ours, float(value.detach()))
    assert_grads(grads["encoder"], st[0].auto_model)  # model2: the model itself
    assert_grads(grads["loss"]["model1"]["encoder"], st_loss.model1[0].auto_model)
    unlabelled = training.collate(jx, [(a, b) for a, b, _ in examples])
    assert unlabelled["labels"] is None
    assert np.asarray(jl.unsupervised.identical_rows(*unlabelled["features"])).tolist() == \
        [float(e[2]) for e in examples]


def test_identical_rows_compares_real_tokens_only():
    a = {"input_ids": np.array([[1, 5, 2, 0], [1, 6, 2, 0], [1, 7, 2, 0]]),
         "attention_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]])}
    b = {"input_ids": np.array([[1, 5, 2, 0, 0], [1, 6, 6, 2, 0], [1, 8, 2, 0, 0]]),
         "attention_mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])}
    assert np.asarray(jl.unsupervised.identical_rows(a, b)).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("scale", [5.0])  # not the default: the scale is read
def test_contrastive_tension_in_batch_negatives_equals_sentence_transformers(folder, scale):
    from sentence_transformers.sentence_transformer import losses as st_losses

    examples = [(s,) for s in SENTENCES[:8]]
    st = load_st(folder)
    st_loss = st_losses.ContrastiveTensionLossInBatchNegatives(st, scale=scale).eval()
    perturb(st_loss.model1, seed=1)
    value = st_loss(torch_features(st, examples, 1), None)
    value.backward()

    jx = jaxst.SentenceTransformer(folder)
    loss = jl.ContrastiveTensionLossInBatchNegatives(jx, scale=scale)
    assert abs(loss.scale - scale) < 1e-4
    loss.params = {**loss.params, "model1": from_torch(loss.params["model1"], {
        f"encoder.{k}": v for k, v in st_loss.model1[0].auto_model.state_dict().items()})}
    assert float(loss.params["logit_scale"]) == float(st_loss.logit_scale.detach())
    ours, grads = value_and_grads(jx, loss, examples)
    assert abs(ours - float(value.detach())) < TOL, (ours, float(value.detach()))
    assert_grads(grads["encoder"], st[0].auto_model)
    assert_grads(grads["loss"]["model1"]["encoder"], st_loss.model1[0].auto_model)
    assert abs(float(grads["loss"]["logit_scale"]) - float(st_loss.logit_scale.grad)) < TOL


# --------------------------------------------------------------------------------------- DenoisingAutoEncoder


def dae_pairs():
    originals = SENTENCES[10:18]
    return [(" ".join(s.split()[::2]), s) for s in originals]


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_denoising_auto_encoder_loss_equals_sentence_transformers(folder, tiny_bert_base, tie):
    from sentence_transformers.sentence_transformer import losses as st_losses

    examples = dae_pairs()
    st = load_st(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        st_loss = st_losses.DenoisingAutoEncoderLoss(st, decoder_name_or_path=None if tie else str(tiny_bert_base),
                                                     tie_encoder_decoder=tie).eval()
    # tied: only the decoder's own weights (the rest are the encoder's); untied: all of them
    perturb(st_loss.decoder, seed=2, keep=lambda n: not tie or "crossattention" in n or n.startswith("cls."))
    features = torch_features(st, examples, 2)
    value = st_loss(features, None)
    value.backward()

    jx = jaxst.SentenceTransformer(folder)
    # the target as collated is padded past 6.3's longest text: the causal decoder's real positions never see the
    # padding after them, and padding is not predicted
    assert training.collate(jx, examples)["features"][1]["input_ids"].shape[1] > features[1]["input_ids"].shape[1]
    loss = jl.DenoisingAutoEncoderLoss(jx, decoder_name_or_path=None if tie else tiny_bert_base,
                                       tie_encoder_decoder=tie)
    own = dict(flat(loss.params["decoder"]))
    assert any("crossattention" in p for path in own for p in map(str, path))
    # tied: the embeddings, self-attention and feed-forward are the encoder's (none of the loss's own)
    assert any(path[:2] == ("bert", "embeddings") or "intermediate" in path for path in own) != tie
    assert len(loss.tied) == (5 + 2 * 16 if tie else 0)  # 5 embedding tensors, 16 per layer (not the pooler)
    if not tie:  # read from the folder where it has them; the cross-attention and the LM head start as transformers'
        table = own[("bert", "embeddings", "word_embeddings", "embedding")]
        assert np.array_equal(np.asarray(table), np.asarray(jx.params["encoder"]["embeddings"]["word_embeddings"][
            "embedding"]))
        assert "cls.predictions.transform.dense.weight" in loss.missing
    loss.load_decoder_state_dict(st_loss.decoder.state_dict())
    ours, grads = value_and_grads(jx, loss, examples)
    assert abs(ours - float(value.detach())) < TOL, (ours, float(value.detach()))
    assert_grads(grads["encoder"], st[0].auto_model)  # tied: the encoder's and the decoder's uses together
    assert_grads(grads["loss"]["decoder"], st_loss.decoder)


# --------------------------------------------------------------------------------------- data formats


def test_contrastive_tension_data_loader_equals_sentence_transformers():
    from sentence_transformers.sentence_transformer.losses import ContrastiveTensionDataLoader

    sentences = [f"sentence number {i}" for i in range(60)]
    random.seed(11)
    ref_loader = ContrastiveTensionDataLoader(list(sentences), batch_size=8, pos_neg_ratio=4)
    ref = [[(e.texts[0], e.texts[1], e.label) for e in batch] for _ in range(2) for batch in ref_loader]
    random.seed(11)
    loader = jl.ContrastiveTensionDataLoader(sentences, batch_size=8, pos_neg_ratio=4)
    ours = [batch for _ in range(2) for batch in loader]
    assert len(loader) == len(ref_loader) == 4
    assert ours == ref
    assert [label for _, _, label in ours[0]] == [1, 0, 0, 0, 1, 0, 0, 0]
    assert sentences == [f"sentence number {i}" for i in range(60)]  # the caller's list is not shuffled
    with pytest.raises(ValueError, match="divisible by the pos_neg_ratio"):
        jl.ContrastiveTensionDataLoader(sentences, batch_size=10, pos_neg_ratio=4)


@pytest.fixture
def fake_nltk(monkeypatch):
    """nltk stood in for by whitespace tokenizing and joining (enough to compare the deletion itself), installed
    for both libraries: neither is run with the real nltk here, which this environment does not have."""
    nltk = types.ModuleType("nltk")
    nltk.word_tokenize = str.split
    tokenize = types.ModuleType("nltk.tokenize")
    treebank = types.ModuleType("nltk.tokenize.treebank")

    class TreebankWordDetokenizer:
        def detokenize(self, tokens):
            return " ".join(tokens)

    treebank.TreebankWordDetokenizer = TreebankWordDetokenizer
    for name, module in (("nltk", nltk), ("nltk.tokenize", tokenize), ("nltk.tokenize.treebank", treebank)):
        monkeypatch.setitem(sys.modules, name, module)
    import sentence_transformers.sentence_transformer.datasets.denoising_auto_encoder as st_dae

    monkeypatch.setattr(st_dae, "is_nltk_available", lambda: True)
    return st_dae


def test_denoising_auto_encoder_dataset_equals_sentence_transformers(fake_nltk):
    sentences = SENTENCES[:20] + ["one", ""]
    ref_dataset = fake_nltk.DenoisingAutoEncoderDataset(sentences)
    np.random.seed(5)
    ref = [ref_dataset[i].texts for i in range(len(ref_dataset))]
    dataset = jl.DenoisingAutoEncoderDataset(sentences)
    np.random.seed(5)
    ours = [list(dataset[i]) for i in range(len(dataset))]
    assert len(dataset) == len(ref_dataset) == len(sentences)
    assert ours == ref
    assert all(original == s for (_, original), s in zip(ours, sentences))
    assert any(damaged != original for damaged, original in ours)  # words were deleted
    np.random.seed(6)  # another deletion ratio: most texts lose every word but the one kept
    ref_deleted = [fake_nltk.DenoisingAutoEncoderDataset.delete(s, 0.9) for s in sentences]
    np.random.seed(6)
    assert [jl.DenoisingAutoEncoderDataset.delete(s, 0.9) for s in sentences] == ref_deleted


@pytest.mark.skipif(importlib.util.find_spec("nltk") is not None, reason="nltk is installed: no fallback to check")
def test_denoising_auto_encoder_dataset_without_nltk_is_an_import_error():
    from sentence_transformers.sentence_transformer.datasets import DenoisingAutoEncoderDataset

    with pytest.raises(ImportError):
        DenoisingAutoEncoderDataset(["a sentence"])
    with pytest.raises(ImportError, match="nltk"):
        jl.DenoisingAutoEncoderDataset(["a sentence"])
    dataset = jl.DenoisingAutoEncoderDataset(["a sentence"], noise_fn=str.upper)  # a noise of one's own needs none
    assert dataset[0] == ("A SENTENCE", "a sentence")


# --------------------------------------------------------------------------------------- training


def _moved(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in
               zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("case", ["ct", "ct-in-batch", "dae"])
def test_fit_trains_the_model_and_the_loss_params(folder, case):
    jx = jaxst.SentenceTransformer(folder)
    if case == "ct":
        random.seed(0)
        loader = jl.ContrastiveTensionDataLoader(SENTENCES, batch_size=8, pos_neg_ratio=4)
        examples, loss = [e for batch in loader for e in batch][:8], jl.ContrastiveTensionLoss(jx)
    elif case == "ct-in-batch":
        examples, loss = [(s,) for s in SENTENCES[:8]], jl.ContrastiveTensionLossInBatchNegatives(jx)
    else:
        examples, loss = dae_pairs(), jl.DenoisingAutoEncoderLoss(jx)
    model_before = jax.tree.map(np.array, jx.params)
    loss_before = jax.tree.map(np.array, loss.params)
    history = training.fit(jx, examples, loss, batch_size=8, learning_rate=1e-3, warmup_steps=0,
                           show_progress_bar=False)
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert set(jx.params) == set(model_before)  # the model's params only; the loss keeps its own
    assert _moved(jx.params, model_before) > 1e-4
    assert _moved(loss.params, loss_before) > 1e-4


def test_bad_input_is_a_clear_error(folder):
    jx = jaxst.SentenceTransformer(folder)
    with pytest.raises(TypeError, match="SentenceTransformer"):
        jl.ContrastiveTensionLoss(None)
    with pytest.raises(ValueError, match="StaticEmbedding"):
        jl.DenoisingAutoEncoderLoss(types.SimpleNamespace(params={}, hf_config=None))
    with pytest.raises(ValueError, match="BERT encoders"):
        jl.DenoisingAutoEncoderLoss(types.SimpleNamespace(params={}, hf_config={"model_type": "mpnet"}))
    with pytest.raises(ValueError, match="decoder_name_or_path"):
        jl.DenoisingAutoEncoderLoss(jx, tie_encoder_decoder=False)
    with pytest.raises(ValueError, match="scale must be positive"):
        jl.ContrastiveTensionLossInBatchNegatives(jx, scale=0.0)
    reps = jnp.ones((2, 32))
    with pytest.raises(ValueError, match="needs labels"):
        jl.ContrastiveTensionLoss(jx)([reps, reps])
    dae = jl.DenoisingAutoEncoderLoss(jx)
    with pytest.raises(ValueError, match="target_ids"):
        dae([reps])
    with pytest.raises(ValueError, match="encoder_params"):
        dae([reps], target_ids=np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match="hidden size"):
        dae([jnp.ones((2, 16))], target_ids=np.ones((2, 4), np.int32), encoder_params=jx.params["encoder"])
    fn = training.make_loss_fn(jx, dae, dropout=False)
    params = training.trainable_params(jx, dae)
    with pytest.raises(ValueError, match="unpacked"):
        fn(params, training.collate(jx, dae_pairs(), pack=True))
    with pytest.raises(ValueError, match="2 text columns"):
        fn(params, training.collate(jx, [(s,) for s in SENTENCES[:4]]))
