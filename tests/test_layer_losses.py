"""Every layer of an encoder: the hidden states each architecture returns with ``all_layers`` (transformers'
``output_hidden_states``), the WeightedLayerPooling module that mixes them, and the losses that train each
layer's sentence embeddings (AdaptiveLayerLoss, Matryoshka2dLoss) against sentence-transformers 6.3: the same
values and parameter gradients (within 1e-5) through jaxst.training, and ``fit``."""

from __future__ import annotations

import random
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import assert_same_gradients, max_abs, read_stsb
from flax import nnx

import jaxst
from jaxst import losses as jl
from jaxst import training

TOL = 1e-5
ROWS = read_stsb("stsb-en-train.csv")[:40]
TEXTS = [r[0] for r in ROWS[:6]] + ["a", "A much longer sentence, with more words in it than the others have."]


def st_model(folder):
    from sentence_transformers import SentenceTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(str(folder), device="cpu")
    model.eval()  # no dropout on either side
    return model


@pytest.mark.parametrize("base", ["tiny_bert_base", "tiny_mpnet_base", "tiny_qwen3_base"])
def test_all_layers_are_transformers_hidden_states(base, request):
    """``all_layers`` gives transformers' ``hidden_states``: the embedding output, each layer's, and the last
    one after the final norm (Qwen3's); the default output is unchanged (the last of them)."""
    from transformers import AutoModel

    folder = request.getfixturevalue(base)
    jx = jaxst.SentenceTransformer(folder)
    batch = jx.tokenize(TEXTS)
    encoder = nnx.merge(jx.graphdef, jx.params).encoder
    states = encoder(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                     None if "token_type_ids" not in batch else jnp.asarray(batch["token_type_ids"]), all_layers=True)
    last = encoder(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                   None if "token_type_ids" not in batch else jnp.asarray(batch["token_type_ids"]))
    hf = AutoModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        ref = hf(**{k: torch.tensor(v) for k, v in batch.items()}, output_hidden_states=True).hidden_states
    assert len(states) == len(ref) == hf.config.num_hidden_layers + 1
    mask = batch["attention_mask"].astype(bool)
    for ours, theirs in zip(states, ref):  # within 1e-5 of each state's scale (Qwen3's reach |x| ~ 10 unnormed)
        theirs = theirs.numpy()[mask]
        assert max_abs(np.asarray(ours)[mask], theirs) < TOL * max(1.0, float(np.abs(theirs).max()))
    assert max_abs(last, states[-1]) == 0.0


# --------------------------------------------------------------------------------- WeightedLayerPooling

