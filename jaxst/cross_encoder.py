"""``CrossEncoder``: score (query, document) pairs with a sequence-classification model, jitted.

    model = CrossEncoder("cross-encoder/ms-marco-MiniLM-L6-v2")
    model.predict([("How many people live in Berlin?", "Berlin has 3.5 million people.")])
    model.rank("How many people live in Berlin?", documents, top_k=5)
    batch = model.tokenize(pairs)        # numpy int32 input_ids / attention_mask (/ token_type_ids)
    model.apply(model.params, batch)     # raw logits (B, num_labels): pure, jittable, differentiable

The folder is read as sentence-transformers 6 saves a CrossEncoder (``modules.json`` with one
Transformer whose ``transformer_task`` is ``sequence-classification``, the activation in
``config_sentence_transformers.json``) and as older versions and plain transformers save one
(``config.json`` alone, the activation under its ``sentence_transformers`` key or
``sbert_ce_default_activation_function``).

Causal-LM rerankers (Qwen3-Reranker style) load as sentence-transformers 6.3 runs them: a ``*ForCausalLM``
folder, or one saved with a text-generation Transformer and a ``LogitScore`` module; pairs become prompts
through the tokenizer's chat template and the score is ``logit(yes) - logit(no)`` at the last token
(``jaxst.io.causal_reranker``, ``jaxst.models.causal_lm``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.base import BaseModel
from jaxst.checks import positive_int
from jaxst.engine import check_batching
from jaxst.io.causal_reranker import (
    PairPrompts,
    default_logit_score,
    default_transformer_config,
    is_causal_lm,
    logit_score_tokens,
    message_format,
)
from jaxst.io.chat_template import ChatTemplate, read_chat_template
from jaxst.io.export import cross_encoder_plan
from jaxst.io.family import modules_family
from jaxst.io.folder import read_json, read_modules
from jaxst.io.weights import open_state_dict
from jaxst.models import model_type
from jaxst.models.causal_lm import DECODER_PREFIXES, TIED_BY_DEFAULT, LogitScorer
from jaxst.models.causal_lm import forward as causal_lm_forward
from jaxst.models.classification import (
    BASE_MODEL_PREFIXES,
    SequenceClassifier,
    forward,
    head_kind,
    num_labels_from_hf,
)
from jaxst.modules.dense import (
    DENSE_ACTIVATIONS,
    activation_name,
    dense_activation_name,
    identity,
    torch_activation_path,
)


def activation_from_path(path: str) -> Callable | None:
    """``torch.nn.modules.activation.Sigmoid`` -> ``jax.nn.sigmoid``; None (with a warning) for non-torch paths.

    Like sentence-transformers without ``trust_remote_code``, a saved activation outside ``torch.`` is not
    imported and the default is used instead."""
    if not path.startswith("torch."):
        warnings.warn(
            f"activation function {path!r} is not a torch class; jaxst runs no remote code and uses the default "
            "activation instead",
            stacklevel=4,
        )
        return None
    try:
        name = dense_activation_name(path)
    except ValueError:
        supported = sorted(DENSE_ACTIVATIONS)
        raise ValueError(f"unsupported cross-encoder activation_fn {path!r}; jaxst supports {supported}") from None
    return identity if name == "identity" else DENSE_ACTIVATIONS[name]


def _check_callable(fn, what: str = "activation_fn") -> Callable:
    if not callable(fn):
        raise TypeError(f"{what} must be a callable on jax arrays (e.g. jax.nn.sigmoid), got {type(fn).__name__}")
    return fn


def _as_pairs(inputs, where: str = "predict()") -> tuple[list[tuple[str, str]], bool]:
    """Pairs as (query, document) tuples, and whether the input was a single pair."""
    if inputs is None:
        raise TypeError(f"{where} needs a (query, document) pair or a list of pairs, got None")
    if isinstance(inputs, str):
        raise TypeError(f"{where} needs (query, document) pairs, got a single string: {inputs!r:.80}")
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if isinstance(inputs, (dict, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(f"{where} needs a (query, document) pair or a list of pairs, got {type(inputs).__name__}")
    items = list(inputs)
    single = bool(items) and not isinstance(items[0], (list, tuple))
    if single:
        items = [items]
    pairs = []
    for i, pair in enumerate(items):
        label = "the pair" if single else f"pair {i}"
        if not isinstance(pair, (list, tuple)):
            raise TypeError(f"{where}: {label} is {type(pair).__name__}, not a (query, document) pair: {pair!r:.80}")
        if len(pair) != 2:
            raise ValueError(f"{where}: {label} has {len(pair)} elements, expected 2 (query, document): {pair!r:.80}")
        for part, text in zip(("query", "document"), pair):
            if not isinstance(text, str):
                raise TypeError(f"{where}: the {part} of {label} is {type(text).__name__}, not str: {text!r:.80}")
        pairs.append((pair[0], pair[1]))
    return pairs, single


class CrossEncoder(BaseModel):
    """Load a sentence-transformers cross-encoder (Hub name or folder) and score text pairs with JAX."""

    EXAMPLE_MODEL = "cross-encoder/ms-marco-MiniLM-L6-v2"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        num_labels: int | None = None,
        max_length: int | None = None,
        activation_fn: Callable | None = None,
        device: str | jax.Device | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        dtype=None,
        mesh=None,
    ):
        """``dtype``: cast the weights for inference, as ``SentenceTransformer(dtype=)``; None keeps float32.
        ``mesh``: split the weights over its devices, as ``SentenceTransformer(mesh=)``."""
        if activation_fn is not None:
            _check_callable(activation_fn)
        if num_labels is not None:
            positive_int("num_labels", num_labels)
        if max_length is not None:
            positive_int("max_length", max_length)
        super().__init__(
            model_name_or_path, device=device, prompts=prompts, default_prompt_name=default_prompt_name,
            cache_folder=cache_folder, trust_remote_code=trust_remote_code, revision=revision,
            local_files_only=local_files_only, token=token, mesh=mesh,
        )
        path, transformer_config, logit_score = self._transformer_module(self.model_folder)
        self._transformer_path, self._transformer_config = path, transformer_config  # what save() rewrites
        self._logit_score, self._pair_prompts, self._forward = None, None, forward
        hf_config = read_json(path / "config.json")
        if logit_score is not None or (not (self.model_folder / "modules.json").is_file() and is_causal_lm(hf_config)):
            self._load_causal_lm(path, transformer_config, logit_score, num_labels, max_length, dtype)
            self.activation_fn = activation_fn if activation_fn is not None else self._saved_activation(
                self.st_config, self.hf_config)
            return
        archs = [str(a) for a in hf_config.get("architectures") or []]
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(
                f"{self.model_folder} is not a sequence-classification model (architectures: "
                f"{', '.join(archs) or 'none'}); a CrossEncoder needs a *ForSequenceClassification checkpoint "
                "with its classifier weights (or a *ForCausalLM reranker)"
            )
        load_dtype = self.load_dtype(dtype)
        encoder_cfg, encoder_cls = self.load_transformer(path, transformer_config, max_length)
        self.max_seq_length = self.max_seq_length  # an explicit or saved length must fit the position table
        kind = head_kind(model_type(self.hf_config))
        saved_labels = num_labels_from_hf(self.hf_config)
        if num_labels is not None and num_labels != saved_labels:
            raise ValueError(f"num_labels={num_labels} does not match the checkpoint's {saved_labels} labels")
        self._num_labels = saved_labels

        module = nnx.eval_shape(
            lambda: SequenceClassifier(
                encoder_cls(encoder_cfg, rngs=nnx.Rngs(0)), kind, encoder_cfg.hidden_size, saved_labels,
                rngs=nnx.Rngs(0),
            )
        )
        self.graphdef, _ = nnx.split(module, nnx.Param)
        state_dict = open_state_dict(path)
        prefix = BASE_MODEL_PREFIXES[model_type(self.hf_config)]
        params = {"encoder": self.load_params(module.encoder, state_dict, (f"{prefix}.",), load_dtype)}
        if kind == "pooler":
            params["pooler"] = self.load_params(module.pooler, state_dict, (f"{prefix}.pooler.",), load_dtype)
        params["classifier"] = self.load_params(module.classifier, state_dict, ("classifier.",), load_dtype)
        self.params = params
        self.apply_dtype(dtype, module)
        self.activation_fn = (
            activation_fn if activation_fn is not None else self._saved_activation(self.st_config, self.hf_config)
        )

    @staticmethod
    def _transformer_module(folder) -> tuple:
        """The folder holding the model, its sentence_bert_config.json, and the LogitScore module's config of a
        saved causal-LM reranker (else None)."""
        if not (folder / "modules.json").is_file():
            if not (folder / "config.json").is_file():
                raise OSError(f"{folder} is not a model folder: it has neither modules.json nor config.json")
            return folder, read_json(folder / "sentence_bert_config.json", required=False), None
        specs = read_modules(folder)
        if [s.kind for s in specs] == ["transformer", "logit_score"]:
            task = specs[0].config.get("transformer_task", "feature-extraction")
            if task != "text-generation":
                raise ValueError(f"{folder}: a LogitScore module needs a 'text-generation' Transformer, not {task!r}")
            return specs[0].path, specs[0].config, specs[1].config
        if len(specs) != 1:
            kinds = ", ".join(s.kind for s in specs)
            raise ValueError(
                f"{folder} holds an embedding model ({kinds}), not a cross-encoder; "
                f"load it with jaxst.{modules_family(specs) or 'SentenceTransformer'}"
            )
        task = specs[0].config.get("transformer_task", "sequence-classification")
        if task != "sequence-classification":
            raise ValueError(f"{folder}: transformer_task {task!r} is not supported; a CrossEncoder needs "
                             "'sequence-classification' (or 'text-generation' with a LogitScore module)")
        return specs[0].path, specs[0].config, None

    def _load_causal_lm(self, path, transformer_config: dict, logit_score: dict | None, num_labels, max_length,
                        dtype) -> None:
        """A causal-LM reranker: the decoder and the LM-head rows its LogitScore reads (one label). A plain
        ``*ForCausalLM`` folder gets what sentence-transformers builds for it: the Transformer's modalities
        from the tokenizer (a chat template adds "message") and ``LogitScore(id("yes"), id("no"))``."""
        if num_labels not in (None, 1):
            raise ValueError(f"num_labels={num_labels}: a causal-LM reranker has one score (LogitScore)")
        kind = model_type(read_json(path / "config.json"))
        if kind not in DECODER_PREFIXES:
            raise ValueError(f"{self.model_folder}: causal-LM rerankers of model_type {kind!r} are not supported; "
                             f"jaxst runs those of {sorted(DECODER_PREFIXES)}")
        template = read_chat_template(path)
        if logit_score is None:  # a plain folder
            transformer_config = {**default_transformer_config(kind, template), **transformer_config}
            self._transformer_config = transformer_config
        encoder_cfg, encoder_cls = self.load_transformer(path, transformer_config, max_length)
        self.max_seq_length = self.max_seq_length  # an explicit or saved length must fit the position table
        self._logit_score = logit_score or default_logit_score(self.tokenizer, self.model_folder)
        self._num_labels = 1
        modalities = transformer_config.get("modality_config") or {"text": {}}
        if "message" in modalities:
            if template is None:
                raise ValueError(f"{self.model_folder}: the Transformer takes chat messages but the tokenizer has no "
                                 "chat template")
            fmt = modalities["message"].get("format", "auto")
            fmt = message_format(kind, template) if fmt == "auto" else fmt
            self._pair_prompts = PairPrompts(self.tokenizer, ChatTemplate.from_folder(path), fmt,
                                             transformer_config.get("processing_kwargs"), self.model_folder)
        elif "text" not in modalities:
            raise ValueError(f"{self.model_folder}: the Transformer takes neither text nor messages "
                             f"({sorted(modalities)})")
        true_id, false_id = logit_score_tokens(self._logit_score, self.model_folder)
        tied = bool(self.hf_config.get("tie_word_embeddings", TIED_BY_DEFAULT[kind]))
        module = nnx.eval_shape(lambda: LogitScorer(
            encoder_cls(encoder_cfg, rngs=nnx.Rngs(0)), true_id, false_id, tied=tied, rngs=nnx.Rngs(0)))
        self.graphdef, _ = nnx.split(module, nnx.Param)
        load_dtype = self.load_dtype(dtype)
        state_dict = open_state_dict(path)
        prefixes = (f"{DECODER_PREFIXES[kind]}.",)
        params = {"encoder": self.load_params(module.encoder, state_dict, prefixes, load_dtype)}
        if not tied:
            params["lm_head"] = self.load_params(module.lm_head, state_dict, ("lm_head.",), load_dtype)
        self.params = params
        self.apply_dtype(dtype, module)
        self._forward = causal_lm_forward

    def _saved_activation(self, st_config: dict, hf_config: dict) -> Callable:
        """config_sentence_transformers.json, then config.json's sentence_transformers key, then the
        legacy sbert_ce_default_activation_function; else sigmoid for one label, identity for more."""
        for path in (
            st_config.get("activation_fn"),
            (hf_config.get("sentence_transformers") or {}).get("activation_fn"),
            hf_config.get("sbert_ce_default_activation_function"),
        ):
            if path is not None:
                fn = activation_from_path(str(path))
                if fn is not None:
                    return fn
        return jax.nn.sigmoid if self.num_labels == 1 else identity

    # ------------------------------------------------------------------ properties

    @property
    def num_labels(self) -> int:
        return self._num_labels

    @property
    def max_length(self) -> int:
        return self.max_seq_length

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.max_seq_length = value

    @property
    def activation_fn(self) -> Callable:
        return self._activation_fn

    @activation_fn.setter
    def activation_fn(self, fn: Callable) -> None:
        self._activation_fn = _check_callable(fn)

    # ------------------------------------------------------------------ functional core

    def tokenize(self, pairs, prompt: str | None = None) -> dict[str, np.ndarray]:
        """(query, document) pairs -> numpy int32 ``input_ids``, ``attention_mask`` (and ``token_type_ids``),
        truncated 'longest_first' to ``max_seq_length`` and padded to the longest pair."""
        pairs, _ = _as_pairs(pairs, "tokenize()")
        return self.tokenizer.pad(self._encode(pairs, prompt), types=self._uses_token_types)

    def apply(self, params, batch: dict) -> jax.Array:
        """Pure: (params, tokenized pair batch) -> raw logits (B, num_labels), before any activation (a causal-LM
        reranker's: its LogitScore, (B, 1)). Batches may be padded on either side."""
        return self._forward(self.graphdef, params, dict(batch))

    def _encode(self, pairs: list[tuple[str, str]], prompt: str | None):
        if self._pair_prompts is not None:  # a causal-LM reranker with a chat template
            return self._pair_prompts.encode(pairs, prompt)
        if prompt:
            pairs = [(prompt + q, d) for q, d in pairs]
        encodings = self.tokenizer.encode_ids([q for q, _ in pairs], [d for _, d in pairs])
        if self._logit_score is not None:
            for pair, encoding in zip(pairs, encodings):
                if not encoding.ids:  # sentence-transformers refuses it too (a row of padding only)
                    raise ValueError(f"the pair {pair!r:.80} has no tokens; a causal-LM reranker reads its score at "
                                     "the last token")
        return encodings

    def _logits(self, pairs: list[tuple[str, str]], prompt: str | None, **batching) -> jax.Array:
        """Raw logits (N, num_labels) in input order, through the engine (``BaseModel.encode_chunks``: pairs
        tokenized a chunk at a time, sorted by token count, shapes bucketed, split over the local devices when
        there are several)."""
        hooks = self.token_hooks(lambda chunk: self._encode(chunk, prompt))
        logits = np.zeros((len(pairs), self.num_labels), np.float32)
        for offset, _, batches in self.encode_chunks(iter(pairs), len(pairs), hooks, self._forward, **batching):
            for idx, _, out in batches:
                logits[offset + idx] = out[: len(idx)]
        return jnp.asarray(logits)

    # ------------------------------------------------------------------ predict / rank

    def predict(
        self,
        inputs=None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        apply_softmax: bool | None = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        *,
        max_batch_tokens: int | None | str = "auto",
        chunk_size: int | None = None,
        device: str | jax.Device | list | None = None,
        pool: dict | None = None,
    ):
        """Scores for (query, document) pairs, as sentence-transformers' ``CrossEncoder.predict``.

        One pair gives a scalar; a list gives shape (N,) for one label, (N, num_labels) for more. The
        model's ``activation_fn`` (sigmoid for one label, identity for more, unless the model saved another)
        is applied unless ``activation_fn`` overrides it for this call (identity gives raw logits);
        ``apply_softmax`` then normalizes multi-label scores per pair. ``convert_to_tensor`` returns a
        ``jax.Array``, ``convert_to_numpy=False`` a list of per-pair arrays. ``max_batch_tokens``,
        ``chunk_size``, ``device`` and ``pool`` batch and place the pairs as ``SentenceTransformer.encode``
        does its texts (``jaxst.engine``)."""
        pairs, single = _as_pairs(inputs)
        chunk_size = check_batching(batch_size, max_batch_tokens, chunk_size)
        fn = self.activation_fn if activation_fn is None else _check_callable(activation_fn)
        prompt = self._resolve_prompt(prompt, prompt_name)
        if not pairs:
            scores = jnp.zeros((0,), jnp.float32)
        else:
            logits = self._logits(pairs, prompt, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                  chunk_size=chunk_size, show_progress_bar=show_progress_bar, device=device, pool=pool)
            scores = jnp.asarray(fn(logits))
            if self.num_labels == 1 and scores.ndim > 1:
                scores = scores[..., 0]  # (N, 1) -> (N,)
            if apply_softmax and scores.ndim > 1:
                scores = jax.nn.softmax(scores, axis=1)
        if convert_to_tensor:
            out = scores
        elif convert_to_numpy:
            out = np.asarray(scores)
        else:
            out = list(scores)
        return out[0] if single else out

    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        **batching,
    ) -> list[dict]:
        """Documents ranked for a query: ``[{"corpus_id", "score"(, "text")}]``, best first, ``top_k`` of them.

        Only for single-label models (a relevance score); ties keep the documents' order. ``batching``:
        ``predict``'s ``max_batch_tokens``, ``chunk_size``, ``device``, ``pool``."""
        if self.num_labels != 1:
            raise ValueError(
                f"CrossEncoder.rank() needs a model with one label (a relevance score); this one has "
                f"{self.num_labels}. Use predict() with (query, document) pairs instead."
            )
        if not isinstance(query, str):
            raise TypeError(f"rank() needs the query as a string, got {type(query).__name__}: {query!r:.80}")
        if documents is None or isinstance(documents, (str, bytes, dict)) or not isinstance(documents, Iterable):
            raise TypeError(f"rank() needs the documents as a list of strings, got {type(documents).__name__}")
        documents = documents.tolist() if isinstance(documents, np.ndarray) else list(documents)
        for i, doc in enumerate(documents):
            if not isinstance(doc, str):
                raise TypeError(f"rank(): document {i} is {type(doc).__name__}, not str: {doc!r:.80}")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
            raise ValueError(f"top_k must be None or a non-negative integer, got {top_k!r}")
        if not documents:
            return []
        scores = self.predict(
            [(query, doc) for doc in documents], batch_size=batch_size, show_progress_bar=show_progress_bar,
            activation_fn=activation_fn, prompt_name=prompt_name, prompt=prompt, **batching,
        ).tolist()
        results = []
        for i, score in enumerate(scores):
            results.append({"corpus_id": i, "score": score})
            if return_documents:
                results[-1]["text"] = documents[i]
        return sorted(results, key=lambda r: r["score"], reverse=True)[:top_k]

    # ------------------------------------------------------------------ training hooks (jaxst.training)

    def training_examples(self, examples, loss=None, seed=None) -> tuple:
        """Pairs ``(query, document[, label])`` or listwise ``(query, [documents], [labels])`` examples; a loss that
        builds its own lists (``loss.lists``: the cross-encoder MultipleNegativesRankingLoss, with in-batch
        negatives drawn with ``seed``) turns them into its lists first."""
        if loss is not None and hasattr(loss, "lists"):
            examples = loss.lists(examples, seed)
        return examples, True

    def training_tasks(self, n_columns: int, router_mapping=None) -> None:
        """A pair batch has no routes (``router_mapping`` is not read)."""
        return None

    def training_features(self, columns: list, tasks: list | None = None) -> dict:
        """The (query, document) columns as one tokenized pair batch."""
        if len(columns) != 2:
            raise ValueError("a cross-encoder example is (query, document, label)")
        return self.tokenize(list(zip(*columns)))

    # ------------------------------------------------------------------ save

    def folder_plan(self):
        name = activation_name(self.activation_fn)
        if name is None:
            known = "jax.nn.sigmoid, jnp.tanh, jax.nn.relu, jax.nn.silu, jax.nn.softplus, jaxst.cross_encoder.identity"
            raise ValueError(
                f"cannot save activation_fn {self.activation_fn!r}: sentence-transformers stores the activation as "
                f"a torch class, and jaxst knows the torch equivalent only of {known}; set model.activation_fn to "
                "one of them before saving"
            )
        prefixes = BASE_MODEL_PREFIXES if self._logit_score is None else DECODER_PREFIXES
        return cross_encoder_plan(
            hf_config=self.hf_config, transformer_path=self._transformer_path,
            transformer_config=self._transformer_config, max_seq_length=self.max_seq_length,
            activation_fn=torch_activation_path(name), prompts=self.prompts,
            default_prompt_name=self.default_prompt_name,
            base_model_prefix=prefixes[model_type(self.hf_config)], has_pooler="pooler" in self.params,
            logit_score=self._logit_score, lm_head="lm_head" in self.params,
        )

    def __repr__(self) -> str:
        return (
            f"CrossEncoder({str(self.model_folder)!r}, model_type={self.hf_config.get('model_type')!r}, "
            f"num_labels={self.num_labels}, max_length={self.max_seq_length})"
        )


__all__ = ["CrossEncoder"]
