"""The one base under every model family: folder -> modules, tokenizing, device placement and meshes,
prompts, dtype casts and save.

    name or folder ──resolve (io.hub)──▶ folder ──config_sentence_transformers.json──▶ prompts
    Transformer module folder ──load_transformer──▶ hf config, encoder (config, class), tokenizer
    inputs ──encode_chunks: the call's placement and token cap──▶ jaxst.engine (chunks, length-bucketed
              batches, overlapped read-back, progress) ──▶ the family's jitted forward, per batch

A family (``SentenceTransformer``, ``CrossEncoder``, ...) is a thin facade over ``BaseModel``: it builds
its NNX module and params from the loaded Transformer, describes its folder for ``save``
(``folder_plan``), and maps the familiar sentence-transformers API onto ``encode_chunks`` with its hooks
(``jaxst.engine.Hooks``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxst import engine
from jaxst.checks import positive_int
from jaxst.compilation_cache import enable_compilation_cache
from jaxst.engine import (  # noqa: F401  (the batching names' old home; jaxst.engine owns them)
    CPU_BATCH_TOKENS,
    batch_bucket,
    batch_rows,
    n_batches,
    seq_bucket,
    text_list,
    text_stream,
)
from jaxst.io.export import FolderPlan, save_model
from jaxst.io.folder import read_json
from jaxst.io.hub import resolve_model_folder
from jaxst.io.requirements import check_requirements
from jaxst.io.tokenizer import Tokenizer
from jaxst.io.weights import checkpoint_header, open_state_dict, params_from_state_dict
from jaxst.models import ARCHITECTURES, check_layers, encoder_from_hf_config, model_type
from jaxst.models.int8 import CALIBRATION_TEXTS, calibrate, quantize_module
from jaxst.parallel import data_mesh, replicated, resolve_device, resolve_devices

# ------------------------------------------------------------------------------------------ dtypes

# Inference dtypes by name, with the aliases torch and the Hugging Face configs use.
INFERENCE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_DTYPE_ALIASES = {"float": "float32", "fp32": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16"}


def is_int8(dtype) -> bool:
    """Whether ``dtype`` asks for the int8 inference mode (``"int8"``, ``np.int8``, ``jnp.int8``)."""
    if isinstance(dtype, str):
        return dtype.lower() in ("int8", "qint8")
    try:
        return dtype is not None and np.dtype(dtype) == np.int8
    except TypeError:
        return False


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
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(INFERENCE_DTYPES)}, or 'int8' "
                         "when loading (int8 inference)")
    return INFERENCE_DTYPES[name]


def cast_floats(params, dtype):
    """Floating leaves of a params pytree cast to ``dtype``; integer leaves untouched."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def weight_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """How a weight of ``shape`` lies on ``mesh``: a matrix (or larger) is split along its largest dimension
    that the mesh's ``"model"`` axis (else its last axis) divides evenly, so each device holds 1/n of it
    (projections by columns or rows, embeddings by vocabulary rows: FSDP-style); vectors (norms, biases)
    and matrices no dimension of which divides are replicated. XLA inserts the collectives under jit."""
    axis = "model" if "model" in mesh.axis_names else mesh.axis_names[-1]
    n = mesh.shape[axis]
    dims = [d for d in range(len(shape)) if len(shape) >= 2 and shape[d] % n == 0 and n > 1]
    spec = [None] * len(shape)
    if dims:
        spec[max(dims, key=lambda d: (shape[d], -d))] = axis
    return NamedSharding(mesh, P(*spec))


# ------------------------------------------------------------------------------------------ the base


class BaseModel:
    """What every family shares; see the module docstring. Subclasses set ``graphdef``, ``params`` and
    ``folder_plan``; ``EXAMPLE_MODEL`` names a model in the error for a missing name."""

    EXAMPLE_MODEL = "all-MiniLM-L6-v2"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None,
        *,
        device: str | jax.Device | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        mesh: Mesh | None = None,
        base_prompts: dict[str, str] | None = None,
    ):
        """Resolve the model folder and read its prompts. ``base_prompts`` are the family's defaults, which
        the folder's saved prompts, then ``prompts``, override. ``mesh``: split the weights over its
        devices (``weight_sharding``) instead of putting them on one device."""
        enable_compilation_cache()  # before anything compiles; see jaxst.compilation_cache
        if model_name_or_path is None:
            raise ValueError(f"jaxst needs a model: pass a Hub name (e.g. {self.EXAMPLE_MODEL!r}) or a folder")
        if trust_remote_code:
            warnings.warn("jaxst runs no remote code; trust_remote_code=True has no effect", stacklevel=3)
        self.trust_remote_code = bool(trust_remote_code)
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        if mesh is not None and device is not None:
            raise ValueError("give either device= or mesh= (a model sharded over a mesh runs on its devices)")
        self.mesh = mesh
        self.device = resolve_device(device)
        self.graphdef = None  # the NNX graph the family builds; None for a model without one (a static SparseEncoder)
        self.model_folder = resolve_model_folder(
            model_name_or_path, cache_folder=cache_folder, revision=revision, token=token,
            local_files_only=local_files_only,
        )
        self.st_config = read_json(self.model_folder / "config_sentence_transformers.json", required=False)
        check_requirements(self.st_config.get("requirements"), source=model_name_or_path)  # before any module loads
        self.prompts = dict(base_prompts or {})
        if not isinstance(self.st_config.get("prompts") or {}, dict):
            raise ValueError(f"{self.model_folder / 'config_sentence_transformers.json'}: prompts must be an object "
                             f"of name -> prompt, got {self.st_config['prompts']!r}")
        self.prompts.update({k: v for k, v in (self.st_config.get("prompts") or {}).items() if v is not None})
        self.prompts.update(prompts or {})
        self.default_prompt_name = default_prompt_name or self.st_config.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default prompt name {self.default_prompt_name!r} not in prompts {list(self.prompts)!r}")

    def load_transformer(self, path, module_config: dict, max_length: int | None = None):
        """The Transformer module at ``path``: sets ``hf_config`` and ``tokenizer``; returns the encoder's
        (config, class). Length: ``max_length``, else the module's ``max_seq_length``, else the tokenizer's
        ``model_max_length`` capped at the position table, as sentence-transformers reads it."""
        hf_config = read_json(path / "config.json")
        if "auto_map" in hf_config:  # custom code on the Hub: jaxst runs none
            native = model_type(hf_config) in ARCHITECTURES
            if not native or self.trust_remote_code:
                raise ValueError(
                    f"{self.model_folder} needs remote code (auto_map in its config) and jaxst runs no remote code"
                    + (f"; pass trust_remote_code=False to load jaxst's own {model_type(hf_config)!r} "
                       "implementation, as transformers does without remote code" if native else "")
                )
        config_file = path / "config.json"
        encoder_cfg, encoder_cls = encoder_from_hf_config(hf_config, config_file)
        header = checkpoint_header(path)  # names and shapes only: checked before any layer is built
        if header is not None:
            check_layers(encoder_cfg, header.keys(), config_file, ", ".join(map(str, header.files())))
        self.hf_config = hf_config
        self._max_tokens = encoder_cfg.max_tokens
        self._uses_token_types = encoder_cls.uses_token_types
        if max_length is None and module_config.get("max_seq_length") is not None:
            max_length = self._fit_position_table(module_config["max_seq_length"], encoder_cfg,
                                                  path / "sentence_bert_config.json", config_file)
        if max_length is None:
            tok_file = path / "tokenizer_config.json"
            saved = read_json(tok_file, required=False).get("model_max_length") or 1e9
            if not isinstance(saved, (int, float)) or isinstance(saved, bool) or not saved >= 1:
                raise ValueError(f"{tok_file}: model_max_length must be a positive number, got {saved!r}")
            max_length = int(min(saved, encoder_cfg.max_tokens))
        self.tokenizer = Tokenizer.from_folder(path, int(max_length), bool(module_config.get("do_lower_case", False)))
        self._fit_vocabulary(encoder_cfg.vocab_size, path)
        return encoder_cfg, encoder_cls

    @staticmethod
    def _fit_position_table(value, encoder_cfg, source, config_file, name: str = "max_seq_length") -> int:
        """A saved ``max_seq_length``, capped at the learned position table with a warning naming both files.

        sentence-transformers passes it to the tokenizer uncapped, and a longer text then fails in PyTorch's
        embedding lookup (an index error); jaxst's lookup would give NaN rows for the whole batch instead.
        Capping is what such a model can do at all (texts are truncated, as at any max_seq_length), and
        refusing would reject folders whose only fault is a too-generous number. Rotary models (Qwen3,
        Gemma 3, ModernBERT, Nomic, GTE) have no table, so their length is kept as saved."""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if type(value) is not int or value < 1:
            raise ValueError(f"{source}: {name} must be a positive integer, got {value!r}")
        if getattr(encoder_cfg, "position_table", False) and value > encoder_cfg.max_tokens:
            warnings.warn(f"{source}: {name} {value} exceeds the {encoder_cfg.max_tokens} positions of "
                          f"{config_file} (max_position_embeddings); using {encoder_cfg.max_tokens}", stacklevel=4)
            value = encoder_cfg.max_tokens
        return value

    def _fit_vocabulary(self, rows: int, path) -> None:
        """Every id the tokenizer can produce must have a row in the embedding table (``vocab_size`` in
        config.json, which the checkpoint's table matches): an id past it would embed as NaN.

        The rule: the padding id must fit (padding is in every batch), else a ValueError at load. Other ids past
        the table (a tokenizer with added tokens the checkpoint lacks) are a ValueError naming the id when a text
        produces one (``Tokenizer.check_ids``, run only for such tokenizers), never NaN; and a warning at load
        unless they are all special tokens, which only their literal text produces. Refusing at load would reject
        real models: Gemma 3's tokenizers hold ``<image_soft_token>`` one past the text model's 262,144 rows."""
        tokenizer = self.tokenizer
        source = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.txt"
        if not 0 <= tokenizer.pad_id < rows:
            raise ValueError(f"{source}: the padding token's id {tokenizer.pad_id} is past the {rows} embedding rows "
                             f"of {path / 'config.json'} (vocab_size)")
        past = sorted(i for i in tokenizer.backend.get_vocab(with_added_tokens=True).values() if i >= rows)
        if not past:
            return
        tokenizer.id_rows = rows
        ordinary = [i for i in past if i not in tokenizer.all_special_ids]
        if ordinary:
            warnings.warn(f"{source} has {len(past)} token ids at or past the {rows} embedding rows of "
                          f"{path / 'config.json'} (vocab_size), such as {ordinary[:3]}; a text that tokenizes to "
                          "one of them is a ValueError", stacklevel=4)

    def load_params(self, module, state_dict, prefixes: tuple[str, ...] = (), dtype=None) -> dict:
        """The params of ``module`` from a (lazily read) state dict, each tensor cast to ``dtype`` (None keeps
        float32) and put where it runs as soon as it is read: on the model's device, or split over its
        ``mesh``. So a large checkpoint is never in host memory twice."""
        target = None if dtype is None else resolve_dtype(dtype)

        def place(path, array):
            if target is not None:
                array = array.astype(target)
            if self.mesh is not None:
                return jax.device_put(array, weight_sharding(array.shape, self.mesh))
            return jax.device_put(array, self.device)

        return params_from_state_dict(module, state_dict, prefixes, place)

    def transformer_checkpoint(self, name_or_path: str | os.PathLike | None = None) -> tuple[dict, object]:
        """``(config.json, state dict)`` of a transformers folder or Hub name (None: this model's own Transformer
        module), the state dict read lazily with PyTorch names: for a loss that builds a second network from a
        checkpoint (DenoisingAutoEncoderLoss's decoder), which cannot read files itself (losses sit above io)."""
        if name_or_path is None:
            specs = getattr(self, "_module_specs", None)
            folder = specs[0].path if specs else self.model_folder
        else:
            folder = resolve_model_folder(name_or_path)
        return read_json(folder / "config.json"), open_state_dict(folder)

    def quantize_encoder(self, module, params: dict) -> dict:
        """``dtype="int8"``: the encoder's dense layers become ``Int8Linear`` (``jaxst.models.int8``: weights
        int8 per output column, activations int8 per token, exact int32 products, input channels smoothed
        by one calibration pass of ``module(batch)`` over ``CALIBRATION_TEXTS``, which every family's
        ``forward`` runs), applied from outside the architecture: ``module.encoder`` is replaced by a copy
        whose ``nnx.Linear`` nodes are ``Int8Linear`` ones, and the returned params follow; ``self.graphdef``
        is taken from the changed module. Heads stay float32."""
        if self.mesh is not None:
            raise ValueError("dtype='int8' runs on one device; it cannot be combined with mesh=")
        stats = calibrate(module, params, self.calibration_batch(CALIBRATION_TEXTS), part="encoder")
        module.encoder, encoder = quantize_module(module.encoder, params["encoder"], stats)
        self.graphdef, _ = nnx.split(module, nnx.Param)
        return {**params, "encoder": jax.device_put(encoder, self.device)}

    def calibration_batch(self, texts: list[str]) -> dict:
        """The batch int8 calibration runs ``module(batch)`` on: ``texts`` as ``encode`` tokenizes them. A family
        whose forward reads more than the tokenizer gives (MultiVectorEncoder's scoring mask) overrides it."""
        return dict(self.tokenizer(texts, types=self._uses_token_types))

    def apply_dtype(self, dtype, module=None) -> None:
        """Every family's ``dtype=``, once its weights are loaded: float dtypes cast the float weights (a no-op
        for weights already read in that dtype, as ``load_params(dtype=)`` does to keep one copy in memory);
        ``"int8"`` quantizes the encoder of ``module`` (``quantize_encoder``), for the families that pass it.
        Afterwards ``self.dtype`` reports it."""
        if is_int8(dtype):
            if module is None:
                raise ValueError(f"dtype='int8' is not supported by {type(self).__name__}; use 'float32', "
                                 "'bfloat16' or 'float16'")
            self.params = self.quantize_encoder(module, self.params)
        elif dtype is not None:
            self.params = cast_floats(self.params, resolve_dtype(dtype))

    @staticmethod
    def load_dtype(dtype):
        """The dtype to read weights in for ``dtype=``: None for float32 and int8 (quantized from float32)."""
        return None if dtype is None or is_int8(dtype) else resolve_dtype(dtype)

    # ------------------------------------------------------------------ prompts

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

    # ------------------------------------------------------------------ length

    @property
    def max_seq_length(self) -> int:
        return self.tokenizer.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        positive_int("max_seq_length", value)
        if value > self._max_tokens:
            raise ValueError(f"max_seq_length {value} exceeds the model's {self._max_tokens} positions "
                             "(max_position_embeddings)")
        self.tokenizer.max_length = value

    def get_max_seq_length(self) -> int:
        return self.max_seq_length

    # ------------------------------------------------------------------ devices and batches

    def placement(self, device=None, pool: dict | None = None) -> tuple[dict, Mesh | None]:
        """The params to run with and the data-parallel mesh (or None) for one call.

        ``pool`` (from ``start_multi_process_pool``) or a list of devices splits every batch by rows over
        those devices; with several local devices and no device chosen, all of them are used. A model whose
        weights are split over a ``mesh`` runs there: each batch is replicated on it."""
        if self.mesh is not None:
            if device is not None or pool is not None:
                raise ValueError("this model's weights are split over a mesh; it runs there (no device= or pool=)")
            return self.params, None
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

    def start_multi_process_pool(self, target_devices: list[str] | None = None) -> dict:
        """A data-parallel pool over ``target_devices`` (default: every local device), for ``pool=``.

        sentence-transformers starts a worker process per device; jaxst starts none: the pool is a
        device mesh, and each batch is split over it in this process."""
        devices = resolve_devices(target_devices)
        return {"mesh": data_mesh(devices), "devices": devices}

    @staticmethod
    def stop_multi_process_pool(pool: dict) -> None:
        """Release a pool from ``start_multi_process_pool``; using it afterwards is an error."""
        if not isinstance(pool, dict) or "mesh" not in pool:
            raise TypeError("pool must be the dict start_multi_process_pool() returned")
        pool["mesh"] = None

    def batch_put(self, params, mesh: Mesh | None) -> Callable | None:
        """How a call's host batches reach its devices: None for a data-parallel ``mesh`` (the engine splits
        each batch by rows) or when jax's default placement is right; else a ``device_put`` next to the
        weights (replicated over the model's own ``mesh`` when its weights are split there)."""
        if mesh is not None:
            return None
        if self.mesh is not None:
            place = NamedSharding(self.mesh, P())  # the weights are split over the mesh; each batch replicated
        elif params is not self.params or self.device is not None:
            place = jax.tree.leaves(params)[0].sharding
        else:
            return None
        return lambda batch: jax.device_put(batch, place)

    def encode_chunks(self, inputs, total: int | None, hooks: engine.Hooks, forward: Callable, *, batch_size: int,
                      max_batch_tokens, chunk_size: int | None, show_progress_bar: bool | None, device=None,
                      pool: dict | None = None):
        """Every family's encode path: ``inputs`` (an iterator, ``total`` of them when known) through
        ``jaxst.engine.encode`` with this model's weights placed for the call (``device``, ``pool``), the
        token cap resolved once, and ``forward(graphdef, params, batch)``. Yields per chunk ``(offset,
        count, batches)``, each batch ``(indices into the chunk, host batch, result)``."""
        chunk_size = engine.check_batching(batch_size, max_batch_tokens, chunk_size)
        params, mesh = self.placement(device, pool)
        graphdef = self.graphdef
        return engine.encode(
            inputs, total, hooks, lambda p, batch: forward(graphdef, p, batch), params, batch_size=batch_size,
            token_cap=engine.batch_token_cap(max_batch_tokens, params), chunk_size=chunk_size,
            show_progress_bar=show_progress_bar, mesh=mesh, put=self.batch_put(params, mesh),
        )

    def token_hooks(self, tokenize: Callable[[list], list], extra: dict | None = None, **hooks) -> engine.Hooks:
        """Engine hooks for tokenizer encodings (``Tokenizer.encode_ids``' output), padded by the model's
        tokenizer up to ``max_seq_length`` (or a longer text's length: the length a call tokenized with);
        ``extra`` entries (e.g. ``prompt_length``) join every batch."""
        types = self._uses_token_types

        def pad(encodings, length, rows):
            batch = self.tokenizer.pad(encodings, length, rows, types=types)
            batch.update(extra or {})
            return batch

        return engine.Hooks(tokenize=tokenize, pad=pad, max_length=self.max_seq_length, **hooks)

    # ------------------------------------------------------------------ dtype

    @property
    def dtype(self) -> np.dtype:
        """The dtype the weights are stored and the encoder computes in (float32 unless cast; int8 for
        ``dtype="int8"``, whose dense layers compute in int8 and everything else in float32)."""
        leaves = jax.tree.leaves(self.params)
        if any(x.dtype == jnp.int8 for x in leaves):  # Int8Linear's packed weights
            return np.dtype(np.int8)
        return next(x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))

    @property
    def int8(self) -> bool:
        """Whether the model runs in the int8 inference mode (``dtype="int8"``): ``self.dtype`` says it."""
        return self.dtype == np.int8

    def to_dtype(self, dtype):
        """Cast the weights to ``dtype`` for inference, in place; returns the model.

        The encoder then computes in that dtype, with attention scores and softmax, LayerNorm statistics,
        pooling and the heads in float32; outputs are float32. Casting down loses precision for good:
        ``float()`` after ``half()`` does not restore the original weights."""
        if self.int8:
            raise ValueError("an int8 model stays int8 (its float weights are gone); load the model again "
                             f"with dtype={str(np.dtype(resolve_dtype(dtype)))!r} instead")
        self.params = cast_floats(self.params, resolve_dtype(dtype))
        return self

    def half(self):
        """float16 weights and compute (as ``torch.nn.Module.half``); returns the model."""
        return self.to_dtype(jnp.float16)

    def bfloat16(self):
        """bfloat16 weights and compute; returns the model. The usual choice on TPUs and recent GPUs."""
        return self.to_dtype(jnp.bfloat16)

    def float(self):
        """float32 weights and compute; returns the model."""
        return self.to_dtype(jnp.float32)

    # ------------------------------------------------------------------ training hooks (jaxst.training)

    def training_examples(self, examples, loss=None, seed=None) -> tuple:
        """``(examples, listwise)``: the examples ``jaxst.training.collate`` batches for ``loss``, and whether
        listwise ones, ``(query, [documents], [labels])``, are this family's. By default: the examples as given,
        never listwise; a loss that builds its own lists (``loss.lists``) trains a CrossEncoder only."""
        if loss is not None and hasattr(loss, "lists"):
            raise ValueError(f"{type(loss).__name__} trains a CrossEncoder, got {type(self).__name__}")
        return examples, False

    def training_tasks(self, n_columns: int, router_mapping=None) -> list | None:
        """The task ("query", "document", ...) each of ``n_columns`` training columns is tokenized and embedded
        for, or None when the columns are not routed (one tokenizer and one forward for all, so they may be
        packed). ``router_mapping``: the user's tasks, a sequence (one per column) or ``{column index: task}``;
        a model without routes refuses it."""
        if router_mapping is not None:
            raise ValueError("router_mapping needs a model with a Router (e.g. an inference-free SparseEncoder) "
                             "or a MultiVectorEncoder")
        return None

    def _mapped_tasks(self, router_mapping, defaults: list) -> list:
        """``training_tasks`` of a routed model: ``router_mapping`` over the model's ``defaults`` (the task of
        each column it leaves out), every task named checked against the model's routes."""
        n_columns = len(defaults)
        if isinstance(router_mapping, dict):
            bad = [k for k in router_mapping if not isinstance(k, int) or not 0 <= k < n_columns]
            if bad:
                raise ValueError(f"router_mapping keys are column indices 0..{n_columns - 1}, got {bad}")
            tasks = [router_mapping.get(i, defaults[i]) for i in range(n_columns)]
        else:
            tasks = list(router_mapping)
            if len(tasks) != n_columns:
                raise ValueError(f"router_mapping names {len(tasks)} tasks for {n_columns} columns")
        for task in tasks:
            if task is not None:
                self.tokenize([], task=task)  # an unknown task fails here, naming the model's routes
        return tasks

    def training_features(self, columns: list, tasks: list | None = None) -> list | dict:
        """A training batch's text columns (column c: every example's c-th text) as the features the forward
        takes before padding: by default one tokenized batch per column (a list), each for its task when the
        columns are routed (``training_tasks``). A family whose examples form one input returns one batch (a
        dict: a CrossEncoder's pairs)."""
        if tasks is None:
            return [self.tokenize(list(c)) for c in columns]
        return [self.tokenize(list(c), task=task) for c, task in zip(columns, tasks)]

    def training_inputs(self) -> dict:
        """Extra inputs the module takes in training when a loss reads every output (``needs_outputs``, e.g.
        CSRLoss): none by default."""
        return {}

    def training_buffers(self) -> dict:
        """What training updates besides params, as PyTorch buffers (``jaxst.training`` carries them in
        ``TrainState.model_state``): none by default."""
        return {}

    @property
    def frozen_params(self) -> list[tuple[str, ...]]:
        """Paths into ``params`` that training leaves unchanged: none by default."""
        return []

    # ------------------------------------------------------------------ save

    def folder_plan(self) -> FolderPlan:
        """The sentence-transformers folder this model saves as (``jaxst.io.export.FolderPlan``)."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike, model_name: str | None = None, create_model_card: bool = True,
             train_datasets: list[str] | None = None, safe_serialization: bool = True, *,
             overwrite: bool = False) -> None:
        """Write the CURRENT ``self.params`` (after fine-tuning, say) with PyTorch names and layouts, and the
        configs, tokenizer files and module folders that describe the model as it is now, as
        sentence-transformers saves this kind of model: its library and transformers load the folder unchanged.

        Atomic: the folder is written beside ``path`` and renamed into place, so an interrupted save leaves
        ``path`` as it was. Saving into an existing model folder replaces the model and keeps unrelated files;
        a non-empty folder that holds no model needs ``overwrite=True``. ``model_name``, ``create_model_card``
        and ``train_datasets`` are accepted for compatibility; jaxst writes no model card."""
        if self.int8:
            raise ValueError("this model runs in int8 (dtype='int8'), an inference mode: sentence-transformers "
                             "folders hold float weights; load the model without dtype='int8' to save it")
        save_model(self.folder_plan(), self.params, path, safe_serialization=safe_serialization, overwrite=overwrite)

    def save_pretrained(self, path: str | os.PathLike, model_name: str | None = None, create_model_card: bool = True,
                        train_datasets: list[str] | None = None, safe_serialization: bool = True, *,
                        overwrite: bool = False) -> None:
        """The same as ``save``."""
        self.save(path, model_name, create_model_card, train_datasets, safe_serialization, overwrite=overwrite)


__all__ = [
    "BaseModel",
    "CPU_BATCH_TOKENS",
    "batch_bucket",
    "batch_rows",
    "cast_floats",
    "is_int8",
    "positive_int",
    "resolve_dtype",
    "seq_bucket",
    "text_list",
    "text_stream",
    "weight_sharding",
]
