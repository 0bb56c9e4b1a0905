"""``SentenceTransformer``: the familiar sentence-transformers API over pure jitted JAX functions.

    model = SentenceTransformer("all-MiniLM-L6-v2")
    model.params                      # a plain pytree (nested dict of arrays)
    batch = model.tokenize(texts)     # numpy int32 arrays
    model.apply(model.params, batch)  # (B, dim) jax.Array: pure, jittable, differentiable
    model.encode(texts)               # batching, bucketing, prompts, numpy out
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxst.io.export import save_model, unmapped_tensors
from jaxst.io.folder import read_json, read_modules
from jaxst.io.hub import resolve_model_folder
from jaxst.io.tokenizer import Tokenizer
from jaxst.io.weights import params_from_state_dict, read_state_dict
from jaxst.models import encoder_from_hf_config, model_type
from jaxst.pipeline import Dense, Normalize, SentenceEncoder, dense_activation_name, forward
from jaxst.pooling import normalize, pooling_modes_from_config, truncate
from jaxst.quantization import check_precision, quantize_embeddings
from jaxst.similarity import similarity_functions

# Padded sequence lengths: few shapes to compile, little padding (the model's max_seq_length caps them).
SEQ_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 320, 384, 448, 512)
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)


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
        devices = jax.devices(backend)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not available: {e}") from None
    i = int(index) if index else 0
    if i >= len(devices):
        raise ValueError(f"device {device!r} is not available: {backend} has {len(devices)} device(s)")
    return devices[i]


def seq_bucket(longest: int, max_length: int) -> int:
    for b in SEQ_BUCKETS:
        if b >= longest:
            return min(b, max_length)
    return max_length


def batch_bucket(n: int, batch_size: int) -> int:
    """Rows to pad a batch of ``n`` to: ``batch_size`` for full batches, else the next power of two."""
    return batch_size if n >= batch_size else min(batch_size, 1 << max(n - 1, 0).bit_length())


def _as_text_list(inputs) -> tuple[list[str], bool]:
    if inputs is None:
        raise TypeError("encode() needs a string or a list of strings, got None")
    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, np.ndarray):
        inputs = inputs.tolist()
    if isinstance(inputs, (dict, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(f"encode() needs a string or a list of strings, got {type(inputs).__name__}")
    texts = list(inputs)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode() input {i} is {type(t).__name__}, not str: {t!r:.80}")
    return texts, False


class SentenceTransformer:
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
    ):
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
        device: str | jax.Device | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        **kwargs,
    ):
        """Embed a string or a list of strings; see sentence-transformers' ``encode``."""
        if "sentences" in kwargs:
            if inputs is not None:
                raise TypeError("encode() got both `inputs` and the deprecated `sentences`")
            warnings.warn("`sentences` is deprecated; use `inputs`", DeprecationWarning, stacklevel=2)
            inputs = kwargs.pop("sentences")
        kwargs.pop("task", None)  # accepted for encode_query/encode_document; jaxst has no Router
        if kwargs:
            raise ValueError(f"encode() got keyword arguments it does not use: {sorted(kwargs)}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
        check_precision(precision)
        if truncate_dim is None:
            truncate_dim = self.truncate_dim
        if truncate_dim is not None and (not isinstance(truncate_dim, int) or truncate_dim < 1):
            raise ValueError(f"truncate_dim must be a positive integer, got {truncate_dim!r}")
        texts, single = _as_text_list(inputs)
        prompt = self._resolve_prompt(prompt, prompt_name)
        device = resolve_device(device) or self.device
        params = self.params if device is None else jax.device_put(self.params, device)

        if output_value != "sentence_embedding":
            convert_to_numpy = convert_to_tensor = False

        outputs = self._run(texts, prompt, batch_size, bool(show_progress_bar), params,
                            keep_tokens=output_value != "sentence_embedding")
        if output_value is not None and output_value != "sentence_embedding":
            result = [o[output_value] for o in outputs]
            return result[0] if single else result
        if output_value is None:
            for o in outputs:
                o["sentence_embedding"] = truncate(o["sentence_embedding"], truncate_dim)
            return outputs[0] if single else outputs

        dim = self._embedding_dim if truncate_dim is None else min(truncate_dim, self._embedding_dim)
        emb = outputs if len(texts) else jnp.zeros((0, dim), jnp.float32)
        emb = truncate(emb, truncate_dim)
        if normalize_embeddings:
            emb = normalize(emb)
        if precision != "float32":
            emb = jnp.asarray(quantize_embeddings(np.asarray(emb), precision))
        if convert_to_tensor:
            out = emb
        elif convert_to_numpy:
            out = np.asarray(emb)
        else:
            out = list(emb)
        return out[0] if single else out

    def _run(self, texts: list[str], prompt, batch_size: int, progress: bool, params, keep_tokens: bool):
        """Length-sorted, bucketed batches through the jitted forward; results in input order.

        Returns the (N, D) sentence embeddings, or with ``keep_tokens`` one dict per text holding its
        token embeddings without padding."""
        if prompt:
            texts = [prompt + t for t in texts]
        order = np.argsort([-len(t) for t in texts], kind="stable")
        prompt_length = None
        if prompt and not self._include_prompt:
            prompt_length = np.int32(self.tokenizer.prompt_length(prompt))
        pieces, per_text = [], []
        n_batches = math.ceil(len(texts) / batch_size)
        for start in tqdm(range(0, len(texts), batch_size), total=n_batches, desc="Batches", disable=not progress):
            idx = order[start : start + batch_size]
            encodings = self.tokenizer.encode_ids([texts[i] for i in idx])
            longest = max(len(e.ids) for e in encodings)
            batch = self.tokenizer.pad(
                encodings,
                seq_bucket(longest, self.max_seq_length),
                batch_bucket(len(idx), batch_size),
                types=self._uses_token_types,
            )
            if prompt_length is not None:
                batch["prompt_length"] = prompt_length
            if params is not self.params or self.device is not None:
                batch = jax.device_put(batch, jax.tree.leaves(params)[0].sharding)
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
                pieces.append(out["sentence_embedding"][: len(idx)])
        inverse = np.argsort(order, kind="stable")
        if keep_tokens:
            return [per_text[i] for i in inverse]
        if not pieces:
            return jnp.zeros((0, self._embedding_dim), jnp.float32)
        return jnp.concatenate(pieces, axis=0)[inverse]

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

    def save(
        self,
        path: str | os.PathLike,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
        *,
        overwrite: bool = False,
    ) -> None:
        """Write the model as a sentence-transformers folder that sentence-transformers and transformers load.

        The CURRENT ``self.params`` (after fine-tuning, say) go into ``model.safetensors`` and each Dense
        module's folder with PyTorch names and layouts; ``config.json``, the tokenizer files, ``modules.json``,
        the module configs and ``config_sentence_transformers.json`` (prompts, ``similarity_fn_name``,
        ``truncate_dim``, ``max_seq_length``) describe the model as it is now. Atomic: the folder is written
        beside ``path`` and renamed into place, so an interrupted save leaves ``path`` as it was. Saving into
        an existing model folder replaces the model and keeps unrelated files; a non-empty folder that holds
        no model needs ``overwrite=True``. ``model_name``, ``create_model_card`` and ``train_datasets`` are
        accepted for compatibility; jaxst writes no model card.
        """
        save_model(self, path, safe_serialization=safe_serialization, overwrite=overwrite)

    def save_pretrained(
        self,
        path: str | os.PathLike,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
        *,
        overwrite: bool = False,
    ) -> None:
        """The same as ``save``."""
        self.save(path, model_name, create_model_card, train_datasets, safe_serialization, overwrite=overwrite)

    def __repr__(self) -> str:
        return (
            f"SentenceTransformer({str(self.model_folder)!r}, model_type={model_type(self.hf_config)!r}, "
            f"dim={self._embedding_dim}, max_seq_length={self.max_seq_length})"
        )


__all__ = ["SentenceTransformer"]
