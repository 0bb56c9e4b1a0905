"""MultiVectorEncoder: late-interaction (ColBERT-style) embeddings as jitted JAX.

    text ─▶ tokens (query: prefix, [MASK] expansion to query_length; document: prefix, document_length)
         ─▶ encoder ─▶ token states (B, T, H) ─▶ [Dense]* per token ─▶ [Normalize] per token
         ─▶ kept by the scoring mask (real tokens, query expansion slots, minus the skiplist)

sentence-transformers' ``MultiVectorEncoder`` folders load as saved (Transformer with its
``query_length`` / ``document_length`` / ``query_expansion``, a token-level Dense projection,
``MultiVectorMask``, a token-level Normalize), and so do Stanford-NLP ColBERT checkpoints (``HF_ColBERT``:
the projection inline as ``linear.weight``, settings in ``artifact.metadata``, ``[unused0]`` / ``[unused1]``
markers as prompts). The scoring mask is computed on the host with the tokens (it depends on token ids
and lengths only); the forward is one pure jitted function, ``apply(params, batch)``. Scores go through
``jaxst.maxsim``.
"""

from __future__ import annotations

import json
import os
import string
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import AddedToken

from jaxst import engine
from jaxst.base import BaseModel
from jaxst.checks import positive_int
from jaxst.engine import check_batching, seq_bucket, text_list, text_stream
from jaxst.io.export import sentence_transformer_plan, unmapped_tensors
from jaxst.io.family import modules_family
from jaxst.io.folder import ModuleSpec, read_json, read_module_list
from jaxst.io.weights import open_state_dict
from jaxst.modules import dense, normalize, param_heads, stanford_projection
from jaxst.modules import token_pooling as token_pooling_kind
from jaxst.modules.multi_vector_mask import MaskSettings
from jaxst.modules.token_pooling import HierarchicalTokenPooling
from jaxst.pipeline import MultiVectorModule, forward
from jaxst.pooling import l2_normalize

SIMILARITY_FN_NAMES = ("maxsim", "meanmaxsim")
QUERY_EXPANSION_STRATEGIES = ("fixed", "min")
_TOKEN_LEVEL = {"module_input_name": "token_embeddings", "module_output_name": "token_embeddings"}


@jax.jit
def _compact(tokens, order):
    """Each row's kept tokens first, in order: ``order`` (B, W) indexes the row's token slots."""
    return jnp.take_along_axis(tokens, order[:, :, None], axis=1)


