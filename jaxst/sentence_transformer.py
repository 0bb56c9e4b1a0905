"""``SentenceTransformer``: the familiar sentence-transformers API over pure jitted JAX functions.

    model = SentenceTransformer("all-MiniLM-L6-v2")
    model.params                      # a plain pytree (nested dict of arrays)
    batch = model.tokenize(texts)     # numpy int32 arrays
    model.apply(model.params, batch)  # (B, dim) jax.Array: pure, jittable, differentiable
    model.encode(texts)               # batching, bucketing, prompts, numpy out
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sized

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jaxst.compilation_cache import enable_compilation_cache
from jaxst.io.export import Saving, unmapped_tensors
from jaxst.io.folder import read_json, read_modules
from jaxst.io.hub import resolve_model_folder
from jaxst.io.npy import NpyStreamWriter
from jaxst.io.tokenizer import Tokenizer
from jaxst.io.weights import params_from_state_dict, read_state_dict
from jaxst.models import encoder_from_hf_config, model_type
from jaxst.parallel import data_mesh, replicated, resolve_devices, shard_batch
from jaxst.pipeline import Dense, Normalize, SentenceEncoder, dense_activation_name, forward
from jaxst.pooling import pooling_modes_from_config, truncate
from jaxst.quantization import check_precision, quantization_ranges, quantize_embeddings
from jaxst.similarity import similarity_functions

# Padded sequence lengths: few shapes to compile, little padding (the model's max_seq_length caps them).
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
# Texts read, sorted by length and batched together at a time: bounds memory when streaming an iterable of
# any size, while leaving enough texts to sort that batches pad little.
DEFAULT_CHUNK_SIZE = 16384


# Inference dtypes by name, with the aliases torch and the Hugging Face configs use.
INFERENCE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}


def resolve_dtype(dtype):
    """``"bfloat16"``/``"bf16"``, ``"float16"``/``"half"``/``"fp16"``, ``"float32"``, or such a jnp, numpy or
    torch dtype -> the jnp dtype."""
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:  # torch.float16 and friends print as "torch.float16"
            name = str(dtype)
    name = name.lower().removeprefix("torch.")
    name = _DTYPE_ALIASES.get(name, name)
    if name not in INFERENCE_DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(INFERENCE_DTYPES)}")
    return INFERENCE_DTYPES[name]


def _cast_floats(params, dtype):
    """Floating leaves of a params pytree cast to ``dtype``; integer leaves untouched."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def resolve_device(device) -> jax.Device | None:
    """``"cpu"``, ``"cuda"``/``"gpu"``, ``"tpu"`` (optionally ``":N"``) or a ``jax.Device``."""
    if device is None or isinstance(device, jax.Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or a jax.Device, got {type(device).__name__}")
    name, _, index = device.partition(":")
    backend = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "tpu": "tpu"}.get(name.lower())
    if backend is None:
        raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda', 'gpu', 'tpu' or a jax.Device")
    try:
        devices = jax.local_devices(backend=backend)  # under jax.distributed, only this process's devices
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not available: {e}") from None
    i = int(index) if index else 0
    if i >= len(devices):
        raise ValueError(f"device {device!r} is not available: {backend} has {len(devices)} device(s)")
    return devices[i]