@pytest.fixture(scope="module")
def weighted_folders(tmp_path_factory, tiny_bert_base):
    """Two sentence-transformers folders with a WeightedLayerPooling (random layer weights, layer_start 1)
    before mean pooling: one whose Transformer outputs its hidden states (so the module mixes them), one whose
    does not (so it changes nothing, as in sentence-transformers)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling, WeightedLayerPooling

    folders = {}
    for hidden in (True, False):
        torch.manual_seed(3)
        transformer = Transformer(str(tiny_bert_base), max_seq_length=64,
                                  config_kwargs={"output_hidden_states": hidden})
        weights = torch.nn.Parameter(torch.rand(2) + 0.5)
        mixer = WeightedLayerPooling(32, num_hidden_layers=2, layer_start=1, layer_weights=weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SentenceTransformer(modules=[transformer, mixer, Pooling(32, "mean")], device="cpu")
            folder = tmp_path_factory.mktemp(f"weighted-{hidden}")
            model.save(str(folder))
        folders[hidden] = folder
    return folders


@pytest.mark.parametrize("hidden", [True, False])
def test_weighted_layer_pooling_encodes_as_sentence_transformers(weighted_folders, hidden, tmp_path):
    folder = weighted_folders[hidden]
    st = st_model(folder)
    jx = jaxst.SentenceTransformer(folder)
    ref = st.encode(TEXTS, convert_to_numpy=True)
    assert max_abs(jx.encode(TEXTS), ref) < TOL
    last_layer_only = st_model(folder)
    last_layer_only[0].auto_model.config.output_hidden_states = False
    mixed = max_abs(ref, last_layer_only.encode(TEXTS, convert_to_numpy=True))
    assert (mixed > 1e-3) if hidden else (mixed == 0.0)  # the module mixes the layers only with hidden states on
    jx.save(tmp_path / "saved")  # and saves as it loaded: the layer weights included
    assert max_abs(st_model(tmp_path / "saved").encode(TEXTS, convert_to_numpy=True), ref) < TOL


def test_weighted_layer_pooling_refuses_a_mismatched_config(weighted_folders, tmp_path):
    import json
    import shutil

    folder = tmp_path / "bad"
    shutil.copytree(weighted_folders[True], folder)
    (config_file,) = folder.glob("*WeightedLayerPooling/config.json")
    config = json.loads(config_file.read_text())
    config["num_hidden_layers"] = 5  # the encoder has 2
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="layer_weights: checkpoint"):
        jaxst.SentenceTransformer(folder)


# ------------------------------------------------------------------------- AdaptiveLayer / Matryoshka2d

@pytest.fixture(scope="module")
def folder(make_tiny_st):
    return make_tiny_st(pooling_mode="mean", dense=[(24, torch.nn.Tanh(), True)])


def grad_pairs(grads):
    encoder = grads["encoder"]
    return [(encoder["encoder"]["layer"][0]["output"]["dense"]["kernel"], "encoder.layer.0.output.dense.weight", True),
            (encoder["embeddings"]["word_embeddings"]["embedding"], "embeddings.word_embeddings.weight", False),
            (grads["heads"][0]["linear"]["kernel"], "linear.weight", True)]


def assert_same_as_sentence_transformers(folder, make_st_loss, jx_loss, columns, labels=None, pack=False):
    st = st_model(folder)
    jx = jaxst.SentenceTransformer(folder)
    features = [st.tokenize(c) for c in columns]
    st.zero_grad()
    ref = make_st_loss(st)(features, None if labels is None else torch.tensor(labels))
    ref.backward()
    examples = [(*texts, label) for texts, label in zip(zip(*columns), labels)] if labels is not None \
        else list(zip(*columns))
    batch = training.collate(jx, examples, pack=pack)
    value, grads = jax.jit(jax.value_and_grad(training.make_loss_fn(jx, jx_loss, dropout=False)))(jx.params, batch)
    assert abs(float(value) - float(ref)) < TOL * max(1.0, abs(float(ref))), (float(value), float(ref))
    assert_same_gradients(st, grad_pairs(grads))


def pairs(n=8, offset=0):
    return [r[0] for r in ROWS[offset:offset + n]], [r[1] for r in ROWS[offset:offset + n]]


@pytest.mark.parametrize("options, pack", [
    ({"n_layers_per_step": -1}, False),
    ({"n_layers_per_step": -1, "layer_weighting": "linear", "last_layer_weight": 2.0, "prior_layers_weight": 0.5,
      "kl_div_weight": 3.0, "kl_temperature": 0.7}, True),
    ({"n_layers_per_step": -1, "layer_weighting": "log", "kl_temperature": 0.0}, False),
])
def test_adaptive_layer_loss_equals_sentence_transformers(folder, options, pack):
    """Every prior layer used (n_layers_per_step=-1, so no random draw), MNRL inside: the same value and
    gradients, padded or packed columns."""
    from sentence_transformers import losses

    assert_same_as_sentence_transformers(
        folder, lambda st: losses.AdaptiveLayerLoss(st, losses.MultipleNegativesRankingLoss(st), **options),
        jl.AdaptiveLayerLoss(None, jl.MultipleNegativesRankingLoss(), **options), pairs(), pack=pack)


def test_adaptive_layer_loss_with_labels_and_a_callable_weighting(folder):
    from sentence_transformers import losses

    scores = [r[2] / 5.0 for r in ROWS[:8]]
    weighting = lambda i: 0.25 + i  # noqa: E731
    assert_same_as_sentence_transformers(
        folder, lambda st: losses.AdaptiveLayerLoss(st, losses.CoSENTLoss(st), n_layers_per_step=-1,
                                                    layer_weighting=weighting),
        jl.AdaptiveLayerLoss(None, jl.CoSENTLoss(), n_layers_per_step=-1, layer_weighting=weighting),
        pairs(), labels=scores)


def test_matryoshka_2d_loss_equals_sentence_transformers(folder):
    """Every layer and every dimension (no random draw): the same value and gradients."""
    from sentence_transformers import losses

    dims, weights = (24, 12, 4), (1.0, 0.5, 2.0)
    assert_same_as_sentence_transformers(
        folder, lambda st: losses.Matryoshka2dLoss(st, losses.MultipleNegativesRankingLoss(st), list(dims),
                                                   matryoshka_weights=list(weights), n_layers_per_step=-1,
                                                   n_dims_per_step=-1),
        jl.Matryoshka2dLoss(None, jl.MultipleNegativesRankingLoss(), dims, matryoshka_weights=weights,
                            n_layers_per_step=-1, n_dims_per_step=-1), pairs())


def test_one_random_layer_per_step_is_one_of_the_fixed_choices(folder, monkeypatch):
    """n_layers_per_step=1 (the default) uses one prior layer drawn from the key; its value is 6.3's with
    ``random.sample`` returning that layer, and both layers are drawn over a few keys."""
    from sentence_transformers import losses

    st = st_model(folder)
    jx = jaxst.SentenceTransformer(folder)
    columns = pairs()
    features = [st.tokenize(c) for c in columns]
    refs = {}
    for layer in (0, 1, 2):  # 2 BERT layers: the embedding output (0) and layer 1 are the prior ones
        monkeypatch.setattr(random, "sample", lambda population, k, layer=layer: [layer])
        with torch.no_grad():
            refs[layer] = float(losses.AdaptiveLayerLoss(st, losses.MultipleNegativesRankingLoss(st))(features, None))
    monkeypatch.undo()
    loss_fn = jax.jit(training.make_loss_fn(jx, jl.AdaptiveLayerLoss(jx, jl.MultipleNegativesRankingLoss()),
                                            dropout=False))
    batch = training.collate(jx, list(zip(*columns)))
    seen = set()
    for seed in range(8):
        value = float(loss_fn(jx.params, batch, jax.random.key(seed)))
        (layer,) = [k for k in (0, 1) if abs(value - refs[k]) < TOL * max(1.0, abs(refs[k]))]
        seen.add(layer)
    assert seen == {0, 1}


def test_fit_trains_with_matryoshka_2d(folder, tmp_path):
    """fit with the defaults (one random layer and one random dimension per step) changes the model."""
    jx = jaxst.SentenceTransformer(folder)
    examples = list(zip(*pairs(16, offset=8)))
    before = jx.encode(TEXTS)
    for loss in (jl.Matryoshka2dLoss(jx, jl.MultipleNegativesRankingLoss(), (24, 8)),):
        jaxst.training.fit(jx, examples, loss, epochs=1, batch_size=8, learning_rate=1e-3, warmup_steps=0,
                           show_progress_bar=False)
    assert max_abs(jx.encode(TEXTS), before) > 1e-4


def test_layer_losses_refuse_what_they_cannot_train(folder, weighted_folders):
    with pytest.raises(TypeError, match="wraps a jaxst loss"):
        jl.AdaptiveLayerLoss(None, "MultipleNegativesRankingLoss")
    with pytest.raises(ValueError, match="layer_weighting"):
        jl.AdaptiveLayerLoss(None, jl.MultipleNegativesRankingLoss(), layer_weighting="square")
    with pytest.raises(ValueError, match="not compatible with CachedMultipleNegativesRankingLoss"):
        jl.AdaptiveLayerLoss(None, jl.CachedMultipleNegativesRankingLoss(mini_batch_size=4))
    jx = jaxst.SentenceTransformer(weighted_folders[True])
    loss_fn = training.make_loss_fn(jx, jl.AdaptiveLayerLoss(None, jl.MultipleNegativesRankingLoss(),
                                                             n_layers_per_step=-1), dropout=False)
    with pytest.raises(ValueError, match="WeightedLayerPooling"):
        loss_fn(jx.params, training.collate(jx, list(zip(*pairs(4)))))
    with pytest.raises(TypeError, match="layers, batch, dim"):
        jl.AdaptiveLayerLoss(None, jl.MultipleNegativesRankingLoss())(jnp.zeros((3, 4, 8)))