def _query_expansion(config) -> dict | None:
    """sentence-transformers' ``query_expansion`` dict, checked, with its defaults filled in."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ValueError(f"query_expansion must be a dict or None, got {config!r}")
    unknown = set(config) - {"strategy", "attend", "token", "length"}
    if unknown:
        raise ValueError(f"query_expansion has unknown keys {sorted(unknown)}")
    strategy = config.get("strategy")
    if strategy not in QUERY_EXPANSION_STRATEGIES:
        raise ValueError(f"query_expansion['strategy'] must be one of {QUERY_EXPANSION_STRATEGIES}, got {strategy!r}")
    length = positive_int("query_expansion['length']", config.get("length"))
    return {"strategy": strategy, "attend": bool(config.get("attend", False)), "token": config.get("token"),
            "length": length}


class MultiVectorEncoder(BaseModel):
    """Load a sentence-transformers MultiVectorEncoder (or a Stanford-NLP ColBERT checkpoint) and make
    per-token embeddings with JAX. ``token_pooling`` / ``truncate_dim`` (sentence-transformers 6.3): the
    defaults of ``encode``'s arguments of those names (see ``encode``); ``truncate_dim`` falls back to the saved
    one and is saved, the pooling is not."""

    EXAMPLE_MODEL = "lightonai/GTE-ModernColBERT-v1"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        device: str | jax.Device | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        similarity_fn_name: str | None = None,
        token_pooling: HierarchicalTokenPooling | None = None,
        truncate_dim: int | None = None,
        dtype=None,
        mesh=None,
    ):
        super().__init__(
            model_name_or_path, device=device, prompts=prompts, default_prompt_name=default_prompt_name,
            cache_folder=cache_folder, trust_remote_code=trust_remote_code, revision=revision,
            local_files_only=local_files_only, token=token, mesh=mesh, base_prompts={"query": "", "document": ""},
        )
        hf = read_json(self.model_folder / "config.json", required=False)
        self._stanford = "HF_ColBERT" in (hf.get("architectures") or [])
        if (self.model_folder / "modules.json").is_file():
            specs = self._pylate_specs(read_module_list(self.model_folder), prompts or {})
        elif self._stanford:
            specs = self._stanford_specs(prompts or {})
        else:
            raise ValueError(f"{self.model_folder} has no modules.json and is not a Stanford-NLP ColBERT checkpoint "
                             "(architectures HF_ColBERT); sentence-transformers would add an untrained projection, "
                             "which jaxst does not build: load a saved MultiVectorEncoder")
        self.apply_dtype(dtype, self._load(specs))
        # encode's defaults (sentence-transformers 6.3): the pooling is not saved, truncate_dim is (and loads)
        self.token_pooling = token_pooling
        self.truncate_dim = positive_int("truncate_dim", truncate_dim if truncate_dim is not None
                                         else self.st_config.get("truncate_dim"), optional=True)
        config_name = self.st_config.get("similarity_fn_name")
        self.similarity_fn_name = similarity_fn_name or (config_name if config_name in SIMILARITY_FN_NAMES
                                                         else "maxsim")

    # ------------------------------------------------------------------ loading

    def _pylate_specs(self, specs: list[ModuleSpec], user_prompts: dict) -> list[ModuleSpec]:
        """A PyLate save, read as sentence-transformers reads it: the top-level ``query_prefix`` /
        ``document_prefix`` become (the start of) the prompts and are kept as single tokens; ``query_length``,
        ``document_length``, ``do_query_expansion`` and ``attend_to_expansion_tokens`` become the Transformer's
        settings unless its own config has them; a PyLate 3 folder (``model_type`` "ColBERT": Transformer and
        Dense only) gets the MultiVectorMask (``skiplist_words``, punctuation by default) and the token-level
        Normalize that PyLate applied inline. Other folders pass through."""
        config = self.st_config
        markers = ("query_length", "document_length", "query_expansion", "do_query_expansion",
                   "attend_to_expansion_tokens", "attend_to_mask_tokens", "query_prefix", "document_prefix",
                   "skiplist_words")
        if not any(key in config for key in markers):
            return specs
        prefixes = {}
        for key, role in (("query_prefix", "query"), ("document_prefix", "document")):
            if key in config:
                prefix = config[key] or ""
                prefixes[role] = prefix
                if role not in user_prompts:
                    saved = (config.get("prompts") or {}).get(role) or ""
                    self.prompts[role] = prefix + saved.removeprefix(prefix)
        self._legacy_prefixes = prefixes
        knobs = {k: config[k] for k in ("query_length", "document_length", "query_expansion")
                 if k in config and (config[k] is not None or k == "query_expansion")}
        if "query_expansion" not in knobs:
            if config.get("do_query_expansion") is False:
                knobs["query_expansion"] = None
            else:
                attend = config.get("attend_to_expansion_tokens", config.get("attend_to_mask_tokens"))
                length = knobs.pop("query_length", None) or config.get("query_length") or 32
                knobs["query_expansion"] = {"strategy": "fixed", "attend": bool(attend), "length": length}
        transformer = specs[0]
        specs = [ModuleSpec(transformer.kind, transformer.path, {**knobs, **transformer.config}), *specs[1:]]
        if config.get("model_type") == "ColBERT":  # PyLate 3 listed only [Transformer, Dense]
            skiplist = config.get("skiplist_words")
            specs += [ModuleSpec("multi_vector_mask", self.model_folder,
                                 {"skiplist_words": list(string.punctuation) if skiplist is None else skiplist}),
                      ModuleSpec("normalize", self.model_folder, dict(_TOKEN_LEVEL))]
        return specs

    def _stanford_specs(self, user_prompts: dict) -> list[ModuleSpec]:
        """The modules sentence-transformers builds for a Stanford-NLP ColBERT folder: Transformer (lengths and
        [MASK] expansion from artifact.metadata), the inline projection, MultiVectorMask (punctuation unless
        mask_punctuation is false), Normalize; the query/document markers become prompts."""
        folder = self.model_folder
        metadata = read_json(folder / "artifact.metadata", required=False)
        if not metadata:
            warnings.warn(f"{folder} has no artifact.metadata: using Stanford ColBERT's defaults", stacklevel=3)
        self._legacy_prefixes = {"query": (metadata.get("query_token_id") or "[unused0]") + " ",
                                 "document": (metadata.get("doc_token_id") or "[unused1]") + " "}
        for role, marker in self._legacy_prefixes.items():
            if role not in user_prompts:
                self.prompts[role] = marker
        transformer = {"query_expansion": {"strategy": "fixed", "attend": bool(metadata.get("attend_to_mask_tokens")),
                                           "length": metadata.get("query_maxlen") or 32}}
        if metadata.get("doc_maxlen") is not None:
            transformer["document_length"] = metadata["doc_maxlen"]
        skiplist = list(string.punctuation) if metadata.get("mask_punctuation", True) else []
        return [ModuleSpec("transformer", folder, transformer),
                ModuleSpec("stanford_projection", folder, {}),
                ModuleSpec("multi_vector_mask", folder, {"skiplist_words": skiplist}),
                ModuleSpec("normalize", folder, dict(_TOKEN_LEVEL))]

    def _load(self, specs: list[ModuleSpec]) -> MultiVectorModule:
        """Build the module ``specs`` describe and read its params; returns the (abstract) module."""
        kinds = [s.kind for s in specs]
        if not specs or kinds[0] != "transformer":
            raise ValueError(f"{self.model_folder}: a MultiVectorEncoder starts with a Transformer, got {kinds}")
        if "pooling" in kinds or modules_family(kinds) == "SparseEncoder":
            raise ValueError(f"{self.model_folder} is not a multi-vector model (modules {kinds}); load it with "
                             "jaxst.SentenceTransformer or jaxst.SparseEncoder")
        unsupported = [k for k in kinds[1:] if k not in ("dense", "normalize", "multi_vector_mask", "dropout",
                                                         "stanford_projection", "token_pooling")]
        if unsupported:
            raise ValueError(f"{self.model_folder}: unsupported MultiVectorEncoder modules {unsupported}; jaxst loads "
                             "Transformer, Dense, MultiVectorMask, Normalize")
        transformer = specs[0]
        config = transformer.config
        task = config.get("transformer_task", "feature-extraction")
        if task != "feature-extraction":
            raise ValueError(f"{transformer.path}: transformer_task {task!r} is not supported for multi-vector models")
        encoder_cfg, encoder_cls = self.load_transformer(transformer.path, config)
        self._registered_prefixes = []
        if getattr(self, "_legacy_prefixes", None):
            self._register_prefix_tokens(self._legacy_prefixes)
        self.query_expansion = _query_expansion(config.get("query_expansion"))

        def fit(value, name):  # the query and document lengths, like max_seq_length, within the position table
            return None if value is None else self._fit_position_table(
                value, encoder_cfg, transformer.path / "sentence_bert_config.json", transformer.path / "config.json",
                name)

        self.query_length = fit(config.get("query_length"), "query_length")
        self.document_length = fit(config.get("document_length"), "document_length")
        if self.query_expansion is not None:
            self.query_expansion["length"] = fit(self.query_expansion["length"], "query_expansion length")

        heads, dim = [], encoder_cfg.hidden_size
        mask = MaskSettings()  # no MultiVectorMask: every token kept
        self.pipeline_token_pooling = None  # a HierarchicalTokenPooling module at the end of the folder's pipeline
        for spec in specs[1:]:
            if spec.kind in ("dense", "stanford_projection"):
                if spec.kind == "stanford_projection":
                    weight = open_state_dict(spec.path)[stanford_projection.WEIGHT]
                    c = stanford_projection.dense_config(weight.shape[1], weight.shape[0])
                else:
                    c = spec.config
                    if c.get("module_input_name", "token_embeddings") != "token_embeddings":
                        raise ValueError(f"{spec.path}: a Dense on {c.get('module_input_name')!r}; a multi-vector "
                                         "model projects token_embeddings")
                head, dim = dense.head(c, dim, spec.path)
                heads.append(head)
            elif spec.kind == "normalize":
                head, dim = normalize.head(spec.config, dim, spec.path)
                heads.append(head)
            elif spec.kind == "token_pooling":
                self.pipeline_token_pooling = token_pooling_kind.from_spec(spec, last=spec is specs[-1])
            elif spec.kind == "multi_vector_mask":
                mask = MaskSettings.from_config(spec.config)
        self.skiplist_words, self.skiplist_tasks = mask.skiplist_words, mask.skiplist_tasks
        self.keep_only_token_ids = mask.keep_only_token_ids
        self._skiplist_ids = self._resolve_skiplist()
        self._embedding_dim = dim
        module = nnx.eval_shape(lambda: MultiVectorModule(encoder_cls(encoder_cfg, rngs=nnx.Rngs(0)), heads))
        self.graphdef, _ = nnx.split(module, nnx.Param)
        self._key_prefix = getattr(encoder_cls, "key_prefix", False)
        encoder_sd = open_state_dict(transformer.path)
        prefixes = (f"{encoder_cls.base_model_prefix}.",)
        params = {"encoder": self.load_params(module.encoder, encoder_sd, prefixes)}
        for i, spec in param_heads(specs[1:]):  # params["heads"][i]: Dense weights, or a Stanford projection's
            # "linear.weight", which sits beside the encoder's tensors
            sd = encoder_sd if spec.kind == "stanford_projection" else open_state_dict(spec.path)
            params.setdefault("heads", {})[i] = self.load_params(module.heads[i], sd)
        self.params = params
        self._module_specs = specs
        self._unmapped_tensors = {k: v for k, v in unmapped_tensors(encoder_sd, prefixes).items()
                                  if not k.startswith("linear.")}  # the Stanford projection's
        return module

    def _register_prefix_tokens(self, prefixes: dict[str, str]) -> None:
        """A Stanford checkpoint's marker (``[unused0]``) tokenizes as one piece, as when ColBERT inserted it as a
        token id: registered as a special token when the vocabulary has it but the tokenizer splits it."""
        for value in prefixes.values():
            if not value or not value.split():
                continue
            for prefix in (value, value.split(None, 1)[0]):
                if self.tokenizer.backend.token_to_id(prefix) is None:
                    continue
                if self.tokenizer.backend.encode(prefix, add_special_tokens=False).tokens != [prefix]:
                    self.tokenizer.add_special_tokens([AddedToken(prefix, normalized=False, special=True)])
                    self._registered_prefixes.append(prefix)
                break

    def _resolve_skiplist(self) -> np.ndarray:
        """Skiplist words -> token ids; words that are not one vocabulary token are dropped (with a warning), as
        sentence-transformers does, so they do not mask every [UNK]."""
        backend = self.tokenizer.backend
        ids, missing = [], []
        for word in self.skiplist_words:
            token_id = backend.token_to_id(word)
            (missing if token_id is None else ids).append(word if token_id is None else token_id)
        if missing:
            warnings.warn(f"skiplist words {missing} are not single vocabulary tokens; dropped from the skiplist",
                          stacklevel=4)
        return np.asarray(sorted(set(ids)), np.int32)

    # ------------------------------------------------------------------ tokens

    def _expansion_token_id(self) -> int:
        token = self.query_expansion.get("token") or _mask_token(self.model_folder)
        token_id = None if token is None else self.tokenizer.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"query_expansion token {token!r} is not in this tokenizer's vocabulary; set "
                             "query_expansion['token']")
        return token_id

    def _max_length(self, task: str | None) -> int:
        limit = {"query": self.query_length, "document": self.document_length}.get(task)
        expansion = self.query_expansion if task == "query" else None
        if expansion is not None:
            if expansion["strategy"] == "fixed":
                return expansion["length"]
            return max(limit, expansion["length"]) if limit is not None else self.max_seq_length
        return limit if limit is not None else self.max_seq_length

    def tokenize(self, texts: list[str] | str, prompt: str | None = None, task: str | None = None) -> dict:
        """Texts -> numpy int32 arrays for ``apply``: ``input_ids``, ``attention_mask`` (what the encoder
        attends to), ``token_type_ids`` where the model has them, and ``scoring_mask`` (the tokens MaxSim
        reads: real ones and, for queries with expansion, the [MASK] slots; minus skiplisted ids), each row
        right-padded to the longest."""
        texts, _ = text_list(texts)
        rows = self._token_rows(texts, prompt, task)
        return self._pad_rows(rows, max((len(r[0]) for r in rows), default=0), len(rows))

    def _token_rows(self, texts: list[str], prompt: str | None, task: str | None) -> list[tuple]:
        """Per text (ids, types, attention, scoring), unpadded numpy int32 / bool arrays."""
        _check_task(task)
        if prompt:
            texts = [prompt + t for t in texts]
        encodings = self.tokenizer.encode_ids(texts, max_length=self._max_length(task)) if texts else []
        expansion = self.query_expansion if task == "query" else None
        fill = self._expansion_token_id() if expansion is not None else None
        skip = (task or "document") in self.skiplist_tasks and len(self._skiplist_ids) > 0
        keep = None if task == "query" or not self.keep_only_token_ids else np.asarray(self.keep_only_token_ids)
        rows = []
        for e in encodings:
            ids = np.asarray(e.ids, np.int32)
            types = np.asarray(e.type_ids, np.int32)
            attention = np.ones(len(ids), bool)
            scoring = np.ones(len(ids), bool)
            if expansion is not None and len(ids) < expansion["length"]:
                extra = expansion["length"] - len(ids)
                ids = np.concatenate([ids, np.full(extra, fill, np.int32)])
                types = np.concatenate([types, np.zeros(extra, np.int32)])
                attention = np.concatenate([attention, np.full(extra, expansion["attend"])])
                scoring = np.concatenate([scoring, np.ones(extra, bool)])
            if skip:
                scoring &= ~np.isin(ids, self._skiplist_ids)
            if keep is not None:
                scoring &= np.isin(ids, keep)
            rows.append((ids, types, attention, scoring))
        return rows

    def _pad_rows(self, rows: list[tuple], length: int, n_rows: int) -> dict:
        ids = np.full((n_rows, length), self.tokenizer.pad_id, np.int32)
        types = np.zeros((n_rows, length), np.int32)
        attention = np.zeros((n_rows, length), np.int32)
        scoring = np.zeros((n_rows, length), bool)
        for r, (i, t, a, s) in enumerate(rows):
            ids[r, : len(i)], types[r, : len(i)], attention[r, : len(i)], scoring[r, : len(i)] = i, t, a, s
        batch = {"input_ids": ids, "attention_mask": attention, "scoring_mask": scoring}
        if self._uses_token_types:
            batch["token_type_ids"] = types
        return batch

    def calibration_batch(self, texts: list[str]) -> dict:
        """int8 calibration's batch: ``texts`` as documents, with the scoring mask the forward reads."""
        return dict(self.tokenize(texts, task="document"))

    def column_tasks(self, n_columns: int) -> list[str]:
        """The task of each training column (``jaxst.training.collate``): the first is the query, the others
        documents, as sentence-transformers' MultiVectorEncoder data collator assigns them."""
        if self.pipeline_token_pooling is not None:
            raise ValueError("this model pools document tokens with HierarchicalTokenPooling (host-side clustering, "
                             "outside the jitted forward): jaxst trains it without; remove the module to train")
        return ["query"] + ["document"] * (n_columns - 1)

    def apply(self, params, batch: dict) -> dict:
        """Pure: (params, tokenized batch) -> ``{"token_embeddings": (B, T, D), "attention_mask": (B, T)}``
        (the scoring mask), as ``encode`` computes them before dropping unscored tokens."""
        return forward(self.graphdef, params, dict(batch))

    # ------------------------------------------------------------------ encode

    def encode(
        self,
        inputs=None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "token_embeddings",
        convert_to_numpy: bool = False,
        device: str | jax.Device | list | None = None,
        normalize_embeddings: bool = False,
        pool: dict | None = None,
        chunk_size: int | None = None,
        token_pooling: HierarchicalTokenPooling | None = None,
        truncate_dim: int | None = None,
        task: str | None = None,
        return_padded: bool = False,
        max_batch_tokens: int | None | str = "auto",
        **kwargs,
    ):
        """Per-token embeddings of a string or a list of strings; see sentence-transformers'
        ``MultiVectorEncoder.encode``.

        Returns one (tokens_i, dim) array per text (jax arrays; numpy with ``convert_to_numpy``): the tokens
        the scoring mask keeps, in order. ``return_padded=True`` (jaxst): ``(embeddings (n, T, dim), mask
        (n, T))`` instead, each row's kept tokens first, what ``jaxst.maxsim`` and the search take directly.
        ``task``: "query" (prefix, query length, [MASK] expansion) or "document".

        After the model's own modules (a HierarchicalTokenPooling that ends the folder's pipeline included), in
        sentence-transformers 6.3's order: ``normalize_embeddings`` L2-normalizes each token vector;
        ``token_pooling`` (None: the model's ``token_pooling``) pools the texts of the tasks it applies to
        (documents by default), on top of any pooling in the folder; ``truncate_dim`` (None: the model's
        ``truncate_dim``) keeps the first ``truncate_dim`` values of every token vector, queries' included, and
        L2-normalizes them again."""
        if "convert_to_tensor" in kwargs:
            raise ValueError("MultiVectorEncoder.encode() has no `convert_to_tensor`: multi-vector embeddings are "
                             "ragged; it returns a list of arrays (or return_padded=True for a padded array)")
        if kwargs:
            raise ValueError(f"encode() got keyword arguments it does not use: {sorted(kwargs)}")
        if output_value != "token_embeddings":
            raise ValueError(f"jaxst's MultiVectorEncoder.encode supports output_value='token_embeddings', "
                             f"got {output_value!r}")
        if token_pooling is None:
            token_pooling = self.token_pooling
        elif not isinstance(token_pooling, HierarchicalTokenPooling):
            raise TypeError("token_pooling must be a jaxst.multi_vector_encoder.HierarchicalTokenPooling, got "
                            f"{type(token_pooling).__name__}")
        truncate_dim = positive_int("truncate_dim", truncate_dim if truncate_dim is not None else self.truncate_dim,
                                    optional=True)
        chunk_size = check_batching(batch_size, max_batch_tokens, chunk_size)
        texts, single, total = text_stream(inputs)
        _check_task(task)
        prompt = self._resolve_prompt(prompt, prompt_name)
        hooks, chunk_rows = self._hooks(prompt, task)
        pieces = []  # per chunk: (n, W, D) embeddings, each row's scored tokens first, and the kept counts
        for _, n, batches in self.encode_chunks(
            texts, total, hooks, forward, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            chunk_size=chunk_size, show_progress_bar=show_progress_bar, device=device, pool=pool,
        ):
            kept = np.asarray([int(r[3].sum()) for r in chunk_rows[0]], np.int64)
            emb = np.zeros((n, int(kept.max(initial=0)), self._embedding_dim), np.float32)
            for idx, _, result in batches:
                for j, r in enumerate(idx):
                    emb[r, : kept[r]] = result[j, : kept[r]]
            pieces.append((emb, kept))
        if len(pieces) == 1:
            out, kept = pieces[0]
        else:
            kept = np.concatenate([k for _, k in pieces]) if pieces else np.zeros(0, np.int64)
            out = np.zeros((len(kept), int(kept.max(initial=0)), self._embedding_dim), np.float32)
            start = 0
            for emb, k in pieces:
                out[start : start + len(k), : emb.shape[1]] = emb
                start += len(k)
        folder_pooling = self.pipeline_token_pooling
        if folder_pooling is not None and folder_pooling.applies_to(task):  # the folder's own pooling
            out, kept = _padded(folder_pooling.pool([out[i, : kept[i]] for i in range(len(kept))], task=task),
                                self._embedding_dim)
        if normalize_embeddings:
            out = l2_normalize(out)
        if token_pooling is not None and token_pooling.applies_to(task):
            if folder_pooling is not None:
                warnings.warn("This model already includes token pooling in its pipeline. The additional "
                              "`token_pooling` pools further on top of it (compounding).", stacklevel=2)
            out, kept = _padded(token_pooling.pool([out[i, : kept[i]] for i in range(len(kept))], task=task),
                                self._embedding_dim)
        if truncate_dim is not None:  # padding rows stay zero
            out = l2_normalize(np.ascontiguousarray(out[..., :truncate_dim]))
        width = out.shape[1]
        mask = np.arange(width)[None, :] < kept[:, None]
        if return_padded:
            if single:
                return (out[0], mask[0]) if convert_to_numpy else (jnp.asarray(out[0]), jnp.asarray(mask[0]))
            return (out, mask) if convert_to_numpy else (jax.device_put(out, self.device),
                                                        jax.device_put(mask, self.device))
        result = [out[i, : kept[i]] for i in range(len(kept))]
        if not convert_to_numpy:
            result = [jax.device_put(r, self.device) for r in result]
        return result[0] if single else result

    def _hooks(self, prompt: str | None, task: str | None):
        """The engine hooks of ``encode`` and a one-element list holding the current chunk's token rows.

        Among texts of one length, those with the most attended tokens come first: [MASK]-expanded queries
        all have the query length, but only their real tokens are keys. A batch whose tokens past some
        point are attended by none passes the encoder only that prefix of its attention mask (on the
        same grid), and the encoder computes no keys or values for the rest: for STSb queries expanded to 32
        tokens the key/value projections shrink by ~46% (~8% of the matmul work), with the same numbers.
        Each batch comes back as host (B, W, D) embeddings with each row's scored tokens first."""
        current = [None]

        def tokenize(chunk: list[str]) -> list:
            current[0] = self._token_rows(chunk, prompt, task)
            return current[0]

        def attended(row) -> int:
            return int(np.flatnonzero(row[2]).max(initial=-1)) + 1

        def key_prefix(batch: dict, rows: list) -> dict:
            keys = seq_bucket(max(max(attended(r) for r in rows), 1), batch["input_ids"].shape[1])
            batch["attention_mask"] = batch["attention_mask"][:, :keys]
            return batch

        def compact(out: dict, batch: dict):
            scoring = batch["scoring_mask"]
            # each row's scored token slots first (a stable sort of "not scored"), so one gather compacts them
            gather = np.argsort(~scoring, axis=1, kind="stable").astype(np.int32)
            width = int(scoring.sum(axis=1).max(initial=0))
            return _compact(out["token_embeddings"], gather[:, : max(width, 1)])

        hooks = engine.Hooks(
            tokenize=tokenize, pad=self._pad_rows, max_length=self._max_tokens,
            lengths=lambda rows: np.asarray([len(r[0]) for r in rows], np.int64),
            order=lambda rows: -np.asarray([attended(r) for r in rows], np.int64),
            prepare=key_prefix if self._key_prefix else None, after=compact,
        )
        return hooks, current

    def encode_query(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """``encode`` with the "query" prompt (when the model has one) and task "query"."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        kwargs["task"] = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """``encode`` with the "document" prompt (when the model has one) and task "document"."""
        if prompt_name is None and prompt is None and "document" in self.prompts:
            prompt_name = "document"
        kwargs["task"] = "document"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    # ------------------------------------------------------------------ scores

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value) -> None:
        value = getattr(value, "value", value)
        if value not in SIMILARITY_FN_NAMES:
            raise ValueError(f"MultiVectorEncoder supports similarity_fn_name in {SIMILARITY_FN_NAMES}, got {value!r}")
        self._similarity_fn_name = value

    def similarity(self, embeddings1, embeddings2, **kwargs) -> jax.Array:
        """(N, M) MaxSim (or MeanMaxSim) scores between two collections of per-token embeddings (lists of
        (tokens, dim) arrays, or padded (n, T, dim) arrays; ``a_mask`` / ``b_mask`` for padded input)."""
        from jaxst.maxsim import maxsim

        kwargs.setdefault("length_normalize", self.similarity_fn_name == "meanmaxsim")
        return maxsim(embeddings1, embeddings2, **kwargs)

    def similarity_pairwise(self, embeddings1, embeddings2, **kwargs) -> jax.Array:
        """(N,) scores of matched pairs."""
        from jaxst.maxsim import maxsim_pairwise

        kwargs.setdefault("length_normalize", self.similarity_fn_name == "meanmaxsim")
        return maxsim_pairwise(embeddings1, embeddings2, **kwargs)

    @property
    def token_pooling(self) -> HierarchicalTokenPooling | None:
        """The pooling ``encode`` applies when a call passes none (sentence-transformers 6.3's model-level
        ``token_pooling``; not saved). The folder's own final pooling module is ``pipeline_token_pooling``."""
        return self._token_pooling

    @token_pooling.setter
    def token_pooling(self, value) -> None:
        if value is not None and not isinstance(value, HierarchicalTokenPooling):
            raise ValueError("token_pooling must be a jaxst.multi_vector_encoder.HierarchicalTokenPooling or None, "
                             f"got {type(value).__name__}")
        self._token_pooling = value

    def get_embedding_dimension(self) -> int:
        """The per-token embedding width ``encode`` returns (at most ``truncate_dim``, when set)."""
        return self._embedding_dim if self.truncate_dim is None else min(self.truncate_dim, self._embedding_dim)

    # ------------------------------------------------------------------ training hooks (jaxst.training)

    def training_tasks(self, n_columns: int, router_mapping=None) -> list:
        """Every column is routed: ``router_mapping``'s task, else ``column_tasks`` (query first, documents after)."""
        defaults = self.column_tasks(n_columns)
        return defaults if router_mapping is None else self._mapped_tasks(router_mapping, defaults)

    # ------------------------------------------------------------------ saving

    def folder_plan(self):
        """The modules as loaded, each written by its kind file, with this model's current settings: lengths
        and query expansion, the mask's skiplist, the folder's token pooling, ``truncate_dim`` (the model-level
        ``token_pooling`` is not saved, as in sentence-transformers 6.3); Dense modules say they map token
        embeddings (PyLate's configs predate the module IO names)."""
        settings = {
            "transformer": {"query_length": self.query_length, "document_length": self.document_length,
                            "query_expansion": self.query_expansion, "module_output_name": "token_embeddings"},
            "multi_vector_mask": MaskSettings(self.skiplist_words, self.skiplist_tasks,
                                              self.keep_only_token_ids).get_config_dict(),
            "dense": dict(_TOKEN_LEVEL),
        }
        if self.pipeline_token_pooling is not None:
            settings["token_pooling"] = self.pipeline_token_pooling.get_config_dict()
        plan = sentence_transformer_plan(
            hf_config=self.hf_config, module_specs=self._module_specs, max_seq_length=self.max_seq_length,
            prompts=self.prompts, default_prompt_name=self.default_prompt_name,
            similarity_fn_name=self.similarity_fn_name, truncate_dim=self.truncate_dim, unmapped=self._unmapped_tensors,
            params=self.params, settings=settings, model_class="MultiVectorEncoder")
        transformer = self._module_specs[0]
        if self._registered_prefixes:  # the saved tokenizer keeps the markers as single special tokens
            source = transformer.path / "tokenizer.json"
            data = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
            current = json.loads(self.tokenizer.backend.to_str())
            data = {**current, **data, "added_tokens": current["added_tokens"]}
            plan.copies.pop("tokenizer.json", None)
            plan.json_files["tokenizer.json"] = data
        return plan

    def __repr__(self) -> str:
        return (f"MultiVectorEncoder({str(self.model_folder)!r}, dim={self._embedding_dim}, "
                f"query_expansion={self.query_expansion}, document_length={self.document_length})")


def _padded(items: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-text (tokens_i, dim) arrays -> (n, T, dim) right-padded with zeros, and the lengths."""
    kept = np.asarray([len(x) for x in items], np.int64)
    out = np.zeros((len(items), int(kept.max(initial=0)), dim), np.float32)
    for i, x in enumerate(items):
        out[i, : len(x)] = x
    return out, kept


def _check_task(task) -> None:
    if task not in (None, "query", "document"):
        raise ValueError(f"task must be 'query', 'document' or None, got {task!r}")


def _mask_token(folder) -> str | None:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        token = read_json(folder / name, required=False).get("mask_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return token
    return None


__all__ = ["HierarchicalTokenPooling", "MultiVectorEncoder", "MultiVectorModule"]
