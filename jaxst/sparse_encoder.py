"""``SparseEncoder``: sentence-transformers' sparse (SPLADE, inference-free) models as jitted JAX.

    model = SparseEncoder("naver/splade-v3")
    emb = model.encode(texts)              # BCOO (n, vocab): fixed-width rows, stays on device
    model.similarity(q, emb)               # (Q, n) dot scores
    model.decode(emb[0] ...)               # (token, weight) pairs
    model.apply(model.params, batch)       # pure: (B, vocab) dense, jittable, differentiable

Folders: a fill-mask Transformer + ``SpladePooling``; or a ``Router`` whose "query" route is a
``SparseStaticEmbedding`` (a weight per vocabulary entry: queries cost a tokenizer and a lookup) and
whose "document" route is SPLADE, as the inference-free OpenSearch models are saved.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.sparse import BCOO

from jaxst import engine
from jaxst.base import BaseModel, is_int8
from jaxst.checks import positive_int
from jaxst.engine import check_batching, text_list, text_stream
from jaxst.io.export import sentence_transformer_plan, sparse_encoder_plan, unmapped_tensors
from jaxst.io.folder import ModuleSpec, read_json, read_module_list, read_router
from jaxst.io.tokenizer import Tokenizer
from jaxst.io.weights import open_state_dict
from jaxst.models import model_type
from jaxst.models.mlm_head import mlm_head_class
from jaxst.modules import param_heads, sparse_autoencoder, sparse_static_embedding, splade_pooling
from jaxst.modules.pooling import sentence_encoder
from jaxst.modules.sparse_static_embedding import STATIC_ROUTE, static_forward
from jaxst.pipeline import forward
from jaxst.similarity import similarity_functions
from jaxst.sparse import active_counts, as_rows, dense_to_rows, row_width, rows_to_dense, sparse_similarity, to_bcoo

SIMILARITY_FN_NAMES = ("dot", "cosine", "euclidean", "manhattan")


@dataclasses.dataclass
class _Route:
    """One path texts take: "splade" (the model's graphdef and params["encoder"/"head"]) or "static"
    (params["static"]["embedding"]: one weight per vocabulary entry, PyTorch's ``weight``; and its own tokenizer)."""

    kind: str
    specs: list[ModuleSpec]
    tokenizer: Tokenizer | None = None  # the static route's


class SparseEncoder(BaseModel):
    """Load a sentence-transformers SparseEncoder (Hub name or folder) and make sparse embeddings with JAX."""

    EXAMPLE_MODEL = "naver/splade-v3"

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
        max_active_dims: int | None = None,
        dtype=None,
        mesh=None,
    ):
        super().__init__(
            model_name_or_path, device=device, prompts=prompts, default_prompt_name=default_prompt_name,
            cache_folder=cache_folder, trust_remote_code=trust_remote_code, revision=revision,
            local_files_only=local_files_only, token=token, mesh=mesh, base_prompts={"query": "", "document": ""},
        )
        self._modules_json = (self.model_folder / "modules.json").is_file()
        specs = self._top_modules()
        self.router = None  # Router parameters, for a routed model
        self._splade_module = self._csr_module = None  # the Transformer route's module, whichever it is
        # What training updates besides params, as PyTorch buffers (jaxst.training carries them in
        # TrainState.model_state): a CSR model's {"sae_stats": stats_last_nonzero}
        self.buffers: dict[str, jax.Array] = {}
        if specs[0].kind == "router":
            if len(specs) != 1:
                raise ValueError(f"{self.model_folder}: modules after a Router are not supported")
            self._router_spec = specs[0]
            route_specs, self.router = read_router(specs[0])
        else:
            route_specs = {None: specs}
        self.routes = {name: self._route(name, s) for name, s in route_specs.items()}
        self.params = self._load_params()
        self._attach_static_route()
        if is_int8(dtype) and self._main_module is None:
            raise ValueError(f"dtype='int8' quantizes a Transformer's dense layers; {self.model_folder} has none "
                             "(its only route is a SparseStaticEmbedding, a weight lookup)")
        self.apply_dtype(dtype, self._main_module)
        self._vocab = self._output_dims()

        config_name = self.st_config.get("similarity_fn_name")
        self.similarity_fn_name = similarity_fn_name or (config_name if config_name in SIMILARITY_FN_NAMES else "dot")
        if max_active_dims is None:
            max_active_dims = self.st_config.get("max_active_dims")
        if max_active_dims is None and any(r.kind == "csr" for r in self.routes.values()):
            max_active_dims = self._csr_module.sae.k  # as sentence-transformers: a CSR model keeps its k
        if max_active_dims is not None:
            positive_int("max_active_dims", max_active_dims)
        self.max_active_dims = max_active_dims

    # ------------------------------------------------------------------ loading

    def _top_modules(self) -> list[ModuleSpec]:
        if self._modules_json:
            specs = read_module_list(self.model_folder)
        else:  # a plain Hugging Face masked-LM folder: SPLADE with max pooling, as sentence-transformers builds
            hf = read_json(self.model_folder / "config.json")
            if not any(str(a).endswith("ForMaskedLM") for a in hf.get("architectures") or []):
                raise ValueError(
                    f"{self.model_folder} has no modules.json and is not a masked-LM checkpoint "
                    f"(architectures: {hf.get('architectures')}); sentence-transformers would put an untrained "
                    "SparseAutoEncoder on it, which jaxst does not build: load a saved SparseEncoder")
            specs = [ModuleSpec("transformer", self.model_folder, {"transformer_task": "fill-mask"}),
                     ModuleSpec("splade_pooling", self.model_folder, {"pooling_strategy": "max"})]
        if not specs:
            raise ValueError(f"{self.model_folder}/modules.json lists no modules")
        return specs

    def _route(self, name, specs: list[ModuleSpec]) -> _Route:
        kinds = [s.kind for s in specs]
        where = f"{self.model_folder}" + (f" (route {name!r})" if name else "")
        if kinds == ["transformer", "splade_pooling"]:
            if self.graphdef is not None:
                raise ValueError(f"{where}: more than one SPLADE route; jaxst supports one Transformer per model")
            self._load_splade(specs)
            return _Route("splade", specs)
        if kinds == ["sparse_static_embedding"]:
            spec = specs[0]
            tok_cfg = read_json(spec.path / "tokenizer_config.json", required=False)
            max_length = int(tok_cfg.get("model_max_length") or 512)
            max_length = max_length if max_length < 10**8 else 512
            return _Route("static", specs, Tokenizer.from_folder(spec.path, max_length,
                                                                 bool(tok_cfg.get("do_lower_case", False))))
        if kinds and kinds[0] == "transformer" and kinds[-1] == "sparse_autoencoder" and \
                set(kinds[1:-1]) <= {"pooling", "dense", "normalize", "dropout"}:
            if self.graphdef is not None:
                raise ValueError(f"{where}: more than one Transformer route; jaxst supports one per model")
            self._load_csr(specs)
            return _Route("csr", specs)
        raise ValueError(f"{where}: unsupported SparseEncoder modules {kinds}; jaxst loads fill-mask Transformer + "
                         "SpladePooling, SparseStaticEmbedding, and a Router over those")

    def _load_splade(self, specs: list[ModuleSpec]) -> None:
        transformer, pooling = specs
        task = transformer.config.get("transformer_task", "fill-mask")
        if task != "fill-mask":
            raise ValueError(f"{transformer.path}: SPLADE needs a fill-mask Transformer, got transformer_task {task!r}")
        encoder_cfg, encoder_cls = self.load_transformer(transformer.path, transformer.config)
        head_cls = mlm_head_class(model_type(self.hf_config), self.hf_config)
        module = nnx.eval_shape(lambda: splade_pooling.build(
            encoder_cls(encoder_cfg, rngs=nnx.Rngs(0)), head_cls(self.hf_config, rngs=nnx.Rngs(0)), pooling.config))
        self.graphdef, _ = nnx.split(module, nnx.Param)
        self._splade_module = module
        self._splade_specs = specs
        self._encoder_cls = encoder_cls

    def _load_csr(self, specs: list[ModuleSpec]) -> None:
        transformer, sae_spec = specs[0], specs[-1]
        encoder_cfg, encoder_cls = self.load_transformer(transformer.path, transformer.config)
        sentence, dim = sentence_encoder(nnx.eval_shape(lambda: encoder_cls(encoder_cfg, rngs=nnx.Rngs(0))),
                                         encoder_cfg.hidden_size, [(s.kind, s.config, s.path) for s in specs[1:-1]],
                                         self.model_folder)
        module = sparse_autoencoder.build(sentence, dim, sae_spec.config, sae_spec.path)
        self.graphdef, _ = nnx.split(module, nnx.Param)
        self._csr_module, self._csr_specs, self._encoder_cls = module, specs, encoder_cls
        self._include_prompt = module.include_prompt

    def _attach_static_route(self) -> None:
        """A Router with a static route beside the Transformer route: the static weight becomes part of the
        Transformer module (``params["static"]["embedding"]``), so one pure forward, and jaxst.training, run
        either route (a batch from ``tokenize(..., task=...)`` says which)."""
        static = [r for r in self.routes.values() if r.kind == "static"]
        module = self._main_module
        if not static or module is None:
            return
        if len(static) > 1:
            raise ValueError(f"{self.model_folder}: more than one SparseStaticEmbedding route")
        spec = static[0].specs[0]
        vocab = int(self.params["static"]["embedding"].shape[0])
        module.static = sparse_static_embedding.build(spec.config, vocab)
        self.graphdef, _ = nnx.split(module, nnx.Param)

    @property
    def frozen_params(self) -> list[tuple[str, ...]]:
        """Paths into ``params`` that training leaves unchanged: a frozen SparseStaticEmbedding's weight."""
        static = getattr(self._main_module, "static", None)
        return [("static", "embedding")] if static is not None and static.frozen else []

    @property
    def _main_module(self) -> nnx.Module | None:
        """The Transformer route's module (SPLADE or CSR), None for a model without one."""
        return self._splade_module or self._csr_module

    def _load_params(self) -> dict:
        params = {}
        for route in self.routes.values():
            if route.kind == "splade":
                params.update(splade_pooling.load_params(self.load_params, self._splade_module,
                                                         open_state_dict(route.specs[0].path),
                                                         self._encoder_cls.base_model_prefix))
            elif route.kind == "csr":
                module, specs = self._csr_module, route.specs
                prefixes = (f"{self._encoder_cls.base_model_prefix}.",)
                encoder_sd = open_state_dict(specs[0].path)
                params["encoder"] = self.load_params(module.encoder, encoder_sd, prefixes)
                for i, spec in param_heads(specs[1:-1]):  # params["heads"][i]: the Dense modules' weights
                    params.setdefault("heads", {})[i] = self.load_params(module.heads[i], open_state_dict(spec.path))
                params["sae"], self.buffers = sparse_autoencoder.load_params(self.load_params, module.sae,
                                                                             open_state_dict(specs[-1].path))
                self._unmapped_tensors = unmapped_tensors(encoder_sd, prefixes)
            else:
                path = route.specs[0].path
                weight = sparse_static_embedding.load_weight(open_state_dict(path), path)
                params["static"] = {"embedding": jax.device_put(weight, self.device)}  # saved as "weight"
        return params

    def _output_dims(self) -> int:
        dims = set()
        for route in self.routes.values():
            if route.kind == "splade":
                dims.add(int(self.hf_config["vocab_size"]))
            elif route.kind == "csr":
                dims.add(int(self._csr_module.sae.latent_bias.shape[0]))
            else:
                dims.add(int(self.params["static"]["embedding"].shape[0]))
                if getattr(self, "tokenizer", None) is None:  # decode() reads tokens with this one
                    self.tokenizer = route.tokenizer
                    self._uses_token_types = False
        if len(dims) != 1:
            raise ValueError(f"{self.model_folder}: the routes' output dimensions differ ({sorted(dims)})")
        return dims.pop()

    # ------------------------------------------------------------------ functional core

    def _resolve_route(self, task: str | None):
        if self.router is None:
            return self.routes[None]
        mappings = self.router.get("route_mappings") or {}
        for key in ((task, "text"), (task, None), (None, "text"), (None, None)):
            name = mappings.get(str(key))
            if name is not None:
                return self.routes[name]
        if task is not None and task in self.routes:
            return self.routes[task]
        if task is not None:
            raise ValueError(f"no route for task {task!r}; this model's routes: {sorted(self.routes)}")
        default = self.router.get("default_route")
        if default is None and self.router.get("allow_empty_key", True):
            default = next(iter(self.routes))
        if default is None:
            raise ValueError(f"this model's Router has no default route; pass task= (one of {sorted(self.routes)})")
        return self.routes[default]

    def tokenize(self, texts: list[str] | str, prompt: str | None = None, task: str | None = None) -> dict:
        """Texts -> numpy int32 arrays for ``apply``, tokenized as the route ``task`` selects."""
        texts, _ = text_list(texts)
        if prompt:
            texts = [prompt + t for t in texts]
        route = self._resolve_route(task)
        if route.kind == "static":
            batch = route.tokenizer.pad(route.tokenizer.encode_ids(texts, add_special_tokens=False), types=False)
            return {**batch, "static_route": STATIC_ROUTE}
        return self.tokenizer(texts, types=self._uses_token_types)

    def apply(self, params, batch: dict, task: str | None = None) -> jax.Array:
        """Pure: (params, tokenized batch) -> (B, V) dense embeddings (zeros where inactive), before
        ``max_active_dims``."""
        route = self._resolve_route(task)
        if route.kind == "static":
            return static_forward(params["static"]["embedding"], batch["input_ids"], batch["attention_mask"])
        return forward(self.graphdef, params, dict(batch))["sentence_embedding"]

    # ------------------------------------------------------------------ properties

    def get_embedding_dimension(self) -> int:
        """The output dimension: the vocabulary size."""
        return self._vocab

    get_sentence_embedding_dimension = get_embedding_dimension

    @property
    def similarity_fn_name(self) -> str:
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value) -> None:
        value = getattr(value, "value", value)
        value = "dot" if value == "dot_product" else value
        if value not in SIMILARITY_FN_NAMES:
            raise ValueError(f"SparseEncoder supports similarity_fn_name in {SIMILARITY_FN_NAMES}, got {value!r}")
        self._similarity_fn_name = value

    @property
    def splade_pooling_chunk_size(self) -> int | None:
        """Tokens per step of the SPLADE pooling scan (None: jaxst picks it from the batch's size)."""
        return None if self._splade_module is None else self._splade_module.chunk_size

    @splade_pooling_chunk_size.setter
    def splade_pooling_chunk_size(self, value: int | None) -> None:
        if self._splade_module is None:
            raise ValueError("this model has no SpladePooling module")
        if value is not None:
            positive_int("splade_pooling_chunk_size", value)
        self._splade_module.chunk_size = value
        self.graphdef, _ = nnx.split(self._splade_module, nnx.Param)

    # ------------------------------------------------------------------ encode

    def encode(
        self,
        inputs=None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_tensor: bool = True,
        convert_to_sparse_tensor: bool = True,
        save_to_cpu: bool = False,
        device: str | jax.Device | list | None = None,
        max_active_dims: int | None = None,
        pool: dict | None = None,
        chunk_size: int | None = None,
        task: str | None = None,
        max_batch_tokens: int | None | str = "auto",
        **kwargs,
    ):
        """Sparse embeddings of a string or a list of strings; see sentence-transformers' ``SparseEncoder.encode``.

        Returns a ``jax.experimental.sparse.BCOO`` (n, vocab) by default: fixed-width rows (``data`` (n, W),
        ``indices`` (n, W, 1); unused slots point past the vocabulary and are ignored by every BCOO
        operation). ``convert_to_sparse_tensor=False``: a dense (n, vocab) jax.Array. ``convert_to_tensor=False``:
        a list of per-text (vocab,) embeddings. ``task`` ("query" / "document") picks a Router's route."""
        if "sentences" in kwargs:
            if inputs is not None:
                raise TypeError("encode() got both `inputs` and the deprecated `sentences`")
            warnings.warn("`sentences` is deprecated; use `inputs`", DeprecationWarning, stacklevel=2)
            inputs = kwargs.pop("sentences")
        if kwargs:
            raise ValueError(f"encode() got keyword arguments it does not use: {sorted(kwargs)}")
        chunk_size = check_batching(batch_size, max_batch_tokens, chunk_size)
        if max_active_dims is None:
            max_active_dims = self.max_active_dims
        if max_active_dims is not None:
            positive_int("max_active_dims", max_active_dims)
        texts, single, total = text_stream(inputs)
        prompt = self._resolve_prompt(prompt, prompt_name)
        route = self._resolve_route(task)
        hooks, route_forward = self._route_hooks(route, prompt, max_active_dims)
        rows, n = [], 0
        for offset, count, batches in self.encode_chunks(
            texts, total, hooks, route_forward, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            chunk_size=chunk_size, show_progress_bar=show_progress_bar, device=device, pool=pool,
        ):
            for idx, _, (v, i) in batches:  # rows past len(idx) are batch padding
                rows.append((offset + idx, v[: len(idx)], i[: len(idx)]))
            n = offset + count
        values, indices = self._gather_rows(rows, n)
        if save_to_cpu:
            values, indices = jax.device_put((values, indices), jax.devices("cpu")[0])
        return self._output(values, indices, single, convert_to_tensor, convert_to_sparse_tensor)

    def encode_query(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """``encode`` with the "query" prompt (when the model has one) and the "query" route."""
        if prompt_name is None and prompt is None and self.prompts.get("query"):
            prompt_name = "query"
        kwargs.setdefault("task", "query")
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, inputs=None, prompt_name: str | None = None, prompt: str | None = None, **kwargs):
        """``encode`` with the "document" (or "passage"/"corpus") prompt and the "document" route."""
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if self.prompts.get(n)), None)
        kwargs.setdefault("task", "document")
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def _route_hooks(self, route: _Route, prompt: str | None, max_active_dims: int | None):
        """The engine hooks and forward of one route: "static" (its own tokenizer, no special tokens, one weight
        per token present), or the Transformer route (SPLADE, or CSR with ``max_active_dims`` latents). Each
        batch is read back as fixed-width rows (values, indices), as wide as its most active row (at most
        ``max_active_dims``: exactly the top ones by magnitude, as sentence-transformers)."""

        def to_rows(dense):  # dense (rows, V) on the device
            width = row_width(int(active_counts(dense).max(initial=0)))
            if max_active_dims is not None and width > max_active_dims:
                width = max_active_dims
            values, indices = dense_to_rows(dense, width=width)
            return np.asarray(values), np.asarray(indices)

        def prompted(chunk: list[str]) -> list[str]:
            return [prompt + t for t in chunk] if prompt else chunk

        if route.kind == "static":
            tokenizer = route.tokenizer
            hooks = engine.Hooks(
                tokenize=lambda chunk: tokenizer.encode_ids(prompted(chunk), add_special_tokens=False) if chunk else [],
                pad=lambda encodings, length, rows: tokenizer.pad(encodings, length, rows, types=False),
                max_length=self.max_seq_length, fetch=to_rows,
            )
            return hooks, lambda graphdef, params, batch: static_forward(
                params["static"]["embedding"], batch["input_ids"], batch["attention_mask"])
        extra = {}
        if route.kind == "csr" and prompt and not self._include_prompt:
            extra["prompt_length"] = np.int32(self.tokenizer.prompt_length(prompt))
        k = None if route.kind != "csr" or max_active_dims in (None, self._csr_module.sae.k) else max_active_dims
        hooks = self.token_hooks(
            lambda chunk: self.tokenizer.encode_ids(prompted(chunk)) if chunk else [], extra,
            after=lambda out, batch: (out["sentence_embedding"] if k is None
                                      else sparse_autoencoder.top_k_code(out["latents"], k=k)),
            fetch=to_rows,
        )
        return hooks, forward

    def _gather_rows(self, rows: list, n: int):
        """Per-batch host rows ``(input positions, values, indices)`` -> one set of fixed-width rows (as wide as
        the widest) in input order, put on the device once."""
        width = max((v.shape[1] for _, v, _ in rows), default=16)
        values = np.zeros((n, width), np.float32)
        indices = np.full((n, width), self._vocab, np.int32)
        for idx, v, i in rows:
            values[idx, : v.shape[1]] = v
            indices[idx, : i.shape[1]] = i
        target = self.device if self.device is not None else None
        return jax.device_put(values, target), jax.device_put(indices, target)

    def _output(self, values, indices, single: bool, convert_to_tensor: bool, convert_to_sparse_tensor: bool):
        dim = self._vocab
        if convert_to_sparse_tensor:
            if single or not convert_to_tensor:
                rows = [BCOO((values[i], indices[i, :, None]), shape=(dim,)) for i in range(values.shape[0])]
                return rows[0] if single else rows
            return to_bcoo(values, indices, dim)
        dense = rows_to_dense(values, indices, dim)
        if single:
            return dense[0]
        return dense if convert_to_tensor else list(dense)

    # ------------------------------------------------------------------ scores and inspection

    def similarity(self, embeddings1, embeddings2) -> jax.Array:
        """(N, M) scores with the model's ``similarity_fn_name`` ("dot" unless the model says otherwise)."""
        name = self.similarity_fn_name
        if name in ("dot", "cosine"):
            a_values, a_indices, dim = as_rows(embeddings1)
            b_values, b_indices, dim_b = as_rows(embeddings2)
            if dim != dim_b:
                raise ValueError(f"embedding dimensions differ: {dim} and {dim_b}")
            return sparse_similarity(a_values, a_indices, b_values, b_indices, dim=dim, cosine=name == "cosine")
        return similarity_functions(name)[0](_dense(embeddings1), _dense(embeddings2))

    def similarity_pairwise(self, embeddings1, embeddings2) -> jax.Array:
        """(N,) scores of row i with row i."""
        a, b = _dense(embeddings1), _dense(embeddings2)
        if a.shape != b.shape:
            raise ValueError(f"pairwise similarity needs equal shapes, got {a.shape} and {b.shape}")
        return similarity_functions(self.similarity_fn_name)[1](a, b)

    @staticmethod
    def sparsity(embeddings) -> dict[str, float]:
        """``{"active_dims": mean non-zero entries per row, "sparsity_ratio": 1 - that / dim}``."""
        values, _, dim = as_rows(embeddings)
        if values.shape[0] == 0 or dim == 0:
            return {"active_dims": 0.0, "sparsity_ratio": 1.0}
        active = float(jnp.mean(jnp.count_nonzero(values, axis=1).astype(jnp.float32)))
        return {"active_dims": active, "sparsity_ratio": 1.0 - active / dim}

    def decode(self, embeddings, top_k: int | None = None):
        """(token, weight) pairs per embedding, largest weight first; a list of lists for 2-D input."""
        if top_k is not None:
            positive_int("top_k", top_k)
        one = getattr(embeddings, "ndim", 2) == 1
        values, indices, _ = (np.asarray(a) if i < 2 else a for i, a in enumerate(as_rows(embeddings)))
        out = []
        for row_v, row_i in zip(values, indices):
            keep = row_v != 0
            row_v, row_i = row_v[keep], row_i[keep]
            order = np.argsort(-row_v, kind="stable")[:top_k]
            out.append([(self.tokenizer.backend.id_to_token(int(i)), float(v)) for v, i in zip(row_v[order],
                                                                                             row_i[order])])
        return out[0] if one else out

    @staticmethod
    def intersection(embeddings_1, embeddings_2):
        """Per dimension, the product of the two embeddings where both are active (positive), as a BCOO of
        ``embeddings_2``'s shape; ``embeddings_1`` is one (vocab,) embedding."""
        if getattr(embeddings_1, "ndim", 1) != 1:
            raise ValueError(f"embeddings_1 must be one 1-D embedding, got shape {embeddings_1.shape}")
        a = _dense(embeddings_1)[0]
        b = _dense(embeddings_2)
        if a.shape[0] != b.shape[1]:
            raise ValueError(f"vocabulary dimensions differ: {a.shape[0]} and {b.shape[1]}")
        product = a[None, :] * b
        product = jnp.where(product > 0, product, 0)
        values, indices = dense_to_rows(product, width=row_width(int(active_counts(product).max(initial=0))))
        if getattr(embeddings_2, "ndim", 2) == 1:
            return BCOO((values[0], indices[0, :, None]), shape=(a.shape[0],))
        return to_bcoo(values, indices, a.shape[0])

    # ------------------------------------------------------------------ training hooks (jaxst.training)

    def training_tasks(self, n_columns: int, router_mapping=None) -> list | None:
        """A Router model's columns take the tasks ``router_mapping`` names (the ones it leaves out: the Router's
        default route); without a mapping every column takes the default route, tokenized alike."""
        if self.router is None or router_mapping is None:
            return super().training_tasks(n_columns, router_mapping)
        return self._mapped_tasks(router_mapping, [None] * n_columns)

    def training_inputs(self) -> dict:
        """``sae_training``: a CSR model's forward also returns what CSRLoss reads (reconstructions, the
        auxiliary top-k) and updates its buffers; the other modules ignore it. One object (``np.True_``), so
        stacked columns stay stackable."""
        return {"sae_training": np.True_}

    def training_buffers(self) -> dict:
        """A CSR model's ``{"sae_stats": stats_last_nonzero}`` (``self.buffers``); empty for the others."""
        return self.buffers

    # ------------------------------------------------------------------ save

    def folder_plan(self):
        if any(r.kind == "csr" for r in self.routes.values()):
            if self.router is not None:
                raise ValueError("saving a Router with a SparseAutoEncoder route is not supported")
            # a dense sentence encoder's modules, then the SparseAutoEncoder with its statistics buffer
            return sentence_transformer_plan(
                hf_config=self.hf_config, module_specs=self._csr_specs, max_seq_length=self.max_seq_length,
                prompts=self.prompts, default_prompt_name=self.default_prompt_name,
                similarity_fn_name=self.similarity_fn_name, truncate_dim=None, unmapped=self._unmapped_tensors,
                params=self.params, model_class="SparseEncoder", max_active_dims=self.max_active_dims,
                buffers={"sparse_autoencoder": {
                    "stats_last_nonzero": np.asarray(self.buffers["sae_stats"], np.int64)}},
            )
        settings, weights = {}, {}
        if self._splade_module is not None:  # the encoder and its masked-LM head, each under its own prefix
            settings["splade_pooling"] = {"chunk_size": self._splade_module.chunk_size}
            weights["transformer"] = ((("encoder",), f"{self._encoder_cls.base_model_prefix}."),
                                      (("head",), self._splade_module.head.prefix))
        return sparse_encoder_plan(
            routes={name: route.specs for name, route in self.routes.items()}, router=self.router,
            hf_config=self.hf_config, max_seq_length=self.max_seq_length, settings=settings, weights=weights,
            prompts=self.prompts, default_prompt_name=self.default_prompt_name,
            similarity_fn_name=self.similarity_fn_name, max_active_dims=self.max_active_dims,
        )

    def __repr__(self) -> str:
        routes = {name or "": route.kind for name, route in self.routes.items()}
        return f"SparseEncoder({str(self.model_folder)!r}, routes={routes}, dim={self._vocab})"


def _dense(x):
    values, indices, dim = as_rows(x)
    return rows_to_dense(values, indices, dim)


__all__ = ["SparseEncoder"]
