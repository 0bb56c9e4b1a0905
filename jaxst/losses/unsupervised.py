"""Losses trained on unlabeled sentences, and the data formats they read (sentence-transformers 6.3's):

    ContrastiveTensionLoss                  (s1, s2[, label]) pairs from ContrastiveTensionDataLoader: a copy of the
                                            model (``model1``) embeds s1, the model s2; BCE of their dot product
                                            against "the same sentence" (1) or not (0)
    ContrastiveTensionLossInBatchNegatives  single texts: the copy and the model each embed them; InfoNCE both ways
                                            over the batch, scaled by a trained ``logit_scale``
    DenoisingAutoEncoderLoss (TSDAE)        (damaged, original) pairs from DenoisingAutoEncoderDataset: a BERT
                                            decoder (``jaxst.models.bert_decoder``) rebuilds the original's tokens
                                            from the damaged one's embedding

They run the model themselves (``runs_model``): ``jaxst.training`` calls ``loss.batch_loss(embed, params, batch,
dropout_rng)`` with the batch's tokenized columns and ``embed(params, column, rng)``, the model's training forward
under any params, as 6.3's losses call ``model1`` / ``model2`` / ``encoder`` and the decoder on the features. What
they train besides the model is their ``Loss.params`` (``jaxst.training.trainable_params``), as 6.3's trainer hands
its optimizer every parameter of the loss module: the copy ``model1`` (and ``logit_scale``), the decoder's weights
that are not tied to the encoder. The model itself is what is kept (6.3's ``model2`` / ``encoder``).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.checks import callable_arg, positive_int
from jaxst.losses.base import Loss, embedding_columns, example_labels
from jaxst.models import model_type
from jaxst.models.bert import BertConfig
from jaxst.models.bert_decoder import decoder_module, decoder_params
from jaxst.similarity import cos_sim


def bce_with_logits_sum(logits, labels) -> jax.Array:
    """torch's ``BCEWithLogitsLoss(reduction="sum")``: sum of max(x, 0) - x y + log(1 + exp(-|x|))."""
    return jnp.sum(jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def identical_rows(a: dict, b: dict) -> jax.Array:
    """(B,) 1.0 where two tokenized columns hold the same text (the same real tokens), else 0.0: the labels 6.3's
    ContrastiveTensionLoss derives from the features when none are given."""
    ids_a, ids_b = jnp.asarray(a["input_ids"]), jnp.asarray(b["input_ids"])
    mask_a, mask_b = a.get("attention_mask"), b.get("attention_mask")
    t = max(ids_a.shape[1], ids_b.shape[1])
    pad = lambda x: jnp.pad(jnp.asarray(x), ((0, 0), (0, t - x.shape[1])))  # noqa: E731  (one length to compare)
    ids_a, ids_b = pad(ids_a), pad(ids_b)
    if mask_a is None or mask_b is None:
        return jnp.all(ids_a == ids_b, axis=1).astype(jnp.float32)
    mask_a, mask_b = pad(mask_a).astype(bool), pad(mask_b).astype(bool)
    same = jnp.all(mask_a == mask_b, axis=1) & jnp.all(jnp.where(mask_a, ids_a == ids_b, True), axis=1)
    return same.astype(jnp.float32)


def _model_copy(model, name: str):
    """An independent copy of the model's params (6.3's ``copy.deepcopy(model)``: ``model1``)."""
    params = getattr(model, "params", None)
    if params is None:
        raise TypeError(f"{name} needs the SentenceTransformer it trains (its params are copied as model1), "
                        f"got {type(model).__name__}")
    return jax.tree.map(jnp.array, params)


def _columns(batch: dict, n: int, name: str) -> list[dict]:
    features = batch["features"]
    if isinstance(features, dict) or len(features) != n:
        got = "a single pair batch" if isinstance(features, dict) else f"{len(features)}"
        raise ValueError(f"{name} takes {n} text column{'s' if n > 1 else ''} per example, got {got}")
    return list(features)


def _two_keys(rng) -> tuple:
    return (None, None) if rng is None else tuple(jax.random.split(rng))


class ContrastiveTensionLoss(Loss):
    """Contrastive Tension: pairs (s1, s2) that are the same sentence (label 1) or two different ones (0); a copy
    of the model, made here (``params["model1"]``, trained beside the model), embeds s1 and the model s2, and the
    loss is the summed binary cross-entropy of each pair's dot product against its label. ``labels`` are the
    examples' (``ContrastiveTensionDataLoader`` gives them); without any, a pair is labelled 1 when both texts
    tokenize to the same tokens, as 6.3 does. ``loss([reps_1, reps_2], labels)`` takes embeddings you computed."""

    runs_model = True

    def __init__(self, model):
        self.params = {"model1": _model_copy(model, type(self).__name__)}

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        name = type(self).__name__
        columns = embedding_columns(embeddings, 2, name)
        if len(columns) != 2:
            raise ValueError(f"{name} takes pairs: 2 embedding columns (model1's, the model's), got {len(columns)}")
        labels = example_labels(labels, columns[0].shape[0], name)
        scores = jnp.sum(columns[0] * columns[1], axis=-1)  # (B,) dot products
        return bce_with_logits_sum(scores, labels.astype(scores.dtype))

    def batch_loss(self, embed: Callable, params, batch: dict, dropout_rng=None) -> jax.Array:
        """The loss of a collated batch: the first column through ``model1``, the second through the model."""
        first, second = _columns(batch, 2, type(self).__name__)
        rng_1, rng_2 = _two_keys(dropout_rng)
        reps_1 = embed(self.params["model1"], first, rng_1)
        reps_2 = embed(params, second, rng_2)
        labels = batch.get("labels")
        return self([reps_1, reps_2], identical_rows(first, second) if labels is None else labels)


class ContrastiveTensionLossInBatchNegatives(Loss):
    """Contrastive Tension with in-batch negatives: each text is embedded by the copy (``params["model1"]``) and
    by the model; ``similarity_fct`` (cos_sim) of every pair times exp(``params["logit_scale"]``), log(``scale``) at
    the start and trained, and cross-entropy towards the same text, both ways, averaged. Examples are single
    texts, ``(text,)``. ``loss([copy's, model's])`` takes embeddings you computed."""

    runs_model = True

    def __init__(self, model, scale: float = 20.0, similarity_fct: Callable = cos_sim):
        if not scale > 0:
            raise ValueError(f"scale must be positive (its log is the trained logit_scale), got {scale}")
        callable_arg("similarity_fct", similarity_fct)
        self.similarity_fct = similarity_fct
        self.params = {"model1": _model_copy(model, type(self).__name__),
                       "logit_scale": jnp.asarray(np.log(scale), jnp.float32)}

    @property
    def scale(self) -> float:
        """The current scale, exp(logit_scale) (what 6.3's ``get_config_dict`` reports)."""
        return float(jnp.exp(self.params["logit_scale"]))

    def __call__(self, embeddings, labels=None, rng=None) -> jax.Array:
        name = type(self).__name__
        columns = embedding_columns(embeddings, 2, name)
        if len(columns) != 2:
            raise ValueError(f"{name} takes 2 embedding columns (model1's, the model's), got {len(columns)}")
        scores = self.similarity_fct(columns[0], columns[1]) * jnp.exp(self.params["logit_scale"])  # (B, B)
        rows = jnp.arange(scores.shape[0])

        def cross_entropy(s):
            return -jnp.mean(jax.nn.log_softmax(s.astype(jnp.float32), axis=1)[rows, rows])

        return (cross_entropy(scores) + cross_entropy(scores.T)) / 2

    def batch_loss(self, embed: Callable, params, batch: dict, dropout_rng=None) -> jax.Array:
        """The loss of a collated batch of single texts, embedded by ``model1`` and by the model."""
        (column,) = _columns(batch, 1, type(self).__name__)
        rng_1, rng_2 = _two_keys(dropout_rng)
        return self([embed(self.params["model1"], column, rng_1), embed(params, column, rng_2)])


def _flat(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _put(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


class DenoisingAutoEncoderLoss(Loss):
    """TSDAE: the model embeds the damaged sentence; a BERT decoder (``BertLMHeadModel`` with cross-attention,
    ``jaxst.models.bert_decoder``), reading that embedding as its one encoder state, predicts each next token of
    the original sentence; the loss is the mean cross-entropy over the original's tokens (padding ignored).

    The decoder is loaded from ``decoder_name_or_path`` (a transformers BERT folder or Hub name), or, with
    ``tie_encoder_decoder`` (the default; the name is then ignored, with a warning, as in 6.3), from the model's
    own Transformer folder, with its embeddings, self-attention and feed-forward weights tied to the encoder's:
    they are the model's params, read inside the loss (so both uses train them). Weights the checkpoint lacks (the
    cross-attention; the LM head unless it is a masked-LM checkpoint) start as transformers initializes them,
    drawn from ``seed``; ``missing`` lists them. ``params["decoder"]`` holds the decoder's untied weights
    (transformers' names; ``load_decoder_state_dict`` loads a PyTorch ``BertLMHeadModel``'s). Examples are
    (damaged, original) pairs; the original's tokenization, padded as collated, is the target. BERT encoders and
    decoders only (what 6.3's docs and tests use); others are refused."""

    runs_model = True

    def __init__(self, model, decoder_name_or_path: str | None = None, tie_encoder_decoder: bool = True,
                 seed: int = 0):
        name = type(self).__name__
        if getattr(model, "params", None) is None:
            raise TypeError(f"{name} needs the SentenceTransformer it trains, got {type(model).__name__}")
        hf = getattr(model, "hf_config", None)
        if hf is None:
            raise ValueError(f"{name} is not compatible with a SentenceTransformer model based on a StaticEmbedding.")
        if model_type(hf) != "bert":
            raise ValueError(f"{name} in jaxst supports BERT encoders (model_type 'bert'), whose layers its BERT "
                             f"decoder can tie; this model's is {model_type(hf)!r}")
        if decoder_name_or_path is None and not tie_encoder_decoder:
            raise ValueError("Must indicate the decoder_name_or_path argument when tie_encoder_decoder=False!")
        if tie_encoder_decoder and decoder_name_or_path:
            warnings.warn("When tie_encoder_decoder=True, the decoder_name_or_path will be invalid.", stacklevel=2)
        decoder_hf, state_dict = model.transformer_checkpoint(None if tie_encoder_decoder else decoder_name_or_path)
        if model_type(decoder_hf) != "bert":
            raise ValueError(f"{name} in jaxst decodes with BERT (BertLMHeadModel); the decoder "
                             f"{decoder_name_or_path!r} is {model_type(decoder_hf)!r}")
        if decoder_hf.get("tie_word_embeddings", True) is False:
            raise ValueError(f"the decoder {decoder_name_or_path!r} does not tie its LM head to its word embeddings "
                             "(tie_word_embeddings: false); jaxst's BERT decoder reads the tied table")
        cfg = BertConfig.from_hf(decoder_hf)
        if cfg.hidden_size != hf.get("hidden_size"):
            raise ValueError(f"Hidden sizes do not match! encoder {hf.get('hidden_size')}, decoder {cfg.hidden_size}")
        self.decoder_name_or_path = decoder_name_or_path
        self.tie_encoder_decoder = bool(tie_encoder_decoder)
        self.decoder_config = cfg
        self.decoder_graphdef, _ = nnx.split(decoder_module(cfg), nnx.Param)
        self.pad_token_id = int(model.tokenizer.pad_id)
        self.tied: tuple = ()  # (decoder path, encoder path) of each tied weight
        if self.tie_encoder_decoder:
            encoder = {tuple(map(str, path)): path for path in _flat(model.params["encoder"])}
            _, abstract = nnx.split(decoder_module(cfg), nnx.Param)
            self.tied = tuple((path, encoder[tuple(map(str, path[1:]))]) for path, _ in nnx.to_flat_state(abstract)
                              if path[0] == "bert" and tuple(map(str, path[1:])) in encoder)
        own, self.missing = decoder_params(cfg, state_dict, seed=seed, skip={d for d, _ in self.tied},
                                           initializer_range=float(decoder_hf.get("initializer_range", 0.02)))
        self.params = {"decoder": own}

    def load_decoder_state_dict(self, state_dict) -> None:
        """Take the decoder's own weights from a PyTorch ``BertLMHeadModel`` state dict (numpy or torch tensors
        by name); the tied ones stay the model's. Every untied weight must be there."""
        arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in
                  state_dict.items()}
        own, missing = decoder_params(self.decoder_config, arrays, skip={d for d, _ in self.tied})
        if missing:
            raise ValueError(f"the state dict lacks decoder weights {missing}")
        self.params = {"decoder": own}

    def decoder_tree(self, decoder: dict, encoder_params: dict | None) -> dict:
        """The decoder's whole params: its own (``decoder``) and, when tied, the encoder's in their places."""
        if not self.tied:
            return decoder
        if encoder_params is None:
            raise ValueError("the decoder is tied to the encoder: pass encoder_params=model.params['encoder']")
        tree = jax.tree.map(lambda x: x, decoder)  # new dicts, the same arrays
        for decoder_path, encoder_path in self.tied:
            _put(tree, decoder_path, _get(encoder_params, encoder_path))
        return tree

    def reconstruction_loss(self, embeddings, target_ids, encoder_params=None, encoder_mask=None,
                            dropout_rng=None) -> jax.Array:
        """Mean cross-entropy of the decoder's next-token predictions over ``target_ids`` (B, T): it reads
        ``target_ids[:, :-1]`` and the (B, H) ``embeddings`` as one encoder state each (``encoder_mask`` (B, 1),
        all ones by default), and predicts ``target_ids[:, 1:]``; padding tokens are not predicted."""
        reps = jnp.asarray(embeddings)
        if reps.ndim != 2 or reps.shape[-1] != self.decoder_config.hidden_size:
            raise ValueError(f"the decoder reads (batch, {self.decoder_config.hidden_size}) sentence embeddings, got "
                             f"shape {reps.shape}: the model's embeddings must have the decoder's hidden size")
        target_ids = jnp.asarray(target_ids)
        if target_ids.ndim != 2 or target_ids.shape[0] != reps.shape[0] or target_ids.shape[1] < 2:
            raise ValueError(f"target_ids must be (batch, tokens >= 2) with batch {reps.shape[0]}, got "
                             f"{target_ids.shape}")
        decoder = nnx.merge(self.decoder_graphdef, self.decoder_tree(self.params["decoder"], encoder_params))
        inputs, targets = target_ids[:, :-1], target_ids[:, 1:].astype(jnp.int32)
        logits = decoder(inputs, reps[:, None], encoder_mask, dropout_rng=dropout_rng)  # (B, T - 1, V)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
        keep = targets != self.pad_token_id
        return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.sum(keep)

    def __call__(self, embeddings, labels=None, rng=None, *, target_ids=None, encoder_params=None) -> jax.Array:
        """From embeddings you computed: ``[damaged sentences' embeddings]``, the originals' ``target_ids`` and,
        when tied, ``encoder_params`` (``model.params["encoder"]``); ``rng``: the decoder's dropout key."""
        columns = embedding_columns(embeddings, 1, type(self).__name__)
        if target_ids is None:
            raise ValueError(f"{type(self).__name__} rebuilds the original sentences: pass target_ids, their (B, T) "
                             "token ids (jaxst.training passes the batch's second column)")
        return self.reconstruction_loss(columns[0], target_ids, encoder_params, None, rng)

    def batch_loss(self, embed: Callable, params, batch: dict, dropout_rng=None) -> jax.Array:
        """The loss of a collated batch of (damaged, original) pairs."""
        source, target = _columns(batch, 2, type(self).__name__)
        encoder_rng, decoder_rng = _two_keys(dropout_rng)
        reps = embed(params, source, encoder_rng)
        mask = source.get("attention_mask")
        return self.reconstruction_loss(reps, target["input_ids"], params["encoder"],
                                        None if mask is None else mask[:, :1], decoder_rng)


class ContrastiveTensionDataLoader:
    """Batches of ``batch_size`` pairs in 6.3's pattern: every ``pos_neg_ratio``-th pair (the first of each group)
    is a sentence with itself, label 1; the others are two different sentences, label 0. Each epoch shuffles the
    sentences (Python's ``random``, as 6.3) and takes them in order, so a sentence appears at most once per epoch;
    ``len`` is the number of full batches. Yields lists of ``(s1, s2, label)`` tuples (6.3: InputExamples; passed
    through ``collate_fn`` when it is set). 6.3 shuffles the list it was given; this shuffles its own copy, in
    the same order. For ``fit``, which draws its own batches from a flat list of examples:
    ``fit(model, [e for batch in loader for e in batch], ContrastiveTensionLoss(model), batch_size=...)``."""

    def __init__(self, sentences: Sequence[str], batch_size: int, pos_neg_ratio: int = 8):
        positive_int("batch_size", batch_size)
        positive_int("pos_neg_ratio", pos_neg_ratio)
        self.sentences = list(sentences)
        self.batch_size = batch_size
        self.pos_neg_ratio = pos_neg_ratio
        self.collate_fn = None
        if batch_size % pos_neg_ratio != 0:
            raise ValueError(f"ContrastiveTensionDataLoader was loaded with a pos_neg_ratio of {pos_neg_ratio} and a "
                             f"batch size of {batch_size}. The batch size must be divisible by the pos_neg_ratio")

    def __iter__(self):
        random.shuffle(self.sentences)
        sentences = iter(self.sentences)
        for _ in range(len(self)):
            batch = []
            for pair_idx in range(self.batch_size):
                s1 = next(sentences)
                label = int(pair_idx % self.pos_neg_ratio == 0)
                s2 = s1 if label else next(sentences)
                batch.append((s1, s2, label))
            yield self.collate_fn(batch) if self.collate_fn is not None else batch

    def __len__(self) -> int:
        sentences_per_batch = 2 * self.batch_size - self.batch_size // self.pos_neg_ratio
        return len(self.sentences) // sentences_per_batch


NLTK_MISSING = ("DenoisingAutoEncoderDataset's default noise (DenoisingAutoEncoderDataset.delete) tokenizes with "
                "nltk, which is not installed: pip install nltk (and its punkt data), or pass a noise_fn of your own")


def _require_nltk() -> None:
    try:
        import nltk  # noqa: F401
    except ImportError:
        raise ImportError(NLTK_MISSING) from None


class DenoisingAutoEncoderDataset:
    """``(noise_fn(sentence), sentence)`` pairs for DenoisingAutoEncoderLoss (6.3: InputExamples with those
    texts); the noise is drawn each time an item is read. ``noise_fn`` defaults to ``delete``: nltk's
    ``word_tokenize``, each word deleted with probability 0.6 (numpy's global generator, as 6.3), at least one kept,
    and nltk's Treebank detokenizer. The default needs nltk (an ImportError here without it, as 6.3 raises);
    6.3 refuses to build the dataset without nltk whatever the ``noise_fn``, this only for the default."""

    def __init__(self, sentences: Sequence[str], noise_fn: Callable[[str], str] | None = None):
        if noise_fn is None:
            _require_nltk()
            noise_fn = DenoisingAutoEncoderDataset.delete
        callable_arg("noise_fn", noise_fn)
        self.sentences = sentences
        self.noise_fn = noise_fn

    def __getitem__(self, item):
        sentence = self.sentences[item]
        return self.noise_fn(sentence), sentence

    def __len__(self) -> int:
        return len(self.sentences)

    @staticmethod
    def delete(text: str, del_ratio: float = 0.6) -> str:
        """``text`` with each of its nltk words deleted with probability ``del_ratio`` (at least one kept)."""
        _require_nltk()
        from nltk import word_tokenize
        from nltk.tokenize.treebank import TreebankWordDetokenizer

        words = word_tokenize(text)
        n = len(words)
        if n == 0:
            return text
        keep = np.random.rand(n) > del_ratio
        if sum(keep) == 0:
            keep[np.random.choice(n)] = True  # at least one word remains
        return TreebankWordDetokenizer().detokenize(np.array(words)[keep])