def seq_bucket(longest: int, max_length: int) -> int:
    """Padded length for a batch whose longest text has ``longest`` tokens: the next multiple of 4 up
    to 64 tokens, of 8 up to 128, of 16 up to 256, then of 32. Batches are sorted by token count, so
    a fine grid wastes little compute on padding; each length compiles once (and the persistent
    compilation cache keeps it for the next process)."""
    step = 4 if longest <= 64 else 8 if longest <= 128 else 16 if longest <= 256 else 32
    return min(max(step, -(-longest // step) * step), max_length)


# On CPU a batch holds at most this many padded token slots (and at most batch_size texts): measured on
# 2 cores, ~220-token paragraphs encode ~1.45x faster 8 at a time than 32 at a time (the (B, N, T, T)
# attention scores fall out of cache), while short sentences keep their full batches.
CPU_BATCH_TOKENS = 2048


def batch_rows(padded_length: int, batch_size: int, max_tokens: int | None) -> int:
    """Texts per batch when the longest is padded to ``padded_length`` tokens: ``batch_size``, or fewer
    to stay within ``max_tokens`` token slots (a power of two, so few batch shapes compile)."""
    if max_tokens is None:
        return batch_size
    fit = max(1, max_tokens // max(padded_length, 1))
    return batch_size if fit >= batch_size else 1 << (fit.bit_length() - 1)


def batch_bucket(n: int, batch_size: int, multiple: int = 1) -> int:
    """Rows to pad a batch of ``n`` to: ``batch_size`` for full batches, else the next power of two; then
    rounded up to a ``multiple`` (the device count, so every device gets the same number of rows)."""
    rows = batch_size if n >= batch_size else min(batch_size, 1 << max(n - 1, 0).bit_length())
    return -(-rows // multiple) * multiple


def _checked_texts(texts: Iterable) -> Iterator[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode() input {i} is {type(t).__name__}, not str: {t!r:.80}")
        yield t


def _text_stream(inputs) -> tuple[Iterator[str], bool, int | None]:
    """``(texts, single, total)``: a lazy iterator over the texts, checked one by one as they are read;
    whether the input was one string; the number of texts when the input has a length, else None."""
    if inputs is None:
        raise TypeError("encode() needs a string or a list of strings, got None")
    if isinstance(inputs, str):
        return iter([inputs]), True, 1
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if isinstance(inputs, (dict, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(f"encode() needs a string or a list of strings, got {type(inputs).__name__}")
    return _checked_texts(inputs), False, len(inputs) if isinstance(inputs, Sized) else None


def _as_text_list(inputs) -> tuple[list[str], bool]:
    texts, single, _ = _text_stream(inputs)
    return list(texts), single


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(texts, size)):
        yield chunk


def _n_batches(total: int, chunk_size: int, batch_size: int) -> int:
    full, rest = divmod(total, chunk_size)
    return full * math.ceil(chunk_size / batch_size) + math.ceil(rest / batch_size)


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    """x / max(||x||, 1e-12) per row, as ``torch.nn.functional.normalize``."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(1e-12))


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class SentenceTransformer(Saving):
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
    ):
        """``dtype``: cast the weights for inference ("bfloat16", "float16", "float32", or a jnp/numpy/torch
        dtype), as ``model.bfloat16()`` / ``model.half()`` do after loading; None keeps float32."""
        enable_compilation_cache()  # before anything compiles; see jaxst.compilation_cache
        if model_name_or_path is None:
            raise ValueError("jaxst needs a model: pass a Hub name (e.g. 'all-MiniLM-L6-v2') or a folder")
        self.device = resolve_device(device)
        folder = resolve_model_folder(
            model_name_or_path,
            cache_folder=cache_folder,
            revision=revision,
            token=token,
            local_files_only=local_files_only,
        )
        self.model_folder = folder
        specs = read_modules(folder)
        transformer = specs[0]
        hf_config = read_json(transformer.path / "config.json")
        if "auto_map" in hf_config or any("auto_map" in s.config for s in specs):
            raise ValueError(
                f"{model_name_or_path!r} needs remote code (auto_map in its config); jaxst runs no remote code"
            )
        if trust_remote_code:
            warnings.warn("jaxst runs no remote code; trust_remote_code=True has no effect", stacklevel=2)
        encoder_cfg, encoder_cls = encoder_from_hf_config(hf_config)
        self.hf_config = hf_config
        self._max_tokens = encoder_cfg.max_tokens

        max_seq_length = transformer.config.get("max_seq_length")
        if max_seq_length is None:
            tok_cfg = read_json(transformer.path / "tokenizer_config.json", required=False)
            max_seq_length = min(int(tok_cfg.get("model_max_length", 1e9)), encoder_cfg.max_tokens)
        self.tokenizer = Tokenizer.from_folder(
            transformer.path, int(max_seq_length), bool(transformer.config.get("do_lower_case", False))
        )
        self._uses_token_types = encoder_cls.uses_token_types

        # Pipeline after the encoder: exactly one Pooling, then Dense / Normalize in order.
        pooling, heads, head_specs = None, [], []
        dim = encoder_cfg.hidden_size
        for spec in specs[1:]:
            if spec.kind == "pooling":
                if pooling is not None:
                    raise ValueError(f"{folder} has more than one Pooling module")
                pooling = spec.config
                modes = pooling_modes_from_config(spec.config)
                dim *= len(modes)
            elif pooling is None and spec.kind != "dropout":
                raise ValueError(f"{folder}: a {spec.kind} module before Pooling is not supported")
            elif spec.kind == "dense":
                c = spec.config
                if c.get("in_features") != dim:
                    raise ValueError(f"{spec.path}: Dense in_features {c.get('in_features')} != input dim {dim}")
                heads.append(
                    nnx.eval_shape(
                        lambda c=c: Dense(
                            c["in_features"],
                            c["out_features"],
                            c.get("bias", True),
                            dense_activation_name(c.get("activation_function", "torch.nn.modules.activation.Tanh")),
                            c.get("use_residual", False),
                            rngs=nnx.Rngs(0),
                        )
                    )
                )
                head_specs.append(spec)
                dim = c["out_features"]
            elif spec.kind == "normalize":
                heads.append(Normalize())
                head_specs.append(spec)
        if pooling is None:
            raise ValueError(f"{folder} has no Pooling module; jaxst needs one to make sentence embeddings")
        module = SentenceEncoder(
            nnx.eval_shape(lambda: encoder_cls(encoder_cfg, rngs=nnx.Rngs(0))),
            modes,
            bool(pooling.get("include_prompt", True)),
            heads,
        )
        self.graphdef, _ = nnx.split(module, nnx.Param)

        encoder_sd = read_state_dict(transformer.path)
        prefixes = (f"{encoder_cls.base_model_prefix}.",)  # keys of task checkpoints: "roberta.embeddings..."
        params = {"encoder": params_from_state_dict(module.encoder, encoder_sd, prefixes)}
        for i, (head, spec) in enumerate(zip(heads, head_specs)):
            if spec.kind == "dense":
                params.setdefault("heads", {})[i] = params_from_state_dict(head, read_state_dict(spec.path))
        if dtype is not None:
            params = _cast_floats(params, resolve_dtype(dtype))
        self.params = jax.device_put(params, self.device) if self.device else jax.device_put(params)
        self._embedding_dim = dim
        self._include_prompt = module.include_prompt
        # What save() needs besides params: the module specs as loaded, and the checkpoint tensors jaxst
        # does not model but transformers' AutoModel has (BERT's pooler), so a saved folder loads with none missing.
        self._module_specs = specs
        self._unmapped_tensors = unmapped_tensors(encoder_sd, prefixes)

        st_config = read_json(folder / "config_sentence_transformers.json", required=False)
        self.prompts = {"query": "", "document": ""}
        self.prompts.update({k: v for k, v in (st_config.get("prompts") or {}).items() if v is not None})
        self.prompts.update(prompts or {})
        self.default_prompt_name = default_prompt_name or st_config.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default prompt name {self.default_prompt_name!r} not in prompts {list(self.prompts)!r}"
            )
        self.similarity_fn_name = similarity_fn_name or st_config.get("similarity_fn_name") or "cosine"
        self.truncate_dim = truncate_dim if truncate_dim is not None else st_config.get("truncate_dim")

    # ------------------------------------------------------------------ functional core

    def tokenize(self, texts: list[str] | str, prompt: str | None = None) -> dict[str, np.ndarray]:
        """Texts -> numpy int32 ``input_ids``, ``attention_mask`` (and ``token_type_ids``), padded to
        the longest. With a ``prompt`` it is prepended and ``prompt_length`` is added to the batch."""
        texts, _ = _as_text_list(texts)
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

    # ------------------------------------------------------------------ dtype

    @property
    def dtype(self) -> np.dtype:
        """The dtype the weights are stored and the encoder computes in (float32 unless cast)."""
        return next(x.dtype for x in jax.tree.leaves(self.params) if jnp.issubdtype(x.dtype, jnp.floating))

    def to_dtype(self, dtype) -> SentenceTransformer:
        """Cast the weights to ``dtype`` for inference, in place; returns the model.

        The encoder then computes in that dtype, with attention scores and softmax, LayerNorm statistics,
        pooling and the Dense/Normalize heads in float32; ``encode`` returns float32 embeddings. Casting
        down loses precision for good: ``float()`` after ``half()`` does not restore the original weights."""
        self.params = _cast_floats(self.params, resolve_dtype(dtype))
        return self

    def half(self) -> SentenceTransformer:
        """float16 weights and compute (as ``torch.nn.Module.half``); returns the model."""
        return self.to_dtype(jnp.float16)

    def bfloat16(self) -> SentenceTransformer:
        """bfloat16 weights and compute; returns the model. The usual choice on TPUs and recent GPUs."""
        return self.to_dtype(jnp.bfloat16)

    def float(self) -> SentenceTransformer:
        """float32 weights and compute; returns the model."""
        return self.to_dtype(jnp.float32)

    # ------------------------------------------------------------------ properties

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if isinstance(value, int) and value > self._max_tokens:
            raise ValueError(f"max_seq_length {value} exceeds the {self._max_tokens} positions the model has "
                             "(max_position_embeddings)")
        self.tokenizer.max_length = value

    def get_embedding_dimension(self) -> int:
        """Output dimension of ``encode`` (after ``truncate_dim``, when set)."""
        return self._embedding_dim if self.truncate_dim is None else min(self.truncate_dim, self._embedding_dim)

    get_sentence_embedding_dimension = get_embedding_dimension

    def get_max_seq_length(self) -> int:
        return self.max_seq_length

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

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
            if prompt_name is not None:
                warnings.warn("both prompt and prompt_name given; using prompt", stacklevel=3)
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt name {prompt_name!r} not found in prompts {list(self.prompts)!r}")
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

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
        _positive_int("batch_size", batch_size)
        if max_batch_tokens is not None and max_batch_tokens != "auto":
            _positive_int("max_batch_tokens", max_batch_tokens)
        chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else _positive_int("chunk_size", chunk_size)
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
        check_precision(precision)
        if truncate_dim is None:
            truncate_dim = self.truncate_dim
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
        if output_path is not None:
            if output_value != "sentence_embedding":
                raise ValueError("output_path writes sentence embeddings; output_value must be 'sentence_embedding'")
            if convert_to_tensor:
                raise ValueError("output_path returns the written .npy memory-mapped; convert_to_tensor=True "
                                 "does not apply")
            if os.path.isdir(output_path):
                raise ValueError(f"output_path {os.fspath(output_path)!r} is a directory")
        texts, single, total = _text_stream(inputs)
        prompt = self._resolve_prompt(prompt, prompt_name)
        params, mesh = self._placement(device, pool)
        if max_batch_tokens == "auto":
            on_cpu = all(d.platform == "cpu" for d in jax.tree.leaves(params)[0].devices())
            max_batch_tokens = CPU_BATCH_TOKENS if on_cpu else None
        keep_tokens = output_value != "sentence_embedding"
        if keep_tokens:
            convert_to_numpy = convert_to_tensor = False

        bar = tqdm(total=None if total is None else _n_batches(total, chunk_size, batch_size), desc="Batches",
                   disable=not show_progress_bar)
        with bar:
            chunks = (self._run(chunk, prompt, batch_size, bar, params, mesh, keep_tokens, max_batch_tokens)
                      for chunk in _chunks(texts, chunk_size))
            if keep_tokens:
                outputs = [o for chunk in chunks for o in chunk]
                if output_value is not None:
                    result = [o[output_value] for o in outputs]
                    return result[0] if single else result
                for o in outputs:
                    o["sentence_embedding"] = truncate(o["sentence_embedding"], truncate_dim)
                return outputs[0] if single else outputs

            dim = self._embedding_dim if truncate_dim is None else min(truncate_dim, self._embedding_dim)
            embeddings = (self._postprocess(e, truncate_dim, normalize_embeddings) for e in chunks)
            if output_path is not None:
                _write_npy(embeddings, output_path, precision, dim, chunk_size)
                out = np.load(output_path, mmap_mode="r")
                return out[0] if single else out
            pieces = list(embeddings)
        emb = np.concatenate(pieces) if pieces else np.zeros((0, dim), np.float32)
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
        return _normalize_rows(emb) if normalize_embeddings else emb

    def _placement(self, device, pool) -> tuple[dict, Mesh | None]:
        """The params to run with and the data-parallel mesh (or None) for one ``encode`` call."""
        if pool is not None:
            if not isinstance(pool, dict) or "mesh" not in pool:
                raise TypeError("pool must be the dict start_multi_process_pool() returned")
            if pool["mesh"] is None:
                raise ValueError("this pool was stopped with stop_multi_process_pool(); start a new one")
            mesh = pool["mesh"]
        elif isinstance(device, (list, tuple)):
            mesh = data_mesh(resolve_devices(device))
        elif device is not None or self.device is not None:
            device = resolve_device(device) or self.device
            return jax.device_put(self.params, device), None
        elif jax.local_device_count() > 1:
            mesh = data_mesh(jax.local_devices())
        else:
            return self.params, None
        return self._replicated_params(mesh), mesh

    def _replicated_params(self, mesh: Mesh) -> dict:
        """``self.params`` copied to every device of ``mesh``, kept until the params or the mesh change."""
        leaves = jax.tree.leaves(self.params)
        cached = getattr(self, "_mesh_params", None)
        if cached and cached[0] == mesh and len(cached[1]) == len(leaves) and all(
            a is b for a, b in zip(cached[1], leaves)
        ):
            return cached[2]
        params = jax.device_put(self.params, replicated(mesh))
        self._mesh_params = (mesh, leaves, params)
        return params

    def _run(self, texts: list[str], prompt, batch_size: int, bar, params, mesh: Mesh | None, keep_tokens: bool,
             max_batch_tokens: int | None = None):
        """One chunk of texts: length-sorted, bucketed batches through the jitted forward; input order out.

        Returns the (N, D) float32 sentence embeddings (numpy), or with ``keep_tokens`` one dict per text
        holding its token embeddings without padding. With a ``mesh``, every batch is split by rows over
        its devices."""
        if prompt:
            texts = [prompt + t for t in texts]
        # Sorted by token count (not characters, as sentence-transformers does): every batch holds
        # texts of nearly one length, so little of each padded batch is padding.
        all_encodings = self.tokenizer.encode_ids(texts) if texts else []
        order = np.argsort([-len(e.ids) for e in all_encodings], kind="stable")
        prompt_length = None
        if prompt and not self._include_prompt:
            prompt_length = np.int32(self.tokenizer.prompt_length(prompt))
        place = None
        if mesh is None and (params is not self.params or self.device is not None):
            place = jax.tree.leaves(params)[0].sharding
        devices = 1 if mesh is None else mesh.size
        budget = None if max_batch_tokens is None else max_batch_tokens * devices
        plan, start = [], 0  # (first, rows, padded length); longest first, so a batch's first text sets its length
        while start < len(texts):
            length = seq_bucket(len(all_encodings[order[start]].ids), self.max_seq_length)
            rows = batch_rows(length, batch_size, budget)
            plan.append((start, rows, length))
            start += rows
        estimated = -(-len(texts) // batch_size)  # what the bar's total counted for this chunk
        if bar.total is not None and len(plan) != estimated:
            bar.total += len(plan) - estimated
            bar.refresh()
        pieces, per_text = [], []
        for start, rows, length in plan:
            idx = order[start : start + rows]
            encodings = [all_encodings[i] for i in idx]
            batch = self.tokenizer.pad(
                encodings,
                length,
                batch_bucket(len(idx), rows, devices),
                types=self._uses_token_types,
            )
            if prompt_length is not None:
                batch["prompt_length"] = prompt_length
            if mesh is not None:
                batch = shard_batch(batch, mesh)
            elif place is not None:
                batch = jax.device_put(batch, place)
            out = forward(self.graphdef, params, batch)
            if keep_tokens:
                for r, e in enumerate(encodings):
                    n = len(e.ids)
                    per_text.append({
                        "sentence_embedding": out["sentence_embedding"][r],
                        "token_embeddings": out["token_embeddings"][r, :n],
                        "input_ids": batch["input_ids"][r, :n],
                        "attention_mask": batch["attention_mask"][r, :n],
                    })
            else:
                pieces.append((idx, out["sentence_embedding"]))  # dispatched; read back once per chunk
            bar.update(1)
        if keep_tokens:
            return [per_text[i] for i in np.argsort(order, kind="stable")]
        emb = np.empty((len(texts), self._embedding_dim), np.float32)
        for idx, e in pieces:
            emb[idx] = np.asarray(e)[: len(idx)]  # rows back to input order
        return emb

    # ------------------------------------------------------------------ several devices

    def start_multi_process_pool(self, target_devices: list[str] | None = None) -> dict:
        """A data-parallel pool over ``target_devices`` (default: every local device), for ``encode(pool=...)``.

        sentence-transformers starts a worker process per device; jaxst starts none: the pool is a
        device mesh, and ``encode`` splits each batch over it in this process."""
        devices = resolve_devices(target_devices)
        return {"mesh": data_mesh(devices), "devices": devices}

    @staticmethod
    def stop_multi_process_pool(pool: dict) -> None:
        """Release a pool from ``start_multi_process_pool``; encoding with it afterwards is an error."""
        if not isinstance(pool, dict) or "mesh" not in pool:
            raise TypeError("pool must be the dict start_multi_process_pool() returned")
        pool["mesh"] = None

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

    # ------------------------------------------------------------------ save

    def __repr__(self) -> str:
        return (
            f"SentenceTransformer({str(self.model_folder)!r}, model_type={model_type(self.hf_config)!r}, "
            f"dim={self._embedding_dim}, max_seq_length={self.max_seq_length})"
        )


def _write_npy(embeddings: Iterator[np.ndarray], path, precision: str, dim: int, chunk_size: int) -> None:
    """Stream float32 embedding chunks into the ``.npy`` at ``path`` in ``precision``, atomically.

    binary/ubinary quantize row by row, chunk by chunk. int8/uint8 need the ranges of the whole set
    (as ``quantize_embeddings`` computes them), so the float32 rows go to a scratch file beside the
    target first, with a running per-dimension min and max, and are quantized from it in a second pass."""
    width = dim if not precision.endswith("binary") else (dim + 7) // 8
    dtype = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}
    two_pass = precision in ("int8", "uint8")
    with NpyStreamWriter(path, np.float32 if two_pass else dtype[precision], (dim if two_pass else width,)) as w:
        lo = hi = None
        for emb in embeddings:
            if two_pass:
                if len(emb):
                    lo = emb.min(axis=0) if lo is None else np.minimum(lo, emb.min(axis=0))
                    hi = emb.max(axis=0) if hi is None else np.maximum(hi, emb.max(axis=0))
                w.append(emb)
            else:
                w.append(emb if precision == "float32" else quantize_embeddings(emb, precision))
        if not two_pass:
            w.commit()
            return
        rows = w.written()
        if w.rows == 1:
            quantization_ranges(np.asarray(rows))  # raises the in-memory path's error for a single embedding
        with NpyStreamWriter(path, dtype[precision], (width,)) as q:
            ranges = None if lo is None else np.stack([lo, hi])
            for start in range(0, w.rows, chunk_size):
                q.append(quantize_embeddings(np.asarray(rows[start : start + chunk_size]), precision, ranges=ranges))
            q.commit()


__all__ = ["SentenceTransformer"]
