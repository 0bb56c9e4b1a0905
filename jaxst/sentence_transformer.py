"""``SentenceTransformer``: the familiar sentence-transformers API over pure jitted JAX functions.

    model = SentenceTransformer("all-MiniLM-L6-v2")
    model.params                      # a plain pytree (nested dict of arrays)
    batch = model.tokenize(texts)     # numpy int32 arrays
    model.apply(model.params, batch)  # (B, dim) jax.Array: pure, jittable, differentiable
    model.encode(texts)               # batching, bucketing, prompts, numpy out
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst.base import BaseModel, is_int8
from jaxst.checks import positive_int
from jaxst.engine import DEFAULT_CHUNK_SIZE, check_batching, text_list, text_stream
from jaxst.io.export import sentence_transformer_plan, unmapped_tensors
from jaxst.io.family import modules_family
from jaxst.io.folder import read_module_list, read_modules
from jaxst.io.npy import write_embeddings_npy
from jaxst.io.tokenizer import Tokenizer
from jaxst.io.weights import open_state_dict
from jaxst.models import model_type
from jaxst.modules import param_heads, static_embedding
from jaxst.modules.pooling import sentence_encoder
from jaxst.pipeline import forward
from jaxst.pooling import l2_normalize, truncate
from jaxst.quantization import check_precision, quantize_embeddings
from jaxst.search import aligned_empty
from jaxst.similarity import similarity_functions

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
__all__ = ["DEFAULT_CHUNK_SIZE", "SentenceTransformer"]  # DEFAULT_CHUNK_SIZE: its old home (jaxst.engine)


class SentenceTransformer(BaseModel):
    """Load a sentence-transformers model (Hub name or folder) and embed text with JAX."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        device: str | jax.Device | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        truncate_dim: int | None = None,
        dtype=None,
        mesh=None,
    ):
        """``dtype``: cast the weights for inference ("bfloat16", "float16", "float32", or a jnp/numpy/torch
        dtype), as ``model.bfloat16()`` / ``model.half()`` do after loading; None keeps float32.
        ``mesh``: a ``jax.sharding.Mesh`` to split the weights over (``jaxst.base.weight_sharding``), for
        models larger than one device; each tensor goes to its devices as it is read."""
        super().__init__(
            model_name_or_path, device=device, prompts=prompts, default_prompt_name=default_prompt_name,
            cache_folder=cache_folder, trust_remote_code=trust_remote_code, revision=revision,
            local_files_only=local_files_only, token=token, mesh=mesh, base_prompts={"query": "", "document": ""},
        )
        load_dtype = self.load_dtype(dtype)
        specs = read_module_list(self.model_folder)
        family = modules_family(specs)
        if family == "SparseEncoder":
            raise ValueError(f"{model_name_or_path!r} is a sparse model ({', '.join(s.kind for s in specs)}); "
                             "load it with jaxst.SparseEncoder")
        if family == "MultiVectorEncoder":
            raise ValueError(f"{model_name_or_path!r} is a multi-vector model ({', '.join(s.kind for s in specs)}); "
                             "load it with jaxst.MultiVectorEncoder")
        specs = read_modules(self.model_folder)
        if any("auto_map" in s.config for s in specs):
            raise ValueError(f"{model_name_or_path!r} needs remote code (auto_map in a module config); "
                             "jaxst runs no remote code")
        transformer = specs[0]
        if transformer.kind == "static_embedding":
            module, params, encoder_sd, prefixes = self._load_static(transformer, specs[1:], dtype, load_dtype)
        else:
            encoder_cfg, encoder_cls = self.load_transformer(transformer.path, transformer.config)
            module, self._embedding_dim = sentence_encoder(
                nnx.eval_shape(lambda: encoder_cls(encoder_cfg, rngs=nnx.Rngs(0))), encoder_cfg.hidden_size,
                [(s.kind, s.config, s.path) for s in specs[1:]], self.model_folder,
                hidden_states=bool(self.hf_config.get("output_hidden_states", False)),
            )
            encoder_sd = open_state_dict(transformer.path)
            prefixes = (f"{encoder_cls.base_model_prefix}.",)  # keys of task checkpoints: "roberta.embeddings..."
            params = {"encoder": self.load_params(module.encoder, encoder_sd, prefixes, load_dtype)}
        self.graphdef, _ = nnx.split(module, nnx.Param)
        self._include_prompt = module.include_prompt
        for i, spec in param_heads(specs[1:]):  # params["heads"][i]: the Dense modules' weights
            params.setdefault("heads", {})[i] = self.load_params(module.heads[i], open_state_dict(spec.path), (),
                                                                 load_dtype)
        self.params = params
        self.apply_dtype(dtype, module)
        # What save() needs besides params: the module specs as loaded, and the checkpoint tensors jaxst
        # does not model but transformers' AutoModel has (BERT's pooler), so a saved folder loads with none missing.
        self._module_specs = specs
        self._unmapped_tensors = unmapped_tensors(encoder_sd, prefixes)

        self.similarity_fn_name = similarity_fn_name or self.st_config.get("similarity_fn_name") or "cosine"
        self.truncate_dim = truncate_dim if truncate_dim is not None else self.st_config.get("truncate_dim")

    def _load_static(self, spec, heads: list, dtype, load_dtype):
        """A static model (StaticEmbedding first): its token table as the encoder of a mean-pooling
        ``SentenceEncoder``, its own tokenizer (no special tokens, no length limit unless its tokenizer.json
        sets one). Returns (module, params, state dict, key prefixes)."""
        if is_int8(dtype):
            raise ValueError("dtype='int8' quantizes a Transformer's dense layers; a StaticEmbedding model has "
                             "none (its table is a lookup): load it in float32, bfloat16 or float16")
        state_dict = open_state_dict(spec.path)
        table = static_embedding.load_weight(state_dict, spec.path)
        self.tokenizer = Tokenizer.from_folder(spec.path, static_embedding.token_limit(spec.path))
        self.tokenizer.special_tokens = False
        self.hf_config = None
        self._max_tokens = static_embedding.NO_LENGTH_LIMIT
        self._uses_token_types = False
        self._fit_vocabulary(table.shape[0], spec.path)
        module, self._embedding_dim = sentence_encoder(
            static_embedding.build(*table.shape), table.shape[1],
            [(s.kind, s.config, s.path) for s in heads], self.model_folder,
            pooling_modes=static_embedding.POOLING_MODES,
        )
        params = {"encoder": self.load_params(module.encoder, {"embedding.weight": table}, (), load_dtype)}
        return module, params, state_dict, ()

    # ------------------------------------------------------------------ functional core

    def tokenize(self, texts: list[str] | str, prompt: str | None = None) -> dict[str, np.ndarray]:
        """Texts -> numpy int32 ``input_ids``, ``attention_mask`` (and ``token_type_ids``), padded to
        the longest. With a ``prompt`` it is prepended and ``prompt_length`` is added to the batch."""
        texts, _ = text_list(texts)
        if prompt:
            texts = [prompt + t for t in texts]
        batch = self.tokenizer(texts, types=self._uses_token_types)
        if prompt:
            batch["prompt_length"] = np.int32(self.tokenizer.prompt_length(prompt))
        return batch

    def apply(self, params, batch: dict) -> jax.Array:
        """Pure: (params, tokenized batch) -> (B, dim) sentence embeddings, as ``encode`` computes them."""
        return forward(self.graphdef, params, dict(batch))["sentence_embedding"]

    def forward(self, params, batch: dict) -> dict:
        """Pure: the sentence embeddings and the (B, T, H) token embeddings."""
        return forward(self.graphdef, params, dict(batch))

    # ------------------------------------------------------------------ properties

    def get_embedding_dimension(self) -> int:
        """Output dimension of ``encode`` (after ``truncate_dim``, when set)."""
        return self._embedding_dim if self.truncate_dim is None else min(self.truncate_dim, self._embedding_dim)

    get_sentence_embedding_dimension = get_embedding_dimension

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value) -> None:
        similarity_functions(value)  # validates
        self._similarity_fn_name = getattr(value, "value", value)
        if self._similarity_fn_name == "dot_product":
            self._similarity_fn_name = "dot"

    def similarity(self, embeddings1, embeddings2) -> jax.Array:
        """(N, M) scores with the model's ``similarity_fn_name``."""
        return similarity_functions(self.similarity_fn_name)[0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2) -> jax.Array:
        """(N,) scores of row i with row i."""
        return similarity_functions(self.similarity_fn_name)[1](embeddings1, embeddings2)

    # ------------------------------------------------------------------ encode

    def encode(
        self,
        inputs=None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | jax.Device | list | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: dict | None = None,
        chunk_size: int | None = None,
        *,
        output_path: str | os.PathLike | None = None,
        max_batch_tokens: int | None | str = "auto",
        **kwargs,
    ):
        """Embed a string, a list of strings or any iterable of strings; see sentence-transformers' ``encode``.

        Texts are read ``chunk_size`` at a time (default 16,384), sorted by length within the chunk and
        run in bucketed batches, so a generator over millions of lines is never held in memory. With
        ``output_path`` the embeddings are written chunk by chunk to that ``.npy`` file (atomically:
        the file appears only when complete) and returned memory-mapped read-only, so memory stays
        bounded whatever the corpus size.

        ``pool`` (from ``start_multi_process_pool``) or a list of devices as ``device`` splits every
        batch over those devices; with several local devices and no device chosen, all of them are used.

        ``max_batch_tokens`` caps the padded token slots of a batch (per device): long texts then run
        in smaller batches than ``batch_size``. ``"auto"``: 2,048 on CPU, where it is faster, no cap on
        accelerators; None: no cap.
        """
        if "sentences" in kwargs:
            if inputs is not None:
                raise TypeError("encode() got both `inputs` and the deprecated `sentences`")
            warnings.warn("`sentences` is deprecated; use `inputs`", DeprecationWarning, stacklevel=2)
            inputs = kwargs.pop("sentences")
        kwargs.pop("task", None)  # accepted for encode_query/encode_document; jaxst has no Router
        if kwargs:
            raise ValueError(f"encode() got keyword arguments it does not use: {sorted(kwargs)}")
        chunk_size = check_batching(batch_size, max_batch_tokens, chunk_size)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
        check_precision(precision)
        if truncate_dim is None:
            truncate_dim = self.truncate_dim
        positive_int("truncate_dim", truncate_dim, optional=True)
        if output_path is not None:
            if output_value != "sentence_embedding":
                raise ValueError("output_path writes sentence embeddings; output_value must be 'sentence_embedding'")
            if convert_to_tensor:
                raise ValueError("output_path returns the written .npy memory-mapped; convert_to_tensor=True "
                                 "does not apply")
            if os.path.isdir(output_path):
                raise ValueError(f"output_path {os.fspath(output_path)!r} is a directory")
        texts, single, total = text_stream(inputs)
        prompt = self._resolve_prompt(prompt, prompt_name)
        keep_tokens = output_value != "sentence_embedding"
        if keep_tokens:
            convert_to_numpy = convert_to_tensor = False
        results = self._run(texts, total, prompt, keep_tokens, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                            chunk_size=chunk_size, show_progress_bar=show_progress_bar, device=device, pool=pool)
        if keep_tokens:
            outputs = [o for chunk in results for o in chunk]
            if output_value is not None:
                result = [o[output_value] for o in outputs]
                return result[0] if single else result
            for o in outputs:
                o["sentence_embedding"] = truncate(o["sentence_embedding"], truncate_dim)
            return outputs[0] if single else outputs

        dim = self._embedding_dim if truncate_dim is None else min(truncate_dim, self._embedding_dim)
        embeddings = (self._postprocess(e, truncate_dim, normalize_embeddings) for e in results)
        if output_path is not None:
            write_embeddings_npy(embeddings, output_path, precision, dim, chunk_size)
            out = np.load(output_path, mmap_mode="r")
            return out[0] if single else out
        pieces = list(embeddings)
        # 64-byte aligned: on the CPU backend util.semantic_search and jax.device_put then read this
        # array in place instead of copying it (a 1M x 384 corpus: ~1.5 GB not copied per search)
        emb = aligned_empty((sum(len(p) for p in pieces), dim), np.float32)
        if pieces:
            np.concatenate(pieces, out=emb)
        if precision != "float32":
            emb = quantize_embeddings(emb, precision)
        if convert_to_tensor:
            out = jax.device_put(emb, self.device) if self.device is not None else jnp.asarray(emb)
        elif convert_to_numpy:
            out = emb
        else:
            out = list(jnp.asarray(emb))
        return out[0] if single else out

    @staticmethod
    def _postprocess(emb: np.ndarray, truncate_dim: int | None, normalize_embeddings: bool) -> np.ndarray:
        """Per row, in sentence-transformers' order: Matryoshka truncation, then normalization."""
        emb = truncate(emb, truncate_dim)
        return l2_normalize(emb) if normalize_embeddings else emb

    def encode_tokenized(self, encodings: list, prompt: str | None = None, batch_size: int = 32,
                         max_batch_tokens: int | None | str = "auto") -> np.ndarray:
        """The (n, D) float32 sentence embeddings of texts already tokenized: ``self.tokenizer.encode_ids``'
        encodings of the texts with ``prompt`` in front (or anything with ``ids`` and ``type_ids``, e.g. token
        ids a client sent), batched as ``encode`` batches them. A server tokenizes each request once, to count
        its tokens, and runs those encodings here instead of tokenizing the texts again."""
        encodings = list(encodings)
        chunks = self._run(iter(encodings), len(encodings), prompt, False, tokenized=True, batch_size=batch_size,
                           max_batch_tokens=max_batch_tokens, chunk_size=max(len(encodings), 1),
                           show_progress_bar=False, device=None, pool=None)
        pieces = list(chunks)
        return np.concatenate(pieces) if pieces else np.empty((0, self._embedding_dim), np.float32)

    def _run(self, texts, total: int | None, prompt: str | None, keep_tokens: bool, tokenized: bool = False,
             **batching):
        """The texts through the engine (``BaseModel.encode_chunks``), one result per chunk of ``chunk_size``
        texts, in input order: the (N, D) float32 sentence embeddings (numpy), or with ``keep_tokens`` one
        dict per text holding its token embeddings without padding. Texts are sorted by token count (not
        characters, as sentence-transformers does): every batch holds texts of nearly one length.
        ``tokenized``: ``texts`` are encodings already (``encode_tokenized``)."""
        extra = {}
        if prompt and not self._include_prompt:
            extra["prompt_length"] = np.int32(self.tokenizer.prompt_length(prompt))

        def tokenize(chunk: list) -> list:
            if tokenized:
                return chunk
            return self.tokenizer.encode_ids([prompt + t for t in chunk] if prompt else chunk) if chunk else []

        if keep_tokens:  # every output stays on the device, as it is returned
            hooks = self.token_hooks(tokenize, extra, fetch=None)
        else:
            hooks = self.token_hooks(tokenize, extra, after=lambda out, batch: out["sentence_embedding"])
        for _, n, batches in self.encode_chunks(texts, total, hooks, forward, **batching):
            if keep_tokens:
                per_text = [None] * n
                for idx, batch, out in batches:
                    for r, i in enumerate(idx):
                        length = int(batch["attention_mask"][r].sum())
                        per_text[i] = {
                            "sentence_embedding": out["sentence_embedding"][r],
                            "token_embeddings": out["token_embeddings"][r, :length],
                            "input_ids": batch["input_ids"][r, :length],
                            "attention_mask": batch["attention_mask"][r, :length],
                        }
                yield per_text
                continue
            emb = np.empty((n, self._embedding_dim), np.float32)
            for idx, _, e in batches:
                emb[idx] = e[: len(idx)]  # rows back to input order
            yield emb

    def encode_query(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """``encode`` with the model's "query" prompt unless another is given."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """``encode`` with the model's "document" (or "passage"/"corpus") prompt unless another is given."""
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def folder_plan(self):
        return sentence_transformer_plan(
            hf_config=self.hf_config, module_specs=self._module_specs, max_seq_length=self.max_seq_length,
            prompts=self.prompts, default_prompt_name=self.default_prompt_name,
            similarity_fn_name=self.similarity_fn_name, truncate_dim=self.truncate_dim, unmapped=self._unmapped_tensors,
        )

    def __repr__(self) -> str:
        return (
            f"SentenceTransformer({str(self.model_folder)!r}, "
            f"model_type={'static_embedding' if self.hf_config is None else model_type(self.hf_config)!r}, "
            f"dim={self._embedding_dim}, max_seq_length={self.max_seq_length})"
        )

